"""Where netprobe's JSON lines go: `JsonStreamHandler` (a text stream) and
`RotatingJsonFileHandler` (a private file rotated by size, falling back to a stream when the
file cannot be written). Both format with `JsonLinesFormatter`."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

from netprobe.logs.formatter import JsonLinesFormatter, safe_str
from netprobe.logs.redact import Redactor

__all__ = ["JsonStreamHandler", "RotatingJsonFileHandler"]


class _JsonHandler(logging.Handler):
    """Common ground of netprobe's JSON handlers: the formatter and writing to a stream."""

    _netprobe_json_handler = True  # how setup_json_logging finds the handler it replaces

    def __init__(self, *, level: int | str, log_addresses: bool, include_traceback: bool,
                 fallback_stream: TextIO | None, redactor: Redactor | None) -> None:
        super().__init__(level)
        self.setFormatter(JsonLinesFormatter(log_addresses=log_addresses,
                                             include_traceback=include_traceback,
                                             redactor=redactor))
        self._fallback_stream = fallback_stream

    def _line(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record)
        except Exception as exc:  # noqa: BLE001 - only a formatter set by someone else raises
            return JsonLinesFormatter(redactor=Redactor.for_this_machine()).failure_line(
                record, exc)

    def _stream_name(self) -> str:
        stream = self._fallback_stream
        return "standard error" if stream is None or stream in (sys.stderr, sys.__stderr__) \
            else "the fallback stream"

    def _to_stream(self, line: str) -> None:
        stream = self._fallback_stream if self._fallback_stream is not None else sys.stderr
        if stream is None:  # pythonw on Windows has no stderr
            return
        try:
            try:
                stream.write(line)
            except UnicodeEncodeError:
                stream.write(line.encode("ascii", "backslashreplace").decode("ascii"))
            stream.flush()
        except Exception:  # noqa: BLE001 - nowhere is left to report this to
            pass


class JsonStreamHandler(_JsonHandler):
    """JSON lines to a text stream (default: ``sys.stderr`` at the time of each write).
    Write errors are swallowed: there is nowhere else to report them. `redactor` None: one
    for this machine (`Redactor.for_this_machine`)."""

    def __init__(self, stream: TextIO | None = None, *, level: int | str = logging.NOTSET,
                 log_addresses: bool = False, include_traceback: bool = False,
                 redactor: Redactor | None = None) -> None:
        super().__init__(level=level, log_addresses=log_addresses,
                         include_traceback=include_traceback, fallback_stream=stream,
                         redactor=redactor)

    def emit(self, record: logging.LogRecord) -> None:
        self._to_stream(self._line(record) + "\n")


class RotatingJsonFileHandler(_JsonHandler):
    """JSON lines to a private file (mode 0600, directories created 0700), rotated by size.

    When the file rotates, ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2`` and so on
    up to `backup_count` (with ``backup_count=0`` the file is emptied instead). When the file
    cannot be opened or written (permissions, read-only file system, disk full, a directory in
    the way), the handler writes one ``log_file_error`` line to the fallback stream and from
    then on writes every record there; it does not go back to the file. A write that fails
    half-way is cut back off the file, so the file holds only whole lines. `redactor` None: one
    for this machine (`Redactor.for_this_machine`).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 5_000_000,
                 backup_count: int = 5, level: int | str = logging.NOTSET,
                 log_addresses: bool = False, include_traceback: bool = False,
                 fallback_stream: TextIO | None = None,
                 redactor: Redactor | None = None) -> None:
        if max_bytes < 0 or backup_count < 0:
            raise ValueError("max_bytes and backup_count must be >= 0")
        super().__init__(level=level, log_addresses=log_addresses,
                         include_traceback=include_traceback, fallback_stream=fallback_stream,
                         redactor=redactor)
        self.path = Path(os.path.abspath(path))
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fallback_reason: str | None = None
        """Why records go to the fallback stream instead of the file; None while the file works."""
        self._file: io.FileIO | None = None
        self._rotate_retry_at = 0.0
        self._rotate_failure_reported = False
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)

    def emit(self, record: logging.LogRecord) -> None:
        line = self._line(record) + "\n"
        if self.fallback_reason is None:
            try:
                self._write(line.encode("utf-8", "backslashreplace"))
                return
            except Exception as exc:  # noqa: BLE001 - OSError, or ValueError on a closed file
                self._fall_back(exc)
        self._to_stream(line)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._close_file(sync=True)
        super().close()

    # -- file handling

    def _open(self, *, truncate: bool = False) -> None:
        _make_private_dirs(self.path.parent)
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if truncate else 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(fd)
            # only a regular file is ours to tighten: never chmod /dev/null or a pipe
            if stat.S_ISREG(st.st_mode) and hasattr(os, "fchmod") and st.st_mode & 0o777 != 0o600:
                try:
                    os.fchmod(fd, 0o600)
                except OSError:
                    pass  # someone else's file that we may write to: leave its mode alone
            self._file = io.FileIO(fd, "ab", closefd=True)  # unbuffered: errors show at once
        except BaseException:
            os.close(fd)
            raise

    def _close_file(self, *, sync: bool = False) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            if sync:
                os.fsync(f.fileno())
        except OSError:
            pass
        try:
            f.close()
        except OSError:
            pass

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        size = os.fstat(self._file.fileno()).st_size
        if (self.max_bytes and size and size + len(data) > self.max_bytes
                and time.monotonic() >= self._rotate_retry_at):
            self._rotate()
            assert self._file is not None
            size = os.fstat(self._file.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the log file accepted no data")
                view = view[written:]
        except OSError:
            try:  # cut the partial line off so the file stays whole lines
                os.ftruncate(self._file.fileno(), size)
            except OSError:
                pass
            raise

    def _backup(self, n: int) -> str:
        return f"{self.path}.{n}"

    def _rotate(self) -> None:
        self._close_file()
        truncate = self.backup_count == 0
        try:
            for n in range(self.backup_count - 1, 0, -1):
                if os.path.lexists(self._backup(n)):
                    os.replace(self._backup(n), self._backup(n + 1))
            if self.backup_count:
                os.replace(self.path, self._backup(1))
        except OSError as exc:
            # e.g. on Windows another program holds a backup open: keep appending, retry later
            truncate = False
            self._rotate_retry_at = time.monotonic() + 60.0
            if not self._rotate_failure_reported:
                self._rotate_failure_reported = True
                self._to_stream(self._error_line(
                    exc, "cannot rotate the log file %s (%s); still writing to it") + "\n")
        self._open(truncate=truncate)

    def _fall_back(self, exc: BaseException) -> None:
        self._close_file()
        self.fallback_reason = _describe(exc)
        template = ("cannot write the log file %s (%s); log lines go to "
                    + self._stream_name() + " instead")
        self._to_stream(self._error_line(exc, template) + "\n")

    def _error_line(self, exc: BaseException, template: str) -> str:
        record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, template,
                                   (str(self.path), _describe(exc)), None)
        record.event = "log_file_error"
        record.path = str(self.path)
        record.error = _error_code(exc)
        return self._line(record)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {safe_str(exc)}"


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents with mode 0700; existing ones are left alone."""
    missing: list[Path] = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        try:
            os.chmod(d, 0o700)  # the umask may have taken bits we asked for
        except OSError:
            pass


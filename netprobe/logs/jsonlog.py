"""JSON-lines logs for support staff: one JSON object per line, private by default.

Library code only does ``logger = logging.getLogger(__name__)`` and, for the events support
staff read, ``logger.info("...", extra={"event": "check_finished", "verdict": ...})``. Only the
CLI and the service call `setup_json_logging`, which puts a `RotatingJsonFileHandler` (or, with
no path, a JSON stream handler) on the root logger. The line format, the redaction rule (applied
by `netprobe.logs.redact`), rotation and the stable event names (`EVENTS`) are documented in
docs/log-format.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import errno
import io
import ipaddress
import json
import logging
import math
import os
import stat
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, Final, TextIO

# Redaction lives in netprobe.logs.redact; the names that were defined here stay importable.
from netprobe.logs.redact import HOST_TOKEN as HOST_TOKEN
from netprobe.logs.redact import IP_TOKEN as IP_TOKEN
from netprobe.logs.redact import USER_TOKEN as USER_TOKEN
from netprobe.logs.redact import Redactor
from netprobe.logs.redact import _this_machine as _this_machine  # used by tests
from netprobe.logs.redact import redact_addresses as redact_addresses

__all__ = [
    "EVENTS",
    "JsonLinesFormatter",
    "JsonStreamHandler",
    "Redactor",
    "RotatingJsonFileHandler",
    "default_log_path",
    "flush_and_close",
    "setup_json_logging",
]

EVENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "agent_start": ("version", "config_path", "api_port"),
    "agent_stop": ("reason",),
    "config_reloaded": ("changed",),
    "config_error": ("path", "error"),
    "check_started": ("kind",),
    "check_finished": ("kind", "verdict", "confidence", "reasons", "metrics", "duration_s"),
    "recommendation_changed": ("from", "to", "reasons", "trigger"),
    "session_started": (),
    "session_stopped": ("duration_s", "reason"),
    "reflector_unreachable": ("retry_in_s", "error_code"),
    "reflector_recovered": (),
    "network_changed": ("change", "interface"),
    "api_request_rejected": ("reason", "path"),
    "error": ("where", "error"),
    "log_file_error": ("path", "error"),
}
"""The stable event names and the fields each carries besides ts/level/event/logger/msg."""

# ---------------------------------------------------------------------------------------------
# Formatter

_RECORD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "event",
}
_OWN_KEYS: Final = ("ts", "level", "event", "logger", "msg", "exc")
_MAX_DEPTH: Final = 12
_MAX_INT_BITS: Final = 10_000  # str(int) refuses more than 4300 digits
_TRACEBACK_FRAMES: Final = 20
_LINE_BREAKS: Final = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _utc_timestamp(created: float) -> str:
    secs, ms = divmod(math.floor(created * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _type_name(cls: type) -> str:
    module = str(getattr(cls, "__module__", "") or "")
    name = str(getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?"))
    return name if module == "builtins" else f"{module}.{name}"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return f"<unprintable {type(value).__name__}>"


def _short_file(filename: str) -> str:
    """The last two path components: enough to find the code, no home directory."""
    parts = PurePath(filename).parts
    return "/".join(parts[-2:]) if parts else filename


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one line of JSON (no trailing newline). Never raises.

    Fields: ts, level, event, logger, msg, the caller's `extra` fields, and exc. With
    ``log_addresses=False`` every string in the line (keys included) goes through a `Redactor`.
    """

    def __init__(self, *, log_addresses: bool = False, include_traceback: bool = False,
                 redactor: Redactor | None = None) -> None:
        super().__init__()
        self.log_addresses = log_addresses
        self.include_traceback = include_traceback
        self._redactor = None if log_addresses else (redactor or Redactor.for_this_machine())

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._dumps(self._fields(record))
        except Exception as exc:  # noqa: BLE001 - a log line must never break the caller
            return self.failure_line(record, exc)

    # -- building the object

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        try:
            msg = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - bad %-args in the call
            msg = (f"<unformattable message {_safe_str(record.msg)!r} args {_safe_str(record.args)}"
                   f": {type(exc).__name__}>")
        event = record.__dict__.get("event")
        raw: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "event": "log" if event is None or event == "" else _safe_str(event),
            "logger": record.name,
            "msg": msg,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                raw[key + "_" if key in _OWN_KEYS else key] = value
        out = {self._key(k): self._jsonable(v, 0, ()) for k, v in raw.items()}
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self._exception(record.exc_info[0], record.exc_info[1])
        if self.include_traceback and record.stack_info:
            out["stack"] = self._text(" | ".join(
                line.strip() for line in record.stack_info.splitlines()[-2 * _TRACEBACK_FRAMES:]
                if line.strip()))
        return out

    def _exception(self, cls: type, exc: BaseException | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self._text(_type_name(cls)),
                               "message": self._text(_safe_str(exc) if exc is not None else "")}
        if exc is None:
            return out
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if cause is not None:
            out["cause"] = {"type": self._text(_type_name(type(cause))),
                            "message": self._text(_safe_str(cause))}
        if self.include_traceback and exc.__traceback__ is not None:
            frames = traceback.extract_tb(exc.__traceback__)
            shown = [f"{_short_file(f.filename)}:{f.lineno} {f.name}"
                     for f in frames[-_TRACEBACK_FRAMES:]]
            prefix = "... > " if len(frames) > _TRACEBACK_FRAMES else ""
            out["traceback"] = self._text(prefix + " > ".join(shown))
        return out

    def _text(self, text: str) -> str:
        return text if self._redactor is None else self._redactor.redact(text)

    def _key(self, key: object) -> str:
        return self._text(str.__str__(key) if isinstance(key, str) else _safe_str(key))

    def _jsonable(self, value: Any, depth: int, path: tuple[int, ...]) -> Any:
        """A JSON-ready copy of `value` with every string redacted; never raises."""
        try:
            return self._convert(value, depth, path)
        except Exception:  # noqa: BLE001
            return f"<unrepresentable {type(value).__name__}>"

    def _convert(self, value: Any, depth: int, path: tuple[int, ...]) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, enum.Enum):
            return self._jsonable(value.value, depth + 1, path)
        if isinstance(value, str):
            return self._text(str.__str__(value))
        if isinstance(value, int):
            bits = value.bit_length()
            return int.__index__(value) if bits <= _MAX_INT_BITS else f"<int of {bits} bits>"
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                              ipaddress.IPv4Network, ipaddress.IPv6Network,
                              ipaddress.IPv4Interface, ipaddress.IPv6Interface, PurePath)):
            return self._text(str(value))
        if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
            return value.isoformat()
        if isinstance(value, _dt.timedelta):
            return value.total_seconds()
        if isinstance(value, BaseException):
            return self._text(f"{_type_name(type(value))}: {_safe_str(value)}")
        is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
        if is_dataclass or isinstance(value, (Mapping, list, tuple, set, frozenset)):
            if id(value) in path:
                return "<cycle>"
            if depth >= _MAX_DEPTH:
                return f"<{type(value).__name__} nested too deep>"
            inner = (*path, id(value))
            if is_dataclass:
                return {self._key(f.name): self._jsonable(getattr(value, f.name), depth + 1, inner)
                        for f in dataclasses.fields(value)}
            if isinstance(value, Mapping):
                return {self._key(k): self._jsonable(v, depth + 1, inner)
                        for k, v in value.items()}
            items = list(value)
            if isinstance(value, (set, frozenset)):
                items.sort(key=_safe_str)
            return [self._jsonable(v, depth + 1, inner) for v in items]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._text(repr(bytes(value)))
        return self._text(repr(value))

    # -- output

    @staticmethod
    def _dumps(obj: dict[str, Any]) -> str:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False).translate(_LINE_BREAKS)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them rather than fail to write
            line = json.dumps(obj, ensure_ascii=True, allow_nan=False)
        return line

    def failure_line(self, record: logging.LogRecord, exc: BaseException) -> str:
        """The line written when a record cannot be formatted: what is known, plus why."""
        try:
            fields = {
                "ts": _utc_timestamp(getattr(record, "created", time.time())),
                "level": self._text(_safe_str(getattr(record, "levelname", "ERROR"))),
                "event": self._text(_safe_str(record.__dict__.get("event") or "log")),
                "logger": self._text(_safe_str(getattr(record, "name", ""))),
                "msg": self._text(_safe_str(getattr(record, "msg", ""))),
                "format_error": self._text(f"{type(exc).__name__}: {_safe_str(exc)}"),
            }
            return json.dumps(fields, ensure_ascii=True)
        except Exception:  # noqa: BLE001
            return '{"event": "log", "format_error": "unformattable record"}'


# ---------------------------------------------------------------------------------------------
# Handlers


class _JsonHandler(logging.Handler):
    """Common ground of netprobe's JSON handlers: the formatter and writing to a stream."""

    _netprobe_json_handler = True  # how setup_json_logging finds the handler it replaces

    def __init__(self, *, level: int | str, log_addresses: bool, include_traceback: bool,
                 fallback_stream: TextIO | None) -> None:
        super().__init__(level)
        self.setFormatter(JsonLinesFormatter(log_addresses=log_addresses,
                                             include_traceback=include_traceback))
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
    Write errors are swallowed: there is nowhere else to report them."""

    def __init__(self, stream: TextIO | None = None, *, level: int | str = logging.NOTSET,
                 log_addresses: bool = False, include_traceback: bool = False) -> None:
        super().__init__(level=level, log_addresses=log_addresses,
                         include_traceback=include_traceback, fallback_stream=stream)

    def emit(self, record: logging.LogRecord) -> None:
        self._to_stream(self._line(record) + "\n")


class RotatingJsonFileHandler(_JsonHandler):
    """JSON lines to a private file (mode 0600, directories created 0700), rotated by size.

    When the file rotates, ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2`` and so on
    up to `backup_count` (with ``backup_count=0`` the file is emptied instead). When the file
    cannot be opened or written (permissions, read-only file system, disk full, a directory in
    the way), the handler writes one ``log_file_error`` line to the fallback stream and from
    then on writes every record there; it does not go back to the file. A write that fails
    half-way is cut back off the file, so the file holds only whole lines.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 5_000_000,
                 backup_count: int = 5, level: int | str = logging.NOTSET,
                 log_addresses: bool = False, include_traceback: bool = False,
                 fallback_stream: TextIO | None = None) -> None:
        if max_bytes < 0 or backup_count < 0:
            raise ValueError("max_bytes and backup_count must be >= 0")
        super().__init__(level=level, log_addresses=log_addresses,
                         include_traceback=include_traceback, fallback_stream=fallback_stream)
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
    return f"{type(exc).__name__}: {_safe_str(exc)}"


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


# ---------------------------------------------------------------------------------------------
# Where logs go, and installing the handler


def default_log_path(app: str = "netprobe", scope: str = "user") -> Path:
    """The log file's default location: per user (platformdirs' user_log_dir) or, for the
    service, system-wide (/var/log/APP, /Library/Logs/APP, %ProgramData%\\APP\\logs)."""
    return Path(_log_path(app, scope, sys.platform, os.environ))


def _log_path(app: str, scope: str, platform: str, environ: Mapping[str, str]) -> PurePath:
    filename = f"{app}.log"
    if scope == "user":
        return PurePath(_user_log_dir(app, platform)) / filename
    if scope == "system":
        if platform == "win32":
            base = environ.get("ProgramData") or environ.get("PROGRAMDATA") or r"C:\ProgramData"
            return PureWindowsPath(base) / app / "logs" / filename
        if platform == "darwin":
            return PurePosixPath("/Library/Logs") / app / filename
        return PurePosixPath("/var/log") / app / filename
    raise ValueError(f"scope must be 'user' or 'system', not {scope!r}")


def _user_log_dir(app: str, platform: str) -> str:
    import platformdirs

    dirs: Callable[..., platformdirs.PlatformDirsABC]
    if platform == sys.platform:
        dirs = platformdirs.PlatformDirs
    elif platform == "win32":
        from platformdirs.windows import Windows as dirs
    elif platform == "darwin":
        from platformdirs.macos import MacOS as dirs
    else:
        from platformdirs.unix import Unix as dirs
    return dirs(app, appauthor=False).user_log_dir


def setup_json_logging(path: str | os.PathLike[str] | None, *, level: int | str = logging.INFO,
                       max_bytes: int = 5_000_000, backup_count: int = 5,
                       log_addresses: bool = False, include_traceback: bool = False,
                       stream_fallback: TextIO | None = None) -> logging.Handler:
    """Install netprobe's JSON-lines handler on the root logger and return it.

    `path` None writes JSON lines to `stream_fallback` only (default: sys.stderr). A JSON
    handler installed earlier by this function is closed and replaced; other handlers stay.
    The root logger's level is lowered to `level` if it is higher, never raised.
    """
    handler: _JsonHandler
    if path is None:
        handler = JsonStreamHandler(stream_fallback, level=level, log_addresses=log_addresses,
                                    include_traceback=include_traceback)
    else:
        handler = RotatingJsonFileHandler(path, max_bytes=max_bytes, backup_count=backup_count,
                                          level=level, log_addresses=log_addresses,
                                          include_traceback=include_traceback,
                                          fallback_stream=stream_fallback)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_netprobe_json_handler", False)]:
        root.removeHandler(old)
        _close_quietly(old)
    root.addHandler(handler)
    if root.getEffectiveLevel() > handler.level:
        root.setLevel(handler.level)
    return handler


def flush_and_close() -> None:
    """Flush, close and remove netprobe's JSON handler(s) from the root logger (at shutdown)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_netprobe_json_handler", False)]:
        root.removeHandler(handler)
        _close_quietly(handler)


def _close_quietly(handler: logging.Handler) -> None:
    try:
        handler.flush()
        handler.close()
    except Exception:  # noqa: BLE001 - shutting down: nothing useful to do with the error
        pass

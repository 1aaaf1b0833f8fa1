"""netprobe.logs.jsonlog, the file handler: private files, rotation, falling back to a
stream when the file cannot be written (real tmpfs where possible), threads."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonlog_support import (
    read_lines,
    record,
)

from netprobe.logs.jsonlog import (
    JsonStreamHandler,
    Redactor,
    RotatingJsonFileHandler,
)

# ---------------------------------------------------------------------------------------------
# The file handler


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def emit(handler: logging.Handler, n: int, *, start: int = 0, pad: int = 0) -> None:
    for i in range(start, start + n):
        handler.handle(record("record %d", (i,),
                              extra={"event": "test", "seq": i, "pad": "x" * pad}))


def test_file_is_private_and_directories_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "netprobe.log"
    tmp_path.chmod(0o755)
    stream = io.StringIO()
    h = RotatingJsonFileHandler(path, fallback_stream=stream)
    try:
        emit(h, 3)
    finally:
        h.close()
    assert [r["seq"] for r in read_lines(path)] == [0, 1, 2]
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert mode(tmp_path) == 0o755  # existing directories are left alone
    assert stream.getvalue() == ""


def test_existing_file_is_tightened_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.log"
    path.write_text('{"old": 1}\n')
    path.chmod(0o644)
    h = RotatingJsonFileHandler(path)
    emit(h, 1)
    h.close()
    assert mode(path) == 0o600
    assert read_lines(path)[0] == {"old": 1} and read_lines(path)[1]["seq"] == 0


def test_rotation_keeps_backup_count_files_of_at_most_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.log"
    h = RotatingJsonFileHandler(path, max_bytes=2000, backup_count=3)
    emit(h, 300)
    h.close()
    files = [path.with_name(f"netprobe.log.{n}") for n in (3, 2, 1)] + [path]
    assert all(f.exists() for f in files)
    assert not path.with_name("netprobe.log.4").exists()
    assert all(f.stat().st_size <= 2000 and mode(f) == 0o600 for f in files)
    seqs = [r["seq"] for f in files for r in read_lines(f)]
    assert seqs == list(range(seqs[0], 300))  # oldest dropped, nothing lost in between


def test_backup_count_zero_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.log"
    h = RotatingJsonFileHandler(path, max_bytes=1000, backup_count=0)
    emit(h, 100)
    h.close()
    assert path.stat().st_size <= 1000
    assert read_lines(path)[-1]["seq"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netprobe.log"]


def test_failed_rotation_keeps_writing_and_says_so_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    path, stream = tmp_path / "netprobe.log", io.StringIO()
    h = RotatingJsonFileHandler(path, max_bytes=1000, fallback_stream=stream)
    emit(h, 50)
    h.close()
    assert [r["seq"] for r in read_lines(path)] == list(range(50))
    errors = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(errors) == 1
    assert errors[0]["event"] == "log_file_error" and errors[0]["error"] == "EACCES"
    assert "cannot rotate" in errors[0]["msg"]


def assert_fell_back(stream: io.StringIO, n_records: int, code: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1 + n_records, "exactly one error line, then the records"
    error, records = lines[0], lines[1:]
    assert error["event"] == "log_file_error" and error["level"] == "ERROR"
    assert error["error"] == code
    assert "cannot write the log file" in error["msg"]
    assert [r["seq"] for r in records] == list(range(n_records))
    return error


def test_directory_in_the_way_falls_back_once(tmp_path: Path) -> None:
    stream = io.StringIO()
    h = RotatingJsonFileHandler(tmp_path, fallback_stream=stream)
    emit(h, 5)
    h.close()
    assert_fell_back(stream, 5, "EISDIR")
    assert h.fallback_reason


def test_file_in_the_way_of_the_directory_falls_back_once(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    stream = io.StringIO()
    h = RotatingJsonFileHandler(tmp_path / "state" / "log" / "netprobe.log", fallback_stream=stream)
    emit(h, 5)
    assert_fell_back(stream, 5, "ENOTDIR")


def test_permission_denied_falls_back_once(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root ignores the mode: have the OS refuse instead
        real_open = os.open

        def refuse(path: Any, *args: Any, **kw: Any) -> int:
            if str(path).startswith(str(locked)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kw)

        monkeypatch.setattr(os, "open", refuse)
    stream = io.StringIO()
    h = RotatingJsonFileHandler(locked / "netprobe.log", fallback_stream=stream)
    emit(h, 3)
    error = assert_fell_back(stream, 3, "EACCES")
    assert "Permission denied" in error["msg"]


def mount_tmpfs(where: Path, options: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, to fill up for real."""
    where = tmp_path / "tiny"
    if not mount_tmpfs(where, "size=64k,mode=0755"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    if not mount_tmpfs(where, "ro,size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_file_system_falls_back_once(read_only_fs: Path) -> None:
    stream = io.StringIO()
    h = RotatingJsonFileHandler(read_only_fs / "netprobe" / "netprobe.log", fallback_stream=stream)
    emit(h, 4)
    assert_fell_back(stream, 4, "EROFS")


def test_disk_full_mid_run_falls_back_once_and_loses_nothing(tiny_fs: Path) -> None:
    path, stream = tiny_fs / "netprobe" / "netprobe.log", io.StringIO()
    h = RotatingJsonFileHandler(path, max_bytes=1_000_000, fallback_stream=stream)
    emit(h, 200, pad=900)  # ~190 KB into 64 KiB
    h.close()
    in_file = [r["seq"] for r in read_lines(path)]  # whole lines only: the torn one was cut off
    assert 0 < len(in_file) < 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "log_file_error" and lines[0]["error"] == "ENOSPC"
    assert [r["event"] for r in lines[1:]] == ["test"] * (len(lines) - 1)
    assert in_file + [r["seq"] for r in lines[1:]] == list(range(200))


class FillingFile(io.FileIO):
    """A file that takes `room` more bytes, then fails like a full disk (partial write first)."""

    room = 0

    def write(self, data: Any) -> int:
        if len(data) <= self.room:
            self.room -= len(data)
            return super().write(data)
        if self.room:
            n = super().write(bytes(data[:self.room]))
            self.room = 0
            return n
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FillingFile.room = 1500
    monkeypatch.setattr(io, "FileIO", FillingFile)  # the standard library's, not netprobe's
    path, stream = tmp_path / "netprobe.log", io.StringIO()
    h = RotatingJsonFileHandler(path, fallback_stream=stream)
    emit(h, 40, pad=100)
    h.close()
    in_file = [r["seq"] for r in read_lines(path)]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in lines].count("log_file_error") == 1
    assert lines[0]["error"] == "ENOSPC"
    assert in_file + [r["seq"] for r in lines[1:]] == list(range(40))


def test_nothing_raises_when_the_fallback_stream_is_broken_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    h = RotatingJsonFileHandler(tmp_path, fallback_stream=closed)
    emit(h, 3)
    monkeypatch.setattr(sys, "stderr", None)  # pythonw on Windows
    h2 = RotatingJsonFileHandler(tmp_path)
    emit(h2, 3)
    JsonStreamHandler().handle(record())


def test_fallback_goes_to_stderr_by_default(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    h = RotatingJsonFileHandler(tmp_path)
    emit(h, 2)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "standard error" in json.loads(err[0])["msg"]


def test_the_error_line_hides_the_home_directory(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    stream = io.StringIO()
    RotatingJsonFileHandler(tmp_path / "logs", fallback_stream=stream,
                            redactor=Redactor(home=str(tmp_path)))
    error = json.loads(stream.getvalue())
    assert error["path"] == "~/logs"
    assert "~/logs" in error["msg"] and str(tmp_path) not in stream.getvalue()


def test_threads_and_rotation_together(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.log"
    h = RotatingJsonFileHandler(path, max_bytes=20_000, backup_count=50)

    def worker(k: int) -> None:
        emit(h, 200, start=k * 1000)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    files = sorted(tmp_path.iterdir())
    seqs = sorted(r["seq"] for f in files for r in read_lines(f))
    assert seqs == sorted(k * 1000 + i for k in range(8) for i in range(200))
    assert all(f.stat().st_size <= 20_000 for f in files)

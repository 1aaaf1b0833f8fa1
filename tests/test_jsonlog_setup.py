"""netprobe.logs.jsonlog: setup_json_logging / flush_and_close, and the default locations."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import platformdirs
import pytest
from jsonlog_support import read_lines

from netprobe.logs.jsonlog import (
    JsonStreamHandler,
    default_log_path,
    flush_and_close,
    log_path_for,
    setup_json_logging,
)

# ---------------------------------------------------------------------------------------------
# setup_json_logging / flush_and_close


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        yield root
    finally:
        flush_and_close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_setup_installs_replaces_and_closes(tmp_path: Path, root_logger: logging.Logger) -> None:
    other = logging.StreamHandler(io.StringIO())
    root_logger.addHandler(other)
    root_logger.setLevel(logging.WARNING)
    first = setup_json_logging(tmp_path / "one.log", level=logging.INFO)
    assert first in root_logger.handlers and root_logger.level == logging.INFO
    logging.getLogger("netprobe.agent.runtime").info("started", extra={
        "event": "agent_start", "version": "0.1.0", "config_path": "/etc/netprobe.toml",
        "api_port": 8765})
    logging.getLogger("netprobe.agent.runtime").debug("not at INFO")
    second = setup_json_logging(tmp_path / "two.log", level="DEBUG", max_bytes=10_000,
                                backup_count=2)
    assert first not in root_logger.handlers and second in root_logger.handlers
    assert other in root_logger.handlers
    assert root_logger.level == logging.DEBUG
    logging.getLogger("netprobe.agent.runtime").debug("now at DEBUG")
    flush_and_close()
    assert second not in root_logger.handlers and other in root_logger.handlers
    one = read_lines(tmp_path / "one.log")
    assert [(r["event"], r["api_port"]) for r in one] == [("agent_start", 8765)]
    assert [r["msg"] for r in read_lines(tmp_path / "two.log")] == ["now at DEBUG"]


def test_setup_never_raises_the_root_level(tmp_path: Path, root_logger: logging.Logger) -> None:
    root_logger.setLevel(logging.DEBUG)
    h = setup_json_logging(tmp_path / "x.log", level=logging.WARNING)
    assert root_logger.level == logging.DEBUG and h.level == logging.WARNING


def test_setup_without_a_path_writes_json_to_the_stream(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    h = setup_json_logging(None, level=logging.INFO, stream_fallback=stream)
    assert isinstance(h, JsonStreamHandler)
    logging.getLogger("netprobe.x").warning("peer 203.0.113.9 gone", extra={"event": "error"})
    assert json.loads(stream.getvalue())["msg"] == "peer <ip> gone"


def test_setup_with_an_unwritable_path_reports_once(tmp_path: Path,
                                                    root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_json_logging(tmp_path, level=logging.INFO, stream_fallback=stream)
    assert len(stream.getvalue().splitlines()) == 1  # reported at setup, before any record
    for i in range(3):
        logging.getLogger("netprobe.x").info("r", extra={"seq": i})
    assert len(stream.getvalue().splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# Default locations


def test_default_user_path_is_platformdirs_user_log_dir() -> None:
    assert default_log_path() == Path(platformdirs.user_log_dir("netprobe", appauthor=False),
                                      "netprobe.log")
    assert default_log_path("other").name == "other.log"


@pytest.mark.skipif(sys.platform != "linux", reason="Linux path")
def test_default_system_path_on_linux() -> None:
    assert default_log_path(scope="system") == Path("/var/log/netprobe/netprobe.log")


def test_system_paths_per_platform() -> None:
    assert log_path_for("netprobe", "system", "darwin", {}) == \
        PurePosixPath("/Library/Logs/netprobe/netprobe.log")
    assert log_path_for("netprobe", "system", "linux", {}) == \
        PurePosixPath("/var/log/netprobe/netprobe.log")
    assert log_path_for("netprobe", "system", "win32", {"ProgramData": r"D:\PD"}) == \
        PureWindowsPath(r"D:\PD\netprobe\logs\netprobe.log")
    assert log_path_for("netprobe", "system", "win32", {}) == \
        PureWindowsPath(r"C:\ProgramData\netprobe\logs\netprobe.log")


def test_user_paths_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    mac = str(log_path_for("netprobe", "user", "darwin", {}))
    assert mac == os.path.expanduser("~/Library/Logs/netprobe/netprobe.log")
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", r"C:\Users\x\AppData\Local")
    win = str(log_path_for("netprobe", "user", "win32", {})).replace("/", "\\")
    assert win == r"C:\Users\x\AppData\Local\netprobe\Logs\netprobe.log"


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope"):
        default_log_path(scope="global")

"""JSON-lines logs for support staff: one JSON object per line, private by default.

Library code only does ``logger = logging.getLogger(__name__)`` and, for the events support
staff read, ``logger.info("...", extra={"event": "check_finished", "verdict": ...})``. Only the
CLI and the service call `setup_json_logging`, which puts a `RotatingJsonFileHandler` (or, with
no path, a JSON stream handler) on the root logger. The line format (`netprobe.logs.formatter`),
the redaction rule (`netprobe.logs.redact`), rotation (`netprobe.logs.handlers`) and the stable
event names (`EVENTS`) are documented in docs/log-format.md. This module holds the events, the
default locations and the setup, and is where the names above are imported from.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Final, TextIO

from netprobe.logs.formatter import JsonLinesFormatter
from netprobe.logs.handlers import JsonStreamHandler, RotatingJsonFileHandler
from netprobe.logs.redact import HOST_TOKEN, IP_TOKEN, USER_TOKEN, Redactor, redact_addresses

__all__ = [
    "EVENTS",
    "HOST_TOKEN",
    "IP_TOKEN",
    "USER_TOKEN",
    "JsonLinesFormatter",
    "JsonStreamHandler",
    "Redactor",
    "RotatingJsonFileHandler",
    "default_log_path",
    "flush_and_close",
    "log_path_for",
    "redact_addresses",
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
    "session_started": ("session_source",),
    "session_stopped": ("duration_s", "reason", "session_source"),
    "call_detected": ("kind", "processes"),
    "call_ended": ("duration_s",),
    "reflector_unreachable": ("retry_in_s", "error_code"),
    "reflector_recovered": (),
    "monitor_moved": ("reason", "from_reflector", "to_reflector"),
    "network_changed": ("change", "interface"),
    "api_request_rejected": ("reason", "path"),
    "notice_shown": ("verdict",),
    "notify_unavailable": ("error",),
    "error": ("where", "error"),
    "log_file_error": ("path", "error"),
    # the reflector (`netprobe serve`); `source` is a keyed hash, never an address
    "reflector_started": ("port", "access", "max_checks", "max_monitors"),
    "reflector_stopping": ("sessions",),
    "reflector_draining": ("checks", "monitors", "timeout_s"),
    "reflector_stopped": ("reason", "exit_status"),
    "reflector_worker_exited": ("worker", "exit_status", "restart_in_s"),
    "reflector_reloaded": ("what",),
    "reflector_reload_failed": ("what", "error"),
    "offer_refused": ("reason", "status", "source"),
    "speedtest_refused": ("reason", "status"),
    "turn_checked": ("url", "urls", "transport", "outcome", "error"),
    "probe_session_started": ("session", "kind", "source"),
    "probe_session_connected": ("session", "kind", "connect_s"),
    "probe_session_ended": ("session", "kind", "reason", "duration_s", "bytes_sent",
                            "bytes_received"),
}
"""The stable event names and the fields each carries besides ts/level/event/logger/msg."""

# ---------------------------------------------------------------------------------------------
# Where logs go, and installing the handler


def default_log_path(app: str = "netprobe", scope: str = "user") -> Path:
    """The log file's default location: per user (platformdirs' user_log_dir) or, for the
    service, system-wide (/var/log/APP, /Library/Logs/APP, %ProgramData%\\APP\\logs)."""
    return Path(log_path_for(app, scope, sys.platform, os.environ))


def log_path_for(app: str, scope: str, platform: str, environ: Mapping[str, str]) -> PurePath:
    """`default_log_path` for any `platform` (a `sys.platform` value) and environment: the
    system paths are pure; the user path comes from platformdirs' rules for that platform."""
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
    handler: JsonStreamHandler | RotatingJsonFileHandler
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

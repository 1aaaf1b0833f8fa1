"""The JSON-lines format of netprobe's logs: `JsonLinesFormatter` turns a log record into one
line of JSON, every string in it redacted (docs/log-format.md). No I/O."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import ipaddress
import json
import logging
import math
import time
import traceback
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Final

from netprobe.logs.redact import Redactor

__all__ = ["JsonLinesFormatter", "safe_str"]

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


def safe_str(value: object) -> str:
    """`str(value)`, or its repr, or a placeholder: never raises."""
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
            msg = (f"<unformattable message {safe_str(record.msg)!r} args {safe_str(record.args)}"
                   f": {type(exc).__name__}>")
        event = record.__dict__.get("event")
        raw: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "event": "log" if event is None or event == "" else safe_str(event),
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
                               "message": self._text(safe_str(exc) if exc is not None else "")}
        if exc is None:
            return out
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if cause is not None:
            out["cause"] = {"type": self._text(_type_name(type(cause))),
                            "message": self._text(safe_str(cause))}
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
        return self._text(str.__str__(key) if isinstance(key, str) else safe_str(key))

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
            return self._text(f"{_type_name(type(value))}: {safe_str(value)}")
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
                items.sort(key=safe_str)
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
                "level": self._text(safe_str(getattr(record, "levelname", "ERROR"))),
                "event": self._text(safe_str(record.__dict__.get("event") or "log")),
                "logger": self._text(safe_str(getattr(record, "name", ""))),
                "msg": self._text(safe_str(getattr(record, "msg", ""))),
                "format_error": self._text(f"{type(exc).__name__}: {safe_str(exc)}"),
            }
            return json.dumps(fields, ensure_ascii=True)
        except Exception:  # noqa: BLE001
            return '{"event": "log", "format_error": "unformattable record"}'


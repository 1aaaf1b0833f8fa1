"""netprobe.logs.jsonlog, the line: fields, timestamps, extras, exceptions, odd values
(never raises, always one JSON line), and the documented events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonlog_support import (
    DOCS,
    NO_NAMES,
    TS,
    exc_info_of,
    fmt_line,
    public_v4,
    record,
    strings_in,
)

from netprobe.logs.jsonlog import (
    EVENTS,
    JsonLinesFormatter,
)

# ---------------------------------------------------------------------------------------------
# The line


def test_core_fields_in_order() -> None:
    rec = record()
    rec.created = 1_700_000_000.1239
    line = fmt_line(JsonLinesFormatter(redactor=NO_NAMES), rec)
    assert list(line) == ["ts", "level", "event", "logger", "msg"]
    assert line == {"ts": "2023-11-14T22:13:20.123Z", "level": "INFO", "event": "log",
                    "logger": "netprobe.test", "msg": "hello world"}


def test_timestamp_is_utc_with_milliseconds_whatever_the_local_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/St_Johns")
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        rec = record()
        rec.created = 0.5
        assert fmt_line(JsonLinesFormatter(redactor=NO_NAMES), rec)["ts"] == \
            "1970-01-01T00:00:00.500Z"
        assert TS.match(fmt_line(JsonLinesFormatter(redactor=NO_NAMES), record())["ts"])
    finally:
        monkeypatch.undo()
        if hasattr(time, "tzset"):
            time.tzset()


@dataclasses.dataclass(frozen=True)
class Direction:
    kbps: float
    loss_pct: float
    jitter_ms: float | None


@dataclasses.dataclass
class Metrics:
    rtt_ms: float
    up: Direction
    down: Direction


class Kind(enum.Enum):
    IDLE = "idle"


class Opaque:
    def __repr__(self) -> str:
        return "Opaque(42)"


def test_event_and_extra_fields() -> None:
    metrics = Metrics(rtt_ms=21.5, up=Direction(3000.0, 0.1, 2.0), down=Direction(9000, 0, None))
    line = fmt_line(JsonLinesFormatter(redactor=NO_NAMES), record("check done", (), extra={
        "event": "check_finished", "verdict": "video", "confidence": 0.93,
        "reasons": ("video_ok",), "metrics": metrics, "duration_s": 12.3,
        "kind": Kind.IDLE, "tags": {"b", "a"}, "path": Path("/etc/netprobe.toml"),
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "took": dt.timedelta(seconds=2),
        "obj": Opaque(), "nan": float("nan"), "raw": b"\x00\xff", "big": 10**5000,
    }))
    assert line["event"] == "check_finished"
    assert line["msg"] == "check done"
    assert line["metrics"] == {"rtt_ms": 21.5,
                               "up": {"kbps": 3000.0, "loss_pct": 0.1, "jitter_ms": 2.0},
                               "down": {"kbps": 9000, "loss_pct": 0, "jitter_ms": None}}
    assert line["reasons"] == ["video_ok"]
    assert line["kind"] == "idle"
    assert line["tags"] == ["a", "b"]
    assert line["path"] == "/etc/netprobe.toml"
    assert line["when"] == "2026-01-02T03:04:05+00:00"
    assert line["took"] == 2.0
    assert line["obj"] == "Opaque(42)"
    assert line["nan"] is None
    assert line["raw"] == repr(b"\x00\xff")
    assert line["big"].startswith("<int of ")


def test_extra_named_like_an_own_field_is_kept_under_a_suffix() -> None:
    line = fmt_line(JsonLinesFormatter(redactor=NO_NAMES),
                    record(extra={"level": 3, "ts": "x", "logger": "y", "exc": "z"}))
    assert line["level"] == "INFO" and line["level_"] == 3
    assert line["ts_"] == "x" and line["logger_"] == "y" and line["exc_"] == "z"
    assert "exc" not in line


def test_every_documented_event_can_be_logged_with_its_fields() -> None:
    """No documented field collides with a LogRecord attribute (logging would raise KeyError)."""
    for name, fields in EVENTS.items():
        extra = {"event": name, **{f: f"value-{f}" for f in fields}}
        line = fmt_line(JsonLinesFormatter(redactor=NO_NAMES), record(name, (), extra=extra))
        assert line["event"] == name
        assert all(line[f] == f"value-{f}" for f in fields)


def test_exception_type_and_message_only_by_default() -> None:
    line = fmt_line(JsonLinesFormatter(redactor=NO_NAMES),
                    record("failed", (), exc_info=exc_info_of(ConnectionRefusedError("refused"))))
    assert line["exc"] == {"type": "ConnectionRefusedError", "message": "refused"}


def _raise_translated() -> None:
    try:
        raise TimeoutError("ICE did not complete")
    except TimeoutError as exc:
        from netprobe.errors import ConnectFailed
        raise ConnectFailed("could not connect to the reflector") from exc


def test_exception_cause_and_compact_traceback_when_asked() -> None:
    try:
        _raise_translated()
    except Exception:
        info = sys.exc_info()
    line = fmt_line(JsonLinesFormatter(include_traceback=True, redactor=NO_NAMES),
                    record("failed", (), exc_info=info))
    exc = line["exc"]
    assert exc["type"] == "netprobe.errors.ConnectFailed"
    assert exc["message"] == "could not connect to the reflector"
    assert exc["cause"] == {"type": "TimeoutError", "message": "ICE did not complete"}
    assert "tests/test_jsonlog_format.py:" in exc["traceback"]
    assert "_raise_translated" in exc["traceback"]
    assert "\n" not in exc["traceback"]
    without = fmt_line(JsonLinesFormatter(redactor=NO_NAMES), record("failed", (), exc_info=info))
    assert "traceback" not in without["exc"]


class Nasty:
    """Cannot be printed while `armed` (hypothesis needs to print it when reporting)."""

    armed = False

    def __repr__(self) -> str:
        if Nasty.armed:
            raise RuntimeError("no repr")
        return "Nasty()"

    def __str__(self) -> str:
        if Nasty.armed:
            raise RuntimeError("no str")
        return "Nasty()"


@pytest.fixture
def armed() -> Iterator[None]:
    Nasty.armed = True
    try:
        yield
    finally:
        Nasty.armed = False


class NastyError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_formatting_never_raises(armed: None) -> None:
    f = JsonLinesFormatter(include_traceback=True, redactor=NO_NAMES)
    loop: list[Any] = []
    loop.append(loop)
    deep: Any = "bottom"
    for _ in range(200):
        deep = [deep]
    line = fmt_line(f, record("%d items", ("many",), extra={
        "nasty": Nasty(), "loop": loop, "deep": deep, "keys": {(1, 2): "a", None: "b", 3: "c"},
        "event": Nasty()}, exc_info=exc_info_of(NastyError())))
    assert line["msg"].startswith("<unformattable message")
    assert line["nasty"] == "<unrepresentable Nasty>"
    assert line["loop"] == ["<cycle>"]
    assert "nested too deep" in json.dumps(line["deep"])
    assert line["keys"] == {"(1, 2)": "a", "None": "b", "3": "c"}
    assert line["exc"]["type"].endswith("NastyError")
    # a record that is not even a proper LogRecord still gives a line
    broken = logging.makeLogRecord({"msg": Nasty(), "args": None})
    del broken.created
    assert json.loads(f.format(broken))["format_error"]


@pytest.mark.parametrize("msg", ["a\u2028b\u2029c", "a\x85b", "lone \ud800 surrogate",
                                 "crlf\r\nend", "nul\x00", "tab\tand\vform\ffeed\x1c"])
def test_line_breaks_and_odd_characters_stay_inside_one_line(msg: str) -> None:
    out = JsonLinesFormatter(log_addresses=True).format(record(msg, ()))
    assert len(out.splitlines()) == 1
    out.encode("utf-8")
    assert json.loads(out)["msg"] == msg


def json_like() -> st.SearchStrategy[Any]:
    leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
              | st.binary(max_size=8) | st.just(Nasty()) | st.just(Kind.IDLE)
              | st.builds(Direction, st.floats(), st.floats(), st.none() | st.floats()))
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=8) | st.integers(), kids, max_size=4)
                        | st.frozensets(st.integers(), max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(msg=st.text(), extras=st.dictionaries(st.text(min_size=1, max_size=10).filter(
    lambda k: k not in logging.LogRecord("", 0, "", 0, "", None, None).__dict__
    and k not in ("message", "asctime")), json_like(), max_size=5),
    log_addresses=st.booleans())
def test_any_record_is_one_valid_json_line(msg: str, extras: dict[str, Any],
                                           log_addresses: bool) -> None:
    f = JsonLinesFormatter(log_addresses=log_addresses, redactor=NO_NAMES)
    Nasty.armed = True
    try:
        out = f.format(record(msg, (), extra=extras))
    finally:
        Nasty.armed = False
    assert len(out.splitlines()) == 1
    out.encode("utf-8")
    line = json.loads(out)
    if log_addresses:
        assert line["msg"] == msg  # nothing lost, even \u2028, \x85 or lone surrogates


# ---------------------------------------------------------------------------------------------
# The documented events


def test_event_table_in_the_docs_matches_EVENTS() -> None:
    section = DOCS.read_text(encoding="utf-8").split("\n## Events\n", 1)[1]
    blocks = section.split("\n\n")
    table = next(b for b in blocks if b.startswith("| event | fields |"))
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]*) \|", table, re.M)
    documented = {name: tuple(re.findall(r"`([a-z_]+)`", fields)) for name, fields in rows}
    assert documented == dict(EVENTS)
    details = next(b for b in blocks if b.startswith("| event | field |"))
    described, current = set(), ""
    for name, field in re.findall(r"^\| (?:`([a-z_]+)`)? *\| `([a-z_]+)` \|", details, re.M):
        current = name or current
        described.add((current, field))
    assert described == {(e, f) for e, fields in EVENTS.items() for f in fields}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ip=public_v4())
def test_documented_events_carry_no_address(ip: ipaddress.IPv4Address) -> None:
    f = JsonLinesFormatter(redactor=NO_NAMES)
    for name, fields in EVENTS.items():
        extra = {"event": name, **{k: f"via {ip}" for k in fields}}
        line = json.loads(f.format(record("%s", (str(ip),), extra=extra)))
        assert all(str(ip) not in s for s in strings_in(line))

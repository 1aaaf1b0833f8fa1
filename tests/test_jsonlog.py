"""netprobe.logs.jsonlog: line format, redaction (property-based), rotation, fallback, setup,
paths."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import errno
import io
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import platformdirs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from netprobe.logs import jsonlog
from netprobe.logs.jsonlog import (
    EVENTS,
    JsonLinesFormatter,
    JsonStreamHandler,
    Redactor,
    RotatingJsonFileHandler,
    default_log_path,
    flush_and_close,
    setup_json_logging,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "log-format.md"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NO_NAMES = Redactor()  # addresses only: this machine's names cannot disturb the IP properties


def record(msg: object = "hello %s", args: Any = ("world",), *, level: int = logging.INFO,
           extra: dict[str, Any] | None = None, exc_info: Any = None,
           name: str = "netprobe.test") -> logging.LogRecord:
    """A record built the way `logger.info(msg, *args, extra=...)` builds it."""
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info,
                                              extra=extra)


def fmt_line(formatter: logging.Formatter, rec: logging.LogRecord) -> dict[str, Any]:
    out = formatter.format(rec)
    assert len(out.splitlines()) == 1, out
    out.encode("utf-8")  # writable as UTF-8
    return json.loads(out)


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys too) in a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def exc_info_of(exc: BaseException) -> Any:
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


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
    assert "tests/test_jsonlog.py:" in exc["traceback"]
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
# Privacy: addresses

EXAMPLES = [  # the table in docs/log-format.md, "Privacy"
    ("listening on 10.0.0.1:8765", "listening on <ip>:8765"),
    ("reflector [2001:db8::1]:443", "reflector [<ip>]:443"),
    ("candidate fe80::1c2b:3ff:fe4d:5e6f%en0 host", "candidate <ip> host"),
    ("mapped ::ffff:192.0.2.7", "mapped <ip>"),
    ("net 192.168.0.0/16", "net <ip>/16"),
    ("netprobe 3.11.7 on Python 3.11", "netprobe 3.11.7 on Python 3.11"),
    ("1.2.3 vs 1.2.3.4 vs 1.2.3.4.5", "1.2.3 vs <ip> vs <ip>"),
    ("up 1.5 Mbit/s, rtt 192 ms, loss 0.25%", "up 1.5 Mbit/s, rtt 192 ms, loss 0.25%"),
    ("at 2026-01-15T12:30:45.123Z", "at 2026-01-15T12:30:45.123Z"),
    ("took 01:02:03.5", "took 01:02:03.5"),
    ("mac 3c:22:fb:01:02:03", "mac 3c:22:fb:01:02:03"),
    ("api on 127.0.0.1:8765 and [::1]:8765, bound 0.0.0.0", "api on 127.0.0.1:8765 and "
     "[::1]:8765, bound 0.0.0.0"),
    ("mapped loopback ::ffff:127.0.0.1", "mapped loopback <ip>"),
    ("build 20260115.1.2.3", "build <ip>"),  # four numbers joined by dots, whatever their size
    ("std::string", "st<ip>string"),  # a known false positive: "d::" is an IPv6 address
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_redaction_examples(text: str, expected: str) -> None:
    assert NO_NAMES.redact(text) == expected


def test_examples_match_the_docs() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for text, expected in EXAMPLES:
        assert f"| `{text}` | `{expected}` |" in doc, text


def public_v4() -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.ip_addresses(v=4).filter(lambda a: not (a.is_loopback or a.is_unspecified))


def public_v6() -> st.SearchStrategy[ipaddress.IPv6Address]:
    return st.ip_addresses(v=6).filter(lambda a: not (a.is_loopback or a.is_unspecified))


@settings(max_examples=500, deadline=None)
@given(before=st.text(), ip=public_v4(), after=st.text())
def test_ipv4_in_any_text_never_survives(before: str, ip: ipaddress.IPv4Address,
                                         after: str) -> None:
    text = before + str(ip) + after
    # "1" + "27.0.0.1" makes the loopback 127.0.0.1, which is kept on purpose
    assume("127." not in text)
    assert str(ip) not in NO_NAMES.redact(text)


@settings(max_examples=500, deadline=None)
@given(before=st.text(), ip=public_v6(), after=st.text(),
       form=st.sampled_from(["compressed", "exploded", "upper", "zone", "url_zone", "bracket",
                             "v4_tail"]))
def test_ipv6_in_any_text_never_survives(before: str, ip: ipaddress.IPv6Address, after: str,
                                         form: str) -> None:
    six_groups = ip.exploded.rsplit(":", 2)[0]  # 2001:0db8:...: written with a dotted tail
    written = {"compressed": str(ip), "exploded": ip.exploded, "upper": str(ip).upper(),
               "zone": f"{ip}%eth0", "url_zone": f"[{ip}%25wlan0]:443",
               "bracket": f"[{ip}]:8765",
               "v4_tail": f"{six_groups}:{ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)}"}[form]
    out = NO_NAMES.redact(before + written + after).lower()
    assert str(ip) not in out
    assert ip.exploded not in out
    assert six_groups not in out
    if ip.ipv4_mapped is not None:
        assert str(ip.ipv4_mapped) not in out


@settings(max_examples=300, deadline=None)
@given(before=st.text(), v4=st.ip_addresses(v=4), after=st.text(),
       prefix=st.sampled_from(["::ffff:", "::FFFF:", "::", "64:ff9b::", "0:0:0:0:0:ffff:"]))
def test_ipv4_inside_ipv6_never_survives(before: str, v4: ipaddress.IPv4Address, after: str,
                                         prefix: str) -> None:
    text = before + prefix + str(v4) + after
    out = NO_NAMES.redact(text)
    assert prefix + str(v4) not in out
    if not (v4.is_loopback or v4.is_unspecified):
        assume("127." not in text)
        assert str(v4) not in out


version = st.lists(st.integers(0, 999), min_size=1, max_size=3).map(
    lambda parts: ".".join(map(str, parts)))
rate = st.tuples(st.floats(0, 1e6, allow_nan=False), st.sampled_from(
    ["Mbit/s", "kbit/s", "ms", "%", " ms", " Mbit/s", "s"])).map(lambda t: f"{t[0]}{t[1]}")
clock = st.tuples(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59),
                  st.none() | st.integers(0, 999_999)).map(
    lambda t: f"{t[0]:02d}:{t[1]:02d}:{t[2]:02d}" + (f".{t[3]}" if t[3] is not None else ""))
stamp = st.datetimes(timezones=st.none() | st.just(dt.UTC)).map(
    lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
word = st.sampled_from(["rtt", "loss", "jitter", "video", "audio_only", "rung", "of", "at", "v",
                        "Python", "netprobe", "up", "down", "MOS", "kbps"])
safe_token = version | rate | clock | stamp | word | st.integers().map(str) | st.floats(
    allow_nan=False, allow_infinity=False).map(repr)


@settings(max_examples=500, deadline=None)
@given(tokens=st.lists(safe_token, max_size=12), seps=st.lists(
    st.sampled_from([" ", ", ", "; ", " (", ") ", "=", " / ", "\n"]), min_size=12, max_size=12))
def test_ordinary_numbers_are_not_mangled(tokens: list[str], seps: list[str]) -> None:
    text = "".join(t + s for t, s in zip(tokens, seps, strict=False))
    assert NO_NAMES.redact(text) == text


@pytest.mark.parametrize("text", ["1" * 200_000, "a:" * 100_000, "1." * 100_000, "::" * 100_000,
                                  "ab:cd:" * 40_000, "1:2:3:4:5:6:" * 20_000, "jane " * 40_000])
def test_redaction_takes_linear_time(text: str) -> None:
    started = time.perf_counter()
    JANE.redact(text)
    assert time.perf_counter() - started < 1.0


# ---------------------------------------------------------------------------------------------
# Privacy: names, and where redaction applies

JANE = Redactor(hostnames=["Janes-MacBook-Pro", "janes-macbook-pro.example.net"],
                usernames=["jane", "Jane Doe"], home="/home/jane")


@pytest.mark.parametrize(("text", "expected"), [
    ("on Janes-MacBook-Pro", "on <host>"),
    ("fqdn janes-macbook-pro.example.net.", "fqdn <host>."),
    ("JANES-MACBOOK-PRO", "<host>"),
    ("user=jane", "user=<user>"),
    ("Jane Doe's laptop", "<user>'s laptop"),
    ("config /home/jane/.config/netprobe/netprobe.toml", "config ~/.config/netprobe/netprobe.toml"),
    ("/home/jane", "~"),
    ("janet and /home/janet are someone else", "janet and /home/janet are someone else"),
    ("jane@10.1.2.3", "<user>@<ip>"),
    ("on Janes-MacBook-Pro as jane", "on <host> as <user>"),
])
def test_names_are_redacted(text: str, expected: str) -> None:
    assert JANE.redact(text) == expected


@settings(max_examples=300, deadline=None)
@given(before=st.text(), after=st.text(), name=st.sampled_from(
    ["Janes-MacBook-Pro", "janes-macbook-pro.example.net", "jane", "Jane Doe"]),
    upper=st.booleans(), left=st.sampled_from(list(" /@=(,'\"\n\t:;<[")),
    right=st.sampled_from(list(" /@=),'\"\n\t:;>]") + ["", "'s", ".local", "10.0.0.1"]))
def test_names_as_words_never_survive(before: str, after: str, name: str, upper: bool,
                                      left: str, right: str) -> None:
    written = name.upper() if upper else name
    out = JANE.redact(before + left + written + (right + after if right else ""))
    assert (left + name + right).lower() not in out.lower()


def test_generic_account_and_host_names_are_not_redacted() -> None:
    r = Redactor(hostnames=["localhost", "localhost.localdomain"], usernames=["root", "SYSTEM"],
                 home="/")
    text = "root logger on localhost, SYSTEM account, path /var/log"
    assert r.redact(text) == text


def test_redaction_covers_msg_extras_keys_nesting_and_exceptions() -> None:
    f = JsonLinesFormatter(include_traceback=True, redactor=JANE)
    exc = exc_info_of(OSError(13, "Permission denied", "/home/jane/x 10.0.0.7"))
    out = f.format(record("peer %s on %s", ("10.0.0.7", "janes-macbook-pro"), extra={
        "event": "error", "where": "jane", "nested": {"hosts": [("2001:db8::7", "Jane Doe")]},
        "192.168.1.20": "as a key", "cfg": Path("/home/jane/cfg.toml"),
        "err": ValueError("bad host janes-macbook-pro")}, exc_info=exc))
    line = json.loads(out)
    for s in strings_in(line):
        for secret in ("10.0.0.7", "2001:db8::7", "192.168.1.20", "jane", "Jane"):
            assert secret not in s, (secret, s)
    assert line["msg"] == "peer <ip> on <host>"
    assert line["cfg"] == "~/cfg.toml"
    assert line["<ip>"] == "as a key"
    assert "~/x <ip>" in line["exc"]["message"]


def test_this_machines_names_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    monkeypatch.setattr(socket, "gethostname", lambda: "Janes-MacBook-Pro")
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "janes-macbook-pro.example.net")
    monkeypatch.setattr(getpass, "getuser", lambda: "jane")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: PurePosixPath("/home/jane")))
    jsonlog._this_machine.cache_clear()
    try:
        f = JsonLinesFormatter()
        line = fmt_line(f, record("%s %s %s", ("Janes-MacBook-Pro", "jane",
                                               "/home/jane/.local/state/netprobe")))
        assert line["msg"] == "<host> <user> ~/.local/state/netprobe"
    finally:
        jsonlog._this_machine.cache_clear()


def test_a_renamed_host_is_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Redactor(hostnames=["old-name"], watch_hostname=True)
    monkeypatch.setattr(socket, "gethostname", lambda: "dhcp-host-17")
    assert r.redact("old-name dhcp-host-17") == "<host> <host>"


def test_log_addresses_keeps_everything() -> None:
    f = JsonLinesFormatter(log_addresses=True, redactor=JANE)
    text = "jane on janes-macbook-pro at 10.0.0.7 / 2001:db8::7%eth0, /home/jane"
    assert fmt_line(f, record(text, ()))["msg"] == text


# ---------------------------------------------------------------------------------------------
# The file handler


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes().decode("utf-8")
    assert data == "" or data.endswith("\n"), "the file ends in a partial line"
    return [json.loads(line) for line in data.splitlines()]


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
    monkeypatch.setattr(jsonlog.io, "FileIO", FillingFile)
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


def test_the_error_line_hides_the_home_directory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    jsonlog._this_machine.cache_clear()
    try:
        (tmp_path / "logs").mkdir()
        stream = io.StringIO()
        RotatingJsonFileHandler(tmp_path / "logs", fallback_stream=stream)
        error = json.loads(stream.getvalue())
        assert error["path"] == "~/logs"
        assert "~/logs" in error["msg"] and str(tmp_path) not in stream.getvalue()
    finally:
        jsonlog._this_machine.cache_clear()


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
    assert jsonlog._log_path("netprobe", "system", "darwin", {}) == \
        PurePosixPath("/Library/Logs/netprobe/netprobe.log")
    assert jsonlog._log_path("netprobe", "system", "linux", {}) == \
        PurePosixPath("/var/log/netprobe/netprobe.log")
    assert jsonlog._log_path("netprobe", "system", "win32", {"ProgramData": r"D:\PD"}) == \
        PureWindowsPath(r"D:\PD\netprobe\logs\netprobe.log")
    assert jsonlog._log_path("netprobe", "system", "win32", {}) == \
        PureWindowsPath(r"C:\ProgramData\netprobe\logs\netprobe.log")


def test_user_paths_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    mac = str(jsonlog._log_path("netprobe", "user", "darwin", {}))
    assert mac == os.path.expanduser("~/Library/Logs/netprobe/netprobe.log")
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", r"C:\Users\x\AppData\Local")
    win = str(jsonlog._log_path("netprobe", "user", "win32", {})).replace("/", "\\")
    assert win == r"C:\Users\x\AppData\Local\netprobe\Logs\netprobe.log"


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope"):
        default_log_path(scope="global")


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

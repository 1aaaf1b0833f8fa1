"""netprobe.logs.jsonlog, privacy: addresses (property-based), names, home folder, and where
redaction applies."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import time
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jsonlog_support import (
    DOCS,
    JANE,
    NO_NAMES,
    exc_info_of,
    fmt_line,
    public_v4,
    public_v6,
    record,
    strings_in,
)

from netprobe.logs.jsonlog import (
    JsonLinesFormatter,
    Redactor,
)
from netprobe.logs.redact import read_machine_names

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


def test_this_machines_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    # The standard library's lookups answer as on Jane's Mac; what is under test is what
    # netprobe makes of their answers.
    monkeypatch.setattr(socket, "gethostname", lambda: "Janes-MacBook-Pro")
    monkeypatch.setattr(socket, "getfqdn", lambda *a: "janes-macbook-pro.example.net")
    monkeypatch.setattr(getpass, "getuser", lambda: "jane")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: PurePosixPath("/home/jane")))
    names = read_machine_names()
    assert names.hostnames == ("Janes-MacBook-Pro", "janes-macbook-pro.example.net")
    assert names.usernames[0] == "jane" and names.home == "/home/jane"
    f = JsonLinesFormatter(redactor=Redactor.for_this_machine(names))
    line = fmt_line(f, record("%s %s %s", ("Janes-MacBook-Pro", "jane",
                                           "/home/jane/.local/state/netprobe")))
    assert line["msg"] == "<host> <user> ~/.local/state/netprobe"


def test_the_default_redactor_hides_this_machines_real_names() -> None:
    names = read_machine_names()
    line = fmt_line(JsonLinesFormatter(), record("%s", (" ".join(
        [*names.hostnames, *names.usernames, names.home or ""]),)))
    redacted = Redactor.for_this_machine(names).redact(" ".join(
        [*names.hostnames, *names.usernames, names.home or ""]))
    assert line["msg"] == redacted  # the formatter's default is this machine's redactor
    home = names.home or ""
    if len(home.strip("/\\")) >= 2:
        assert Redactor.for_this_machine().redact(home + "/x") == "~/x"


def test_a_renamed_host_is_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Redactor(hostnames=["old-name"], watch_hostname=True)
    monkeypatch.setattr(socket, "gethostname", lambda: "dhcp-host-17")
    assert r.redact("old-name dhcp-host-17") == "<host> <host>"


def test_log_addresses_keeps_everything() -> None:
    f = JsonLinesFormatter(log_addresses=True, redactor=JANE)
    text = "jane on janes-macbook-pro at 10.0.0.7 / 2001:db8::7%eth0, /home/jane"
    assert fmt_line(f, record(text, ()))["msg"] == text

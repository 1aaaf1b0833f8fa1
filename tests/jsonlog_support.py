"""What the tests of netprobe.logs share: records built like logging builds them, lines
decoded, redactors with known names, strategies for public addresses."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from netprobe.logs.jsonlog import Redactor

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


def public_v4() -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.ip_addresses(v=4).filter(lambda a: not (a.is_loopback or a.is_unspecified))


def public_v6() -> st.SearchStrategy[ipaddress.IPv6Address]:
    return st.ip_addresses(v=6).filter(lambda a: not (a.is_loopback or a.is_unspecified))


JANE = Redactor(hostnames=["Janes-MacBook-Pro", "janes-macbook-pro.example.net"],
                usernames=["jane", "Jane Doe"], home="/home/jane")


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file, which must end in a whole line."""
    data = path.read_bytes().decode("utf-8")
    assert data == "" or data.endswith("\n"), "the file ends in a partial line"
    return [json.loads(line) for line in data.splitlines()]

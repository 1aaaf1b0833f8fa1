"""The Prometheus text exposition format (0.0.4), shared by the agent's and the reflector's
`GET /metrics`: `PromText().metric(name, kind, help, samples)` then `.text()`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

CONTENT_TYPE = "text/plain"
"""With `version=0.0.4` and charset utf-8, as Prometheus expects."""


def labels(**values: str) -> str:
    """`{a="x",b="y"}` with the values escaped; "" for no labels."""
    if not values:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in values.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    """Whole numbers in full (a byte counter keeps every digit), others as repr."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


class PromText:
    """Metrics in the text format, one family at a time."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> None:
        """One family: HELP, TYPE and its samples, each `(labels, value)`; a None value is
        left out."""
        self._lines.append(f"# HELP {name} {help_}")
        self._lines.append(f"# TYPE {name} {kind}")
        items = samples.items() if isinstance(samples, Mapping) else samples
        for label_text, value in items:
            if value is None:
                continue
            self._lines.append(f"{name}{label_text} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def response(text: str) -> web.Response:
    """`text` as a scrape response."""
    return web.Response(text=text, content_type=CONTENT_TYPE, charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})

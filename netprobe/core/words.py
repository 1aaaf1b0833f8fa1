"""Words for people, pure: `N_` marks an English template for the message catalogue
(netprobe/locale/), and a `Phrase` is a template with its arguments.

The core builds its reasons from these and keeps them in English (the JSON and the logs);
`netprobe.i18n` translates them where a person reads them (`text_of`, or `Phrase.text()` once
it is loaded). Nothing here reads the environment or a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_renderer: Callable[[Phrase], str] | None = None
"""How `Phrase.text()` translates: set by `netprobe.i18n` when it loads (English before)."""


def N_(text: str) -> str:
    """Mark `text` for the catalogue; it is translated where it is shown."""
    return text


@dataclass(frozen=True)
class Phrase:
    """A sentence's English template (marked with `N_`) and its arguments: numbers, figures,
    texts from elsewhere (an error's detail), or other `Phrase`s (translated too)."""

    template: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, template: str, **args: Any) -> Phrase:
        return cls(template, tuple(args.items()))

    def english(self) -> str:
        values = {k: v.english() if isinstance(v, Phrase) else v for k, v in self.args}
        return self.template.format(**values)

    def text(self) -> str:
        """In the language chosen with `netprobe.i18n.set_language` (English until
        netprobe.i18n is loaded)."""
        return self.english() if _renderer is None else _renderer(self)


def set_renderer(render: Callable[[Phrase], str]) -> None:
    """Called by `netprobe.i18n`: how `Phrase.text()` translates."""
    global _renderer
    _renderer = render


#: Bounds on a phrase read back from JSON (the agent's status): nesting, arguments, length.
MAX_PHRASE_DEPTH = 3
MAX_PHRASE_ARGS = 16
MAX_PHRASE_TEXT = 2000


def phrase_json(template: str, args: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """A template and its arguments as JSON (`Phrase`s nested as the same object), so that
    whoever shows it can translate it: `phrase_from_json` reads it back."""
    return {"template": template,
            "args": {k: phrase_json(v.template, v.args) if isinstance(v, Phrase) else v
                     for k, v in args}}


def phrase_from_json(data: Any, depth: int = 0) -> Phrase | None:
    """The `Phrase` that `phrase_json` wrote, or None for anything else (it comes from
    another process: only strings, numbers and bounded nesting are taken)."""
    if not isinstance(data, dict) or depth > MAX_PHRASE_DEPTH:
        return None
    template, args = data.get("template"), data.get("args", {})
    if not isinstance(template, str) or not template or len(template) > MAX_PHRASE_TEXT \
            or not isinstance(args, dict) or len(args) > MAX_PHRASE_ARGS:
        return None
    values: list[tuple[str, Any]] = []
    for key, value in args.items():
        if isinstance(value, dict):
            value = phrase_from_json(value, depth + 1)
            if value is None:
                return None
        elif isinstance(value, str):
            value = value[:MAX_PHRASE_TEXT]
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        values.append((str(key), value))
    return Phrase(template, tuple(values))

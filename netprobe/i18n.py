"""User-facing words: gettext catalogues (English is the source language; Spanish in
netprobe/locale/, read from its .po file with Babel, so no compiled file is committed).

- `N_(text)` marks a template for extraction without translating it (core code: pure, the
  JSON stays in English and codes).
- `_(text)` translates into the language chosen with `set_language()` (adapters, rendering);
  `n_(singular, plural, n)` the same for a phrase with a count.
- `Phrase` (netprobe/core/words.py, with `N_`: the core imports them from there) is a
  template with its arguments, English with `english()`; `text_of(phrase_or_reason)` renders
  one in the current language (a `Reason`, core/classify.py, carries a template and args).

The language: `set_language("es")`, else (`set_language(None)`) the locale's
(`LC_ALL`, `LC_MESSAGES`, `LANG`: `es_ES.UTF-8` is `es`), else English. A language without a
catalogue is English, without an error. To re-extract the strings after a change:
`python scripts/i18n_update.py` (README, "Language").
"""

from __future__ import annotations

import gettext as _gettext
import os
import re
import string
from pathlib import Path
from typing import Any

from netprobe.core import words
from netprobe.core.words import N_, Phrase

__all__ = ["N_", "Phrase", "_", "available", "language", "language_code", "language_from_env",
           "n_", "placeholders", "set_language", "text_of"]

DOMAIN = "netprobe"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
SOURCE_LANGUAGE = "en"

_translations: _gettext.NullTranslations = _gettext.NullTranslations()
_language = SOURCE_LANGUAGE
_decimal = "."
_loaded: dict[str, tuple[_gettext.NullTranslations, str]] = {}


def available() -> tuple[str, ...]:
    """The languages with a catalogue, English (the source) first."""
    found = sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
    return (SOURCE_LANGUAGE, *found)


def language_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The language the locale asks for (`LC_ALL`, then `LC_MESSAGES`, then `LANG`: the
    first one set), e.g. `es` for `es_ES.UTF-8`; None when none is set or it is C/POSIX."""
    env = os.environ if environ is None else environ
    for key in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(key, "")
        if value:
            lang = language_code(value)
            return None if lang in ("c", "posix") else lang
    return None


def language_code(value: str) -> str:
    """The language of a locale name: `es_ES.UTF-8@euro` -> `es`; `pt-BR` -> `pt`."""
    return re.split(r"[_.@-]", value.strip(), maxsplit=1)[0].lower()


def set_language(lang: str | None) -> str:
    """Choose the language of `_()` (`None`: the locale's); returns the language in force:
    English for a language without a catalogue."""
    global _translations, _language, _decimal
    wanted = language_code(lang) if lang else language_from_env()
    if not wanted or wanted == SOURCE_LANGUAGE or wanted not in available():
        _translations, _language, _decimal = _gettext.NullTranslations(), SOURCE_LANGUAGE, "."
        return _language
    if wanted not in _loaded:
        _loaded[wanted] = _load(wanted)
    (_translations, _decimal), _language = _loaded[wanted], wanted
    return _language


def _load(lang: str) -> tuple[_gettext.NullTranslations, str]:
    """The catalogue of `lang` from its .po file (Babel compiles it in memory) and the
    language's decimal sign. Babel is imported only here: English never loads it."""
    import io

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.numbers import get_decimal_symbol

    with (LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as f:
        catalog = read_po(f, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return _gettext.GNUTranslations(buf), get_decimal_symbol(lang)


def language() -> str:
    return _language


def _(text: str) -> str:
    """`text` in the current language (itself when there is no translation)."""
    return _translations.gettext(text) if text else text


def n_(singular: str, plural: str, n: int) -> str:
    """The form of a phrase for the count `n`, in the current language."""
    return _translations.ngettext(singular, plural, n)


_NUMBER = re.compile(r"[-+]?\d+\.\d+")


class _Localised(string.Formatter):
    """Formats numbers (and figures already formatted, e.g. "0.25") with the language's
    decimal sign."""

    def __init__(self, decimal: str) -> None:
        self.decimal = decimal

    def format_field(self, value: Any, format_spec: str) -> str:
        text = format(value, format_spec)
        if self.decimal != "." and (isinstance(value, (int, float)) or isinstance(value, str)
                                    and _NUMBER.fullmatch(value)):
            text = text.replace(".", self.decimal)
        return text


def _render(phrase: Phrase) -> str:
    """`phrase` in the current language: its template translated, its arguments too."""
    values = {k: _render(v) if isinstance(v, Phrase) else v for k, v in phrase.args}
    try:
        return _Localised(_decimal).format(_(phrase.template), **values)
    except (KeyError, IndexError, ValueError):  # a broken translation: the English
        return _Localised(_decimal).format(phrase.template, **values)


words.set_renderer(_render)


def text_of(item: Any) -> str:
    """A `Phrase`, or anything with `template`, `args` and `message` (a `Reason`), in the
    current language; its English `message` when it has no template."""
    if isinstance(item, Phrase):
        return _render(item)
    template = getattr(item, "template", "")
    if not template:
        return str(getattr(item, "message", item))
    return _render(Phrase(template, tuple(getattr(item, "args", ()))))


def placeholders(template: str) -> list[tuple[str, str]]:
    """The `{name:spec}` fields of a template, sorted (for checking translations)."""
    return sorted((name, spec or "") for _lit, name, spec, _conv in
                  string.Formatter().parse(template) if name is not None)

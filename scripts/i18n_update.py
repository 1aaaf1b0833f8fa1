"""Re-extract the words for people into netprobe/locale/netprobe.pot and bring every
catalogue (netprobe/locale/*/LC_MESSAGES/netprobe.po) up to date with it.

    python scripts/i18n_update.py            # extract, then update the catalogues
    python scripts/i18n_update.py --check    # only say what is missing (exit 1 if anything)

Strings are found where the code marks them: `_("...")`, `N_("...")` and
`n_("one", "many", n)` (netprobe/i18n.py). A new string lands in each .po untranslated (no
guessed "fuzzy" match); a string no longer in the code is dropped (the history keeps it).
The same as `pybabel extract -k _ -k N_ -k n_:1,2 -o netprobe/locale/netprobe.pot netprobe`
followed by `pybabel update --no-fuzzy-matching -D netprobe -i ... -d netprobe/locale`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "netprobe"
LOCALE = PACKAGE / "locale"
POT = LOCALE / "netprobe.pot"
KEYWORDS = {"_": None, "N_": None, "n_": (1, 2)}


def extract() -> Catalog:
    """Every marked string under netprobe/, with where it is used."""
    catalog = Catalog(project="netprobe", version="0.1.0", domain="netprobe",
                      msgid_bugs_address="", copyright_holder="netprobe", charset="utf-8")
    found = extract_from_dir(str(PACKAGE), method_map=[("**.py", "python")],
                             keywords=KEYWORDS, comment_tags=("Translators:",),
                             strip_comment_tags=True)
    for filename, lineno, message, comments, context in found:
        path = (Path("netprobe") / filename).as_posix()
        catalog.add(message, None, [(path, lineno)], auto_comments=comments, context=context)
    for m in catalog:  # "{loss:.1f} % lost" is a brace template, not a %-format one
        if "python-brace-format" in m.flags:
            m.flags.discard("python-format")
    return catalog


def catalogues() -> list[Path]:
    return sorted(LOCALE.glob("*/LC_MESSAGES/netprobe.po"))


def untranslated(message: object) -> bool:
    """A catalogue entry with no translation (any plural form missing counts)."""
    string = getattr(message, "string", "")
    return not all(string) if isinstance(string, (tuple, list)) else not string


def _ids(catalog: Catalog) -> set[object]:
    return {m.id for m in catalog if m.id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the template or a catalogue lags")
    args = parser.parse_args(argv)
    template = extract()
    problems = 0
    if args.check:
        with POT.open("rb") as f:
            missing = _ids(template) - _ids(read_po(f))
        for msgid in sorted(map(str, missing)):
            print(f"{POT.relative_to(ROOT)}: missing {msgid[:70]!r}")
        problems += len(missing)
    else:
        LOCALE.mkdir(exist_ok=True)
        with POT.open("wb") as f:
            write_po(f, template, width=100, omit_header=False, sort_output=False,
                     include_lineno=False)
        print(f"{POT.relative_to(ROOT)}: {len(_ids(template))} strings")
    for po in catalogues():
        with po.open("rb") as f:
            catalog = read_po(f, locale=po.parent.parent.name, domain="netprobe")
        if args.check:
            todo = [m for m in catalog if m.id and (untranslated(m) or m.fuzzy
                                                     or m.id not in template)]
            todo += [m for m in template if m.id and m.id not in catalog]
            for m in todo:
                print(f"{po.relative_to(ROOT)}: to translate {str(m.id)[:70]!r}")
            problems += len(todo)
            continue
        catalog.update(template, no_fuzzy_matching=True)
        for m in catalog:
            if "python-brace-format" in m.flags:
                m.flags.discard("python-format")
        with po.open("wb") as f:
            write_po(f, catalog, width=100, include_lineno=False, ignore_obsolete=True)
        todo = sum(1 for m in catalog if m.id and untranslated(m))
        print(f"{po.relative_to(ROOT)}: {todo} to translate")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""How systemd reads a command line (systemd.syntax(7), systemd.service(5)): the words of
``ExecStart=`` written so that systemd hands the program exactly the intended argv. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["systemd_exec_line", "systemd_word"]

_SYSTEMD_BARE_RE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
"""Words that systemd reads back unchanged without quotes (no %, $, quotes, \\ or blanks)."""


def systemd_word(word: str, *, expand_env: bool = True) -> str:
    """`word` as one systemd command-line word (systemd.syntax(7), systemd.service(5))."""
    escaped = word.replace("%", "%%")
    if expand_env:
        escaped = escaped.replace("$", "$$")
    if _SYSTEMD_BARE_RE.fullmatch(word) and word != ";":
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def systemd_exec_line(argv: Sequence[str]) -> str:
    """The value of ``ExecStart=`` that runs exactly `argv`."""
    exe, *args = argv
    # The path gets specifier expansion but no $VAR expansion; argv[0] gets both. If the path
    # has a '$', give argv[0] separately ('@' prefix) so both come out right.
    first = systemd_word(exe, expand_env=False)
    if "$" in exe:
        first = f"@{first} {systemd_word(exe)}"
    return " ".join([first, *(systemd_word(a) for a in args)])

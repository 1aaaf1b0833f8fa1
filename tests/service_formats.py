"""What the tests of netprobe.service share: specs, and parsers of the three file formats
written from their specifications (systemd.syntax(7) and systemd's extract_first_word(); the
Task Scheduler schema and the Microsoft C runtime's command-line rules), not from netprobe's
code; and ways to ask systemd itself (`systemd-analyze verify`, ``systemd --test``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from hypothesis import strategies as st

from netprobe.service.base import ServiceSpec
from netprobe.service.windows import TASK_NAMESPACE

NS = {"t": TASK_NAMESPACE}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)")

CONFIG = PurePosixPath("/etc/netprobe/agent.toml")
WIN_PYTHON = r"C:\Program Files\Python311\pythonw.exe"
WIN_CONFIG = PureWindowsPath(r"C:\ProgramData\netprobe\agent.toml")


def linux_spec(**kw: Any) -> ServiceSpec:
    return replace(ServiceSpec(config=CONFIG, python="/opt/netprobe/bin/python"), **kw)


def windows_spec(**kw: Any) -> ServiceSpec:
    return replace(ServiceSpec(config=WIN_CONFIG, python=WIN_PYTHON), **kw)



# Parsers of the three formats (written from their specifications, not from netprobe's code)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (systemd.syntax(7); no continuation lines)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.split("\n"):  # not splitlines(): systemd breaks lines at \n only
        assert not line.endswith("\\"), f"unintended line continuation: {line!r}"
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), {})
            continue
        assert current is not None, line
        key, _, value = stripped.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
              "\\": "\\", '"': '"', "'": "'", "s": " "}


def _cunescape_one(s: str, i: int) -> tuple[str, int]:
    """systemd's cunescape_one(): the escape at s[i] (after the backslash) and its length."""
    c = s[i]
    if c in _C_ESCAPES:
        return _C_ESCAPES[c], 1
    if c == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", s[i + 1:i + 3]):
        code = int(s[i + 1:i + 3], 16)
        assert code != 0
        return chr(code), 3
    if c in "uU":
        n = 4 if c == "u" else 8
        return chr(int(s[i + 1:i + 1 + n], 16)), 1 + n
    if re.fullmatch(r"[0-7]{3}", s[i:i + 3]):
        return chr(int(s[i:i + 3], 8)), 3
    raise ValueError(f"invalid escape \\{c} (systemd would warn and keep it verbatim)")


def extract_words(s: str) -> list[str]:
    """systemd's extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE), applied repeatedly:
    whitespace separates words; single or double quotes group (also mid-word); a backslash
    escape works inside and outside quotes; an unbalanced quote is an error."""
    words: list[str] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in " \t\n\r":
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote = ""
        while i < n:
            c = s[i]
            if c == "\\":
                if i + 1 >= n:
                    raise ValueError("trailing backslash")
                text, used = _cunescape_one(s, i + 1)
                word.append(text)
                i += 1 + used
                continue
            if quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
            elif c in "'\"":
                quote = c
            elif c in " \t\n\r":
                break
            else:
                word.append(c)
            i += 1
        if quote:
            raise ValueError("unbalanced quoting")
        words.append("".join(word))


def expand_specifiers(word: str) -> str:
    """Unit specifiers: only %% is expected in netprobe's files (any other is a bug)."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "%":
            if word[i + 1:i + 2] != "%":
                raise ValueError(f"unescaped specifier in {word!r}")
            out.append("%")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def expand_env(word: str) -> str:
    """Exec-time variable expansion (replace_env) with no variables set: only $$ is expected."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1:i + 2] != "$":
                raise ValueError(f"unescaped $ in {word!r}")
            out.append("$")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def split_exec_start(value: str) -> tuple[str, list[str]]:
    """(path to execute, argv) of an ExecStart= value, as systemd's config_parse_exec() and
    exec-time expansion make them: words, the prefixes -@:+! of the first word, specifiers
    per word, then $-expansion of argv (not of the path)."""
    if re.search(r"(^|\s);(\s|$)", value):
        raise ValueError("a lone ';' separates commands")
    words = extract_words(value)
    first = words.pop(0)
    prefixes = re.match(r"[-@:+!]*", first)
    assert prefixes is not None
    flags, path = prefixes.group(0), expand_specifiers(first[prefixes.end():])
    assert set(flags) <= {"@"}, f"unexpected prefixes {flags!r}"
    assert not any(c in path for c in "\"'\\") and path.startswith("/")  # string_is_safe()
    argv = [path] if "@" not in flags else []
    argv += [expand_specifiers(w) for w in words]
    return path, [argv[0]] + [expand_env(a) for a in argv[1:]] if "@" not in flags \
        else [expand_env(a) for a in argv]


def split_windows_args(s: str) -> list[str]:
    """Arguments after the program name, by the Microsoft C runtime's rules (what Python on
    Windows uses for sys.argv): blanks separate; "..." groups; 2n backslashes + quote: n
    backslashes and a quote toggle; 2n+1 backslashes + quote: n backslashes and a literal
    quote; other backslashes are literal."""
    args: list[str] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return args
        arg: list[str] = []
        quoted = False
        while i < n and (quoted or s[i] not in " \t"):
            if s[i] == "\\":
                j = i
                while j < n and s[j] == "\\":
                    j += 1
                count = j - i
                if j < n and s[j] == '"':
                    arg.append("\\" * (count // 2))
                    if count % 2:
                        arg.append('"')
                        j += 1
                    i = j
                else:
                    arg.append("\\" * count)
                    i = j
                continue
            if s[i] == '"':
                quoted = not quoted
            else:
                arg.append(s[i])
            i += 1
        args.append("".join(arg))


def parse_task(data: bytes) -> ET.Element:
    """The task XML as schtasks reads it: UTF-16 with a byte-order mark."""
    assert data.startswith(b"\xff\xfe")
    return ET.fromstring(data)


def task_exec(root: ET.Element) -> tuple[str, list[str]]:
    command = root.findtext("t:Actions/t:Exec/t:Command", namespaces=NS)
    arguments = root.findtext("t:Actions/t:Exec/t:Arguments", default="", namespaces=NS)
    assert command is not None
    return command, split_windows_args(arguments)


# Text systemd, plists and XML can all carry: no C0 controls, DEL, surrogates or U+FFFE/F.
TEXT = st.text(st.characters(exclude_categories=["Cs"],
                             exclude_characters=[chr(c) for c in range(32)]
                             + ["\x7f", "\ufffe", "\uffff"]), max_size=24)
PATH_PART = st.text(st.characters(exclude_categories=["Cs"],
                                  exclude_characters=[chr(c) for c in range(32)]
                                  + ["\x7f", "\ufffe", "\uffff", "/", "\"", "'", "\\"]),
                    min_size=1, max_size=16).filter(lambda p: p not in (".", ".."))
POSIX_PATH = st.lists(PATH_PART, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def verify(unit_text: str, directory: Path, *, user: bool = False) -> str:
    """`systemd-analyze verify` of the unit: its complaints about this unit ('' if none).

    verify also reports on the units installed on this machine that this one names or
    depends on (a distribution's unit running as ``nobody``, say): only the lines about the
    unit under test count."""
    path = directory / "netprobe-agent.service"
    path.write_text(unit_text, encoding="utf-8")
    runtime = directory / "runtime"
    runtime.mkdir(exist_ok=True)
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(["--user"] if user else []), str(path)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    return "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                     if is_about_unit(line, path))


def is_about_unit(line: str, path: Path) -> bool:
    """Whether a line of systemd-analyze's output is about the unit file at `path`."""
    return line.startswith((f"{path}:", f"{path.name}:")) or str(path) in line


SYSTEMD_BIN = next((p for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
                    if os.access(p, os.X_OK)), None)
RUNUSER = shutil.which("runuser")
needs_systemd_test = pytest.mark.skipif(
    SYSTEMD_BIN is None or (os.geteuid() == 0 and RUNUSER is None),
    reason="needs systemd's manager binary (and runuser when run as root)")


def systemd_reads(unit_text: str) -> dict[str, list[str]]:
    """What systemd itself makes of a user unit: `systemd --test --user` loads it and dumps
    the result (no manager is started). ExecStart is argv before $-expansion, shell-quoted."""
    assert SYSTEMD_BIN is not None
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # readable by the unprivileged user the manager runs as
        units, runtime = Path(tmp, "units"), Path(tmp, "runtime")
        units.mkdir()
        runtime.mkdir()
        runtime.chmod(0o777)
        (units / "netprobe-agent.service").write_text(unit_text, encoding="utf-8")
        env = [f"SYSTEMD_UNIT_PATH={units}:", f"XDG_RUNTIME_DIR={runtime}", f"HOME={runtime}",
               "SYSTEMD_LOG_LEVEL=warning"]
        cmd = [SYSTEMD_BIN, "--test", "--user", "--unit=netprobe-agent.service", "--no-pager"]
        if os.geteuid() == 0:  # a user manager refuses to run as root
            cmd = [RUNUSER or "", "-u", "nobody", "--", "env", *env, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **dict(e.split("=", 1) for e in env)})
    block = re.search(r"^\t-> Unit netprobe-agent\.service:\n(.*?)(?=^\t-> Unit |\Z)",
                      proc.stdout, re.MULTILINE | re.DOTALL)
    assert block, proc.stdout[-2000:] + proc.stderr
    found: dict[str, list[str]] = {}
    section = ""
    for line in block.group(1).split("\n"):
        if line.startswith("\t\t-> "):
            section = line.strip("\t->: ")
        elif line.startswith("\t\t\tCommand Line: ") and section == "ExecStart":
            found["ExecStart"] = [line.split(": ", 1)[1]]
        elif line.startswith("\t\t") and not line.startswith("\t\t\t") and ": " in line:
            key, value = line.strip("\t").split(": ", 1)
            found.setdefault(key, []).append(value)
    return found


def split_dumped_command_line(line: str) -> list[str]:
    """systemd's quote_command_line() output: words separated by blanks, "..." around words
    with special characters, and inside them a backslash before each of \\ " ` $."""
    words: list[str] = []
    word: list[str] = []
    quoted = started = False
    i = 0
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            word.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            quoted, started = not quoted, True
        elif c == " " and not quoted:
            if started or word:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
        i += 1
    assert not quoted, line
    if started or word:
        words.append("".join(word))
    return words


"""`netprobe service`: generated unit / plist / task files, their quoting, and the I/O paths.

Files are checked by parsers of each format: systemd's own `systemd-analyze verify` and
`security` where installed, plus an ExecStart splitter written here from systemd.syntax(7)
and systemd's extract_first_word(); plistlib; xml.etree and a splitter following the Microsoft
C runtime's command-line rules. Install, uninstall and status run against fake `systemctl`,
`launchctl` and `schtasks` programs (they record their arguments) in a temporary HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from netprobe.errors import ConfigError, NetprobeError
from netprobe.service import files as service_files
from netprobe.service import manager as service
from netprobe.service.manager import (
    Command,
    MakeDirs,
    RemoveFile,
    ServiceSpec,
    WriteFile,
    encode_windows_task,
    install,
    plan_install,
    render_launchd_plist,
    render_systemd_unit,
    render_windows_task_xml,
    status,
    uninstall,
    unit_path,
)

NS = {"t": service.TASK_NAMESPACE}
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


# ---------------------------------------------------------------------------------------------
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


def test_the_test_parsers_follow_the_documented_rules() -> None:
    assert extract_words(r'''a "b c" 'd "e"' f\sg "h\"i" j"k l"m''') == \
        ["a", "b c", 'd "e"', "f g", 'h"i', "jk lm"]
    assert extract_words(r'"\x41\101\u00e9\t"') == ["AA\u00e9\t"]
    with pytest.raises(ValueError):
        extract_words('"open')
    with pytest.raises(ValueError):  # not an escape systemd knows: it warns
        extract_words("f\\ g")
    assert split_exec_start('/bin/echo "100%% $$HOME" x') == \
        ("/bin/echo", ["/bin/echo", "100% $HOME", "x"])
    assert split_exec_start('@/bin/a$b "/bin/a$$b" c') == ("/bin/a$b", ["/bin/a$b", "c"])
    with pytest.raises(ValueError):
        split_exec_start("/bin/echo $HOME")
    assert split_windows_args(r'a "b c" d\\"e f" g\"h i\\j ""') == \
        ["a", "b c", 'd\\e f', 'g"h', "i\\\\j", ""]


# ---------------------------------------------------------------------------------------------
# systemd


def test_system_unit_has_the_hardened_service_settings() -> None:
    unit = parse_unit(render_systemd_unit(linux_spec()))
    u, s, i = unit["Unit"], unit["Service"], unit["Install"]
    assert u["Wants"] == u["After"] == ["network-online.target"]
    assert u["StartLimitIntervalSec"] == ["0"]
    expected = {
        "Type": "simple", "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM",
        "Restart": "on-failure", "RestartPreventExitStatus": "2", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "DynamicUser": "yes", "StateDirectory": "netprobe-agent",
        "LogsDirectory": "netprobe-agent", "CapabilityBoundingSet": "",
        "SyslogIdentifier": "netprobe-agent",
    }
    for key, value in expected.items():
        assert s[key] == [value], key
    assert s["TimeoutStopSec"] and s["RestartSec"]
    assert "PYTHONUNBUFFERED=1" in s["Environment"]
    assert i["WantedBy"] == ["multi-user.target"]
    path, argv = split_exec_start(s["ExecStart"][0])
    assert path == "/opt/netprobe/bin/python"
    assert argv == ["/opt/netprobe/bin/python", "-m", "netprobe", "agent", "--config", str(CONFIG)]


def test_user_unit_avoids_namespaces_and_system_targets() -> None:
    unit = parse_unit(render_systemd_unit(linux_spec(scope="user")))
    s = unit["Service"]
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert "Wants" not in unit["Unit"] and "After" not in unit["Unit"]
    # These need user namespaces in a user manager (often refused, e.g. Ubuntu 24.04).
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "DynamicUser", "User"):
        assert key not in s
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]


def test_run_as_user_replaces_dynamic_user_and_home_paths_stay_readable() -> None:
    s = parse_unit(render_systemd_unit(linux_spec(user="netprobe")))["Service"]
    assert s["User"] == ["netprobe"] and "DynamicUser" not in s
    home_unit = parse_unit(render_systemd_unit(linux_spec(python="/home/ann/venv/bin/python")))
    assert home_unit["Service"]["ProtectHome"] == ["read-only"]


def test_newer_systemd_gets_exponential_backoff_and_protectproc() -> None:
    old = parse_unit(render_systemd_unit(linux_spec(), systemd_version=252))["Service"]
    new = parse_unit(render_systemd_unit(linux_spec(), systemd_version=255))["Service"]
    assert "RestartSteps" not in old and "ProtectProc" in old
    assert new["RestartSteps"] and new["RestartMaxDelaySec"] == ["5min"]
    baseline = parse_unit(render_systemd_unit(linux_spec()))["Service"]
    assert "ProtectProc" not in baseline and "RestartSteps" not in baseline


def test_environment_working_dir_and_description_survive_quoting() -> None:
    spec = linux_spec(environment=(("GREETING", 'say "hi" 100% $now \\ ok'),),
                      working_dir=PurePosixPath("/srv/net probe/100%"),
                      description="netprobe 100% agent")
    unit = parse_unit(render_systemd_unit(spec))
    envs = [expand_specifiers(w) for v in unit["Service"]["Environment"]
            for w in extract_words(v)]
    assert 'GREETING=say "hi" 100% $now \\ ok' in envs  # Environment= does no $ expansion
    assert expand_specifiers(unit["Service"]["WorkingDirectory"][0]) == "/srv/net probe/100%"
    assert expand_specifiers(unit["Unit"]["Description"][0]) == "netprobe 100% agent"


@pytest.mark.parametrize("bad", [
    {"python": "/home/o'brien/venv/bin/python"},  # systemd refuses quotes in the path
    {"python": "relative/python"},
    {"config": PurePosixPath("relative.toml")},
    {"config": None},
    {"argv": ("/bin/agent", "line\nbreak")},
    {"argv": ("/bin/agent", "not xml \ufffe")},
    {"name": "../evil"},
    {"name": "a b"},
    {"scope": "everyone"},
    {"environment": (("BAD-NAME", "x"),)},
    {"user": "root; rm"},
    {"scope": "user", "user": "someone"},
    {"working_dir": PurePosixPath("/srv/../etc")},
    {"description": "ends with a backslash \\"},
])
def test_unexpressible_specs_are_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        render_systemd_unit(linux_spec(**bad))


# Text systemd, plists and XML can all carry: no C0 controls, DEL, surrogates or U+FFFE/F.
TEXT = st.text(st.characters(exclude_categories=["Cs"],
                             exclude_characters=[chr(c) for c in range(32)]
                             + ["\x7f", "\ufffe", "\uffff"]), max_size=24)
PATH_PART = st.text(st.characters(exclude_categories=["Cs"],
                                  exclude_characters=[chr(c) for c in range(32)]
                                  + ["\x7f", "\ufffe", "\uffff", "/", "\"", "'", "\\"]),
                    min_size=1, max_size=16).filter(lambda p: p not in (".", ".."))
POSIX_PATH = st.lists(PATH_PART, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(exe=POSIX_PATH, args=st.lists(TEXT, max_size=6))
@example(exe="/opt/my $HOME/py", args=["100%", "$x", "${y}", "a b", '"', "'", "\\", ";", ""])
@example(exe="/opt/100%/p y", args=["\u00e9t\u00e9 \U0001f600", "\\\"", "%%n", "$$"])
def test_exec_start_round_trips_through_systemds_rules(exe: str, args: list[str]) -> None:
    spec = linux_spec(argv=(exe, *args))
    exec_start = parse_unit(render_systemd_unit(spec))["Service"]["ExecStart"]
    assert len(exec_start) == 1
    assert split_exec_start(exec_start[0]) == (exe, [exe, *args])


@given(config=TEXT.filter(lambda t: t.strip() == t and t),
       scope=st.sampled_from(service.SCOPES))
def test_config_path_round_trips_through_systemds_rules(config: str,
                                                        scope: service.Scope) -> None:
    spec = linux_spec(config=PurePosixPath("/" + config), scope=scope)
    path, argv = split_exec_start(
        parse_unit(render_systemd_unit(spec))["Service"]["ExecStart"][0])
    assert argv[-1] == str(spec.config)


def _verify(unit_text: str, directory: Path, *, user: bool = False) -> str:
    """`systemd-analyze verify` of the unit; its complaints ('' if none)."""
    path = directory / "netprobe-agent.service"
    path.write_text(unit_text, encoding="utf-8")
    runtime = directory / "runtime"
    runtime.mkdir(exist_ok=True)
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(["--user"] if user else []), str(path)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0
                                                  else f" (exit {proc.returncode})")


@needs_systemd_analyze
@pytest.mark.parametrize("kw", [
    {}, {"scope": "user"}, {"user": "netprobe"},
    {"environment": (("A", "x y"), ("B", "100% $z")), "working_dir": PurePosixPath("/tmp")},
])
@pytest.mark.parametrize("version", [None, 252, 255])
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, kw: dict[str, Any],
                                                 version: int | None) -> None:
    spec = linux_spec(python=sys.executable, **kw)
    text = render_systemd_unit(spec, systemd_version=version)
    problems = _verify(text, tmp_path, user=spec.scope == "user")
    if version == 255:  # this machine's systemd may be older than the one the unit is for
        problems = "\n".join(line for line in problems.splitlines()
                             if not re.search(r"Unknown key '?(RestartSteps|RestartMaxDelaySec)",
                                              line))
    assert problems == ""


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_system_unit_ok(tmp_path: Path) -> None:
    path = tmp_path / "netprobe-agent.service"
    path.write_text(render_systemd_unit(linux_spec(python=sys.executable), systemd_version=252))
    proc = subprocess.run([SYSTEMD_ANALYZE or "", "security", "--offline=true", str(path)],
                          capture_output=True, text=True, timeout=30)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert level, proc.stdout + proc.stderr
    assert float(level.group(1)) <= 2.0 and level.group(2) == "OK"


@needs_systemd_analyze
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(PATH_PART, min_size=1, max_size=2), arg=TEXT)
@example(parts=["with space", "100% $HOME é"], arg="x")
def test_systemd_finds_the_executable_at_the_quoted_path(parts: list[str], arg: str) -> None:
    # systemd-analyze verify reports "Command ... is not executable" unless systemd's own
    # reading of ExecStart gives exactly the path the program is at.
    assume(all(len(p.encode()) < 200 for p in parts))
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp, "bin", *parts, "agent")
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        unit = render_systemd_unit(linux_spec(argv=(str(exe), arg)))
        assert _verify(unit, Path(tmp)) == ""


@needs_systemd_analyze
def test_systemd_analyze_notices_a_wrong_path(tmp_path: Path) -> None:
    # The check above would pass vacuously if verify did not look at the executable.
    unit = render_systemd_unit(linux_spec(argv=(str(tmp_path / "missing dir" / "agent"),)))
    assert "not executable" in _verify(unit, tmp_path)


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


@needs_systemd_test
def test_systemd_itself_reads_the_command_line_environment_and_directory() -> None:
    spec = linux_spec(scope="user", argv=("/opt/my $HOME/py", "100% $x", '"q" \\ é', ""),
                      environment=(("GREETING", 'say "hi" 100% $now'),),
                      working_dir=PurePosixPath("/srv/net probe/100%"))
    seen = systemd_reads(render_systemd_unit(spec))
    argv = [expand_env(w) for w in split_dumped_command_line(seen["ExecStart"][0])]
    assert argv == list(spec.command)
    assert 'GREETING=say "hi" 100% $now' in seen["Environment"]
    assert seen["WorkingDirectory"] == ["/srv/net probe/100%"]


@needs_systemd_test
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exe=POSIX_PATH, args=st.lists(TEXT, max_size=5), value=TEXT)
def test_systemd_itself_reads_back_any_quoted_command_line(exe: str, args: list[str],
                                                           value: str) -> None:
    spec = linux_spec(scope="user", argv=(exe, *args), environment=(("V", value),))
    seen = systemd_reads(render_systemd_unit(spec))
    dumped = split_dumped_command_line(seen["ExecStart"][0])
    assert [expand_env(w) for w in dumped] == [exe, *args]
    assert f"V={value}" in seen["Environment"]


# ---------------------------------------------------------------------------------------------
# launchd


def test_launch_daemon_plist_round_trips_with_the_required_keys() -> None:
    job = plistlib.loads(render_launchd_plist(linux_spec()))
    assert job["Label"] == "netprobe-agent"
    assert job["ProgramArguments"] == list(linux_spec().command)
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["StandardErrorPath"] == "/Library/Logs/netprobe-agent/netprobe-agent.log"
    assert job["EnvironmentVariables"]["STATE_DIRECTORY"] == \
        "/Library/Application Support/netprobe-agent"
    assert "UserName" not in job and job["ThrottleInterval"] > 0
    assert plistlib.loads(render_launchd_plist(linux_spec(user="_netprobe")))["UserName"] == \
        "_netprobe"


def test_launch_agent_uses_the_users_home_and_needs_it() -> None:
    spec = linux_spec(scope="user", home=PurePosixPath("/Users/ann"))
    job = plistlib.loads(render_launchd_plist(spec))
    assert job["StandardOutPath"] == "/Users/ann/Library/Logs/netprobe-agent/netprobe-agent.log"
    assert unit_path(spec, "darwin") == \
        PurePosixPath("/Users/ann/Library/LaunchAgents/netprobe-agent.plist")
    if service._host_or_none() != "darwin":  # launchd does not expand "~"
        with pytest.raises(ConfigError, match="home"):
            render_launchd_plist(linux_spec(scope="user"))


@given(argv=st.lists(TEXT, min_size=1, max_size=6), env=st.dictionaries(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), TEXT, max_size=3))
def test_plist_arrays_carry_any_text_unchanged(argv: list[str], env: dict[str, str]) -> None:
    spec = linux_spec(argv=("/opt/x y/agent", *argv), environment=tuple(env.items()))
    job = plistlib.loads(render_launchd_plist(spec))
    assert job["ProgramArguments"] == ["/opt/x y/agent", *argv]
    for key, value in env.items():
        assert job["EnvironmentVariables"][key] == value


# ---------------------------------------------------------------------------------------------
# Windows Task Scheduler


def test_system_task_xml_starts_at_boot_as_system() -> None:
    text = render_windows_task_xml(windows_spec())
    assert text.startswith('<?xml version="1.0" encoding="UTF-16"?>')
    root = parse_task(encode_windows_task(text))
    assert root.tag == f"{{{service.TASK_NAMESPACE}}}Task" and root.get("version") == "1.2"
    assert root.find("t:Triggers/t:BootTrigger", NS) is not None
    assert root.find("t:Triggers/t:LogonTrigger", NS) is None
    assert root.findtext("t:Triggers/t:BootTrigger/t:Repetition/t:Interval", namespaces=NS)
    assert root.findtext("t:Principals/t:Principal/t:UserId", namespaces=NS) == "S-1-5-18"
    task_settings = root.find("t:Settings", NS)
    assert task_settings is not None
    settings_ = {e.tag.split("}")[1]: e.text for e in task_settings}
    assert settings_["DisallowStartIfOnBatteries"] == "false"
    assert settings_["StopIfGoingOnBatteries"] == "false"
    assert settings_["ExecutionTimeLimit"] == "PT0S"
    assert settings_["MultipleInstancesPolicy"] == "IgnoreNew"
    command, args = task_exec(root)
    assert command == WIN_PYTHON
    assert args == ["-m", "netprobe", "agent", "--config", str(WIN_CONFIG)]
    actions, principal = root.find("t:Actions", NS), root.find("t:Principals/t:Principal", NS)
    assert actions is not None and principal is not None
    assert actions.get("Context") == principal.get("id")


def test_trigger_children_follow_the_schemas_sequence() -> None:
    # triggerBaseType is an xs:sequence: Enabled, ..., Repetition, then UserId / Delay.
    root = parse_task(encode_windows_task(render_windows_task_xml(
        windows_spec(scope="user", user="CLINIC\\ann"))))
    trigger = root.find("t:Triggers/t:LogonTrigger", NS)
    assert trigger is not None
    assert [e.tag.split("}")[1] for e in trigger] == ["Enabled", "Repetition", "UserId", "Delay"]
    assert trigger.findtext("t:UserId", namespaces=NS) == "CLINIC\\ann"
    principal = root.find("t:Principals/t:Principal", NS)
    assert principal is not None
    assert principal.findtext("t:LogonType", namespaces=NS) == "InteractiveToken"


def test_windows_service_accounts_and_refusals() -> None:
    root = parse_task(encode_windows_task(render_windows_task_xml(
        windows_spec(user="NT AUTHORITY\\LocalService"))))
    assert root.findtext("t:Principals/t:Principal/t:UserId", namespaces=NS) == "S-1-5-19"
    for bad in (windows_spec(user="ann"), windows_spec(scope="user"),
                windows_spec(environment=(("A", "b"),)),
                windows_spec(python="/usr/bin/python3"),
                windows_spec(config=PureWindowsPath(r"C:\%APPDATA%\agent.toml"))):
        with pytest.raises(ConfigError):
            render_windows_task_xml(bad)


@given(args=st.lists(TEXT, max_size=6), wd=st.none() | TEXT)
@example(args=['a "b"', "c\\", "d\\\\\"", "", " ", "<&>", "100%", "é 😀"], wd="D & <x>")
def test_windows_arguments_round_trip_through_xml_and_the_c_runtime(
        args: list[str], wd: str | None) -> None:
    working_dir = PureWindowsPath("C:\\" + wd) if wd is not None else None
    spec = windows_spec(argv=(WIN_PYTHON, *args), working_dir=working_dir)
    if any(service._WINDOWS_ENV_REF_RE.search(t) for t in [*args, str(working_dir)]):
        with pytest.raises(ConfigError, match="%"):
            render_windows_task_xml(spec)
        return
    root = parse_task(encode_windows_task(render_windows_task_xml(spec)))
    assert task_exec(root) == (WIN_PYTHON, args)
    if working_dir is not None:
        assert root.findtext("t:Actions/t:Exec/t:WorkingDirectory", namespaces=NS) == \
            str(working_dir)


# ---------------------------------------------------------------------------------------------
# Paths and plans (pure)


def test_unit_paths_for_every_platform_and_scope() -> None:
    home = {"home": PurePosixPath("/home/ann")}
    assert str(unit_path(linux_spec(), "linux")) == \
        "/etc/systemd/system/netprobe-agent.service"
    assert str(unit_path(linux_spec(scope="user", **home), "linux")) == \
        "/home/ann/.config/systemd/user/netprobe-agent.service"
    assert str(unit_path(linux_spec(), "darwin")) == "/Library/LaunchDaemons/netprobe-agent.plist"
    if service._host_or_none() != "windows":
        assert str(unit_path(windows_spec(), "windows")) == \
            r"C:\ProgramData\netprobe\netprobe-agent.xml"
        ann = windows_spec(scope="user", home=PureWindowsPath(r"C:\Users\ann"))
        assert str(unit_path(ann, "windows")) == \
            r"C:\Users\ann\AppData\Local\netprobe\netprobe-agent.xml"


@pytest.mark.parametrize("platform", ["linux", "darwin", "windows"])
def test_install_and_uninstall_plans_on_every_platform(platform: service.Platform) -> None:
    spec = windows_spec() if platform == "windows" else linux_spec()
    new = plan_install(spec, platform)
    assert isinstance(new.steps[-1], Command) and new.commands
    assert any(isinstance(s, WriteFile) and s.data == new.data for s in new.steps)
    same = plan_install(spec, platform, existing=new.data)
    assert same.up_to_date and not any(isinstance(s, WriteFile) for s in same.steps)
    with pytest.raises(NetprobeError, match="--force"):
        plan_install(spec, platform, existing=b"older")
    forced = plan_install(spec, platform, existing=b"older", force=True)
    assert forced.replaced
    assert any(isinstance(s, MakeDirs) for s in new.steps) == (platform == "darwin")
    gone = service.plan_uninstall(spec, platform)
    assert any(isinstance(s, RemoveFile) for s in gone.steps) and gone.commands
    nothing = service.plan_uninstall(spec, platform, installed=False, copy_exists=False)
    assert nothing.steps == ()


def test_linux_plans_enable_now_and_restart_only_when_replaced() -> None:
    spec = linux_spec(scope="user")
    argv = lambda r: [c.argv for c in r.commands]  # noqa: E731
    assert argv(plan_install(spec, "linux")) == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "netprobe-agent.service")]
    assert ("systemctl", "--user", "restart", "netprobe-agent.service") in \
        argv(plan_install(spec, "linux", existing=b"x", force=True))


@pytest.mark.parametrize("platform", ["linux", "darwin", "windows"])
@pytest.mark.parametrize("scope", service.SCOPES)
def test_dry_runs_work_for_every_platform_and_change_nothing(
        platform: service.Platform, scope: service.Scope, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no service manager may run
    home = PureWindowsPath(r"C:\Users\ann") if platform == "windows" else \
        PurePosixPath("/Users/ann")
    spec = (windows_spec(user="CLINIC\\ann" if scope == "user" else None)
            if platform == "windows" else linux_spec(python=sys.executable))
    spec = replace(spec, scope=scope, home=home if platform != "linux" else None)
    result = install(spec, platform, dry_run=True)
    assert result.dry_run and result.text and result.commands
    gone = uninstall(spec, platform, dry_run=True)
    assert gone.dry_run
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# I/O against fake service managers

FAKE_TOOL = """\
#!{python}
# Records its arguments; answers like {name} would, from files next to the record.
import json, os, sys
state = os.environ["FAKE_STATE"]
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
key = " ".join(sys.argv[1:])
answers = json.load(open(os.path.join(state, "answers.json")))
out, code = answers.get(key, answers.get("*", ["", 0]))
(sys.stdout if code == 0 else sys.stderr).write(out)
sys.exit(code)
"""


class FakeManager:
    """A fake systemctl / launchctl / schtasks on PATH that records how it was called."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir(parents=True)
        self.state.mkdir()
        self.answers: dict[str, list[object]] = {}
        self._save()
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
        monkeypatch.setenv("FAKE_STATE", str(self.state))

    def add(self, name: str) -> FakeManager:
        tool = self.bin / name
        tool.write_text(FAKE_TOOL.format(python=sys.executable, name=name))
        tool.chmod(0o755)
        return self

    def answer(self, args: str, out: str = "", code: int = 0) -> None:
        self.answers[args] = [out, code]
        self._save()

    def _save(self) -> None:
        (self.state / "answers.json").write_text(json.dumps(self.answers))

    @property
    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def clear(self) -> None:
        (self.state / "calls.jsonl").unlink(missing_ok=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("USER", "ann")
    return home


@pytest.fixture
def config_file(home: Path) -> Path:
    path = home / "net probe" / "agent 100%.toml"
    path.parent.mkdir()
    path.write_text("# agent settings\n")
    return path


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeManager]:
    fake = FakeManager(tmp_path / "fake", monkeypatch).add("systemctl")
    fake.answer("--user show --property=Version", "Version=255.4-1\n")
    fake.answer("show --property=Version", "Version=252\n")
    monkeypatch.setattr(service_files, "host_platform", lambda: "linux")
    yield fake


def user_spec(config_file: Path) -> ServiceSpec:
    return ServiceSpec(config=config_file, scope="user")


def test_user_install_writes_the_unit_and_enables_it(home: Path, config_file: Path,
                                                     systemctl: FakeManager) -> None:
    result = install(user_spec(config_file))
    path = home / ".config/systemd/user/netprobe-agent.service"
    assert result.path == path and not result.dry_run
    assert path.read_bytes() == result.data
    assert path.stat().st_mode & 0o777 == 0o644
    assert systemctl.calls == [
        ["systemctl", "--user", "show", "--property=Version"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "netprobe-agent.service"]]
    service_ = parse_unit(path.read_text())["Service"]
    assert "RestartSteps" in service_  # the fake manager said it is systemd 255
    assert split_exec_start(service_["ExecStart"][0])[1][-1] == str(config_file)
    assert any("enable-linger ann" in w for w in result.warnings)


def test_reinstall_is_idempotent_and_other_settings_need_force(
        home: Path, config_file: Path, systemctl: FakeManager) -> None:
    install(user_spec(config_file))
    systemctl.clear()
    again = install(user_spec(config_file))
    assert again.up_to_date
    assert systemctl.calls[-1] == ["systemctl", "--user", "enable", "--now",
                                   "netprobe-agent.service"]
    changed = replace(user_spec(config_file), environment=(("X", "1"),))
    with pytest.raises(NetprobeError, match="--force"):
        install(changed)
    systemctl.clear()
    result = install(changed, force=True)
    assert result.replaced and "X=1" in Path(result.path).read_text()
    assert systemctl.calls[-1] == ["systemctl", "--user", "restart", "netprobe-agent.service"]


def test_status_and_uninstall_of_a_user_unit(home: Path, config_file: Path,
                                             systemctl: FakeManager) -> None:
    spec = user_spec(config_file)
    assert status(spec).installed is False  # not installed: no error
    install(spec)
    systemctl.answer("*", "LoadState=loaded\nActiveState=active\nSubState=running\n"
                          "MainPID=4242\nUnitFileState=enabled\nResult=success\n")
    st = status(spec)
    assert (st.installed, st.running, st.state, st.pid) == (True, True, "active", 4242)
    assert st.logs == "journalctl --user -u netprobe-agent"
    systemctl.answer("*", "Failed to connect to bus: No medium found", 1)
    st = status(spec)
    assert st.installed and st.running is None and "No medium found" in st.detail
    systemctl.answer("*", "")
    systemctl.clear()
    result = uninstall(spec)
    assert result.was_installed and not Path(result.path).exists()
    assert ["systemctl", "--user", "disable", "--now", "netprobe-agent.service"] in \
        systemctl.calls
    assert uninstall(spec).steps == ()  # again: nothing to do, no error


def test_system_install_needs_root(config_file: Path, systemctl: FakeManager,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "_is_admin", lambda: False)
    with pytest.raises(NetprobeError, match="sudo"):
        install(ServiceSpec(config=config_file))
    assert systemctl.calls == []


def test_system_install_as_root(tmp_path: Path, config_file: Path, systemctl: FakeManager,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "_is_admin", lambda: True)
    monkeypatch.setattr(service, "_systemd_booted", lambda: True)
    monkeypatch.setattr(service_files, "SYSTEMD_SYSTEM_DIR", PurePosixPath(tmp_path / "etc"))
    result = install(ServiceSpec(config=config_file))
    assert result.path == tmp_path / "etc" / "netprobe-agent.service"
    assert ["systemctl", "enable", "--now", "netprobe-agent.service"] in systemctl.calls
    # pytest's folders are private (0700): the service's own user could not read the config.
    assert any("cannot read the config file" in w for w in result.warnings)
    monkeypatch.setattr(service, "_systemd_booted", lambda: False)
    with pytest.raises(NetprobeError, match="not running"):
        install(ServiceSpec(config=config_file), force=True)


def test_failures_are_netprobe_errors(home: Path, config_file: Path, systemctl: FakeManager,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not found"):
        install(user_spec(home / "missing.toml"))
    with pytest.raises(ConfigError, match="no such program"):
        install(replace(user_spec(config_file), python=str(home / "nopython")))
    systemctl.answer("--user enable --now netprobe-agent.service",
                     "Failed to enable unit: Access denied", 1)
    with pytest.raises(NetprobeError, match="Access denied"):
        install(user_spec(config_file))
    systemctl.answer("--user show --property=Version", "Failed to connect to bus", 1)
    with pytest.raises(NetprobeError, match="Failed to connect to bus"):
        install(user_spec(config_file), force=True)
    monkeypatch.setenv("PATH", str(home / "empty"))
    with pytest.raises(NetprobeError, match="systemctl not found"):
        install(user_spec(config_file), force=True)
    assert status(user_spec(config_file)).running is None  # still no exception
    with pytest.raises(NetprobeError, match="--dry-run"):
        install(user_spec(config_file), "windows")


def test_launchd_install_status_uninstall(tmp_path: Path, home: Path, config_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeManager(tmp_path / "fake", monkeypatch).add("launchctl")
    monkeypatch.setattr(service_files, "host_platform", lambda: "darwin")
    spec = ServiceSpec(config=config_file, scope="user", home=home)
    result = install(spec)
    uid = os.getuid()
    plist = home / "Library/LaunchAgents/netprobe-agent.plist"
    assert result.path == plist and plistlib.loads(plist.read_bytes())["Label"] == spec.name
    assert (home / "Library/Logs/netprobe-agent").is_dir()
    assert fake.calls == [["launchctl", "enable", f"gui/{uid}/netprobe-agent"],
                          ["launchctl", "bootstrap", f"gui/{uid}", str(plist)]]
    fake.answer("*", "gui/501/netprobe-agent = {\n\tstate = running\n\tpid = 77\n}\n")
    st = status(spec)
    assert (st.running, st.pid, st.state) == (True, 77, "running")
    fake.answer("*", "Could not find service", 113)
    assert status(spec).state == "not loaded"
    fake.clear()
    uninstall(spec)  # bootout fails (not loaded): that is fine
    assert fake.calls == [["launchctl", "bootout", f"gui/{uid}/netprobe-agent"]]
    assert not plist.exists()


def test_windows_install_status_uninstall(tmp_path: Path, home: Path, config_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeManager(tmp_path / "fake", monkeypatch).add("schtasks")
    xml_copy = tmp_path / "ProgramData" / "netprobe-agent.xml"
    monkeypatch.setattr(service_files, "host_platform", lambda: "windows")
    monkeypatch.setattr(service, "_is_admin", lambda: True)
    monkeypatch.setattr(service_files, "unit_path", lambda spec, platform: xml_copy)
    # Windows paths cannot be tested on this OS; the agent's command is a POSIX one here.
    spec = ServiceSpec(config=config_file, argv=(sys.executable, "-m", "netprobe", "agent"))
    monkeypatch.setattr(service_files, "check_spec", lambda spec, platform: None)
    fake.answer("/Query /TN netprobe-agent", "ERROR: The system cannot find the file", 1)
    install(spec)
    assert parse_task(xml_copy.read_bytes()).find("t:Actions/t:Exec", NS) is not None
    assert fake.calls[1:] == [
        ["schtasks", "/Create", "/TN", "netprobe-agent", "/XML", str(xml_copy)],
        ["schtasks", "/Run", "/TN", "netprobe-agent"]]
    fake.answer("/Query /TN netprobe-agent", "")
    fake.answer("/Query /TN netprobe-agent /FO CSV /NH",
                '"\\netprobe-agent","N/A","Running"\r\n')
    assert status(spec).running is True
    with pytest.raises(NetprobeError, match="--force"):
        install(replace(spec, description="other"))
    fake.clear()
    uninstall(spec)
    assert ["schtasks", "/Delete", "/TN", "netprobe-agent", "/F"] in fake.calls
    assert not xml_copy.exists()


# ---------------------------------------------------------------------------------------------
# The command line


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="netprobe")
    service.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["service", *argv])


@pytest.mark.parametrize("platform,marker", [("linux", "[Service]"), ("darwin", "<plist"),
                                             ("windows", "<Task")])
def test_print_generates_files_for_any_os(platform: str, marker: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    python = WIN_PYTHON if platform == "windows" else "/opt/netprobe/bin/python"
    config = str(WIN_CONFIG) if platform == "windows" else str(CONFIG)
    args = cli("install", "--platform", platform, "--python", python, "--config", config,
               "--print")
    assert args.func(args) == 0
    assert marker in capsys.readouterr().out


def test_output_writes_utf16_task_xml(tmp_path: Path) -> None:
    out = tmp_path / "task.xml"
    args = cli("install", "--platform", "windows", "--python", WIN_PYTHON, "--config",
               str(WIN_CONFIG), "--output", str(out))
    assert service.run(args) == 0
    assert task_exec(parse_task(out.read_bytes()))[0] == WIN_PYTHON


def test_cli_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if service._host_or_none() != "windows":
        args = cli("install", "--platform", "windows", "--config", str(WIN_CONFIG), "--print")
        assert service.run(args) == service.EXIT_CONFIG
        assert "--python" in capsys.readouterr().err
    args = cli("install", "--env", "NOEQUALS", "--config", "x.toml", "--print")
    assert service.run(args) == service.EXIT_CONFIG


def test_cli_dry_run_and_status(home: Path, config_file: Path, systemctl: FakeManager,
                                capsys: pytest.CaptureFixture[str]) -> None:
    args = cli("install", "--user", "--config", str(config_file), "--dry-run")
    assert service.run(args) == 0
    out = capsys.readouterr().out
    assert "nothing has been changed" in out and "systemctl --user enable --now" in out
    assert not (home / ".config").exists()
    assert service.run(cli("status", "--user")) == service.EXIT_NOT_INSTALLED
    assert service.run(cli("install", "--user", "--config", str(config_file))) == 0
    systemctl.answer("*", "ActiveState=failed\nSubState=failed\nMainPID=0\nResult=exit-code\n")
    capsys.readouterr()
    assert service.run(cli("status", "--user", "--json")) == service.EXIT_NOT_RUNNING
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "netprobe.service.manager-status/1" and doc["state"] == "failed"
    systemctl.answer("*", "")
    assert service.run(cli("uninstall", "--user")) == 0
    assert service.run(cli("install", "--user", "--config", str(home / "nope.toml"))) == \
        service.EXIT_CONFIG


def test_fake_tool_template_is_valid_python() -> None:
    compile(textwrap.dedent(FAKE_TOOL.format(python="", name="x")), "fake", "exec")

"""netprobe.service.systemd: the unit file, checked by a parser of systemd's syntax written
here (tests/service_formats.py), by `systemd-analyze verify` and `security` where installed, and
by systemd itself (``systemd --test``)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from service_formats import (
    CONFIG,
    PATH_PART,
    POSIX_PATH,
    SYSTEMD_ANALYZE,
    TEXT,
    expand_env,
    expand_specifiers,
    extract_words,
    is_about_unit,
    linux_spec,
    needs_systemd_analyze,
    needs_systemd_test,
    parse_unit,
    split_dumped_command_line,
    split_exec_start,
    split_windows_args,
    systemd_reads,
    verify,
)

from netprobe.errors import ConfigError
from netprobe.service.base import SCOPES, Scope
from netprobe.service.systemd import render_systemd_unit


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





@given(exe=POSIX_PATH, args=st.lists(TEXT, max_size=6))
@example(exe="/opt/my $HOME/py", args=["100%", "$x", "${y}", "a b", '"', "'", "\\", ";", ""])
@example(exe="/opt/100%/p y", args=["\u00e9t\u00e9 \U0001f600", "\\\"", "%%n", "$$"])
def test_exec_start_round_trips_through_systemds_rules(exe: str, args: list[str]) -> None:
    spec = linux_spec(argv=(exe, *args))
    exec_start = parse_unit(render_systemd_unit(spec))["Service"]["ExecStart"]
    assert len(exec_start) == 1
    assert split_exec_start(exec_start[0]) == (exe, [exe, *args])


@given(config=TEXT.filter(lambda t: t.strip() == t and t),
       scope=st.sampled_from(SCOPES))
def test_config_path_round_trips_through_systemds_rules(config: str,
                                                        scope: Scope) -> None:
    spec = linux_spec(config=PurePosixPath("/" + config), scope=scope)
    path, argv = split_exec_start(
        parse_unit(render_systemd_unit(spec))["Service"]["ExecStart"][0])
    assert argv[-1] == str(spec.config)





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
    problems = verify(text, tmp_path, user=spec.scope == "user")
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
        assert verify(unit, Path(tmp)) == ""


@needs_systemd_analyze
def test_systemd_analyze_notices_a_wrong_path(tmp_path: Path) -> None:
    # The check above would pass vacuously if verify did not look at the executable.
    unit = render_systemd_unit(linux_spec(argv=(str(tmp_path / "missing dir" / "agent"),)))
    assert "not executable" in verify(unit, tmp_path)


def test_only_complaints_about_the_unit_under_test_count(tmp_path: Path) -> None:
    # verify also reports on units installed on the machine (Debian's irtt runs as nobody):
    # those are not about the unit under test and must not fail these tests.
    unit = tmp_path / "netprobe-agent.service"
    assert is_about_unit(f"{unit}:12: Unknown key 'RestartSteps' in section [Service]", unit)
    assert is_about_unit("netprobe-agent.service: Command /x is not executable: No such file",
                         unit)
    assert not is_about_unit("/usr/lib/systemd/system/irtt.service:9: Special user nobody "
                             "configured, this is not safe!", unit)
    assert not is_about_unit("other-netprobe-agent.service: Command /x is not executable", unit)



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

"""``netprobe service install --reflector``: the reflector's systemd unit (its settings, checked
by the parser in tests/service_formats.py, by `systemd-analyze verify` and `security`, and by
systemd itself), installing it through a fake systemctl, the command line's refusals, and the
unit's command line run for real (`netprobe serve` with the token secret as systemd hands it
over, stopped by SIGTERM well within TimeoutStopSec)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from procs import CHILD_ENV, free_port
from service_formats import (
    SYSTEMD_ANALYZE,
    linux_spec,
    needs_systemd_analyze,
    needs_systemd_test,
    parse_unit,
    split_dumped_command_line,
    split_exec_start,
    systemd_reads,
    verify,
)
from test_service_install import FakeManager

from netprobe import exitcodes
from netprobe.errors import ConfigError
from netprobe.service import cli as service_cli
from netprobe.service.base import Host, ServiceSpec
from netprobe.service.manager import backend_for
from netprobe.service.reflector_unit import DRAIN_S, TIMEOUT_STOP_S
from netprobe.service.systemd import render_systemd_unit

SECRET = PurePosixPath("/etc/netprobe/token-secret")
SYSTEMD = backend_for("linux")


def reflector_spec(**kw: Any) -> ServiceSpec:
    return linux_spec(**{"role": "reflector", "name": "netprobe-reflector",
                         "config": PurePosixPath("/etc/netprobe/reflector.toml"), **kw})


def test_the_unit_runs_serve_hardened_and_drains_before_it_is_killed() -> None:
    unit = parse_unit(render_systemd_unit(reflector_spec(token_secret=SECRET), systemd_version=252))
    s = unit["Service"]
    exe, argv = split_exec_start(s["ExecStart"][0].replace("${CREDENTIALS_DIRECTORY}", "$$C"))
    assert argv == ["/opt/netprobe/bin/python", "-m", "netprobe", "serve", "--config",
                    "/etc/netprobe/reflector.toml", "--token-secret-file", "$C/token-secret"]
    expected = {
        "Type": "simple", "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM",
        "KillMode": "mixed", "Restart": "on-failure", "RestartPreventExitStatus": "2",
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "StateDirectory": "netprobe-reflector", "LogsDirectory": "netprobe-reflector",
        "RuntimeDirectory": "netprobe-reflector", "LoadCredential": f"token-secret:{SECRET}",
        "LimitNOFILE": "65536", "TimeoutStopSec": f"{TIMEOUT_STOP_S}s",
    }
    for key, value in expected.items():
        assert s[key] == [value], key
    assert TIMEOUT_STOP_S >= DRAIN_S + 10
    assert int(s["LimitNOFILE"][0]) >= 4 * 500  # hundreds of sessions, a few fds each
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]


def test_options_of_the_unit() -> None:
    plain = parse_unit(render_systemd_unit(reflector_spec()))["Service"]
    assert "LoadCredential" not in plain and "--token-secret-file" not in plain["ExecStart"][0]
    low = parse_unit(render_systemd_unit(reflector_spec(bind_low_port=True)))["Service"]
    assert low["CapabilityBoundingSet"] == low["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    named = parse_unit(render_systemd_unit(reflector_spec(user="netprobe")))["Service"]
    assert named["User"] == ["netprobe"] and "DynamicUser" not in named
    new = parse_unit(render_systemd_unit(reflector_spec(), systemd_version=255))["Service"]
    assert new["ProtectProc"] == ["invisible"] and new["RestartSteps"]


@pytest.mark.parametrize("kw, message", [
    ({"scope": "user"}, "system service"),
    ({"role": "agent", "token_secret": SECRET}, "are for --reflector"),
    ({"token_secret": PurePosixPath("token-secret")}, "absolute path"),
    ({"token_secret": PurePosixPath("/etc/a\nb")}, "control character"),
])
def test_bad_specs_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_systemd_unit(reflector_spec(**kw))


@pytest.mark.parametrize("platform", ["darwin", "windows"])
def test_only_linux_runs_the_reflector_as_a_service(platform: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("install", "--reflector", "--platform", platform, "--python", "/p",
                 "--config", "/etc/r.toml", "--print")
    assert service_cli.run(args) == exitcodes.USAGE
    assert "Linux with systemd only" in capsys.readouterr().err


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    service_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["service", *argv])


@needs_systemd_analyze
@pytest.mark.parametrize("kw", [{}, {"token_secret": SECRET}, {"bind_low_port": True},
                                {"user": "root"}])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, kw: dict[str, Any]) -> None:
    text = render_systemd_unit(reflector_spec(python=sys.executable, **kw), systemd_version=252)
    assert verify(text, tmp_path) == ""


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    path = tmp_path / "netprobe-reflector.service"
    path.write_text(render_systemd_unit(reflector_spec(python=sys.executable,
                                                       token_secret=SECRET), systemd_version=252))
    proc = subprocess.run([SYSTEMD_ANALYZE or "", "security", "--offline=true", str(path)],
                          capture_output=True, text=True, timeout=30)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert level, proc.stdout + proc.stderr
    assert float(level.group(1)) <= 2.0 and level.group(2) == "OK", proc.stdout


def _systemd_argv(unit_text: str) -> list[str]:
    """ExecStart as systemd reads it, before it expands $VARIABLES."""
    seen = systemd_reads(unit_text)
    return split_dumped_command_line(seen["ExecStart"][0])


@needs_systemd_test
def test_systemd_reads_the_command_line_with_the_credentials_directory() -> None:
    # systemd --test loads units in a user manager: this one's system-only settings are
    # ignored there; the command line is read the same way.
    words = _systemd_argv(render_systemd_unit(reflector_spec(token_secret=SECRET)))
    assert words[3:5] == ["serve", "--config"]
    # left for systemd to expand when it starts the service (the credentials' directory)
    assert words[-2:] == ["--token-secret-file", "${CREDENTIALS_DIRECTORY}/token-secret"]


def test_the_units_command_runs_a_reflector_that_sigterm_stops(tmp_path: Path) -> None:
    # What systemd would do at start: copy the secret into a credentials directory (mode
    # 0400, the service's user), set $CREDENTIALS_DIRECTORY, run ExecStart; then SIGTERM.
    port = free_port()
    config = tmp_path / "reflector.toml"
    config.write_text(f'[reflector]\nhost = "127.0.0.1"\nport = {port}\n')
    secret = tmp_path / "token-secret"
    secret.write_text("k1 = " + "ab" * 32 + "\n")
    secret.chmod(0o600)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    shutil.copyfile(secret, creds / "token-secret")
    (creds / "token-secret").chmod(0o400)
    spec = replace(reflector_spec(token_secret=secret), config=config, python=sys.executable)
    exe, argv = split_exec_start(render_systemd_unit(spec).split("ExecStart=", 1)[1]
                                 .split("\n", 1)[0].replace("${", "$${"))
    argv = [a.replace("${CREDENTIALS_DIRECTORY}", str(creds)) for a in argv]
    proc = subprocess.Popen(argv, executable=exe, stderr=subprocess.PIPE, text=True,
                            env={**CHILD_ENV, "CREDENTIALS_DIRECTORY": str(creds)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"127.0.0.1:{port}" in line and "access tokens required" in line, line
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT_STOP_S)
        assert code == 0 and time.monotonic() - t0 < TIMEOUT_STOP_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Installing, asking and removing, through a fake systemctl


@pytest.fixture
def host(tmp_path: Path) -> tuple[Host, FakeManager]:
    fake = FakeManager(tmp_path / "fake", "systemctl")
    fake.answer("show --property=Version", "Version=252\n")
    fake.answer("show netprobe-reflector.service --property=LoadState,ActiveState,SubState,"
                "MainPID,UnitFileState,Result",
                "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\n")
    root = tmp_path / "root"
    return Host(platform="linux", local=True, os_name="linux", root=root, admin=True,
                executable=sys.executable, tools=fake.tools, systemd_booted=True,
                home=tmp_path), fake


def test_install_status_uninstall(tmp_path: Path, host: tuple[Host, FakeManager],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    machine, fake = host
    config = tmp_path / "reflector.toml"
    config.write_text('[reflector]\nport = 443\nhost = "0.0.0.0"\n')
    args = parse("install", "--reflector", "--config", str(config), "--python", sys.executable)
    assert service_cli.run(args, machine) == exitcodes.OK
    out, err = capsys.readouterr()
    unit = Path(machine.root, "etc/systemd/system/netprobe-reflector.service")
    assert "The netprobe reflector is installed" in out and "--reflector" in out
    assert "serve --config" in unit.read_text()
    assert fake.calls[-2:] == [["systemctl", "daemon-reload"],
                               ["systemctl", "enable", "--now", "netprobe-reflector.service"]]
    assert "below 1024" in err and "refuse to start" in err  # port 443, no secret, not open

    assert service_cli.run(parse("status", "--reflector"), machine) == exitcodes.OK
    assert "The netprobe reflector is running (active, process 42)" in capsys.readouterr().out
    assert service_cli.run(parse("uninstall", "--reflector"), machine) == exitcodes.OK
    assert not unit.exists()
    assert ["systemctl", "disable", "--now", "netprobe-reflector.service"] in fake.calls
    assert service_cli.run(parse("status", "--reflector"), machine) == exitcodes.NOT_INSTALLED


def test_install_warns_of_a_secret_its_user_cannot_read(tmp_path: Path,
                                                        host: tuple[Host, FakeManager]) -> None:
    machine, _ = host
    secret = tmp_path / "token-secret"
    secret.write_text("k1 = " + "ab" * 32 + "\n")
    secret.chmod(0o600)
    config = tmp_path / "reflector.toml"
    config.write_text(f'[reflector]\nhost = "0.0.0.0"\ntoken_secret_file = "{secret}"\n')
    spec = reflector_spec(config=config, python=sys.executable)
    warnings = SYSTEMD.warnings(spec, machine)
    assert any("--token-secret-file" in w for w in warnings), warnings
    spec = replace(spec, token_secret=secret)
    assert not any("token" in w for w in SYSTEMD.warnings(spec, machine))
    assert os.stat(secret).st_mode & 0o077 == 0  # the install left the file as it was

"""Installing, removing and asking about the service through the `Backend` interface, on a
`Host` whose home and root are temporary folders and whose service managers are fake
`systemctl`, `launchctl` and `schtasks` programs that record their arguments; and the
``netprobe service`` command line."""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from service_formats import (
    CONFIG,
    NS,
    WIN_CONFIG,
    WIN_PYTHON,
    parse_task,
    parse_unit,
    split_exec_start,
    task_exec,
)

from netprobe import exitcodes
from netprobe.errors import ConfigError, NetprobeError
from netprobe.service import cli as service_cli
from netprobe.service import manager
from netprobe.service.base import Host, Platform, ServiceSpec
from netprobe.service.host import this_host
from netprobe.service.manager import backend_for

# ---------------------------------------------------------------------------------------------
# I/O against fake service managers

FAKE_TOOL = """\
#!{python}
# Records its arguments; answers like {name} would, from files next to the record.
import json, os, sys
state = {state!r}
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
key = " ".join(sys.argv[1:])
answers = json.load(open(os.path.join(state, "answers.json")))
out, code = answers.get(key, answers.get("*", ["", 0]))
(sys.stdout if code == 0 else sys.stderr).write(out)
sys.exit(code)
"""


class FakeManager:
    """A fake systemctl / launchctl / schtasks that records how it was called."""

    def __init__(self, root: Path, name: str) -> None:
        self.state = root / "state"
        self.state.mkdir(parents=True)
        self.answers: dict[str, list[object]] = {}
        self._save()
        self.path = root / "bin" / name
        self.path.parent.mkdir()
        self.path.write_text(FAKE_TOOL.format(python=sys.executable, name=name,
                                              state=str(self.state)))
        self.path.chmod(0o755)
        self.tools = {name: str(self.path)}
        """What a `Host` that has this manager says about its tools."""

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
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def config_file(home: Path) -> Path:
    path = home / "net probe" / "agent 100%.toml"
    path.parent.mkdir()
    path.write_text("# agent settings\n")
    return path


def local_host(tmp_path: Path, home: Path, platform: Platform, **kw: Any) -> Host:
    """This machine as a `platform` one: home and root in `tmp_path`, no admin rights."""
    return Host(**{"platform": platform, "local": True, "os_name": platform, "home": home,
                   "root": tmp_path / "root", "environ": {"USER": "ann"}, "uid": os.getuid(),
                   "executable": sys.executable, **kw})


@pytest.fixture
def systemctl(tmp_path: Path) -> FakeManager:
    fake = FakeManager(tmp_path / "fake", "systemctl")
    fake.answer("--user show --property=Version", "Version=255.4-1\n")
    fake.answer("show --property=Version", "Version=252\n")
    return fake


@pytest.fixture
def linux(tmp_path: Path, home: Path, systemctl: FakeManager) -> Host:
    return local_host(tmp_path, home, "linux", tools=systemctl.tools)


SYSTEMD = backend_for("linux")


def user_spec(config_file: Path) -> ServiceSpec:
    return ServiceSpec(config=config_file, scope="user")


def test_this_host_is_gathered_from_the_environment_given(tmp_path: Path) -> None:
    fake = FakeManager(tmp_path, "launchctl")
    here = this_host({"PATH": str(fake.path.parent), "USER": "ann", "UNRELATED": "x"})
    assert here.local and here.tools == {"launchctl": str(fake.path)}
    assert here.environ == {"USER": "ann"}
    assert here.executable == sys.executable and here.home == Path.home()
    if sys.platform.startswith("linux"):
        assert here.platform == "linux"


def test_user_install_writes_the_unit_and_enables_it(home: Path, config_file: Path,
                                                     systemctl: FakeManager,
                                                     linux: Host) -> None:
    result = SYSTEMD.install(user_spec(config_file), linux)
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
        config_file: Path, systemctl: FakeManager, linux: Host) -> None:
    SYSTEMD.install(user_spec(config_file), linux)
    systemctl.clear()
    again = SYSTEMD.install(user_spec(config_file), linux)
    assert again.up_to_date
    assert systemctl.calls[-1] == ["systemctl", "--user", "enable", "--now",
                                   "netprobe-agent.service"]
    changed = replace(user_spec(config_file), environment=(("X", "1"),))
    with pytest.raises(NetprobeError, match="--force"):
        SYSTEMD.install(changed, linux)
    systemctl.clear()
    result = SYSTEMD.install(changed, linux, force=True)
    assert result.replaced and "X=1" in Path(result.path).read_text()
    assert systemctl.calls[-1] == ["systemctl", "--user", "restart", "netprobe-agent.service"]


def test_status_and_uninstall_of_a_user_unit(config_file: Path, systemctl: FakeManager,
                                             linux: Host) -> None:
    spec = user_spec(config_file)
    assert SYSTEMD.status(spec, linux).installed is False  # not installed: no error
    SYSTEMD.install(spec, linux)
    systemctl.answer("*", "LoadState=loaded\nActiveState=active\nSubState=running\n"
                          "MainPID=4242\nUnitFileState=enabled\nResult=success\n")
    st = SYSTEMD.status(spec, linux)
    assert (st.installed, st.running, st.state, st.pid) == (True, True, "active", 4242)
    assert st.logs == "journalctl --user -u netprobe-agent"
    systemctl.answer("*", "Failed to connect to bus: No medium found", 1)
    st = SYSTEMD.status(spec, linux)
    assert st.installed and st.running is None and "No medium found" in st.detail
    systemctl.answer("*", "")
    systemctl.clear()
    result = SYSTEMD.uninstall(spec, linux)
    assert result.was_installed and not Path(result.path).exists()
    assert ["systemctl", "--user", "disable", "--now", "netprobe-agent.service"] in \
        systemctl.calls
    assert SYSTEMD.uninstall(spec, linux).steps == ()  # again: nothing to do, no error


def test_system_install_needs_root(config_file: Path, systemctl: FakeManager,
                                   linux: Host) -> None:
    with pytest.raises(NetprobeError, match="sudo"):
        SYSTEMD.install(ServiceSpec(config=config_file), replace(linux, admin=False))
    assert systemctl.calls == []


def test_system_install_as_root(tmp_path: Path, config_file: Path, systemctl: FakeManager,
                                linux: Host) -> None:
    root = replace(linux, admin=True, systemd_booted=True)
    result = SYSTEMD.install(ServiceSpec(config=config_file), root)
    assert result.path == tmp_path / "root/etc/systemd/system/netprobe-agent.service"
    assert Path(result.path).read_bytes() == result.data
    assert ["systemctl", "enable", "--now", "netprobe-agent.service"] in systemctl.calls
    # pytest's folders are private (0700): the service's own user could not read the config.
    assert any("cannot read the config file" in w for w in result.warnings)
    with pytest.raises(NetprobeError, match="not running"):
        SYSTEMD.install(ServiceSpec(config=config_file), replace(root, systemd_booted=False),
                        force=True)


def test_user_install_under_sudo_is_refused(config_file: Path, systemctl: FakeManager,
                                            linux: Host) -> None:
    sudo = replace(linux, admin=True, environ={"SUDO_USER": "ann"})
    with pytest.raises(NetprobeError, match="without sudo"):
        SYSTEMD.install(user_spec(config_file), sudo)
    assert systemctl.calls == []


def test_failures_are_netprobe_errors(home: Path, config_file: Path, systemctl: FakeManager,
                                      linux: Host) -> None:
    with pytest.raises(ConfigError, match="not found"):
        SYSTEMD.install(user_spec(home / "missing.toml"), linux)
    with pytest.raises(ConfigError, match="no such program"):
        SYSTEMD.install(replace(user_spec(config_file), python=str(home / "nopython")), linux)
    systemctl.answer("--user enable --now netprobe-agent.service",
                     "Failed to enable unit: Access denied", 1)
    with pytest.raises(NetprobeError, match="Access denied"):
        SYSTEMD.install(user_spec(config_file), linux)
    systemctl.answer("--user show --property=Version", "Failed to connect to bus", 1)
    with pytest.raises(NetprobeError, match="Failed to connect to bus"):
        SYSTEMD.install(user_spec(config_file), linux, force=True)
    no_systemd = replace(linux, tools={})
    with pytest.raises(NetprobeError, match="systemctl not found"):
        SYSTEMD.install(user_spec(config_file), no_systemd, force=True)
    assert SYSTEMD.status(user_spec(config_file), no_systemd).running is None  # no exception
    with pytest.raises(NetprobeError, match="--dry-run"):
        manager.install(user_spec(config_file), "windows", host=linux)


def test_launchd_install_status_uninstall(tmp_path: Path, home: Path,
                                          config_file: Path) -> None:
    fake = FakeManager(tmp_path / "fake", "launchctl")
    mac = local_host(tmp_path, home, "darwin", tools=fake.tools)
    launchd = backend_for("darwin")
    spec = ServiceSpec(config=config_file, scope="user")
    result = launchd.install(spec, mac)
    uid = os.getuid()
    plist = home / "Library/LaunchAgents/netprobe-agent.plist"
    assert result.path == plist and plistlib.loads(plist.read_bytes())["Label"] == spec.name
    assert (home / "Library/Logs/netprobe-agent").is_dir()
    assert fake.calls == [["launchctl", "enable", f"gui/{uid}/netprobe-agent"],
                          ["launchctl", "bootstrap", f"gui/{uid}", str(plist)]]
    fake.answer("*", "gui/501/netprobe-agent = {\n\tstate = running\n\tpid = 77\n}\n")
    st = launchd.status(spec, mac)
    assert (st.running, st.pid, st.state) == (True, 77, "running")
    fake.answer("*", "Could not find service", 113)
    assert launchd.status(spec, mac).state == "not loaded"
    fake.clear()
    launchd.uninstall(spec, mac)  # bootout fails (not loaded): that is fine
    assert fake.calls == [["launchctl", "bootout", f"gui/{uid}/netprobe-agent"]]
    assert not plist.exists()


def test_windows_install_status_uninstall(tmp_path: Path, home: Path,
                                          config_file: Path) -> None:
    fake = FakeManager(tmp_path / "fake", "schtasks")
    # This machine as a Windows one: its own path rules, ProgramData in a temporary folder.
    pc = local_host(tmp_path, home, "windows", tools=fake.tools, admin=True,
                    environ={"ProgramData": str(tmp_path / "ProgramData")})
    windows = backend_for("windows")
    xml_copy = tmp_path / "ProgramData" / "netprobe" / "netprobe-agent.xml"
    spec = ServiceSpec(config=config_file, argv=(sys.executable, "-m", "netprobe", "agent"))
    fake.answer("/Query /TN netprobe-agent", "ERROR: The system cannot find the file", 1)
    windows.install(spec, pc)
    assert parse_task(xml_copy.read_bytes()).find("t:Actions/t:Exec", NS) is not None
    assert fake.calls[1:] == [
        ["schtasks", "/Create", "/TN", "netprobe-agent", "/XML", str(xml_copy)],
        ["schtasks", "/Run", "/TN", "netprobe-agent"]]
    fake.answer("/Query /TN netprobe-agent", "")
    fake.answer("/Query /TN netprobe-agent /FO CSV /NH",
                '"\\netprobe-agent","N/A","Running"\r\n')
    assert windows.status(spec, pc).running is True
    with pytest.raises(NetprobeError, match="--force"):
        windows.install(replace(spec, description="other"), pc)
    fake.clear()
    windows.uninstall(spec, pc)
    assert ["schtasks", "/Delete", "/TN", "netprobe-agent", "/F"] in fake.calls
    assert not xml_copy.exists()


# ---------------------------------------------------------------------------------------------
# The command line


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="netprobe")
    service_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["service", *argv])


@pytest.mark.parametrize("platform,marker", [("linux", "[Service]"), ("darwin", "<plist"),
                                             ("windows", "<Task")])
def test_print_generates_files_for_any_os(platform: str, marker: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    python = WIN_PYTHON if platform == "windows" else "/opt/netprobe/bin/python"
    config = str(WIN_CONFIG) if platform == "windows" else str(CONFIG)
    args = cli("install", "--platform", platform, "--python", python, "--config", config,
               "--print")
    assert args.func(args) == exitcodes.OK
    assert marker in capsys.readouterr().out


def test_output_writes_utf16_task_xml(tmp_path: Path) -> None:
    out = tmp_path / "task.xml"
    args = cli("install", "--platform", "windows", "--python", WIN_PYTHON, "--config",
               str(WIN_CONFIG), "--output", str(out))
    assert service_cli.run(args) == exitcodes.OK
    assert task_exec(parse_task(out.read_bytes()))[0] == WIN_PYTHON


def test_cli_errors_and_exit_codes(linux: Host, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli("install", "--platform", "windows", "--config", str(WIN_CONFIG), "--print")
    assert service_cli.run(args, linux) == exitcodes.USAGE
    assert "--python" in capsys.readouterr().err
    args = cli("install", "--env", "NOEQUALS", "--config", "x.toml", "--print")
    assert service_cli.run(args, linux) == exitcodes.USAGE
    plan9 = Host(platform=None, local=True, os_name="plan9")
    assert service_cli.run(cli("status"), plan9) == exitcodes.FAILED
    assert "cannot install a service on plan9" in capsys.readouterr().err


def test_cli_dry_run_and_status(home: Path, config_file: Path, systemctl: FakeManager,
                                linux: Host, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli("install", "--user", "--config", str(config_file), "--dry-run")
    assert service_cli.run(args, linux) == exitcodes.OK
    out = capsys.readouterr().out
    assert "nothing has been changed" in out and "systemctl --user enable --now" in out
    assert not (home / ".config").exists()
    assert service_cli.run(cli("status", "--user"), linux) == exitcodes.NOT_INSTALLED
    assert service_cli.run(cli("install", "--user", "--config", str(config_file)), linux) == \
        exitcodes.OK
    systemctl.answer("*", "ActiveState=failed\nSubState=failed\nMainPID=0\nResult=exit-code\n")
    capsys.readouterr()
    assert service_cli.run(cli("status", "--user", "--json"), linux) == exitcodes.UNAVAILABLE
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "netprobe.service.manager-status/1" and doc["state"] == "failed"
    systemctl.answer("*", "ActiveState=active\nSubState=running\nMainPID=9\n")
    assert service_cli.run(cli("status", "--user"), linux) == exitcodes.OK
    assert "running (active, process 9)" in capsys.readouterr().out
    systemctl.answer("*", "")
    assert service_cli.run(cli("uninstall", "--user"), linux) == exitcodes.OK
    assert service_cli.run(cli("install", "--user", "--config", str(home / "nope.toml")),
                           linux) == exitcodes.USAGE


def test_fake_tool_template_is_valid_python() -> None:
    compile(textwrap.dedent(FAKE_TOOL.format(python="", name="x", state="/s")), "fake", "exec")

"""netprobe.service.launchd and .windows: the plist (plistlib) and the task XML (xml.etree and
the Microsoft C runtime's command-line rules); paths and plans of every backend (pure)."""

from __future__ import annotations

import plistlib
import sys
from dataclasses import replace
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from service_formats import (
    NS,
    TEXT,
    WIN_CONFIG,
    WIN_PYTHON,
    linux_spec,
    parse_task,
    task_exec,
    windows_spec,
)

from netprobe.errors import ConfigError, NetprobeError
from netprobe.service.base import SCOPES, Host, Platform, Scope, ServiceSpec
from netprobe.service.launchd import render_launchd_plist
from netprobe.service.manager import backend_for
from netprobe.service.plan import (
    Command,
    InstallResult,
    MakeDirs,
    RemoveFile,
    UninstallResult,
    WriteFile,
)
from netprobe.service.windows import (
    TASK_NAMESPACE,
    WINDOWS_ENV_REF_RE,
    encode_windows_task,
    render_windows_task_xml,
)

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
    spec = linux_spec(scope="user")
    ann = PurePosixPath("/Users/ann")
    job = plistlib.loads(render_launchd_plist(spec, Host.elsewhere("darwin", home=ann)))
    assert job["StandardOutPath"] == "/Users/ann/Library/Logs/netprobe-agent/netprobe-agent.log"
    assert unit_path(spec, "darwin", home=ann) == \
        PurePosixPath("/Users/ann/Library/LaunchAgents/netprobe-agent.plist")
    with pytest.raises(ConfigError, match="home"):  # launchd does not expand "~"
        render_launchd_plist(spec)


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
    assert root.tag == f"{{{TASK_NAMESPACE}}}Task" and root.get("version") == "1.2"
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
    if any(WINDOWS_ENV_REF_RE.search(t) for t in [*args, str(working_dir)]):
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


def unit_path(spec: ServiceSpec, platform: Platform, home: PurePath | None = None) -> PurePath:
    return backend_for(platform).unit_path(spec, Host.elsewhere(platform, home))


def plan_install(spec: ServiceSpec, platform: Platform, **kw: Any) -> InstallResult:
    return backend_for(platform).plan_install(spec, Host.elsewhere(platform), **kw)


def plan_uninstall(spec: ServiceSpec, platform: Platform, **kw: Any) -> UninstallResult:
    return backend_for(platform).plan_uninstall(spec, Host.elsewhere(platform), **kw)


def test_unit_paths_for_every_platform_and_scope() -> None:
    assert str(unit_path(linux_spec(), "linux")) == \
        "/etc/systemd/system/netprobe-agent.service"
    assert str(unit_path(linux_spec(scope="user"), "linux", PurePosixPath("/home/ann"))) == \
        "/home/ann/.config/systemd/user/netprobe-agent.service"
    assert str(unit_path(linux_spec(scope="user"), "linux")) == \
        "~/.config/systemd/user/netprobe-agent.service"  # for display: the home is unknown
    assert str(unit_path(linux_spec(), "darwin")) == "/Library/LaunchDaemons/netprobe-agent.plist"
    assert str(unit_path(windows_spec(), "windows")) == \
        r"C:\ProgramData\netprobe\netprobe-agent.xml"
    ann = windows_spec(scope="user")
    assert str(unit_path(ann, "windows", PureWindowsPath(r"C:\Users\ann"))) == \
        r"C:\Users\ann\AppData\Local\netprobe\netprobe-agent.xml"


def test_paths_follow_the_hosts_environment_and_root(tmp_path: Path) -> None:
    here = Host(platform="linux", local=True, home=tmp_path / "ann", root=tmp_path,
                environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    systemd = backend_for("linux")
    assert systemd.unit_path(linux_spec(), here) == \
        tmp_path / "etc/systemd/system/netprobe-agent.service"
    assert systemd.unit_path(linux_spec(scope="user"), here) == \
        tmp_path / "xdg/systemd/user/netprobe-agent.service"
    pc = replace(here, platform="windows", environ={"ProgramData": str(tmp_path / "PD"),
                                                    "LOCALAPPDATA": str(tmp_path / "LAD")})
    windows = backend_for("windows")
    assert windows.unit_path(windows_spec(), pc) == tmp_path / "PD/netprobe/netprobe-agent.xml"
    assert windows.unit_path(windows_spec(scope="user"), pc) == \
        tmp_path / "LAD/netprobe/netprobe-agent.xml"


@pytest.mark.parametrize("platform", ["linux", "darwin", "windows"])
def test_install_and_uninstall_plans_on_every_platform(platform: Platform) -> None:
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
    gone = plan_uninstall(spec, platform)
    assert any(isinstance(s, RemoveFile) for s in gone.steps) and gone.commands
    nothing = plan_uninstall(spec, platform, installed=False, copy_exists=False)
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
@pytest.mark.parametrize("scope", SCOPES)
def test_dry_runs_work_for_every_platform_and_change_nothing(
        platform: Platform, scope: Scope, tmp_path: Path) -> None:
    # No service manager may run: the host has none.
    here = Host(platform="linux", local=True, home=tmp_path, root=tmp_path,
                executable=sys.executable)
    home = PureWindowsPath(r"C:\Users\ann") if platform == "windows" else \
        PurePosixPath("/Users/ann")
    spec = (windows_spec(user="CLINIC\\ann" if scope == "user" else None)
            if platform == "windows" else linux_spec(python=sys.executable))
    spec = replace(spec, scope=scope)
    host = here if platform == "linux" else Host.elsewhere(platform, home)
    backend = backend_for(platform)
    result = backend.install(spec, host, dry_run=True)
    assert result.dry_run and result.text and result.commands
    gone = backend.uninstall(spec, host, dry_run=True)
    assert gone.dry_run
    assert list(tmp_path.iterdir()) == []

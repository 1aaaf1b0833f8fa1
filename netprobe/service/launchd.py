"""launchd (macOS): the job's plist (pure: `render_launchd_plist`) and the `LaunchdBackend`
that loads it with ``launchctl`` (a LaunchDaemon for the system, a LaunchAgent for a user)."""

from __future__ import annotations

import plistlib
import re
from dataclasses import replace
from pathlib import PurePath
from typing import Any

from netprobe.errors import ConfigError
from netprobe.service.base import (
    Backend,
    Host,
    ServiceSpec,
    check_common,
    check_posix_run_as,
)
from netprobe.service.execute import output_of
from netprobe.service.plan import (
    Command,
    MakeDirs,
    RemoveFile,
    ServiceStatus,
    Step,
    UninstallResult,
)

__all__ = ["LaunchdBackend", "launchd_dirs", "render_launchd_plist"]


def launchd_dirs(spec: ServiceSpec, host: Host) -> tuple[PurePath, PurePath]:
    """(logs, state) directories of a launchd job; the plist points the agent at both."""
    if spec.scope == "system":
        return (host.path(host.root, "Library", "Logs", spec.name),
                host.path(host.root, "Library", "Application Support", spec.name))
    home = host.home_or("~")
    return (host.path(home, "Library", "Logs", spec.name),
            host.path(home, "Library", "Application Support", spec.name))


def render_launchd_plist(spec: ServiceSpec, host: Host | None = None) -> bytes:
    """The launchd job as XML, for `host` (None: another Mac, its home folder unknown)."""
    host = host or Host.elsewhere("darwin")
    BACKEND.check(spec, host)
    if spec.scope == "user" and host.home is None:
        raise ConfigError("a LaunchAgent needs the user's home folder for its log path (launchd "
                          "does not expand ~): generate it on the Mac itself")
    logs, state = launchd_dirs(spec, host)
    log_file = str(logs / f"{spec.name}.log")
    env = {"PYTHONUNBUFFERED": "1", "STATE_DIRECTORY": str(state), "LOGS_DIRECTORY": str(logs),
           **dict(spec.environment)}
    job: dict[str, Any] = {
        "Label": spec.name,
        "ProgramArguments": list(spec.command),
        "RunAtLoad": True,
        # Restart when it fails, not after a clean exit (like systemd's Restart=on-failure).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 30,  # seconds between restarts
        "ExitTimeOut": 20,  # SIGTERM, then SIGKILL after this many seconds
        "ProcessType": "Standard",  # "Background" would throttle CPU and I/O: bad for timing
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
        "EnvironmentVariables": env,
    }
    if spec.working_dir is not None:
        job["WorkingDirectory"] = str(spec.working_dir)
    if spec.user is not None:
        job["UserName"] = spec.user
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True)


def launchd_domain(spec: ServiceSpec, host: Host) -> str:
    """``system``, or the user's ``gui/UID`` (``gui/$(id -u)`` when the id is unknown)."""
    if spec.scope == "system":
        return "system"
    return f"gui/{host.uid}" if host.uid is not None else "gui/$(id -u)"


class LaunchdBackend(Backend):
    """macOS: /Library/LaunchDaemons (system) or ~/Library/LaunchAgents (user)."""

    platform = "darwin"
    tool = "launchctl"
    missing_tool_advice = "launchctl is part of macOS; is this a Mac?"

    def check(self, spec: ServiceSpec, host: Host) -> None:
        check_common(spec, host)
        check_posix_run_as(spec)

    def render(self, spec: ServiceSpec, host: Host, *,
               manager_version: int | None = None) -> tuple[bytes, str]:
        data = render_launchd_plist(spec, host)
        return data, data.decode("utf-8")

    def unit_path(self, spec: ServiceSpec, host: Host) -> PurePath:
        name = f"{spec.name}.plist"
        if spec.scope == "system":
            return host.path(host.root, "Library", "LaunchDaemons", name)
        return host.path(host.home_or("~"), "Library", "LaunchAgents", name)

    def log_hint(self, spec: ServiceSpec, host: Host) -> str:
        logs, _ = launchd_dirs(spec, host)
        return str(logs / f"{spec.name}.log")

    def install_dirs(self, spec: ServiceSpec, host: Host) -> list[MakeDirs]:
        return [MakeDirs(d, spec.user) for d in launchd_dirs(spec, host)]

    def install_commands(self, spec: ServiceSpec, host: Host, path: PurePath, *,
                         replaced: bool, up_to_date: bool) -> list[Command]:
        domain = launchd_domain(spec, host)
        target = f"{domain}/{spec.name}"
        if up_to_date:  # bootstrap fails if it is loaded already; kickstart starts it if not
            return [Command(("launchctl", "enable", target)),
                    Command(("launchctl", "bootstrap", domain, str(path)), may_fail=True),
                    Command(("launchctl", "kickstart", target))]
        stop = [Command(("launchctl", "bootout", target), may_fail=True)] if replaced else []
        return [*stop, Command(("launchctl", "enable", target)),
                Command(("launchctl", "bootstrap", domain, str(path)))]

    def plan_uninstall(self, spec: ServiceSpec, host: Host, *, installed: bool | None = True,
                       copy_exists: bool = True) -> UninstallResult:
        path = self.unit_path(spec, host)
        steps: list[Step] = []
        if installed is not False:
            steps = [Command(("launchctl", "bootout", f"{launchd_domain(spec, host)}/{spec.name}"),
                             may_fail=True), RemoveFile(path)]
        return UninstallResult(platform=self.platform, spec=spec, path=path, steps=tuple(steps),
                               dry_run=True, was_installed=installed)

    def ask_manager(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        proc = self.run(["launchctl", "print", f"{launchd_domain(spec, host)}/{spec.name}"],
                        host)
        if proc.returncode != 0:
            return replace(base, state="not loaded",
                           detail=f"installed but not loaded into launchd: {output_of(proc)}")
        state = re.search(r"^\s*state = (.+)$", proc.stdout, re.MULTILINE)
        pid = re.search(r"^\s*pid = (\d+)$", proc.stdout, re.MULTILINE)
        exit_status = re.search(r"^\s*last exit code = (.+)$", proc.stdout, re.MULTILINE)
        word = state.group(1).strip() if state else "unknown"
        detail = f"last exit: {exit_status.group(1).strip()}" if exit_status else ""
        return replace(base, running=word == "running" if state else None, state=word,
                       pid=int(pid.group(1)) if pid else None, detail=detail)


BACKEND = LaunchdBackend()

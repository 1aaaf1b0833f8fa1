"""Windows Task Scheduler: the task's XML (pure: `render_windows_task_xml`,
`encode_windows_task`) and the `WindowsBackend` that registers it with ``schtasks``.

Task Scheduler keeps the task in its own store; netprobe keeps a copy of the XML it registered
(in %ProgramData%\\netprobe or %LOCALAPPDATA%\\netprobe) to register from and to compare
against on the next install.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePath

from netprobe.errors import ConfigError
from netprobe.service import execute
from netprobe.service.base import (
    Backend,
    Host,
    ServiceSpec,
    check_common,
    environ_of,
)
from netprobe.service.plan import Command, RemoveFile, ServiceStatus, Step, UninstallResult

__all__ = ["TASK_NAMESPACE", "WindowsBackend", "encode_windows_task", "render_windows_task_xml",
           "windows_arguments"]

TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
WINDOWS_ENV_REF_RE = re.compile(r"%[^%\\/\"=:]+%")
"""What Task Scheduler would expand as an environment variable (it has no escape for it)."""
_WINDOWS_ACCOUNT_RE = re.compile(r"[^\\/\"\[\]:;|=,+*?<>@%]+(\\[^\\/\"\[\]:;|=,+*?<>@%]+)?")
_WINDOWS_SERVICE_ACCOUNTS = {
    "system": "S-1-5-18", "localsystem": "S-1-5-18",
    "localservice": "S-1-5-19", "networkservice": "S-1-5-20",
}
_WINDOWS_REPEAT = "PT5M"
"""Task Scheduler tries to start the task this often; with ``IgnoreNew`` a running agent is
left alone, a crashed one is started again (its own restart-on-failure does not see crashes)."""


def windows_service_sid(user: str) -> str | None:
    """The SID of a service account (SYSTEM, LocalService, NetworkService); None: a person."""
    key = user.lower().removeprefix("nt authority\\").replace(" ", "")
    return _WINDOWS_SERVICE_ACCOUNTS.get(key)


# ---------------------------------------------------------------------------------------------
# The task's XML (pure)



def windows_arguments(args: Sequence[str]) -> str:
    """`args` as one Windows command-line tail (the rules of the Microsoft C runtime)."""
    return subprocess.list2cmdline(list(args))


def render_windows_task_xml(spec: ServiceSpec, host: Host | None = None) -> str:
    """The scheduled task as XML text. Write it as UTF-16 (`encode_windows_task`) for schtasks.

    System scope: starts at boot as SYSTEM (or the service account given). User scope: starts
    at the user's logon, in their session. Both are retried every 5 minutes while not running.
    """
    BACKEND.check(spec, host or Host.elsewhere("windows"))
    system = spec.scope == "system"
    root = ET.Element("Task", {"version": "1.2", "xmlns": TASK_NAMESPACE})

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, tag, attrs)
        if text is not None:
            element.text = text
        return element

    info = sub(root, "RegistrationInfo")
    sub(info, "Author", "netprobe")
    sub(info, "Description", spec.description)
    sub(info, "URI", "\\" + spec.name)

    triggers = sub(root, "Triggers")
    trigger = sub(triggers, "BootTrigger" if system else "LogonTrigger")
    sub(trigger, "Enabled", "true")  # order matters: triggerBaseType is a sequence
    repetition = sub(trigger, "Repetition")
    sub(repetition, "Interval", _WINDOWS_REPEAT)
    sub(repetition, "StopAtDurationEnd", "false")
    if not system:
        sub(trigger, "UserId", spec.user)
    sub(trigger, "Delay", "PT30S" if system else "PT10S")

    principal = sub(sub(root, "Principals"), "Principal", id="Author")
    if system:
        sub(principal, "UserId", windows_service_sid(spec.user or "SYSTEM"))
    else:
        sub(principal, "UserId", spec.user)
        sub(principal, "LogonType", "InteractiveToken")
    sub(principal, "RunLevel", "LeastPrivilege")

    settings = sub(root, "Settings")
    for tag, text in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),  # the defaults stop it on laptops
        ("StopIfGoingOnBatteries", "false"),
        ("AllowHardTerminate", "true"),
        ("StartWhenAvailable", "true"),
        ("RunOnlyIfNetworkAvailable", "false"),
        ("AllowStartOnDemand", "true"),
        ("Enabled", "true"),
        ("Hidden", "false"),
        ("RunOnlyIfIdle", "false"),
        ("WakeToRun", "false"),
        ("ExecutionTimeLimit", "PT0S"),  # no limit (the default kills it after 3 days)
        ("Priority", "5"),  # normal priority (the default, 7, is below normal)
    ):
        sub(settings, tag, text)
    idle = sub(settings, "IdleSettings")
    sub(idle, "StopOnIdleEnd", "false")
    sub(idle, "RestartOnIdle", "false")
    restart = sub(settings, "RestartOnFailure")
    sub(restart, "Interval", "PT1M")
    sub(restart, "Count", "999")

    exe, *args = spec.command
    action = sub(sub(root, "Actions", Context="Author"), "Exec")
    sub(action, "Command", exe)
    if args:
        sub(action, "Arguments", windows_arguments(args))
    if spec.working_dir is not None:
        sub(action, "WorkingDirectory", str(spec.working_dir))

    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(root, "unicode") + "\n"


def encode_windows_task(xml_text: str) -> bytes:
    """The bytes schtasks /XML reads: UTF-16 little-endian with a byte-order mark."""
    return b"\xff\xfe" + xml_text.replace("\n", "\r\n").encode("utf-16-le")



# ---------------------------------------------------------------------------------------------
# The backend


class WindowsBackend(Backend):
    """Windows: a scheduled task that starts at boot as SYSTEM (system) or at the user's logon."""

    platform = "windows"
    tool = "schtasks"
    missing_tool_advice = "schtasks is part of Windows (C:\\Windows\\System32); is it on PATH?"

    def check(self, spec: ServiceSpec, host: Host) -> None:
        check_common(spec, host)
        command = spec.command
        if spec.environment:
            raise ConfigError("a Windows scheduled task cannot set environment variables: put "
                              "these settings in the agent's config file instead")
        if any(c in command[0] for c in '"<>|?*'):
            raise ConfigError(f"not a valid Windows executable path: {command[0]!r}")
        texts = [*command] + ([str(spec.working_dir)] if spec.working_dir is not None else [])
        for text in texts:
            if WINDOWS_ENV_REF_RE.search(text):
                raise ConfigError(f"Task Scheduler would replace the %...% in {text!r} by an "
                                  f"environment variable, and cannot be told not to: use a "
                                  f"path without two '%' signs")
        if spec.scope == "system":
            if spec.user is not None and windows_service_sid(spec.user) is None:
                raise ConfigError(f"a system task runs as SYSTEM, LocalService or "
                                  f"NetworkService, not {spec.user!r} (use --user to run as a "
                                  f"person at logon)")
        elif spec.user is None:
            raise ConfigError("a Windows user task needs the account whose logon starts it: "
                              "pass --run-as 'DOMAIN\\user' (found automatically on Windows)")
        elif not _WINDOWS_ACCOUNT_RE.fullmatch(spec.user):
            raise ConfigError(f"{spec.user!r} is not a Windows account name (DOMAIN\\user)")

    def render(self, spec: ServiceSpec, host: Host, *,
               manager_version: int | None = None) -> tuple[bytes, str]:
        text = render_windows_task_xml(spec, host)
        return encode_windows_task(text), text

    def unit_path(self, spec: ServiceSpec, host: Host) -> PurePath:
        name = f"{spec.name}.xml"
        if spec.scope == "system":
            data = environ_of(host, "ProgramData", "PROGRAMDATA") or r"C:\ProgramData"
            return host.path(data, "netprobe", name)
        local = environ_of(host, "LOCALAPPDATA")
        base = host.path(local) if local else \
            host.path(host.home_or("%USERPROFILE%"), "AppData", "Local")
        return host.path(base, "netprobe", name)

    def log_hint(self, spec: ServiceSpec, host: Host) -> str:
        return "the agent's own log file; Task Scheduler: History tab of task " + spec.name

    def install_commands(self, spec: ServiceSpec, host: Host, path: PurePath, *,
                         replaced: bool, up_to_date: bool) -> list[Command]:
        name = spec.name
        if up_to_date:
            return [Command(("schtasks", "/Run", "/TN", name), may_fail=True)]
        create = ("schtasks", "/Create", "/TN", name, "/XML", str(path))
        if replaced:
            return [Command(("schtasks", "/End", "/TN", name), may_fail=True),
                    Command((*create, "/F")), Command(("schtasks", "/Run", "/TN", name))]
        return [Command(create), Command(("schtasks", "/Run", "/TN", name))]

    def plan_uninstall(self, spec: ServiceSpec, host: Host, *, installed: bool | None = True,
                       copy_exists: bool = True) -> UninstallResult:
        path = self.unit_path(spec, host)
        steps: list[Step] = []
        if installed is not False:
            steps = [Command(("schtasks", "/End", "/TN", spec.name), may_fail=True),
                     Command(("schtasks", "/Delete", "/TN", spec.name, "/F"))]
        if copy_exists:
            steps.append(RemoveFile(path))
        return UninstallResult(platform=self.platform, spec=spec, path=path, steps=tuple(steps),
                               dry_run=True, was_installed=installed)

    def runs_privileged(self, spec: ServiceSpec) -> bool:
        return spec.scope == "system" and windows_service_sid(spec.user or "SYSTEM") == "S-1-5-18"

    def in_user_folder(self, path: str) -> bool:
        lower = path.lower()
        return lower.startswith("c:\\users\\") or "\\appdata\\" in lower

    def _task_exists(self, spec: ServiceSpec, host: Host) -> bool:
        return self.run(["schtasks", "/Query", "/TN", spec.name], host).returncode == 0

    def existing_file(self, spec: ServiceSpec, host: Host, path: PurePath) -> bytes | None:
        # The task is what counts; our copy of its XML tells whether it has other settings.
        if not self._task_exists(spec, host):
            return None
        return execute.read_existing(path) or b""

    def dry_run_existing(self, spec: ServiceSpec, host: Host, path: PurePath) -> bytes | None:
        return None

    def is_installed(self, spec: ServiceSpec, host: Host, path: PurePath) -> bool:
        return self.tool in host.tools and self._task_exists(spec, host)

    def query_status(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        if self.tool not in host.tools:
            return replace(base, running=None, state="unknown",
                           detail=f"{self.tool} not found: cannot ask Task Scheduler")
        return self.ask_manager(spec, host, base)

    def ask_manager(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        proc = self.run(["schtasks", "/Query", "/TN", spec.name, "/FO", "CSV", "/NH"], host)
        if proc.returncode != 0:
            return base
        rows = [r for r in csv.reader(io.StringIO(proc.stdout)) if len(r) >= 3]
        word = rows[0][2].strip() if rows else "unknown"
        # schtasks translates its status words; only the English ones can be read for sure.
        running = {"running": True, "ready": False, "disabled": False, "queued": False}.get(
            word.lower())
        detail = "" if running is not None else f"Task Scheduler says {word!r}"
        return replace(base, installed=True, running=running, state=word, detail=detail)


BACKEND = WindowsBackend()

"""The pure part of ``netprobe service``: what the service files say and where they go.

No file or process I/O here (`netprobe.service.manager` does that, and holds the CLI):

- `ServiceSpec` says what to run; `check_spec` / `check_name` refuse what a platform cannot
  express safely.
- `render_systemd_unit`, `render_launchd_plist`, `render_windows_task_xml` (and `render`) turn
  a spec into a file, with each format's quoting; `unit_path` says where it goes.
- `plan_install` / `plan_uninstall` turn it into `Step`s (write this file, run this command),
  given the facts the I/O layer found (what is installed, systemd's version).

What depends on the machine this runs on is the host's platform (`host_platform`) and, for the
host itself, the home folder, a few environment variables (XDG_CONFIG_HOME, ProgramData,
LOCALAPPDATA) and the user id in a launchd domain.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, Literal, get_args

from netprobe.errors import ConfigError, NetprobeError

Platform = Literal["linux", "darwin", "windows"]
Scope = Literal["system", "user"]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)
SCOPES: tuple[Scope, ...] = get_args(Scope)

DEFAULT_NAME = "netprobe-agent"
DEFAULT_DESCRIPTION = "netprobe agent: checks that this connection can hold a video session"
AGENT_CONFIG_EXIT = 2
"""Exit status with which the agent reports a bad configuration: systemd does not restart it
then (a restart cannot fix the file), it waits for ``systemctl restart`` after the fix."""

SYSTEMD_SYSTEM_DIR = PurePosixPath("/etc/systemd/system")
LAUNCH_DAEMONS_DIR = PurePosixPath("/Library/LaunchDaemons")
TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POSIX_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_WINDOWS_ACCOUNT_RE = re.compile(r"[^\\/\"\[\]:;|=,+*?<>@%]+(\\[^\\/\"\[\]:;|=,+*?<>@%]+)?")
_WINDOWS_ENV_REF_RE = re.compile(r"%[^%\\/\"=:]+%")
"""What Task Scheduler would expand as an environment variable (it has no escape for it)."""
_SYSTEMD_BARE_RE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
"""Words that systemd reads back unchanged without quotes (no %, $, quotes, \\ or blanks)."""
_WINDOWS_SERVICE_ACCOUNTS = {
    "system": "S-1-5-18", "localsystem": "S-1-5-18",
    "localservice": "S-1-5-19", "networkservice": "S-1-5-20",
}
_WINDOWS_REPEAT = "PT5M"
"""Task Scheduler tries to start the task this often; with ``IgnoreNew`` a running agent is
left alone, a crashed one is started again (its own restart-on-failure does not see crashes)."""


# ---------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs, and how. Paths are paths on the machine the service runs on."""

    config: PurePath | None
    """The agent's configuration file; absolute (the service does not start in your folder).
    Needed to install; None will do to uninstall or ask for the status."""
    scope: Scope = "system"
    """``system``: starts at boot for everyone (needs root / Administrator);
    ``user``: starts when this user logs in, runs as them."""
    name: str = DEFAULT_NAME
    """systemd unit ``NAME.service``, launchd label and ``NAME.plist``, scheduled task ``NAME``."""
    description: str = DEFAULT_DESCRIPTION
    python: str = field(default_factory=lambda: sys.executable)
    """Interpreter that runs ``-m netprobe agent`` (unused when ``argv`` is given)."""
    argv: tuple[str, ...] = ()
    """The whole command line instead of the default one; empty: the default."""
    working_dir: PurePath | None = None
    """Directory the agent starts in; None: the service manager's default."""
    environment: tuple[tuple[str, str], ...] = ()
    """Extra environment variables (not on Windows: a scheduled task cannot set them)."""
    user: str | None = None
    """System scope: account the agent runs as. None: a throw-away unprivileged user made by
    systemd (``DynamicUser``), root on macOS, SYSTEM on Windows (also ``LocalService`` or
    ``NetworkService`` there). Windows user scope: the ``DOMAIN\\user`` whose logon starts it."""
    home: PurePath | None = None
    """User scope: the user's home folder on the target machine; None: this user's (when the
    target is this machine)."""

    @property
    def command(self) -> tuple[str, ...]:
        """The agent's command line, executable first."""
        if self.argv:
            return self.argv
        if self.config is None:
            raise ConfigError("give the agent's config file (--config PATH)")
        return (self.python, "-m", "netprobe", "agent", "--config", str(self.config))


def _check_text(value: str, what: str) -> None:
    if any(ord(c) < 32 or c in "\x7f\ufffe\uffff" for c in value):
        raise ConfigError(f"{what} contains a control character: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid UTF-8: {value!r}") from None


def _is_absolute(path: str, platform: Platform) -> bool:
    if platform == "windows":
        return PureWindowsPath(path).is_absolute()
    return path.startswith("/")


def check_name(spec: ServiceSpec, platform: Platform) -> None:
    """Raise `ConfigError` unless `spec`'s name, scope and `platform` are known and safe."""
    if platform not in PLATFORMS:
        raise ConfigError(f"unknown platform {platform!r}; one of {', '.join(PLATFORMS)}")
    if spec.scope not in SCOPES:
        raise ConfigError(f"unknown scope {spec.scope!r}: 'system' or 'user'")
    if not _NAME_RE.fullmatch(spec.name) or spec.name.endswith((".service", ".plist", ".xml")):
        raise ConfigError(f"service name {spec.name!r}: use letters, digits, '.', '_' and '-'")


def check_spec(spec: ServiceSpec, platform: Platform) -> None:
    """Raise `ConfigError` if `spec` cannot be expressed as a service on `platform`."""
    check_name(spec, platform)
    if spec.config is None:
        raise ConfigError("give the agent's config file (--config PATH)")
    _check_text(spec.description, "the description")
    if not spec.description.strip() or spec.description != spec.description.strip():
        raise ConfigError("the description must not be empty or start or end with a space")
    command = spec.command
    for word in command:
        _check_text(word, "the command line")
    exe = command[0]
    for label, path in (("the executable", exe), ("the config path", str(spec.config))):
        if not _is_absolute(path, platform):
            kind = "a Windows" if platform == "windows" else "an"
            raise ConfigError(f"{label} must be {kind} absolute path on the target machine: "
                              f"{path!r}")
    if spec.working_dir is not None:
        wd = str(spec.working_dir)
        _check_text(wd, "the working directory")
        if not _is_absolute(wd, platform):
            raise ConfigError(f"the working directory must be an absolute path: {wd!r}")
    for key, value in spec.environment:
        if not _ENV_NAME_RE.fullmatch(key):
            raise ConfigError(f"environment variable name {key!r}: use letters, digits and _")
        _check_text(value, f"environment variable {key}")
    if platform == "linux":
        if spec.description.endswith("\\"):
            raise ConfigError("the description must not end with a backslash")
        _check_systemd_paths(exe, spec.working_dir)
    if platform == "windows":
        _check_windows(spec, command)
    elif spec.user is not None:
        if spec.scope == "user":
            raise ConfigError("a user service runs as you: --run-as is for system services")
        if not _POSIX_USER_RE.fullmatch(spec.user):
            raise ConfigError(f"user name {spec.user!r} is not a valid account name")


def _check_systemd_paths(exe: str, working_dir: PurePath | None) -> None:
    # systemd refuses an executable path with quotes, backslashes or control characters.
    if any(c in exe for c in "\"'\\"):
        raise ConfigError(f"systemd cannot run an executable whose path contains quotes or "
                          f"backslashes: {exe!r}. Install netprobe in a folder without them "
                          f"(or pass --python with a symlink to it).")
    if exe.endswith("/"):
        raise ConfigError(f"the executable path names a directory: {exe!r}")
    if working_dir is not None:
        wd = str(working_dir)
        if wd != wd.strip() or wd.endswith("\\") or ".." in PurePosixPath(wd).parts:
            raise ConfigError(f"systemd cannot use this working directory: {wd!r} (no '..', no "
                              f"spaces or backslash at the end)")


def _check_windows(spec: ServiceSpec, command: tuple[str, ...]) -> None:
    if spec.environment:
        raise ConfigError("a Windows scheduled task cannot set environment variables: put "
                          "these settings in the agent's config file instead")
    if any(c in command[0] for c in '"<>|?*'):
        raise ConfigError(f"not a valid Windows executable path: {command[0]!r}")
    texts = [*command] + ([str(spec.working_dir)] if spec.working_dir is not None else [])
    for text in texts:
        if _WINDOWS_ENV_REF_RE.search(text):
            raise ConfigError(f"Task Scheduler would replace the %...% in {text!r} by an "
                              f"environment variable, and cannot be told not to: use a path "
                              f"without two '%' signs")
    if spec.scope == "system":
        if spec.user is not None and _windows_service_sid(spec.user) is None:
            raise ConfigError(f"a system task runs as SYSTEM, LocalService or NetworkService, "
                              f"not {spec.user!r} (use --user to run as a person at logon)")
    elif spec.user is None:
        raise ConfigError("a Windows user task needs the account whose logon starts it: "
                          "pass --run-as 'DOMAIN\\user' (found automatically on Windows)")
    elif not _WINDOWS_ACCOUNT_RE.fullmatch(spec.user):
        raise ConfigError(f"{spec.user!r} is not a Windows account name (DOMAIN\\user)")


def _windows_service_sid(user: str) -> str | None:
    key = user.lower().removeprefix("nt authority\\").replace(" ", "")
    return _WINDOWS_SERVICE_ACCOUNTS.get(key)


# ---------------------------------------------------------------------------------------------
# Where the files go


def host_platform() -> Platform:
    """The platform this process runs on; `NetprobeError` on any other."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "darwin"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    raise NetprobeError(f"netprobe cannot install a service on {sys.platform}")


def _home(spec: ServiceSpec, platform: Platform) -> PurePath:
    """The user's home on `platform`: the spec's, this user's, or a placeholder for display."""
    if spec.home is not None:
        return spec.home
    if platform == _host_or_none():
        return Path.home()
    return PureWindowsPath("%USERPROFILE%") if platform == "windows" else PurePosixPath("~")


def _host_or_none() -> Platform | None:
    try:
        return host_platform()
    except NetprobeError:
        return None


def unit_path(spec: ServiceSpec, platform: Platform) -> PurePath:
    """Where the unit / plist / task XML goes on `platform` (a `Path` when that is this OS).

    Windows keeps the task itself in Task Scheduler's store; this is the copy of its XML that
    ``install`` registers from and compares against on the next install.
    """
    check_name(spec, platform)
    name = spec.name
    on_host = platform == _host_or_none()
    path: PurePath
    if platform == "linux":
        xdg = os.environ.get("XDG_CONFIG_HOME") if on_host and spec.home is None else None
        config_home = PurePath(xdg) if xdg else _home(spec, platform) / ".config"
        path = SYSTEMD_SYSTEM_DIR / f"{name}.service" if spec.scope == "system" \
            else config_home / "systemd" / "user" / f"{name}.service"
    elif platform == "darwin":
        path = LAUNCH_DAEMONS_DIR / f"{name}.plist" if spec.scope == "system" \
            else _home(spec, platform) / "Library" / "LaunchAgents" / f"{name}.plist"
    elif spec.scope == "system":
        data = os.environ.get("ProgramData") if on_host else None
        path = PureWindowsPath(data or r"C:\ProgramData") / "netprobe" / f"{name}.xml"
    else:
        local = os.environ.get("LOCALAPPDATA") if on_host and spec.home is None else None
        base = PureWindowsPath(local) if local else \
            PureWindowsPath(_home(spec, platform)) / "AppData" / "Local"
        path = base / "netprobe" / f"{name}.xml"
    return Path(path) if on_host else path


def launchd_dirs(spec: ServiceSpec) -> tuple[PurePath, PurePath]:
    """(logs, state) directories of a launchd job; the plist points the agent at both."""
    home = _home(spec, "darwin")
    if spec.scope == "system":
        return (PurePosixPath("/Library/Logs") / spec.name,
                PurePosixPath("/Library/Application Support") / spec.name)
    return (home / "Library" / "Logs" / spec.name,
            home / "Library" / "Application Support" / spec.name)


def log_hint(spec: ServiceSpec, platform: Platform) -> str:
    """How a person reads the agent's logs on `platform`."""
    if platform == "linux":
        if spec.scope == "user":
            return f"journalctl --user -u {spec.name}"
        return f"journalctl -u {spec.name} (the agent's own files: /var/log/{spec.name}/)"
    if platform == "darwin":
        logs, _ = launchd_dirs(spec)
        return str(logs / f"{spec.name}.log")
    return "the agent's own log file; Task Scheduler: History tab of task " + spec.name


# ---------------------------------------------------------------------------------------------
# systemd


def _systemd_word(word: str, *, expand_env: bool = True) -> str:
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
    first = _systemd_word(exe, expand_env=False)
    if "$" in exe:
        first = f"@{first} {_systemd_word(exe)}"
    return " ".join([first, *(_systemd_word(a) for a in args)])


def _under_home(path: str) -> bool:
    return path.startswith(("/home/", "/root/", "/run/user/")) or path == "/root"


def render_systemd_unit(spec: ServiceSpec, *, systemd_version: int | None = None) -> str:
    """The systemd unit file for `spec`.

    `systemd_version` (of the target, if known) enables settings newer than systemd 245
    (Ubuntu 20.04, Debian 11, RHEL 9): exponential restart back-off (254), ProtectProc (247).
    Older systemd versions warn about and ignore the settings they do not know.
    """
    check_spec(spec, "linux")
    system = spec.scope == "system"
    version = systemd_version or 0
    unit: list[tuple[str, str]] = [("Description", spec.description.replace("%", "%%"))]
    if system:  # a user manager cannot see the system's network-online.target
        unit += [("Wants", "network-online.target"), ("After", "network-online.target")]
    unit.append(("StartLimitIntervalSec", "0"))  # never give up restarting

    service: list[tuple[str, str]] = [
        ("Type", "simple"),
        ("ExecStart", systemd_exec_line(spec.command)),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "20s"),
        ("Restart", "on-failure"),
    ]
    if version >= 254:
        service += [("RestartSec", "5s"), ("RestartSteps", "6"), ("RestartMaxDelaySec", "5min")]
    else:
        service.append(("RestartSec", "15s"))
    service += [
        ("RestartPreventExitStatus", str(AGENT_CONFIG_EXIT)),
        ("SyslogIdentifier", spec.name),
    ]
    env = {"PYTHONUNBUFFERED": "1", **dict(spec.environment)}
    service += [("Environment", _systemd_word(f"{k}={v}", expand_env=False))
                for k, v in env.items()]
    if spec.working_dir is not None:
        service.append(("WorkingDirectory", str(spec.working_dir).replace("%", "%%")))
    if system:
        service.append(("User", spec.user) if spec.user else ("DynamicUser", "yes"))
    service += [
        # The agent finds these in $STATE_DIRECTORY and $LOGS_DIRECTORY.
        ("StateDirectory", spec.name), ("StateDirectoryMode", "0750"),
        ("LogsDirectory", spec.name), ("LogsDirectoryMode", "0750"),
        ("UMask", "0027"),
        # Sandbox. Seccomp-based settings work in user managers too; namespace-based ones
        # (ProtectSystem, PrivateTmp, ...) would need unprivileged user namespaces there.
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallFilter", "~@privileged @resources"),
        ("SystemCallErrorNumber", "EPERM"),  # a blocked call fails, it does not kill the agent
    ]
    if system:
        needs_home = any(_under_home(str(p)) for p in
                         (spec.command[0], spec.config, spec.working_dir) if p is not None)
        service += [
            ("ProtectSystem", "strict"),
            ("ProtectHome", "read-only" if needs_home else "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("ProtectClock", "yes"),
            ("ProtectHostname", "yes"),
            ("PrivateMounts", "yes"),
            ("RemoveIPC", "yes"),
            ("CapabilityBoundingSet", ""),
        ]
        if version >= 247:
            service.append(("ProtectProc", "invisible"))
    install = [("WantedBy", "multi-user.target" if system else "default.target")]

    lines = [
        f"# {spec.name}: generated by `netprobe service install`; to change it, edit the",
        "# options and run the install again with --force (edits here are overwritten).",
    ]
    for section, items in (("Unit", unit), ("Service", service), ("Install", install)):
        lines += ["", f"[{section}]", *(f"{key}={value}" for key, value in items)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# launchd


def render_launchd_plist(spec: ServiceSpec) -> bytes:
    """The launchd job (LaunchDaemon for system scope, LaunchAgent for user scope) as XML."""
    check_spec(spec, "darwin")
    if spec.scope == "user" and str(_home(spec, "darwin")).startswith("~"):
        raise ConfigError("a LaunchAgent needs the user's home folder for its log path (launchd "
                          "does not expand ~): generate it on the Mac itself")
    logs, state = launchd_dirs(spec)
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


def _launchd_domain(spec: ServiceSpec) -> str:
    if spec.scope == "system":
        return "system"
    if _host_or_none() == "darwin":
        return f"gui/{os.getuid()}"  # type: ignore[attr-defined,unused-ignore]
    return "gui/$(id -u)"  # for display: the user's id on the Mac


# ---------------------------------------------------------------------------------------------
# Windows Task Scheduler


def windows_arguments(args: Sequence[str]) -> str:
    """`args` as one Windows command-line tail (the rules of the Microsoft C runtime)."""
    return subprocess.list2cmdline(list(args))


def render_windows_task_xml(spec: ServiceSpec) -> str:
    """The scheduled task as XML text. Write it as UTF-16 (`encode_windows_task`) for schtasks.

    System scope: starts at boot as SYSTEM (or the service account given). User scope: starts
    at the user's logon, in their session. Both are retried every 5 minutes while not running.
    """
    check_spec(spec, "windows")
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
        sub(principal, "UserId", _windows_service_sid(spec.user or "SYSTEM"))
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
# Plans: what install and uninstall do, as data


@dataclass(frozen=True)
class Command:
    """A command the plan runs."""

    argv: tuple[str, ...]
    may_fail: bool = False
    """Failure is expected in some states (stopping what is not running) and is ignored."""

    def __str__(self) -> str:
        if self.argv[0] == "schtasks":
            return subprocess.list2cmdline(self.argv)
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WriteFile:
    path: PurePath
    data: bytes
    mode: int = 0o644

    def __str__(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True)
class MakeDirs:
    path: PurePath
    owner: str | None = None
    """Account that gets to own the directory (the service's user), None: leave as created."""

    def __str__(self) -> str:
        return f"create directory {self.path}" + (f" (owner {self.owner})" if self.owner else "")


@dataclass(frozen=True)
class RemoveFile:
    path: PurePath

    def __str__(self) -> str:
        return f"remove {self.path}"


Step = Command | WriteFile | MakeDirs | RemoveFile


@dataclass(frozen=True)
class InstallResult:
    """What `install` did, or with ``dry_run`` would do."""

    platform: Platform
    spec: ServiceSpec
    path: PurePath
    """The unit file, plist or task XML."""
    data: bytes
    """Its exact bytes."""
    text: str
    """Its text, for a person to read."""
    steps: tuple[Step, ...]
    """In order: directories, the file (unless it is already up to date), commands."""
    dry_run: bool
    replaced: bool = False
    """An installation with different settings was replaced (--force)."""
    up_to_date: bool = False
    """The same file was already installed: the service was only (re)enabled and started."""
    warnings: tuple[str, ...] = ()

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(s for s in self.steps if isinstance(s, Command))


@dataclass(frozen=True)
class UninstallResult:
    """What `uninstall` did, or with ``dry_run`` would do."""

    platform: Platform
    spec: ServiceSpec
    path: PurePath
    steps: tuple[Step, ...]
    dry_run: bool
    was_installed: bool | None
    """None: not looked at (a dry run for another machine)."""

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(s for s in self.steps if isinstance(s, Command))


def render(spec: ServiceSpec, platform: Platform, *,
           systemd_version: int | None = None) -> tuple[bytes, str]:
    """(bytes to write, readable text) of the service file for `platform`."""
    if platform == "linux":
        text = render_systemd_unit(spec, systemd_version=systemd_version)
        return text.encode("utf-8"), text
    if platform == "darwin":
        data = render_launchd_plist(spec)
        return data, data.decode("utf-8")
    text = render_windows_task_xml(spec)
    return encode_windows_task(text), text


def plan_install(spec: ServiceSpec, platform: Platform, *, existing: bytes | None = None,
                 force: bool = False, systemd_version: int | None = None) -> InstallResult:
    """The steps that install `spec` on `platform` (pure).

    `existing` is the service file already there (None: not installed). The same file again
    only re-enables and starts the service; a different one needs `force`.
    """
    data, text = render(spec, platform, systemd_version=systemd_version)
    path = unit_path(spec, platform)
    up_to_date = existing == data
    replaced = existing is not None and not up_to_date
    if replaced and not force:
        raise NetprobeError(f"{spec.name} is already installed ({path}) with other settings; "
                            f"add --force to replace it")
    steps: list[Step] = []
    if platform == "darwin":
        steps += [MakeDirs(d, spec.user) for d in launchd_dirs(spec)]
    if not up_to_date:
        steps.append(WriteFile(path, data))
    steps += _install_commands(spec, platform, path, replaced=replaced, up_to_date=up_to_date)
    return InstallResult(platform=platform, spec=spec, path=path, data=data, text=text,
                         steps=tuple(steps), dry_run=True, replaced=replaced,
                         up_to_date=up_to_date)


def _install_commands(spec: ServiceSpec, platform: Platform, path: PurePath, *,
                      replaced: bool, up_to_date: bool) -> list[Command]:
    name = spec.name
    if platform == "linux":
        ctl = ("systemctl", "--user") if spec.scope == "user" else ("systemctl",)
        unit = f"{name}.service"
        if up_to_date:
            return [Command((*ctl, "enable", "--now", unit))]
        if replaced:
            return [Command((*ctl, "daemon-reload")), Command((*ctl, "enable", unit)),
                    Command((*ctl, "restart", unit))]
        return [Command((*ctl, "daemon-reload")), Command((*ctl, "enable", "--now", unit))]
    if platform == "darwin":
        domain = _launchd_domain(spec)
        target = f"{domain}/{name}"
        if up_to_date:  # bootstrap fails if it is loaded already; kickstart starts it if not
            return [Command(("launchctl", "enable", target)),
                    Command(("launchctl", "bootstrap", domain, str(path)), may_fail=True),
                    Command(("launchctl", "kickstart", target))]
        stop = [Command(("launchctl", "bootout", target), may_fail=True)] if replaced else []
        return [*stop, Command(("launchctl", "enable", target)),
                Command(("launchctl", "bootstrap", domain, str(path)))]
    if up_to_date:
        return [Command(("schtasks", "/Run", "/TN", name), may_fail=True)]
    create = ("schtasks", "/Create", "/TN", name, "/XML", str(path))
    if replaced:
        return [Command(("schtasks", "/End", "/TN", name), may_fail=True),
                Command((*create, "/F")), Command(("schtasks", "/Run", "/TN", name))]
    return [Command(create), Command(("schtasks", "/Run", "/TN", name))]


def plan_uninstall(spec: ServiceSpec, platform: Platform, *, installed: bool | None = True,
                   copy_exists: bool = True) -> UninstallResult:
    """The steps that stop and remove the service (pure); none if it is not `installed`."""
    path = unit_path(spec, platform)
    name = spec.name
    steps: list[Step] = []
    if platform == "linux" and installed is not False:
        ctl = ("systemctl", "--user") if spec.scope == "user" else ("systemctl",)
        steps = [Command((*ctl, "disable", "--now", f"{name}.service")), RemoveFile(path),
                 Command((*ctl, "daemon-reload")),
                 Command((*ctl, "reset-failed", f"{name}.service"), may_fail=True)]
    elif platform == "darwin" and installed is not False:
        steps = [Command(("launchctl", "bootout", f"{_launchd_domain(spec)}/{name}"),
                         may_fail=True), RemoveFile(path)]
    elif platform == "windows":
        if installed is not False:
            steps = [Command(("schtasks", "/End", "/TN", name), may_fail=True),
                     Command(("schtasks", "/Delete", "/TN", name, "/F"))]
        if copy_exists:
            steps.append(RemoveFile(path))
    return UninstallResult(platform=platform, spec=spec, path=path, steps=tuple(steps),
                           dry_run=True, was_installed=installed)

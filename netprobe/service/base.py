"""What every service backend shares: the spec of what to run, the machine it goes on, the
steps of a plan, the results, and the `Backend` interface.

A backend (`systemd`, `launchd`, `windows`) has a pure half and an I/O half:

- pure, inputs as arguments: `Backend.check`, `render`, `unit_path`, `log_hint`,
  `plan_install`, `plan_uninstall` take a `ServiceSpec` and a `Host` (a value) and return
  text, paths and `Step`s;
- I/O: `install`, `uninstall`, `status` ask the service manager, carry out the plan and
  translate failures into `NetprobeError`. They run the programs named in `Host.tools` and
  touch files only under the paths the pure half computed from the `Host`.

`netprobe.service.host.this_host` gathers the `Host` of this machine, once, at the edge.
"""

from __future__ import annotations

import re
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import ClassVar, Literal, get_args

from netprobe import exitcodes
from netprobe.errors import ConfigError, NetprobeError
from netprobe.service import execute
from netprobe.service.plan import (
    Command,
    InstallResult,
    MakeDirs,
    ServiceStatus,
    Step,
    UninstallResult,
    WriteFile,
)

Platform = Literal["linux", "darwin", "windows"]
Scope = Literal["system", "user"]
Role = Literal["agent", "reflector"]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)
SCOPES: tuple[Scope, ...] = get_args(Scope)

DEFAULT_NAME = "netprobe-agent"
DEFAULT_DESCRIPTION = "netprobe agent: checks that this connection can hold a video session"
REFLECTOR_NAME = "netprobe-reflector"
REFLECTOR_DESCRIPTION = "netprobe reflector: the server that clients check their connection with"
AGENT_CONFIG_EXIT = exitcodes.USAGE
"""Exit status with which the agent reports a bad configuration: systemd does not restart it
then (a restart cannot fix the file), it waits for ``systemctl restart`` after the fix."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
POSIX_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
"""An account name systemd and launchd accept."""


# ---------------------------------------------------------------------------------------------
# What to run, and where


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
    role: Role = "agent"
    """``agent``: the background agent (every platform); ``reflector``: the clinic's server,
    ``netprobe serve`` (Linux with systemd, system scope only; see docs/reflector.md)."""
    token_secret: PurePath | None = None
    """Reflector: the token secret file. systemd hands the service a copy of it (a
    credential readable by the service's user alone), so it stays root's mode-0600 file."""
    bind_low_port: bool = False
    """Reflector: let it listen on a port below 1024 (grants CAP_NET_BIND_SERVICE only)."""

    @property
    def what(self) -> str:
        """What the service runs, for messages: ``agent`` or ``reflector``."""
        return self.role

    @property
    def command(self) -> tuple[str, ...]:
        """The service's command line, executable first."""
        if self.argv:
            return self.argv
        if self.config is None:
            raise ConfigError(f"give the {self.what}'s config file (--config PATH)")
        sub = "serve" if self.role == "reflector" else "agent"
        return (self.python, "-m", "netprobe", sub, "--config", str(self.config))


@dataclass(frozen=True)
class Host:
    """The machine the service is for: the facts the backends read, gathered once.

    `netprobe.service.host.this_host` fills it in for this machine; `Host.elsewhere` stands for
    another one (files are generated for it, nothing is installed). Tests build their own, with
    a temporary folder as `home` and `root` and fake service managers in `tools`.
    """

    platform: Platform | None
    """None: an OS netprobe cannot install a service on (see `os_name`)."""
    local: bool = False
    """The machine this process runs on: its paths are real (`Path`) and can be installed to."""
    os_name: str = ""
    """``sys.platform``, for messages."""
    home: PurePath | None = None
    """The user's home folder; None: unknown (shown as ``~`` or ``%USERPROFILE%``)."""
    root: PurePath = PurePosixPath("/")
    """Where system folders (/etc/systemd/system, /Library/...) are found."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The environment variables that matter: XDG_CONFIG_HOME, ProgramData, LOCALAPPDATA,
    USER, LOGNAME, SUDO_USER, USERNAME, USERDOMAIN."""
    uid: int | None = None
    """The user's id (launchd's ``gui/UID`` domain); None: unknown."""
    admin: bool = False
    """Whether this process runs as root / Administrator."""
    executable: str = ""
    """This interpreter (the default ``--python``)."""
    tools: Mapping[str, str] = field(default_factory=dict)
    """Service-manager programs found on PATH, by name: ``{"systemctl": "/usr/bin/systemctl"}``."""
    systemd_booted: bool = False
    """The machine was booted with systemd (sd_booted(3))."""

    @classmethod
    def elsewhere(cls, platform: Platform, home: PurePath | None = None) -> Host:
        """Another machine: only its platform (and, if given, the user's home) is known."""
        return cls(platform=platform, os_name=platform, home=home)

    def home_or(self, placeholder: str) -> PurePath:
        """The user's home folder; for another machine whose home is unknown, `placeholder`
        (paths with it are for a person to read)."""
        if self.home is not None:
            return self.home
        if self.local:
            raise NetprobeError("cannot find your home folder: is $HOME set?")
        return self.path(placeholder)

    def path(self, *parts: str | PurePath) -> PurePath:
        """A path on this host: a `Path` when it is this machine, else a pure path of its OS."""
        if self.local:
            return Path(*parts)
        return PureWindowsPath(*parts) if self.platform == "windows" else PurePosixPath(*parts)


# ---------------------------------------------------------------------------------------------
# Checks every backend makes


def check_text(value: str, what: str) -> None:
    """Refuse control characters and what UTF-8 cannot carry."""
    if any(ord(c) < 32 or c in "\x7f\ufffe\uffff" for c in value):
        raise ConfigError(f"{what} contains a control character: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid UTF-8: {value!r}") from None


def check_name(spec: ServiceSpec) -> None:
    """Raise `ConfigError` unless `spec`'s name and scope are known and safe."""
    if spec.scope not in SCOPES:
        raise ConfigError(f"unknown scope {spec.scope!r}: 'system' or 'user'")
    if not _NAME_RE.fullmatch(spec.name) or spec.name.endswith((".service", ".plist", ".xml")):
        raise ConfigError(f"service name {spec.name!r}: use letters, digits, '.', '_' and '-'")


def check_posix_run_as(spec: ServiceSpec) -> None:
    """`--run-as` on systemd and launchd: system services only, a valid POSIX account name."""
    if spec.user is not None:
        if spec.scope == "user":
            raise ConfigError("a user service runs as you: --run-as is for system services")
        if not POSIX_USER_RE.fullmatch(spec.user):
            raise ConfigError(f"user name {spec.user!r} is not a valid account name")


def check_role(spec: ServiceSpec, host: Host) -> None:
    """The reflector is a Linux (systemd) system service; its options are its own."""
    if spec.role == "reflector":
        if host.platform != "linux":
            raise ConfigError(f"the reflector runs as a service on Linux with systemd only, not "
                              f"on {host.os_name or host.platform} (run `netprobe serve` "
                              f"under your own supervisor, or in the container: "
                              f"docs/reflector.md)")
        if spec.scope != "system":
            raise ConfigError("the reflector is a system service: drop --user")
    elif spec.token_secret is not None or spec.bind_low_port:
        raise ConfigError("--token-secret-file and --bind-low-port are for --reflector")


def check_common(spec: ServiceSpec, host: Host) -> None:
    """The checks of `Backend.check` that do not depend on the platform."""
    check_name(spec)
    check_role(spec, host)
    if spec.config is None:
        raise ConfigError(f"give the {spec.what}'s config file (--config PATH)")
    check_text(spec.description, "the description")
    if not spec.description.strip() or spec.description != spec.description.strip():
        raise ConfigError("the description must not be empty or start or end with a space")
    command = spec.command
    for word in command:
        check_text(word, "the command line")
    paths = [("the executable", command[0]), ("the config path", str(spec.config))]
    if spec.token_secret is not None:
        paths.append(("the token secret file", str(spec.token_secret)))
    for label, path in paths:
        check_text(path, label)
        if not _is_absolute(path, host):
            kind = "a Windows" if host.platform == "windows" else "an"
            raise ConfigError(f"{label} must be {kind} absolute path on the target machine: "
                              f"{path!r}")
    if spec.working_dir is not None:
        wd = str(spec.working_dir)
        check_text(wd, "the working directory")
        if not _is_absolute(wd, host):
            raise ConfigError(f"the working directory must be an absolute path: {wd!r}")
    for key, value in spec.environment:
        if not _ENV_NAME_RE.fullmatch(key):
            raise ConfigError(f"environment variable name {key!r}: use letters, digits and _")
        check_text(value, f"environment variable {key}")


def _is_absolute(path: str, host: Host) -> bool:
    if host.local:  # this machine's own rules
        return Path(path).is_absolute()
    if host.platform == "windows":
        return PureWindowsPath(path).is_absolute()
    return path.startswith("/")


# ---------------------------------------------------------------------------------------------
# The interface


class Backend(ABC):
    """One service manager: its files (pure) and how to install, remove and ask it (I/O)."""

    platform: ClassVar[Platform]
    tool: ClassVar[str]
    """The service manager's command-line program."""
    missing_tool_advice: ClassVar[str]

    # -- pure: inputs as arguments

    @abstractmethod
    def check(self, spec: ServiceSpec, host: Host) -> None:
        """Raise `ConfigError` if `spec` cannot be expressed as a service on `host`."""

    @abstractmethod
    def render(self, spec: ServiceSpec, host: Host, *,
               manager_version: int | None = None) -> tuple[bytes, str]:
        """(bytes to write, readable text) of the service file; checks `spec` first."""

    @abstractmethod
    def unit_path(self, spec: ServiceSpec, host: Host) -> PurePath:
        """Where the service file goes on `host`."""

    @abstractmethod
    def log_hint(self, spec: ServiceSpec, host: Host) -> str:
        """How a person reads the agent's logs."""

    def plan_install(self, spec: ServiceSpec, host: Host, *, existing: bytes | None = None,
                     force: bool = False, manager_version: int | None = None) -> InstallResult:
        """The steps that install `spec` on `host`. `existing` is the service file already
        there (None: not installed). The same file again only re-enables and starts the
        service; a different one needs `force`."""
        data, text = self.render(spec, host, manager_version=manager_version)
        path = self.unit_path(spec, host)
        up_to_date = existing == data
        replaced = existing is not None and not up_to_date
        if replaced and not force:
            raise NetprobeError(f"{spec.name} is already installed ({path}) with other "
                                f"settings; add --force to replace it")
        steps: list[Step] = [*self.install_dirs(spec, host)]
        if not up_to_date:
            steps.append(WriteFile(path, data))
        steps += self.install_commands(spec, host, path, replaced=replaced,
                                       up_to_date=up_to_date)
        return InstallResult(platform=self.platform, spec=spec, path=path, data=data,
                             text=text, steps=tuple(steps), dry_run=True, replaced=replaced,
                             up_to_date=up_to_date)

    def install_dirs(self, spec: ServiceSpec, host: Host) -> list[MakeDirs]:
        """Directories to create before the service file is written."""
        return []

    @abstractmethod
    def install_commands(self, spec: ServiceSpec, host: Host, path: PurePath, *,
                         replaced: bool, up_to_date: bool) -> list[Command]:
        """The service manager's commands that (re)start an installed file."""

    @abstractmethod
    def plan_uninstall(self, spec: ServiceSpec, host: Host, *, installed: bool | None = True,
                       copy_exists: bool = True) -> UninstallResult:
        """The steps that stop and remove the service; none if it is not `installed`."""

    def runs_privileged(self, spec: ServiceSpec) -> bool:
        """Whether the service runs with full rights (root, SYSTEM)."""
        return spec.scope == "system" and spec.user in (None, "root")

    def in_user_folder(self, path: str) -> bool:
        return path.startswith(("/Users/", "/home/", "/root/"))

    # -- I/O

    def run(self, argv: tuple[str, ...] | list[str],
            host: Host) -> subprocess.CompletedProcess[str]:
        """Run one of the service manager's commands (`NetprobeError` if it cannot run)."""
        return execute.run_command(argv, host.tools.get(argv[0]), self.missing_tool_advice)

    def manager_version(self, spec: ServiceSpec, host: Host) -> int | None:
        """The running manager's version, if it matters to the file and can be asked."""
        return None

    def require_manager(self, spec: ServiceSpec, host: Host) -> int | None:
        """Check that the service manager is there and usable (and the rights suffice);
        returns `manager_version`."""
        if self.tool not in host.tools:
            raise NetprobeError(f"{self.tool} not found: {self.missing_tool_advice}")
        if spec.scope == "system" and not host.admin:
            how = "from an Administrator prompt" if self.platform == "windows" else "with sudo"
            raise NetprobeError(f"installing a system service needs administrator rights: "
                                f"run it {how}, or use --user to install it for yourself")
        return None

    def existing_file(self, spec: ServiceSpec, host: Host, path: PurePath) -> bytes | None:
        """The installed service file, None if not installed."""
        return execute.read_existing(path)

    def is_installed(self, spec: ServiceSpec, host: Host, path: PurePath) -> bool:
        return Path(path).exists()

    def warnings(self, spec: ServiceSpec, host: Host) -> list[str]:
        """Things that will likely go wrong or are unsafe, found on this machine."""
        out: list[str] = []
        exe, config = spec.command[0], Path(str(spec.config))
        if not config.is_file():
            out.append(f"the config file {config} does not exist")
        if self.runs_privileged(spec) and self.in_user_folder(exe):
            out.append(f"the service runs with full rights but its program {exe} is in a "
                       f"user's folder: whoever can change that folder can take over this "
                       f"machine. Install netprobe for all users (e.g. under /opt, /usr/local "
                       f"or C:\\Program Files) and pass --python.")
        return out

    def install(self, spec: ServiceSpec, host: Host, *, dry_run: bool = False,
                force: bool = False) -> InstallResult:
        """Install and start the service, or with `dry_run` say how (nothing changes then).
        Another machine than this one works only with `dry_run`. Raises `ConfigError` (bad
        spec, config file missing) or `NetprobeError` (not root, no service manager, already
        installed with other settings and no `force`, a command failed)."""
        if not host.local:
            if dry_run:
                return self.plan_install(spec, host)
            raise NetprobeError(f"cannot install a {self.platform} service on this machine: "
                                f"use --dry-run, --print or --output to generate the files")
        self.check(spec, host)
        if dry_run:
            path = self.unit_path(spec, host)
            plan = self.plan_install(spec, host, existing=self.dry_run_existing(spec, host, path),
                                     force=force, manager_version=self.manager_version(spec, host))
            return replace(plan, warnings=tuple(self.warnings(spec, host)))
        config = Path(str(spec.config))
        if not config.is_file():
            raise ConfigError(f"config file not found: {config} (the agent reads it when it "
                              f"starts)")
        if not execute.is_program(spec.command[0]):
            raise ConfigError(f"cannot run {spec.command[0]}: no such program (pass --python "
                              f"PATH)")
        version = self.require_manager(spec, host)
        path = self.unit_path(spec, host)
        plan = self.plan_install(spec, host, existing=self.existing_file(spec, host, path),
                                 force=force, manager_version=version)
        execute.carry_out(plan.steps, self.run_step(host))
        return replace(plan, dry_run=False, warnings=tuple(self.warnings(spec, host)))

    def dry_run_existing(self, spec: ServiceSpec, host: Host, path: PurePath) -> bytes | None:
        """What a dry run compares against: the installed file (no manager is asked)."""
        return execute.read_existing(path)

    def uninstall(self, spec: ServiceSpec, host: Host, *,
                  dry_run: bool = False) -> UninstallResult:
        """Stop and remove the service; nothing to do (and no error) if it is not installed."""
        check_name(spec)
        if not host.local:
            if dry_run:
                return self.plan_uninstall(spec, host, installed=None)
            raise NetprobeError(f"cannot uninstall a {self.platform} service from this machine")
        path = self.unit_path(spec, host)
        installed = self.is_installed(spec, host, path)
        plan = self.plan_uninstall(spec, host, installed=installed,
                                   copy_exists=Path(path).exists())
        if dry_run or not plan.steps:
            return plan
        if installed:
            self.require_manager(spec, host)
        execute.carry_out(plan.steps, self.run_step(host))
        return replace(plan, dry_run=False)

    def run_step(self, host: Host) -> execute.RunCommand:
        return lambda argv: self.run(argv, host)

    def status(self, spec: ServiceSpec, host: Host) -> ServiceStatus:
        """Whether the service is installed and running. Never raises for "not installed"; a
        question the manager cannot answer gives ``running=None`` and the reason in
        ``detail``."""
        check_name(spec)
        if not host.local:
            raise NetprobeError(f"the status of a {self.platform} service can only be read on "
                                f"that machine")
        path = self.unit_path(spec, host)
        base = ServiceStatus(platform=self.platform, name=spec.name, scope=spec.scope,
                             path=path, installed=False, running=False, state="not installed",
                             logs=self.log_hint(spec, host))
        return self.query_status(spec, host, base)

    def query_status(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        """`base` (not installed) completed with what the file and the manager say."""
        if not Path(base.path).exists():
            return base
        base = replace(base, installed=True)
        if self.tool not in host.tools:
            return replace(base, running=None, state="unknown", detail=f"{self.tool} not found")
        return self.ask_manager(spec, host, base)

    @abstractmethod
    def ask_manager(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        """`base` (installed) completed with the manager's answer."""


def environ_of(host: Host, *names: str) -> str | None:
    """The first of the environment variables `names` that is set and not empty."""
    return next((host.environ[n] for n in names if host.environ.get(n)), None)

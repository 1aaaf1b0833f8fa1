"""systemd: the unit file (pure: `render_systemd_unit`, `systemd_exec_line`) and the
`SystemdBackend` that installs it with ``systemctl`` (system units, or the user's manager)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path, PurePath, PurePosixPath

from netprobe.config import load_settings
from netprobe.errors import ConfigError, NetprobeError
from netprobe.service.base import (
    AGENT_CONFIG_EXIT,
    Backend,
    Host,
    ServiceSpec,
    check_common,
    check_posix_run_as,
    environ_of,
)
from netprobe.service.execute import output_of
from netprobe.service.plan import Command, RemoveFile, ServiceStatus, Step, UninstallResult
from netprobe.service.reflector_unit import render_reflector_unit
from netprobe.service.systemd_syntax import systemd_exec_line
from netprobe.service.systemd_syntax import systemd_word as _systemd_word

__all__ = ["SystemdBackend", "render_systemd_unit", "systemd_exec_line"]

_VERSION_RE = re.compile(r"Version=v?(\d+)")


# ---------------------------------------------------------------------------------------------
# The unit file (pure)


def _under_home(path: str) -> bool:
    return path.startswith(("/home/", "/root/", "/run/user/")) or path == "/root"


def render_systemd_unit(spec: ServiceSpec, *, systemd_version: int | None = None,
                        host: Host | None = None) -> str:
    """The systemd unit file for `spec`.

    `systemd_version` (of the target, if known) enables settings newer than systemd 245
    (Ubuntu 20.04, Debian 11, RHEL 9): exponential restart back-off (254), ProtectProc (247).
    Older systemd versions warn about and ignore the settings they do not know. `host`: the
    machine it is for (None: another Linux machine), which decides what an absolute path is.
    """
    BACKEND.check(spec, host or Host.elsewhere("linux"))
    if spec.role == "reflector":
        return render_reflector_unit(spec, systemd_version=systemd_version)
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
# The backend


def _ctl(spec: ServiceSpec) -> tuple[str, ...]:
    return ("systemctl", "--user") if spec.scope == "user" else ("systemctl",)


class SystemdBackend(Backend):
    """Linux: a unit in /etc/systemd/system (system) or ~/.config/systemd/user (user)."""

    platform = "linux"
    tool = "systemctl"
    missing_tool_advice = ("this machine does not use systemd, so netprobe cannot install the "
                           "agent as a service here (use --print to see the unit file)")

    def check(self, spec: ServiceSpec, host: Host) -> None:
        check_common(spec, host)
        if spec.description.endswith("\\"):
            raise ConfigError("the description must not end with a backslash")
        exe = spec.command[0]
        # systemd refuses an executable path with quotes, backslashes or control characters.
        if any(c in exe for c in "\"'\\"):
            raise ConfigError(f"systemd cannot run an executable whose path contains quotes or "
                              f"backslashes: {exe!r}. Install netprobe in a folder without them "
                              f"(or pass --python with a symlink to it).")
        if exe.endswith("/"):
            raise ConfigError(f"the executable path names a directory: {exe!r}")
        if spec.working_dir is not None:
            wd = str(spec.working_dir)
            if wd != wd.strip() or wd.endswith("\\") or ".." in PurePosixPath(wd).parts:
                raise ConfigError(f"systemd cannot use this working directory: {wd!r} (no "
                                  f"'..', no spaces or backslash at the end)")
        check_posix_run_as(spec)

    def render(self, spec: ServiceSpec, host: Host, *,
               manager_version: int | None = None) -> tuple[bytes, str]:
        text = render_systemd_unit(spec, systemd_version=manager_version, host=host)
        return text.encode("utf-8"), text

    def unit_path(self, spec: ServiceSpec, host: Host) -> PurePath:
        name = f"{spec.name}.service"
        if spec.scope == "system":
            return host.path(host.root, "etc", "systemd", "system", name)
        xdg = environ_of(host, "XDG_CONFIG_HOME")
        config_home = host.path(xdg) if xdg else host.path(host.home_or("~"), ".config")
        return host.path(config_home, "systemd", "user", name)

    def log_hint(self, spec: ServiceSpec, host: Host) -> str:
        if spec.scope == "user":
            return f"journalctl --user -u {spec.name}"
        if spec.role == "reflector":
            return f"journalctl -u {spec.name} (JSON lines; docs/log-format.md)"
        return f"journalctl -u {spec.name} (the agent's own files: /var/log/{spec.name}/)"

    def install_commands(self, spec: ServiceSpec, host: Host, path: PurePath, *,
                         replaced: bool, up_to_date: bool) -> list[Command]:
        ctl, unit = _ctl(spec), f"{spec.name}.service"
        if up_to_date:
            return [Command((*ctl, "enable", "--now", unit))]
        if replaced:
            return [Command((*ctl, "daemon-reload")), Command((*ctl, "enable", unit)),
                    Command((*ctl, "restart", unit))]
        return [Command((*ctl, "daemon-reload")), Command((*ctl, "enable", "--now", unit))]

    def plan_uninstall(self, spec: ServiceSpec, host: Host, *, installed: bool | None = True,
                       copy_exists: bool = True) -> UninstallResult:
        path = self.unit_path(spec, host)
        ctl, unit = _ctl(spec), f"{spec.name}.service"
        steps: list[Step] = []
        if installed is not False:
            steps = [Command((*ctl, "disable", "--now", unit)), RemoveFile(path),
                     Command((*ctl, "daemon-reload")),
                     Command((*ctl, "reset-failed", unit), may_fail=True)]
        return UninstallResult(platform=self.platform, spec=spec, path=path, steps=tuple(steps),
                               dry_run=True, was_installed=installed)

    def runs_privileged(self, spec: ServiceSpec) -> bool:
        return spec.scope == "system" and spec.user == "root"  # None: DynamicUser

    def manager_version(self, spec: ServiceSpec, host: Host) -> int | None:
        try:
            proc = self.run([*_ctl(spec), "show", "--property=Version"], host)
        except NetprobeError:
            return None
        match = _VERSION_RE.search(proc.stdout) if proc.returncode == 0 else None
        return int(match.group(1)) if match else None

    def require_manager(self, spec: ServiceSpec, host: Host) -> int | None:
        super().require_manager(spec, host)
        if spec.scope == "user" and host.environ.get("SUDO_USER") and host.admin:
            raise NetprobeError("--user installs the agent for the user running the command: "
                                "run it without sudo")
        if spec.scope == "system" and not host.systemd_booted:
            raise NetprobeError("systemd is not running on this machine (it was not booted "
                                "with systemd), so the agent cannot be installed as a service "
                                "here")
        proc = self.run([*_ctl(spec), "show", "--property=Version"], host)
        if proc.returncode != 0:
            whose = "your user's service manager" if spec.scope == "user" else "systemd"
            raise NetprobeError(f"cannot reach {whose}: {output_of(proc)}")
        match = _VERSION_RE.search(proc.stdout)
        return int(match.group(1)) if match else None

    def warnings(self, spec: ServiceSpec, host: Host) -> list[str]:
        out = super().warnings(spec, host)
        if spec.scope == "system" and spec.user is None:
            config = Path(str(spec.config))
            for path, what in ((Path(spec.command[0]), "program"), (config, "config file")):
                if not _others_can_read(path):
                    out.append(f"the service runs as an unprivileged user of its own, which "
                               f"cannot read the {what} {path}: make it and its folders "
                               f"readable by others (chmod o+rX), or use --run-as USER")
        elif spec.scope == "user":
            user = environ_of(host, "USER", "LOGNAME")
            linger = Path(host.root, "var", "lib", "systemd", "linger")
            if user and not (linger / user).exists():
                out.append(f"a user service runs only while you are logged in; to start it "
                           f"at boot, run once: sudo loginctl enable-linger {user}")
        if spec.role == "reflector":
            out += _reflector_warnings(spec)
        return out

    def ask_manager(self, spec: ServiceSpec, host: Host, base: ServiceStatus) -> ServiceStatus:
        proc = self.run([*_ctl(spec), "show", f"{spec.name}.service", "--property="
                         "LoadState,ActiveState,SubState,MainPID,UnitFileState,Result"], host)
        if proc.returncode != 0:
            return replace(base, running=None, state="unknown",
                           detail=f"could not ask systemd: {output_of(proc)}")
        props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        active = props.get("ActiveState", "unknown")
        pid = int(props.get("MainPID", "0") or 0) or None
        running = active in ("active", "reloading", "activating") if active != "unknown" \
            else None
        detail = f"{active} ({props.get('SubState', '?')}), {props.get('UnitFileState', '?')}"
        if props.get("LoadState") == "not-found":
            detail += "; the unit file is there but systemd has not loaded it (daemon-reload?)"
        if active == "failed":
            detail += f"; last result: {props.get('Result', '?')}"
        return replace(base, running=running, state=active, pid=pid, detail=detail)


def _reflector_warnings(spec: ServiceSpec) -> list[str]:
    """What in the reflector's settings will stop the service (it reads them only at start)."""
    out: list[str] = []
    if spec.token_secret is not None and not Path(str(spec.token_secret)).is_file():
        out.append(f"the token secret file {spec.token_secret} does not exist: the service "
                   f"will not start without it")
    try:
        r = load_settings(Path(str(spec.config))).reflector
    except (ConfigError, NetprobeError) as exc:
        return [*out, f"the reflector will not start with this config file: {exc}"]
    if r.port < 1024 and not spec.bind_low_port:
        out.append(f"port {r.port} is below 1024: the service has no capability to listen "
                   f"there; use a port from 1024 (8765) or add --bind-low-port")
    if r.token_secret_file and spec.token_secret is None and spec.user is None:
        out.append(f"the service's own user cannot read {r.token_secret_file} (a secret file "
                   f"must be mode 0600): pass it as --token-secret-file {r.token_secret_file} "
                   f"instead, systemd then hands the service a copy")
    loopback = r.host in ("127.0.0.1", "::1", "localhost")
    if not loopback and not r.open and not r.token_secret_file and spec.token_secret is None:
        out.append(f"the reflector listens on {r.host} without a token secret and without "
                   f"[reflector] open = true: it will refuse to start (docs/reflector.md)")
    return out


def _others_can_read(path: Path) -> bool:
    """Whether an unrelated unprivileged user can read `path` (and its target if a link)."""
    try:
        for candidate in {path.absolute(), path.resolve()}:
            if not candidate.exists():
                return True  # reported elsewhere
            for parent in candidate.parents:
                if not parent.stat().st_mode & 0o001:
                    return False
            if not candidate.stat().st_mode & 0o004:
                return False
    except OSError:
        return False
    return True


BACKEND = SystemdBackend()

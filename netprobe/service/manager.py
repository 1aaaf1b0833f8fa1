"""Run the netprobe agent as a background service: systemd, launchd or Windows Task Scheduler.

    netprobe service install --config /etc/netprobe/agent.toml        # system service (root)
    netprobe service install --user --config ~/netprobe/agent.toml    # starts at your login
    netprobe service status
    netprobe service uninstall
    netprobe service install --platform windows --python 'C:\\Python311\\pythonw.exe' \\
        --config 'C:\\ProgramData\\netprobe\\agent.toml' --output task.xml   # for another OS

The service is built in three layers, in this order:

- **Pure** (no I/O), in `netprobe.service.files`: `ServiceSpec` says what to run;
  `render_systemd_unit`, `render_launchd_plist`, `render_windows_task_xml` and `unit_path` turn
  it into a file and its place; `plan_install` / `plan_uninstall` turn it into `Step`s (write
  this file, run this command), given the facts the I/O layer found (what is installed,
  systemd's version). This module re-exports those names.
- **I/O**, here: `install`, `uninstall`, `status` check the preconditions, gather the facts,
  carry out the plan (or, with ``dry_run``, return it) and translate failures into
  `NetprobeError`.
- **CLI**, here: `add_parser` and `run`, the ``netprobe service`` command.

Exit status of ``netprobe service``: 0 done (``status``: running); 1 could not be done (not
root, service manager missing or failing, already installed); 2 bad option or configuration;
``status`` only: 3 installed but not running (or state unknown), 4 not installed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any

from netprobe.errors import ConfigError, NetprobeError

# The functions of the pure layer are called as `files.NAME` (looked up at call time), so that
# a test that replaces one of them, or a setting such as `files.SYSTEMD_SYSTEM_DIR`, in
# `netprobe.service.files` reaches the plans built there and this module alike.
from netprobe.service import files
from netprobe.service.files import _WINDOWS_ENV_REF_RE as _WINDOWS_ENV_REF_RE  # used by tests
from netprobe.service.files import (  # re-exported
    AGENT_CONFIG_EXIT,
    DEFAULT_DESCRIPTION,
    DEFAULT_NAME,
    LAUNCH_DAEMONS_DIR,
    PLATFORMS,
    SCOPES,
    SYSTEMD_SYSTEM_DIR,
    TASK_NAMESPACE,
    Command,
    InstallResult,
    MakeDirs,
    Platform,
    RemoveFile,
    Scope,
    ServiceSpec,
    Step,
    UninstallResult,
    WriteFile,
    check_name,
    check_spec,
    encode_windows_task,
    host_platform,
    launchd_dirs,
    log_hint,
    plan_install,
    plan_uninstall,
    render,
    render_launchd_plist,
    render_systemd_unit,
    render_windows_task_xml,
    systemd_exec_line,
    unit_path,
    windows_arguments,
)
from netprobe.service.files import _host_or_none as _host_or_none  # used by tests

__all__ = [
    "AGENT_CONFIG_EXIT", "DEFAULT_DESCRIPTION", "DEFAULT_NAME", "EXIT_CONFIG", "EXIT_FAILED",
    "EXIT_NOT_INSTALLED", "EXIT_NOT_RUNNING", "EXIT_OK", "LAUNCH_DAEMONS_DIR", "PLATFORMS",
    "SCOPES", "SYSTEMD_SYSTEM_DIR", "TASK_NAMESPACE", "Command", "InstallResult", "MakeDirs",
    "Platform", "RemoveFile", "Scope", "ServiceSpec", "ServiceStatus", "Step",
    "UninstallResult", "WriteFile", "add_parser", "check_name", "check_spec",
    "encode_windows_task", "host_platform", "install", "launchd_dirs", "log_hint",
    "plan_install", "plan_uninstall", "render", "render_launchd_plist", "render_systemd_unit",
    "render_windows_task_xml", "run", "spec_from_args", "status", "systemd_exec_line",
    "uninstall", "unit_path", "windows_arguments",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_NOT_INSTALLED = 4

_COMMAND_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# I/O: facts, preconditions, execution


_TOOLS: dict[Platform, str] = {"linux": "systemctl", "darwin": "launchctl", "windows": "schtasks"}


def _run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise NetprobeError(f"{argv[0]} not found: {_missing_tool_advice(argv[0])}")
    log.debug("running %s", shlex.join(argv))
    try:
        return subprocess.run([exe, *argv[1:]], capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise NetprobeError(f"{shlex.join(argv)} did not finish within "
                            f"{_COMMAND_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise NetprobeError(f"cannot run {argv[0]}: {exc.strerror}") from None


def _missing_tool_advice(tool: str) -> str:
    return {
        "systemctl": "this machine does not use systemd, so netprobe cannot install the agent "
                     "as a service here (use --print to see the unit file)",
        "launchctl": "launchctl is part of macOS; is this a Mac?",
        "schtasks": "schtasks is part of Windows (C:\\Windows\\System32); is it on PATH?",
    }.get(tool, "is it installed and on PATH?")


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")


def _is_admin() -> bool:
    if sys.platform == "win32":
        import ctypes

        try:
            return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined,unused-ignore]
        except (AttributeError, OSError):
            return False
    return os.geteuid() == 0  # type: ignore[attr-defined,unused-ignore]


def _systemd_booted() -> bool:
    return Path("/run/systemd/system").is_dir()  # sd_booted(3)


def _systemd_version(scope: Scope) -> int | None:
    """The running manager's version, None if it cannot be asked."""
    ctl = ["systemctl", "--user"] if scope == "user" else ["systemctl"]
    try:
        proc = _run_command([*ctl, "show", "--property=Version"])
    except NetprobeError:
        return None
    match = re.search(r"Version=v?(\d+)", proc.stdout) if proc.returncode == 0 else None
    return int(match.group(1)) if match else None


def _require_manager(spec: ServiceSpec, platform: Platform) -> int | None:
    """Check the service manager is there and usable; returns systemd's version on Linux."""
    tool = _TOOLS[platform]
    if shutil.which(tool) is None:
        raise NetprobeError(f"{tool} not found: {_missing_tool_advice(tool)}")
    if spec.scope == "system" and not _is_admin():
        how = "from an Administrator prompt" if platform == "windows" else "with sudo"
        raise NetprobeError(f"installing a system service needs administrator rights: run it "
                            f"{how}, or use --user to install it for yourself")
    if platform != "linux":
        return None
    if spec.scope == "user" and os.environ.get("SUDO_USER") and _is_admin():
        raise NetprobeError("--user installs the agent for the user running the command: run "
                            "it without sudo")
    if spec.scope == "system" and not _systemd_booted():
        raise NetprobeError("systemd is not running on this machine (it was not booted with "
                            "systemd), so the agent cannot be installed as a service here")
    ctl = ["systemctl", "--user"] if spec.scope == "user" else ["systemctl"]
    proc = _run_command([*ctl, "show", "--property=Version"])
    if proc.returncode != 0:
        whose = "your user's service manager" if spec.scope == "user" else "systemd"
        raise NetprobeError(f"cannot reach {whose}: {_output(proc)}")
    match = re.search(r"Version=v?(\d+)", proc.stdout)
    return int(match.group(1)) if match else None


def _windows_task_exists(name: str) -> bool:
    return _run_command(["schtasks", "/Query", "/TN", name]).returncode == 0


def _read_existing(path: PurePath) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetprobeError(f"cannot read {path}: {exc.strerror}") from None


def _execute(steps: Sequence[Step]) -> None:
    for step in steps:
        log.info("%s", step)
        try:
            if isinstance(step, MakeDirs):
                Path(step.path).mkdir(parents=True, exist_ok=True)
                if step.owner:
                    shutil.chown(step.path, user=step.owner)
            elif isinstance(step, WriteFile):
                _write_atomic(Path(step.path), step.data, step.mode)
            elif isinstance(step, RemoveFile):
                Path(step.path).unlink(missing_ok=True)
            else:
                proc = _run_command(step.argv)
                if proc.returncode != 0:
                    if step.may_fail:
                        log.info("ignored: %s: %s", step, _output(proc))
                        continue
                    raise NetprobeError(f"`{step}` failed: {_output(proc)}")
        except (OSError, LookupError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise NetprobeError(f"could not {step}: {reason}") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resolve_platform(platform: Platform | None) -> tuple[Platform, bool]:
    """(target platform, whether it is this machine)."""
    host = files._host_or_none()
    target = platform or host
    if target is None:
        raise NetprobeError(f"netprobe cannot install a service on {sys.platform}: use "
                            f"--platform to generate files for another OS")
    if target not in PLATFORMS:
        raise ConfigError(f"unknown platform {target!r}; one of {', '.join(PLATFORMS)}")
    return target, target == host


def _warnings(spec: ServiceSpec, platform: Platform) -> list[str]:
    """Things that will likely go wrong or are unsafe, found on this machine."""
    out: list[str] = []
    exe, config = spec.command[0], Path(str(spec.config))
    if not config.is_file():
        out.append(f"the config file {config} does not exist")
    if spec.scope == "system":
        privileged = (platform == "darwin" and spec.user in (None, "root")) or \
            (platform == "windows" and files._windows_service_sid(spec.user or "SYSTEM") ==
             "S-1-5-18") or (platform == "linux" and spec.user == "root")
        if privileged and _in_user_folder(exe, platform):
            out.append(f"the service runs with full rights but its program {exe} is in a "
                       f"user's folder: whoever can change that folder can take over this "
                       f"machine. Install netprobe for all users (e.g. under /opt, /usr/local "
                       f"or C:\\Program Files) and pass --python.")
        if platform == "linux" and spec.user is None:
            for path, what in ((Path(exe), "program"), (config, "config file")):
                if not _others_can_read(path):
                    out.append(f"the service runs as an unprivileged user of its own, which "
                               f"cannot read the {what} {path}: make it and its folders "
                               f"readable by others (chmod o+rX), or use --run-as USER")
    elif platform == "linux":
        user = os.environ.get("USER") or os.environ.get("LOGNAME")
        if user and not Path("/var/lib/systemd/linger", user).exists():
            out.append(f"a user service runs only while you are logged in; to start it at "
                       f"boot, run once: sudo loginctl enable-linger {user}")
    return out


def _in_user_folder(path: str, platform: Platform) -> bool:
    if platform == "windows":
        lower = path.lower()
        return lower.startswith("c:\\users\\") or "\\appdata\\" in lower
    return path.startswith(("/Users/", "/home/", "/root/"))


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


# ---------------------------------------------------------------------------------------------
# I/O: the three operations


def install(spec: ServiceSpec, platform: Platform | None = None, dry_run: bool = False, *,
            force: bool = False) -> InstallResult:
    """Install and start the service, or with `dry_run` say how (nothing is changed then).

    `platform` None: this machine. Another platform works only with `dry_run`.
    Raises `ConfigError` (bad spec, config file missing) or `NetprobeError` (not root, no
    service manager, already installed with other settings and no `force`, a command failed).
    """
    target, on_host = _resolve_platform(platform)
    if dry_run:
        if not on_host:
            return files.plan_install(spec, target)
        files.check_spec(spec, target)
        existing = _read_existing(files.unit_path(spec, target)) if target != "windows" else None
        version = _systemd_version(spec.scope) if target == "linux" else None
        plan = files.plan_install(spec, target, existing=existing, force=force,
                            systemd_version=version)
        return replace(plan, warnings=tuple(_warnings(spec, target)))
    if not on_host:
        raise NetprobeError(f"cannot install a {target} service on this machine: use --dry-run, "
                            f"--print or --output to generate the files for it")
    files.check_spec(spec, target)
    config = Path(str(spec.config))
    if not config.is_file():
        raise ConfigError(f"config file not found: {config} (the agent reads it when it starts)")
    exe = Path(spec.command[0])
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise ConfigError(f"cannot run {exe}: no such program (pass --python PATH)")
    version = _require_manager(spec, target)
    path = files.unit_path(spec, target)
    existing = _read_existing(path)
    if target == "windows":
        # The task is what counts; our copy of its XML tells whether it has other settings.
        exists = _windows_task_exists(spec.name)
        existing = (existing or b"") if exists else None
    plan = files.plan_install(spec, target, existing=existing, force=force, systemd_version=version)
    _execute(plan.steps)
    return replace(plan, dry_run=False, warnings=tuple(_warnings(spec, target)))


def uninstall(spec: ServiceSpec, platform: Platform | None = None,
              dry_run: bool = False) -> UninstallResult:
    """Stop and remove the service; nothing to do (and no error) if it is not installed."""
    target, on_host = _resolve_platform(platform)
    files.check_name(spec, target)
    if not on_host:
        if dry_run:
            return files.plan_uninstall(spec, target, installed=None)
        raise NetprobeError(f"cannot uninstall a {target} service from this machine")
    path = files.unit_path(spec, target)
    copy_exists = Path(path).exists()
    if target == "windows":
        installed = _windows_task_exists(spec.name) if shutil.which("schtasks") else False
    else:
        installed = copy_exists
    plan = files.plan_uninstall(spec, target, installed=installed, copy_exists=copy_exists)
    if dry_run or not plan.steps:
        return plan
    if installed:
        _require_manager(spec, target)
    _execute(plan.steps)
    return replace(plan, dry_run=False)


@dataclass(frozen=True)
class ServiceStatus:
    """The service's state as its manager reports it."""

    platform: Platform
    name: str
    scope: Scope
    path: PurePath
    installed: bool
    running: bool | None
    """None: could not be found out (the message in `detail` says why)."""
    state: str
    """The manager's own word: ``active``/``failed`` (systemd), ``running``/``not loaded``
    (launchd), ``Running``/``Ready`` (Task Scheduler); ``not installed``; ``unknown``."""
    pid: int | None = None
    detail: str = ""
    logs: str = ""
    """How to read the agent's logs."""

    def to_json(self) -> dict[str, Any]:
        return {"schema": "netprobe.service.manager-status/1", "platform": self.platform,
                "name": self.name, "scope": self.scope, "path": str(self.path),
                "installed": self.installed, "running": self.running, "state": self.state,
                "pid": self.pid, "detail": self.detail, "logs": self.logs}


def status(spec: ServiceSpec, platform: Platform | None = None) -> ServiceStatus:
    """Whether the service is installed and running. Never raises for "not installed"; a
    question the manager cannot answer gives ``running=None`` and the reason in ``detail``."""
    target, on_host = _resolve_platform(platform)
    files.check_name(spec, target)
    if not on_host:
        raise NetprobeError(f"the status of a {target} service can only be read on that machine")
    path = files.unit_path(spec, target)
    base = ServiceStatus(platform=target, name=spec.name, scope=spec.scope, path=path,
                         installed=False, running=False, state="not installed",
                         logs=files.log_hint(spec, target))
    tool = _TOOLS[target]
    if target == "windows":
        if shutil.which(tool) is None:
            return replace(base, running=None, state="unknown",
                           detail=f"{tool} not found: cannot ask Task Scheduler")
        return _windows_status(spec, base)
    if not Path(path).exists():
        return base
    base = replace(base, installed=True)
    if shutil.which(tool) is None:
        return replace(base, running=None, state="unknown", detail=f"{tool} not found")
    if target == "linux":
        return _systemd_status(spec, base)
    return _launchd_status(spec, base)


def _systemd_status(spec: ServiceSpec, base: ServiceStatus) -> ServiceStatus:
    ctl = ["systemctl", "--user"] if spec.scope == "user" else ["systemctl"]
    proc = _run_command([*ctl, "show", f"{spec.name}.service", "--property="
                         "LoadState,ActiveState,SubState,MainPID,UnitFileState,Result"])
    if proc.returncode != 0:
        return replace(base, running=None, state="unknown",
                       detail=f"could not ask systemd: {_output(proc)}")
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    active = props.get("ActiveState", "unknown")
    pid = int(props.get("MainPID", "0") or 0) or None
    running = active in ("active", "reloading", "activating") if active != "unknown" else None
    detail = f"{active} ({props.get('SubState', '?')}), {props.get('UnitFileState', '?')}"
    if props.get("LoadState") == "not-found":
        detail += "; the unit file is there but systemd has not loaded it (daemon-reload?)"
    if active == "failed":
        detail += f"; last result: {props.get('Result', '?')}"
    return replace(base, running=running, state=active, pid=pid, detail=detail)


def _launchd_status(spec: ServiceSpec, base: ServiceStatus) -> ServiceStatus:
    proc = _run_command(["launchctl", "print", f"{files._launchd_domain(spec)}/{spec.name}"])
    if proc.returncode != 0:
        return replace(base, state="not loaded",
                       detail=f"installed but not loaded into launchd: {_output(proc)}")
    state = re.search(r"^\s*state = (.+)$", proc.stdout, re.MULTILINE)
    pid = re.search(r"^\s*pid = (\d+)$", proc.stdout, re.MULTILINE)
    exit_status = re.search(r"^\s*last exit code = (.+)$", proc.stdout, re.MULTILINE)
    word = state.group(1).strip() if state else "unknown"
    detail = f"last exit: {exit_status.group(1).strip()}" if exit_status else ""
    return replace(base, running=word == "running" if state else None, state=word,
                   pid=int(pid.group(1)) if pid else None, detail=detail)


def _windows_status(spec: ServiceSpec, base: ServiceStatus) -> ServiceStatus:
    proc = _run_command(["schtasks", "/Query", "/TN", spec.name, "/FO", "CSV", "/NH"])
    if proc.returncode != 0:
        return base
    rows = [r for r in csv.reader(io.StringIO(proc.stdout)) if len(r) >= 3]
    word = rows[0][2].strip() if rows else "unknown"
    # schtasks translates its status words; only the English ones can be read for sure.
    running = {"running": True, "ready": False, "disabled": False, "queued": False}.get(
        word.lower())
    detail = "" if running is not None else f"Task Scheduler says {word!r}"
    return replace(base, installed=True, running=running, state=word, detail=detail)


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``service`` on the top-level CLI's subparsers; dispatch goes to `run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "service",
        help="install the background agent as a service (systemd, launchd, Windows)",
        description="Install, remove or inspect the netprobe agent as a background service: "
                    "a systemd unit on Linux, a launchd job on macOS, a scheduled task on "
                    "Windows. See docs/service.md.",
    )
    common = argparse.ArgumentParser(add_help=False)
    scope = common.add_mutually_exclusive_group()
    scope.add_argument("--system", dest="scope", action="store_const", const="system",
                       help="for the whole machine, starts at boot (default; needs root)")
    scope.add_argument("--user", dest="scope", action="store_const", const="user",
                       help="for you only, starts when you log in")
    common.add_argument("--platform", choices=PLATFORMS,
                        help="target OS (default: this one); another one only with "
                             "--dry-run, --print or --output")
    common.add_argument("--name", default=DEFAULT_NAME,
                        help=f"service name (default {DEFAULT_NAME})")
    common.set_defaults(scope="system")
    sub = parser.add_subparsers(dest="service_command", required=True, metavar="COMMAND")

    inst = sub.add_parser("install", parents=[common], help="install and start the agent",
                          description="Write the service file, enable the service and start "
                                      "it. Exit 0 done, 1 could not, 2 bad option.")
    inst.add_argument("--config", dest="agent_config", type=Path, metavar="PATH",
                      help="the agent's config file (required; made absolute)")
    inst.add_argument("--python", metavar="PATH",
                      help="interpreter on the target machine (default: this one)")
    inst.add_argument("--run-as", metavar="USER",
                      help="system scope: account to run as (default: an unprivileged "
                           "account of its own on Linux, root on macOS, SYSTEM on Windows)")
    inst.add_argument("--working-dir", metavar="DIR", help="directory the agent starts in")
    inst.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="environment variable for the agent (repeatable; not on Windows)")
    inst.add_argument("--force", action="store_true",
                      help="replace an installed service that has other settings")
    inst.add_argument("--dry-run", action="store_true",
                      help="show the file and the commands, change nothing")
    inst.add_argument("--print", dest="print_file", action="store_true",
                      help="print the service file only, change nothing")
    inst.add_argument("--output", type=Path, metavar="FILE",
                      help="write the service file to FILE (in the encoding its OS needs) "
                           "instead of installing")

    uninst = sub.add_parser("uninstall", parents=[common], help="stop and remove the agent")
    uninst.add_argument("--dry-run", action="store_true", help="show what would be done")

    stat = sub.add_parser("status", parents=[common], help="is the agent installed and running?",
                          description="Exit 0 running, 3 installed but not running, "
                                      "4 not installed.")
    stat.add_argument("--json", action="store_true", help="one JSON object, for machines")
    parser.set_defaults(func=run)
    return parser


def spec_from_args(args: argparse.Namespace, platform: Platform, on_host: bool) -> ServiceSpec:
    """The `ServiceSpec` that a ``service`` command line describes."""
    scope: Scope = args.scope
    config_arg = getattr(args, "agent_config", None)
    if config_arg is None:
        config_arg = getattr(args, "config", None)  # the top-level --config, if any
    config: PurePath | None = None
    if config_arg is not None:
        config = Path(config_arg).expanduser().absolute() if on_host else PurePath(config_arg)
    python = getattr(args, "python", None)
    if python is None:
        if not on_host and args.service_command == "install":
            raise ConfigError(f"give the interpreter's path on the {platform} machine: "
                              f"--python PATH")
        python = _default_python(platform)
    env: list[tuple[str, str]] = []
    for item in getattr(args, "env", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: write KEY=VALUE")
        env.append((key, value))
    user = getattr(args, "run_as", None)
    if platform == "windows" and scope == "user" and user is None and on_host:
        user = _windows_current_user()
    working_dir = getattr(args, "working_dir", None)
    return ServiceSpec(config=config, scope=scope, name=args.name, python=python,
                       working_dir=PurePath(working_dir) if working_dir else None,
                       environment=tuple(env), user=user)


def _default_python(platform: Platform) -> str:
    exe = sys.executable
    if platform == "windows" and sys.platform == "win32":
        # pythonw.exe opens no console window in the user's session.
        windowless = Path(exe).with_name("pythonw.exe")
        if windowless.is_file():
            return str(windowless)
    return exe


def _windows_current_user() -> str | None:
    name = os.environ.get("USERNAME")
    domain = os.environ.get("USERDOMAIN")
    return f"{domain}\\{name}" if name and domain else name


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``service`` command line; returns the exit status."""
    try:
        platform, on_host = _resolve_platform(args.platform)
        spec = spec_from_args(args, platform, on_host)
        if args.service_command == "install":
            return _cmd_install(args, spec, platform)
        if args.service_command == "uninstall":
            return _cmd_uninstall(args, spec, platform)
        return _cmd_status(args, spec, platform)
    except ConfigError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NetprobeError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _cmd_install(args: argparse.Namespace, spec: ServiceSpec, platform: Platform) -> int:
    if args.print_file or args.output:
        on_host = platform == files._host_or_none()
        version = _systemd_version(spec.scope) if on_host and platform == "linux" else None
        data, text = files.render(spec, platform, systemd_version=version)
        if args.output:
            try:
                args.output.write_bytes(data)
            except OSError as exc:
                raise NetprobeError(f"cannot write {args.output}: {exc.strerror}") from None
            print(f"wrote {args.output}", file=sys.stderr)
        if args.print_file:
            sys.stdout.write(text)
        return EXIT_OK
    result = install(spec, platform, dry_run=args.dry_run, force=args.force)
    for warning in result.warnings:
        print(f"netprobe: warning: {warning}", file=sys.stderr)
    if result.dry_run:
        print(f"{result.path}:\n")
        print(result.text.rstrip("\n"))
        print("\nWould do, in order (nothing has been changed):")
        for step in result.steps:
            ignored = isinstance(step, Command) and step.may_fail
            print(f"  {step}" + ("   (a failure here is ignored)" if ignored else ""))
        if result.up_to_date:
            print("The same file is installed already.")
        return EXIT_OK
    what = "already installed; enabled and started" if result.up_to_date else \
        "replaced and restarted" if result.replaced else "installed and started"
    when = "at every boot" if spec.scope == "system" else "when you log in"
    print(f"The netprobe agent is {what} ({result.path}).\n"
          f"It starts {when}. Check it with: netprobe service status"
          + (" --user" if spec.scope == "user" else "")
          + f"\nLogs: {files.log_hint(spec, platform)}")
    return EXIT_OK


def _cmd_uninstall(args: argparse.Namespace, spec: ServiceSpec, platform: Platform) -> int:
    result = uninstall(spec, platform, dry_run=args.dry_run)
    if result.dry_run:
        if not result.steps:
            print(f"{spec.name} is not installed: nothing to do.")
        for step in result.steps:
            print(f"  {step}")
        return EXIT_OK
    if not result.steps:
        print(f"{spec.name} is not installed: nothing to do.")
    else:
        print(f"The netprobe agent is stopped and removed ({result.path}). Its logs stay.")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, spec: ServiceSpec, platform: Platform) -> int:
    st = status(spec, platform)
    code = EXIT_NOT_INSTALLED if not st.installed else EXIT_OK if st.running else \
        EXIT_NOT_RUNNING
    if args.json:
        sys.stdout.write(json.dumps(st.to_json()) + "\n")
        return code
    if not st.installed:
        print(f"The netprobe agent is not installed ({st.path} not found).")
    elif st.running:
        pid = f", process {st.pid}" if st.pid else ""
        print(f"The netprobe agent is running ({st.state}{pid}).")
    elif st.running is None:
        print(f"The netprobe agent is installed; whether it runs is unknown: {st.detail}")
    else:
        print(f"The netprobe agent is installed but NOT running ({st.state}).")
    if st.installed:
        if st.detail and st.running is not None:
            print(f"  {st.detail}")
        print(f"  file: {st.path}\n  logs: {st.logs}")
    return code

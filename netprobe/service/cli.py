"""The ``netprobe service`` command: `add_parser` registers it, `run` carries it out. It
installs the background agent, or with ``--reflector`` the reflector (`netprobe serve`, Linux
with systemd only).

Exit status: 0 done (``status``: running); 1 could not be done (not root, service manager
missing or failing, already installed); 2 bad option or configuration; ``status`` only:
3 installed but not running (or state unknown), 4 not installed (`netprobe.exitcodes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePath
from typing import Any

from netprobe import exitcodes
from netprobe.errors import ConfigError, NetprobeError
from netprobe.service.base import (
    DEFAULT_NAME,
    PLATFORMS,
    REFLECTOR_DESCRIPTION,
    REFLECTOR_NAME,
    Backend,
    Host,
    Scope,
    ServiceSpec,
    check_role,
)
from netprobe.service.manager import backend_for, target_host
from netprobe.service.plan import Command

__all__ = ["add_parser", "run", "spec_from_args"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``service`` on the top-level CLI's subparsers; dispatch goes to `run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "service",
        help="install the background agent (or the reflector) as a service",
        description="Install, remove or inspect the netprobe agent as a background service: "
                    "a systemd unit on Linux, a launchd job on macOS, a scheduled task on "
                    "Windows (docs/service.md); with --reflector, the reflector (netprobe "
                    "serve) as a systemd system service (docs/reflector.md).",
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
    common.add_argument("--name", default=None,
                        help=f"service name (default {DEFAULT_NAME}, with --reflector "
                             f"{REFLECTOR_NAME})")
    common.add_argument("--reflector", dest="role", action="store_const", const="reflector",
                        default="agent",
                        help="the reflector (netprobe serve) instead of the agent: Linux with "
                             "systemd, system service only")
    common.set_defaults(scope="system")
    sub = parser.add_subparsers(dest="service_command", required=True, metavar="COMMAND")

    inst = sub.add_parser("install", parents=[common], help="install and start the agent",
                          description="Write the service file, enable the service and start "
                                      "it. Exit 0 done, 1 could not, 2 bad option.")
    inst.add_argument("--config", dest="agent_config", type=Path, metavar="PATH",
                      help="the agent's (or reflector's) config file (required; made "
                           "absolute)")
    inst.add_argument("--token-secret-file", type=Path, metavar="PATH",
                      help="--reflector: the token secret file; systemd hands the service a "
                           "copy only its user can read (the file stays root's, mode 0600)")
    inst.add_argument("--bind-low-port", action="store_true",
                      help="--reflector: allow a port below 1024 (CAP_NET_BIND_SERVICE)")
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


def spec_from_args(args: argparse.Namespace, host: Host) -> ServiceSpec:
    """The `ServiceSpec` that a ``service`` command line describes, for `host`."""
    scope: Scope = args.scope
    config_arg = getattr(args, "agent_config", None)
    if config_arg is None:
        config_arg = getattr(args, "config", None)  # the top-level --config, if any
    config: PurePath | None = None
    if config_arg is not None:
        config = Path(config_arg).expanduser().absolute() if host.local else PurePath(config_arg)
    python = getattr(args, "python", None)
    if python is None:
        if not host.local and args.service_command == "install":
            raise ConfigError(f"give the interpreter's path on the {host.platform} machine: "
                              f"--python PATH")
        python = _default_python(host)
    env: list[tuple[str, str]] = []
    for item in getattr(args, "env", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: write KEY=VALUE")
        env.append((key, value))
    user = getattr(args, "run_as", None)
    if host.platform == "windows" and scope == "user" and user is None and host.local:
        name, domain = host.environ.get("USERNAME"), host.environ.get("USERDOMAIN")
        user = f"{domain}\\{name}" if name and domain else name
    working_dir = getattr(args, "working_dir", None)
    role = getattr(args, "role", "agent")
    secret_arg = getattr(args, "token_secret_file", None)
    secret: PurePath | None = None
    if secret_arg is not None:
        secret = Path(secret_arg).expanduser().absolute() if host.local else PurePath(secret_arg)
    name = args.name or (REFLECTOR_NAME if role == "reflector" else DEFAULT_NAME)
    extra: dict[str, Any] = {"description": REFLECTOR_DESCRIPTION} if role == "reflector" else {}
    return ServiceSpec(config=config, scope=scope, name=name, python=python,
                       working_dir=PurePath(working_dir) if working_dir else None,
                       environment=tuple(env), user=user, role=role, token_secret=secret,
                       bind_low_port=bool(getattr(args, "bind_low_port", False)), **extra)


def _default_python(host: Host) -> str:
    exe = host.executable or sys.executable
    if host.platform == "windows" and host.local:
        # pythonw.exe opens no console window in the user's session.
        windowless = Path(exe).with_name("pythonw.exe")
        if windowless.is_file():
            return str(windowless)
    return exe


def run(args: argparse.Namespace, host: Host | None = None) -> int:
    """Carry out a parsed ``service`` command line for `host` (default: this machine);
    returns the exit status."""
    try:
        target = target_host(args.platform, host)
        backend = backend_for(target.platform or "")
        spec = spec_from_args(args, target)
        if spec.role == "reflector":
            check_role(spec, target)
        if args.service_command == "install":
            return _cmd_install(args, spec, backend, target)
        if args.service_command == "uninstall":
            return _cmd_uninstall(args, spec, backend, target)
        return _cmd_status(args, spec, backend, target)
    except ConfigError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except NetprobeError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return exitcodes.FAILED


def _cmd_install(args: argparse.Namespace, spec: ServiceSpec, backend: Backend,
                 host: Host) -> int:
    if args.print_file or args.output:
        version = backend.manager_version(spec, host) if host.local else None
        data, text = backend.render(spec, host, manager_version=version)
        if args.output:
            try:
                args.output.write_bytes(data)
            except OSError as exc:
                raise NetprobeError(f"cannot write {args.output}: {exc.strerror}") from None
            print(f"wrote {args.output}", file=sys.stderr)
        if args.print_file:
            sys.stdout.write(text)
        return exitcodes.OK
    result = backend.install(spec, host, dry_run=args.dry_run, force=args.force)
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
        return exitcodes.OK
    what = "already installed; enabled and started" if result.up_to_date else \
        "replaced and restarted" if result.replaced else "installed and started"
    when = "at every boot" if spec.scope == "system" else "when you log in"
    print(f"The netprobe {spec.what} is {what} ({result.path}).\n"
          f"It starts {when}. Check it with: netprobe service status"
          + (" --user" if spec.scope == "user" else "")
          + (" --reflector" if spec.role == "reflector" else "")
          + f"\nLogs: {backend.log_hint(spec, host)}")
    return exitcodes.OK


def _cmd_uninstall(args: argparse.Namespace, spec: ServiceSpec, backend: Backend,
                   host: Host) -> int:
    result = backend.uninstall(spec, host, dry_run=args.dry_run)
    if result.dry_run:
        if not result.steps:
            print(f"{spec.name} is not installed: nothing to do.")
        for step in result.steps:
            print(f"  {step}")
        return exitcodes.OK
    if not result.steps:
        print(f"{spec.name} is not installed: nothing to do.")
    else:
        print(f"The netprobe {spec.what} is stopped and removed ({result.path}). Its logs "
              f"stay.")
    return exitcodes.OK


def _cmd_status(args: argparse.Namespace, spec: ServiceSpec, backend: Backend,
                host: Host) -> int:
    st = backend.status(spec, host)
    if args.json:
        sys.stdout.write(json.dumps(st.to_json()) + "\n")
        return st.exit_status
    if not st.installed:
        print(f"The netprobe {spec.what} is not installed ({st.path} not found).")
    elif st.running:
        pid = f", process {st.pid}" if st.pid else ""
        print(f"The netprobe {spec.what} is running ({st.state}{pid}).")
    elif st.running is None:
        print(f"The netprobe {spec.what} is installed; whether it runs is unknown: "
              f"{st.detail}")
    else:
        print(f"The netprobe {spec.what} is installed but NOT running ({st.state}).")
    if st.installed:
        if st.detail and st.running is not None:
            print(f"  {st.detail}")
        print(f"  file: {st.path}\n  logs: {st.logs}")
    return st.exit_status

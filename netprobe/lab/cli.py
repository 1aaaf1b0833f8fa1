"""``netprobe lab``: list profiles, run a command or a shell behind an emulated link.

    netprobe lab list
    netprobe lab run --profile dsl [--server-cmd "python -m netprobe reflector"] -- CMD...
    netprobe lab shell satellite
    netprobe lab cleanup

Exit status of ``run``: the command's own; 2 for a bad profile file, name or command line;
3 when the lab cannot run here (not root, no /dev/net/tun, no iproute2) or could not be set up;
130 after Ctrl-C and 143 after SIGTERM (the lab is torn down in both cases).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from netprobe import exitcodes
from netprobe.errors import ConfigError
from netprobe.lab.errors import LabError
from netprobe.lab.linklab import LinkLab, run_command
from netprobe.lab.netns import check_lab_available, remove_stale_namespaces
from netprobe.lab.profiles import default_profiles_path, describe_profiles, load_profile

EXIT_CONFIG = exitcodes.USAGE
"""Bad profiles file, unknown profile, or nothing to run."""
EXIT_UNAVAILABLE = exitcodes.UNAVAILABLE
"""The lab cannot run on this machine, or setting it up failed."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``lab`` on the top-level CLI's subparsers; dispatch goes to `run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lab",
        help="emulate a client's connection (delay, loss, rate, traces) and run commands behind it",
        description="Emulated link between two network namespaces (needs root and /dev/net/tun).",
    )
    configure_parser(parser)
    parser.set_defaults(func=run)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the lab's subcommands to ``parser`` (used by `add_parser` and ``python -m``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profiles",
        type=Path,
        metavar="FILE",
        help=f"profiles file (default: {default_profiles_path()})",
    )
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    sub.add_parser("list", parents=[common], help="list the profiles")
    run_p = sub.add_parser(
        "run",
        parents=[common],
        help="run a command in the client namespace behind the emulated link",
        description="Set up the lab, run CMD in the client namespace (with "
        "NETPROBE_LAB_SERVER_ADDR and NETPROBE_LAB_CLIENT_ADDR set), tear down, exit with "
        "CMD's status.",
    )
    run_p.add_argument("--profile", required=True, metavar="NAME", help="profile to emulate")
    run_p.add_argument(
        "--server-cmd", metavar="CMD", help="command to start first in the server namespace"
    )
    run_p.add_argument(
        "--server-wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="time the server command gets to start listening (default 0.5)",
    )
    run_p.add_argument("-q", "--quiet", action="store_true", help="no lab messages on stderr")
    run_p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="command to run")
    shell_p = sub.add_parser(
        "shell", parents=[common], help="an interactive shell in the client namespace"
    )
    shell_p.add_argument("profile", metavar="PROFILE")
    shell_p.add_argument("--server-cmd", metavar="CMD", help="command to start in the server ns")
    sub.add_parser("cleanup", help="remove namespaces left by lab runs that were killed")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``lab`` command line; returns the exit status."""
    command = args.lab_command
    try:
        if command == "list":
            return _list(args)
        if command == "cleanup":
            return _cleanup()
        cmd = list(getattr(args, "cmd", []) or [])
        if cmd[:1] == ["--"]:
            cmd = cmd[1:]
        if command == "run" and not cmd:
            return _fail("nothing to run: give the command after --", EXIT_CONFIG)
        wait = getattr(args, "server_wait", 0.0)
        if not (math.isfinite(wait) and wait >= 0):
            return _fail(f"--server-wait must be a number of seconds >= 0, got {wait}",
                         EXIT_CONFIG)
        try:
            server_argv = shlex.split(args.server_cmd) if args.server_cmd else None
        except ValueError as exc:  # unbalanced quotes
            return _fail(f"--server-cmd {args.server_cmd!r}: {exc}", EXIT_CONFIG)
        reason = check_lab_available()
        if reason is not None:
            return _fail(reason, EXIT_UNAVAILABLE)
        profile_name = args.profile
        profile = load_profile(profile_name, args.profiles)
        if command == "run":
            return run_command(
                profile,
                cmd,
                server_argv=server_argv,
                server_settle_s=args.server_wait,
                report=not args.quiet,
            )
        return _shell(profile, server_argv)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except LabError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)


def _list(args: argparse.Namespace) -> int:
    profiles = describe_profiles(args.profiles)
    width = max((len(name) for name, _ in profiles), default=0)
    for name, description in profiles:
        print(f"{name:<{width}}  {description}")
    return 0


def _cleanup() -> int:
    reason = check_lab_available()
    if reason is not None:
        return _fail(reason, EXIT_UNAVAILABLE)
    removed = remove_stale_namespaces()
    print(f"removed {len(removed)} leftover namespace(s)" + (": " if removed else ""), end="")
    print(", ".join(removed))
    return 0


def _shell(profile: Any, server_argv: list[str] | None) -> int:
    async def main() -> int:
        async with LinkLab(profile) as lab:
            if server_argv:
                await lab.exec_server(*server_argv)
            print(
                f"lab shell, profile {profile.name!r}: you are {lab.client_addr} in "
                f"{lab.client_ns}; the server side is {lab.server_addr}. "
                "Exit the shell to tear the lab down.",
                file=sys.stderr,
            )
            loop = asyncio.get_running_loop()
            # Ctrl-C belongs to the shell and its jobs, not to us.
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            try:
                shell = await lab.exec_client(os.environ.get("SHELL", "/bin/sh"))
                return await shell.wait()
            finally:
                loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except asyncio.CancelledError:  # SIGTERM: the lab cancelled us after tearing down
        return exitcodes.TERMINATED


def _fail(message: str, status: int) -> int:
    print(f"netprobe lab: {message}", file=sys.stderr)
    return status

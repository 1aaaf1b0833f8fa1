"""`netprobe` command line: `check`, `serve` (and `lab`, the link emulator).

Exit statuses are `netprobe.exitcodes` (documented in docs/check-format.md). Of `check`:
0 video, 10 audio_only, 11 phone, 12 unknown; 2 usage or config error; 130 stopped by Ctrl-C
or SIGTERM. Every foreseeable failure is a `NetprobeError`: a message, an exit status, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from netprobe import exitcodes
from netprobe.config import Settings, load_settings, override, server_url_problem
from netprobe.core.result import CheckResult
from netprobe.errors import ConfigError, NetprobeError
from netprobe.i18n import N_
from netprobe.signals import on_stop_signals, remove_stop_signals

EXIT_USAGE = exitcodes.USAGE
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netprobe",
        description="Can this connection hold a video therapy session? netprobe measures it "
                    "and recommends video, audio only or the phone.",
    )
    parser.add_argument("--config", type=Path, help="settings file (TOML); see config/")
    parser.add_argument("--thresholds", type=Path,
                        help="classifier thresholds file (default: the shipped one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--lang", metavar="LANG",
                        help="language of the words for people: en or es (default: the "
                             "locale's, LC_ALL/LC_MESSAGES/LANG, else English); the JSON "
                             "is the same in every language")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="run a pre-session check",
                           description="Measure the connection to a reflector and recommend "
                                       "video, audio only or the phone.")
    target = check.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", metavar="URL", action="append",
                        help="reflector URL, e.g. http://host:8765; several: repeat the flag "
                             "or separate them with commas (tried in a shuffled order, the "
                             "next one if one is down or busy)")
    target.add_argument("--local", action="store_true",
                        help="self-test against a reflector started on this machine "
                             "(does not test the internet link)")
    target.add_argument("--link", metavar="URL",
                        help="the check link your clinic sent "
                             "(https://reflector.example:8765/check#t=TOKEN): server and token")
    _late_config(check)
    check.add_argument("--token", metavar="TOKEN",
                       help="access token for a reflector that needs one (default: "
                            "$NETPROBE_TOKEN; prefer the variable, others can see arguments)")
    check.add_argument("--json", action="store_true",
                       help="print exactly one JSON object (schema netprobe.check/1)")
    check.add_argument("--max-duration", type=float, metavar="S",
                       help="hard cap on the check in seconds (default 15)")
    check.add_argument("--no-progress", action="store_true", help="no live progress line")
    check.add_argument("--thorough", action="store_true",
                       help="for support staff: after the check, a sustained TCP speed test "
                            "each way against the same reflector (about 12 s more)")
    check.add_argument("--public-speedtest", action="store_true",
                       help="with --thorough: run the TCP speed test against speedtest.net's "
                            "servers instead of the reflector (contacts speedtest.net, which "
                            "then sees this machine's address)")
    check.set_defaults(func=_cmd_check)

    agent = sub.add_parser("agent", help="run the background agent (clinics)",
                           description="Watch the connection in the background: light checks "
                                       "while idle, continuous monitoring during a session, a "
                                       "local API and JSON logs.")
    _late_config(agent)
    agent.add_argument("--server", metavar="URL", action="append",
                       help="reflector URL (overrides [agent]); several: repeat the flag or "
                            "separate them with commas")
    agent.add_argument("--api-port", type=int, metavar="N", help="local API port (default 8766)")
    agent.add_argument("--log-file", metavar="PATH", help="JSON-lines log file")
    agent.set_defaults(func=_cmd_agent)

    from netprobe.cli import serve, status, token
    from netprobe.service import cli as service

    serve.add_parser(sub)
    token.add_parser(sub)
    status.add_parser(sub)  # `netprobe status`: the agent's recommendation in plain words
    service.add_parser(sub)
    try:
        from netprobe.lab import cli as lab_cli
    except ImportError:  # pragma: no cover - the lab is optional
        pass
    else:
        lab_cli.add_parser(sub)
    return parser


def _late_config(sub: argparse.ArgumentParser) -> None:
    """Accept --config/--thresholds after the subcommand too (`netprobe agent --config F`)."""
    sub.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                     help="settings file (TOML); see config/")
    sub.add_argument("--thresholds", type=Path, default=argparse.SUPPRESS,
                     help="classifier thresholds file")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("netprobe: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("aiortc", "aioice", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


class _ProgressLine:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._width = 0

    def __call__(self, p: object) -> None:
        if not self.enabled:
            return
        from netprobe.cli.report import render_progress

        text = render_progress(p)  # type: ignore[arg-type]
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived: the command was cancelled and has cleaned up."""


def _run_until_stopped(body: Callable[[], Awaitable[T]]) -> T:
    """Run `body()` in a new event loop; SIGINT and SIGTERM cancel it (its `finally` blocks
    run: sessions closed, the reflector freed) and raise `_Stopped`."""
    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            task.cancel()

        on_stop_signals(loop, stop)
        try:
            return await body()
        except asyncio.CancelledError:
            if stopped:
                raise _Stopped from None
            raise
        finally:
            remove_stop_signals(loop)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:  # the signal came as `body` returned: cancelled all the same
        raise _Stopped from None


def _server_urls(values: list[str]) -> tuple[str, ...]:
    """The URLs of repeated and/or comma-separated `--server` flags, each checked."""
    from netprobe.core.failover import MAX_SERVERS, server_list

    urls = server_list(values)
    if not urls:
        raise ConfigError("--server: give a reflector URL, e.g. http://reflector.example:8765")
    if len(urls) > MAX_SERVERS:
        raise ConfigError(f"--server: give at most {MAX_SERVERS} reflector URLs")
    for url in urls:
        problem = server_url_problem(url)
        if problem is not None:
            raise ConfigError(f"--server: {problem}")
    return urls


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.cli.report import EXIT_CODES, render_text
    from netprobe.webrtc.client import run_check, run_check_attempts
    from netprobe.webrtc.engine import restrict_to_loopback_if_local

    if args.public_speedtest and not args.thorough:
        raise ConfigError("--public-speedtest goes with --thorough (it chooses what the "
                          "thorough TCP speed test runs against)")
    if args.max_duration is not None:
        settings = replace(settings, probe=override(settings.probe, "--max-duration",
                                                    max_duration_s=args.max_duration))
    servers: tuple[str, ...] = ()
    token = args.token or os.environ.get("NETPROBE_TOKEN", "")
    if args.link is not None:
        from netprobe.tokens import parse_check_link

        server, token = parse_check_link(args.link)
        servers = _server_urls([server])
    elif args.server is not None:
        import random

        from netprobe.core.failover import shuffled

        servers = shuffled(_server_urls(args.server), random.random)  # load spread
    settings = replace(settings, access_token=token.strip())
    show = _ProgressLine(sys.stderr.isatty() and not args.no_progress)

    async def with_tcp(result: CheckResult, url: str | None) -> CheckResult:
        """--thorough: the sustained TCP test against `url` (the reflector that took the
        check) or speedtest.net; whatever happens, in `tcp`, never in the verdict."""
        if not args.thorough:
            return result
        from netprobe.tcpreport import tcp_report

        show(N_("Measuring TCP speed each way (about 12 s more)…"))
        return replace(result, tcp=await tcp_report(url, settings.access_token or None,
                                                    public=args.public_speedtest))

    async def check() -> object:
        if args.local:
            from netprobe.webrtc.reflector import Reflector

            reflector = Reflector(replace(settings.reflector, host="127.0.0.1", port=0,
                                          token_secret_file="", open=False))
            restrict_to_loopback_if_local(reflector.settings.host)
            await reflector.start()
            try:
                result = await run_check(reflector.url, settings, local=True,
                                         on_progress=show)
                return await with_tcp(result, reflector.url)
            finally:
                await reflector.stop()
        for url in servers:
            restrict_to_loopback_if_local(url)
        result, attempts = await run_check_attempts(servers, settings, on_progress=show)
        took = [a.url for a in attempts if a.outcome == "answered"]
        return await with_tcp(result, took[-1] if took else None)

    try:
        result = _run_until_stopped(check)
    except _Stopped:
        print("netprobe: check stopped before it finished", file=sys.stderr)
        return exitcodes.INTERRUPTED
    finally:
        show.clear()
    if args.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")  # type: ignore[attr-defined]
    else:
        sys.stdout.write(render_text(result))  # type: ignore[arg-type]
    return EXIT_CODES[result.verdict.verdict]  # type: ignore[attr-defined]


def _cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.agent.app import Agent
    from netprobe.logs import jsonlog

    if args.api_port is not None and not 0 < args.api_port < 65536:
        raise ConfigError("--api-port must be 1-65535")
    servers = None if args.server is None else _server_urls(args.server)
    log_file = args.log_file or settings.agent.log_file or None
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    path = Path(log_file) if log_file else jsonlog.default_log_path(
        scope="system" if is_root else "user")
    if os.environ.get("LOGS_DIRECTORY") and not log_file:
        path = Path(os.environ["LOGS_DIRECTORY"].split(":")[0]) / "netprobe.log"
    for handler in logging.getLogger().handlers:  # stderr: warnings only, the file has all
        handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    jsonlog.setup_json_logging(path, max_bytes=settings.agent.log_max_bytes,
                               backup_count=settings.agent.log_backups,
                               log_addresses=settings.privacy.log_addresses)
    agent = Agent(settings, args.config, {"server": servers, "api_port": args.api_port},
                  thresholds_path=args.thresholds)
    try:
        return asyncio.run(agent.run())
    finally:
        jsonlog.flush_and_close()


#: Commands that load their own settings (or none).
_OWN_SETTINGS = {"lab", "service", "token"}


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv`; returns the exit status (`netprobe.exitcodes`)."""
    parser = _parser()
    args = parser.parse_args(argv)  # a bad flag: argparse's message and exit status 2
    _setup_logging(args.verbose)
    from netprobe.i18n import language_code, set_language

    if set_language(args.lang) != language_code(args.lang or "en") and args.lang:
        print(f"netprobe: no words in {args.lang!r} yet, using English", file=sys.stderr)
    try:
        if args.command in _OWN_SETTINGS:
            return int(args.func(args))
        settings = load_settings(args.config, args.thresholds)
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"netprobe: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except NetprobeError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return exitcodes.UNKNOWN if args.command == "check" else exitcodes.FAILED
    except KeyboardInterrupt:
        print("netprobe: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`netprobe` command line: `check`, `serve` (and `lab`, the link emulator).

Exit status of `check`: 0 video, 10 audio_only, 11 phone, 12 unknown; 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from netprobe.config import Settings, load_settings
from netprobe.errors import ConfigError, NetprobeError

EXIT_USAGE = 2


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="run a pre-session check",
                           description="Measure the connection to a reflector and recommend "
                                       "video, audio only or the phone.")
    target = check.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", metavar="URL", help="reflector URL, e.g. http://host:8765")
    target.add_argument("--local", action="store_true",
                        help="self-test against a reflector started on this machine "
                             "(does not test the internet link)")
    _late_config(check)
    check.add_argument("--json", action="store_true",
                       help="print exactly one JSON object (schema netprobe.check/1)")
    check.add_argument("--max-duration", type=float, metavar="S",
                       help="hard cap on the check in seconds (default 15)")
    check.add_argument("--no-progress", action="store_true", help="no live progress line")
    check.set_defaults(func=_cmd_check)

    serve = sub.add_parser("serve", help="run a reflector (the clinic's test server)")
    _late_config(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765)")
    serve.add_argument("--max-sessions", type=int, help="concurrent probe sessions (default 4)")
    serve.add_argument("--session-timeout", type=float, metavar="S",
                       help="hard time limit of a probe session (default 30)")
    serve.set_defaults(func=_cmd_serve)

    agent = sub.add_parser("agent", help="run the background agent (clinics)",
                           description="Watch the connection in the background: light checks "
                                       "while idle, continuous monitoring during a session, a "
                                       "local API and JSON logs.")
    _late_config(agent)
    agent.add_argument("--server", metavar="URL", help="reflector URL (overrides [agent])")
    agent.add_argument("--api-port", type=int, metavar="N", help="local API port (default 8766)")
    agent.add_argument("--log-file", metavar="PATH", help="JSON-lines log file")
    agent.set_defaults(func=_cmd_agent)

    from netprobe.service import manager as service

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


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.cli.report import EXIT_CODES, render_text
    from netprobe.webrtc.client import run_check
    from netprobe.webrtc.engine import LOOPBACK, is_loopback_url, restrict_host_candidates

    if args.max_duration is not None:
        if args.max_duration < 2:
            raise ConfigError("--max-duration must be at least 2 seconds")
        settings = replace(settings, probe=replace(settings.probe,
                                                   max_duration_s=args.max_duration))
    show = _ProgressLine(sys.stderr.isatty() and not args.no_progress)

    async def main() -> object:
        if args.local:
            from netprobe.webrtc.reflector import Reflector

            restrict_host_candidates(LOOPBACK)
            reflector = Reflector(replace(settings.reflector, host="127.0.0.1", port=0))
            await reflector.start()
            try:
                return await run_check(reflector.url, settings, local=True, on_progress=show)
            finally:
                await reflector.stop()
        if is_loopback_url(args.server):
            restrict_host_candidates(LOOPBACK)
        return await run_check(args.server, settings, on_progress=show)

    try:
        result = asyncio.run(main())
    finally:
        show.clear()
    if args.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")  # type: ignore[attr-defined]
    else:
        sys.stdout.write(render_text(result))  # type: ignore[arg-type]
    return EXIT_CODES[result.verdict.verdict]  # type: ignore[attr-defined]


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.webrtc.engine import restrict_host_candidates
    from netprobe.webrtc.reflector import Reflector

    r = settings.reflector
    r = replace(
        r,
        host=args.host if args.host is not None else r.host,
        port=args.port if args.port is not None else r.port,
        max_sessions=args.max_sessions if args.max_sessions is not None else r.max_sessions,
        session_timeout_s=args.session_timeout if args.session_timeout is not None
        else r.session_timeout_s,
    )
    if not 0 < r.port < 65536:
        raise ConfigError("--port must be 1-65535")
    if r.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")

    async def main() -> None:
        try:
            if ipaddress.ip_address(r.host).is_loopback:
                restrict_host_candidates([r.host])
        except ValueError:
            pass
        reflector = Reflector(r)
        try:
            await reflector.start()
        except OSError as exc:
            raise NetprobeError(f"cannot listen on {r.host}:{r.port}: {exc.strerror}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"netprobe reflector listening on {reflector.url} "
              f"(up to {r.max_sessions} sessions); Ctrl-C to stop", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            print("netprobe reflector stopping…", file=sys.stderr, flush=True)
            await reflector.stop()

    asyncio.run(main())
    return 0


def _cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.agent.runtime import Agent
    from netprobe.logs import jsonlog

    if args.api_port is not None and not 0 < args.api_port < 65536:
        raise ConfigError("--api-port must be 1-65535")
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
    agent = Agent(settings, args.config, {"server": args.server, "api_port": args.api_port},
                  thresholds_path=args.thresholds)
    try:
        return asyncio.run(agent.run())
    finally:
        jsonlog.flush_and_close()


#: Commands that load their own settings (or none).
_OWN_SETTINGS = {"lab", "service"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command in _OWN_SETTINGS:
            return int(args.func(args))
        settings = load_settings(args.config, args.thresholds)
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"netprobe: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NetprobeError as exc:
        print(f"netprobe: {exc}", file=sys.stderr)
        return 12 if args.command == "check" else 1
    except KeyboardInterrupt:
        print("netprobe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

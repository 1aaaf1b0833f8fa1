"""`netprobe serve`: run a reflector (docs/reflector.md).

With `--workers 1` the reflector is this one process; with more (the default on Linux: one per
usable core) this process supervises worker processes (netprobe.webrtc.workers). Either way
SIGTERM or Ctrl-C drains it (a second one stops it at once), SIGHUP reloads the TLS pair,
the token secret file and the TURN secret file, and the exit status is 0 once it has stopped
(1 if it could not listen or its workers kept failing, 2 for a configuration error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from netprobe import exitcodes
from netprobe.config import Settings
from netprobe.config_checks import problem
from netprobe.errors import ConfigError

log = logging.getLogger("netprobe.reflector")

#: (flag, settings key, argparse dest)
_FLAGS = (("--host", "host", "host"), ("--port", "port", "port"),
          ("--max-sessions", "max_sessions", "max_sessions"),
          ("--max-checks", "max_checks", "max_checks"),
          ("--max-monitors", "max_monitors", "max_monitors"),
          ("--log-file", "log_file", "log_file"),
          ("--session-timeout", "session_timeout_s", "session_timeout"),
          ("--token-secret-file", "token_secret_file", "token_secret_file"),
          ("--open", "open", "open"), ("--workers", "workers", "workers"),
          ("--drain-timeout", "drain_timeout_s", "drain_timeout"),
          ("--tls-cert", "tls_cert_file", "tls_cert"), ("--tls-key", "tls_key_file", "tls_key"),
          ("--public-address", "public_address", "public_address"),
          ("--turn-url", "turn_urls", "turn_url"),
          ("--turn-secret-file", "turn_secret_file", "turn_secret_file"))


def add_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a reflector (the clinic's test server)")
    serve.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                       help="settings file (TOML); see config/")
    serve.add_argument("--thresholds", type=Path, default=argparse.SUPPRESS,
                       help="classifier thresholds file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765)")
    serve.add_argument("--max-checks", type=int, metavar="N",
                       help="concurrent pre-session checks (default 8)")
    serve.add_argument("--max-monitors", type=int, metavar="N",
                       help="concurrent monitoring streams, counted apart (default 200)")
    serve.add_argument("--max-sessions", type=int, metavar="N",
                       help="deprecated: also cap checks and monitoring streams together")
    serve.add_argument("--log-file", metavar="PATH",
                       help="JSON-lines log file (default: JSON lines on standard error)")
    serve.add_argument("--session-timeout", type=float, metavar="S",
                       help="hard time limit of a probe session (default 30)")
    serve.add_argument("--token-secret-file", metavar="PATH",
                       help="require access tokens signed with the keys in PATH (`kid = secret` "
                            "lines, mode 0600; see `netprobe token issue`, docs/reflector.md)")
    serve.add_argument("--open", action="store_true", default=None,
                       help="let anyone run checks without a token (monitoring still needs "
                            "one); needed to listen beyond loopback without a token secret")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes sharing the port (default 0: one per core on "
                            "Linux; 1: a single process); the caps are split among them")
    serve.add_argument("--drain-timeout", type=float, metavar="S",
                       help="on SIGTERM, how long running checks may take to finish (default 15)")
    serve.add_argument("--tls-cert", metavar="PATH",
                       help="serve https with this PEM certificate chain (with --tls-key; "
                            "SIGHUP reloads both)")
    serve.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    serve.add_argument("--public-address", metavar="ADDR",
                       help="behind a 1:1 NAT: the public IPv4/IPv6 address to advertise in "
                            "the answers' host candidates (ports kept)")
    serve.add_argument("--turn-url", action="append", metavar="URL",
                       help="a TURN relay (coturn with use-auth-secret) to hand out to clients "
                            "with a valid token, e.g. turn:turn.clinic.example:3478 or "
                            "turns:turn.clinic.example:443; repeat in the order clients should "
                            "try them (replaces [reflector] turn_urls; docs/reflector.md)")
    serve.add_argument("--turn-secret-file", metavar="PATH",
                       help="file holding coturn's static-auth-secret (mode 0600), which signs "
                            "the TURN credentials; needed with --turn-url")
    serve.set_defaults(func=cmd_serve)


def _access(r: Any) -> str:
    return ("checks open to anyone, monitoring with tokens" if r.open
            else "access tokens required" if r.token_secret_file
            else "no tokens: this machine only")


def _announce(url: str, r: Any, workers: int, port: int | None) -> None:
    processes = f"{workers} worker processes" if workers > 1 else "one process"
    print(f"netprobe reflector listening on {url} "
          f"(up to {r.max_checks} checks and {r.max_monitors} monitoring streams; "
          f"{_access(r)}; {processes}); Ctrl-C to stop", file=sys.stderr, flush=True)
    log.info("reflector started", extra={
        "event": "reflector_started", "port": port, "access": _access(r),
        "max_checks": r.max_checks, "max_monitors": r.max_monitors})


def _stopped(reason: str, status: int) -> None:
    print("netprobe reflector stopped", file=sys.stderr, flush=True)
    log.info("reflector stopped: %s", reason, extra={
        "event": "reflector_stopped", "reason": reason, "exit_status": status})


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from netprobe.logs import jsonlog
    from netprobe.webrtc.workers import worker_count

    changes = {key: getattr(args, dest) for _, key, dest in _FLAGS
               if getattr(args, dest) is not None}
    if "turn_urls" in changes:  # repeated flag: a list, the settings keep a tuple
        changes["turn_urls"] = tuple(changes["turn_urls"])
    found = problem(replace(settings.reflector, **changes))
    if found is not None and found[0] in changes:  # a flag's value: the message names it
        flag = next(f for f, key, _ in _FLAGS if key == found[0])
        raise ConfigError(f"{flag}: {found[1]}")
    if found is not None:
        raise ConfigError(f"[reflector] {found[0]}: {found[1]}")
    r = replace(settings.reflector, **changes)
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers: must be 0 (one per core) or more")
    workers = worker_count(r.workers)

    if not r.log_file:  # JSON lines on stderr take the plain handler's place
        logging.getLogger().handlers[:] = []
    for handler in logging.getLogger().handlers:  # stderr: warnings only, the file has all
        handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler = jsonlog.setup_json_logging(
        r.log_file or None, max_bytes=settings.agent.log_max_bytes,
        backup_count=settings.agent.log_backups, log_addresses=settings.privacy.log_addresses)
    try:
        if workers == 1:
            return asyncio.run(_serve_one(r, settings.privacy.log_addresses))
        return asyncio.run(_supervise(r, workers, settings.privacy.log_addresses, handler))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return exitcodes.OK
    finally:
        jsonlog.flush_and_close()


async def _serve_one(r: Any, log_addresses: bool) -> int:
    from netprobe.webrtc.engine import restrict_to_loopback_if_local
    from netprobe.webrtc.reflector import Reflector
    from netprobe.webrtc.workers import run_reflector

    restrict_to_loopback_if_local(r.host)
    reflector = Reflector(r, log_addresses=log_addresses)
    await reflector.start()  # CannotListen: port in use, not our address, unknown name
    reason = await run_reflector(
        reflector, ready=lambda: _announce(reflector.url, r, 1, reflector.port))
    _stopped(reason, exitcodes.OK)
    return exitcodes.OK


async def _supervise(r: Any, workers: int, log_addresses: bool,
                     handler: logging.Handler) -> int:
    from netprobe.webrtc.reflector import Reflector
    from netprobe.webrtc.workers import Supervisor, WorkerFailed, hold_port, relay_to

    check = Reflector(r, log_addresses=log_addresses)  # the secret, TLS pair and key: now
    hold = hold_port(r.host, r.port)  # CannotListen before any worker starts
    try:
        if check.gate.refusal is not None:
            raise ConfigError(check.gate.refusal)
        supervisor = Supervisor(r, workers, log_addresses=log_addresses,
                                relay=relay_to(handler))

        def ready() -> None:
            check.port = supervisor.port
            _announce(check.url, r, workers, supervisor.port)

        try:
            status = await supervisor.run(hold, ready)
        except WorkerFailed as exc:
            return exc.status
    finally:
        hold.close()
    _stopped("workers_failing" if status else "stopped", status)
    return status

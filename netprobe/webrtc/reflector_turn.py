"""The reflector's TURN relay side (docs/reflector.md, "TURN relay"): short-lived TURN REST API
credentials for coturn (`netprobe.turncreds`) handed to clients that hold a valid token, with
the offer's answer and at `GET /v1/ice`, and a self-check that allocates on every TURN URL with
a credential of the reflector's own, at start, after SIGHUP and every `CHECK_EVERY_S`, so that
a secret or clock that differs from coturn's is logged here (`turn_checked`) before clients
meet it. In a reflector of several workers only worker 0 runs the self-check; it records the
outcome in the run directory for every worker's `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from typing import Any

from aiohttp import web
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc.rtcicetransport import parse_stun_turn_uri

from netprobe.core.admission import Admission, Refuse
from netprobe.errors import ConfigError
from netprobe.httpjson import json_error
from netprobe.promtext import PromText, labels
from netprobe.settings import ReflectorSettings
from netprobe.tokens import AccessRefused, Gate
from netprobe.turncreds import (
    TurnSecret,
    credential,
    ice_servers,
    lifetime_s,
    load_turn_secret,
)
from netprobe.webrtc.reflector_http import refused
from netprobe.webrtc.reflector_ops import SOURCE
from netprobe.webrtc.worker_share import WorkerShare

logger = logging.getLogger("netprobe.webrtc.reflector")

CHECK_EVERY_S = 600.0
"""How often the reflector allocates on its TURN URLs to see that coturn takes its credentials."""
CHECK_TIMEOUT_S = 5.0
"""Longest one self-check allocation may take (then: `timeout`)."""
CHECK_TTL_S = 120
"""Lifetime of the self-check's own credential (and of its allocation)."""
REFUSED_CODES = (401, 403, 441)
"""STUN error codes that mean coturn did not take the credentials."""
REFUSED_WHY = ("coturn refused the reflector's credentials: the shared secret differs, or the "
               "clocks of the two machines differ by more than the lifetime")


def transport_of(url: str) -> str:
    """`udp`, `tcp` or `tls`: how a client reaches the TURN server of `url`."""
    parsed = parse_stun_turn_uri(url)
    return "tls" if parsed["scheme"] == "turns" else str(parsed["transport"])


class _Released(asyncio.DatagramProtocol):
    """The self-check's receiver: notes when the allocation's transport is gone."""

    def __init__(self) -> None:
        self.gone = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


async def allocate_once(url: str, username: str, password: str,
                        timeout: float = CHECK_TIMEOUT_S) -> tuple[str, str]:
    """Allocate on the TURN server of `url` and release the allocation at once. Returns
    (outcome, why): `ok`, `refused` (wrong credentials), `error` (another TURN error),
    `timeout` (no answer), `unreachable` (no connection, no such name, TLS failed) or
    `garbage` (an answer that is not a TURN allocation)."""
    parsed = parse_stun_turn_uri(url)
    tls = parsed["scheme"] == "turns"
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await create_turn_endpoint(
                _Released, (parsed["host"], parsed["port"]), username, password,
                lifetime=CHECK_TTL_S, ssl=ssl.create_default_context() if tls else None,
                transport=parsed["transport"])
    except TimeoutError:
        return "timeout", f"no TURN answer within {timeout:g} s"
    except stun.TransactionTimeout:
        return "timeout", "no TURN answer"
    except stun.TransactionFailed as exc:
        code = exc.response.error_code
        if code in REFUSED_CODES:
            return "refused", f"{REFUSED_WHY} (TURN error {code})"
        return "error", f"the TURN server answered error {code}"
    except ssl.SSLError as exc:
        return "unreachable", f"TLS failed: {exc.reason or exc}"
    except ConnectionError as exc:  # before OSError: aioice's missing-attribute errors
        if isinstance(exc, ConnectionRefusedError | ConnectionResetError):
            return "unreachable", "the connection was refused or reset"
        return "garbage", f"not a TURN allocation: {exc}"
    except OSError as exc:
        return "unreachable", exc.strerror or type(exc).__name__
    except (ValueError, KeyError, TypeError, AssertionError) as exc:  # a malformed answer
        return "garbage", f"not a TURN answer ({type(exc).__name__})"
    transport.close()  # deletes the allocation, then closes the connection
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(protocol.gone), 2.0)
    return "ok", ""


class TurnRelay:
    """The TURN URLs, coturn's secret (reloaded on SIGHUP) and the self-check's state."""

    def __init__(self, settings: ReflectorSettings, *, log_addresses: bool = False,
                 share: WorkerShare | None = None) -> None:
        self.settings = settings
        self.urls = tuple(settings.turn_urls)
        self.log_addresses = log_addresses
        self.share = share
        self.secret: TurnSecret | None = (load_turn_secret(settings.turn_secret_file)
                                          if settings.turn_secret_file else None)
        """coturn's static-auth-secret; ConfigError naming the file if it cannot be used."""
        self.ok: dict[str, int] = {}
        """The last self-check: URL position (from 1) -> 1 (allocated) or 0."""
        self.checker = share is None or share.index == 0
        """Whether this process runs the self-check (one per reflector)."""
        self._again = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.urls) and self.secret is not None

    def ttl_s(self, kind: str) -> int:
        return math.ceil(lifetime_s(kind, self.settings.turn_ttl_s,
                                    self.settings.monitor_timeout_s))

    def servers(self, kind: str, now: float) -> list[dict[str, str]]:
        """The `ice_servers` for a session of `kind`; empty without TURN."""
        if not self.enabled:
            return []
        assert self.secret is not None
        return ice_servers(self.urls, self.secret, now, self.ttl_s(kind))

    # -- SIGHUP and the self-check's task

    def reload(self) -> None:
        """Read the secret file again (a bad one keeps the old secret, logged) and check the
        URLs again. Never raises."""
        if not self.settings.turn_secret_file:
            return
        try:
            self.secret = load_turn_secret(self.settings.turn_secret_file)
        except ConfigError as exc:
            logger.error("kept the old turn files: %s", exc, extra={
                "event": "reflector_reload_failed", "what": "turn", "error": str(exc)})
        else:
            logger.info("reloaded the turn files",
                        extra={"event": "reflector_reloaded", "what": "turn"})
        self._again.set()

    def start(self) -> None:
        if self.enabled and self.checker and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            self._again.clear()
            await self.check_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._again.wait(), CHECK_EVERY_S)

    async def check_all(self) -> dict[str, int]:
        """Allocate once on every URL, at once; log each outcome; record them."""
        assert self.secret is not None
        username, password = credential(self.secret, time.time(), CHECK_TTL_S)
        outcomes = await asyncio.gather(*(allocate_once(url, username, password)
                                          for url in self.urls))
        for index, (url, (outcome, why)) in enumerate(zip(self.urls, outcomes, strict=True), 1):
            self._log(index, url, outcome, why)
            self.ok[str(index)] = int(outcome == "ok")
        if self.share is not None:
            self.share.publish_turn(self.ok)
        return dict(self.ok)

    def _log(self, index: int, url: str, outcome: str, why: str) -> None:
        where = f"turn URL {index} of {len(self.urls)}"
        extra: dict[str, Any] = {"event": "turn_checked", "url": index, "urls": len(self.urls),
                                 "transport": transport_of(url), "outcome": outcome,
                                 "error": why}
        if self.log_addresses:
            extra["address"] = url
        level = (logging.INFO if outcome == "ok" else
                 logging.WARNING if outcome in ("timeout", "unreachable") else logging.ERROR)
        logger.log(level, "%s (%s): %s%s", where, extra["transport"], outcome,
                   f": {why}" if why else "", extra=extra)

    # -- /metrics

    def metrics(self) -> str:
        """`netprobe_turn_ok` per URL (the last self-check's, from worker 0); "" without TURN."""
        if not self.enabled:
            return ""
        ok = self.ok if self.share is None or self.checker else self.share.turn()
        p = PromText()
        p.metric("netprobe_turn_ok", "gauge",
                 "1 if the reflector's last TURN allocation on this URL (its position, from 1) "
                 "succeeded, else 0; absent until the first self-check.",
                 [(labels(url=str(i), transport=transport_of(u)), ok.get(str(i)))
                  for i, u in enumerate(self.urls, 1)])
        return p.text()


def ice_refusal(gate: Gate, rate: Admission, request: web.Request, mode: str,
                draining: bool) -> web.Response | str:
    """Why `GET /v1/ice` is refused (the offer's token rules, without spending a check token;
    the offer's per-source rate limit), or the kind of session the credentials are for
    (`monitor` for a monitoring stream or a monitor token, else `check`)."""
    if draining:
        return json_error(503, "draining", "this reflector is shutting down; try another "
                          "or again shortly")
    if mode not in ("check", "monitor"):
        return json_error(400, "bad_request", '"mode" must be "check" or "monitor"')
    try:
        grant = gate.allows(request.headers.get("Authorization"), mode, time.time())
    except AccessRefused as exc:
        return refused(exc)
    source = request.get(SOURCE, "")
    decision = rate.offer(source, "check", time.monotonic())
    if isinstance(decision, Refuse):
        if decision.code == "rate_limited":  # a full reflector still hands out credentials
            return json_error(429, "rate_limited", "too many requests from this address; wait "
                              "before trying again",
                              headers={"Retry-After": str(decision.retry_after_s)})
    else:
        rate.release(source, "check")  # only the rate counts: /v1/ice holds no slot
    return "monitor" if mode == "monitor" or (grant and grant.scope == "monitor") else "check"


async def handle_ice(relay: TurnRelay, gate: Gate, rate: Admission, request: web.Request,
                     draining: bool) -> web.Response:
    """`GET /v1/ice[?mode=check|monitor]` → `{"ice_servers": [...], "ttl_s": N}`."""
    kind = ice_refusal(gate, rate, request, request.query.get("mode", "check"), draining)
    if isinstance(kind, web.Response):
        return kind
    return web.json_response({"ice_servers": relay.servers(kind, time.time()),
                              "ttl_s": relay.ttl_s(kind) if relay.enabled else 0},
                             headers={"Cache-Control": "no-store"})

"""The reflector a clinic runs: aiohttp signalling plus one aiortc peer per probe session.

`POST /v1/offer` takes `{"sdp", "type": "offer"}` and returns the answer; `GET /healthz`
reports liveness and load. Every error is a JSON `{"error": {"code", "message"}}` with a 4xx
or 503 status; no request can take the server down. Each session has a hard time limit and
the number of concurrent sessions is capped; peer connections are closed on failure, on
timeout and on shutdown. `drain()` stops it gracefully (docs/reflector.md, "Drain"); with a
TLS pair it serves https and `reload()` loads the pair (and the token and TURN secrets) again;
`GET /v1/ice` and the answer hand out TURN credentials (netprobe.webrtc.reflector_turn). As one of
several worker processes (netprobe.webrtc.workers) it reports the figures of them all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from aiohttp import web

from netprobe.clinic import reflector_json
from netprobe.config import ReflectorSettings
from netprobe.core.admission import (
    Admission,
    Refuse,
    client_address,
    in_networks,
    parse_networks,
    source_key,
)
from netprobe.core.responder import ResponderLimits
from netprobe.errors import CannotListen, ConfigError, ProtocolError
from netprobe.httpjson import json_error, strict_loads
from netprobe.promtext import response as metrics_response
from netprobe.tokens import AccessRefused, Gate, load_keys
from netprobe.webrtc.candidates import rewrite_host_candidates
from netprobe.webrtc.engine import create_peer_connection
from netprobe.webrtc.reflector_http import (
    json_errors,
    listen_failure,
    parse_offer,
    refused,
    reload_files,
    sdp_problem,
    tls_context,
)
from netprobe.webrtc.reflector_ops import (
    CLIENT,
    SOURCE,
    AddressHasher,
    MemoryTrimmer,
    ReflectorCounters,
    Snapshot,
    either_set,
    error_code,
    limits_from,
    render_metrics,
    transport_bytes,
)
from netprobe.webrtc.reflector_session import ReflectorSession
from netprobe.webrtc.reflector_turn import TurnRelay, handle_ice
from netprobe.webrtc.speedtest_mini import add_speedtest_routes
from netprobe.webrtc.worker_share import PUBLISH_EVERY_S, WorkerShare

logger = logging.getLogger(__name__)

class Reflector:
    """The reflector as an embeddable object: `await start()`, `await drain()` or `stop()`.

    `share`: this is one worker of several (netprobe.webrtc.workers): `settings` holds its
    share of the caps, it listens with SO_REUSEPORT beside the others, publishes its figures and
    answers `/metrics` and `/healthz` for the whole reflector."""

    def __init__(self, settings: ReflectorSettings, *, log_addresses: bool = False,
                 share: WorkerShare | None = None) -> None:
        self.settings = settings
        self.admission = Admission(limits_from(settings))
        """Caps and rate limits (pure: netprobe.core.admission)."""
        self.counters = ReflectorCounters()
        self.hash_source = AddressHasher.from_settings(settings)
        """A source's keyed hash: what logs show instead of the address."""
        self.log_addresses = log_addresses
        self.share = share
        self._trusted = parse_networks(settings.trusted_proxies)
        self._metrics_from = parse_networks(settings.metrics_from)
        secret = settings.token_secret_file
        self.gate = Gate(load_keys(secret) if secret else None, settings.open, settings.host,
                         share.replay if share else None)
        """Which offers need which access token (netprobe.tokens); reads the secret file."""
        self.turn = TurnRelay(settings, log_addresses=log_addresses, share=share)
        """TURN credentials for clients and the relay self-check (reads coturn's secret)."""
        self.tls = tls_context(settings.tls_cert_file, settings.tls_key_file) \
            if settings.tls_cert_file else None
        """The TLS context served (None: http); `reload()` loads its pair again."""
        self.media_limits = ResponderLimits(max_down_kbps=settings.max_down_kbps)
        """What one session's client may ask on the media path (netprobe.core.responder)."""
        self.sessions: dict[str, ReflectorSession] = {}
        self.trimmer = MemoryTrimmer(lambda: not self.sessions)
        """Returns freed heap memory to the system once the reflector is idle."""
        self.draining = False
        """Set by `drain()`: offers get 503 `draining`, `/healthz` 503, echoes the flag."""
        self._timeouts: set[asyncio.Task[None]] = set()
        self._publisher: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[self._observe, json_errors],
                                   client_max_size=settings.max_body_bytes)
        self.app.router.add_post("/v1/offer", self.handle_offer)
        self.app.router.add_get("/v1/ice", self.handle_ice)
        self.clinic = reflector_json(settings.clinic)
        """The `[clinic]` contact every answer and `GET /v1/clinic` carry (None: none)."""
        self.app.router.add_get("/v1/clinic", self.handle_clinic)
        self.app.router.add_get("/healthz", self.handle_health)
        self.app.router.add_get("/metrics", self.handle_metrics)
        self.app.on_shutdown.append(self._on_shutdown)
        self.speedtest = add_speedtest_routes(self.app, self.gate, draining=lambda: self.draining)
        """The Speedtest Mini endpoints for the TCP speed test (netprobe.webrtc.speedtest_mini)."""

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        """Listen. Raises `CannotListen` if the address cannot be bound."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port or 0,
                           ssl_context=self.tls, reuse_port=self.share is not None or None)
        try:
            await site.start()
        except OSError as exc:  # port in use, not this machine's address, unknown name
            await self._runner.cleanup()
            self._runner = None
            where = f"{self.settings.host}:{self.settings.port}"
            raise CannotListen(f"cannot listen on {where}: {listen_failure(exc)}") from None
        if self.gate.refusal is not None:  # beyond loopback with no tokens: not without --open
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(self.gate.refusal)
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        if self.share is not None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish())
        self.turn.start()  # the TURN self-check, in the background

    async def stop(self) -> None:
        """Close every session and stop listening, at once (`drain()` is the gentle way)."""
        await self.turn.stop()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._close_all()
        self.trimmer.cancel()

    async def drain(self, timeout: float | None = None, grace: float = 2.0) -> bool:
        """Stop gracefully, then `stop()`: refuse new offers (503 `draining`, `/healthz`
        503), set every monitoring session's drain flag at once, let running checks finish
        (at most `timeout`, default `drain_timeout_s`), and give monitoring clients `grace`
        seconds from the flag to see it. Returns whether the checks finished in time."""
        timeout = self.settings.drain_timeout_s if timeout is None else timeout
        self.draining = True
        flagged_at = time.monotonic()
        for session in self.sessions.values():
            if session.kind == "monitor":
                session.responder.draining = True
        a = self.admission
        logger.info("reflector draining", extra={
            "event": "reflector_draining", "checks": a.count("check"),
            "monitors": a.count("monitor"), "timeout_s": timeout})
        checks = [asyncio.ensure_future(s.closed.wait()) for s in self.sessions.values()
                  if s.kind == "check"]
        pending: set[Any] = set()
        try:
            if checks:  # no check can start now: wait for these
                _, pending = await asyncio.wait(checks, timeout=timeout)
        finally:
            for waiter in checks:
                waiter.cancel()
        if a.count("monitor"):
            await asyncio.sleep(max(0.0, flagged_at + grace - time.monotonic()))
        await self.stop()
        return not pending

    def reload(self) -> None:
        """SIGHUP: load the TLS pair and the token secret file again; a bad new file keeps
        the old one (logged as an error). Never raises."""
        reload_files(self.settings, self.tls, self.gate)
        self.turn.reload()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self._close_all()

    async def _close_all(self) -> None:
        for task in list(self._timeouts):
            task.cancel()
        await asyncio.gather(*(self._end(s, "shutdown") for s in list(self.sessions.values())))
        await asyncio.gather(*self._timeouts, return_exceptions=True)
        self.sessions.clear()

    def snapshot(self) -> Snapshot:
        """The whole reflector's figures: this process's, plus the other workers' if any."""
        own = Snapshot.of(self.counters, list(self.sessions.values()),
                          self.admission.sources_tracked, draining=self.draining)
        return own if self.share is None else self.share.total(own)

    async def _publish(self) -> None:
        assert self.share is not None
        while True:
            self.share.publish(Snapshot.of(self.counters, list(self.sessions.values()),
                                           self.admission.sources_tracked,
                                           draining=self.draining))
            self.share.tidy(time.time())
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def handle_health(self, request: web.Request) -> web.Response:
        snap, s = self.snapshot(), self.share.whole if self.share else self.settings
        return web.json_response({
            "status": "draining" if self.draining else "ok",
            "sessions": snap.count("check") + snap.count("monitor"),
            "checks": snap.count("check"), "monitors": snap.count("monitor"),
            "max_checks": s.max_checks, "max_monitors": s.max_monitors,
            "max_sessions": s.max_sessions or s.max_checks + s.max_monitors,
            "workers": snap.workers}, status=503 if self.draining else 200)

    async def handle_clinic(self, request: web.Request) -> web.Response:
        """`GET /v1/clinic`: the clinic's contact, to anyone (a public number: no token)."""
        if self.clinic is None:
            return json_error(404, "no_clinic", "this reflector has no clinic contact")
        return web.json_response({"clinic": self.clinic})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        if not in_networks(request[CLIENT], self._metrics_from):
            return json_error(403, "forbidden", "metrics are only served to the addresses in "
                              "[reflector] metrics_from")
        whole = self.share.whole if self.share else self.settings
        return metrics_response(render_metrics(self.snapshot(), limits_from(whole))
                                + self.turn.metrics())

    async def handle_ice(self, request: web.Request) -> web.Response:
        """`GET /v1/ice`: TURN credentials for a client allowed to offer (reflector_turn)."""
        return await handle_ice(self.turn, self.gate, self.admission, request, self.draining)

    @web.middleware
    async def _observe(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Find the client's address (X-Forwarded-For only from a trusted proxy) and its
        source key; count and log every refused offer by its error code."""
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        client = client_address(request.remote or "", forwarded, self._trusted)
        request[CLIENT] = client
        request[SOURCE] = source_key(client)
        response = await handler(request)
        if request.path == "/v1/offer" and response.status >= 400:
            code = error_code(response)
            self._log_refusal(request, response.status, self.counters.refusal(code))
        return response

    def _log_refusal(self, request: web.Request, status: int, code: str) -> None:
        extra: dict[str, Any] = {"event": "offer_refused", "reason": code, "status": status,
                                 "source": self.hash_source(request[SOURCE])}
        if self.log_addresses:
            extra["address"] = request[CLIENT]
        logger.info("refused an offer: %s", code, extra=extra)

    async def handle_offer(self, request: web.Request) -> web.Response:
        if self.draining:
            retry = math.ceil(self.settings.drain_timeout_s) + 5
            return json_error(503, "draining", "this reflector is shutting down; try another "
                              "or again shortly", headers={"Retry-After": str(retry)})
        # Access tokens (netprobe.tokens): a reflector that needs one for every offer checks it
        # before reading the body; the mode's needs are checked once the body is parsed.
        authorization = request.headers.get("Authorization")
        grant = None
        try:
            if self.gate.always_needs_token:
                grant = self.gate.authenticate(authorization, time.time())
        except AccessRefused as exc:
            return refused(exc)
        if request.content_type != "application/json":
            return json_error(415, "unsupported_media_type",
                          "send the offer as JSON with Content-Type: application/json")
        if (request.content_length or 0) > self.settings.max_body_bytes:
            return json_error(413, "body_too_large",
                          f"the body must be at most {self.settings.max_body_bytes} bytes")
        try:
            body = await request.json(loads=strict_loads)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "body_too_large",
                          f"the body must be at most {self.settings.max_body_bytes} bytes")
        except (ValueError, UnicodeDecodeError):
            return json_error(400, "bad_json", "the body is not valid JSON")
        try:
            offer = parse_offer(body)
        except ProtocolError as exc:
            return json_error(400, "bad_request", str(exc))
        try:
            grant = self.gate.admit(authorization, body.get("mode", "check"), time.time(), grant)
        except AccessRefused as exc:
            return refused(exc)
        problem = sdp_problem(offer.sdp)  # before admission: garbage takes no token or slot
        if problem is not None:
            return json_error(400, "bad_sdp", problem)
        kind = "monitor" if body.get("mode") == "monitor" else "check"
        source = request.get(SOURCE, "")
        decision = self.admission.offer(source, kind, time.monotonic())
        if isinstance(decision, Refuse):
            retry = decision.retry_after_s
            return json_error(decision.status, decision.code, decision.message,
                              headers={"Retry-After": str(retry)} if retry else None)
        try:
            self.gate.consume(grant, time.time())  # takes one of a check token's offers
        except AccessRefused as exc:
            self.admission.release(source, kind)
            return refused(exc)
        session_id = uuid.uuid4().hex[:12]
        pc = create_peer_connection(self.settings.ice_servers)
        limit = (self.settings.monitor_timeout_s if kind == "monitor"
                 else self.settings.session_timeout_s)
        session = ReflectorSession(pc, session_id, limit, kind=kind, source=source,
                                   limits=self.media_limits, end=self._end)
        self.sessions[session_id] = session  # holds its admission slot while negotiating
        self.counters.started[kind] += 1
        try:
            await pc.setRemoteDescription(offer)
            kinds = sorted(t.kind for t in pc.getTransceivers())
            if kinds != ["audio", "video"]:
                raise ProtocolError("the offer must have one audio and one video stream")
            session.attach()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others on bad SDP
            await self._end(session, "bad_offer")
            reason = str(exc) if isinstance(exc, ProtocolError) else "the SDP offer is invalid"
            logger.info("rejected an offer: %s", type(exc).__name__)
            return json_error(400, "bad_sdp", reason)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and not session.connected.is_set():
                session.connected.set()
                logger.info("probe session connected", extra={
                    "event": "probe_session_connected", "session": session.id, "kind": kind,
                    "connect_s": round(time.monotonic() - session.started_at, 3)})
            if pc.connectionState in ("failed", "closed"):
                await self._end(session, pc.connectionState)

        task = asyncio.get_running_loop().create_task(self._expire(session))
        self._timeouts.add(task)
        task.add_done_callback(self._timeouts.discard)
        session.pacer.start()
        extra: dict[str, Any] = {"event": "probe_session_started", "session": session_id,
                                 "kind": kind, "source": self.hash_source(source)}
        if self.log_addresses:
            extra["address"] = request.get(CLIENT)
        logger.info("probe session started", extra=extra)
        answer = pc.localDescription
        sdp = answer.sdp
        if self.settings.public_address:  # behind a 1:1 NAT: advertise the public address
            sdp = rewrite_host_candidates(sdp, self.settings.public_address)
        reply: dict[str, Any] = {"sdp": sdp, "type": answer.type, "session": session_id,
                                 "time_limit_s": limit}
        if self.turn.enabled:  # the relays to re-offer over if no direct path works
            reply["ice_servers"] = self.turn.servers(kind, time.time())
        if self.clinic is not None:  # whom to call when the link will not hold
            reply["clinic"] = self.clinic
        return web.json_response(reply)

    async def _expire(self, session: ReflectorSession) -> None:
        """Close `session` if it has not connected within `connect_timeout_s` (an offer that
        never connects must not hold a slot), else at its time limit."""
        first = min(self.settings.connect_timeout_s, session.time_limit)
        if not await either_set(session.connected, session.closed, first):
            await self._end(session, "not_connected" if first < session.time_limit
                            else "time_limit")
            return
        left = session.time_limit - (time.monotonic() - session.started_at)
        try:
            await asyncio.wait_for(session.closed.wait(), max(0.0, left))
        except TimeoutError:
            await self._end(session, "time_limit")

    async def _end(self, session: ReflectorSession, reason: str) -> None:
        """End `session` for `reason` (reflector_ops.END_REASONS): free its slot, count and
        log it once, close it."""
        if self.sessions.pop(session.id, None) is None:
            await session.close()
            return
        self.admission.release(session.source, session.kind)
        sent, received = transport_bytes(session.pc)  # before close: aiortc keeps them anyway
        self.counters.bytes_sent += sent
        self.counters.bytes_received += received
        self.counters.ended[(session.kind, reason)] += 1
        logger.info("probe session ended: %s", reason, extra={
            "event": "probe_session_ended", "session": session.id, "kind": session.kind,
            "reason": reason, "duration_s": round(time.monotonic() - session.started_at, 3),
            "bytes_sent": sent, "bytes_received": received})
        await session.close()
        if not self.sessions:  # idle again: hand the peak's freed memory back
            self.trimmer.became_idle()


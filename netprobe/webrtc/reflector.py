"""The reflector a clinic runs: aiohttp signalling plus one aiortc peer per probe session.

`POST /v1/offer` takes `{"sdp", "type": "offer"}` and returns the answer; `GET /healthz`
reports liveness and load. Every error is a JSON `{"error": {"code", "message"}}` with a 4xx
or 503 status; no request can take the server down. Each session has a hard time limit and
the number of concurrent sessions is capped; peer connections are closed on failure, on
timeout and on shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from netprobe.config import ReflectorSettings
from netprobe.core.admission import (
    Admission,
    Refuse,
    client_address,
    in_networks,
    parse_networks,
    source_key,
)
from netprobe.core.responder import Responder, ResponderLimits
from netprobe.core.wire import (
    TYPE_LOAD,
    TYPE_PROBE,
    decode_load,
    decode_probe,
    encode_echo,
    packet_type,
)
from netprobe.errors import CannotListen, ConfigError, ProtocolError
from netprobe.httpjson import json_error, strict_loads
from netprobe.promtext import response as metrics_response
from netprobe.tokens import AccessRefused, gate_for
from netprobe.webrtc.engine import Pacer, PacketTrack, create_peer_connection, install_tap
from netprobe.webrtc.reflector_ops import (
    CLIENT,
    SOURCE,
    AddressHasher,
    ReflectorCounters,
    either_set,
    error_code,
    limits_from,
    render_metrics,
    transport_bytes,
)

logger = logging.getLogger(__name__)

MAX_SDP_CHARS = 32768
#: Echoes queued for sending beyond which a probe is not answered (counted `echo_backlog`): the
#: sender drains the queue continuously, so a backlog means the event loop is starved.
MAX_ECHO_BACKLOG = 64

SessionEnd = Callable[["ReflectorSession", str], Awaitable[None]]


class ReflectorSession:
    """One client's probe session: a peer connection, its test streams and its state."""

    def __init__(self, pc: RTCPeerConnection, session_id: str, time_limit: float = 30.0, *,
                 kind: str = "check", source: str = "", limits: ResponderLimits | None = None,
                 end: SessionEnd | None = None) -> None:
        """`limits`: what the client may ask (`core.responder`); `end(session, reason)`: how
        the session is ended when it breaks them or goes silent (default: it closes itself)."""
        self.id = session_id
        self.kind = kind
        """"check" or "monitor": the admission slot it holds."""
        self.source = source
        """The source key it is counted under (`core.admission.source_key`); never logged."""
        self.connected = asyncio.Event()
        """Set once the peer connection first reached "connected"."""
        self.time_limit = time_limit
        self.pc = pc
        self.started_at = time.monotonic()
        self.responder = Responder(limits, started_at=self.started_at)
        self.echo_track = PacketTrack("audio")
        self.load_track = PacketTrack("video")
        self.pacer = Pacer(self.load_track, self.responder.down_step)
        self.closed = asyncio.Event()
        self._closing = False
        self._end = end
        self._alarm = asyncio.Event()
        """Set when the responder's limits may have been broken (the watchdog looks again)."""
        self._watchdog: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Tap the receivers and add our tracks (after the remote offer is applied)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                install_tap(transceiver.receiver, "audio", self._on_audio)
            elif transceiver.kind == "video":
                install_tap(transceiver.receiver, "video", self._on_video)
        self.pc.addTrack(self.echo_track)
        self.pc.addTrack(self.load_track)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    # The media handlers run inside aiortc's receive loop, once per packet: whatever a client
    # sends, they only count, cap and answer; nothing raises, nothing loops on its numbers.

    def _on_audio(self, payload: bytes, now: float) -> None:
        try:
            if packet_type(payload) != TYPE_PROBE:
                raise ProtocolError("not a probe")
            probe = decode_probe(payload)
        except ProtocolError:
            self._refuse("malformed")
            return
        if not self.responder.on_probe(probe, now):
            self._look_again()  # refused: over the probe rate
            return
        if self.responder.probes_seen == 1:
            self._alarm.set()  # the silence deadline moves from "first probe due" to "probes"
        self.pacer.wake()  # a probe may ask for a downlink rung
        if self.echo_track.backlog >= MAX_ECHO_BACKLOG:
            self._refuse("echo_backlog")
            return
        self.echo_track.push(
            lambda: encode_echo(self.responder.echo(probe, now, time.monotonic())))

    def _on_video(self, payload: bytes, now: float) -> None:
        try:
            if packet_type(payload) != TYPE_LOAD:
                raise ProtocolError("not a load packet")
            load = decode_load(payload)
        except ProtocolError:
            self._refuse("malformed")
            return
        self.responder.on_up_load(load, len(payload), now)
        self._look_again()

    def _refuse(self, reason: str) -> None:
        self.responder.refuse(reason)
        self._look_again()

    def _look_again(self) -> None:
        if self.responder.refused_total > self.responder.limits.max_refused:
            self._alarm.set()

    async def _watch(self) -> None:
        """End the session when its responder says so (refused too much, or silent): the
        decision is the responder's (`end_reason`), this only waits for it."""
        while (reason := self.responder.end_reason(time.monotonic())) is None:
            due = self.responder.silence_deadline()
            self._alarm.clear()
            try:
                async with asyncio.timeout(None if due is None
                                           else max(0.0, due - time.monotonic())):
                    await self._alarm.wait()
            except TimeoutError:
                pass
        logger.debug("probe session %s over its limits: %s (refused %s)", self.id, reason,
                     dict(self.responder.refused))
        if self._end is not None:
            await self._end(self, reason)
        else:
            await self.close()

    async def close(self) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None and watchdog is not asyncio.current_task():
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            await self.pacer.stop()
            await self.pc.close()
        except Exception:  # closing must never raise into the server
            logger.warning("error while closing a probe session", exc_info=True)
        finally:
            self.closed.set()


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error")
        return json_error(exc.status, code, exc.reason)


class Reflector:
    """The reflector as an embeddable object: `await start()`, `await stop()`."""

    def __init__(self, settings: ReflectorSettings, *, log_addresses: bool = False) -> None:
        self.settings = settings
        self.admission = Admission(limits_from(settings))
        """Caps and rate limits (pure: netprobe.core.admission)."""
        self.counters = ReflectorCounters()
        self.hash_source = AddressHasher.from_settings(settings)
        """A source's keyed hash: what logs show instead of the address."""
        self.log_addresses = log_addresses
        self._trusted = parse_networks(settings.trusted_proxies)
        self._metrics_from = parse_networks(settings.metrics_from)
        self.gate = gate_for(settings.token_secret_file, settings.open, settings.host)
        """Which offers need which access token (netprobe.tokens); reads the secret file."""
        self.media_limits = ResponderLimits(max_down_kbps=settings.max_down_kbps)
        """What one session's client may ask on the media path (netprobe.core.responder)."""
        self.sessions: dict[str, ReflectorSession] = {}
        self._timeouts: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[self._observe, _json_errors],
                                   client_max_size=settings.max_body_bytes)
        self.app.router.add_post("/v1/offer", self.handle_offer)
        self.app.router.add_get("/healthz", self.handle_health)
        self.app.router.add_get("/metrics", self.handle_metrics)
        self.app.on_shutdown.append(self._on_shutdown)

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen. Raises `CannotListen` if the address cannot be bound."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port or 0)
        try:
            await site.start()
        except OSError as exc:  # port in use, not this machine's address, unknown name
            await self._runner.cleanup()
            self._runner = None
            where = f"{self.settings.host}:{self.settings.port}"
            raise CannotListen(f"cannot listen on {where}: {_listen_failure(exc)}") from None
        if self.gate.refusal is not None:  # beyond loopback with no tokens: not without --open
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(self.gate.refusal)
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._close_all()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self._close_all()

    async def _close_all(self) -> None:
        for task in list(self._timeouts):
            task.cancel()
        await asyncio.gather(*(self._end(s, "shutdown") for s in list(self.sessions.values())))
        await asyncio.gather(*self._timeouts, return_exceptions=True)
        self.sessions.clear()

    async def handle_health(self, request: web.Request) -> web.Response:
        a, s = self.admission, self.settings
        return web.json_response({
            "status": "ok", "sessions": len(self.sessions), "checks": a.count("check"),
            "monitors": a.count("monitor"), "max_checks": s.max_checks,
            "max_monitors": s.max_monitors,
            "max_sessions": s.max_sessions or s.max_checks + s.max_monitors})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        if not in_networks(request[CLIENT], self._metrics_from):
            return json_error(403, "forbidden", "metrics are only served to the addresses in "
                              "[reflector] metrics_from")
        return metrics_response(render_metrics(self.counters, list(self.sessions.values()),
                                               self.admission.limits,
                                               self.admission.sources_tracked))

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
        # Access tokens (netprobe.tokens): a reflector that needs one for every offer checks it
        # before reading the body; the mode's needs are checked once the body is parsed.
        authorization = request.headers.get("Authorization")
        grant = None
        try:
            if self.gate.always_needs_token:
                grant = self.gate.authenticate(authorization, time.time())
        except AccessRefused as exc:
            return _refused(exc)
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
            offer = _parse_offer(body)
        except ProtocolError as exc:
            return json_error(400, "bad_request", str(exc))
        try:
            grant = self.gate.admit(authorization, body.get("mode", "check"), time.time(), grant)
        except AccessRefused as exc:
            return _refused(exc)
        problem = _sdp_problem(offer.sdp)  # before admission: garbage takes no token or slot
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
            self.gate.consume(grant, time.time())  # a check token is spent once taken on
        except AccessRefused as exc:
            self.admission.release(source, kind)
            return _refused(exc)
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
        return web.json_response({
            "sdp": answer.sdp, "type": answer.type, "session": session_id,
            "time_limit_s": limit,
        })

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


def _sdp_problem(text: str) -> str | None:
    """Why the SDP cannot be a test offer (aiortc's own parser, no peer connection), or None."""
    try:
        kinds = sorted(m.kind for m in SessionDescription.parse(text).media)
    except Exception:  # noqa: BLE001 - aiortc's parser raises ValueError, AssertionError, ...
        return "the SDP offer is invalid"
    return None if kinds == ["audio", "video"] else \
        "the offer must have one audio and one video stream"


def _refused(exc: AccessRefused) -> web.Response:
    """The documented error for an offer without the token it needs (never echoes the token);
    `Reflector._observe` counts and logs it as `offer_refused`, as every refusal."""
    headers = {"WWW-Authenticate": 'Bearer realm="netprobe"'} if exc.status == 401 else None
    return json_error(exc.status, exc.code, str(exc), headers=headers)


def _listen_failure(exc: OSError) -> str:
    """Why binding failed, in words (asyncio's own message repeats the address)."""
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve ({exc.strerror})"
    return {
        errno.EADDRINUSE: "the port is already in use",
        errno.EADDRNOTAVAIL: "the address is not one of this machine's",
        errno.EACCES: "permission denied (ports below 1024 need administrator rights)",
    }.get(exc.errno or 0, exc.strerror or str(exc))


def _parse_offer(body: Any) -> RTCSessionDescription:
    if not isinstance(body, dict):
        raise ProtocolError('the body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise ProtocolError('"type" must be "offer"')
    if body.get("mode", "check") not in ("check", "monitor"):
        raise ProtocolError('"mode" must be "check" or "monitor"')
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError('"sdp" must be a non-empty string')
    if len(sdp) > MAX_SDP_CHARS:
        raise ProtocolError(f'"sdp" must be at most {MAX_SDP_CHARS} characters')
    if not sdp.startswith("v=0"):
        raise ProtocolError('"sdp" is not an SDP session description (must start with "v=0")')
    return RTCSessionDescription(sdp=sdp, type="offer")

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
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from netprobe.config import ReflectorSettings
from netprobe.core.responder import Responder
from netprobe.core.wire import (
    TYPE_LOAD,
    TYPE_PROBE,
    decode_load,
    decode_probe,
    encode_echo,
    packet_type,
)
from netprobe.errors import CannotListen, ProtocolError
from netprobe.httpjson import json_error, strict_loads
from netprobe.webrtc.engine import Pacer, PacketTrack, create_peer_connection, install_tap

logger = logging.getLogger(__name__)

MAX_SDP_CHARS = 32768


class ReflectorSession:
    """One client's probe session: a peer connection, its test streams and its state."""

    def __init__(self, pc: RTCPeerConnection, session_id: str, time_limit: float = 30.0) -> None:
        self.id = session_id
        self.time_limit = time_limit
        self.pc = pc
        self.responder = Responder()
        self.echo_track = PacketTrack("audio")
        self.load_track = PacketTrack("video")
        self.pacer = Pacer(self.load_track, self.responder.down_step)
        self.started_at = time.monotonic()
        self.closed = asyncio.Event()
        self._closing = False

    def attach(self) -> None:
        """Tap the receivers and add our tracks (after the remote offer is applied)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                install_tap(transceiver.receiver, "audio", self._on_audio)
            elif transceiver.kind == "video":
                install_tap(transceiver.receiver, "video", self._on_video)
        self.pc.addTrack(self.echo_track)
        self.pc.addTrack(self.load_track)

    def _on_audio(self, payload: bytes, now: float) -> None:
        if packet_type(payload) != TYPE_PROBE:
            return
        probe = decode_probe(payload)
        self.responder.on_probe(probe, now)
        self.pacer.wake()  # a probe may ask for a downlink rung
        self.echo_track.push(
            lambda: encode_echo(self.responder.echo(probe, now, time.monotonic())))

    def _on_video(self, payload: bytes, now: float) -> None:
        if packet_type(payload) == TYPE_LOAD:
            self.responder.on_up_load(decode_load(payload), len(payload), now)

    async def close(self) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
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

    def __init__(self, settings: ReflectorSettings) -> None:
        self.settings = settings
        self.sessions: dict[str, ReflectorSession] = {}
        self._timeouts: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(middlewares=[_json_errors],
                                   client_max_size=settings.max_body_bytes)
        self.app.router.add_post("/v1/offer", self.handle_offer)
        self.app.router.add_get("/healthz", self.handle_health)
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
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())))
        await asyncio.gather(*self._timeouts, return_exceptions=True)
        self.sessions.clear()

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(self.sessions),
                                  "max_sessions": self.settings.max_sessions})

    async def handle_offer(self, request: web.Request) -> web.Response:
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
        if len(self.sessions) >= self.settings.max_sessions:
            return json_error(503, "busy", "the reflector is at its limit of concurrent probe "
                          "sessions; try again in a few seconds")
        session_id = uuid.uuid4().hex[:12]
        pc = create_peer_connection(self.settings.ice_servers)
        monitor = isinstance(body, dict) and body.get("mode") == "monitor"
        limit = self.settings.monitor_timeout_s if monitor else self.settings.session_timeout_s
        session = ReflectorSession(pc, session_id, limit)
        self.sessions[session_id] = session  # counts against the cap while negotiating
        try:
            await pc.setRemoteDescription(offer)
            kinds = sorted(t.kind for t in pc.getTransceivers())
            if kinds != ["audio", "video"]:
                raise ProtocolError("the offer must have one audio and one video stream")
            session.attach()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others on bad SDP
            await self._end(session)
            reason = str(exc) if isinstance(exc, ProtocolError) else "the SDP offer is invalid"
            logger.info("rejected an offer: %s", type(exc).__name__)
            return json_error(400, "bad_sdp", reason)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._end(session)

        task = asyncio.get_running_loop().create_task(self._expire(session))
        self._timeouts.add(task)
        task.add_done_callback(self._timeouts.discard)
        session.pacer.start()
        logger.info("probe session started", extra={"event": "session_start",
                                                     "session": session_id})
        answer = pc.localDescription
        return web.json_response({
            "sdp": answer.sdp, "type": answer.type, "session": session_id,
            "time_limit_s": limit,
        })

    async def _expire(self, session: ReflectorSession) -> None:
        try:
            await asyncio.wait_for(session.closed.wait(), session.time_limit)
        except TimeoutError:
            logger.info("probe session hit its time limit",
                        extra={"event": "session_timeout", "session": session.id})
            await self._end(session)

    async def _end(self, session: ReflectorSession) -> None:
        self.sessions.pop(session.id, None)
        await session.close()


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

"""The probe engine: one pre-session check against a reflector.

I/O only: signalling over HTTP (aiohttp), the WebRTC connection and test streams (via
`engine.py`), timing. All measurement logic, and when it next needs to run, lives in
`core.session.ClientSession`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from netprobe.config import Settings
from netprobe.core.classify import UNKNOWN, Reason, Verdict, classify
from netprobe.core.metrics import LinkMetrics
from netprobe.core.result import CheckResult
from netprobe.core.session import ClientSession, Progress, check_deadline
from netprobe.core.wire import (
    TYPE_ECHO,
    TYPE_LOAD,
    Probe,
    decode_echo,
    decode_load,
    encode_probe,
    packet_type,
)
from netprobe.errors import (
    AccessDenied,
    ConnectFailed,
    ProtocolError,
    RateLimited,
    ServerBusy,
    ServerUnreachable,
)
from netprobe.webrtc.engine import (
    Pacer,
    PacketTrack,
    create_peer_connection,
    install_tap,
    prefer_test_codecs,
)

logger = logging.getLogger(__name__)

ECHO_BATCH_S = 0.025
"""Echoes that arrive within this long of the session's last run are judged together (an echo
comes every few milliseconds; judging each alone tripled a check's CPU for no better timing)."""

def _failure(reason: Reason, started_at: datetime, t0: float, local: bool,
             server: str | None) -> CheckResult:
    verdict = Verdict(UNKNOWN, 0.0, (reason,))
    return CheckResult(verdict, LinkMetrics(), started_at, time.monotonic() - t0, local=local,
                       server=server)


async def run_check(
    server_url: str,
    settings: Settings,
    *,
    local: bool = False,
    on_progress: Callable[[Progress | str], None] | None = None,
) -> CheckResult:
    """Measure the link to the reflector at `server_url` and classify it.

    Never raises for a foreseeable network failure: an unreachable or busy server, or a
    connection that cannot be established, gives an `unknown` verdict whose first reason
    says what happened, within `settings.probe.max_duration_s`.
    """
    t0 = time.monotonic()
    started_at = datetime.now(UTC)
    shown_server = server_url if settings.privacy.log_addresses else None
    cfg = settings.probe
    progress = on_progress or (lambda _p: None)
    pc = create_peer_connection(cfg.ice_servers)
    probe_track = PacketTrack("audio")
    load_track = PacketTrack("video")
    pc.addTransceiver(probe_track, direction="sendrecv")
    pc.addTransceiver(load_track, direction="sendrecv")
    prefer_test_codecs(pc)
    session: ClientSession | None = None
    pacers: list[Pacer] = []
    try:
        try:
            async with asyncio.timeout(min(cfg.connect_timeout_s, cfg.max_duration_s - 1)):
                progress("connecting")
                await _connect(pc, server_url, cfg.max_duration_s,
                               token=settings.access_token)
                connected = asyncio.Event()
                if pc.connectionState == "connected":
                    connected.set()

                @pc.on("connectionstatechange")
                def on_state() -> None:
                    if pc.connectionState in ("connected", "failed", "closed"):
                        connected.set()

                await connected.wait()
                if pc.connectionState != "connected":
                    raise ConnectFailed("the WebRTC connection to the test server failed")
        except TimeoutError:
            return _failure(Reason(
                "connect_timeout",
                "The test server could not be reached in time. The connection may be down or "
                "very poor; if it stays like this, call your therapist by phone.",
            ), started_at, t0, local, shown_server)
        except AccessDenied as exc:
            return _failure(_access_reason(exc), started_at, t0, local, shown_server)
        except RateLimited as exc:
            wait = f"{exc.retry_after_s} seconds" if exc.retry_after_s else "a minute"
            return _failure(Reason(
                "rate_limited",
                f"The test server has had too many checks from this connection. Please wait "
                f"{wait} and try again.",
            ), started_at, t0, local, shown_server)
        except ServerBusy:
            return _failure(Reason(
                "server_busy",
                "The test server is busy with other checks right now. Please try again in a "
                "minute.",
            ), started_at, t0, local, shown_server)
        except (ServerUnreachable, ConnectFailed, ProtocolError) as exc:
            return _failure(Reason(
                "server_unreachable",
                f"The test server could not be reached ({exc}). Check that you are online; "
                f"if you cannot get online, call your therapist by phone.",
            ), started_at, t0, local, shown_server)

        now = time.monotonic()
        session = ClientSession(cfg, settings.thresholds, now, check_deadline(t0, cfg))
        wake = asyncio.Event()
        """Set when an echo arrives or the connection changes state."""
        pc.on("connectionstatechange", wake.set)
        _attach_taps(pc, session, wake)
        pacers = [Pacer(probe_track, session.probe_step),
                  Pacer(load_track, session.up_load_step)]
        for pacer in pacers:
            pacer.start()
        # The session runs at the deadline it names and when echoes arrive (several echoes in
        # ECHO_BATCH_S are judged together): never on a poll.
        while True:
            now = time.monotonic()
            wake_at = session.step(now)
            progress(session.progress(now))
            if wake_at is None or pc.connectionState != "connected":
                break
            for pacer in pacers:
                pacer.wake()  # a new rung may have started
            wake.clear()
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await wake.wait()
            except TimeoutError:
                continue
            batch_until = min(wake_at, now + ECHO_BATCH_S)
            if pc.connectionState == "connected" and time.monotonic() < batch_until:
                await asyncio.sleep(batch_until - time.monotonic())
        stopped_early = session.stop_reason not in (None, "deadline") and \
            session.stopped_early
        metrics = session.metrics()
        verdict = classify(metrics, settings.thresholds)
        return CheckResult(
            verdict, metrics, started_at, time.monotonic() - t0, stopped_early=stopped_early,
            local=local, server=shown_server,
            ladder={"up": _ladder_json(session.up), "down": _ladder_json(session.down)},
        )
    finally:
        for pacer in pacers:
            await pacer.stop()
        await pc.close()


def _access_reason(exc: AccessDenied) -> Reason:
    """The plain reason for a refused access token (`unauthorized` or `forbidden`)."""
    if exc.code == "forbidden":
        return Reason("forbidden", f"The test server did not allow this check ({exc}). Ask "
                      "your clinic for a new check link.")
    return Reason("unauthorized", f"The test server needs a valid access token ({exc}). Use "
                  "the check link your clinic sent, or ask the clinic for a new one.")


def _attach_taps(pc: Any, session: ClientSession, echo_arrived: asyncio.Event) -> None:
    def on_audio(payload: bytes, now: float) -> None:
        if packet_type(payload) == TYPE_ECHO:
            session.on_echo(decode_echo(payload), now)
            echo_arrived.set()

    def on_video(payload: bytes, now: float) -> None:
        if packet_type(payload) == TYPE_LOAD:
            session.on_down_load(decode_load(payload), len(payload), now)

    for transceiver in pc.getTransceivers():
        install_tap(transceiver.receiver, transceiver.kind,
                    on_audio if transceiver.kind == "audio" else on_video)


def _ladder_json(ladder: Any) -> list[dict[str, Any]]:
    return [
        {"rate_kbps": r.rung.rate_kbps,
         "sent_kbps": None if r.sent_kbps is None else round(r.sent_kbps),
         "delivered_kbps": None if r.delivered_kbps is None else round(r.delivered_kbps),
         "passed": r.passed}
        for _, r in sorted(ladder.results.items())
    ]


async def _connect(pc: Any, server_url: str, cap_s: float, mode: str = "check",
                   token: str = "") -> None:
    """Offer/answer over HTTP, with `Authorization: Bearer token` if a token is given.
    Raises ServerUnreachable, ServerBusy, AccessDenied or ProtocolError."""
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "mode": mode}
    url = server_url.rstrip("/") + "/v1/offer"
    timeout = aiohttp.ClientTimeout(total=cap_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            async with http.post(url, json=offer, headers=headers) as resp:
                if resp.status == 503:
                    raise ServerBusy("the test server is busy")
                if resp.status == 429:
                    raise RateLimited("the test server asked us to slow down",
                                      _retry_after(resp.headers.get("Retry-After")))
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status in (401, 403):
                    raise _access_denied(resp.status, body)
                if resp.status != 200:
                    detail = body.get("error", {}).get("message") if isinstance(body, dict) \
                        else None
                    raise ServerUnreachable(
                        f"the test server answered HTTP {resp.status}"
                        + (f": {detail}" if detail else ""))
    except aiohttp.InvalidURL:
        raise ServerUnreachable("the server address is not a valid URL") from None
    except aiohttp.ClientConnectorError:
        raise ServerUnreachable("nothing answered at the server address") from None
    except aiohttp.ClientError as exc:
        raise ServerUnreachable(f"the connection to the server failed: {type(exc).__name__}") \
            from None
    if not isinstance(body, dict) or body.get("type") != "answer" or not isinstance(
            body.get("sdp"), str):
        raise ProtocolError("the server's answer is not a valid SDP answer")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    except Exception as exc:
        raise ProtocolError("the server's SDP answer could not be used") from exc


def _retry_after(value: str | None) -> int | None:
    """The Retry-After header's seconds, bounded to 1 h; None if absent or not a number (an
    HTTP date is not worth parsing here)."""
    if value is None or not (value.strip().isascii() and value.strip().isdigit()):
        return None
    return max(1, min(3600, int(value.strip()[:6])))


def _access_denied(status: int, body: Any) -> AccessDenied:
    code = "unauthorized" if status == 401 else "forbidden"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "no valid access token" if status == 401 else "the token does not allow it"
    return AccessDenied(message[:300], code)  # a hostile server's text: bounded


class MonitorLink:
    """A long-lived, gentle probe stream to the reflector for watching a session: probes only
    (no bitrate ladder), every echo handed to `on_echo(echo, now)`."""

    def __init__(self, server_url: str, settings: Settings, interval_s: float,
                 on_echo: Callable[[Any, float], None]) -> None:
        self._url = server_url
        self._settings = settings
        self._interval = interval_s
        self._on_echo = on_echo
        self._pc = create_peer_connection(settings.probe.ice_servers)
        self._track = PacketTrack("audio")
        self._pacer: Pacer | None = None
        self._seq = 0
        self.failed = asyncio.Event()
        """Set when the connection fails or closes."""

    async def connect(self, timeout: float) -> None:
        """Connect, or raise ServerUnreachable/ServerBusy/ProtocolError/ConnectFailed/
        TimeoutError (the link is closed again on failure)."""
        pc = self._pc
        pc.addTransceiver(self._track, direction="sendrecv")
        pc.addTransceiver(PacketTrack("video"), direction="sendrecv")
        prefer_test_codecs(pc)

        def on_audio(payload: bytes, now: float) -> None:
            if packet_type(payload) == TYPE_ECHO:
                self._on_echo(decode_echo(payload), now)

        for transceiver in pc.getTransceivers():
            install_tap(transceiver.receiver, transceiver.kind,
                        on_audio if transceiver.kind == "audio" else (lambda p, n: None))
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                connected.set()
                self.failed.set()

        try:
            async with asyncio.timeout(timeout):
                await _connect(pc, self._url, timeout, mode="monitor",
                               token=self._settings.access_token)
                await connected.wait()
            if pc.connectionState != "connected":
                raise ConnectFailed("the monitoring connection failed")
        except BaseException:
            await self.close()
            raise
        self._pacer = Pacer(self._track, lambda now: (self._interval, self._next_probe))
        self._pacer.start()

    def _next_probe(self, sent_at: float) -> bytes:
        probe = Probe(seq=self._seq, sent_at=sent_at)
        self._seq += 1
        return encode_probe(probe, self._settings.probe.probe_size)

    @property
    def probes_sent(self) -> int:
        return self._seq

    @property
    def state(self) -> str:
        """How the connection stands, in words (`connectionState` and ICE state)."""
        return (f"is {self._pc.connectionState} "
                f"(ICE {self._pc.iceConnectionState})")

    async def close(self) -> None:
        if self._pacer is not None:
            await self._pacer.stop()
            self._pacer = None
        await self._pc.close()
        self.failed.set()

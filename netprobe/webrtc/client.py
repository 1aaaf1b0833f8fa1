"""The probe engine: one pre-session check against a reflector.

I/O only: signalling over HTTP (aiohttp), the WebRTC connection and test streams (via
`engine.py`), timing. All measurement logic, and when it next needs to run, lives in
`core.session.ClientSession`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from netprobe.config import Settings
from netprobe.core.classify import UNKNOWN, Reason, Verdict, classify
from netprobe.core.failover import (
    Attempt,
    Outcome,
    bounded_retry_after,
    most_telling,
    moves_on,
    server_list,
)
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
    NetprobeError,
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

#: With more URLs left to try, the longest a TCP connection to one reflector may take: a refused
#: connection fails at once, but a host whose packets vanish would otherwise cost the whole
#: connect budget (the kernel's SYN retries run for minutes).
TCP_CONNECT_CAP_S = 2.0
#: With more URLs left to try, the longest to wait for one reflector's answer to an offer (an
#: answer takes milliseconds; up to ~5 s when the reflector gathers STUN candidates).
ANSWER_CAP_S = 4.0


def _failure(reason: Reason, started_at: datetime, t0: float, local: bool,
             server: str | None) -> CheckResult:
    verdict = Verdict(UNKNOWN, 0.0, (reason,))
    return CheckResult(verdict, LinkMetrics(), started_at, time.monotonic() - t0, local=local,
                       server=server)


class _Peer:
    """A check's peer connection and its two test tracks (a fresh set per reflector whose
    answer, or lack of one, may have left a session behind there)."""

    def __init__(self, settings: Settings) -> None:
        self.pc = create_peer_connection(settings.probe.ice_servers)
        self.probe_track = PacketTrack("audio")
        self.load_track = PacketTrack("video")
        self.pc.addTransceiver(self.probe_track, direction="sendrecv")
        self.pc.addTransceiver(self.load_track, direction="sendrecv")
        prefer_test_codecs(self.pc)


class _AttemptFailed(Exception):
    """One URL of an attempt failed with `error`; `offer_unused`: the reflector certainly made
    no session of the offer (it refused it, or was never reached), so it may go elsewhere."""

    def __init__(self, error: NetprobeError, offer_unused: bool,
                 retry_after_s: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.offer_unused = offer_unused
        self.retry_after_s = retry_after_s
        """A 503's or 429's Retry-After (bounded)."""


def _outcome(error: NetprobeError) -> Outcome:
    if isinstance(error, AccessDenied):
        return "denied"
    if isinstance(error, RateLimited):
        return "rate_limited"
    return "busy" if isinstance(error, ServerBusy) else "unreachable"


async def _offer_in_turn(urls: tuple[str, ...], settings: Settings, deadline: float,
                         attempts: list[Attempt]) -> tuple[_Peer, str]:
    """Offer to each URL in turn until one answers (`core.failover`: move on only when it is
    unreachable, busy or rate-limiting). Returns the peer, its answer applied, and the URL;
    raises the most telling failure. Every attempt is appended to `attempts`."""
    peer: _Peer | None = None
    failures: list[tuple[Attempt, NetprobeError]] = []
    try:
        for i, url in enumerate(urls):
            last = i == len(urls) - 1
            if peer is None:
                peer = _Peer(settings)
                await peer.pc.setLocalDescription(await peer.pc.createOffer())
            left = deadline - time.monotonic()
            try:
                body = await _post_offer(
                    peer.pc, url, settings.probe.max_duration_s if last
                    else max(0.5, min(ANSWER_CAP_S, left / 2)), "check",
                    settings.access_token, None if last else TCP_CONNECT_CAP_S)
            except _AttemptFailed as failed:
                exc = failed.error
                attempt = Attempt(url, _outcome(exc), bounded_retry_after(failed.retry_after_s))
                attempts.append(attempt)
                failures.append((attempt, exc))
                logger.info("reflector %d of %d: %s", i + 1, len(urls), attempt.outcome)
                if last or not moves_on(attempt.outcome):
                    telling = most_telling(a for a, _ in failures)
                    raise next(e for a, e in failures if a is telling) from None
                if not failed.offer_unused:
                    await peer.pc.close()
                    peer = None
                continue
            attempts.append(Attempt(url, "answered"))
            await _apply_answer(peer.pc, body)
            return peer, url
        raise ServerUnreachable("no reflector URL was given")
    except BaseException:
        if peer is not None:
            await peer.pc.close()
        raise


async def run_check(
    server_url: str | Sequence[str],
    settings: Settings,
    *,
    local: bool = False,
    on_progress: Callable[[Progress | str], None] | None = None,
) -> CheckResult:
    """Measure the link to the reflector at `server_url` (or the first of several URLs, in
    the order given, that takes the check: `run_check_attempts`) and classify it."""
    result, _ = await run_check_attempts(server_url, settings, local=local,
                                         on_progress=on_progress)
    return result


async def run_check_attempts(
    servers: str | Sequence[str],
    settings: Settings,
    *,
    local: bool = False,
    on_progress: Callable[[Progress | str], None] | None = None,
) -> tuple[CheckResult, tuple[Attempt, ...]]:
    """Measure the link to the first of `servers` (tried in the order given; the caller
    shuffles) that takes the check, classify it, and say what became of each URL tried.

    Never raises for a foreseeable network failure: unreachable or busy servers, or a
    connection that cannot be established, give an `unknown` verdict whose first reason
    says what happened (of several failures, the most telling), within
    `settings.probe.max_duration_s`.
    """
    t0 = time.monotonic()
    started_at = datetime.now(UTC)
    urls = server_list(servers)
    shown_server = urls[-1] if settings.privacy.log_addresses and urls else None
    cfg = settings.probe
    progress = on_progress or (lambda _p: None)
    attempts: list[Attempt] = []
    session: ClientSession | None = None
    pacers: list[Pacer] = []
    peer: _Peer | None = None

    def failure(reason: Reason) -> tuple[CheckResult, tuple[Attempt, ...]]:
        return _failure(reason, started_at, t0, local, shown_server), tuple(attempts)

    try:
        try:
            connect_s = min(cfg.connect_timeout_s, cfg.max_duration_s - 1)
            async with asyncio.timeout(connect_s):
                progress("connecting")
                peer, url = await _offer_in_turn(urls, settings, t0 + connect_s, attempts)
                if settings.privacy.log_addresses:
                    shown_server = url
                pc = peer.pc
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
            telling = most_telling(attempts)
            if telling is not None and telling.outcome in ("busy", "rate_limited"):
                # an earlier reflector's answer says more than the last one's silence
                return failure(_busy_reason(telling))
            return failure(Reason(
                "connect_timeout",
                "The test server could not be reached in time. The connection may be down or "
                "very poor; if it stays like this, call your therapist by phone.",
            ))
        except AccessDenied as exc:
            return failure(_access_reason(exc))
        except RateLimited as exc:
            return failure(_busy_reason(Attempt("", "rate_limited", exc.retry_after_s)))
        except ServerBusy:
            return failure(_busy_reason(Attempt("", "busy")))
        except (ServerUnreachable, ConnectFailed, ProtocolError) as exc:
            return failure(Reason(
                "server_unreachable",
                f"The test server could not be reached ({exc}). Check that you are online; "
                f"if you cannot get online, call your therapist by phone.",
            ))

        now = time.monotonic()
        session = ClientSession(cfg, settings.thresholds, now, check_deadline(t0, cfg))
        wake = asyncio.Event()
        """Set when an echo arrives or the connection changes state."""
        pc.on("connectionstatechange", wake.set)
        _attach_taps(pc, session, wake)
        pacers = [Pacer(peer.probe_track, session.probe_step),
                  Pacer(peer.load_track, session.up_load_step)]
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
        ), tuple(attempts)
    finally:
        for pacer in pacers:
            await pacer.stop()
        if peer is not None:
            await peer.pc.close()


def _busy_reason(attempt: Attempt) -> Reason:
    """The plain reason for a reflector that answered but could not take the check."""
    if attempt.outcome == "rate_limited":
        wait = f"{attempt.retry_after_s:.0f} seconds" if attempt.retry_after_s else "a minute"
        return Reason(
            "rate_limited",
            f"The test server has had too many checks from this connection. Please wait "
            f"{wait} and try again.")
    return Reason(
        "server_busy",
        "The test server is busy with other checks right now. Please try again in a minute.")


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
    Raises ServerUnreachable, ServerBusy, RateLimited, AccessDenied or ProtocolError."""
    await pc.setLocalDescription(await pc.createOffer())
    try:
        body = await _post_offer(pc, server_url, cap_s, mode, token, None)
    except _AttemptFailed as failed:
        raise failed.error from None
    await _apply_answer(pc, body)


async def _post_offer(pc: Any, server_url: str, cap_s: float, mode: str, token: str,
                      tcp_connect_s: float | None) -> dict[str, Any]:
    """POST the offer already set as `pc`'s local description; the answer's JSON body. Raises
    _AttemptFailed (ServerUnreachable, ServerBusy, RateLimited, AccessDenied, ProtocolError)."""
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "mode": mode}
    url = server_url.rstrip("/") + "/v1/offer"
    timeout = aiohttp.ClientTimeout(total=cap_s, sock_connect=tcp_connect_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            async with http.post(url, json=offer, headers=headers) as resp:
                retry = _retry_after(resp.headers.get("Retry-After"))
                if resp.status == 503:  # busy, too_many_sessions or draining
                    raise _AttemptFailed(ServerBusy("the test server is busy"), True, retry)
                if resp.status == 429:
                    raise _AttemptFailed(RateLimited(
                        "the test server asked us to slow down", retry), True, retry)
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status in (401, 403):
                    raise _AttemptFailed(_access_denied(resp.status, body), True)
                if resp.status != 200:
                    detail = body.get("error", {}).get("message") if isinstance(body, dict) \
                        else None
                    detail = detail[:200] if isinstance(detail, str) else None
                    raise _AttemptFailed(ServerUnreachable(
                        f"the test server answered HTTP {resp.status}"
                        + (f": {detail}" if detail else "")), True)
    except aiohttp.InvalidURL:
        raise _AttemptFailed(ServerUnreachable("the server address is not a valid URL"),
                             True) from None
    except aiohttp.ClientConnectorError:
        raise _AttemptFailed(ServerUnreachable("nothing answered at the server address"),
                             True) from None
    except TimeoutError:  # aiohttp's own limits (an outer timeout comes as a cancellation)
        raise _AttemptFailed(ServerUnreachable(
            f"the test server did not answer within {cap_s:.0f} s"), False) from None
    except aiohttp.ClientError as exc:
        raise _AttemptFailed(ServerUnreachable(
            f"the connection to the server failed: {type(exc).__name__}"), False) from None
    if not isinstance(body, dict) or body.get("type") != "answer" or not isinstance(
            body.get("sdp"), str):
        raise _AttemptFailed(ProtocolError("the server's answer is not a valid SDP answer"),
                             False)
    return body


async def _apply_answer(pc: Any, body: dict[str, Any]) -> None:
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

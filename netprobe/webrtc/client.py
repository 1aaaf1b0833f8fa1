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
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from netprobe.clinic import contact
from netprobe.config import Settings
from netprobe.core.classify import UNKNOWN, Reason, Verdict, classify
from netprobe.core.connect import (
    combined,
    judge_final,
    relayed_reason,
    too_lossy_verdict,
    udp_blocked_reason,
)
from netprobe.core.failover import (
    Attempt,
    most_telling,
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
    ProtocolError,
    RateLimited,
    ServerBusy,
    ServerUnreachable,
)
from netprobe.i18n import N_, Phrase
from netprobe.webrtc.engine import (
    Pacer,
    install_tap,
)
from netprobe.webrtc.paths import Connected, PathFailed, connect_check
from netprobe.webrtc.signalling import Peer

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
    """`_measure`, the result naming the clinic's contact: the reflector's (from its answer)
    with the local `[clinic]` keys winning; the local one alone when no reflector answered."""
    result, attempts = await _measure(servers, settings, local=local, on_progress=on_progress)
    if result.fallback is None:
        result = replace(result, fallback=contact(settings.clinic, None, result.started_at))
    return result, attempts


async def _measure(
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
    peer: Peer | None = None

    def failure(reason: Reason) -> tuple[CheckResult, tuple[Attempt, ...]]:
        return _failure(reason, started_at, t0, local, shown_server), tuple(attempts)

    conn: Connected | None = None
    try:
        try:
            connect_s = min(cfg.connect_timeout_s, cfg.max_duration_s - 1)
            async with asyncio.timeout(connect_s + 0.5):  # connect_check keeps to connect_s
                progress("connecting")
                conn = await connect_check(urls, settings, t0 + connect_s, attempts)
                peer = conn.peer
                if settings.privacy.log_addresses:
                    shown_server = conn.url
                pc = peer.pc
        except PathFailed as failed:
            if settings.privacy.log_addresses:
                shown_server = failed.url
            return await _path_failure(failed, settings, started_at, t0, local,
                                       shown_server), tuple(attempts)
        except TimeoutError:
            telling = most_telling(attempts)
            if telling is not None and telling.outcome in ("busy", "rate_limited"):
                # an earlier reflector's answer says more than the last one's silence
                return failure(_busy_reason(telling))
            return failure(CONNECT_TIMEOUT)
        except AccessDenied as exc:
            return failure(_access_reason(exc))
        except RateLimited as exc:
            return failure(_busy_reason(Attempt("", "rate_limited", exc.retry_after_s)))
        except ServerBusy:
            return failure(_busy_reason(Attempt("", "busy")))
        except (ServerUnreachable, ConnectFailed, ProtocolError) as exc:
            return failure(_unreachable(str(exc)))

        now = time.monotonic()
        session = ClientSession(cfg, settings.thresholds, now, check_deadline(t0, cfg),
                                tails=conn.path not in ("relay_tcp", "relay_tls"))
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
        connected_at = time.monotonic()
        while True:
            now = time.monotonic()
            wake_at = session.step(now)
            progress(session.progress(now))
            if wake_at is None or pc.connectionState != "connected":
                break
            if session.rtt_estimate is None and now - connected_at >= NO_ECHO_S:
                break  # connected, but not one echo: the media path is dead (the verdict below)
            if session.rtt_estimate is None:
                wake_at = min(wake_at, connected_at + NO_ECHO_S)
            elif conn.prober is not None:
                await conn.stop_probing()  # echoes flow: the session measures from here
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
        await conn.stop_probing()
        stopped_early = session.stop_reason not in (None, "deadline") and \
            session.stopped_early
        metrics = session.metrics()
        verdict = classify(metrics, settings.thresholds)
        if verdict.verdict == UNKNOWN and judge_final(
                conn.evidence or combined(None, None), settings.thresholds.audio,
                conn.tcp_evidence) == "too_lossy":
            # connected too late, over a link too lossy to measure: what the attempt saw
            verdict = too_lossy_verdict(combined(conn.evidence, conn.tcp_evidence),
                                        settings.thresholds.audio)
        note = relayed_reason(conn.path)
        if note is not None:
            verdict = Verdict(verdict.verdict, verdict.confidence, (*verdict.reasons, note))
        return CheckResult(
            verdict, metrics, started_at, time.monotonic() - t0, stopped_early=stopped_early,
            local=local, server=shown_server,
            ladder={"up": _ladder_json(session.up), "down": _ladder_json(session.down)},
            path=conn.path, paths_tried=tuple(conn.tried), connect=conn.connect_json(),
            fallback=contact(settings.clinic, conn.peer.clinic, started_at),
        ), tuple(attempts)
    finally:
        if conn is not None:
            await conn.stop_probing()
        for pacer in pacers:
            await pacer.stop()
        if peer is not None:
            await peer.pc.close()


CONNECT_TIMEOUT = Reason.of("connect_timeout", N_(
    "The test server could not be reached in time. The connection may be down or very poor: "
    "check that you are online and run the check again; if it stays like this, call your "
    "therapist by phone."))


def _unreachable(detail: str | Phrase) -> Reason:
    return Reason.of("server_unreachable", N_(
        "The test server could not be reached ({detail}). Check that you are online and run "
        "the check again; if you cannot get online, call your therapist by phone."),
        detail=detail)


#: Connected, yet not one echo this long after: the reflector's side of the connection never
#: completed (a DTLS flight lost for good on a very lossy link), so nothing will be measured.
NO_ECHO_S = 3.0
#: A check that finds UDP blocked answers within this long of its start, TCP test included
#: (issue 9: 6 s from starting the process; its start-up takes some 0.5 s).
UDP_BLOCKED_ANSWER_S = 5.0


async def _path_failure(failed: PathFailed, settings: Settings, started_at: datetime,
                        t0: float, local: bool, server: str | None) -> CheckResult:
    """The result of a check whose streams found no path (`paths.PathFailed`)."""
    evidence = failed.evidence
    tcp: dict[str, Any] | None = None
    if failed.judgement == "too_lossy":
        verdict = too_lossy_verdict(combined(evidence, failed.tcp_evidence),
                                    settings.thresholds.audio)
    elif failed.judgement == "udp_blocked":
        budget = max(1.0, UDP_BLOCKED_ANSWER_S - (time.monotonic() - t0))
        tcp = await tcp_report(failed.url, settings.access_token or None, budget_s=budget)
        verdict = Verdict(UNKNOWN, 0.0, (udp_blocked_reason(tcp),))
    elif failed.judgement == "failed":
        verdict = Verdict(UNKNOWN, 0.0, (_unreachable(Phrase.of(N_(
            "the WebRTC connection to the test server failed"))),))
    else:
        verdict = Verdict(UNKNOWN, 0.0, (CONNECT_TIMEOUT,))
    return CheckResult(verdict, LinkMetrics(), started_at, time.monotonic() - t0, local=local,
                       server=server, paths_tried=tuple(failed.tried),
                       connect=failed.connect_json(), tcp=tcp)


async def tcp_report(url: str, token: str | None, *, budget_s: float) -> dict[str, Any]:
    """The quick TCP speed test (`netprobe.tcpreport`; speedtest-cli only when needed)."""
    from netprobe.tcpreport import tcp_report as report

    return await report(url, token, budget_s=budget_s)


def _busy_reason(attempt: Attempt) -> Reason:
    """The plain reason for a reflector that answered but could not take the check."""
    if attempt.outcome == "rate_limited":
        if attempt.retry_after_s:
            return Reason.of("rate_limited", N_(
                "The test server has had too many checks from this connection. Please wait "
                "{seconds:.0f} seconds and try again."), seconds=attempt.retry_after_s)
        return Reason.of("rate_limited", N_(
            "The test server has had too many checks from this connection. Please wait a "
            "minute and try again."))
    return Reason.of("server_busy", N_(
        "The test server is busy with other checks right now. Please try again in a minute."))


def _access_reason(exc: AccessDenied) -> Reason:
    """The plain reason for a refused access token (`unauthorized` or `forbidden`)."""
    if exc.code == "forbidden":
        return Reason.of("forbidden", N_(
            "The test server did not allow this check ({detail}). Ask your clinic for a new "
            "check link, or call your therapist by phone."), detail=str(exc))
    return Reason.of("unauthorized", N_(
        "The test server needs a valid access token ({detail}). Use the check link your clinic "
        "sent, or ask the clinic for a new one; until then, call your therapist by phone."),
        detail=str(exc))


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
         "tail_kbps": None if r.tail_kbps is None else round(r.tail_kbps),
         "others_kbps": round(r.cross_kbps),
         "bucket_emptied": r.bucket_emptied,
         "passed": r.passed}
        for _, r in sorted(ladder.results.items())
    ]


class MonitorLink:
    """A long-lived, gentle probe stream to the reflector for watching a session: probes only
    (no bitrate ladder), every echo handed to `on_echo(echo, now)`. It finds its path as a
    check does (`paths.connect_check`: direct, else the clinic's relay)."""

    def __init__(self, server_url: str, settings: Settings, interval_s: float,
                 on_echo: Callable[[Any, float], None]) -> None:
        self._url = server_url
        self._settings = settings
        self._interval = interval_s
        self._on_echo = on_echo
        self._peer: Peer | None = None
        self._pacer: Pacer | None = None
        self._seq = 0
        self.path: str | None = None
        """`direct` or a relay path once connected."""
        self.failed = asyncio.Event()
        """Set when the connection fails or closes."""

    async def connect(self, timeout: float) -> None:
        """Connect, or raise ServerUnreachable/ServerBusy/RateLimited/AccessDenied/
        ProtocolError/ConnectFailed/TimeoutError (the link is closed again on failure)."""
        try:
            async with asyncio.timeout(timeout + 0.5):  # connect_check keeps to `timeout`
                conn = await connect_check((self._url,), self._settings,
                                           time.monotonic() + timeout, [], mode="monitor")
        except PathFailed as failed:
            self.failed.set()
            words = {"udp_blocked": "the network blocks UDP and no relay connected",
                     "too_lossy": "the link loses too much to connect"}
            raise ConnectFailed("the monitoring connection found no path: "
                                + words.get(failed.judgement, failed.judgement)) from None
        except BaseException:
            self.failed.set()
            raise
        self._peer, self.path = conn.peer, conn.path
        # the path's STUN prober has done its work (20 requests a second to each candidate:
        # left running, it would cost a monitored session as much as the probes do)
        await conn.stop_probing()
        pc = conn.peer.pc

        def on_audio(payload: bytes, now: float) -> None:
            if packet_type(payload) == TYPE_ECHO:
                self._on_echo(decode_echo(payload), now)

        for transceiver in pc.getTransceivers():
            install_tap(transceiver.receiver, transceiver.kind,
                        on_audio if transceiver.kind == "audio" else (lambda p, n: None))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.failed.set()

        if pc.connectionState != "connected":
            await self.close()
            raise ConnectFailed("the monitoring connection failed")
        self._pacer = Pacer(conn.peer.probe_track,
                            lambda now: (self._interval, self._next_probe))
        self._pacer.start()

    def set_interval(self, interval_s: float) -> None:
        """Probe every `interval_s` from the next probe on (`core.probe_rate`)."""
        self._interval = interval_s

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
        if self._peer is None:
            return "is not connected"
        pc = self._peer.pc
        return f"is {pc.connectionState} (ICE {pc.iceConnectionState})"

    async def close(self) -> None:
        if self._pacer is not None:
            await self._pacer.stop()
            self._pacer = None
        if self._peer is not None:
            await self._peer.pc.close()
        self.failed.set()

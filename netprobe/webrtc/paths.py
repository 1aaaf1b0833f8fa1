"""Finding a path for a check's test streams: direct first, then the clinic's TURN relays.

The order (docs/check-format.md, "Paths"): the direct path (host and STUN candidates) gets
`core.connect.DIRECT_WINDOW_S` after the answer. While it tries, `StunProber` sends STUN Binding
requests of its own to the reflector's candidates and counts what comes back: with nothing back,
UDP is blocked; with little back, the link may be too lossy to hold a call (`core.connect`).
Once nothing has come back for `RELAY_PREPARE_AFTER_S`, the relays the reflector offered (and
any in the local settings) start allocating in parallel, one peer connection per transport with
relay candidates only; when the window ends with UDP blocked, the check offers again over the
best relay that allocated: TURN over UDP, then TCP, then TLS. A relay that refuses the
credentials, times out or answers garbage is recorded and the next one is tried.

I/O only: the judgements are `core.connect`'s.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aioice import stun

from netprobe.clinic import from_answer
from netprobe.config import Settings
from netprobe.core.connect import (
    DIRECT_WINDOW_S,
    RELAY_PATHS,
    RELAY_PREPARE_AFTER_S,
    SETTLE_S,
    ConnectEvidence,
    judge_direct,
    judge_final,
    judge_signalling,
    judge_signalling_final,
)
from netprobe.core.failover import Attempt
from netprobe.webrtc.engine import cancel_and_wait
from netprobe.webrtc.relays import RelayFailed, prepare_relay, relay_servers
from netprobe.webrtc.signalling import AttemptFailed, Peer, apply_answer, offer_in_turn, post_offer
from netprobe.webrtc.tcpprobe import START_AFTER_S, TcpProber

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.05
"""How often `StunProber` sends a Binding request to each of the reflector's candidates."""
RELAY_PREFER_WAIT_S = 0.5
"""Once one relay has allocated, how long a more preferred one still pending is waited for."""
RELAY_CONNECT_S = 4.0
"""How long a relay path gets to connect once offered."""


def ice_connection(pc: Any) -> Any | None:
    """The aioice `Connection` under a bundled peer connection (None if aiortc's layout
    changed: the check then runs without the prober's evidence)."""
    try:
        return pc.getTransceivers()[0].sender.transport.transport._connection
    except (AttributeError, IndexError):
        return None


def selected_pair(pc: Any) -> dict[str, str] | None:
    """The candidate types of the pair ICE selected: `{"local_candidate": "relay",
    "remote_candidate": "host"}`; None before that."""
    connection = ice_connection(pc)
    pair = getattr(connection, "_nominated", {}).get(1) if connection is not None else None
    if pair is None:
        return None
    return {"local_candidate": pair.local_candidate.type,
            "remote_candidate": pair.remote_candidate.type}


class StunProber:
    """Extra STUN Binding requests from the direct path's host candidates to the reflector's
    candidates, every `PROBE_INTERVAL_S`, with what came back counted (`evidence`). They are
    ordinary ICE connectivity checks (the reflector answers them; they nominate nothing)."""

    def __init__(self, pc: Any, interval_s: float = PROBE_INTERVAL_S,
                 answer_s: float = 0.0) -> None:
        self._pc = pc
        self._answer_s = answer_s
        self._interval = interval_s
        self._started = time.monotonic()
        self._sent: dict[bytes, float] = {}
        self._rtts: list[float] = []
        self.inbound = 0
        self._task: asyncio.Task[None] | None = None
        self._wrapped: list[tuple[Any, Any, Any]] = []  # (protocol, its handler, ours)
        self.available = True
        """False when aiortc's internals did not have the expected shape."""

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sending, and stop counting: the protocols get their own handlers back
        (a monitored session would otherwise pay for the count on every packet)."""
        await cancel_and_wait(self._task)
        self._task = None
        for protocol, received, counting in self._wrapped:
            if protocol.datagram_received is counting:
                protocol.datagram_received = received
        self._wrapped = []

    def evidence(self, now: float) -> ConnectEvidence:
        answered = len(self._rtts)
        rtt = statistics.median(self._rtts) * 1000 if self._rtts else None
        settle = max(SETTLE_S, 3 * rtt / 1000) if rtt is not None else SETTLE_S
        lost = sum(1 for at in self._sent.values() if now - at >= settle)
        return ConnectEvidence(since_s=now - self._started, sent=len(self._sent) + answered,
                               settled=answered + lost, answered=answered,
                               inbound=self.inbound, rtt_ms=rtt, answer_s=self._answer_s)

    async def _run(self) -> None:
        connection = ice_connection(self._pc)
        if connection is None:
            self.available = False
            logger.warning("cannot probe the direct path (aiortc's ICE layout changed)")
            return
        for _ in range(500):  # the answer is applied: aiortc starts ICE in a task of its own
            if connection.remote_password is not None and connection.remote_candidates:
                break
            await asyncio.sleep(0.01)
        else:
            self.available = False
            return
        remotes = [c for c in connection.remote_candidates if c.transport.lower() == "udp"]
        protocols = [p for p in connection._protocols
                     if getattr(p, "local_candidate", None) is not None
                     and p.local_candidate.type == "host"]
        for protocol in protocols:
            self._count(protocol, {(c.host, c.port) for c in remotes})
        key = connection.remote_password.encode("utf8")
        while True:
            for protocol in protocols:
                family_v6 = ":" in protocol.local_candidate.host
                for remote in remotes:
                    if (":" in remote.host) != family_v6:
                        continue
                    request = stun.Message(message_method=stun.Method.BINDING,
                                           message_class=stun.Class.REQUEST)
                    request.attributes["USERNAME"] = \
                        f"{connection.remote_username}:{connection.local_username}"
                    request.attributes["PRIORITY"] = protocol.local_candidate.priority
                    request.attributes["ICE-CONTROLLING"] = connection._tie_breaker
                    request.add_message_integrity(key)
                    try:
                        protocol.send_stun(request, (remote.host, remote.port))
                    except (OSError, AttributeError):
                        continue
                    self._sent[request.transaction_id] = time.monotonic()
            await asyncio.sleep(self._interval)

    def _count(self, protocol: Any, remotes: set[tuple[str, int]]) -> None:
        """Wrap `protocol.datagram_received` to count STUN packets from the reflector and
        the answers to our own requests (aioice drops answers it did not ask for)."""
        received = protocol.datagram_received

        def counting(data: bytes, addr: tuple[Any, ...]) -> None:
            if len(data) >= 20 and data[0] < 2 and data[4:8] == b"\x21\x12\xa4\x42" \
                    and (addr[0], addr[1]) in remotes:
                self.inbound += 1
                sent_at = self._sent.pop(bytes(data[8:20]), None)
                if sent_at is not None:
                    self._rtts.append(time.monotonic() - sent_at)
            received(data, addr)

        protocol.datagram_received = counting
        self._wrapped.append((protocol, received, counting))


# -- the order ---------------------------------------------------------------------------------

@dataclass
class Connected:
    """A connected check: its peer, the reflector URL, the path and how it was found."""

    peer: Peer
    url: str
    path: str
    tried: list[dict[str, Any]]
    evidence: ConnectEvidence | None
    pair: dict[str, str] | None = None
    tcp_evidence: ConnectEvidence | None = None
    """The TCP handshakes' evidence, when the answer was slow enough to start them."""
    prober: StunProber | None = None
    """The direct path's prober, still running until `stop_probing`."""

    async def stop_probing(self) -> None:
        """Stop the prober (at the first echo, or at the end), its evidence kept."""
        if self.prober is not None:
            await self.prober.stop()
            self.evidence = self.prober.evidence(time.monotonic())
            self.prober = None

    def connect_json(self) -> dict[str, Any]:
        return connect_json(self.evidence, self.tcp_evidence, self.pair)


@dataclass
class PathFailed(Exception):
    """No path connected: `judgement` is `udp_blocked`, `too_lossy` or `timeout`."""

    judgement: str
    url: str
    evidence: ConnectEvidence | None
    tried: list[dict[str, Any]] = field(default_factory=list)
    tcp_evidence: ConnectEvidence | None = None

    def __post_init__(self) -> None:
        super().__init__(self.judgement)

    def connect_json(self) -> dict[str, Any] | None:
        if self.evidence is None and self.tcp_evidence is None:
            return None
        return connect_json(self.evidence, self.tcp_evidence, None)


def connect_json(stun_evidence: ConnectEvidence | None, tcp: ConnectEvidence | None,
                 pair: dict[str, str] | None) -> dict[str, Any]:
    """The result's `connect` object (docs/check-format.md)."""
    doc: dict[str, Any] = stun_evidence.to_json() if stun_evidence is not None else {}
    if tcp is not None:
        doc["tcp_handshakes"] = tcp.tcp_json()
    doc.update(pair or {})
    return doc


async def _state_change(pc: Any, timeout: float) -> None:
    """Return when `pc`'s connection state changes, or after `timeout`."""
    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await changed.wait()
    except TimeoutError:
        pass
    finally:
        pc.remove_listener("connectionstatechange", changed.set)


async def _direct(peer: Peer, prober: StunProber, settings: Settings, deadline: float,
                  start_relays: Callable[[], bool], before: ConnectEvidence | None) -> str:
    """Wait for the direct path: `connected`, or the judgement that ends it."""
    pc = peer.pc
    t = settings.thresholds.audio
    while True:
        now = time.monotonic()
        if pc.connectionState == "connected":
            return "connected"
        evidence = prober.evidence(now)
        if evidence.inbound == 0 and evidence.answered == 0 \
                and evidence.since_s >= RELAY_PREPARE_AFTER_S + evidence.window_s \
                - DIRECT_WINDOW_S:
            evidence = replace(evidence, relay_ready=start_relays())
        if pc.connectionState in ("failed", "closed"):
            final = judge_final(evidence, t, before)
            return final if final != "timeout" else "failed"
        if prober.available:
            judgement = judge_direct(evidence, t, before)
            if judgement != "wait":
                return judgement
        if now >= deadline:
            return judge_final(evidence, t, before) if prober.available else "timeout"
        await _state_change(pc, min(PROBE_INTERVAL_S * 2, deadline - now))


async def _best_relay(preps: dict[str, asyncio.Task[Peer]], remaining: list[str],
                      deadline: float) -> str | None:
    """The next relay to use or record: the most preferred one that is done, once every more
    preferred one has failed, or `RELAY_PREFER_WAIT_S` after a less preferred one succeeded."""
    success_at: float | None = None
    while remaining:
        now = time.monotonic()
        if success_at is None and any(
                preps[k].done() and not preps[k].cancelled() and preps[k].exception() is None
                for k in remaining):
            success_at = now
        for kind in remaining:
            task = preps[kind]
            if task.done():
                return kind
            if success_at is None or now < success_at + RELAY_PREFER_WAIT_S:
                break
        if now >= deadline:
            return None
        pending = {preps[k] for k in remaining if not preps[k].done()}
        until = deadline if success_at is None else min(deadline, success_at +
                                                        RELAY_PREFER_WAIT_S)
        await asyncio.wait(pending, timeout=max(0.01, until - now),
                           return_when=asyncio.FIRST_COMPLETED)
    return None


async def _signal(urls: tuple[str, ...], settings: Settings, deadline: float,
                  attempts: list[Attempt], mode: str) -> tuple[Peer, str, dict[str, Any],
                                                               ConnectEvidence | None]:
    """`offer_in_turn`, with TCP handshakes counted once the answer is slow in coming
    (`tcpprobe.py`); raises PathFailed("too_lossy") when they show a link too lossy for a
    call, before or at the deadline, and what `offer_in_turn` raises otherwise."""
    offer = asyncio.ensure_future(offer_in_turn(urls, settings, deadline, attempts, mode))
    prober: TcpProber | None = None
    t = settings.thresholds.audio
    try:
        done, _ = await asyncio.wait({offer}, timeout=START_AFTER_S)
        if not done:
            prober = TcpProber(urls[0])
            prober.start()
            while not offer.done():
                evidence = prober.evidence(time.monotonic())
                if judge_signalling(evidence, t) == "too_lossy" or (
                        time.monotonic() >= deadline - 0.2
                        and judge_signalling_final(evidence, t)):
                    raise PathFailed("too_lossy", urls[0], None,
                                     [{"path": "direct", "outcome": "too_lossy",
                                       "detail": "the offer's answer did not come"}],
                                     tcp_evidence=evidence)
                await asyncio.wait({offer}, timeout=0.1)
        peer, url, body = offer.result()
        evidence = prober.evidence(time.monotonic()) if prober is not None else None
        return peer, url, body, evidence
    finally:
        if prober is not None:
            await prober.stop()
        if not offer.done():
            offer.cancel()
            try:
                await offer
            except BaseException:  # noqa: BLE001 - cancelled here, or failed meanwhile
                pass


async def connect_check(urls: tuple[str, ...], settings: Settings, deadline: float,
                        attempts: list[Attempt], mode: str = "check") -> Connected:
    """Offer to the first of `urls` that takes the check (`signalling.offer_in_turn`), then
    find a path to it: direct, else a relay. Raises what `offer_in_turn` raises, or
    PathFailed. `mode`: `check`, or `monitor` for the agent's monitoring stream."""
    offered_at = time.monotonic()
    peer, url, body, before = await _signal(urls, settings, deadline, attempts, mode)
    relays = relay_servers(settings, body)
    preps: dict[str, asyncio.Task[Peer]] = {}
    tried: list[dict[str, Any]] = []
    prober = StunProber(peer.pc, answer_s=time.monotonic() - offered_at)
    prober.start()
    kept: Peer | None = None

    def start_relays() -> bool:
        """Start allocating on every relay not started yet; True once one has allocated."""
        for kind, server in relays.items():
            if kind not in preps:
                preps[kind] = asyncio.get_running_loop().create_task(
                    prepare_relay(settings, server))
        return any(t.done() and not t.cancelled() and t.exception() is None
                   for t in preps.values())

    try:
        outcome = await _direct(peer, prober, settings, deadline, start_relays, before)
        evidence = prober.evidence(time.monotonic()) if prober.available else None
        tried.append({"path": "direct", "outcome": outcome})
        if outcome == "connected":
            kept = peer
            # the prober goes on until the first echo (`Connected.stop_probing`): if none
            # comes, what it saw meanwhile is the evidence
            return Connected(peer, url, "direct", tried, evidence, selected_pair(peer.pc),
                             before, prober if prober.available else None)
        await prober.stop()
        if outcome != "udp_blocked" or not relays:
            raise PathFailed(outcome, url, evidence, tried, before)
        await peer.pc.close()
        start_relays()
        remaining = [k for k in RELAY_PATHS if k in preps]
        while remaining:
            kind = await _best_relay(preps, remaining, deadline)
            if kind is None:
                break
            remaining.remove(kind)
            try:
                relay = preps[kind].result()
            except RelayFailed as failed:
                logger.info("relay %s: %s", kind, failed.detail)
                tried.append({"path": kind, "outcome": failed.outcome, "detail": failed.detail})
                continue
            connected = await _offer_relay(relay, url, settings, deadline, kind, tried, mode)
            if connected:
                kept = relay
                return Connected(relay, url, kind, tried, evidence, selected_pair(relay.pc),
                                 before)
            await relay.pc.close()
        for kind in remaining:
            tried.append({"path": kind, "outcome": "timeout",
                          "detail": "the relay did not answer in time"})
        raise PathFailed("udp_blocked", url, evidence, tried, before)
    except BaseException:
        if kept is None:
            await peer.pc.close()
        raise
    finally:
        if kept is not peer:
            await prober.stop()
        for task in preps.values():
            task.cancel()
        for task in preps.values():
            try:
                relay = await task
            except BaseException:  # noqa: BLE001 - failed, or cancelled just now
                continue
            if relay is not kept:
                await relay.pc.close()


async def _offer_relay(relay: Peer, url: str, settings: Settings, deadline: float, kind: str,
                       tried: list[dict[str, Any]], mode: str) -> bool:
    """Offer `relay`'s description to the reflector again and wait for it to connect."""
    left = deadline - time.monotonic()
    if left <= 0.2:
        tried.append({"path": kind, "outcome": "timeout", "detail": "no time left"})
        return False
    try:
        body = await post_offer(relay.pc, url, left, mode, settings.access_token, None)
        await apply_answer(relay.pc, body)
        relay.clinic = from_answer(body.get("clinic"))
    except AttemptFailed as failed:
        tried.append({"path": kind, "outcome": "offer_refused", "detail": str(failed.error)})
        return False
    except Exception as exc:  # ProtocolError from apply_answer
        tried.append({"path": kind, "outcome": "offer_refused", "detail": str(exc)})
        return False
    until = min(deadline, time.monotonic() + RELAY_CONNECT_S)
    while relay.pc.connectionState not in ("connected", "failed", "closed"):
        now = time.monotonic()
        if now >= until:
            break
        await _state_change(relay.pc, until - now)
    if relay.pc.connectionState == "connected":
        tried.append({"path": kind, "outcome": "connected"})
        return True
    tried.append({"path": kind, "outcome": "no_connection",
                  "detail": f"the relayed connection did not complete "
                            f"({relay.pc.connectionState})"})
    return False


__all__ = ["Connected", "PathFailed", "StunProber", "connect_check", "connect_json",
           "selected_pair"]

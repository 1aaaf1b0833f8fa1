"""Deterministic discrete-event simulation of a whole netprobe check over an emulated link.

Pure Python: a heap of timed events and seeded `random.Random` streams, no sockets, no clock,
no asyncio. The two ends run the project's real pure code (`ClientSession`, `Responder`,
`wire` encode/decode, `classify`) exactly the way the engine wires them to aiortc:

client (`netprobe/probe.py: run_check`)
    * the session is created once the connection is up (`connect_s` after the check began);
    * a probe `Pacer` sends `encode_probe(session.next_probe(now), probe_size)` every
      `probe_interval_ms`; an uplink-load `Pacer` asks `_up_step` (`session.up_rung(now)`)
      and sends `encode_load(session.next_up_load(rung, now), rung.payload_size)` every
      `rung.interval` s, polling every 10 ms while there is nothing to send;
    * the receive taps feed echoes to `session.on_echo` and load to
      `session.on_down_load(load, len(payload), now)`, swallowing exceptions;
    * every 50 ms: `session.tick(now)`, `session.progress(now)`, stop on
      `session.finished(now)` or at the deadline `t0 + max_duration_s - 0.2`; then
      `session.metrics()` and `classify(metrics, thresholds)`.

reflector (`netprobe/reflector.py: ReflectorSession`)
    * its downlink `Pacer` starts when the offer is handled (before the client's session
      exists) and runs `_down_schedule`: `responder.down_request(now)`, payload
      `max(payload_size, 64)`, interval `(size + 66) * 8 / (rate_kbps * 1000)`;
    * each probe is given to `responder.on_probe(probe, now)` and answered at once with
      `encode_echo(responder.echo(probe, now, now))`;
    * uplink load goes to `responder.on_up_load(load, len(payload), now)`.

The `Pacer` model follows `netprobe/rtc.py: Pacer._run` (absolute timetable, `max_lag`,
`idle_poll`). Packets are sent the moment the pacer pushes them (no sender-side delay).

The client and the reflector have different clocks (each a constant offset from the
simulated time), as two machines' monotonic clocks would.

The link, per direction, in this order (as netem + a token-bucket shaper would do it):

1. random loss decided on entry (`loss_pct`): a lost packet takes no queue space;
2. a bottleneck of `rate_kbps` (wire bytes: payload + `LOAD_OVERHEAD_BYTES` for load,
   payload + `PROBE_OVERHEAD_BYTES` for probes and echoes) with a drop-tail byte queue of
   `queue_bytes` (or `queue_ms` worth of the rate); with no rate there is no bottleneck;
3. the one-way delay `delay_ms` plus a jitter sample uniform in `[-jitter_ms, +jitter_ms]`
   (the sum clipped at 0); a packet is never released before the one ahead of it (no
   reordering), so jitter also bunches packets.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from netprobe.classify import Thresholds, Verdict, classify
from netprobe.config import ProbeSettings, load_thresholds
from netprobe.measure import LOAD_OVERHEAD_BYTES, PROBE_OVERHEAD_BYTES, JitterEstimator
from netprobe.metrics import LinkMetrics
from netprobe.responder import Responder
from netprobe.session import ClientSession
from netprobe.wire import (
    TYPE_ECHO,
    TYPE_LOAD,
    TYPE_PROBE,
    Echo,
    RungReport,
    decode_echo,
    decode_load,
    decode_probe,
    encode_echo,
    encode_load,
    encode_probe,
    packet_type,
)

#: `netprobe/probe.py`: the engine's control loop sleeps this long between ticks.
TICK_S = 0.05
#: `netprobe/probe.py`: the loop stops this long before the hard cap.
DEADLINE_MARGIN_S = 0.2
#: `netprobe/rtc.py: Pacer` defaults.
PACER_IDLE_POLL_S = 0.01
PACER_MAX_LAG_S = 0.05
#: `netprobe/reflector.py: ReflectorSession._down_schedule` constants.
REFLECTOR_MIN_PAYLOAD = 64
REFLECTOR_OVERHEAD = 66

# Event priorities at equal times: arrivals first, then pacers, then the control loop.
_P_ARRIVAL, _P_PACER, _P_TICK = 0, 1, 2


# ------------------------------------------------------------------------------ the link


@dataclass(frozen=True)
class Direction:
    """One direction of the emulated link."""

    delay_ms: float = 5.0
    """One-way propagation delay."""
    jitter_ms: float = 0.0
    """Half-width of a uniform jitter added to the delay (no reordering)."""
    loss_pct: float = 0.0
    """Random (Bernoulli) loss on entry, percent."""
    rate_kbps: float | None = None
    """Bottleneck rate in kbit/s of wire bytes; None: no bottleneck."""
    queue_ms: float = 200.0
    """Drop-tail queue depth as time at `rate_kbps` (ignored if `queue_bytes` is set)."""
    queue_bytes: int | None = None
    """Drop-tail queue depth in wire bytes."""

    @property
    def queue_limit(self) -> float:
        if self.rate_kbps is None:
            return math.inf
        if self.queue_bytes is not None:
            return float(self.queue_bytes)
        return max(3000.0, self.queue_ms / 1000 * self.rate_kbps * 1000 / 8)

    def serialisation_s(self, wire_bytes: int) -> float:
        return 0.0 if self.rate_kbps is None else wire_bytes * 8 / (self.rate_kbps * 1000)


#: Wire size of an echo before the ladder runs (no rung reports, no downlink counts).
MIN_ECHO_WIRE = len(encode_echo(Echo(0, 0.0, 0, 0.0, 0.0, 0, 0, 0.0))) + PROBE_OVERHEAD_BYTES
#: Wire size of a typical echo once the ladder runs (3 rung reports, 3 downlink counts).
TYPICAL_ECHO_WIRE = len(encode_echo(Echo(
    0, 0.0, 0, 0.0, 0.0, 0, 0, 0.0,
    tuple(RungReport(i, 0, 0, 0.0, 0.0, 0, 0) for i in range(3)),
    tuple((i, 0) for i in range(3))))) + PROBE_OVERHEAD_BYTES


@dataclass(frozen=True)
class LinkSpec:
    up: Direction = Direction()
    """Client to reflector."""
    down: Direction = Direction()
    """Reflector to client."""
    connect_s: float | None = None
    """Signalling + ICE + DTLS time before the session starts; None: 5 RTT + 100 ms."""

    @property
    def base_rtt_ms(self) -> float:
        """Propagation RTT."""
        return self.up.delay_ms + self.down.delay_ms

    def true_rtt_range_ms(self, probe_size: int = 60) -> tuple[float, float]:
        """Unloaded RTT of a probe and its echo: propagation plus serialisation at the
        bottlenecks, for the smallest echo (warm-up) and a typical one (ladder running).
        With jitter the mean is higher still (no reordering holds packets back)."""
        probe = self.up.serialisation_s(probe_size + PROBE_OVERHEAD_BYTES)
        return (self.base_rtt_ms + 1000 * (probe + self.down.serialisation_s(MIN_ECHO_WIRE)),
                self.base_rtt_ms + 1000 * (probe + self.down.serialisation_s(TYPICAL_ECHO_WIRE)))

    def true_rtt_ms(self, probe_size: int = 60) -> float:
        """Unloaded RTT of a probe and a warm-up echo."""
        return self.true_rtt_range_ms(probe_size)[0]

    @property
    def connect_time_s(self) -> float:
        if self.connect_s is not None:
            return self.connect_s
        return 5 * self.base_rtt_ms / 1000 + 0.1


@dataclass
class DirectionStats:
    sent: dict[str, int] = field(default_factory=dict)
    lost_random: dict[str, int] = field(default_factory=dict)
    dropped_queue: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    max_queue_delay_s: float = 0.0

    def bump(self, table: dict[str, int], kind: str) -> None:
        table[kind] = table.get(kind, 0) + 1

    def count(self, table: dict[str, int], kinds: tuple[str, ...] | None = None) -> int:
        """Packets in `table` of the given kinds (all kinds if None)."""
        return sum(n for k, n in table.items() if kinds is None or k in kinds)

    def random_loss_pct(self, kinds: tuple[str, ...] | None = None) -> float | None:
        """Realised random-loss rate over the packets of `kinds` offered to the link.
        Kinds: `probe`, `echo`, `load:<rung>`."""
        sent = self.count(self.sent, kinds)
        return 100 * self.count(self.lost_random, kinds) / sent if sent else None

    def all_loss_pct(self, kinds: tuple[str, ...] | None = None) -> float | None:
        """Random loss plus queue drops over the packets of `kinds`."""
        sent = self.count(self.sent, kinds)
        lost = self.count(self.lost_random, kinds) + self.count(self.dropped_queue, kinds)
        return 100 * lost / sent if sent else None


class LinkDirection:
    """Loss on entry, drop-tail rate limiter, delay + jitter without reordering."""

    def __init__(self, sim: Simulator, spec: Direction, name: str, seed: int) -> None:
        self.sim = sim
        self.spec = spec
        self._loss_rng = random.Random(f"{seed}/{name}/loss")
        self._jitter_rng = random.Random(f"{seed}/{name}/jitter")
        self._busy_until = 0.0
        self._last_release = 0.0
        self._bps = None if spec.rate_kbps is None else spec.rate_kbps * 1000
        self._limit = spec.queue_limit
        self.stats = DirectionStats()
        self.transits: dict[str, list[tuple[float, float]]] = {}
        """Per kind, (sent, arrived) of every delivered packet (the truth for jitter)."""

    def send(self, wire_bytes: int, kind: str, deliver: Callable[[float], None]) -> None:
        t = self.sim.now
        st = self.stats
        st.bump(st.sent, kind)
        if self.spec.loss_pct and self._loss_rng.random() * 100 < self.spec.loss_pct:
            st.bump(st.lost_random, kind)
            return
        if self._bps is not None:
            backlog = max(0.0, self._busy_until - t) * self._bps / 8
            if backlog + wire_bytes > self._limit + 1e-6:  # float slack: exact fits fit
                st.bump(st.dropped_queue, kind)
                return
            start = max(t, self._busy_until)
            exit_at = start + wire_bytes * 8 / self._bps
            self._busy_until = exit_at
            st.max_queue_delay_s = max(st.max_queue_delay_s, start - t)
        else:
            exit_at = t
        delay = self.spec.delay_ms / 1000
        if self.spec.jitter_ms:
            j = self.spec.jitter_ms / 1000
            delay = max(0.0, delay + self._jitter_rng.uniform(-j, j))
        release = max(self._last_release, exit_at + delay)
        self._last_release = release
        st.bump(st.delivered, kind)
        self.transits.setdefault(kind, []).append((t, release))
        self.sim.at(release, _P_ARRIVAL, deliver)


# -------------------------------------------------------------------- the event engine


class Simulator:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Callable[[float], None]]] = []
        self._seq = 0
        self.stopped = False

    def at(self, t: float, prio: int, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, prio, self._seq, fn))

    def run(self, until: float) -> None:
        heap = self._heap
        while heap and not self.stopped:
            t, _, _, fn = heapq.heappop(heap)
            if t > until:
                break
            self.now = t
            fn(t)


class Clock:
    """A machine's monotonic clock: simulated time plus a constant offset."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, t: float) -> float:
        return t + self.offset


PayloadFactory = Callable[[], bytes]


class SimPacer:
    """`netprobe/rtc.py: Pacer._run` on simulated time; the track sends at once."""

    def __init__(self, sim: Simulator, clock: Clock,
                 schedule: Callable[[float], tuple[float, PayloadFactory] | None],
                 send: Callable[[bytes], None], idle_poll: float = PACER_IDLE_POLL_S,
                 max_lag: float = PACER_MAX_LAG_S) -> None:
        self.sim = sim
        self.clock = clock
        self.schedule = schedule
        self.send = send
        self.idle_poll = idle_poll
        self.max_lag = max_lag
        self._due: float | None = None  # simulated time
        self.running = False
        self.sent = 0

    def start(self, t: float) -> None:
        self.running = True
        self.sim.at(t, _P_PACER, self._run)

    def stop(self) -> None:
        self.running = False

    def _run(self, t: float) -> None:
        if not self.running:
            return
        if self._due is None or t - self._due > self.max_lag:
            self._due = t
        step = self.schedule(self.clock(t))
        if step is None:
            self._due = None
            self.sim.at(t + self.idle_poll, _P_PACER, self._run)
            return
        interval, factory = step
        self.send(factory())  # PacketTrack.recv() calls the factory when aiortc sends
        self.sent += 1
        self._due += interval
        self.sim.at(max(t, self._due), _P_PACER, self._run)


# ------------------------------------------------------------------------- the check


@dataclass
class SimResult:
    link: LinkSpec
    verdict: Verdict
    metrics: LinkMetrics
    session: ClientSession
    responder: Responder
    stopped_by: str
    """`finished` (the session said so), `deadline` (the cap) or `eof` (nothing left)."""
    stopped_early: bool
    """As `probe.py` computes it."""
    session_s: float
    """Simulated seconds from the session's start to the verdict."""
    total_s: float
    """Simulated seconds from the check's start (connection set-up included)."""
    up: DirectionStats
    down: DirectionStats
    up_transits: dict[str, list[tuple[float, float]]]
    down_transits: dict[str, list[tuple[float, float]]]
    errors: list[str]
    """Exceptions the receive taps swallowed (the engine logs and drops them)."""
    settings: ProbeSettings
    client_clock: float
    reflector_clock: float

    def ladder(self, name: str) -> list[tuple[float, float | None, bool]]:
        lad = getattr(self.session, name)
        return [(r.rung.rate_kbps, r.delivered_kbps, r.passed)
                for _, r in sorted(lad.results.items())]

    def reason_codes(self) -> list[str]:
        return [r.code for r in self.verdict.reasons]

    def counted_kinds(self, direction: str) -> tuple[str, ...]:
        """The packets a direction's loss figure is defined on (`session._up_counts`,
        `_down_counts`): probes (up) or echoes (down), plus load of the rungs that passed."""
        lad = self.session.up if direction == "up" else self.session.down
        passed = tuple(f"load:{i}" for i, r in lad.results.items() if r.passed)
        return ("probe" if direction == "up" else "echo",) + passed

    def true_loss_pct(self, direction: str) -> float | None:
        """Random loss the link really inflicted on the packets the figure counts."""
        stats = self.up if direction == "up" else self.down
        return stats.random_loss_pct(self.counted_kinds(direction))

    def true_jitter_ms(self, direction: str) -> float | None:
        """RFC 3550 jitter of the very packets netprobe's figure is computed on, from the
        link's own send and arrival times: up, the probes that reached the reflector before
        it sent the last echo the client got; down, the echoes the client got."""
        if direction == "up":
            last = self.session._last_echo
            if last is None:
                return None
            until = last.sent_at - self.reflector_clock
            transits = self.up_transits.get("probe", [])
        else:
            until = self.total_s
            transits = self.down_transits.get("echo", [])
        est = JitterEstimator()
        for sent, arrived in transits:
            if arrived <= until:
                est.update(sent, arrived)
        return est.jitter * 1000 if est.samples else None


def simulate(link: LinkSpec, seed: int = 0, settings: ProbeSettings | None = None,
             thresholds: Thresholds | None = None, client_clock: float = 1000.0,
             reflector_clock: float = 73_421.377) -> SimResult:
    """Run one check over `link`; deterministic for a given seed."""
    cfg = settings or ProbeSettings()
    thr = thresholds or load_thresholds()
    sim = Simulator()
    c_clock, r_clock = Clock(client_clock), Clock(reflector_clock)
    uplink = LinkDirection(sim, link.up, "up", seed)
    downlink = LinkDirection(sim, link.down, "down", seed)
    errors: list[str] = []
    state: dict[str, Any] = {"session": None, "stopped_by": "eof", "stopped_early": False,
                             "end": None}

    # --- reflector (ReflectorSession) ---------------------------------------------------
    responder = Responder()

    def reflector_send_audio(payload: bytes) -> None:
        downlink.send(len(payload) + PROBE_OVERHEAD_BYTES, "echo",
                      lambda t, p=payload: client_on_audio(p, t))

    def reflector_send_video(payload: bytes) -> None:
        downlink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                      lambda t, p=payload: client_on_video(p, t))

    def reflector_on_audio(payload: bytes, t: float) -> None:
        try:
            now = r_clock(t)
            if packet_type(payload) != TYPE_PROBE:
                return
            probe = decode_probe(payload)
            responder.on_probe(probe, now)
            # echo_track.push(factory): the factory runs when the echo is sent (at once)
            reflector_send_audio(encode_echo(responder.echo(probe, now, r_clock(sim.now))))
        except Exception as exc:  # install_tap swallows and logs
            errors.append(f"reflector audio: {exc!r}")

    def reflector_on_video(payload: bytes, t: float) -> None:
        try:
            if packet_type(payload) == TYPE_LOAD:
                responder.on_up_load(decode_load(payload), len(payload), r_clock(t))
        except Exception as exc:
            errors.append(f"reflector video: {exc!r}")

    def down_schedule(now: float) -> tuple[float, PayloadFactory] | None:
        request = responder.down_request(now)
        if request is None:
            return None
        size = max(request.payload_size, REFLECTOR_MIN_PAYLOAD)
        interval = (size + REFLECTOR_OVERHEAD) * 8 / (request.rate_kbps * 1000)

        def factory() -> bytes:
            return encode_load(responder.next_down_load(request, r_clock(sim.now)), size)

        return interval, factory

    # --- client (probe.py) --------------------------------------------------------------

    def client_on_audio(payload: bytes, t: float) -> None:
        session = state["session"]
        if session is None or state["end"] is not None:
            return
        try:
            if packet_type(payload) == TYPE_ECHO:
                session.on_echo(decode_echo(payload), c_clock(t))
        except Exception as exc:
            errors.append(f"client audio: {exc!r}")

    def client_on_video(payload: bytes, t: float) -> None:
        session = state["session"]
        if session is None or state["end"] is not None:
            return
        try:
            if packet_type(payload) == TYPE_LOAD:
                session.on_down_load(decode_load(payload), len(payload), c_clock(t))
        except Exception as exc:
            errors.append(f"client video: {exc!r}")

    def client_send_probe(payload: bytes) -> None:
        uplink.send(len(payload) + PROBE_OVERHEAD_BYTES, "probe",
                    lambda t, p=payload: reflector_on_audio(p, t))

    def client_send_load(payload: bytes) -> None:
        uplink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                    lambda t, p=payload: reflector_on_video(p, t))

    t_connect = link.connect_time_s
    # The reflector handles the offer about one RTT into the connection set-up (TCP
    # handshake, then the POST); its downlink pacer starts then, idle until probes arrive.
    t_offer = min(t_connect, link.base_rtt_ms / 1000 * 1.5 + 0.02)
    reflector_pacer = SimPacer(sim, r_clock, down_schedule, reflector_send_video)
    reflector_pacer.start(t_offer)

    deadline = cfg.max_duration_s - DEADLINE_MARGIN_S  # t0 = 0

    def start_session(t: float) -> None:
        now = c_clock(t)
        session = ClientSession(cfg, thr, now)
        state["session"] = session
        interval = cfg.probe_interval_ms / 1000

        def probe_schedule(_now: float) -> tuple[float, PayloadFactory]:
            return interval, lambda: encode_probe(session.next_probe(c_clock(sim.now)),
                                                  cfg.probe_size)

        def up_step(now: float) -> tuple[float, PayloadFactory] | None:
            rung = session.up_rung(now)
            if rung is None:
                return None
            return rung.interval, lambda: encode_load(
                session.next_up_load(rung, c_clock(sim.now)), rung.payload_size)

        pacers = [SimPacer(sim, c_clock, probe_schedule, client_send_probe),
                  SimPacer(sim, c_clock, up_step, client_send_load)]
        state["pacers"] = pacers
        for p in pacers:
            p.start(t)
        sim.at(t + TICK_S, _P_TICK, lambda tt: tick(tt, t + TICK_S))

    def tick(t: float, _planned: float) -> None:
        session: ClientSession = state["session"]
        now = c_clock(t)
        session.tick(now)
        session.progress(now)
        if session.finished(now):
            state["stopped_by"] = "finished"
            state["stopped_early"] = not (session.up.done and session.down.done) or any(
                len(ladder.results) < len(ladder.rungs) and all(
                    r.passed for r in ladder.results.values())
                for ladder in (session.up, session.down))
            return stop(t)
        if t >= deadline:
            state["stopped_by"] = "deadline"
            return stop(t)
        sim.at(t + TICK_S, _P_TICK, lambda tt: tick(tt, tt))

    def stop(t: float) -> None:
        state["end"] = t
        for p in state["pacers"]:
            p.stop()
        reflector_pacer.stop()
        sim.stopped = True

    sim.at(t_connect, _P_TICK, start_session)
    sim.run(until=cfg.max_duration_s + 5)

    session = state["session"]
    assert session is not None, "the session never started (connect_s beyond the cap?)"
    end = state["end"] if state["end"] is not None else sim.now
    metrics = session.metrics()
    verdict = classify(metrics, thr)
    return SimResult(
        link=link, verdict=verdict, metrics=metrics, session=session, responder=responder,
        stopped_by=state["stopped_by"], stopped_early=state["stopped_early"],
        session_s=end - t_connect, total_s=end, up=uplink.stats, down=downlink.stats,
        up_transits=uplink.transits, down_transits=downlink.transits, errors=errors,
        settings=cfg, client_clock=client_clock, reflector_clock=reflector_clock,
    )


def _load_kind(payload: bytes) -> str:
    """Link statistics key of a load packet: `load:<rung>` (read by the harness only)."""
    return f"load:{decode_load(payload).rung}"


def symmetric(delay_ms: float = 5.0, rate_kbps: float | None = None, loss_pct: float = 0.0,
              jitter_ms: float = 0.0, **kw: Any) -> LinkSpec:
    d = Direction(delay_ms=delay_ms, rate_kbps=rate_kbps, loss_pct=loss_pct,
                  jitter_ms=jitter_ms, **kw)
    return LinkSpec(up=d, down=d)


def with_rates(link: LinkSpec, up: float | None, down: float | None) -> LinkSpec:
    return replace(link, up=replace(link.up, rate_kbps=up), down=replace(link.down,
                                                                          rate_kbps=down))


__all__ = ["Direction", "LinkSpec", "SimResult", "simulate", "symmetric", "with_rates"]

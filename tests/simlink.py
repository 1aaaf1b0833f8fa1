"""Deterministic discrete-event simulation of a whole netprobe check over an emulated link.

Pure Python: a heap of timed events and seeded `random.Random` streams, no sockets, no clock,
no asyncio. The two ends run the project's real pure code (`ClientSession`, `Responder`,
`wire` encode/decode, `classify`) exactly the way the engine wires them to aiortc:

client (`netprobe/probe.py: run_check`)
    * the session is created once the connection is up (`connect_s` after the check began);
    * a probe `Pacer` sends `encode_probe(session.next_probe(now), probe_size)` every
      `session.probe_interval` s (read at each send: the session slows probes down on a
      slow link); an uplink-load `Pacer` asks `_up_step` (`session.up_rung(now)`)
      and sends `encode_load(session.next_up_load(rung, now), rung.payload_size)` every
      `rung.interval` s, polling every 10 ms while there is nothing to send;
    * the receive taps feed echoes to `session.on_echo` and load to
      `session.on_down_load(load, len(payload), now)`, swallowing exceptions;
    * the session is `ClientSession(settings, thresholds, now, deadline)` with the engine's
      deadline `t0 + max_duration_s - 0.2` (client clock);
    * every 50 ms: `session.tick(now)`, `session.progress(now)`, stop on
      `session.finished(now)` or at that deadline; then `session.metrics()` and
      `classify(metrics, thresholds)`.

reflector (`netprobe/reflector.py: ReflectorSession`)
    * its downlink `Pacer` starts when the offer is handled (before the client's session
      exists) and runs `_down_schedule`: `responder.down_request(now)` (the responder times
      each rung itself: `down_duration_ms` from the first probe asking for it, never
      restarted), payload `max(payload_size, 64)`, interval
      `(size + 66) * 8 / (rate_kbps * 1000)`, each packet from `responder.next_down_load`;
    * `_on_audio`: each probe goes to `responder.on_probe(probe, now)` and is answered at
      once with `encode_echo(responder.echo(probe, now, now))` (the echo's `down_sent`
      entries carry `(rung, sent, finished)`);
    * uplink load goes to `responder.on_up_load(load, len(payload), now)`.

The harness also records the truth it needs for its oracles, outside netprobe's code: the
fate of every probe, echo and load packet on the link (`random`, `queue` or `ok`), each
echo the client got, and RFC 3550 jitter of the link's real transits at every echo
(`SimResult.loss_truth`, `true_loss_pct`, `true_jitter_ms`). It reads only public ladder
state (`results`, `loaded_windows()`) to know which packets netprobe's figures count, and
applies the counting rules itself (`SimResult.counted_rungs`), so that a bug in the
ladder's own helpers (`near_capacity`) shows up as a mismatch.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from netprobe.config import ProbeSettings, load_thresholds
from netprobe.core.classify import Thresholds, Verdict, classify
from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    PROBE_OVERHEAD_BYTES,
    JitterEstimator,
    percentile,
)
from netprobe.core.metrics import LinkMetrics
from netprobe.core.responder import REPORTED_DOWN_RUNGS, REPORTED_UP_RUNGS, Responder
from netprobe.core.session import JITTER_WARMUP, ClientSession
from netprobe.core.wire import (
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
#: Wire size of a typical echo once the ladder runs (as many rung reports and downlink
#: counts as the responder puts in an echo).
TYPICAL_ECHO_WIRE = len(encode_echo(Echo(
    0, 0.0, 0, 0.0, 0.0, 0, 0, 0.0,
    tuple(RungReport(i, 0, 0, 0.0, 0.0, 0, 0) for i in range(REPORTED_UP_RUNGS)),
    tuple((i, 0, False) for i in range(REPORTED_DOWN_RUNGS))))) + PROBE_OVERHEAD_BYTES
#: `ProbeSettings.probe_size` by default.
DEFAULT_PROBE_SIZE = ProbeSettings().probe_size


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

    def true_rtt_range_ms(self, probe_size: int = DEFAULT_PROBE_SIZE) -> tuple[float, float]:
        """Unloaded RTT of a probe and its echo: propagation plus serialisation at the
        bottlenecks, for the smallest echo (warm-up) and a typical one (ladder running).
        With jitter the mean is higher still (no reordering holds packets back)."""
        probe = self.up.serialisation_s(probe_size + PROBE_OVERHEAD_BYTES)
        return (self.base_rtt_ms + 1000 * (probe + self.down.serialisation_s(MIN_ECHO_WIRE)),
                self.base_rtt_ms + 1000 * (probe + self.down.serialisation_s(TYPICAL_ECHO_WIRE)))

    def true_rtt_ms(self, probe_size: int = DEFAULT_PROBE_SIZE) -> float:
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
        """Per kind, (sent, arrived) of every delivered packet."""
        self.fates: dict[tuple[str, int], str] = {}
        """(kind, sequence number) -> `random` (lost on entry), `queue` (dropped by the
        full queue) or `ok` (delivered), for packets sent with a key."""

    def send(self, wire_bytes: int, kind: str, deliver: Callable[[float], None],
             key: int | None = None) -> None:
        t = self.sim.now
        st = self.stats
        st.bump(st.sent, kind)
        if self.spec.loss_pct and self._loss_rng.random() * 100 < self.spec.loss_pct:
            st.bump(st.lost_random, kind)
            if key is not None:
                self.fates[(kind, key)] = "random"
            return
        if self._bps is not None:
            backlog = max(0.0, self._busy_until - t) * self._bps / 8
            if backlog + wire_bytes > self._limit + 1e-6:  # float slack: exact fits fit
                st.bump(st.dropped_queue, kind)
                if key is not None:
                    self.fates[(kind, key)] = "queue"
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
        if key is not None:
            self.fates[(kind, key)] = "ok"
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


@dataclass(frozen=True)
class EchoSeen:
    """An echo as the client received it (first copy), with the link's truth at that time."""

    seq: int
    probe_sent_at: float
    """Client clock: when the answered probe left."""
    up_highest: int
    up_received: int
    arrived: float
    """Simulated time of arrival."""
    true_up_jitter_ms: float
    """RFC 3550 jitter of the probes the reflector had received when it sent this echo,
    from the link's own send and arrival times."""
    true_down_jitter_ms: float
    """RFC 3550 jitter of the echoes the client had received, this one included."""
    rtt: float
    """Round trip in seconds as the client reckons it (its clock at arrival, minus the
    probe's send time, minus the reflector's hold)."""


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
    up_fates: dict[tuple[str, int], str]
    down_fates: dict[tuple[str, int], str]
    echoes: list[EchoSeen]
    """Echoes the client's session got, in order of arrival."""
    iteration_cpu: list[tuple[float, float]]
    """(simulated time, CPU seconds) of each control-loop iteration's calls into the
    session (`tick`, `progress`, `finished`): the engine runs them in its event loop."""
    probe_slowdowns: list[tuple[float, float, bool]]
    """(client clock, new `session.probe_interval`, flooded) at each control-loop iteration
    that changed the probe spacing, as the harness saw it. `flooded`: the ladder had not
    started yet, so the probes alone were flooding the link (`_slow_probes_to_echo_spacing`);
    otherwise a failed rung showed the link too slow for them (`_pace_probes`)."""
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

    # -- the truth, on the packets netprobe's figures are defined on --------------------

    def _ladder(self, direction: str) -> Any:
        return self.session.up if direction == "up" else self.session.down

    def loaded_windows(self, direction: str) -> list[tuple[float, float]]:
        """The periods (client clock) the figures of `direction` leave out, as
        `ClientSession._analyse` defines them: the ladder's `loaded_windows()`, plus, if the
        probes alone flooded the link, everything from the session's start to the last
        time they were slowed down for it (`probe_slowdowns`); each window then extended by
        the queueing delay seen in it (the highest RTT of a probe sent in it above the least
        RTT of all: a queue takes that long to drain). RTTs and slowdowns are the harness's
        own records, not the session's."""
        windows = list(self._ladder(direction).loaded_windows())
        floods = [at for at, _, flooded in self.probe_slowdowns if flooded]
        if floods:
            windows.append((self.session.started_at, floods[-1]))
        if not self.echoes or not windows:
            return windows
        base = min(e.rtt for e in self.echoes)
        return [(ws, we + max((e.rtt for e in self.echoes if ws <= e.probe_sent_at <= we),
                              default=base) - base)
                for ws, we in windows]

    def calm(self, start: float, end: float, direction: str) -> bool:
        """[start, end] (client clock) meets none of `loaded_windows(direction)`."""
        return not any(ws <= end and start <= we for ws, we in self.loaded_windows(direction))

    def counted_rungs(self, direction: str) -> list[int]:
        """Rungs whose load the loss figure counts (`ClientSession._analyse`): those that
        passed *well below* capacity. A passed rung right before a failed one ran close to
        the link's capacity (`Ladder.near_capacity`, which this mirrors from `results`
        alone): it may have filled the queue, so it is a loaded window, not counted."""
        results = self._ladder(direction).results
        return sorted(i for i, r in results.items()
                      if r.passed and not (i + 1 in results and not results[i + 1].passed))

    def counted_packets(self, direction: str) -> list[tuple[str, int]]:
        """The packets the loss figure counts (`ClientSession._analyse`): probes (up) or
        echoes (down) of calm stretches between consecutive echoes (a stretch is calm if it
        meets no loaded window of that direction's ladder), plus the load of
        `counted_rungs`. Read from what the client received and the ladders' windows, not
        from the session's own counters."""
        out: list[tuple[str, int]] = []
        prev_seq, prev_t, prev_hi = -1, self.session.started_at, -1
        for e in sorted(self.echoes, key=lambda x: x.seq):
            if self.calm(prev_t, e.probe_sent_at, "up") and e.up_highest > prev_hi:
                out += [("probe", k) for k in range(prev_hi + 1, e.up_highest + 1)] \
                    if direction == "up" else []
            if self.calm(prev_t, e.probe_sent_at, "down") and direction == "down":
                out += [("echo", k) for k in range(prev_seq + 1, e.seq + 1)]
            prev_seq, prev_t, prev_hi = e.seq, e.probe_sent_at, max(prev_hi, e.up_highest)
        fates = self.up_fates if direction == "up" else self.down_fates
        for i in self.counted_rungs(direction):
            out += [k for k in fates if k[0] == f"load:{i}"]
        return out

    def loss_truth(self, direction: str) -> dict[str, int]:
        """Fates on the link of the packets the loss figure counts."""
        fates = self.up_fates if direction == "up" else self.down_fates
        tally = {"counted": 0, "random": 0, "queue": 0, "ok": 0}
        for k in self.counted_packets(direction):
            tally["counted"] += 1
            tally[fates.get(k, "ok")] += 1
        return tally

    def true_loss_pct(self, direction: str) -> float | None:
        """Random loss the link really inflicted on the packets the figure counts (a queue
        drop there is self-inflicted loss that the figure should not contain)."""
        t = self.loss_truth(direction)
        return 100 * t["random"] / t["counted"] if t["counted"] else None

    def true_jitter_ms(self, direction: str) -> float | None:
        """netprobe's jitter figure computed on the link's truth: the median, over the same
        echoes (calm for `direction`, after the estimator's warm-up of
        `session.JITTER_WARMUP`), of the RFC 3550 jitter of the real transits."""
        values = [e.true_up_jitter_ms if direction == "up" else e.true_down_jitter_ms
                  for i, e in enumerate(self.echoes)
                  if i >= JITTER_WARMUP and self.calm(e.probe_sent_at, e.probe_sent_at,
                                                      direction)]
        return percentile(values, 50) if values else None

    def down_rung_sends(self) -> dict[int, tuple[int, float, float]]:
        """Per downlink rung: (packets the reflector sent, send times of the first and last
        delivered packet, simulated s)."""
        out = {}
        for kind, tr in self.down_transits.items():
            if kind.startswith("load:"):
                sent = self.down.sent.get(kind, 0)
                out[int(kind[5:])] = (sent, tr[0][0], tr[-1][0])
        return out


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
    # The truth for jitter: RFC 3550 on the link's own send and arrival times.
    true_up_jitter, true_down_jitter = JitterEstimator(), JitterEstimator()
    up_jitter_at_echo: dict[int, float] = {}
    echoes_seen: list[EchoSeen] = []
    iteration_cpu: list[tuple[float, float]] = []
    probe_slowdowns: list[tuple[float, float, bool]] = []
    echo_seqs: set[int] = set()

    # --- reflector (ReflectorSession) ---------------------------------------------------
    responder = Responder()

    def reflector_send_audio(payload: bytes) -> None:
        seq, sent = decode_echo(payload).seq, sim.now
        up_jitter_at_echo[seq] = true_up_jitter.jitter * 1000
        downlink.send(len(payload) + PROBE_OVERHEAD_BYTES, "echo",
                      lambda t, p=payload: client_on_audio(p, t, sent), key=seq)

    def reflector_send_video(payload: bytes) -> None:
        downlink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                      lambda t, p=payload: client_on_video(p, t), key=decode_load(payload).seq)

    def reflector_on_audio(payload: bytes, t: float, sent: float) -> None:
        # ReflectorSession._on_audio: on_probe, then echo_track.push(factory); the factory
        # (responder.echo(probe, now, time.monotonic())) runs when the echo is sent: at once.
        try:
            now = r_clock(t)
            if packet_type(payload) != TYPE_PROBE:
                return
            probe = decode_probe(payload)
            true_up_jitter.update(sent, t)  # harness truth (no duplicates on this link)
            responder.on_probe(probe, now)
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

    def client_on_audio(payload: bytes, t: float, sent: float) -> None:
        session = state["session"]
        if session is None or state["end"] is not None:
            return
        try:
            if packet_type(payload) == TYPE_ECHO:
                echo = decode_echo(payload)
                if echo.seq not in echo_seqs:  # the harness's record (first copies)
                    echo_seqs.add(echo.seq)
                    true_down_jitter.update(sent, t)
                    echoes_seen.append(EchoSeen(
                        echo.seq, echo.probe_sent_at, echo.up_probes_highest,
                        echo.up_probes_received, t, up_jitter_at_echo[echo.seq],
                        true_down_jitter.jitter * 1000,
                        c_clock(t) - echo.probe_sent_at - max(0.0, echo.hold)))
                session.on_echo(echo, c_clock(t))
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
        sent = sim.now
        uplink.send(len(payload) + PROBE_OVERHEAD_BYTES, "probe",
                    lambda t, p=payload: reflector_on_audio(p, t, sent),
                    key=decode_probe(payload).seq)

    def client_send_load(payload: bytes) -> None:
        uplink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                    lambda t, p=payload: reflector_on_video(p, t), key=decode_load(payload).seq)

    t_connect = link.connect_time_s
    # The reflector handles the offer about one RTT into the connection set-up (TCP
    # handshake, then the POST); its downlink pacer starts then, idle until probes arrive.
    t_offer = min(t_connect, link.base_rtt_ms / 1000 * 1.5 + 0.02)
    reflector_pacer = SimPacer(sim, r_clock, down_schedule, reflector_send_video)
    reflector_pacer.start(t_offer)

    deadline = cfg.max_duration_s - DEADLINE_MARGIN_S  # t0 = 0

    def start_session(t: float) -> None:
        now = c_clock(t)
        # probe.py: deadline = t0 + max_duration_s - 0.2, handed to the session (client clock)
        session = ClientSession(cfg, thr, now, c_clock(deadline))
        state["session"] = session

        def probe_schedule(_now: float) -> tuple[float, PayloadFactory]:
            return session.probe_interval, lambda: encode_probe(
                session.next_probe(c_clock(sim.now)), cfg.probe_size)

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
        interval, ladder_started = session.probe_interval, session.up.started
        cpu = time.process_time()
        session.tick(now)
        session.progress(now)
        finished = session.finished(now)
        iteration_cpu.append((t, time.process_time() - cpu))
        if session.probe_interval != interval:  # the harness's record (public attribute)
            probe_slowdowns.append((now, session.probe_interval, not ladder_started))
        if finished:
            state["stopped_by"] = "finished"
            state["stopped_early"] = session.stopped_early
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
        up_transits=uplink.transits, down_transits=downlink.transits,
        up_fates=uplink.fates, down_fates=downlink.fates, echoes=echoes_seen,
        iteration_cpu=iteration_cpu, probe_slowdowns=probe_slowdowns, errors=errors,
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


__all__ = ["Direction", "EchoSeen", "LinkSpec", "SimResult", "simulate", "symmetric",
           "with_rates"]

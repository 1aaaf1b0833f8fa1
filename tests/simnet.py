"""The simulated network of `simlink.py`: an emulated link and a discrete-event engine.

Pure Python: a heap of timed events and seeded `random.Random` streams, no sockets, no clock.

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

from netprobe.config import ProbeSettings
from netprobe.core.pacing import (
    ECHO_WIRE_BYTES,
    MIN_ECHO_WIRE_BYTES,
    probe_wire_bytes,
    serialisation_ms,
)

# Event priorities at equal times: arrivals first, then pacers, then the control loop.
P_ARRIVAL, P_PACER, P_TICK = 0, 1, 2
#: `ProbeSettings.probe_size` by default.
DEFAULT_PROBE_SIZE = ProbeSettings().probe_size


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

    def serialisation_ms(self, wire_bytes: int) -> float:
        return serialisation_ms(wire_bytes, self.rate_kbps)


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
        probe = self.up.serialisation_ms(probe_wire_bytes(probe_size))
        return (self.base_rtt_ms + probe + self.down.serialisation_ms(MIN_ECHO_WIRE_BYTES),
                self.base_rtt_ms + probe + self.down.serialisation_ms(ECHO_WIRE_BYTES))

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
        self.sim.at(release, P_ARRIVAL, deliver)


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



def symmetric(delay_ms: float = 5.0, rate_kbps: float | None = None, loss_pct: float = 0.0,
              jitter_ms: float = 0.0, **kw: Any) -> LinkSpec:
    d = Direction(delay_ms=delay_ms, rate_kbps=rate_kbps, loss_pct=loss_pct,
                  jitter_ms=jitter_ms, **kw)
    return LinkSpec(up=d, down=d)


def with_rates(link: LinkSpec, up: float | None, down: float | None) -> LinkSpec:
    return replace(link, up=replace(link.up, rate_kbps=up), down=replace(link.down,
                                                                          rate_kbps=down))

"""Sans-I/O model of one direction of an emulated link (docs/lab.md, "How a packet goes
through a link", says the same for users).

Nothing here reads a clock, touches a file or a socket: every method that depends on time takes
``now`` (seconds on any monotonic clock) as an argument, like aioquic's connection. The
forwarder (``forwarder.py``) feeds packets in as they arrive and writes out what `Link.due`
returns; tests drive the same object with made-up times. A packet goes through, in order:

1. **ingress drops**: ``block_udp`` (for packets the caller marks ``udp=True``), an outage
   window, random loss (``loss_pct``) and Gilbert-Elliott loss are decided on arrival, so a
   dropped packet takes no queue space (as netem does);
2. **a token-bucket policer** (``policer``, `netprobe.lab.bucket`): a packet that finds fewer
   tokens than its size is dropped;
3. **the bottleneck**: a drop-tail FIFO drained at a constant rate (``rate_kbps``, counting
   whole IP packets) or at the delivery opportunities of a mahimahi trace; with neither, no
   bottleneck. With a **shaper** (``shaper``, a token bucket) the queue's head also waits for
   its tokens: a burst passes at the line rate (``rate_kbps``; without one at once) until the
   bucket is empty, then the sustained rate, while the queue grows;
4. **the propagation delay** ``delay_ms`` plus a uniform jitter sample in ``±jitter_ms``
   (clipped at zero), after the bottleneck as mahimahi's ``mm-delay`` outside ``mm-link``.
   Unless ``reorder`` is set, release = ``max(previous release, exit + delay + jitter)``.
   A packet due inside an outage is dropped too.

Traces follow mahimahi's ``LinkQueue``: each line is one delivery opportunity of 1504 bytes
(its ``PACKET_SIZE``: a 1500-byte IP packet plus the 4-byte TUN header), a packet costs its IP
size plus 4, small packets share an opportunity, a packet may span two, an opportunity that
finds the queue empty is lost, and the trace repeats with the period of its last timestamp.
All times in a config (outages, trace position) count from the link's ``epoch``, the lab's
start, also after `Link.reconfigure`.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from netprobe.errors import ConfigError
from netprobe.lab.bucket import BucketFill, TokenBucket

P = TypeVar("P")

#: Bytes one mahimahi delivery opportunity can carry (mahimahi's ``PACKET_SIZE``).
OPPORTUNITY_BYTES = 1504
#: Bytes mahimahi counts per packet on top of the IP packet (its TUN packet-information header).
TUN_FRAMING_BYTES = 4


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state Markov (Gilbert-Elliott) loss, decided per packet.

    The state moves after each packet's loss decision. The long-run loss rate is
    ``(p_bad * loss_in_bad + p_good * loss_in_good)`` with ``p_bad = p_good_to_bad /
    (p_good_to_bad + p_bad_to_good)``; with ``loss_in_bad = 1`` and ``loss_in_good = 0`` the
    mean burst of consecutive losses is ``1 / p_bad_to_good`` packets. All fields are
    probabilities in [0, 1], not percentages.
    """

    p_good_to_bad: float
    """Probability of moving from the good to the bad state after a packet."""
    p_bad_to_good: float
    """Probability of moving from the bad to the good state after a packet."""
    loss_in_bad: float = 1.0
    """Probability that a packet is lost while in the bad state."""
    loss_in_good: float = 0.0
    """Probability that a packet is lost while in the good state."""

    def __post_init__(self) -> None:
        for name in ("p_good_to_bad", "p_bad_to_good", "loss_in_bad", "loss_in_good"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.p_good_to_bad > 0 and self.p_bad_to_good == 0:
            raise ConfigError("p_bad_to_good must be > 0 (the link would stay bad for ever)")

    @property
    def mean_loss(self) -> float:
        """Long-run fraction of packets lost (0..1)."""
        total = self.p_good_to_bad + self.p_bad_to_good
        p_bad = self.p_good_to_bad / total if total > 0 else 0.0
        return p_bad * self.loss_in_bad + (1.0 - p_bad) * self.loss_in_good


@dataclass(frozen=True)
class LinkConfig:
    """How one direction of the emulated link behaves. Defaults give a perfect link."""

    delay_ms: float = 0.0
    """One-way propagation delay added after the bottleneck, in milliseconds."""
    jitter_ms: float = 0.0
    """Half-width of the uniform jitter added to ``delay_ms`` per packet, in milliseconds."""
    reorder: bool = False
    """Let jitter reorder packets. False keeps FIFO order (release = max(previous, own))."""
    jitter_hold_ms: float = 0.0
    """Keep each jitter sample for this long (ms) instead of drawing one per packet: the
    path's delay varies over time (cross traffic, Wi-Fi retries), and a fast stream sees it
    instead of being bunched by FIFO to nearly the maximum delay, with almost no jitter."""
    loss_pct: float = 0.0
    """Independent random loss, in percent (0..100) of packets arriving at the link."""
    gilbert: GilbertElliott | None = None
    """Bursty loss on top of ``loss_pct``; None for none."""
    rate_kbps: float | None = None
    """Bottleneck rate in kbit/s (1000 bit/s) of whole IP packets; None for no limit."""
    queue_packets: int | None = 1000
    """Drop-tail depth of the bottleneck queue in packets (None: no packet limit). Packets
    waiting behind the one being sent count; the one on the wire does not."""
    queue_bytes: int | None = None
    """Drop-tail depth of the bottleneck queue in bytes of IP packets (None: no byte limit)."""
    trace: tuple[int, ...] | None = field(default=None, repr=False)
    """Mahimahi delivery opportunities (ms from the start, non-decreasing, repeating with a
    period of the last value). Replaces ``rate_kbps`` as the bottleneck when set."""
    trace_name: str | None = None
    """Where ``trace`` came from, for display only."""
    outages: tuple[tuple[float, float], ...] = ()
    """Windows ``(start_s, end_s)`` from the lab's start during which every packet is lost."""
    seed: int | None = None
    """Seed of the loss and jitter random generators (None: fresh random seeds)."""
    block_udp: bool = False
    """Drop every UDP datagram (IPv4 protocol 17 / IPv6 next header 17) in this direction, as
    a firewall that blocks UDP does; TCP and the rest pass. Counted in ``dropped_blocked``."""
    policer: TokenBucket | None = None
    """Token-bucket policer in front of the bottleneck: packets without tokens are dropped
    (counted in ``dropped_policer``); ``rate_kbps`` is then the burst (line) rate."""
    shaper: TokenBucket | None = None
    """Token-bucket shaper: the queue's head waits for its tokens, then is sent at the line
    rate ``rate_kbps`` (at once without one). Not with ``trace`` nor with ``policer``."""

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "jitter_hold_ms"):
            if not ((value := getattr(self, name)) >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.loss_pct <= 100.0:
            raise ConfigError(f"loss_pct must be in [0, 100], got {self.loss_pct!r}")
        rate = self.rate_kbps
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"rate_kbps must be > 0 (or absent for no limit), got {rate!r}")
        for name in ("queue_packets", "queue_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.trace is not None:
            if self.rate_kbps is not None:
                raise ConfigError("give either rate_kbps or trace, not both")
            if not self.trace or self.trace[-1] <= 0:
                raise ConfigError("a trace needs at least one timestamp and must last > 0 ms")
            if self.trace[0] < 0 or list(self.trace) != sorted(self.trace):
                raise ConfigError("trace timestamps must be >= 0 and non-decreasing")
        if self.shaper is not None and (self.policer is not None or self.trace is not None):
            raise ConfigError("a shaper cannot be combined with a policer or a trace")
        for window in self.outages:
            if len(window) != 2 or not 0 <= window[0] < window[1]:
                raise ConfigError(
                    f"an outage is [start_s, end_s] with 0 <= start < end, got {window!r}"
                )

    @property
    def trace_mean_kbps(self) -> float | None:
        """Mean capacity of the trace in kbit/s of IP packets (1500 bytes per opportunity)."""
        if self.trace is None:
            return None
        return len(self.trace) * 1500 * 8 / self.trace[-1]

    @property
    def queued(self) -> bool:
        """Whether packets go through the bottleneck queue (a rate, a trace or a shaper)."""
        return self.rate_kbps is not None or self.trace is not None or self.shaper is not None

    @property
    def sustained_kbps(self) -> float | None:
        """The rate it keeps up (kbit/s): the bottleneck's (a trace's mean) or a bucket's."""
        buckets = [b.rate_kbps for b in (self.policer, self.shaper) if b is not None]
        return min(filter(None, (self.rate_kbps, self.trace_mean_kbps, *buckets)), default=None)


@dataclass(frozen=True)
class LinkStats:
    """Counters of one direction since the lab started."""

    submitted: int
    """Packets that arrived at the link."""
    delivered: int
    """Packets released at the far end."""
    delivered_bytes: int
    """IP bytes of the delivered packets."""
    dropped_loss: int
    """Packets dropped by random or Gilbert-Elliott loss."""
    dropped_queue: int
    """Packets dropped because the bottleneck queue was full (drop-tail)."""
    dropped_outage: int
    """Packets dropped because they arrived, or were due, during an outage."""
    queued: int
    """Packets in the bottleneck queue now (including the one being sent)."""
    in_flight: int
    """Packets past the bottleneck, waiting out their delay."""
    dropped_blocked: int = 0
    """Packets dropped because their protocol is blocked (``block_udp``)."""
    dropped_policer: int = 0
    """Packets dropped by the token-bucket policer (too few tokens when they arrived)."""


class Link(Generic[P]):
    """One direction of the emulated link: packets in with `submit`, out with `due`.

    ``P`` is whatever the caller uses as a packet (bytes in the forwarder, ints in tests); the
    model only looks at the ``size`` given with it. Call `next_deadline` after each `submit` or
    `due` to know when to call `due` next.
    """

    def __init__(self, config: LinkConfig, *, epoch: float) -> None:
        self._config = config
        self._epoch = epoch
        # Separate generators, so loss decisions depend only on the order of arrivals, not
        # on how they interleave with jitter draws (which depend on timing).
        self._rng = random.Random(config.seed)
        self._jitter_rng = random.Random(None if config.seed is None else f"{config.seed}/jitter")
        self._jitter_slot: int | None = None
        self._jitter_value = 0.0
        self._ge_bad = False
        self._queue: deque[tuple[P, int]] = deque()
        self._queue_bytes = 0
        self._tx: tuple[P, int] | None = None  # packet on the wire at the bottleneck
        self._tx_done = 0.0  # rate mode: when it has been serialised
        self._free_at = epoch  # rate mode: since when the wire has been free
        bucket = config.policer or config.shaper
        self._bucket = BucketFill(bucket, epoch) if bucket is not None else None
        self._tx_left = 0  # trace mode: bytes it still needs
        self._opportunity = 0  # trace mode: index of the next unused opportunity
        self._line: list[tuple[float, int, P, int]] = []  # (release, seq, packet, size) heap
        self._seq = 0
        self._last_release = -math.inf
        self._submitted = self._delivered = self._delivered_bytes = self._dropped_loss = 0
        self._dropped_queue = self._dropped_outage = self._dropped_blocked = 0
        self._dropped_policer = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def config(self) -> LinkConfig:
        """The configuration in force."""
        return self._config

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        return LinkStats(
            submitted=self._submitted,
            delivered=self._delivered,
            delivered_bytes=self._delivered_bytes,
            dropped_loss=self._dropped_loss,
            dropped_queue=self._dropped_queue,
            dropped_outage=self._dropped_outage,
            queued=len(self._queue) + (self._tx is not None),
            in_flight=len(self._line),
            dropped_blocked=self._dropped_blocked,
            dropped_policer=self._dropped_policer,
        )

    def bucket_level(self, now: float) -> float | None:
        """Tokens (bytes) in the policer's or shaper's bucket at ``now``; None without one."""
        return self._bucket.level(now) if self._bucket else None

    def submit(self, packet: P, size: int, now: float, *, udp: bool = False) -> bool:
        """A packet of ``size`` IP bytes arrives at ``now`` (``udp``: it is a UDP datagram,
        which ``block_udp`` drops). False if it was dropped."""
        self._advance(now)
        self._submitted += 1
        cfg = self._config
        if udp and cfg.block_udp:
            self._dropped_blocked += 1
            return False
        if cfg.outages and self._in_outage(now):
            self._dropped_outage += 1
            return False
        if self._lost():
            self._dropped_loss += 1
            return False
        if cfg.policer and self._bucket and not self._bucket.take(size, now):
            self._dropped_policer += 1
            return False
        if not cfg.queued:
            self._to_line(packet, size, now)
            return True
        idle = self._tx is None and not self._queue  # an idle bottleneck takes any packet
        if not idle and (
            (cfg.queue_packets is not None and len(self._queue) >= cfg.queue_packets)
            or (cfg.queue_bytes is not None and self._queue_bytes + size > cfg.queue_bytes)
        ):
            self._dropped_queue += 1
            return False
        if idle:
            self._free_at = now
        self._queue.append((packet, size))
        self._queue_bytes += size
        self._advance(now)  # an idle bottleneck starts it (a shaper: once it has tokens)
        return True

    def due(self, now: float) -> list[P]:
        """Packets whose release time is ``<= now``, in release order."""
        self._advance(now)
        line = self._line
        out: list[P] = []
        while line and line[0][0] <= now:
            release, _, packet, size = heapq.heappop(line)
            if self._config.outages and self._in_outage(release):
                self._dropped_outage += 1
                continue
            self._delivered += 1
            self._delivered_bytes += size
            out.append(packet)
        return out

    def next_deadline(self) -> float | None:
        """When `due` should next be called (a release or a bottleneck event), or None."""
        deadline = self._line[0][0] if self._line else None
        event: float | None = None
        if self._config.trace is not None:
            if self._tx is not None or self._queue:
                event = self._opportunity_time(self._opportunity)
        elif self._tx is not None:
            event = self._tx_done
        elif self._queue:  # the head waits for the shaper's tokens
            event = self._head_start()
        if event is None:
            return deadline
        return event if deadline is None else min(deadline, event)

    def reconfigure(self, config: LinkConfig, now: float) -> None:
        """Switch to ``config`` at ``now``, keeping the packets already in the link.

        Packets past the bottleneck keep their release times. Queued packets stay and drain at
        the new rate or trace; a packet being serialised at a constant rate keeps the part
        already sent. A queue deeper than the new limit is not cut (arrivals are dropped until
        it is below), and a link without bottleneck releases the queue at once. A token bucket
        keeps its fill (capped at the new depth, refilling at the new rate, also from policer
        to shaper); one that appears starts full. The random generators carry on (the new
        seed is ignored).
        """
        self._advance(now)
        old = self._config
        self._config = config
        if config.gilbert is None:
            self._ge_bad = False
        bucket = config.policer or config.shaper
        if bucket is None or self._bucket is None:
            self._bucket = None if bucket is None else BucketFill(bucket, now)
        else:
            self._bucket.reconfigure(bucket, now)
        if self._tx is not None:
            if old.trace is None and config.trace is None and config.queued:
                assert old.rate_kbps is not None  # a packet on the wire: it was serialising
                rate = config.rate_kbps
                left_s = 0.0 if rate is None else (self._tx_done - now) * old.rate_kbps / rate
                self._tx_done = now + max(0.0, left_s)
                return
            # Mode change (rate <-> trace <-> none): restart the packet on the wire.
            self._queue.appendleft(self._tx)
            self._queue_bytes += self._tx[1]
            self._tx = None
        self._free_at = max(self._free_at, now)
        if not config.queued:
            while self._queue:
                packet, size = self._queue.popleft()
                self._to_line(packet, size, now)
            self._queue_bytes = 0
        self._advance(now)

    # -- internals ----------------------------------------------------------------------------

    def _lost(self) -> bool:
        cfg = self._config
        lost = cfg.loss_pct > 0 and self._rng.random() * 100.0 < cfg.loss_pct
        ge = cfg.gilbert
        if ge is not None:
            rng = self._rng
            if self._ge_bad:
                lost = (rng.random() < ge.loss_in_bad) or lost
                if rng.random() < ge.p_bad_to_good:
                    self._ge_bad = False
            else:
                lost = (ge.loss_in_good > 0 and rng.random() < ge.loss_in_good) or lost
                if rng.random() < ge.p_good_to_bad:
                    self._ge_bad = True
        return lost

    def _in_outage(self, t: float) -> bool:
        rel = t - self._epoch
        return any(start <= rel < end for start, end in self._config.outages)

    def _to_line(self, packet: P, size: int, exit_time: float) -> None:
        cfg = self._config
        delay = cfg.delay_ms / 1000.0
        if cfg.jitter_ms > 0:
            if cfg.jitter_hold_ms > 0:
                slot = math.floor((exit_time - self._epoch) * 1000.0 / cfg.jitter_hold_ms)
                if slot != self._jitter_slot:
                    self._jitter_slot = slot
                    self._jitter_value = self._jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
                sample = self._jitter_value
            else:
                sample = self._jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
            delay = max(0.0, delay + sample / 1000.0)
        release = exit_time + delay
        if not cfg.reorder and release < self._last_release:
            release = self._last_release
        if release > self._last_release:
            self._last_release = release
        self._seq += 1
        heapq.heappush(self._line, (release, self._seq, packet, size))

    def _head_start(self) -> float:
        """When the queue's head may go on the wire: once free and (shaper) it has tokens."""
        if self._config.shaper is None:
            return self._free_at
        assert self._bucket is not None
        return max(self._free_at, self._bucket.ready_at(self._queue[0][1]))

    def _start_head(self, start: float) -> None:
        """Put the queue's head on the wire at ``start``."""
        cfg = self._config
        packet, size = self._queue.popleft()
        self._queue_bytes -= size
        self._tx = (packet, size)
        if cfg.shaper is not None:
            assert self._bucket is not None
            self._bucket.spend(size, start)
        if cfg.trace is not None:
            self._tx_left = size + TUN_FRAMING_BYTES
            # Opportunities that passed while the queue was empty are lost (mahimahi burns
            # every opportunity up to and including the current millisecond before enqueueing).
            self._opportunity = self._first_opportunity_after(start)
        else:  # no rate: a shaper alone sends at once
            rate = cfg.rate_kbps
            self._tx_done = start + (0.0 if rate is None else size * 8.0 / (rate * 1000.0))

    def _advance(self, now: float) -> None:
        """Run the bottleneck up to ``now``: move serialised packets into the delay line."""
        if self._config.trace is not None:
            if self._tx is None and self._queue:
                self._start_head(self._free_at)
            self._advance_trace(now)
            return
        while True:
            if self._tx is not None:
                if self._tx_done > now:
                    return
                packet, size = self._tx
                self._tx = None
                self._free_at = self._tx_done
                self._to_line(packet, size, self._tx_done)
            if not self._queue:
                return
            start = self._head_start()
            if start > now:
                return
            self._start_head(start)

    def _advance_trace(self, now: float) -> None:
        while self._tx is not None:
            when = self._opportunity_time(self._opportunity)
            if when > now:
                return
            self._opportunity += 1
            budget = OPPORTUNITY_BYTES
            while budget > 0 and self._tx is not None:
                take = min(budget, self._tx_left)
                self._tx_left -= take
                budget -= take
                if self._tx_left == 0:
                    packet, size = self._tx
                    self._to_line(packet, size, when)
                    self._tx = None
                    if self._queue:
                        packet, size = self._queue.popleft()
                        self._queue_bytes -= size
                        self._tx = (packet, size)
                        self._tx_left = size + TUN_FRAMING_BYTES

    def _opportunity_time(self, index: int) -> float:
        trace = self._config.trace
        assert trace is not None
        cycle, i = divmod(index, len(trace))
        return self._epoch + (cycle * trace[-1] + trace[i]) / 1000.0

    def _first_opportunity_after(self, now: float) -> int:
        trace = self._config.trace
        assert trace is not None
        period = trace[-1]
        rel_ms = max(0.0, (now - self._epoch) * 1000.0)
        cycle = int(rel_ms // period)
        i = bisect.bisect_right(trace, rel_ms - cycle * period)
        index = cycle * len(trace) + i
        # Float rounding at a cycle boundary: step forward until strictly after ``now``.
        while self._opportunity_time(index) <= now:
            index += 1
        return index

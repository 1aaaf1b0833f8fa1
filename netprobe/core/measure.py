"""Pure measurement maths: jitter, loss accounting, throughput, confidence intervals.

Nothing here touches a socket or a clock: callers pass times in as arguments.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Bytes a load packet costs on the wire beyond its payload, measured on a loopback check
#: (aiortc 1.16): RTP header (12), header extensions abs-send-time and mid (12), VP8 payload
#: descriptor (4), SRTP tag (16: aiortc negotiates AEAD_AES_128_GCM), UDP (8), IPv4 (20).
#: Used so that rates compare with what a link's rate limit counts.
LOAD_OVERHEAD_BYTES = 72
#: The same for a probe or echo packet on the audio stream, measured on a loopback check
#: (aiortc 1.16): RTP header (12), header extensions mid and audio level (8), SRTP GCM tag
#: (16), UDP (8), IPv4 (20).
PROBE_OVERHEAD_BYTES = 64


class JitterEstimator:
    """RFC 3550 (section 6.4.1, appendix A.8) interarrival jitter.

    J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16, where D is the difference of the transit
    times (arrival - send) of consecutive packets *in arrival order*. Send and arrival times
    may be on different clocks: a constant offset cancels in D.
    """

    def __init__(self) -> None:
        self._last_transit: float | None = None
        self.jitter = 0.0
        """Current estimate, in the unit of the times given (seconds here)."""
        self.samples = 0
        """Number of transit differences folded in."""

    def update(self, sent_at: float, arrived_at: float) -> float:
        transit = arrived_at - sent_at
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            self.jitter += (d - self.jitter) / 16.0
            self.samples += 1
        self._last_transit = transit
        return self.jitter


#: How far below the highest sequence number a `SequenceTracker` remembers which numbers it
#: has seen (one byte each). A packet older than that cannot be told from a duplicate and is
#: dropped (`SequenceTracker.stale`): 4096 probes are 80 s of a check's probe stream, 13 s of
#: a rung at 300 packets/s; nothing legitimate arrives that late.
SEQ_MEMORY = 4096


class SequenceTracker:
    """Counts distinct packets of a stream numbered from a known first sequence number.

    Duplicates are counted apart and never make up for a lost packet; a packet that arrives
    after a higher-numbered one counts as reordered, not lost.

    Bounded whatever numbers a peer sends (lesson 11): memory is one byte per number of the
    last `memory` below the highest seen, and each packet costs O(1), or one C-speed pass over
    that memory when the highest number jumps. A jump of any size is accepted (the numbers in
    between count as missing): no loop ever runs over the numbers themselves.
    """

    def __init__(self, memory: int = SEQ_MEMORY) -> None:
        if memory < 2:
            raise ValueError("a sequence tracker needs a memory of at least 2")
        self._memory = memory
        self._ring = bytearray(memory)
        """1 at `seq % memory` for each seq received in (highest - memory, highest]."""
        self.highest = -1
        """Highest sequence number received, -1 before the first."""
        self.lowest: int | None = None
        """Lowest sequence number received."""
        self.duplicates = 0
        """Packets received more than once (each extra copy counts one)."""
        self.reordered = 0
        """Packets that arrived after a packet with a higher sequence number."""
        self.stale = 0
        """Packets dropped because they were more than `memory` below the highest (too old to
        tell from a duplicate); not counted as received."""
        self._received = 0
        self._forgotten = 0  # distinct packets received that fell out of the ring
        self._settled = -1
        self._settled_received = 0

    @property
    def received(self) -> int:
        """Distinct packets received."""
        return self._received

    def _count(self, after: int, upto: int) -> int:
        """Packets in the ring numbered after < seq <= upto (a span of at most `memory`)."""
        n = upto - after
        if n <= 0:
            return 0
        m = self._memory
        start = (after + 1) % m
        if start + n <= m:
            return self._ring.count(1, start, start + n)
        return self._ring.count(1, start, m) + self._ring.count(1, 0, start + n - m)

    def _clear(self, after: int, upto: int) -> None:
        """Free the ring slots of after < seq <= upto (a span of at most `memory`)."""
        n = upto - after
        m = self._memory
        start = (after + 1) % m
        if start + n <= m:
            self._ring[start:start + n] = bytes(n)
        else:
            self._ring[start:m] = bytes(m - start)
            self._ring[0:start + n - m] = bytes(start + n - m)

    def _advance(self, seq: int) -> None:
        """Make `seq` (> highest) the highest: what falls below the ring is settled and
        forgotten first."""
        m = self._memory
        old_floor, new_floor = self.highest - m, seq - m
        # The settled cursor never trails the ring: numbers leaving it are settled now.
        if self._settled < new_floor:
            self._settled_received += self._count(
                max(self._settled, old_floor), min(new_floor, self.highest))
            self._settled = new_floor
        gone = min(new_floor, self.highest) - old_floor  # slots reused by the new numbers
        if gone >= m:
            self._forgotten += self._count(old_floor, self.highest)
            self._ring[:] = bytes(m)
        elif gone > 0:
            self._forgotten += self._count(old_floor, old_floor + gone)
            self._clear(old_floor, old_floor + gone)
        self.highest = seq

    def add(self, seq: int) -> bool:
        """Record a packet; return False if it is a duplicate (or too old to tell)."""
        if seq <= self.highest - self._memory:
            self.stale += 1
            return False
        slot = seq % self._memory
        if seq > self.highest:
            self._advance(seq)
        elif self._ring[slot]:
            self.duplicates += 1
            return False
        else:
            if seq <= self._settled:
                self._settled_received += 1
            if seq < self.highest:
                self.reordered += 1
        self._ring[slot] = 1
        self._received += 1
        if self.lowest is None or seq < self.lowest:
            self.lowest = seq
        return True

    def settled(self, window: int) -> tuple[int, int]:
        """(s, r): s = highest - `window` (-1 before that), the last sequence number old
        enough that a packet missing up to it is taken as lost rather than overtaken; r =
        distinct packets received numbered 0..s. O(window) at most, O(1) amortised per
        packet; a `window` beyond the memory is taken as the memory."""
        target = self.highest - min(max(window, 0), self._memory - 1)
        if target > self._settled:
            self._settled_received += self._count(self._settled, target)
            self._settled = target
        return self._settled, self._settled_received

    def received_below(self, limit: int) -> int:
        """Distinct packets received with a sequence number < `limit`: exact for a limit
        above highest - memory; for an older one, an upper bound (each packet forgotten
        counts as below it)."""
        if limit > self.highest:
            return self._received
        floor = self.highest - self._memory
        if limit <= floor + 1:
            return self._forgotten
        return self._forgotten + self._count(floor, limit - 1)

    def lost(self, expected: int | None = None) -> int:
        """Packets lost out of `expected` sent (numbered 0..expected-1).

        Without `expected`, packets after the highest one received are not counted (they
        may still be in flight), as in RFC 3550's "extended highest sequence number" rule.
        """
        if expected is None:
            expected = self.highest + 1
            return max(0, expected - self.received)
        return max(0, expected - self.received_below(expected))


@dataclass
class RungArrivals:
    """The packets of one ladder rung as they arrive: distinct ones, their payload bytes, the
    first and latest arrival time, and (the last `MAX_TIMED_ARRIVALS`) when each was sent and
    when it arrived, for the rate of the rung's tail (`tails`)."""

    seqs: SequenceTracker = field(default_factory=SequenceTracker)
    payload_bytes: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    first_sent: float = math.inf
    last_sent: float = -math.inf
    timed: deque[tuple[float, float, int, int]] = field(default_factory=deque)
    """(sent, arrived, payload bytes, sequence number), in arrival order."""
    _tails: tuple[int, float, tuple[float | None, float | None]] | None = field(
        default=None, repr=False, compare=False)

    def add(self, seq: int, size: int, now: float, sent_at: float | None = None) -> bool:
        """Record a packet (`sent_at`: the sender's clock, from its header; None: taken as
        `now`); False for a duplicate (not counted again)."""
        if not self.seqs.add(seq):
            return False
        if self.seqs.received == 1:
            self.first_at = now
        self.payload_bytes += size
        self.last_at = now
        sent = now if sent_at is None else sent_at
        self.first_sent = min(self.first_sent, sent)
        self.last_sent = max(self.last_sent, sent)
        self.timed.append((sent, now, size, seq))
        if len(self.timed) > MAX_TIMED_ARRIVALS:
            self.timed.popleft()
        return True

    def tails(self, others: Sequence[tuple[float, int]] = ()) -> tuple[float | None, float | None]:
        """(tail, end): `window_kbps` over the last third of the rung's send span, and the
        slower of the last sixth (`END_SHARE`) and the last `END_PACKETS` packets, `others`
        included. A bucket that empties late in a rung shows only in the end; the last
        packets see it even at a sustained rate too low to put enough packets in a sixth.

        Asked on every echo: kept until a packet of the rung arrives, or one of `others`
        (appended in time order) that may fall among its arrivals."""
        newest = others[-1][0] if others else -math.inf
        if self._tails is not None:
            received, seen, result = self._tails
            if received == self.seqs.received and (seen >= self.last_at or seen == newest):
                return result
        ends = [x for x in (self.window_kbps(END_SHARE, others),
                            self.window_kbps(None, others)) if x is not None]
        result = (self.window_kbps(TAIL_SHARE, others), min(ends) if ends else None)
        self._tails = (self.seqs.received, newest, result)
        return result

    def window_kbps(self, share: float | None, others: Sequence[tuple[float, int]] = (),
                    overhead: int = LOAD_OVERHEAD_BYTES) -> float | None:
        """The rate the link delivered the rung's packets *sent* in its last `share` at (None:
        its last `END_PACKETS` packets by send time), kbit/s of wire bytes, `others` included
        (`window_rate_kbps`)."""
        if self.seqs.received < MIN_TAIL_PACKETS or self.last_sent <= self.first_sent:
            return None
        since = -math.inf if share is None else \
            self.last_sent - share * (self.last_sent - self.first_sent)
        points: list[tuple[float, float, int, int]] = []
        older = 0
        for record in reversed(self.timed):
            if record[0] >= since:
                points.append(record)
                older = 0
            else:
                older += 1  # arrival order is nearly send order: stop after a run of older
                if older > REORDER_SCAN:
                    break
        if share is None:
            points = sorted(points)[-END_PACKETS:]
        if not points:
            return None
        # what was sent over the same span: every number from its first packet to its last
        seqs = [p[3] for p in points]
        return window_rate_kbps([p[:3] for p in points], others, overhead,
                                max(seqs) - min(seqs) + 1)


#: A rung's tail: the last third of its send span (a token bucket that empties within the
#: rung shows there as a rate far below the rung's; `core.ladder`).
TAIL_SHARE = 1 / 3
#: ...and its end, the last sixth (enough packets there only on a fast enough rung).
END_SHARE = 1 / 6
#: At least this many packets in the tail for its rate to mean anything.
MIN_TAIL_PACKETS = 5
#: Arrival times kept per rung (a rung has a few hundred packets).
MAX_TIMED_ARRIVALS = 4096
#: The end of a rung is also judged on its last this many packets (by send time).
END_PACKETS = 8
#: Packets sent before a tail that may still arrive among its own (reordering), scanned past.
REORDER_SCAN = 64
#: A tail delivered at least this share of the rate its packets were sent at kept up with them.
KEPT_UP = 0.85
#: A tail's packets took the time from their first arrival to their last when their delay
#: jitters (two standard deviations) by at most this share of the window's send span...
QUIET_SHARE = 0.1
#: ...else the growth of their one-way delay is estimated, and the tail judged only when it
#: is known to within this (standard error of the slope, seconds of delay per second sent):
#: on a link with heavy jitter a short tail's slope is noise, not evidence of a queue.
MAX_SLOPE_ERROR = 0.15


def window_rate_kbps(points: Sequence[tuple[float, float, int]],
                     others: Sequence[tuple[float, int]] = (),
                     overhead: int = LOAD_OVERHEAD_BYTES,
                     sent_packets: int | None = None) -> float | None:
    """The rate a link delivered `points` at, kbit/s of wire bytes, plus our other packets
    (`others`: (arrival, wire bytes), in arrival order: probes or echoes) that arrived among
    them; None with fewer than `MIN_TAIL_PACKETS` points, or when jitter leaves the time they
    took too uncertain.

    `points` are (sent, arrived, payload bytes) of the packets sent in one window of time.
    They are judged on their send times, so that jitter and reordering, which only move
    arrivals about, do not thin the window: a policer that drops shows as fewer packets over
    the window's send span, a queue (a shaper's, a bottleneck's) as the time from their first
    arrival to their last. On a link whose delay jitters by more than `QUIET_SHARE` of the
    window, that time is the send span stretched by the growth of their one-way delay (a
    least-squares slope, counted beyond one standard error; not judged when that error is
    above `MAX_SLOPE_ERROR`). The two clocks may differ by a constant: only differences
    count.

    `sent_packets`: the packets sent over the window's span, when known (from their sequence
    numbers). If the link delivered them at nearly the rate they were sent (`KEPT_UP`), the
    window says nothing of the link (a sender that slowed down, its machine busy, is not a
    bucket emptying): None."""
    n = len(points)
    if n < MIN_TAIL_PACKETS:
        return None
    ordered = sorted(points)
    sent = [p[0] for p in ordered]
    delay = [p[1] - p[0] for p in ordered]
    span = sent[-1] - sent[0]
    if span <= 0:
        return None
    # the delay's noise, apart from its trend: how far the steps between packets sent in turn
    # stray from their median (a queue filling steadily makes every step alike; for normal
    # noise the median of |a - b| is 0.954 of its standard deviation)
    steps = [b - a for a, b in zip(delay, delay[1:], strict=False)]
    typical = percentile(steps, 50)
    noise = percentile([abs(x - typical) for x in steps], 50) / 0.954
    arrivals = [p[1] for p in ordered]
    if 2 * noise <= QUIET_SHARE * span:
        took = max(arrivals) - min(arrivals)
    else:
        mean_s, mean_d = sum(sent) / n, sum(delay) / n
        sxx = sum((x - mean_s) ** 2 for x in sent)
        slope = sum((x - mean_s) * (d - mean_d) for x, d in zip(sent, delay, strict=True)) / sxx
        error = noise / math.sqrt(sxx)
        if error > MAX_SLOPE_ERROR:
            return None
        # the growth shown beyond its noise (one standard error): jitter alone reads as none
        took = span * (1 + max(0.0, slope - error))
    if took <= 0:
        return None
    wire = sum(p[2] for p in points) + n * overhead
    # n packets over a span are n - 1 gaps of it (as in `delivered_kbps`)
    load = wire * (n - 1) / n * 8 / took / 1000
    if sent_packets is not None and sent_packets > 1 and \
            load >= KEPT_UP * wire / n * (sent_packets - 1) * 8 / span / 1000:
        return None
    return load + others_kbps(others, min(arrivals), max(arrivals))


def others_kbps(others: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The rate of `others` ((arrival, wire bytes), in arrival order) that arrived within
    [start, end], kbit/s: our own probes or echoes, which shared the link with a rung."""
    if end <= start:
        return 0.0
    total = 0
    for at, wire in reversed(others):
        if at < start:
            break
        if at <= end:
            total += wire
    return total * 8 / (end - start) / 1000


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when nothing was tried."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lower = 0.0 if successes <= 0 else max(0.0, centre - half)
    upper = 1.0 if successes >= trials else min(1.0, centre + half)
    return (lower, upper)


def loss_interval_pct(lost: int, expected: int) -> tuple[float, float] | None:
    """The 95 % Wilson interval of a loss figure, percent; None when nothing was counted."""
    if expected <= 0:
        return None
    lo, hi = wilson_interval(lost, expected)
    return (100 * lo, 100 * hi)


def delivered_kbps(
    packets: int, payload_bytes: int, first_at: float, last_at: float,
    overhead: int = LOAD_OVERHEAD_BYTES,
) -> float | None:
    """Rate at which a stream's packets arrived, in kbit/s of wire bytes.

    Measured over the arrival span: the bytes of every packet but the first, divided by the
    time from the first arrival to the last. A bottleneck spaces arrivals at its own rate
    whatever the sender does, so this never exceeds the bottleneck's rate by more than the
    timing noise. None when fewer than 3 packets or no time span.
    """
    span = last_at - first_at
    if packets < 3 or span <= 0:
        return None
    wire = payload_bytes + packets * overhead
    return wire * (packets - 1) / packets * 8 / span / 1000


def wire_interval_s(wire_bytes: int, rate_kbps: float) -> float:
    """Seconds between packets of `wire_bytes` (IP bytes) sent at `rate_kbps` kbit/s: the
    one pacing formula (ladder rungs, the reflector's downlink, probe spacing)."""
    return wire_bytes * 8 / (rate_kbps * 1000)


def round_trip_s(arrived_at: float, probe_sent_at: float, hold: float) -> float:
    """A probe's round trip from its echo: arrival minus the probe's send time (both on the
    client's clock) minus the time the reflector held it (a negative hold counts as 0)."""
    return arrived_at - probe_sent_at - max(0.0, hold)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]. `values` must not be empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

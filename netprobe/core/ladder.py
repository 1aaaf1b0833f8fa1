"""The bitrate ladder of one direction (pure state machine: `now` is always an argument).

Rungs are tried one at a time: a rung is sent for `duration` seconds, then judged as soon as
the evidence is final (the receiver has seen everything the rung will deliver), and only then
does the next rung start. Nothing overlaps, so each rung meets an empty bottleneck queue and
its judgement never mixes in a neighbour's packets.

A rung *passes* if the receiver got its packets at close to the rate they were sent, after
allowing for the random loss the probes measured. A bottleneck spaces arrivals at its own
rate and its queue holds packets back, so a rung above the link's capacity fails, and the
rate it was delivered at is the capacity estimate. The ladder stops at the first failure, or
after the top rung passes (then the link can do *at least* that much).

A rung also fails when its *tail* (the packets sent in the last third, or sixth, of it:
`measure.window_rate_kbps`) was delivered at less than `SUSTAIN_RATIO` of the rate the link
was seen to deliver (the rung's own, or an earlier rung's that passed): a token bucket (a
policer or a shaper) let the start of the ladder through at the line rate and then emptied.
The rung's tail rate is then the capacity estimate: the rate the link sustains, which is what
a call gets once its first seconds have used up the bucket. A bottleneck without a bucket
delivers the tail as fast as the rest, so it never looks like this. A bucket larger than what
the ladder sends in a direction cannot be seen (docs/protocol.md, "Sustained rate").

A capacity is the link's: a failed rung's rate and a tail's count our own probes or echoes
that shared the direction with the rung (`RungObservation.cross_kbps`), as a call would
have that share of the link too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    delivered_kbps,
    wire_interval_s,
)
from netprobe.core.wire import LOAD_MAX_SIZE

MIN_PAYLOAD = 60
#: After a rung that saturated the link, its queue takes a while to drain: probes sent this
#: long after the rung was judged still count as "loaded" (seconds).
DRAIN_S = 1.0
#: After a rung that did not saturate the link, the idle RTT counts again this much later.
IDLE_MARGIN_S = 0.1
#: A sender that sent this much less than the rung's rate was held back by its own machine
#: (a busy CPU), not by the link.
SENDER_SHORTFALL = 0.05
#: A rung whose tail arrived slower than this share of the rate the link was seen to deliver
#: (this rung's, or an earlier passed rung's) ran into an emptied token bucket (module
#: docstring). A plain bottleneck delivers a failing rung's tail at its capacity, which is at
#: least the last passed rung's rate: far above this share of it.
SUSTAIN_RATIO = 0.6
#: A failed rung whose tail arrived slower than this share of the rung counts at its tail's
#: rate (the rate it ended at); closer than that, the difference is timing noise.
TAIL_DROP = 0.85
#: ...judged only on a rung of which at least this many packets arrived.
MIN_SUSTAIN_PACKETS = 24


@dataclass(frozen=True)
class Rung:
    index: int
    """Position in the ladder, from 0."""
    rate_kbps: float
    """Send rate in kbit/s of wire bytes (payload + `LOAD_OVERHEAD_BYTES`)."""
    payload_size: int
    """Payload bytes per packet."""

    @property
    def interval(self) -> float:
        """Seconds between packets."""
        return wire_interval_s(self.payload_size + LOAD_OVERHEAD_BYTES, self.rate_kbps)


def make_ladder(rates_kbps: tuple[int, ...] | list[int], pps: float = 200.0) -> tuple[Rung, ...]:
    """Rungs for the given rates, with packets sized for about `pps` packets per second."""
    rungs = []
    for i, rate in enumerate(rates_kbps):
        size = int(rate * 1000 / 8 / pps) - LOAD_OVERHEAD_BYTES
        rungs.append(Rung(i, float(rate), max(MIN_PAYLOAD, min(LOAD_MAX_SIZE, size))))
    return tuple(rungs)


@dataclass(frozen=True)
class RungObservation:
    """A rung as seen from both ends."""

    sent: int
    """Packets the sender sent in the rung."""
    received: int
    """Distinct packets the receiver got."""
    payload_bytes: int
    """Their payload bytes."""
    first_at: float
    """Receiver clock at the first arrival."""
    last_at: float
    """Receiver clock at the latest arrival."""
    tail_kbps: float | None = None
    """The rate the link delivered the rung's last third at, our other packets included
    (`RungArrivals.tails`), kbit/s of wire bytes; None if unknown."""
    end_kbps: float | None = None
    """The same over the rung's last sixth."""
    cross_kbps: float = 0.0
    """Our other packets (probes or echoes) that arrived over the rung's arrival span,
    kbit/s of wire bytes: the link carried them beside the rung."""


@dataclass(frozen=True)
class RungResult:
    rung: Rung
    passed: bool
    delivered_kbps: float | None
    """Arrival rate of the rung's packets, kbit/s of wire bytes; None if too few arrived."""
    delivery_ratio: float
    """Received / sent packets when judged."""
    final: bool = True
    """False if judged on a timeout, without proof that every packet had arrived."""
    sent_kbps: float | None = None
    """The rate actually sent, kbit/s of wire bytes: below `rung.rate_kbps` when the sender
    could not keep up (a busy CPU). None if nothing was sent."""
    loss_allowed: bool = False
    """Passed only thanks to the uncertainty of the link's random loss (it would have failed
    had the loss been its best estimate), so it may as well have overflowed the bottleneck's
    queue."""
    tail_kbps: float | None = None
    """Arrival rate over the rung's tail, kbit/s of wire bytes; None if too few arrived."""
    bucket_emptied: bool = False
    """The tail arrived far slower than the rung (`SUSTAIN_RATIO`): a token bucket emptied,
    and `tail_kbps` is the rate the link sustains."""
    cross_kbps: float = 0.0
    """`RungObservation.cross_kbps`."""

    @property
    def link_kbps(self) -> float | None:
        """The rate the link delivered over the rung, our other packets included."""
        return None if self.delivered_kbps is None else self.delivered_kbps + self.cross_kbps

    @property
    def sender_limited(self) -> bool:
        """The sender fell short of the rung's rate by more than `SENDER_SHORTFALL`."""
        return (self.sent_kbps is not None
                and self.sent_kbps < (1 - SENDER_SHORTFALL) * self.rung.rate_kbps)


class Ladder:
    def __init__(self, rungs: tuple[Rung, ...], duration: float, pass_ratio: float = 0.85,
                 tails: bool = True):
        if not rungs:
            raise ValueError("a ladder needs at least one rung")
        self.rungs = rungs
        self.tails = tails
        """Judge rungs on their tails too (token buckets). Off over a TCP relay: TCP's own
        stalls and retransmissions shape the arrivals there, not a bucket."""
        self.duration = duration
        self.pass_ratio = pass_ratio
        self._current: int | None = None
        self._started_at: dict[int, float] = {}
        self._judged_at: dict[int, float] = {}
        self._aborted_at: float | None = None
        self.version = 0
        """Bumped on every change of state (for callers that cache what they derive)."""
        self.results: dict[int, RungResult] = {}
        self.done = False
        """True once the capacity is known (a rung failed, or the top rung passed), or the
        ladder was aborted."""
        self.aborted = False
        """True if `abort` ended the ladder before it found the capacity."""

    @property
    def started(self) -> bool:
        return self._current is not None

    def start(self, now: float) -> None:
        if self._current is None:
            self._current = 0
            self._started_at[0] = now
            self.version += 1

    def abort(self, now: float) -> None:
        """Stop: the verdict no longer depends on this direction's capacity. A rung still
        in progress keeps its loaded window, closed at `now`."""
        if not self.done and self._current is not None and self._current not in self.results:
            self._aborted_at = now
        if not self.done:
            self.aborted = True
        self.done = True
        self.version += 1

    def current(self) -> Rung | None:
        """The rung being sent or awaiting judgement, or None."""
        if self.done or self._current is None:
            return None
        return self.rungs[self._current]

    def started_at(self, index: int) -> float | None:
        return self._started_at.get(index)

    def end_of(self, index: int) -> float:
        """When the rung stops being sent (sender's clock)."""
        return self._started_at[index] + self.duration

    def sending(self, now: float) -> Rung | None:
        """The rung to send at `now` (for the sender's own pacing), or None."""
        rung = self.current()
        if rung is None or now >= self.end_of(rung.index):
            return None
        return rung

    def evaluate(
        self,
        now: float,
        observe: Callable[[int], RungObservation | None],
        base_loss: float,
        is_final: Callable[[int], bool],
        timeout: float,
        likely_loss: float = 0.0,
    ) -> RungResult | None:
        """Judge the current rung once `is_final(rung)` says every packet is in, or once
        `timeout` seconds have passed since it should have ended. Returns the new result.

        `base_loss` is the most random loss the link may have (a rung that lost no more
        passes); `likely_loss` its best estimate: a rung that passes only on the difference
        is marked `loss_allowed` (it may have overflowed the queue)."""
        rung = self.current()
        if rung is None:
            return None
        i = rung.index
        final = is_final(i)
        if not final and now < self.end_of(i) + timeout:
            return None
        if final and now < self.end_of(i):
            return None
        result = self._judge(rung, observe(i), base_loss, final, likely_loss)
        self.results[i] = result
        self._judged_at[i] = now
        self.version += 1
        if result.passed and i + 1 < len(self.rungs):
            self._current = i + 1
            self._started_at[i + 1] = now
        else:
            self.done = True
        return result

    def refine(self, observe: Callable[[int], RungObservation | None], base_loss: float,
               is_final: Callable[[int], bool]) -> bool:
        """Judge again, on what has arrived since, the failed rungs that were judged on a
        timeout (a deep queue still held much of them): their figures (rates, tail, bucket)
        come from the latest evidence; they stay failed. True if anything changed."""
        changed = False
        for i, old in list(self.results.items()):
            if old.passed or old.final:
                continue
            new = self._judge(old.rung, observe(i), base_loss, is_final(i))
            new = replace(new, passed=False, loss_allowed=False)
            if new != old:
                self.results[i] = new
                changed = True
        if changed:
            self.version += 1
        return changed

    def _judge(self, rung: Rung, obs: RungObservation | None, base_loss: float,
               final: bool, likely_loss: float = 0.0) -> RungResult:
        if obs is None or obs.sent == 0:
            return RungResult(rung, False, None, 0.0, final)
        ratio = min(1.0, obs.received / obs.sent)
        rate = delivered_kbps(obs.received, obs.payload_bytes, obs.first_at, obs.last_at)
        # The link is judged on what was offered to it: a sender its own busy machine held
        # back sent fewer packets, and they arrive at that lower rate, not the rung's.
        sent_kbps = rung.rate_kbps * min(1.0, obs.sent * rung.interval / self.duration)
        def passes(loss: float) -> bool:
            keep = 1.0 - min(max(loss, 0.0), 0.9)
            return rate is not None and ratio >= self.pass_ratio * keep \
                and rate >= self.pass_ratio * keep * sent_kbps

        # the slower of the last third and the last sixth (a bucket emptying late in the rung)
        tails = [x for x in (obs.tail_kbps, obs.end_kbps) if x is not None]
        tail = min(tails) if tails else None
        # The rate the link has been seen to deliver: this rung's, or a passed rung's before
        # it (a bucket that emptied early in this rung leaves only the earlier rungs' rate).
        shown = [min(r.rung.rate_kbps, r.delivered_kbps) for r in self.results.values()
                 if r.passed and r.delivered_kbps is not None]
        if rate is not None:
            shown.append(min(rate, sent_kbps))
        if not self.tails:
            tail = None
        emptied = tail is not None and obs.received >= MIN_SUSTAIN_PACKETS and \
            tail < SUSTAIN_RATIO * max(shown, default=0.0)
        passed = passes(base_loss) and not emptied
        return RungResult(rung, passed, rate, ratio, final, sent_kbps,
                          loss_allowed=passed and not passes(min(likely_loss, base_loss)),
                          tail_kbps=tail, bucket_emptied=emptied,
                          cross_kbps=max(0.0, obs.cross_kbps))

    def capacity(self) -> tuple[float | None, bool]:
        """(kbit/s, at_least). `at_least` when no judged rung failed: the link carried
        everything tried (the top rung, or as far as the check went). None if nothing judged,
        or if a rung failed without evidence of what arrived: judged on a timeout before the
        receiver's report came back, it says nothing about the rate (0 would be a guess)."""
        if not self.results:
            return (None, False)
        if all(r.passed for r in self.results.values()):
            return (self.lower_bound(), True)
        sustained = self.sustained_kbps()
        if sustained is not None:
            return (sustained, False)
        # A failed rung counts at the rate it ended at when its tail was clearly slower
        # (`TAIL_DROP`): after a bucket that emptied late in it; a plain bottleneck's tail is
        # as fast as the rest, give or take timing noise.
        rates = [r.tail_kbps if not r.passed and r.tail_kbps is not None
                 and r.tail_kbps < TAIL_DROP * r.link_kbps else r.link_kbps
                 for r in self.results.values() if r.link_kbps is not None]
        if rates:
            return (max(rates), False)
        # Nothing (or a single packet) arrived: proven only once the evidence was final.
        proven = any(r.final for r in self.results.values() if not r.passed)
        return (0.0, False) if proven else (None, False)

    def sustained_kbps(self) -> float | None:
        """The rate the link sustains once a token bucket emptied, kbit/s: the slowest tail of
        the rungs that showed one (`RungResult.bucket_emptied`); None if none did."""
        tails = [r.tail_kbps for r in self.results.values()
                 if r.bucket_emptied and r.tail_kbps is not None]
        return min(tails) if tails else None

    def lower_bound(self) -> float:
        """What the link has been shown to carry, kbit/s (0 if nothing passed): the delivered
        rate of the passed rungs, never above their nominal rate, nor above the sustained
        rate once a bucket was seen to empty (the passes before it were the bucket's)."""
        passed = [min(r.rung.rate_kbps, r.delivered_kbps) for r in self.results.values()
                  if r.passed and r.delivered_kbps is not None]
        sustained = self.sustained_kbps()
        best = max(passed, default=0.0)
        return best if sustained is None else min(best, sustained)

    def upper_bound(self) -> float:
        """What the link might still carry, kbit/s (infinite until a rung fails)."""
        kbps, at_least = self.capacity()
        if at_least or kbps is None or not any(not r.passed for r in self.results.values()):
            return float("inf")
        return kbps

    def loaded_windows(self) -> list[tuple[float, float]]:
        """Times (sender's clock) when a rung saturated the link or came close to it
        (`near_capacity`), queue drain included.

        Probes sent then measure our own congestion, not the link: their RTT and loss are
        kept apart. While a rung is still being judged its window is open-ended.
        """
        windows = []
        for i, start in self._started_at.items():
            result = self.results.get(i)
            if result is not None and not self.near_capacity(i):
                continue
            end = self._judged_at.get(i)
            if result is None:
                if self._current != i:
                    continue
                if self.done:  # aborted while in progress
                    end = self._aborted_at
            windows.append((start, float("inf") if end is None else end + DRAIN_S))
        return windows

    def active_windows(self) -> list[tuple[float, float]]:
        """Times (sender's clock) when any rung was being sent or judged; open-ended while
        one still is. Probes sent outside them measure the idle link."""
        windows = []
        for i, start in self._started_at.items():
            end = self._judged_at.get(i)
            if end is None and self.done:
                end = self._aborted_at
            windows.append((start, float("inf") if end is None else end + IDLE_MARGIN_S))
        return windows

    def failed_windows(self) -> list[tuple[float, float]]:
        """From the start of each failed rung until it was judged: the link's queue full."""
        return [(self._started_at[i], self._judged_at[i])
                for i, r in self.results.items() if not r.passed and i in self._judged_at]

    def near_capacity(self, index: int) -> bool:
        """True for a rung that failed, for the last rung that passed before one failed, and
        for a rung that passed only thanks to the allowance for random loss: it ran close to
        the link's capacity, so it may have filled the bottleneck queue."""
        result = self.results.get(index)
        if result is None:
            return False
        if not result.passed or result.loss_allowed:
            return True
        after = self.results.get(index + 1)
        return after is not None and not after.passed

    def in_flight(self) -> bool:
        """True while a rung is being sent or awaits judgement."""
        return self.started and not self.done

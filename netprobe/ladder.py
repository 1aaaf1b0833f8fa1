"""The bitrate ladder of one direction (pure state machine: `now` is always an argument).

Rungs are sent back to back, each for `duration` seconds. A rung is judged once its last
packets had time to arrive (`settle`, about one RTT): it *passes* if the receiver got its
packets at close to the rate they were sent, after allowing for the random loss the probes
measured. A bottleneck spaces arrivals at its own rate and a queue holds packets back, so a
rung above the link's capacity fails, and the rate it was delivered at is the capacity
estimate. The ladder stops at the first failure, or after the top rung passes (then the link
can do *at least* that much: we do not need to find the top of a fast link).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .measure import LOAD_OVERHEAD_BYTES, delivered_kbps
from .wire import LOAD_MAX_SIZE

MIN_PAYLOAD = 100


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
        return (self.payload_size + LOAD_OVERHEAD_BYTES) * 8 / (self.rate_kbps * 1000)


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
    """Distinct packets the receiver got so far."""
    payload_bytes: int
    """Their payload bytes."""
    first_at: float
    """Receiver clock at the first arrival."""
    last_at: float
    """Receiver clock at the latest arrival."""


@dataclass(frozen=True)
class RungResult:
    rung: Rung
    passed: bool
    delivered_kbps: float | None
    """Arrival rate of the rung's packets, kbit/s of wire bytes; None if too few arrived."""
    delivery_ratio: float
    """Received / sent packets when judged."""


class Ladder:
    def __init__(self, rungs: tuple[Rung, ...], duration: float, pass_ratio: float = 0.85):
        if not rungs:
            raise ValueError("a ladder needs at least one rung")
        self.rungs = rungs
        self.duration = duration
        self.pass_ratio = pass_ratio
        self._current: int | None = None
        self._started_at: dict[int, float] = {}
        self._ended_at: dict[int, float] = {}
        self.results: dict[int, RungResult] = {}
        self.done = False
        """True once the capacity is known (a rung failed, or the top rung passed)."""

    @property
    def started(self) -> bool:
        return self._current is not None

    def start(self, now: float) -> None:
        if self._current is None:
            self._current = 0
            self._started_at[0] = now

    def abort(self) -> None:
        """Stop sending: the verdict no longer depends on this direction's capacity."""
        self.done = True

    def sending(self, now: float) -> Rung | None:
        """The rung to send at `now`, or None when nothing should be sent."""
        if self.done or self._current is None:
            return None
        i = self._current
        if i in self._ended_at:
            return None
        if now >= self._started_at[i] + self.duration:
            self._ended_at[i] = now
            if i + 1 < len(self.rungs):
                self._current = i + 1
                self._started_at[i + 1] = now
            else:
                return None
        return self.rungs[self._current]

    def rung_at(self, t: float) -> int | None:
        """Index of the rung that was being sent at time `t`, if any."""
        for i, start in self._started_at.items():
            if start <= t < self._ended_at.get(i, float("inf")):
                return i
        return None

    def evaluate(
        self,
        now: float,
        observe: Callable[[int], RungObservation | None],
        base_loss: float,
        settle: float,
    ) -> None:
        """Judge every rung that ended at least `settle` seconds ago."""
        if self.done:
            return
        for i in sorted(self._ended_at):
            if i in self.results or now < self._ended_at[i] + settle:
                continue
            result = self._judge(self.rungs[i], observe(i), base_loss)
            self.results[i] = result
            if not result.passed or i == len(self.rungs) - 1:
                self.done = True
                # A rung sent after the failed one measures the same bottleneck: count it.
                nxt = i + 1
                if not result.passed and nxt < len(self.rungs) and nxt in self._started_at:
                    extra = self._judge(self.rungs[nxt], observe(nxt), base_loss)
                    if extra.delivered_kbps is not None:
                        self.results[nxt] = RungResult(extra.rung, False, extra.delivered_kbps,
                                                       extra.delivery_ratio)
                return

    def _judge(self, rung: Rung, obs: RungObservation | None, base_loss: float) -> RungResult:
        if obs is None or obs.sent == 0:
            return RungResult(rung, False, None, 0.0)
        ratio = obs.received / obs.sent
        rate = delivered_kbps(obs.received, obs.payload_bytes, obs.first_at, obs.last_at)
        keep = 1.0 - min(max(base_loss, 0.0), 0.9)
        passed = (
            rate is not None
            and ratio >= self.pass_ratio * keep
            and rate >= self.pass_ratio * keep * rung.rate_kbps
        )
        return RungResult(rung, passed, rate, ratio)

    def capacity(self) -> tuple[float | None, bool]:
        """(kbit/s, at_least). `at_least` when no judged rung failed: the link carried
        everything tried (the top rung, or as far as the check went). None if nothing judged."""
        if not self.results:
            return (None, False)
        rates = [r.delivered_kbps for r in self.results.values() if r.delivered_kbps is not None]
        if all(r.passed for r in self.results.values()):
            # Passed rungs arrive at about their send rate: report the highest one passed,
            # never more than its nominal rate (arrival-time noise could overstate it).
            return (min(max(rates), self.lower_bound()), True)
        return (max(rates, default=0.0), False)

    def lower_bound(self) -> float:
        """What the link has already been shown to carry, kbit/s (0 if nothing passed)."""
        passed = [min(r.rung.rate_kbps, r.delivered_kbps) for r in self.results.values()
                  if r.passed and r.delivered_kbps is not None]
        return max(passed, default=0.0)

    def upper_bound(self) -> float:
        """What the link might still carry, kbit/s (infinite until a rung fails)."""
        kbps, at_least = self.capacity()
        if not self.done or at_least or kbps is None:
            return float("inf")
        return kbps

    def failed_rungs(self) -> set[int]:
        """Rungs that saturated the link (their RTT samples show queueing, not the base RTT)."""
        return {i for i, r in self.results.items() if not r.passed}

    def in_flight(self) -> bool:
        """True while a rung is being sent or awaits judgement."""
        return self.started and not self.done

"""A simulated bottleneck link to drive netprobe.core.ladder through, as the session does.

The link model (`transit`) is a pure function: packets of a rung leave the sender every
`rung.interval` seconds, pass a drop-tail queue in front of a bottleneck of `capacity_kbps`
(each packet occupies the bottleneck for its wire bits / capacity), then suffer independent
random loss with probability `loss`, then a fixed propagation delay. The receiver reports
what had arrived by `now`. Rungs are sequential (the next one starts only once the previous
one is judged), and each is modelled with an empty queue at its start.

The "final" signal the session gives the ladder (`is_final`) is modelled as the echo of a
probe sent right after the rung: it crosses the bottleneck behind the rung's last packet and
comes back, so once it is in, every packet of the rung that will ever arrive has arrived.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from netprobe.config import ProbeSettings
from netprobe.core.ladder import Ladder, Rung, RungObservation, make_ladder
from netprobe.core.measure import LOAD_OVERHEAD_BYTES

_SHIPPED = ProbeSettings()
DEFAULT_RATES = _SHIPPED.ladder_kbps  # (300, 800, 1600, 3200)
DURATION = _SHIPPED.rung_duration_s  # 0.6
PPS = _SHIPPED.rung_pps
PASS_RATIO = _SHIPPED.pass_ratio  # 0.85
TOP = max(DEFAULT_RATES)
#: session.tick: 1.0 + 2 x the RTT estimate.
TIMEOUT = 1.0
STEP = 0.005


@dataclass(frozen=True)
class Link:
    capacity_kbps: float
    loss: float = 0.0
    """Random loss probability after the bottleneck (0-1)."""
    delay: float = 0.02
    """One-way propagation delay, s."""
    queue_s: float = 0.05
    """Drop-tail buffer, in seconds of the bottleneck's rate."""
    seed: int = 0


@dataclass(frozen=True)
class Transit:
    sent: int
    arrivals: list[float]
    """Arrival times of every packet that gets through, in order."""
    drained_at: float
    """When the bottleneck has finished with the rung's last packet (queue empty again)."""


def transit(rung: Rung, sent_from: float, sent_until: float, link: Link) -> Transit:
    """What becomes of `rung`'s packets, sent every `rung.interval` over [sent_from, sent_until)."""
    sent = max(0, math.ceil((sent_until - sent_from) / rung.interval - 1e-9))
    tau = (rung.payload_size + LOAD_OVERHEAD_BYTES) * 8 / (link.capacity_kbps * 1000)
    rng = random.Random(link.seed * 1009 + rung.index)
    busy_until = -math.inf
    arrivals: list[float] = []
    for k in range(sent):
        t = sent_from + k * rung.interval
        if busy_until - t > link.queue_s:
            continue  # queue full: tail drop
        busy_until = max(t, busy_until) + tau
        if rng.random() < link.loss:
            continue
        arrivals.append(busy_until + link.delay)
    return Transit(sent, arrivals, max(busy_until, sent_until))


def observe_rung(rung: Rung, sent_from: float, sent_until: float, now: float,
                 link: Link) -> RungObservation | None:
    """What the receiver has seen by `now` of `rung`, sent over [sent_from, sent_until)."""
    end = min(sent_until, now)
    if end <= sent_from:
        return None
    tr = transit(rung, sent_from, end, link)
    arrivals = [a for a in tr.arrivals if a <= now]
    if not arrivals:
        return RungObservation(tr.sent, 0, 0, 0.0, 0.0)
    return RungObservation(tr.sent, len(arrivals), len(arrivals) * rung.payload_size,
                           arrivals[0], arrivals[-1])


def final_at(rung: Rung, sent_from: float, sent_until: float, link: Link) -> float:
    """When the echo of a probe sent as the rung ends gets back to the sender: the probe
    queues behind the rung's last packet, crosses the link, and its echo crosses back."""
    return transit(rung, sent_from, sent_until, link).drained_at + 2 * link.delay


@dataclass
class Run:
    ladder: Ladder
    link: Link
    sent_from: dict[int, float] = field(default_factory=dict)
    sent_until: dict[int, float] = field(default_factory=dict)
    judged_at: dict[int, float] = field(default_factory=dict)
    end: float = 0.0


def run_ladder(link: Link, rates: tuple[int, ...] = DEFAULT_RATES, *,
               duration: float = DURATION, final_signal: bool = True,
               timeout: float = TIMEOUT, limit: float = 20.0) -> Run:
    """Drive a ladder in STEP ticks as the session does: each tick send what `sending` says,
    then `evaluate` with the modelled final signal (never, if not `final_signal`).

    Checks on every tick what must hold on any link: one rung at a time, in order, each
    started only after the previous one was judged; a rung judged once, never before its
    end, never before its final signal or the timeout; and a rung judged as final has had
    every packet it will deliver."""
    ladder = Ladder(make_ladder(rates, PPS), duration, PASS_RATIO)
    run = Run(ladder, link)
    ladder.start(0.0)

    def observe(i: int) -> RungObservation | None:
        if i not in run.sent_from:
            return None
        return observe_rung(ladder.rungs[i], run.sent_from[i], run.sent_until[i], now, link)

    def is_final(i: int) -> bool:
        if not final_signal or i not in run.sent_from or ladder.sending(now) is not None:
            return False  # still being sent: its last packet has not left
        return now >= final_at(ladder.rungs[i], run.sent_from[i], run.sent_until[i], link)

    k = 0
    while not ladder.done:
        now = k * STEP
        assert now < limit, "ladder never finished"
        rung = ladder.sending(now)
        if rung is not None:
            i = rung.index
            assert sorted(run.judged_at) == list(range(i)), "a rung sent out of turn"
            assert set(run.sent_from) <= set(range(i + 1)), "a later rung was sent before"
            if i > 0:
                assert now >= run.judged_at[i - 1], "rungs overlap"
            run.sent_from.setdefault(i, now)
            run.sent_until[i] = now + STEP
        result = ladder.evaluate(now, observe, link.loss, is_final, timeout)
        if result is not None:
            i = result.rung.index
            assert i not in run.judged_at, "a rung judged twice"
            assert ladder.results[i] is result
            run.judged_at[i] = now
            assert now >= ladder.end_of(i), "judged before the rung ended"
            if result.final:
                assert final_signal
                rung_i = ladder.rungs[i]
                assert now >= final_at(rung_i, run.sent_from[i], run.sent_until[i], link)
                # every packet that will ever arrive had arrived when it was judged
                assert observe(i) == observe_rung(rung_i, run.sent_from[i], run.sent_until[i],
                                                  math.inf, link)
            else:
                assert now >= ladder.end_of(i) + timeout, "judged without proof, too soon"
        k += 1
    run.end = k * STEP
    return run

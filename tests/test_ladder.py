"""Tests for netprobe.ladder, driven through a simulated bottleneck link.

The link model (`observe_rung`) is a pure function: packets of a rung leave the sender every
`rung.interval` seconds, pass a drop-tail queue in front of a bottleneck of `capacity_kbps`
(each packet occupies the bottleneck for its wire bits / capacity), then suffer independent
random loss with probability `loss`, then a fixed propagation delay. The receiver reports
what had arrived by `now`. Each rung is modelled with an empty queue at its start (the tail
of the previous rung is ignored), which is enough to check the ladder's logic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.ladder import (
    MIN_PAYLOAD,
    Ladder,
    Rung,
    RungObservation,
    make_ladder,
)
from netprobe.measure import LOAD_OVERHEAD_BYTES
from netprobe.wire import LOAD_MAX_SIZE

DEFAULT_RATES = (300, 800, 1600, 3200)  # config.ProbeSettings.ladder_kbps
DURATION = 0.6
SETTLE = 0.15
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


def observe_rung(rung: Rung, sent_from: float, sent_until: float, now: float,
                 link: Link) -> RungObservation | None:
    """What the receiver has seen by `now` of `rung`, sent over [sent_from, sent_until)."""
    end = min(sent_until, now)
    if end <= sent_from:
        return None
    sent = math.ceil((end - sent_from) / rung.interval - 1e-9)
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
        arrival = busy_until + link.delay
        if arrival <= now:
            arrivals.append(arrival)
    if not arrivals:
        return RungObservation(sent, 0, 0, 0.0, 0.0)
    return RungObservation(sent, len(arrivals), len(arrivals) * rung.payload_size,
                           arrivals[0], arrivals[-1])


@dataclass
class Run:
    ladder: Ladder
    sent_from: dict[int, float] = field(default_factory=dict)
    sent_until: dict[int, float] = field(default_factory=dict)
    end: float = 0.0


def run_ladder(link: Link, rates: tuple[int, ...] = DEFAULT_RATES, *,
               duration: float = DURATION, settle: float = SETTLE,
               limit: float = 10.0) -> Run:
    """Drive a ladder in STEP ticks: each tick send what `sending` says, then `evaluate`."""
    ladder = Ladder(make_ladder(rates), duration)
    run = Run(ladder)
    ladder.start(0.0)

    def observe(i: int) -> RungObservation | None:
        if i not in run.sent_from:
            return None
        return observe_rung(ladder.rungs[i], run.sent_from[i], run.sent_until[i], now, link)

    k = 0
    while not ladder.done:
        now = k * STEP
        assert now < limit, "ladder never finished"
        rung = ladder.sending(now)
        if rung is not None:
            run.sent_from.setdefault(rung.index, now)
            run.sent_until[rung.index] = now + STEP
        ladder.evaluate(now, observe, link.loss, settle)
        k += 1
    run.end = k * STEP
    return run


# ------------------------------------------------------------------------ the simulation itself


def test_link_model_under_capacity_delivers_send_rate() -> None:
    rung = make_ladder((800,))[0]
    obs = observe_rung(rung, 0.0, 0.6, 1.0, Link(5000))
    assert obs is not None and obs.received == obs.sent == 120  # 0.6 s / 5 ms
    span = obs.last_at - obs.first_at
    assert span == pytest.approx(119 * rung.interval)


def test_link_model_over_capacity_spaces_at_bottleneck() -> None:
    rung = make_ladder((1600,))[0]
    obs = observe_rung(rung, 0.0, 0.6, 2.0, Link(1000))
    assert obs is not None and obs.received < obs.sent
    wire_bits = (rung.payload_size + LOAD_OVERHEAD_BYTES) * 8
    assert (obs.last_at - obs.first_at) / (obs.received - 1) == pytest.approx(
        wire_bits / 1_000_000)


# ------------------------------------------------------------------------ capacity through links


def test_link_faster_than_top_rung_reports_top_at_least() -> None:
    run = run_ladder(Link(10_000))
    kbps, at_least = run.ladder.capacity()
    assert at_least is True
    assert kbps == pytest.approx(3200, rel=0.02)
    assert kbps <= 3200  # never above the top rung's nominal rate
    assert all(r.passed for r in run.ladder.results.values())
    assert sorted(run.ladder.results) == [0, 1, 2, 3]
    assert run.ladder.lower_bound() == 3200
    assert run.ladder.upper_bound() == math.inf
    assert run.ladder.failed_rungs() == set()


@pytest.mark.parametrize("capacity", [200, 1000, 1500, 2500])
@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_capacity_of_bottleneck_links(capacity: float, loss: float) -> None:
    run = run_ladder(Link(capacity, loss=loss, seed=capacity))
    kbps, at_least = run.ladder.capacity()
    assert kbps is not None
    assert at_least is False
    assert 0.7 * capacity <= kbps <= 1.1 * capacity, (capacity, kbps)
    assert run.ladder.done
    assert run.ladder.failed_rungs()
    assert run.ladder.upper_bound() == kbps
    # lower_bound is a passed rung's nominal rate; a rung passes at >= 0.85 (x keep) of it
    assert run.ladder.lower_bound() <= kbps / (0.85 * (1 - loss))


def test_slow_link_fails_first_rung() -> None:
    run = run_ladder(Link(200))
    assert run.ladder.results[0].passed is False
    assert run.ladder.lower_bound() == 0.0
    assert 0 in run.ladder.failed_rungs()


def test_ladder_stops_at_first_failure() -> None:
    run = run_ladder(Link(1000))
    lad = run.ladder
    # 300 and 800 pass, 1600 fails (about 1000/1600 = 0.63 of it gets through);
    # the 3200 rung was already being sent when 1600 was judged and is counted as failed too.
    assert [lad.results[i].passed for i in sorted(lad.results)] == [True, True, False, False]
    assert lad.results[2].delivery_ratio < 0.85
    assert 3 not in run.sent_from or run.sent_until[3] - run.sent_from[3] < DURATION
    assert lad.sending(run.end) is None


@pytest.mark.parametrize("capacity", [290, 1500, 2900])
def test_lower_bound_is_what_the_link_carried(capacity: float) -> None:
    # session.bounds() uses lower_bound() as the pessimistic rate and upper_bound() as the
    # optimistic one: the pessimistic figure must not be above the optimistic one or the link.
    lad = run_ladder(Link(capacity)).ladder
    kbps, _ = lad.capacity()
    assert kbps == pytest.approx(capacity, rel=0.01)  # the ladder itself measured it right
    assert lad.lower_bound() <= lad.upper_bound()
    assert lad.lower_bound() <= capacity * 1.001  # arrival-time rounding only


def test_slow_medium_fast_links_are_told_apart() -> None:
    slow = run_ladder(Link(200)).ladder.capacity()
    medium = run_ladder(Link(1500)).ladder.capacity()
    fast = run_ladder(Link(5000)).ladder.capacity()
    assert slow[0] is not None and medium[0] is not None and fast[0] is not None
    assert slow[0] * 5 < medium[0]  # ~200 vs ~1500
    assert medium[0] * 1.8 < fast[0]  # ~1500 vs 3200+
    assert (slow[1], medium[1], fast[1]) == (False, False, True)


@settings(max_examples=25, deadline=None)
@given(
    st.floats(120, 8000),
    st.floats(0, 0.05),
    st.integers(0, 1000),
    st.floats(0.001, 0.08),
)
def test_capacity_never_overstates_the_link(c: float, loss: float, seed: int, delay: float) -> None:
    run = run_ladder(Link(c, loss=loss, seed=seed, delay=delay), settle=0.15 + 3 * delay)
    kbps, at_least = run.ladder.capacity()
    assert kbps is not None
    assert kbps <= 1.1 * c
    if at_least:
        # the link carried everything: the estimate is (about) the top rung, below C
        assert kbps >= 0.85 * (1 - loss) * 3200 * 0.95
    else:
        assert kbps >= 0.7 * (1 - loss) * c


# ------------------------------------------------------------------------ state machine


def test_make_ladder_sizes_within_bounds() -> None:
    # size = int(rate * 1000 / 8 / pps) - 66, clamped to [100, 1200]:
    # 300 -> 187 - 66 = 121; 800 -> 500 - 66 = 434; 1600 -> 934; 3200 -> 1934 -> 1200
    rungs = make_ladder(DEFAULT_RATES, 200.0)
    assert [r.payload_size for r in rungs] == [121, 434, 934, 1200]
    assert [r.index for r in rungs] == [0, 1, 2, 3]
    assert [r.rate_kbps for r in rungs] == [300.0, 800.0, 1600.0, 3200.0]
    # interval: (121 + 66) * 8 / 300 000 = 4.987 ms
    assert rungs[0].interval == pytest.approx(187 * 8 / 300_000)


@given(st.lists(st.integers(1, 100_000), min_size=1, max_size=8).map(sorted),
       st.floats(10, 2000))
def test_make_ladder_property(rates: list[int], pps: float) -> None:
    rungs = make_ladder(rates, pps)
    assert len(rungs) == len(rates)
    for r, rate in zip(rungs, rates):
        assert MIN_PAYLOAD <= r.payload_size <= LOAD_MAX_SIZE
        # the interval reproduces the nominal rate
        assert (r.payload_size + LOAD_OVERHEAD_BYTES) * 8 / r.interval == pytest.approx(rate * 1000)
        if MIN_PAYLOAD < r.payload_size < LOAD_MAX_SIZE:
            assert 1 / r.interval == pytest.approx(pps, rel=0.02, abs=1.0)


def test_empty_ladder_rejected() -> None:
    with pytest.raises(ValueError):
        Ladder((), 0.6)


def test_sending_sequence_with_explicit_times() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    assert lad.sending(0.0) is None  # not started
    assert not lad.started and not lad.in_flight()
    lad.start(1.0)
    lad.start(5.0)  # a second start does not restart
    assert lad.started and lad.in_flight()
    assert lad.sending(1.0).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.59).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.6).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.19).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.2) is None  # top rung over
    assert lad.sending(9.0) is None
    assert lad.rung_at(0.5) is None
    assert lad.rung_at(1.3) == 0
    assert lad.rung_at(1.6) == 1
    assert lad.rung_at(2.2) is None


def test_evaluate_before_settle_does_nothing() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    calls: list[int] = []

    def observe(i: int) -> RungObservation:
        calls.append(i)
        return RungObservation(120, 120, 120 * 121, 0.0, 119 * lad.rungs[0].interval)

    lad.start(0.0)
    lad.sending(0.0)
    lad.evaluate(0.3, observe, 0.0, 0.1)  # rung 0 still being sent
    lad.sending(0.6)  # rung 0 ends at 0.6
    lad.evaluate(0.69, observe, 0.0, 0.1)  # 0.09 s after the end < settle
    assert calls == [] and lad.results == {}
    assert lad.capacity() == (None, False)
    lad.evaluate(0.7, observe, 0.0, 0.1)
    assert calls == [0]
    assert lad.results[0].passed
    assert not lad.done


def test_evaluate_judges_each_rung_once() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    calls: list[int] = []

    def observe(i: int) -> RungObservation:
        calls.append(i)
        return RungObservation(120, 120, 120 * 121, 0.0, 119 * lad.rungs[0].interval)

    lad.start(0.0)
    lad.sending(0.0)
    lad.sending(0.6)
    for now in (0.8, 0.9, 1.0):
        lad.evaluate(now, observe, 0.0, 0.1)
    assert calls == [0]


def test_abort_stops_sending_and_judging() -> None:
    lad = Ladder(make_ladder(DEFAULT_RATES), 0.6)
    lad.start(0.0)
    assert lad.sending(0.0) is not None
    lad.abort()
    assert lad.done and not lad.in_flight()
    assert lad.sending(0.1) is None
    assert lad.sending(0.7) is None
    lad.evaluate(5.0, lambda i: pytest.fail("observe called after abort"), 0.0, 0.1)
    assert lad.results == {}


def test_nothing_arrived_fails_rung_with_zero_capacity() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    lad.start(0.0)
    lad.sending(0.0)
    lad.sending(0.6)
    lad.evaluate(1.0, lambda i: RungObservation(120, 0, 0, 0.0, 0.0), 0.0, 0.1)
    assert lad.done
    assert lad.results[0].passed is False
    assert lad.results[0].delivered_kbps is None
    assert lad.capacity() == (0.0, False)


def test_observe_none_fails_rung() -> None:
    lad = Ladder(make_ladder((300,)), 0.6)
    lad.start(0.0)
    lad.sending(0.0)
    lad.sending(0.6)
    lad.evaluate(1.0, lambda i: None, 0.0, 0.1)
    assert lad.done and lad.results[0].passed is False


def test_random_loss_allowance() -> None:
    # 10 % random loss measured by the probes: a rung that delivered 90 % of its packets at
    # 90 % of its rate passes (needs 0.85 * 0.9 = 0.765); without the allowance it would not
    # fail either (0.9 >= 0.85), so use 20 %: needs 0.85 * 0.8 = 0.68 of rate and packets.
    rung = make_ladder((800,))[0]
    n = 120
    got = int(n * 0.8)
    # 96 packets of 120 spread over the rung's full span -> rate ~ 0.8 * 800 = 640 kbit/s
    obs = RungObservation(n, got, got * rung.payload_size, 0.0, (n - 1) * rung.interval)

    def judge(base_loss: float) -> bool:
        lad = Ladder((rung,), 0.6)
        lad.start(0.0)
        lad.sending(0.0)
        lad.sending(0.6)
        lad.evaluate(1.0, lambda i: obs, base_loss, 0.1)
        return lad.results[0].passed

    assert judge(0.2) is True
    assert judge(0.0) is False
    assert judge(5.0) is True  # absurd loss is capped at 90 %, not negative keep


def test_lossy_link_faster_than_ladder_still_at_least() -> None:
    run = run_ladder(Link(10_000, loss=0.05, seed=3))
    kbps, at_least = run.ladder.capacity()
    assert at_least is True
    assert kbps is not None and 0.85 * 3200 <= kbps <= 3200

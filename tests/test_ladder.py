"""Tests for netprobe.core.ladder, driven through a simulated bottleneck link.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config import ProbeSettings
from netprobe.core.ladder import (
    DRAIN_S,
    MIN_PAYLOAD,
    Ladder,
    Rung,
    RungObservation,
    RungResult,
    make_ladder,
)
from netprobe.core.measure import LOAD_OVERHEAD_BYTES
from netprobe.core.wire import LOAD_MAX_SIZE

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


# ------------------------------------------------------------------------ the simulation itself


def test_link_model_under_capacity_delivers_send_rate() -> None:
    rung = make_ladder((800,), 200.0)[0]
    obs = observe_rung(rung, 0.0, 0.6, 1.0, Link(5000))
    assert obs is not None and obs.received == obs.sent == 120  # 0.6 s / 5 ms
    span = obs.last_at - obs.first_at
    assert span == pytest.approx(119 * rung.interval)


def test_link_model_over_capacity_spaces_at_bottleneck() -> None:
    rung = make_ladder((1600,), 200.0)[0]
    obs = observe_rung(rung, 0.0, 0.6, 2.0, Link(1000))
    assert obs is not None and obs.received < obs.sent
    wire_bits = (rung.payload_size + LOAD_OVERHEAD_BYTES) * 8
    assert (obs.last_at - obs.first_at) / (obs.received - 1) == pytest.approx(
        wire_bits / 1_000_000)


def test_link_model_final_signal_comes_after_the_last_arrival() -> None:
    link = Link(1000, delay=0.03)
    rung = make_ladder((1600,), 200.0)[0]
    tr = transit(rung, 0.0, 0.6, link)
    # over capacity: the queue holds the last packets back past the end of sending
    assert tr.drained_at > 0.6
    assert max(tr.arrivals) == pytest.approx(tr.drained_at + link.delay)
    assert final_at(rung, 0.0, 0.6, link) == pytest.approx(tr.drained_at + 0.06)
    before = observe_rung(rung, 0.0, 0.6, max(tr.arrivals) - 1e-6, link)
    after = observe_rung(rung, 0.0, 0.6, final_at(rung, 0.0, 0.6, link), link)
    assert before is not None and after is not None
    assert before.received == after.received - 1 == len(tr.arrivals) - 1


def test_simulation_uses_the_shipped_ladder() -> None:
    assert DEFAULT_RATES == (300, 800, 1600, 3200)
    assert (DURATION, PASS_RATIO) == (0.6, 0.85)


# ------------------------------------------------------------------------ capacity through links


def test_link_faster_than_top_rung_reports_top_at_least() -> None:
    run = run_ladder(Link(10_000))
    lad = run.ladder
    kbps, at_least = lad.capacity()
    assert at_least is True
    assert kbps == pytest.approx(TOP, rel=0.02)
    assert kbps <= TOP  # never above the top rung's nominal rate
    assert all(r.passed and r.final for r in lad.results.values())
    assert sorted(lad.results) == [0, 1, 2, 3]
    assert lad.lower_bound() == kbps
    assert lad.upper_bound() == math.inf
    assert lad.loaded_windows() == []  # nothing saturated the link
    assert lad.done and lad.current() is None and lad.sending(run.end) is None


@pytest.mark.parametrize("capacity", [200, 1000, 1500, 2500])
@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_capacity_of_bottleneck_links(capacity: float, loss: float) -> None:
    run = run_ladder(Link(capacity, loss=loss, seed=capacity))
    lad = run.ladder
    kbps, at_least = lad.capacity()
    assert kbps is not None
    assert at_least is False
    assert 0.7 * capacity <= kbps <= 1.1 * capacity, (capacity, kbps)
    assert lad.done
    failed = [i for i, r in lad.results.items() if not r.passed]
    assert len(failed) == 1 and failed[0] == max(lad.results)  # stopped at the failure
    assert all(r.final for r in lad.results.values())  # the final signal came in time
    assert lad.upper_bound() == kbps
    # lower_bound is what a passed rung delivered, at >= 0.85 (x keep) of its nominal rate
    assert lad.lower_bound() <= kbps / (0.85 * (1 - loss))
    assert lad.lower_bound() <= capacity * 1.001
    # the failed rung saturated the link, and the last rung passed before it ran close to
    # capacity: their probes are "loaded" until the queue drained
    f = failed[0]
    expected = [(lad.started_at(i), run.judged_at[i] + DRAIN_S) for i in (f - 1, f) if i >= 0]
    assert lad.loaded_windows() == expected
    assert [i for i in lad.results if lad.near_capacity(i)] == [i for i in (f - 1, f) if i >= 0]
    assert lad.started_at(f) <= run.sent_from[f]  # the window covers all it sent


def test_slow_link_fails_first_rung() -> None:
    run = run_ladder(Link(200))
    lad = run.ladder
    assert sorted(lad.results) == [0]
    assert lad.results[0].passed is False
    assert lad.lower_bound() == 0.0
    assert list(run.sent_from) == [0]  # nothing sent after the failure
    assert lad.loaded_windows() == [(0.0, run.judged_at[0] + DRAIN_S)]


def test_ladder_stops_at_first_failure() -> None:
    run = run_ladder(Link(1000))
    lad = run.ladder
    # 300 and 800 pass, 1600 fails (about 1000/1600 = 0.63 of it gets through); 3200 is
    # never sent: one rung at a time, and none after a failure.
    assert [lad.results[i].passed for i in sorted(lad.results)] == [True, True, False]
    assert lad.results[2].delivery_ratio < 0.85
    assert sorted(run.sent_from) == [0, 1, 2]
    assert lad.sending(run.end) is None and lad.current() is None


@pytest.mark.parametrize("capacity", [200, 1000, 2500, 10_000])
def test_sequential_rungs_never_overlap(capacity: float) -> None:
    run = run_ladder(Link(capacity, delay=0.05, queue_s=0.2))
    lad = run.ladder
    order = sorted(run.sent_from)
    assert order == list(range(len(order)))
    for i in order:
        # each rung is sent for its duration (to the tick), from when it started
        assert run.sent_from[i] == pytest.approx(lad.started_at(i), abs=STEP)
        assert run.sent_until[i] == pytest.approx(lad.end_of(i), abs=STEP)
        assert lad.end_of(i) == pytest.approx(lad.started_at(i) + DURATION)
        if i + 1 in run.sent_from:
            # the next rung starts when this one is judged, after its queue drained
            assert lad.started_at(i + 1) == run.judged_at[i]
            assert run.sent_until[i] <= run.sent_from[i + 1]
            assert run.sent_from[i + 1] >= final_at(
                lad.rungs[i], run.sent_from[i], run.sent_until[i], run.link)


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


@pytest.mark.parametrize("capacity", [200, 1000, 2500, 10_000])
def test_without_final_signal_rungs_are_judged_at_the_timeout(capacity: float) -> None:
    # Echoes lost: no rung is ever proved final. Each is judged `timeout` after it ended
    # (flagged not final), which is long enough here for the same capacity figure.
    with_final = run_ladder(Link(capacity, delay=0.03)).ladder
    run = run_ladder(Link(capacity, delay=0.03), final_signal=False)
    lad = run.ladder
    assert sorted(lad.results) == sorted(with_final.results)
    for i, r in lad.results.items():
        assert r.final is False
        assert run.judged_at[i] == pytest.approx(lad.end_of(i) + TIMEOUT, abs=STEP)
        assert r.passed == with_final.results[i].passed
        assert r.delivered_kbps == pytest.approx(with_final.results[i].delivered_kbps)
    kbps, at_least = lad.capacity()
    assert at_least == with_final.capacity()[1]
    assert kbps == pytest.approx(with_final.capacity()[0])


def test_short_timeout_judges_early_and_never_overstates() -> None:
    # A timeout shorter than the queue's drain judges a saturated rung on partial evidence:
    # it fails (fewer packets in), and the rate is still the bottleneck's, not the send rate.
    run = run_ladder(Link(1000, delay=0.05, queue_s=0.3), final_signal=False, timeout=0.05)
    kbps, at_least = run.ladder.capacity()
    assert at_least is False
    assert kbps is not None and 0.7 * 1000 <= kbps <= 1.1 * 1000


@settings(max_examples=25, deadline=None)
@given(
    st.floats(120, 8000),
    st.floats(0, 0.05),
    st.integers(0, 1000),
    st.floats(0.001, 0.08),
    st.booleans(),
)
def test_capacity_never_overstates_the_link(c: float, loss: float, seed: int, delay: float,
                                            final_signal: bool) -> None:
    run = run_ladder(Link(c, loss=loss, seed=seed, delay=delay), final_signal=final_signal)
    kbps, at_least = run.ladder.capacity()
    assert kbps is not None
    assert kbps <= 1.1 * c
    if at_least:
        # the link carried everything: the estimate is (about) the top rung, below C
        assert kbps >= 0.85 * (1 - loss) * TOP * 0.95
        assert kbps <= TOP
    else:
        assert kbps >= 0.7 * (1 - loss) * c


def test_lossy_link_faster_than_ladder_still_at_least() -> None:
    run = run_ladder(Link(10_000, loss=0.05, seed=3))
    kbps, at_least = run.ladder.capacity()
    assert at_least is True
    assert kbps is not None and 0.85 * TOP <= kbps <= TOP


# ------------------------------------------------------------------------ make_ladder


def test_make_ladder_sizes_within_bounds() -> None:
    # size = int(rate * 1000 / 8 / pps) - 66, clamped to [60, 1200]:
    # 300 -> 187 - 66 = 121; 800 -> 500 - 66 = 434; 1600 -> 934; 3200 -> 1934 -> 1200
    rungs = make_ladder(DEFAULT_RATES, 200.0)
    assert [r.payload_size for r in rungs] == [121, 434, 934, 1200]
    assert [r.index for r in rungs] == [0, 1, 2, 3]
    assert [r.rate_kbps for r in rungs] == [300.0, 800.0, 1600.0, 3200.0]
    # interval: (121 + 66) * 8 / 300 000 = 4.987 ms
    assert rungs[0].interval == pytest.approx(187 * 8 / 300_000)
    # at 300 packets/s: 300 -> 125 - 66 = 59 -> 60 (the floor); 800 -> 333 - 66 = 267
    assert MIN_PAYLOAD == 60
    assert [r.payload_size for r in make_ladder(DEFAULT_RATES, 300.0)] == [60, 267, 600, 1200]
    assert make_ladder((50,), 200.0)[0].payload_size == 60  # 31 - 66 < 0: the floor


@given(st.lists(st.integers(1, 100_000), min_size=1, max_size=8).map(sorted),
       st.floats(10, 2000))
def test_make_ladder_property(rates: list[int], pps: float) -> None:
    rungs = make_ladder(rates, pps)
    assert len(rungs) == len(rates)
    for r, rate in zip(rungs, rates, strict=True):
        assert MIN_PAYLOAD <= r.payload_size <= LOAD_MAX_SIZE
        # the interval reproduces the nominal rate
        assert (r.payload_size + LOAD_OVERHEAD_BYTES) * 8 / r.interval == pytest.approx(rate * 1000)
        if MIN_PAYLOAD < r.payload_size < LOAD_MAX_SIZE:
            assert 1 / r.interval == pytest.approx(pps, rel=0.02, abs=1.0)


def test_empty_ladder_rejected() -> None:
    with pytest.raises(ValueError):
        Ladder((), 0.6)


# ------------------------------------------------------------------------ state machine

# Binary-exact times, so that boundaries compare exactly: rungs of 0.5 s.
D = 0.5


def _full(rung: Rung, n: int = 100) -> RungObservation:
    """All `n` packets of `rung` in, at its send rate."""
    return RungObservation(n, n, n * rung.payload_size, 0.0, (n - 1) * rung.interval)


def _starved(rung: Rung, n: int = 100) -> RungObservation:
    """Half the packets in, at half the rate: a bottleneck at half the rung's rate."""
    got = n // 2
    return RungObservation(n, got, got * rung.payload_size, 0.0, (n - 1) * rung.interval)


def _observer(lad: Ladder, good: set[int], calls: list[int] | None = None,
              ) -> Callable[[int], RungObservation]:
    def observe(i: int) -> RungObservation:
        if calls is not None:
            calls.append(i)
        return _full(lad.rungs[i]) if i in good else _starved(lad.rungs[i])
    return observe


def _never(i: int) -> bool:
    return False


def _always(i: int) -> bool:
    return True


def test_sending_and_current_with_explicit_times() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    assert lad.sending(0.0) is None and lad.current() is None  # not started
    assert lad.started_at(0) is None
    assert not lad.started and not lad.in_flight()
    lad.start(1.0)
    lad.start(5.0)  # a second start does not restart
    assert lad.started and lad.in_flight()
    assert lad.started_at(0) == 1.0 and lad.end_of(0) == 1.5
    assert lad.started_at(1) is None
    assert lad.sending(1.0).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.49).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.5) is None  # rung 0 over...
    assert lad.sending(9.0) is None  # ...and no next rung until it is judged
    assert lad.current().index == 0  # type: ignore[union-attr]  # awaiting judgement
    assert lad.in_flight()
    r = lad.evaluate(1.75, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert r is not None and r.rung.index == 0 and r.passed
    assert lad.current().index == 1  # type: ignore[union-attr]
    assert lad.started_at(1) == 1.75 and lad.end_of(1) == 2.25  # starts when 0 is judged
    assert lad.sending(1.75).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.24).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.25) is None
    assert lad.current().index == 1  # type: ignore[union-attr]
    r = lad.evaluate(2.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert r is not None and r.rung.index == 1 and r.passed
    assert lad.done and not lad.in_flight()  # the top rung passed
    assert lad.current() is None and lad.sending(2.5) is None
    assert lad.started_at(2) is None


def test_rung_not_judged_before_its_end_even_if_final() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    for now in (0.0, 0.25, 0.49):
        assert lad.evaluate(now, _observer(lad, {0, 1}, calls), 0.0, _always, TIMEOUT) is None
    assert calls == [] and lad.results == {}
    assert lad.capacity() == (None, False)
    assert lad.current().index == 0  # type: ignore[union-attr]
    r = lad.evaluate(0.5, _observer(lad, {0, 1}, calls), 0.0, _always, TIMEOUT)
    assert calls == [0]
    assert r is not None and r.passed and r.final
    assert lad.results == {0: r}
    assert not lad.done


def test_rung_judged_on_final_before_the_timeout() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    final: set[int] = set()
    lad.start(0.0)
    observe = _observer(lad, {0, 1}, calls)
    # ended at 0.5, not final yet: waits (the timeout is 1 s away)
    for now in (0.5, 0.6, 0.7):
        assert lad.evaluate(now, observe, 0.0, final.__contains__, 1.0) is None
    assert calls == []
    final.add(0)
    r = lad.evaluate(0.75, observe, 0.0, final.__contains__, 1.0)
    assert calls == [0]
    assert r is not None and r.final is True and r.passed
    assert lad.started_at(1) == 0.75  # the next rung starts at once
    # the next rung's final flag is its own: rung 0's does not judge it
    assert lad.evaluate(1.25, observe, 0.0, final.__contains__, 1.0) is None
    assert calls == [0]


def test_rung_judged_at_the_timeout_without_final() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    observe = _observer(lad, {0}, calls)
    assert lad.evaluate(1.49, observe, 0.0, _never, 1.0) is None  # end 0.5 + timeout 1.0
    assert calls == []
    r = lad.evaluate(1.5, observe, 0.0, _never, 1.0)
    assert calls == [0]
    assert r is not None and r.final is False and r.passed
    assert lad.results[0].final is False
    assert lad.started_at(1) == 1.5
    # rung 1 (starved) also times out: fails, not final, the ladder is done
    assert lad.evaluate(2.99, observe, 0.0, _never, 1.0) is None
    r = lad.evaluate(3.0, observe, 0.0, _never, 1.0)
    assert r is not None and r.rung.index == 1 and not r.passed and r.final is False
    assert lad.done
    assert calls == [0, 1]


def test_evaluate_judges_each_rung_once() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    observe = _observer(lad, {0, 1}, calls)
    results = [lad.evaluate(now, observe, 0.0, _always, TIMEOUT)
               for now in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert [r is not None for r in results] == [True, False, False, False, False]
    assert calls == [0]  # rung 1 (started at 0.5) is not over before 1.0
    assert lad.evaluate(1.0, observe, 0.0, _always, TIMEOUT) is not None
    assert calls == [0, 1] and lad.done
    for now in (1.5, 5.0, 50.0):  # done: nothing more is judged
        assert lad.evaluate(now, observe, 0.0, _always, TIMEOUT) is None
    assert calls == [0, 1]
    assert sorted(lad.results) == [0, 1]


def test_failed_rung_ends_the_ladder() -> None:
    lad = Ladder(make_ladder((300, 800, 1600)), D)
    lad.start(0.0)
    observe = _observer(lad, {0})
    assert lad.evaluate(0.5, observe, 0.0, _always, TIMEOUT).passed  # type: ignore[union-attr]
    r = lad.evaluate(1.0, observe, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed
    assert lad.done and lad.current() is None and lad.sending(1.0) is None
    assert lad.started_at(2) is None  # the next rung is never started
    assert lad.evaluate(9.0, observe, 0.0, _always, TIMEOUT) is None


def test_abort_stops_sending_and_judging() -> None:
    lad = Ladder(make_ladder(DEFAULT_RATES), 0.6)
    lad.start(0.0)
    assert lad.sending(0.0) is not None
    lad.abort(0.1)
    assert lad.done and not lad.in_flight()
    # the rung in progress keeps its loaded window, closed at the abort (+ drain)
    assert lad.loaded_windows() == [(0.0, 0.1 + DRAIN_S)]
    assert lad.current() is None
    assert lad.sending(0.1) is None
    assert lad.sending(0.7) is None
    assert lad.evaluate(5.0, lambda i: pytest.fail("observe called after abort"), 0.0,
                        lambda i: pytest.fail("is_final called after abort"), 0.1) is None
    assert lad.results == {}
    assert lad.capacity() == (None, False)


def test_abort_after_a_pass_keeps_what_was_shown() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    lad.abort(0.6)  # during rung 1
    assert lad.capacity() == (300.0, True)
    assert lad.upper_bound() == math.inf
    assert sorted(lad.results) == [0]


def test_nothing_arrived_fails_rung_with_zero_capacity() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(1.0, lambda i: RungObservation(120, 0, 0, 0.0, 0.0), 0.0, _always, 0.1)
    assert r is not None and r.passed is False and r.delivered_kbps is None
    assert lad.done
    assert lad.results[0] is r
    assert lad.capacity() == (0.0, False)
    assert lad.upper_bound() == 0.0


def test_a_rung_failed_on_a_timeout_without_any_report_has_no_capacity_figure() -> None:
    # A long, slow link: the rung's report had not come back when the timeout struck. That
    # says nothing about the rate: the capacity is unknown, not 0 kbit/s.
    lad = Ladder(make_ladder((300, 800)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(2.0, lambda i: RungObservation(120, 0, 0, 0.0, 0.0), 0.0, _never, 0.1)
    assert r is not None and not r.passed and not r.final
    assert lad.done
    assert lad.capacity() == (None, False)
    assert lad.upper_bound() == math.inf


def test_observe_none_fails_rung() -> None:
    lad = Ladder(make_ladder((300,)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(1.0, lambda i: None, 0.0, _never, 0.1)
    assert lad.done and lad.results[0].passed is False
    assert r == RungResult(lad.rungs[0], False, None, 0.0, False)


def test_delivery_ratio_capped_at_one() -> None:
    # The receiver may count more than the sender's (stale) figure: the ratio stays <= 1.
    lad = Ladder(make_ladder((300,)), D)
    lad.start(0.0)
    rung = lad.rungs[0]
    obs = RungObservation(90, 100, 100 * rung.payload_size, 0.0, 99 * rung.interval)
    r = lad.evaluate(0.5, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and r.delivery_ratio == 1.0 and r.passed


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
        r = lad.evaluate(1.0, lambda i: obs, base_loss, _always, 0.1)
        assert r is not None
        return r.passed

    assert judge(0.2) is True
    assert judge(0.0) is False
    assert judge(5.0) is True  # absurd loss is capped at 90 %, not negative keep


# ------------------------------------------------------------------------ bounds


def test_lower_bound_is_the_delivered_rate_capped_at_nominal() -> None:
    rungs = make_ladder((300, 800))

    def lower_after(delivered_ratio: float) -> Ladder:
        lad = Ladder(rungs, D)
        lad.start(0.0)
        n, rung = 100, rungs[0]
        span = (n - 1) * rung.interval / delivered_ratio
        obs = RungObservation(n, n, n * rung.payload_size, 0.0, span)
        r = lad.evaluate(0.5, lambda i: obs, 0.0, _always, TIMEOUT)
        assert r is not None and r.passed
        return lad

    fast = lower_after(1.1)  # arrivals bunched: delivered 330 > nominal 300
    assert fast.results[0].delivered_kbps == pytest.approx(330)
    assert fast.lower_bound() == 300.0  # never above the nominal rate
    assert fast.capacity() == (300.0, True)  # no judged rung failed: "at least"
    slow = lower_after(0.9)  # delivered 270, still a pass (>= 0.85 x 300)
    assert slow.lower_bound() == pytest.approx(270)
    assert slow.capacity() == (pytest.approx(270), True)
    assert slow.upper_bound() == math.inf  # no rung failed yet


def test_capacity_after_a_failure_is_the_best_delivered_rate() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0}), 0.0, _always, TIMEOUT)
    lad.evaluate(1.0, _observer(lad, {0}), 0.0, _always, TIMEOUT)
    delivered = lad.results[1].delivered_kbps
    # 50 of 100 packets over the span of 99 intervals: 800 x 49/99 (first packet not counted)
    assert delivered == pytest.approx(800 * 49 / 99)
    assert lad.capacity() == (delivered, False)
    assert lad.upper_bound() == delivered
    assert lad.lower_bound() == pytest.approx(300)


# ------------------------------------------------------------------------ loaded windows


def test_loaded_windows_open_while_unjudged_closed_after_failure() -> None:
    lad = Ladder(make_ladder((300, 800, 1600)), D)
    assert lad.loaded_windows() == []  # not started
    lad.start(1.0)
    assert lad.loaded_windows() == [(1.0, math.inf)]  # being sent: open-ended
    lad.evaluate(1.5, _observer(lad, {0, 1}), 0.0, _never, TIMEOUT)
    assert lad.loaded_windows() == [(1.0, math.inf)]  # ended, unjudged: still open
    lad.evaluate(1.75, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 0 passes
    # a passed rung did not saturate the link: its window is gone; rung 1's is open
    assert lad.loaded_windows() == [(1.75, math.inf)]
    lad.evaluate(2.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 1 passes
    assert lad.loaded_windows() == [(2.5, math.inf)]
    r = lad.evaluate(3.25, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 2 fails
    assert r is not None and not r.passed and lad.done
    # closed once judged, plus the time its queue takes to drain; rung 1, the last to pass
    # before the failure, ran close to capacity and counts as loaded too
    assert lad.loaded_windows() == [(1.75, 2.5 + DRAIN_S), (2.5, 3.25 + DRAIN_S)]
    assert lad.near_capacity(1) and not lad.near_capacity(0)


def test_loaded_window_of_a_rung_failed_on_the_timeout() -> None:
    lad = Ladder(make_ladder((300,)), D)
    lad.start(0.0)
    assert lad.evaluate(1.0, _observer(lad, set()), 0.0, _never, 0.75) is None
    assert lad.loaded_windows() == [(0.0, math.inf)]
    r = lad.evaluate(1.25, _observer(lad, set()), 0.0, _never, 0.75)
    assert r is not None and not r.passed and not r.final
    assert lad.loaded_windows() == [(0.0, 1.25 + DRAIN_S)]


def test_loaded_windows_empty_when_the_top_rung_passes() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    lad.evaluate(1.0, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert lad.done and lad.loaded_windows() == []


def _observed(rung: Rung, sent: int, received: int, span: float) -> RungObservation:
    return RungObservation(sent, received, received * rung.payload_size, 0.0, span)


def test_sender_held_back_by_its_own_machine_is_not_blamed_on_the_link() -> None:
    # A busy CPU let the sender send only 70 % of the rung, spread over the whole rung; the
    # link delivered every one of them. The link carried all it was offered: the rung passes,
    # and what it proves is the rate actually sent, not the rung's.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    full = round(DURATION / rung.interval)
    sent = int(full * 0.7)
    obs = _observed(rung, sent, sent, DURATION - DURATION / sent)
    r = lad.evaluate(DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and r.passed
    assert r.sender_limited
    assert r.sent_kbps == pytest.approx(0.7 * 1600, rel=0.02)
    assert lad.capacity()[0] == pytest.approx(0.7 * 1600, rel=0.05)
    assert lad.capacity()[1] is True


def test_link_slower_than_what_was_sent_still_fails_the_rung() -> None:
    # The sender sent the full rung, the link delivered it at 70 %: a bottleneck.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    full = round(DURATION / rung.interval)
    obs = _observed(rung, full, full, DURATION / 0.7)
    r = lad.evaluate(DURATION / 0.7 + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed
    assert not r.sender_limited
    assert r.delivered_kbps == pytest.approx(0.7 * 1600, rel=0.05)


def test_held_back_sender_on_a_slower_link_still_fails() -> None:
    # 80 % sent, and the link delivered that at only half the rate it was sent.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    sent = int(round(DURATION / rung.interval) * 0.8)
    obs = _observed(rung, sent, sent, 2 * DURATION)
    r = lad.evaluate(2 * DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed and r.sender_limited


def test_abort_marks_a_ladder_cut_short_but_not_a_finished_one() -> None:
    lad = Ladder(make_ladder((300, 800)), DURATION)
    lad.start(0.0)
    lad.abort(0.1)
    assert lad.done and lad.aborted
    finished = Ladder(make_ladder((300,)), DURATION)
    finished.start(0.0)
    rung = finished.rungs[0]
    full = round(DURATION / rung.interval)
    obs = _observed(rung, full, full, DURATION)
    assert finished.evaluate(DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT) is not None
    assert finished.done and not finished.aborted
    finished.abort(1.0)  # too late: the capacity was found
    assert not finished.aborted

"""Tests for netprobe.core.ladder, driven through a simulated bottleneck link (the model is
in ladder_sim.py), and of make_ladder. The state machine with explicit times, its bounds and
loaded windows: test_ladder_state.py."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ladder_sim import (
    DEFAULT_RATES,
    DURATION,
    PASS_RATIO,
    STEP,
    TIMEOUT,
    TOP,
    Link,
    final_at,
    observe_rung,
    run_ladder,
    transit,
)

from netprobe.core.ladder import (
    DRAIN_S,
    MIN_PAYLOAD,
    Ladder,
    RungObservation,
    make_ladder,
)
from netprobe.core.measure import LOAD_OVERHEAD_BYTES
from netprobe.core.wire import LOAD_MAX_SIZE

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
    # size = int(rate * 1000 / 8 / pps) - 72, clamped to [60, 1200]:
    # 300 -> 187 - 72 = 115; 800 -> 500 - 72 = 428; 1600 -> 928; 3200 -> 1928 -> 1200
    rungs = make_ladder(DEFAULT_RATES, 200.0)
    assert [r.payload_size for r in rungs] == [115, 428, 928, 1200]
    assert [r.index for r in rungs] == [0, 1, 2, 3]
    assert [r.rate_kbps for r in rungs] == [300.0, 800.0, 1600.0, 3200.0]
    # interval: (115 + 72) * 8 / 300 000 = 4.987 ms
    assert rungs[0].interval == pytest.approx(187 * 8 / 300_000)
    # at 300 packets/s: 300 -> 125 - 72 = 53 -> 60 (the floor); 800 -> 333 - 72 = 261
    assert MIN_PAYLOAD == 60
    assert [r.payload_size for r in make_ladder(DEFAULT_RATES, 300.0)] == [60, 261, 594, 1200]
    assert make_ladder((50,), 200.0)[0].payload_size == 60  # 31 - 72 < 0: the floor


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


# ------------------------------------------------------------------------ random loss allowed


def _judged(ratio: float, base_loss: float, likely_loss: float) -> Ladder:
    """A one-rung ladder whose rung delivered `ratio` of its packets, at `ratio` of its rate,
    judged with the given allowance for random loss."""
    lad = Ladder(make_ladder((300,), 300.0), 0.6)
    lad.start(0.0)
    rung = lad.rungs[0]
    sent = round(0.6 / rung.interval)
    got = round(sent * ratio)
    span = 0.6 * (got - 1) / got  # over the sending time: arrivals at `ratio` of the rate
    obs = RungObservation(sent, got, got * rung.payload_size, 10.0, 10.0 + span)
    lad.evaluate(0.7, lambda i: obs, base_loss, lambda i: True, 1.0, likely_loss)
    return lad


def test_a_rung_passed_only_on_the_uncertainty_of_the_loss_counts_as_near_capacity() -> None:
    # 62 % delivered: a link losing 15 % (its best estimate) explains at most 85 % x 0.85;
    # only the upper end of its interval (36 %) lets the rung pass. It may have overflowed
    # the queue: its load must not count as the link's loss, its probes are loaded.
    lad = _judged(0.62, base_loss=0.36, likely_loss=0.15)
    result = lad.results[0]
    assert result.passed and result.loss_allowed
    assert lad.near_capacity(0)
    assert lad.loaded_windows() == [(0.0, 0.7 + DRAIN_S)]


def test_a_rung_that_lost_what_the_link_loses_is_not_near_capacity() -> None:
    # 62 % delivered on a link whose best loss estimate is 40 %: random loss explains it.
    lad = _judged(0.62, base_loss=0.5, likely_loss=0.4)
    result = lad.results[0]
    assert result.passed and not result.loss_allowed
    assert not lad.near_capacity(0)
    assert lad.loaded_windows() == []
    assert _judged(0.95, base_loss=0.1, likely_loss=0.0).results[0].loss_allowed is False


# ------------------------------------------------------------------------ emptied token buckets


def _observed(rung_rate: float, head_kbps: float, tail_kbps: float, *, duration: float = 0.6,
              empties_at: float = 0.3, queue: bool = False, jitter_s: float = 0.0,
              cross_kbps: float = 0.0, queue_s: float = 1e9) -> tuple[Ladder, RungObservation]:
    """A rung sent at `rung_rate` for `duration` whose packets the link delivered at
    `head_kbps` until `empties_at` and at `tail_kbps` after: a policer's bucket emptying
    (dropping what exceeds the rate) or, with `queue`, a shaper's or a bottleneck's (holding
    it back, dropping what would wait over `queue_s`). `jitter_s`: each packet's delay varies
    by up to that much either way, packets
    overtaking each other. `cross_kbps`: our probes beside the rung. As RungArrivals counts
    them."""
    import random

    from netprobe.core.measure import RungArrivals, others_kbps

    rnd = random.Random(7)
    ladder = Ladder(make_ladder((rung_rate,), 300.0), duration, PASS_RATIO)
    rung = ladder.rungs[0]
    wire = rung.payload_size + LOAD_OVERHEAD_BYTES
    sent = int(duration / rung.interval)
    packets, free_at, credit = [], 10.0, 0.0
    for seq in range(sent):
        t = 10.0 + seq * rung.interval
        rate = head_kbps if t - 10.0 < empties_at else tail_kbps
        service = wire * 8 / (rate * 1000)
        if queue:
            if max(free_at, t) - t > queue_s:
                continue  # the queue is full: dropped
            free_at = max(free_at, t) + service
            at = free_at
        else:  # keep the share of packets the rate lets through
            credit += min(1.0, rung.interval / service)
            if credit < 1.0:
                continue
            credit -= 1.0
            at = t
        packets.append((at + 0.02 + rnd.uniform(-jitter_s, jitter_s), seq, t))
    arrivals = RungArrivals()
    for at, seq, t in sorted(packets):
        arrivals.add(seq, rung.payload_size, at, t)
    others = [(10.0 + k * 0.02, round(cross_kbps * 1000 / 8 * 0.02))
              for k in range(int(5 * duration / 0.02))] if cross_kbps else []
    obs = RungObservation(sent, arrivals.seqs.received, arrivals.payload_bytes,
                          arrivals.first_at, arrivals.last_at, *arrivals.tails(others),
                          others_kbps(others, arrivals.first_at, arrivals.last_at))
    return ladder, obs


@pytest.mark.parametrize("queue", [False, True], ids=["policer", "shaper"])
def test_a_rung_whose_tail_slows_to_the_token_rate_fails_at_the_sustained_rate(
        queue: bool) -> None:
    ladder, obs = _observed(3200, 3200, 400, queue=queue)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.passed and result.bucket_emptied
    assert result.tail_kbps == pytest.approx(400, rel=0.1)
    kbps, at_least = ladder.capacity()
    assert kbps == pytest.approx(400, rel=0.1) and not at_least
    assert ladder.lower_bound() <= kbps and ladder.upper_bound() == kbps


def test_a_shaper_whose_queue_overflows_shows_its_rate() -> None:
    # mobile data after the quota: the bucket empties, its queue fills, then drops
    ladder, obs = _observed(800, 10000, 128, queue=True, empties_at=0.15, queue_s=0.3)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.passed and result.bucket_emptied
    assert ladder.capacity()[0] == pytest.approx(128, rel=0.15)


def test_a_bucket_emptying_late_in_the_rung_shows_in_its_last_sixth() -> None:
    ladder, obs = _observed(3200, 3200, 400, empties_at=0.45)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and result.bucket_emptied
    # the last packets mix in a few from before the bucket emptied: high, but not video's
    assert result.tail_kbps == pytest.approx(400, rel=0.4) and result.tail_kbps < 600


def test_a_steady_bottleneck_is_not_taken_for_an_emptied_bucket() -> None:
    for head, tail, queue in ((3200, 3200, False), (2000, 2000, True), (3200, 2200, False),
                              (1000, 1000, True)):
        ladder, obs = _observed(3200, head, tail, queue=queue)
        ladder.start(0.0)
        result = ladder.evaluate(1.0, lambda i, o=obs: o, 0.0, lambda i: True, TIMEOUT)
        assert result is not None and not result.bucket_emptied, (head, tail)
        if head < 3200:  # a bottleneck: the rung fails at the link's rate
            assert ladder.capacity()[0] == pytest.approx(head, rel=0.05), (head, tail)


def test_heavy_jitter_and_reordering_do_not_thin_a_tail() -> None:
    # +-60 ms of jitter with overtaking: the last sixth of the arrivals holds only stragglers,
    # but the packets sent then all arrived (judged by send time).
    for rate in (800, 1600, 3200):
        ladder, obs = _observed(rate, 20000, 20000, jitter_s=0.06)
        ladder.start(0.0)
        result = ladder.evaluate(1.0, lambda i, o=obs: o, 0.0, lambda i: True, TIMEOUT)
        assert result is not None and result.passed and not result.bucket_emptied, rate
        assert result.tail_kbps is None or result.tail_kbps > 0.8 * rate


def test_a_capacity_counts_the_probes_that_shared_the_link() -> None:
    # A 150 kbit/s bottleneck that carried 40 kbit/s of our echoes beside the rung: the link
    # (what a call gets) is the sum.
    ladder, obs = _observed(300, 110, 110, queue=True, cross_kbps=40)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.passed and not result.bucket_emptied
    assert result.cross_kbps == pytest.approx(40, rel=0.1)
    assert ladder.capacity()[0] == pytest.approx(150, rel=0.05)


def test_an_older_reflector_without_tails_judges_as_before() -> None:
    ladder, obs = _observed(3200, 3200, 400)
    from dataclasses import replace

    old = replace(obs, tail_kbps=None, end_kbps=None)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: old, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.bucket_emptied and result.tail_kbps is None


def test_tails_off_over_a_tcp_relay_judges_as_before() -> None:
    ladder, obs = _observed(3200, 3200, 400)
    plain = Ladder(ladder.rungs, ladder.duration, PASS_RATIO, tails=False)
    plain.start(0.0)
    result = plain.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.bucket_emptied and result.tail_kbps is None


def test_a_sender_that_slowed_down_is_not_a_bucket_emptying() -> None:
    # Its own machine busy, the sender sent the last third of a 3200 kbit/s rung at a quarter
    # of the rate; the link delivered all of it at once: nothing there tells of the link.
    from netprobe.core.measure import RungArrivals

    ladder = Ladder(make_ladder((3200,), 300.0), 0.6, PASS_RATIO)
    rung = ladder.rungs[0]
    arrivals, t, seq = RungArrivals(), 10.0, 0
    while t < 10.6:
        arrivals.add(seq, rung.payload_size, t + 0.02, t)
        t += rung.interval * (1 if t < 10.4 else 4)
        seq += 1
    tail, end = arrivals.tails()
    assert tail is None and end is None
    obs = RungObservation(int(0.6 / rung.interval), arrivals.seqs.received,
                          arrivals.payload_bytes, arrivals.first_at, arrivals.last_at, tail, end)
    ladder.start(0.0)
    result = ladder.evaluate(1.0, lambda i: obs, 0.0, lambda i: True, TIMEOUT)
    assert result is not None and not result.bucket_emptied


def test_a_rung_judged_on_its_timeout_takes_its_figures_from_what_arrived_since() -> None:
    # A shaper's deep queue still held most of the rung when it was judged: the partial tail
    # mixed the burst with the sustained rate; the rest, arriving later, shows the rate.
    ladder, full = _observed(800, 10000, 128, queue=True, empties_at=0.2, queue_s=2.0)
    from dataclasses import replace

    early = replace(full, received=40, tail_kbps=320.0, end_kbps=171.0)
    current = [early]
    ladder.start(0.0)
    result = ladder.evaluate(0.6 + TIMEOUT, lambda i: current[0], 0.0, lambda i: False, TIMEOUT)
    assert result is not None and not result.passed and not result.final
    assert ladder.capacity()[0] > 140  # the burst still in it
    current[0] = full
    assert ladder.refine(lambda i: current[0], 0.0, lambda i: True)
    assert ladder.capacity()[0] == pytest.approx(128, rel=0.1)
    assert not ladder.results[0].passed and ladder.results[0].final
    assert not ladder.refine(lambda i: current[0], 0.0, lambda i: True)  # final: left alone

"""Tests for netprobe.core.measure: jitter, loss accounting, Wilson interval, throughput,
percentile.

Expected values are worked by hand; the working is in the comments.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    PROBE_OVERHEAD_BYTES,
    JitterEstimator,
    SequenceTracker,
    delivered_kbps,
    percentile,
    wilson_interval,
)

# ------------------------------------------------------------------------ JitterEstimator


def test_jitter_starts_at_zero_and_first_packet_adds_no_sample() -> None:
    j = JitterEstimator()
    assert j.jitter == 0.0
    assert j.samples == 0
    assert j.update(0.0, 0.1) == 0.0  # no previous transit: nothing to difference
    assert j.samples == 0


def test_jitter_hand_worked_sequence() -> None:
    # Times in ms (all exact in binary).
    # sent     0   20   40   60
    # arrived 100 125  140  170
    # transit 100 105  100  110  ->  |D| = 5, 5, 10
    # J1 = 0 + (5 - 0)/16                 = 0.3125
    # J2 = 0.3125 + (5 - 0.3125)/16       = 0.3125 + 0.29296875     = 0.60546875
    # J3 = 0.60546875 + (10 - 0.60546875)/16 = 0.60546875 + 0.587158203125 = 1.192626953125
    j = JitterEstimator()
    got = [j.update(s, a) for s, a in [(0, 100), (20, 125), (40, 140), (60, 170)]]
    assert got == [0.0, 0.3125, 0.60546875, 1.192626953125]
    assert j.samples == 3


def test_jitter_of_constant_transit_stream_is_zero() -> None:
    # Transit always 37 ms: every D = 0, so J stays 0 however many packets.
    j = JitterEstimator()
    for i in range(500):
        j.update(i * 0.02, i * 0.02 + 0.037)
    assert j.jitter == pytest.approx(0.0, abs=1e-12)
    assert j.samples == 499


def test_jitter_of_alternating_transit_converges_to_step() -> None:
    # Transit alternates 50, 58, 50, 58 ... ms: D alternates +8/-8, |D| = 8 every time.
    # J_n = J_{n-1} + (8 - J_{n-1})/16  =>  8 - J_n = (15/16)(8 - J_{n-1})
    #                                   =>  J_n = 8 (1 - (15/16)^n)
    d = 8.0
    j = JitterEstimator()
    for i in range(301):
        transit = 50.0 + (d if i % 2 else 0.0)
        j.update(i * 20.0, i * 20.0 + transit)
        if i in (1, 2, 10, 50):
            assert j.jitter == pytest.approx(d * (1 - (15 / 16) ** i), rel=1e-12)
    # after 300 samples (15/16)^300 ~ 4e-9: J is d.
    assert j.jitter == pytest.approx(d, rel=1e-6)


def test_jitter_uses_arrival_order_not_send_order() -> None:
    # Packet sent at 20 arrives before the one sent at 0 (reordered).
    # arrival order: (20 -> 110, transit 90), (0 -> 115, transit 115): |D| = 25 -> J = 25/16.
    j = JitterEstimator()
    j.update(20.0, 110.0)
    assert j.update(0.0, 115.0) == pytest.approx(25 / 16)


@given(
    st.lists(
        st.tuples(st.floats(0, 1000), st.floats(0, 2)), min_size=2, max_size=60,
    ),
    st.floats(-1e5, 1e5),
)
def test_jitter_ignores_clock_offset_between_sender_and_receiver(
    pairs: list[tuple[float, float]], offset: float
) -> None:
    # (sent, transit) pairs; the receiver's clock reads `offset` more than the sender's.
    a, b = JitterEstimator(), JitterEstimator()
    for sent, transit in pairs:
        a.update(sent, sent + transit)
        b.update(sent, sent + transit + offset)
    assert b.samples == a.samples == len(pairs) - 1
    assert b.jitter == pytest.approx(a.jitter, abs=1e-9)


@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 2)), min_size=1, max_size=60))
def test_jitter_never_exceeds_largest_transit_difference(pairs: list[tuple[float, float]]) -> None:
    # J is a running average of |D| starting from 0: 0 <= J <= max |D|.
    j = JitterEstimator()
    for sent, transit in pairs:
        j.update(sent, sent + transit)
    transits = [t for _, t in pairs]
    biggest = max((abs(x - y) for x, y in zip(transits, transits[1:], strict=False)), default=0.0)
    assert 0.0 <= j.jitter <= biggest + 1e-9


# ------------------------------------------------------------------------ SequenceTracker


def test_tracker_empty() -> None:
    t = SequenceTracker()
    assert t.received == 0
    assert t.highest == -1
    assert t.lowest is None
    assert t.lost() == 0
    assert t.lost(10) == 10


def test_tracker_in_order_no_loss() -> None:
    t = SequenceTracker()
    for s in range(10):
        assert t.add(s) is True
    assert (t.received, t.highest, t.lowest, t.duplicates, t.reordered) == (10, 9, 0, 0, 0)
    assert t.lost() == 0
    assert t.lost(10) == 0


def test_tracker_gap_is_lost() -> None:
    t = SequenceTracker()
    for s in (0, 1, 2, 5, 6):
        t.add(s)
    # highest 6 -> 7 expected, 5 received -> 2 lost (3 and 4)
    assert t.lost() == 2
    assert t.lost(7) == 2


def test_tracker_duplicates_counted_apart_and_never_reduce_loss() -> None:
    t = SequenceTracker()
    for s in (0, 1, 3):
        t.add(s)
    assert t.lost() == 1  # seq 2 missing
    assert t.add(3) is False
    assert t.add(3) is False
    assert t.add(0) is False
    assert t.duplicates == 3
    assert t.received == 3
    assert t.lost() == 1  # three extra copies do not make up for seq 2
    assert t.lost(4) == 1


def test_tracker_reordered_packets_are_not_lost() -> None:
    t = SequenceTracker()
    for s in (0, 2, 1, 4, 3):
        assert t.add(s) is True
    assert t.reordered == 2  # 1 after 2, 3 after 4
    assert t.lost() == 0
    assert t.lost(5) == 0
    assert t.highest == 4


def test_tracker_late_packet_fills_a_gap() -> None:
    t = SequenceTracker()
    for s in (0, 1, 3):
        t.add(s)
    assert t.lost() == 1
    t.add(2)
    assert t.lost() == 0
    assert t.reordered == 1


def test_tracker_tail_loss_counted_only_with_expected() -> None:
    t = SequenceTracker()
    for s in range(8):
        t.add(s)
    # 10 sent, 8 and 9 never arrived: lost(10) = 2; lost() cannot know about the tail.
    assert t.lost(10) == 2
    assert t.lost() == 0


def test_tracker_lost_expected_ignores_packets_beyond_expected() -> None:
    t = SequenceTracker()
    for s in (0, 1, 5, 6, 7):
        t.add(s)
    # Of the first 4 (0..3), 2 received: 2 lost; packets 5-7 must not offset that.
    assert t.received_below(4) == 2
    assert t.lost(4) == 2


def test_tracker_lowest_tracks_minimum() -> None:
    t = SequenceTracker()
    for s in (7, 5, 9, 6):
        t.add(s)
    assert t.lowest == 5
    assert t.highest == 9


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[int, list[int]]:
    """n packets sent (0..n-1); a random subset arrives, shuffled, with random duplicates."""
    n = draw(st.integers(0, 60))
    kept = draw(st.lists(st.sampled_from(range(n)), unique=True)) if n else []
    dups = draw(st.lists(st.sampled_from(kept), max_size=20)) if kept else []
    order = kept + dups
    seed = draw(st.integers(0, 2**32 - 1))
    random.Random(seed).shuffle(order)
    return n, order


@given(_arrivals())
def test_tracker_matches_brute_force_model(case: tuple[int, list[int]]) -> None:
    n, arrivals = case
    t = SequenceTracker()
    returned = [t.add(s) for s in arrivals]

    # Brute-force model.
    seen: set[int] = set()
    first_time = []
    reordered = 0
    for s in arrivals:
        first_time.append(s not in seen)
        if s not in seen and seen and s < max(seen):
            reordered += 1
        seen.add(s)
    highest = max(seen, default=-1)

    assert returned == first_time
    assert t.received == len(seen)
    assert t.duplicates == len(arrivals) - len(seen)
    assert t.reordered == reordered
    assert t.highest == highest
    assert t.lowest == (min(seen) if seen else None)
    assert t.lost(n) == n - len(seen)
    assert t.lost() == len(set(range(highest + 1)) - seen)
    for limit in (0, n // 2, n):
        assert t.received_below(limit) == len([s for s in seen if s < limit])


@given(_arrivals(), st.data())
def test_tracker_duplicates_never_reduce_loss(
    case: tuple[int, list[int]], data: st.DataObject
) -> None:
    n, arrivals = case
    plain = SequenceTracker()
    for s in arrivals:
        plain.add(s)
    extra = data.draw(st.lists(st.sampled_from(arrivals), max_size=30)) if arrivals else []
    doubled = SequenceTracker()
    for s in arrivals + extra:
        doubled.add(s)
    assert doubled.lost(n) == plain.lost(n)
    assert doubled.lost() == plain.lost()
    assert doubled.received == plain.received


@given(st.integers(1, 80), st.integers(0, 2**32 - 1))
def test_tracker_any_order_of_all_packets_loses_nothing(n: int, seed: int) -> None:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    t = SequenceTracker()
    for s in order:
        t.add(s)
    assert t.lost() == 0
    assert t.lost(n) == 0


# ------------------------------------------------------------------------ wilson_interval


def test_wilson_zero_of_hundred() -> None:
    # p = 0: centre = (z^2/2n)/(1 + z^2/n), half = (z^2/2n)/(1 + z^2/n) -> lower 0,
    # upper = (z^2/n)/(1 + z^2/n) = 0.038416/1.038416 = 0.036995
    lo, hi = wilson_interval(0, 100)
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(0.036995, abs=1e-5)


def test_wilson_five_of_ten() -> None:
    # p = 0.5, n = 10, z^2 = 3.8416: denom = 1.38416, centre = 0.5,
    # half = 1.96 * sqrt(0.025 + 3.8416/400) / 1.38416 = 1.96 * 0.186022 / 1.38416 = 0.263410
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236590, abs=1e-5)
    assert hi == pytest.approx(0.763410, abs=1e-5)


def test_wilson_nothing_tried() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_narrows_with_more_trials() -> None:
    lo1, hi1 = wilson_interval(10, 100)
    lo2, hi2 = wilson_interval(100, 1000)
    assert hi2 - lo2 < hi1 - lo1


@given(st.integers(2, 100_000).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_wilson_contains_p_inside_the_range(case: tuple[int, int]) -> None:
    k, n = case
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo < hi


@pytest.mark.parametrize("k, n", [(0, 11), (6, 6), (100, 100)])
def test_wilson_contains_p_at_the_ends(k: int, n: int) -> None:
    # Mathematically lower = 0 exactly when k = 0 and upper = 1 exactly when k = n.
    lo, hi = wilson_interval(k, n)
    assert lo <= k / n <= hi


@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_symmetric(case: tuple[int, int]) -> None:
    # k successes of n and n-k successes of n are mirror images about 1/2.
    k, n = case
    lo, hi = wilson_interval(k, n)
    lo2, hi2 = wilson_interval(n - k, n)
    assert lo == pytest.approx(1 - hi2, abs=1e-12)
    assert hi == pytest.approx(1 - lo2, abs=1e-12)


# ------------------------------------------------------------------------ delivered_kbps


def test_delivered_kbps_paced_load_returns_send_rate() -> None:
    # 1000 kbit/s of wire bytes with payload 1178: 1178 + 72 = 1250 bytes = 10 000 bits per
    # packet -> one packet every 10 ms. 50 packets arrive at 0, 0.01, ..., 0.49.
    # Wire bytes of all but the first: 49 * 1250 = 61 250 -> 490 000 bit / 0.49 s = 1000 kbit/s
    assert LOAD_OVERHEAD_BYTES == 72
    n, payload = 50, 1178
    rate = delivered_kbps(n, n * payload, 0.0, (n - 1) * 0.010)
    assert rate == pytest.approx(1000.0, rel=1e-9)


def test_delivered_kbps_probe_overhead() -> None:
    # Probe stream: 60-byte payloads + 64 overhead = 124 bytes = 992 bits every 20 ms
    # -> 49.6 kbit/s. 11 packets over 0.2 s.
    assert PROBE_OVERHEAD_BYTES == 64
    rate = delivered_kbps(11, 11 * 60, 5.0, 5.2, overhead=PROBE_OVERHEAD_BYTES)
    assert rate == pytest.approx(49.6, rel=1e-9)


@given(
    st.floats(50, 20_000),          # rate kbit/s
    st.integers(100, 1200),         # payload bytes
    st.integers(3, 400),            # packets
    st.floats(-1e4, 1e4),           # receiver clock at first arrival
)
def test_delivered_kbps_paced_property(rate: float, payload: int, n: int, t0: float) -> None:
    interval = (payload + LOAD_OVERHEAD_BYTES) * 8 / (rate * 1000)
    got = delivered_kbps(n, n * payload, t0, t0 + (n - 1) * interval)
    assert got == pytest.approx(rate, rel=1e-6)


@pytest.mark.parametrize("packets", [0, 1, 2])
def test_delivered_kbps_needs_three_packets(packets: int) -> None:
    assert delivered_kbps(packets, packets * 1000, 0.0, 1.0) is None


@pytest.mark.parametrize("first, last", [(1.0, 1.0), (2.0, 1.0)])
def test_delivered_kbps_needs_a_time_span(first: float, last: float) -> None:
    assert delivered_kbps(10, 10_000, first, last) is None


# ------------------------------------------------------------------------ percentile


def test_percentile_hand_values() -> None:
    # [1, 2, 3, 4]: pos = 3 q/100. q=50 -> pos 1.5 -> 2 + 0.5 * (3-2) = 2.5
    # q=25 -> pos 0.75 -> 1.75; q=90 -> pos 2.7 -> 3.7
    v = [4.0, 1.0, 3.0, 2.0]
    assert percentile(v, 50) == 2.5
    assert percentile(v, 25) == 1.75
    assert percentile(v, 90) == pytest.approx(3.7)
    assert percentile(v, 0) == 1.0
    assert percentile(v, 100) == 4.0
    assert percentile([7.0], 30) == 7.0


def test_percentile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_bounded_and_monotonic(values: list[float], q1: float, q2: float) -> None:
    a, b = sorted((q1, q2))
    pa, pb = percentile(values, a), percentile(values, b)
    tol = 1e-9 * max(1.0, max(abs(x) for x in values))  # interpolation rounding only
    assert min(values) - tol <= pa <= pb + tol
    assert pb <= max(values) + tol
    assert math.isfinite(pa)

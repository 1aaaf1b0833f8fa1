"""The TCP speed test's rate maths (netprobe.core.tcprate): the download's sliced rate and the
upload's busy-time rate, on made-up timings of a link whose rate is known."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netprobe.core.tcprate import NOTHING, busy_rate, sliced_rate

RATE = 250_000.0
"""The made-up link: 2 Mbit/s, in bytes per second."""


def stream(seconds: float, step: float = 0.01, start: float = 0.0,
           rate: float = RATE) -> list[tuple[float, int]]:
    """Reads of a steady download: every `step`, the bytes that came meanwhile."""
    n = int(round(seconds / step))
    return [(start + (i + 1) * step, int(rate * step)) for i in range(n)]


def test_a_steady_download_reads_its_rate() -> None:
    got = sliced_rate(stream(5.0))
    assert got.bps == pytest.approx(RATE, rel=0.01)
    assert got.bytes > 0 and 0 < got.seconds <= 5.0


def test_slow_start_and_a_stall_with_its_burst_do_not_count() -> None:
    """1 s at a quarter of the rate (slow start), then the link's rate, with a 0.3 s stall
    (a packet lost and sent again) whose bytes come in one burst at its end: the plain
    average reads over 10 % low, the sliced rate within 5 %."""
    reads = stream(1.0, rate=RATE / 4)
    steady = stream(4.0, start=1.0)
    held = [r for r in steady if 2.0 < r[0] <= 2.3]
    steady = [r for r in steady if not 2.0 < r[0] <= 2.3]
    burst = (2.3, sum(n for _, n in held))
    reads += sorted(steady + [burst])
    plain = sum(n for _, n in reads[1:]) / (reads[-1][0] - reads[0][0])
    assert plain < 0.9 * RATE
    assert sliced_rate(reads).bps == pytest.approx(RATE, rel=0.05)


def test_a_short_download_gets_fewer_slices_and_still_its_rate() -> None:
    """0.2 s of reads: 3 slices of 6 or 7 reads, the slowest left out (a few % high)."""
    got = sliced_rate(stream(0.2))
    assert got.bps == pytest.approx(RATE, rel=0.05)
    assert got.seconds == pytest.approx(0.19 * 2 / 3)
    assert sliced_rate(stream(0.03, step=0.01)).bps == pytest.approx(RATE, rel=0.01)


def test_too_few_reads_measure_nothing() -> None:
    assert sliced_rate([]) == NOTHING
    assert sliced_rate([(1.0, 10_000)]) == NOTHING
    assert sliced_rate([(1.0, 10_000), (1.0, 10_000)]) == NOTHING


@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 10**7)), max_size=200),
       st.randoms(use_true_random=False))
def test_the_sliced_rate_is_bounded_and_ignores_read_order(
        reads: list[tuple[float, int]], rnd: object) -> None:
    got = sliced_rate(reads)
    shuffled = list(reads)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert sliced_rate(shuffled) == got
    assert got.bps >= 0 and got.bytes <= sum(n for _, n in reads)
    if got.bps:  # no slice is shorter than 50 ms (or the whole span, if that is shorter)
        span = max(t for t, _ in reads) - min(t for t, _ in reads)
        assert got.bps <= sum(n for _, n in reads) / min(span, 0.05) * (1 + 1e-9)


def bodies_over_a_link(sizes: list[int], threads: int, rtt: float, rate: float = RATE
                       ) -> list[tuple[float, float, int]]:
    """Bodies posted over a link of `rate` by `threads` threads, each on a new connection
    (a round trip to open it), its answer back a round trip after its last byte left; the
    threads share the link first come, first served, as its FIFO queue serves them."""
    link_free = 0.0
    clock = [0.0] * threads
    out = []
    for i, size in enumerate(sizes):
        k = i % threads
        opened = clock[k] + rtt
        begins = max(opened, link_free)
        link_free = begins + size / rate
        answered = link_free + rtt
        out.append((opened, answered, size))
        clock[k] = answered
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_the_upload_rate_leaves_out_handshakes_and_waits(threads: int) -> None:
    bodies = bodies_over_a_link([16389, 16389, 45000, 60000, 120000, 16389], threads, 0.04)
    got = busy_rate(bodies, 0.04)
    assert got.bps == pytest.approx(RATE, rel=0.01)
    assert got.bytes == sum(n for _, _, n in bodies)
    if threads == 1:  # bytes over the time to the last answer: the waits count
        assert got.bytes / bodies[-1][1] < 0.8 * RATE


def test_overlapping_bodies_count_their_time_once_and_gaps_not_at_all() -> None:
    bodies = [(0.0, 1.04, 100), (0.5, 1.54, 100), (2.0, 3.04, 100)]
    got = busy_rate(bodies, 0.04)
    assert got.seconds == pytest.approx(2.5)
    assert got.bps == pytest.approx(300 / 2.5)


def test_a_wrong_round_trip_can_at_most_double_the_upload_rate() -> None:
    bodies = [(0.0, 0.1, 1000)]
    assert busy_rate(bodies, 10.0).bps == pytest.approx(1000 / 0.05)
    assert busy_rate(bodies, -1.0).bps == pytest.approx(1000 / 0.1)


def test_unusable_bodies_are_left_out() -> None:
    assert busy_rate([], 0.04) == NOTHING
    assert busy_rate([(1.0, 1.0, 100), (2.0, 1.0, 100), (0.0, 1.0, 0)], 0.04) == NOTHING
    assert busy_rate([(1.0, 1.0, 100), (0.0, 1.0, 500)], 0.0).bps == pytest.approx(500)

"""Token-bucket policers and shapers in the link model: pure, made-up times, no I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linkdrive import drain, run_stream

from netprobe.errors import ConfigError
from netprobe.lab.bucket import BucketFill, TokenBucket, fit_bucket
from netprobe.lab.link import Link, LinkConfig


def paced(
    rate_kbps: float, size: int, seconds: float, start: float = 0.0
) -> list[tuple[float, int]]:
    """Arrivals of ``size``-byte packets offered at ``rate_kbps`` for ``seconds``."""
    interval = size * 8 / (rate_kbps * 1000)
    return [(start + i * interval, size) for i in range(int(seconds / interval))]


# -- the bucket itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate_kbps": 0, "burst_bytes": 10_000}, "rate_kbps must be"),
        ({"rate_kbps": math.inf, "burst_bytes": 10_000}, "rate_kbps must be"),
        ({"rate_kbps": math.nan, "burst_bytes": 10_000}, "rate_kbps must be"),
        ({"rate_kbps": 400, "burst_bytes": 1499}, "burst_bytes must be .* >= 1500"),
        ({"rate_kbps": 400, "burst_bytes": 2000.5}, "burst_bytes must be a whole number"),
        ({"rate_kbps": 400, "burst_bytes": True}, "burst_bytes must be a whole number"),
    ],
)
def test_bucket_settings_are_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TokenBucket(**kwargs)  # type: ignore[arg-type]


def test_fill_starts_full_refills_at_the_rate_and_caps_at_the_depth() -> None:
    fill = BucketFill(TokenBucket(rate_kbps=80, burst_bytes=10_000), now=5.0)  # 10 000 B/s
    assert fill.level(5.0) == 10_000
    assert fill.take(6000, 5.0) and fill.level(5.0) == 4000
    assert not fill.take(5000, 5.0) and fill.level(5.0) == 4000  # a drop takes nothing
    assert fill.level(5.05) == pytest.approx(4500)
    assert fill.ready_at(5000) == pytest.approx(5.1)
    assert fill.level(60.0) == 10_000  # capped
    assert fill.level(4.0) == 4000  # the past is the last update
    fill.spend(1500, 5.1)
    assert fill.level(5.1) == pytest.approx(3500)
    assert fill.ready_at(50_000) == pytest.approx(5.1 + 0.65)  # waits for a full bucket
    fill.reconfigure(TokenBucket(rate_kbps=8, burst_bytes=2000), 5.1)
    assert fill.level(5.1) == pytest.approx(2000)  # kept, capped at the new depth
    fill.spend(1000, 5.1)
    assert fill.level(5.2) == pytest.approx(1100)  # 1000 B/s now


# -- policer -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sustained=st.floats(64, 5000),
    burst=st.integers(3000, 1_000_000),  # >= 2 packets: a bucket never overflows (below)
    line_over=st.floats(1.5, 40),
    size=st.integers(200, 1500),
)
def test_policer_long_run_rate_is_the_sustained_rate(
    sustained: float, burst: int, line_over: float, size: int
) -> None:
    line = sustained * line_over
    policer = TokenBucket(rate_kbps=sustained, burst_bytes=burst)
    link: Link[int] = Link(LinkConfig(delay_ms=10, policer=policer), epoch=0.0)
    seconds = max(4.0, 4 * burst * 8 / (sustained * 1000))  # long against the burst
    arrivals = paced(line, size, seconds)
    out = run_stream(link, arrivals)
    delivered = len(out) * size
    expected = burst + sustained * 1000 / 8 * arrivals[-1][0]
    # What passed = the full bucket + what refilled meanwhile, less what the bucket still holds
    # (less than one packet plus one interval's refill, < 2 packets: so it never overflows).
    assert expected - 2 * size - 1e-6 <= delivered <= expected + 1e-6
    stats = link.stats()
    assert stats.dropped_policer == len(arrivals) - len(out) > 0
    assert stats.dropped_queue == stats.dropped_loss == 0


def test_policer_passes_a_burst_of_the_bucket_untouched_after_idle() -> None:
    # 20 Mbit/s line, 400 kbit/s sustained, 150 kB bucket: 100 packets of 1500 B pass at the
    # line rate, the 101st is dropped.
    policer = TokenBucket(rate_kbps=400, burst_bytes=150_000)
    link: Link[int] = Link(
        LinkConfig(delay_ms=20, rate_kbps=20_000, queue_packets=1000, policer=policer), epoch=0.0
    )
    burst = [(i * 0.0006, 1500) for i in range(100)]  # exactly the line rate
    out = run_stream(link, burst)
    assert [p for p, _ in out] == list(range(100))
    for (p, released), (sent, _) in zip(out, burst, strict=True):
        assert released == pytest.approx(sent + 0.0006 + 0.020), p  # no wait, no queue
    assert link.stats().dropped_policer == 0
    # what refilled during the burst's 0.06 s (3000 B) passes too, then nothing
    assert [link.submit(100 + i, 1500, 0.06) for i in range(3)] == [True, True, False]
    assert link.stats().dropped_policer == 1 and len(drain(link)) == 2
    # after idle the bucket is full again: the same burst passes again, untouched
    later = [(10.0 + t, size) for t, size in burst]
    assert link.bucket_level(10.0) == 150_000
    assert len(run_stream(link, later)) == 100 and link.stats().dropped_policer == 1
    # a bigger burst than the bucket: what is over is dropped
    assert sum(link.submit(i, 1500, 20.0) for i in range(150)) == 100


def test_policer_drops_where_a_shaper_delays() -> None:
    bucket = TokenBucket(rate_kbps=400, burst_bytes=50_000)
    arrivals = paced(4000, 1000, 3.0)  # 10x the sustained rate for 3 s
    policed: Link[int] = Link(
        LinkConfig(delay_ms=10, rate_kbps=20_000, policer=bucket), epoch=0.0
    )
    shaped: Link[int] = Link(
        LinkConfig(delay_ms=10, rate_kbps=20_000, queue_packets=None, shaper=bucket), epoch=0.0
    )
    p_out, s_out = run_stream(policed, arrivals), run_stream(shaped, arrivals)
    # policer: what passes is never late (line rate only), the rest is dropped
    p_delays = [r - arrivals[p][0] for p, r in p_out]
    assert max(p_delays) == pytest.approx(0.010 + 1000 * 8 / 20e6)
    assert policed.stats().dropped_policer == len(arrivals) - len(p_out) > 0
    # shaper: everything passes, in order, later and later
    assert [p for p, _ in s_out] == list(range(len(arrivals)))
    s_delays = [r - arrivals[p][0] for p, r in s_out]
    assert s_delays[0] == pytest.approx(0.0104)
    assert s_delays[-1] > 20  # 3 s at 10x: the queue holds ~27 s of the sustained rate
    assert all(b >= a - 1e-9 for a, b in zip(s_delays[60:], s_delays[61:], strict=False))
    assert shaped.stats().dropped_policer == 0 and shaped.stats().dropped_queue == 0
    # both: the bucket's worth (50 packets) passes at once, at the line rate
    assert [p for p, _ in p_out[:50]] == list(range(50))
    assert all(d == pytest.approx(0.0104) for d in p_delays[:50] + s_delays[:50])


@settings(max_examples=40, deadline=None)
@given(
    sustained=st.floats(64, 5000),
    burst=st.integers(1500, 200_000),
    line_over=st.floats(1.5, 40),
    size=st.integers(200, 1500),
)
def test_shaper_sends_the_burst_at_the_line_rate_then_the_sustained_rate(
    sustained: float, burst: int, line_over: float, size: int
) -> None:
    line = sustained * line_over
    shaper = TokenBucket(rate_kbps=sustained, burst_bytes=burst)
    cfg = LinkConfig(delay_ms=5, rate_kbps=line, queue_packets=None, shaper=shaper)
    link: Link[int] = Link(cfg, epoch=0.0)
    # At the line rate the bucket drains at (line - sustained): the burst at the line rate
    # carries burst / (1 - sustained / line) bytes.
    at_line_rate = int(burst / (1 - 1 / line_over) / size)
    n = 2 * at_line_rate + 100
    out = run_stream(link, [(0.0, size)] * n)  # all at once: the queue holds them
    assert [p for p, _ in out] == list(range(n))
    releases = [r for _, r in out]
    in_burst = burst // size  # packets covered by the full bucket
    wire = size * 8 / (line * 1000)
    for k in range(min(in_burst, 50)):
        assert releases[k] == pytest.approx(0.005 + (k + 1) * wire, rel=1e-9), k
    # past the burst, one packet per `size / sustained`
    tail = releases[at_line_rate + 2:]
    rate = (len(tail) - 1) * size * 8 / (tail[-1] - tail[0]) / 1000
    assert rate == pytest.approx(sustained, rel=1e-6)
    # and the whole stream is never faster than the bucket allows
    for k in (n // 2, n - 1):
        token_bound = max(0.0, ((k + 1) * size - burst) / (sustained * 1000 / 8))
        assert releases[k] >= token_bound + 0.005 - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["policer", "shaper"]),
    sustained=st.floats(8, 2000),
    burst=st.integers(1500, 20_000),
    arrivals=st.lists(st.tuples(st.floats(0, 0.05), st.integers(40, 1500)), min_size=2,
                      max_size=120),
)
def test_what_leaves_conforms_to_the_bucket(
    kind: str, sustained: float, burst: int, arrivals: list[tuple[float, int]]
) -> None:
    """Whatever the arrivals, in any window [t1, t2] at most burst + rate * (t2 - t1) bytes
    pass (no line rate, no delay: a packet leaves when it takes its tokens)."""
    bucket = TokenBucket(rate_kbps=sustained, burst_bytes=burst)
    link: Link[int] = Link(LinkConfig(queue_packets=None, **{kind: bucket}), epoch=0.0)
    times = [sum(gap for gap, _ in arrivals[: i + 1]) for i in range(len(arrivals))]
    out = run_stream(link, list(zip(times, (size for _, size in arrivals), strict=True)))
    if kind == "shaper":  # everything passes, in order, never before it arrived
        assert [p for p, _ in out] == list(range(len(arrivals)))
        assert all(released >= times[p] for p, released in out)
    per_s = sustained * 1000 / 8
    for i, (_, t1) in enumerate(out):
        sent = 0
        for p, t2 in out[i:]:
            sent += min(arrivals[p][1], burst)
            assert sent <= burst + per_s * (t2 - t1) + 1e-6


def test_shaper_queue_limits_still_apply_and_count_as_queue_drops() -> None:
    shaper = TokenBucket(rate_kbps=100, burst_bytes=3000)
    link: Link[int] = Link(
        LinkConfig(rate_kbps=10_000, queue_packets=5, shaper=shaper), epoch=0.0
    )
    accepted = [link.submit(i, 1500, 0.0) for i in range(20)]
    assert sum(accepted) == 6  # one on the wire, five queued (which then wait for tokens)
    stats = link.stats()
    assert stats.dropped_queue == 20 - sum(accepted) and stats.dropped_policer == 0
    assert stats.queued == sum(accepted)


def test_shaper_without_a_line_rate_sends_at_the_token_times() -> None:
    shaper = TokenBucket(rate_kbps=8, burst_bytes=2000)  # 1000 B/s
    link: Link[int] = Link(LinkConfig(delay_ms=10, shaper=shaper), epoch=0.0)
    out = run_stream(link, [(0.0, 1000)] * 5)
    assert [r for _, r in out] == pytest.approx([0.01, 0.01, 1.01, 2.01, 3.01])


def test_policer_with_a_trace_drops_on_arrival() -> None:
    policer = TokenBucket(rate_kbps=120, burst_bytes=3000)  # 15 000 B/s
    cfg = LinkConfig(trace=tuple(range(1, 1001)), policer=policer)  # 12 Mbit/s of opportunities
    link: Link[int] = Link(cfg, epoch=0.0)
    out = run_stream(link, paced(1200, 1500, 2.0))
    assert len(out) * 1500 == pytest.approx(3000 + 15_000 * 2.0, abs=3000)


def test_same_input_same_output() -> None:
    def once(kind: str) -> tuple[list[tuple[int, float]], object]:
        bucket = TokenBucket(rate_kbps=300, burst_bytes=100_000)
        cfg = LinkConfig(delay_ms=15, jitter_ms=3, rate_kbps=20_000, loss_pct=2, seed=7,
                         queue_bytes=200_000, **{kind: bucket})
        link: Link[int] = Link(cfg, epoch=100.0)
        arrivals = paced(2000, 1200, 2.0, start=100.0) + paced(800, 300, 1.0, start=104.0)
        return run_stream(link, arrivals), link.stats()

    for kind in ("policer", "shaper"):
        assert once(kind) == once(kind)


# -- reconfiguration (phases) ------------------------------------------------------------------


def test_reconfigure_keeps_the_fill() -> None:
    bucket = TokenBucket(rate_kbps=80, burst_bytes=10_000)  # 10 000 B/s
    link: Link[int] = Link(LinkConfig(policer=bucket), epoch=0.0)
    assert sum(link.submit(i, 1000, 0.0) for i in range(12)) == 10
    assert len(drain(link)) == 10
    deeper = TokenBucket(rate_kbps=80, burst_bytes=50_000)
    link.reconfigure(LinkConfig(policer=deeper), 0.05)
    assert link.bucket_level(0.05) == pytest.approx(500)  # not refilled by the new depth
    assert not link.submit(99, 1000, 0.05)
    # policer -> shaper keeps it too: the packet waits for its tokens
    link.reconfigure(LinkConfig(shaper=deeper, delay_ms=1), 0.05)
    link.submit(100, 1000, 0.05)
    assert link.next_deadline() == pytest.approx(0.1)
    assert drain(link) == [(100, pytest.approx(0.101))]
    # no bucket: nothing stops anything; a bucket that appears later starts full
    link.reconfigure(LinkConfig(), 1.0)
    assert link.bucket_level(1.0) is None and all(link.submit(i, 1000, 1.0) for i in range(30))
    link.reconfigure(LinkConfig(policer=bucket), 1.0)
    assert link.bucket_level(1.0) == 10_000


def test_reconfigure_releases_a_head_waiting_for_tokens() -> None:
    shaper = TokenBucket(rate_kbps=8, burst_bytes=1500)  # 1000 B/s
    link: Link[int] = Link(LinkConfig(rate_kbps=8000, shaper=shaper), epoch=0.0)
    for i in range(3):
        link.submit(i, 1500, 0.0)
    assert drain(link, 0.5) == [(0, pytest.approx(0.0015))]
    assert link.stats().queued == 2  # both wait for tokens
    link.reconfigure(LinkConfig(rate_kbps=8000), 0.5)  # the shaper is lifted
    assert drain(link) == [(1, pytest.approx(0.5015)), (2, pytest.approx(0.503))]
    link2: Link[int] = Link(LinkConfig(rate_kbps=8000, shaper=shaper), epoch=0.0)
    for i in range(3):
        link2.submit(i, 1500, 0.0)
    link2.reconfigure(LinkConfig(), 0.5)  # no bottleneck at all: released at once
    assert [p for p, _ in drain(link2)] == [0, 1, 2]


def test_link_config_rejects_impossible_buckets() -> None:
    bucket = TokenBucket(rate_kbps=400, burst_bytes=50_000)
    with pytest.raises(ConfigError, match="a shaper cannot be combined with a policer"):
        LinkConfig(policer=bucket, shaper=bucket)
    with pytest.raises(ConfigError, match="or a trace"):
        LinkConfig(trace=(1, 2), shaper=bucket)
    assert LinkConfig(rate_kbps=20_000, policer=bucket).sustained_kbps == 400
    assert LinkConfig(rate_kbps=300, shaper=bucket).sustained_kbps == 300
    assert LinkConfig(trace=(1000,)).sustained_kbps == pytest.approx(12)
    assert LinkConfig().sustained_kbps is None


# -- reading a bucket off a stream (scripts/bench_emulator.py --only bucket) --------------------


@pytest.mark.parametrize("kind", ["policer", "shaper"])
def test_fit_bucket_reads_the_model_back(kind: str) -> None:
    bucket = TokenBucket(rate_kbps=400, burst_bytes=200_000)
    cfg = LinkConfig(delay_ms=20, rate_kbps=20_000, queue_bytes=50_000, **{kind: bucket})
    link: Link[int] = Link(cfg, epoch=0.0)
    out = run_stream(link, paced(20_000, 1200, 6.0))
    fit = fit_bucket([(released, 1200) for _, released in out])
    assert fit.sustained_kbps == pytest.approx(400, rel=0.01)
    assert fit.burst_bytes == pytest.approx(200_000, abs=3000)
    with pytest.raises(ValueError, match="too few"):
        fit_bucket([(0.0, 100), (1.0, 100)])

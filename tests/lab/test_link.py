"""Pure tests of the link model: made-up times, no I/O."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linkdrive import drain, run_stream

from netprobe.errors import ConfigError
from netprobe.lab.forwarder import is_udp
from netprobe.lab.link import GilbertElliott, Link, LinkConfig
from netprobe.lab.profiles import Phase, Profile, TraceUnavailable, load_trace

# -- delay and jitter ------------------------------------------------------------------------


@given(
    delay=st.floats(0, 2000),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=50),
)
def test_fixed_delay_is_exact_and_keeps_order(delay: float, gaps: list[float]) -> None:
    link: Link[int] = Link(LinkConfig(delay_ms=delay), epoch=0.0)
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    out = run_stream(link, [(t, 100) for t in times])
    assert [p for p, _ in out] == list(range(len(times)))
    for (packet, released), sent in zip(out, times, strict=True):
        assert released == pytest.approx(sent + delay / 1000.0, abs=1e-9), packet


def test_nothing_is_released_early() -> None:
    link: Link[int] = Link(LinkConfig(delay_ms=50), epoch=0.0)
    link.submit(1, 100, 10.0)
    assert link.next_deadline() == pytest.approx(10.05)
    assert link.due(10.0499) == []
    assert link.due(10.05) == [1]
    assert link.next_deadline() is None


@given(
    seed=st.integers(0, 2**32),
    delay=st.floats(0, 200),
    jitter=st.floats(0.1, 200),
    gaps=st.lists(st.floats(0, 0.05), min_size=2, max_size=80),
)
def test_jitter_without_reordering(
    seed: int, delay: float, jitter: float, gaps: list[float]
) -> None:
    cfg = LinkConfig(delay_ms=delay, jitter_ms=jitter, seed=seed)
    link: Link[int] = Link(cfg, epoch=0.0)
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    out = run_stream(link, [(t, 100) for t in times])
    assert [p for p, _ in out] == list(range(len(times)))  # FIFO
    for packet, released in out:
        sent = times[packet]
        assert released >= sent + max(0.0, delay - jitter) / 1000.0 - 1e-9
    releases = [r for _, r in out]
    assert releases == sorted(releases)


def test_jitter_spread_and_reordering_when_asked() -> None:
    cfg = LinkConfig(delay_ms=100, jitter_ms=30, reorder=True, seed=7)
    link: Link[int] = Link(cfg, epoch=0.0)
    times = [i * 0.01 for i in range(5000)]
    out = run_stream(link, [(t, 100) for t in times])
    delays = [(r - times[p]) * 1000 for p, r in out]
    assert min(delays) >= 70 - 1e-6 and max(delays) <= 130 + 1e-6
    assert sum(delays) / len(delays) == pytest.approx(100, abs=1.0)
    order = [p for p, _ in out]
    assert order != sorted(order)  # 10 ms spacing, +-30 ms jitter: reordering happens


# -- loss ------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(loss=st.floats(0, 100), seed=st.integers(0, 2**32))
def test_random_loss_rate(loss: float, seed: int) -> None:
    n = 20000
    link: Link[int] = Link(LinkConfig(loss_pct=loss, seed=seed), epoch=0.0)
    accepted = sum(link.submit(i, 100, i * 1e-3) for i in range(n))
    measured = 100.0 * (n - accepted) / n
    sigma = 100.0 * math.sqrt((loss / 100) * (1 - loss / 100) / n)
    assert abs(measured - loss) <= 4 * sigma + 1e-9
    assert link.stats().dropped_loss == n - accepted


@pytest.mark.parametrize("loss", [3.0, 8.0, 30.0])
def test_random_loss_within_half_a_point(loss: float) -> None:
    n = 100_000
    link: Link[int] = Link(LinkConfig(loss_pct=loss, seed=1), epoch=0.0)
    accepted = sum(link.submit(i, 100, i * 1e-4) for i in range(n))
    assert abs(100.0 * (n - accepted) / n - loss) < 0.5


def _loss_runs(lost: list[bool]) -> list[int]:
    runs, current = [], 0
    for x in lost:
        if x:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


@pytest.mark.parametrize(
    "ge",
    [
        GilbertElliott(p_good_to_bad=0.01, p_bad_to_good=0.25),
        GilbertElliott(p_good_to_bad=0.02, p_bad_to_good=0.5, loss_in_bad=1.0, loss_in_good=0.005),
        GilbertElliott(p_good_to_bad=0.01, p_bad_to_good=0.3, loss_in_bad=0.7),
    ],
)
def test_gilbert_elliott_mean_loss_and_bursts(ge: GilbertElliott) -> None:
    n = 200_000
    link: Link[int] = Link(LinkConfig(gilbert=ge, seed=3), epoch=0.0)
    lost = [not link.submit(i, 100, i * 1e-4) for i in range(n)]
    mean = sum(lost) / n
    assert mean == pytest.approx(ge.mean_loss, rel=0.1)
    runs = _loss_runs(lost)
    mean_run = sum(runs) / len(runs)
    if ge.loss_in_good == 0 and ge.loss_in_bad == 1:
        assert mean_run == pytest.approx(1 / ge.p_bad_to_good, rel=0.1)
    # Far burstier than independent loss of the same mean (whose runs average 1/(1-p)).
    assert mean_run > 1.5 / (1 - mean)


def test_gilbert_elliott_rejects_bad_probabilities() -> None:
    with pytest.raises(ConfigError, match="probability"):
        GilbertElliott(p_good_to_bad=1.5, p_bad_to_good=0.1)
    with pytest.raises(ConfigError, match="p_bad_to_good"):
        GilbertElliott(p_good_to_bad=0.1, p_bad_to_good=0.0)


# -- bottleneck: rate and drop-tail queue ----------------------------------------------------


def test_drop_tail_depth_and_serialisation() -> None:
    # 1250-byte packets at 1000 kbit/s: 10 ms each. One on the wire + 10 queued.
    cfg = LinkConfig(delay_ms=20, rate_kbps=1000, queue_packets=10)
    link: Link[int] = Link(cfg, epoch=0.0)
    accepted = [link.submit(i, 1250, 0.0) for i in range(100)]
    assert sum(accepted) == 11 and accepted[:11] == [True] * 11
    assert link.stats().dropped_queue == 89
    assert link.stats().queued == 11
    out = drain(link)
    assert [p for p, _ in out] == list(range(11))
    for k, (_, released) in enumerate(out):
        assert released == pytest.approx((k + 1) * 0.010 + 0.020)


def test_queue_bytes_limit() -> None:
    cfg = LinkConfig(rate_kbps=1000, queue_packets=None, queue_bytes=5000)
    link: Link[int] = Link(cfg, epoch=0.0)
    accepted = [link.submit(i, 1000, 0.0) for i in range(20)]
    assert sum(accepted) == 1 + 5  # one on the wire, 5000 bytes waiting


@settings(max_examples=20, deadline=None)
@given(
    rate=st.floats(50, 50_000),
    size=st.integers(60, 1500),
    overload=st.floats(1.2, 4.0),
)
def test_saturated_rate_matches(rate: float, size: int, overload: float) -> None:
    cfg = LinkConfig(delay_ms=10, rate_kbps=rate, queue_packets=50)
    link: Link[int] = Link(cfg, epoch=0.0)
    interval = size * 8 / (rate * 1000 * overload)
    n = 2000
    out = run_stream(link, [(i * interval, size) for i in range(n)])
    assert len(out) + link.stats().dropped_queue == n
    first, last = out[0][1], out[-1][1]
    measured = (len(out) - 1) * size * 8 / (last - first) / 1000
    assert measured == pytest.approx(rate, rel=1e-6)


def test_saturated_link_shows_bufferbloat() -> None:
    # 2 Mbit/s, 250 kB queue: a full queue adds ~1 s of delay.
    cfg = LinkConfig(delay_ms=10, rate_kbps=2000, queue_packets=None, queue_bytes=250_000)
    link: Link[int] = Link(cfg, epoch=0.0)
    n = 3000  # 3 Mbit/s offered for 3 s
    arrivals = [(i * 1000 * 8 / 3e6, 1000) for i in range(n)]
    out = run_stream(link, arrivals)
    late = [(r - arrivals[p][0]) for p, r in out[-100:]]
    assert min(late) > 0.95 and max(late) < 1.02


# -- mahimahi traces -------------------------------------------------------------------------


def test_trace_opportunity_semantics() -> None:
    # One opportunity every ms: 1504 bytes per ms. 100-byte packets cost 104 bytes each.
    link: Link[int] = Link(LinkConfig(trace=(1,), queue_packets=None), epoch=0.0)
    for i in range(1000):
        link.submit(i, 100, 0.0)
    out = drain(link)
    assert len(out) == 1000
    assert out[-1][1] == pytest.approx(math.ceil(1000 * 104 / 1504) / 1000)
    # Full-size packets: exactly one per opportunity.
    link = Link(LinkConfig(trace=(1,), queue_packets=None), epoch=0.0)
    for i in range(10):
        link.submit(i, 1500, 0.0)
    assert [r for _, r in drain(link)] == pytest.approx([(k + 1) / 1000 for k in range(10)])


def test_trace_unused_opportunities_are_lost_and_it_repeats() -> None:
    # Opportunities at 10 ms and 20 ms of a 20 ms period: 10, 20, 30, 40, ...
    link: Link[int] = Link(LinkConfig(trace=(10, 20), delay_ms=5), epoch=100.0)
    link.submit(0, 1500, 100.0)
    link.submit(1, 1500, 100.0)
    link.submit(2, 1500, 100.0)
    assert [r for _, r in drain(link)] == pytest.approx([100.015, 100.025, 100.035])
    link.submit(3, 1500, 100.5001)  # idle meanwhile: next opportunity is 100.510
    assert [r for _, r in drain(link)] == pytest.approx([100.515])


@pytest.mark.parametrize(
    ("name", "mbps"),
    [
        ("Verizon-LTE-short.up", 5.95),
        ("Verizon-LTE-short.down", 5.03),
        ("TMobile-UMTS-driving.up", 0.94),
    ],
)
def test_trace_playback_matches_readme_mean_rate(name: str, mbps: float,
                                                traces_dir: Path) -> None:
    trace = load_trace(traces_dir / name)
    period_s = trace[-1] / 1000
    link: Link[int] = Link(LinkConfig(trace=trace, queue_packets=None), epoch=0.0)
    for i in range(len(trace) + 100):  # always backlogged for one whole period
        link.submit(i, 1500, 0.0)
    delivered = drain(link, until=period_s)
    measured = len(delivered) * 1500 * 8 / period_s / 1e6
    assert measured == pytest.approx(mbps, rel=0.01)


def test_trace_and_rate_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        LinkConfig(rate_kbps=100, trace=(1, 2))
    with pytest.raises(ConfigError, match="non-decreasing"):
        LinkConfig(trace=(5, 3, 9))


# -- outages ---------------------------------------------------------------------------------


def test_outage_drops_everything_in_the_window() -> None:
    cfg = LinkConfig(delay_ms=100, outages=((1.0, 2.0),))
    link: Link[int] = Link(cfg, epoch=50.0)
    times = [50.01 + i * 0.05 for i in range(80)]  # 0 .. 4 s after the epoch, off the edges
    out = run_stream(link, [(t, 100) for t in times])
    for packet, released in out:
        rel_sent, rel_out = times[packet] - 50.0, released - 50.0
        assert not 1.0 <= rel_sent < 2.0
        assert not 1.0 <= rel_out < 2.0
    delivered = {p for p, _ in out}
    expected = {i for i, t in enumerate(times) if not (0.9 <= t - 50.0 < 2.0)}
    assert delivered == expected
    assert link.stats().dropped_outage == len(times) - len(expected)


# -- phases and reconfiguration --------------------------------------------------------------


def test_profile_links_at_follows_phases() -> None:
    clean, bad = LinkConfig(delay_ms=5), LinkConfig(delay_ms=5, rate_kbps=200, loss_pct=8)
    profile = Profile("p", "", clean, clean, (Phase(20, bad, bad), Phase(50, clean, clean)))
    assert profile.links_at(0) == (clean, clean)
    assert profile.links_at(19.999) == (clean, clean)
    assert profile.links_at(20) == (bad, bad)
    assert profile.links_at(49) == (bad, bad)
    assert profile.links_at(50) == (clean, clean)
    with pytest.raises(ConfigError, match="increasing"):
        Profile("p", "", clean, clean, (Phase(50, bad, bad), Phase(20, clean, clean)))


def test_reconfigure_keeps_queue_and_applies_new_rate() -> None:
    link: Link[int] = Link(LinkConfig(rate_kbps=1000, queue_packets=None), epoch=0.0)
    for i in range(10):
        link.submit(i, 1250, 0.0)  # 10 ms each at 1000 kbit/s
    first = drain(link, until=0.025)
    assert [p for p, _ in first] == [0, 1]
    # At 25 ms packet 2 is half sent; at 500 kbit/s its other half takes 10 ms.
    link.reconfigure(LinkConfig(rate_kbps=500, queue_packets=None), 0.025)
    rest = drain(link)
    assert [p for p, _ in rest] == list(range(2, 10))
    assert rest[0][1] == pytest.approx(0.035)
    assert rest[1][1] == pytest.approx(0.055)


def test_reconfigure_keeps_packets_in_flight_and_order() -> None:
    link: Link[int] = Link(LinkConfig(delay_ms=100), epoch=0.0)
    link.submit(0, 100, 0.0)
    link.reconfigure(LinkConfig(delay_ms=10), 0.001)
    link.submit(1, 100, 0.002)
    out = drain(link)
    assert out == [(0, pytest.approx(0.1)), (1, pytest.approx(0.1))]


def test_reconfigure_to_unlimited_releases_the_queue() -> None:
    link: Link[int] = Link(LinkConfig(rate_kbps=100, queue_packets=None), epoch=0.0)
    for i in range(5):
        link.submit(i, 1000, 0.0)
    link.reconfigure(LinkConfig(delay_ms=1), 0.001)
    out = drain(link)
    assert [p for p, _ in out] == list(range(5))
    assert all(r == pytest.approx(0.002) for _, r in out)


def test_reconfigure_rate_to_trace() -> None:
    link: Link[int] = Link(LinkConfig(rate_kbps=100, queue_packets=None), epoch=0.0)
    for i in range(3):
        link.submit(i, 1500, 0.0)
    link.reconfigure(LinkConfig(trace=(1,), queue_packets=None), 0.0005)
    assert [r for _, r in drain(link)] == pytest.approx([0.001, 0.002, 0.003])


# -- blocking UDP ----------------------------------------------------------------------------


def test_block_udp_drops_udp_only_and_counts_it() -> None:
    link: Link[int] = Link(LinkConfig(delay_ms=10, block_udp=True), epoch=0.0)
    kinds = [True, False, True, True, False]  # udp?
    accepted = [link.submit(i, 100, i * 0.001, udp=udp) for i, udp in enumerate(kinds)]
    assert accepted == [not udp for udp in kinds]
    assert [p for p, _ in drain(link)] == [1, 4]
    stats = link.stats()
    assert (stats.submitted, stats.delivered, stats.dropped_blocked) == (5, 2, 3)
    assert stats.dropped_loss == stats.dropped_queue == stats.dropped_outage == 0


def test_udp_passes_unless_blocked_and_blocking_is_decided_before_loss() -> None:
    link: Link[int] = Link(LinkConfig(delay_ms=1), epoch=0.0)
    assert all(link.submit(i, 100, i * 0.001, udp=True) for i in range(10))
    assert link.stats().dropped_blocked == 0
    # a blocked datagram draws no loss decision: the rest see the same losses as without it
    lossy = LinkConfig(loss_pct=50, seed=7)
    plain: Link[int] = Link(lossy, epoch=0.0)
    mixed: Link[int] = Link(replace(lossy, block_udp=True), epoch=0.0)
    kept_plain = [i for i in range(200) if plain.submit(i, 100, i * 0.001)]
    kept_mixed = []
    for i in range(200):
        mixed.submit(-1, 100, i * 0.001, udp=True)
        if mixed.submit(i, 100, i * 0.001):
            kept_mixed.append(i)
    assert kept_plain == kept_mixed
    assert mixed.stats().dropped_blocked == 200


def test_block_udp_can_be_switched_by_a_phase() -> None:
    link: Link[int] = Link(LinkConfig(), epoch=0.0)
    assert link.submit(0, 100, 0.0, udp=True)
    link.reconfigure(LinkConfig(block_udp=True), 1.0)
    assert not link.submit(1, 100, 1.0, udp=True) and link.submit(2, 100, 1.0)
    link.reconfigure(LinkConfig(), 2.0)
    assert link.submit(3, 100, 2.0, udp=True)
    assert [p for p, _ in drain(link)] == [0, 2, 3]


def _ipv4(protocol: int, length: int = 28) -> bytes:
    header = bytearray(20)
    header[0], header[9] = 0x45, protocol
    return bytes(header) + bytes(length - 20)


def test_is_udp_reads_the_ip_header() -> None:
    assert is_udp(_ipv4(17)) and not is_udp(_ipv4(6)) and not is_udp(_ipv4(1))
    ipv6 = bytearray(48)
    ipv6[0], ipv6[6] = 0x60, 17
    assert is_udp(bytes(ipv6))
    ipv6[6] = 6
    assert not is_udp(bytes(ipv6))
    # too short to be a header, or not IP at all: not UDP (and no exception)
    assert not is_udp(b"") and not is_udp(_ipv4(17)[:19]) and not is_udp(b"\x60" + bytes(8))
    assert not is_udp(bytes(40))


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delay_ms": -1}, "delay_ms"),
        ({"loss_pct": 101}, "loss_pct"),
        ({"rate_kbps": 0}, "rate_kbps"),
        ({"queue_packets": 0}, "queue_packets"),
        ({"outages": ((5.0, 1.0),)}, "outage"),
    ],
)
def test_link_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LinkConfig(**kwargs)  # type: ignore[arg-type]


def test_same_seed_same_decisions() -> None:
    cfg = LinkConfig(loss_pct=20, jitter_ms=10, delay_ms=20, seed=99)
    runs = []
    for _ in range(2):
        link: Link[int] = Link(cfg, epoch=0.0)
        runs.append(run_stream(link, [(i * 0.01, 100) for i in range(500)]))
    assert runs[0] == runs[1]
    other: Link[int] = Link(replace(cfg, seed=100), epoch=0.0)
    assert run_stream(other, [(i * 0.01, 100) for i in range(500)]) != runs[0]  # seed is used


def test_trace_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.up"
    path.write_text("1\n1\n5\n\n")
    assert load_trace(path) == (1, 1, 5)
    path.write_text("1\nfoo\n")
    with pytest.raises(ConfigError, match=r"t.up:2"):
        load_trace(path)
    with pytest.raises(TraceUnavailable, match=r"trace file not found: .*missing.up"):
        load_trace(tmp_path / "missing.up")

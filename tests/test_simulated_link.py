"""netprobe's whole check, run over simulated links whose true values are known.

The harness (`simlink.py`) runs the real `ClientSession`, `Responder`, wire format and
classifier the way `probe.py` and `reflector.py` drive them, over a discrete-event link
model; every assertion compares what netprobe reports with what the link really is.

Run with `-s` to get the table of cases (expected, got, time to verdict, measured vs true),
the random-loss figures per seed, the loss-precision rates over 100 seeds and a verdict
sweep.

Failures still found in netprobe's session/ladder logic are marked `xfail(strict=True)`
with a diagnosis (function, condition, numbers); a fix turns them into XPASS (a failure)
so that the mark gets removed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simlink import (
    DEADLINE_MARGIN_S,
    TICK_S,
    Direction,
    LinkDirection,
    LinkSpec,
    SimResult,
    Simulator,
    simulate,
)

from netprobe.config import ProbeSettings, load_thresholds
from netprobe.core.classify import AUDIO_ONLY, PHONE, VIDEO, classify
from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.measure import wilson_interval
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.session import PRECISION_RESERVE_S

SETTINGS = ProbeSettings()
THRESHOLDS = load_thresholds()
TOP_RUNG = max(SETTINGS.ladder_kbps)
VIDEO_MIN = THRESHOLDS.video.min_kbps
WORD = {"up": "upload", "down": "download"}


# --------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    link: LinkSpec
    expect: tuple[str, ...]
    """Verdicts the task accepts."""


def _sym(delay_ms: float, rate: float | None, **kw: object) -> LinkSpec:
    d = Direction(delay_ms=delay_ms, rate_kbps=rate, **kw)  # type: ignore[arg-type]
    return LinkSpec(d, d)


def _rates(up: float | None, down: float | None, delay_ms: float = 5.0) -> LinkSpec:
    return LinkSpec(Direction(delay_ms, rate_kbps=up), Direction(delay_ms, rate_kbps=down))


NOT_VIDEO = (AUDIO_ONLY, PHONE)
CASES = {c.name: c for c in [
    Case("clean 10ms 50/20M", _rates(50_000, 20_000), (VIDEO,)),
    Case("200k symmetric", _sym(5, 200), (AUDIO_ONLY, PHONE)),
    Case("1000k symmetric", _sym(5, 1000), (VIDEO,)),
    Case("1500 up/20000 down", _rates(1500, 20_000), (VIDEO,)),
    Case("20000 up/150 down", _rates(20_000, 150), NOT_VIDEO),
    Case("150 up/20000 down", _rates(150, 20_000), NOT_VIDEO),
    Case("2500k symmetric", _sym(5, 2500), (VIDEO,)),
    # found by a random sweep: a link that truly carries video
    Case("720k down, 20ms queue", LinkSpec(Direction(5), Direction(5, rate_kbps=720,
                                                                   queue_ms=20)), (VIDEO,)),
    # found by a random sweep: rung 800 passes while overflowing the short queue
    Case("750k down 20ms queue, 1%", LinkSpec(
        Direction(5, loss_pct=1.0), Direction(5, rate_kbps=750, queue_ms=20, loss_pct=1.0)),
        (VIDEO,)),
    Case("700 up 1s queue/3540 down", LinkSpec(
        Direction(150, rate_kbps=700, queue_ms=1000), Direction(15, rate_kbps=3540)), (VIDEO,)),
    Case("loss 3%", _sym(5, 50_000, loss_pct=3.0), (VIDEO,)),
    Case("loss 8%", _sym(5, 50_000, loss_pct=8.0), NOT_VIDEO),
    Case("200k symmetric, loss 8%", _sym(5, 200, loss_pct=8.0), (AUDIO_ONLY,)),
    Case("loss 30%", _sym(5, 50_000, loss_pct=30.0), (PHONE,)),
    Case("loss 40%", _sym(5, 50_000, loss_pct=40.0), (PHONE,)),
    Case("loss 50%", _sym(5, 50_000, loss_pct=50.0), (PHONE,)),
    Case("loss 60%", _sym(5, 50_000, loss_pct=60.0), (PHONE,)),
    Case("rtt 600ms", _sym(300, 50_000), (AUDIO_ONLY,)),
    Case("rtt 1100ms", _sym(550, 50_000), (PHONE,)),
    Case("rtt 1600ms", _sym(800, 50_000), (PHONE,)),
    Case("bloat 2M up, 1s queue", LinkSpec(Direction(5, rate_kbps=2000, queue_ms=1000),
                                           Direction(5, rate_kbps=20_000)), (VIDEO,)),
    Case("bloat 150k down, 1s queue", LinkSpec(Direction(5, rate_kbps=2000),
                                               Direction(5, rate_kbps=150, queue_ms=1000)),
         NOT_VIDEO),
    Case("jitter +-15ms", _sym(20, 50_000, jitter_ms=15.0), (VIDEO,)),
]}

RATE_CASES = ["200k symmetric", "1000k symmetric", "1500 up/20000 down", "20000 up/150 down",
              "150 up/20000 down", "2500k symmetric", "720k down, 20ms queue",
              "750k down 20ms queue, 1%", "700 up 1s queue/3540 down"]
LOSS_SEEDS = range(5)
HEAVY_LOSS = ["loss 40%", "loss 50%", "loss 60%"]
LONG_RTT = ["rtt 600ms", "rtt 1100ms", "rtt 1600ms"]


@cache
def run(name: str, seed: int = 0) -> SimResult | Exception:
    try:
        return simulate(CASES[name].link, seed=seed, settings=SETTINGS, thresholds=THRESHOLDS)
    except Exception as exc:  # the engine would let it escape run_check: report it
        return exc


def result(name: str, seed: int = 0) -> SimResult:
    r = run(name, seed)
    if isinstance(r, Exception):
        raise r
    assert not r.errors, f"the receive taps swallowed exceptions: {r.errors[:3]}"
    return r


# ------------------------------------------------------------------- the truth oracle


def true_metrics(r: SimResult) -> LinkMetrics:
    """What a perfect check would report on this link, with the ladder's limits (a link
    above the top rung can only be shown to carry *at least* the top rung)."""
    link = r.link
    rtt = link.true_rtt_ms()

    def direction(d: Direction, name: str) -> DirectionMetrics:
        jitter = r.true_jitter_ms(name) if d.jitter_ms else 0.0
        if d.rate_kbps is None or d.rate_kbps > TOP_RUNG:
            return DirectionMetrics(TOP_RUNG, True, d.loss_pct, jitter)
        return DirectionMetrics(d.rate_kbps, False, d.loss_pct, jitter)

    up, down = direction(link.up, "up"), direction(link.down, "down")
    mos = estimate_audio_quality(rtt, max(up.loss_pct or 0, down.loss_pct or 0),
                                 max(up.jitter_ms or 0, down.jitter_ms or 0)).mos
    return LinkMetrics(rtt_ms=rtt, mos_audio=mos, up=up, down=down, connected=True)


def rtt_ok(measured: float | None, link: LinkSpec) -> bool:
    """Within ±10 % or ±5 ms (whichever is wider) of the true unloaded RTT range."""
    if measured is None:
        return False
    lo, hi = link.true_rtt_range_ms()
    tol = max(0.1 * lo, 5.0)
    return lo - tol <= measured <= hi + tol


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _rate_txt(d: DirectionMetrics, true: float | None) -> str:
    t = "inf" if true is None else f"{true:g}"
    return f"{_fmt(d.kbps)}{'+' if d.kbps_at_least else ''}/{t}"


# ------------------------------------------------------------------------------ tests


def _case_param(name: str, *marks: pytest.MarkDecorator) -> object:
    return pytest.param(name, id=name, marks=marks)


def _cases(names: list[str] | dict[str, Case],
           marks: dict[str, pytest.MarkDecorator]) -> list[object]:
    return [_case_param(n, *([marks[n]] if n in marks else [])) for n in names]


XF_UNKNOWN_RANDOM_LOSS = pytest.mark.xfail(strict=True, reason=(
    "ClientSession.tick hands Ladder.evaluate base_loss = _random_loss(calm probe counts), "
    "which is 0.0 while counts.expected < MIN_LOSS_SAMPLES (20). Rung 300 is judged 0.7 s "
    "into the ladder, when only the warm-up stretch is calm and the reflector's settled "
    "counters (REORDER_WINDOW = 10 probes behind) leave 12 up/15 down probes counted at 30 % "
    "(5/12, 4/15) and 15 down at 40 % (4/15): base_loss 0, keep 1.0, so delivery ratios "
    "0.682/0.678 (30 %) and 0.556 down (40 %) < pass_ratio 0.85 fail rung 300 on random "
    "loss; Ladder.capacity() reports the loss-thinned 204/205 and 169 kbit/s as limits on a "
    "50 Mbit/s link -> upload/download_too_slow_for_video (verdict still phone). Same at 8 % "
    "loss, seed 2: up 0/15 counted -> base_loss 0, ratio 0.849 -> upload_too_slow_for_video "
    "at 255 kbit/s"))
XF_ZERO_OF_50 = pytest.mark.xfail(strict=True, reason=(
    "ClientSession._loss_precise() skips a direction with 0 lost of >= MIN_CLEAN_SAMPLES "
    "(now 100) counted packets ('0 % is the honest figure'), so finished() stops with the loss "
    "figure at 0/50-0/58 on slow or long-RTT links (200k symmetric up 0/51, 20000/150 down "
    "0/50, 150/20000 up 0/51, rtt 1100 ms up 0/50, bloat 150k down 0/58): 95 % interval "
    "[0, 7.1 %] at 0/50, half-width 3.1-3.6 points > 1.5, its upper end past the video "
    "limit max_loss_pct = 5 %"))


# ------------------------------------------------------------------------------ tests


def test_clean_link() -> None:
    r = result("clean 10ms 50/20M")
    m = r.metrics
    assert r.verdict.verdict == VIDEO
    assert rtt_ok(m.rtt_ms, r.link), (m.rtt_ms, r.link.true_rtt_range_ms())
    assert m.up.loss_pct == 0 and m.down.loss_pct == 0
    assert m.up.kbps_at_least and m.down.kbps_at_least
    assert m.up.kbps == pytest.approx(TOP_RUNG) and m.down.kbps == pytest.approx(TOP_RUNG)
    assert r.stopped_by == "finished"


@pytest.mark.parametrize("name", _cases(RATE_CASES, {}))
def test_rate_measured(name: str) -> None:
    """Measured kbps within -30 %/+10 % of the true rate, never above +10 %; a direction
    faster than the top rung must be reported as *at least* (never a false limit)."""
    r = result(name)
    for d in ("up", "down"):
        true = getattr(r.link, d).rate_kbps
        m = getattr(r.metrics, d)
        assert m.kbps is not None, f"{d}: not measured"
        if true is not None:
            assert m.kbps <= 1.1 * true, f"{d}: {m.kbps:.0f} overstates {true}"
        if true is None or true > TOP_RUNG:
            assert m.kbps_at_least, f"{d}: {m.kbps:.0f} kbit/s reported as a limit, true {true}"
        elif not m.kbps_at_least:
            assert m.kbps >= 0.7 * true, f"{d}: {m.kbps:.0f} understates {true}"


@pytest.mark.parametrize("name", RATE_CASES)
def test_rate_verdict_names_starved_direction(name: str) -> None:
    r = result(name)
    assert r.verdict.verdict in CASES[name].expect, (r.verdict.verdict, r.reason_codes())
    codes = r.reason_codes()
    for d in ("up", "down"):
        true = getattr(r.link, d).rate_kbps
        if true is not None and true < VIDEO_MIN:
            assert any(c.startswith(f"{WORD[d]}_too_slow") for c in codes), (d, codes)


@pytest.mark.parametrize("name", ["20000 up/150 down", "150 up/20000 down",
                                  "bloat 150k down, 1s queue"])
def test_fast_direction_not_blamed(name: str) -> None:
    """The direction that is fast is shown *at least* the top rung (the sequential ladder
    keeps it clear of the slow direction's congestion) and no reason mentions it."""
    r = result(name)
    fast = "up" if (r.link.up.rate_kbps or 1e9) > (r.link.down.rate_kbps or 1e9) else "down"
    m = getattr(r.metrics, fast)
    true = getattr(r.link, fast).rate_kbps
    if true is None or true > TOP_RUNG:
        assert m.kbps_at_least and m.kbps == pytest.approx(TOP_RUNG), (fast, m)
    else:
        assert m.kbps is not None and m.kbps >= 0.7 * true, (fast, m)
    blamed = [c for c in r.reason_codes() if c.startswith(WORD[fast] + "_")]
    assert not blamed, blamed


@pytest.mark.parametrize("name", list(CASES))
def test_verdict_is_the_true_links_verdict(name: str) -> None:
    """Stricter than the task's accepted verdicts: classify() of the link's true values."""
    r = result(name)
    ideal = classify(true_metrics(r), THRESHOLDS)
    assert r.verdict.verdict == ideal.verdict, (r.verdict.verdict, r.reason_codes(),
                                                ideal.verdict)
    assert r.verdict.verdict in CASES[name].expect, (r.verdict.verdict, CASES[name].expect)


@pytest.mark.parametrize("name", _cases(CASES, {
    "loss 40%": XF_UNKNOWN_RANDOM_LOSS}))
def test_reasons_blame_only_true_faults(name: str) -> None:
    """Every failing reason (notes `*_marginal_*` aside) must be one that the link's true
    values give too: a patient must not be told to stop uploads when the delay is the
    problem. `*_not_tested_for_*` is allowed only when no figure is actually bad."""
    r = result(name)
    ideal = {c.code for c in classify(true_metrics(r), THRESHOLDS).reasons}
    codes = r.reason_codes()
    not_tested = [c for c in codes if "_not_tested_" in c]
    wrong = [c for c in codes if "_marginal_" not in c and "_not_tested_" not in c
             and c not in ideal]
    assert not wrong, (wrong, sorted(ideal))
    if not_tested:
        assert all("_not_tested_" in c or "_marginal_" in c or c == "video_ok"
                   for c in codes), codes


# --- loss accounting and precision


@pytest.mark.parametrize("name", list(CASES))
def test_loss_figure_has_no_self_inflicted_drops(name: str) -> None:
    """Of the packets the loss figure counts (probes/echoes of calm stretches, load of
    rungs that passed well below capacity: `SimResult.counted_rungs`), none may have been
    dropped by a queue the check itself filled, and the figure must equal what the link
    randomly dropped of them."""
    r = result(name)
    for d in ("up", "down"):
        truth = r.loss_truth(d)
        assert truth["queue"] == 0, (d, truth)
        got = getattr(r.metrics, d).loss_pct
        assert got is not None and truth["counted"] == getattr(r.metrics, d).packets, (d, truth)
        assert got == pytest.approx(r.true_loss_pct(d), abs=1e-9), (d, got, truth)


def _half_width_pts(m: DirectionMetrics) -> tuple[float, float]:
    """(95 % Wilson half-width, lower bound) of a loss figure, percentage points."""
    lost = round((m.loss_pct or 0.0) * m.packets / 100)
    lo, hi = wilson_interval(lost, m.packets)
    return 100 * (hi - lo) / 2, 100 * lo


@pytest.mark.parametrize("name", _cases(CASES, {n: XF_ZERO_OF_50 for n in [
    "200k symmetric", "20000 up/150 down", "150 up/20000 down",
    "bloat 150k down, 1s queue"]}))
def test_loss_figure_precise_at_stop(name: str) -> None:
    """What the change promises for stopping: the loss figure's 95 % half-width is at most
    1.5 points unless the loss is clearly above 15 %, or the check ran into the last
    `PRECISION_RESERVE_S` before its deadline (finished() then stops sharpening, by design:
    e.g. RTT 1600 ms, whose connection set-up alone takes 8.1 s)."""
    r = result(name)
    deadline = SETTINGS.max_duration_s - DEADLINE_MARGIN_S
    if r.total_s >= deadline - PRECISION_RESERVE_S - TICK_S:
        pytest.skip(f"stopped at {r.total_s:.2f} s, within the precision reserve")
    for d in ("up", "down"):
        m = getattr(r.metrics, d)
        half, lower = _half_width_pts(m)
        assert lower > 15.0 or half <= 1.5, (d, m.loss_pct, m.packets, round(half, 2))


LOSS_RATES = [3.0, 8.0, 30.0]


@pytest.mark.parametrize("rate", LOSS_RATES)
def test_random_loss_verdict_and_accounting(rate: float) -> None:
    """Verdict per seed, and the loss figure equals what the link really dropped of the
    packets the figure counts (calm probes/echoes and the load of the rungs that passed
    well below capacity)."""
    name = f"loss {rate:g}%"
    for seed in LOSS_SEEDS:
        r = result(name, seed)
        assert r.verdict.verdict in CASES[name].expect, (seed, r.verdict.verdict)
        for d in ("up", "down"):
            got, truth = getattr(r.metrics, d).loss_pct, r.true_loss_pct(d)
            assert got is not None and truth is not None
            assert got == pytest.approx(truth, abs=1e-9), (seed, d, got, truth)


@pytest.mark.parametrize("rate", [pytest.param(x, marks=[])
                                  for x in LOSS_RATES])
def test_random_loss_unbiased_over_seeds(rate: float) -> None:
    values = [getattr(result(f"loss {rate:g}%", s).metrics, d).loss_pct
              for s in LOSS_SEEDS for d in ("up", "down")]
    assert abs(statistics.fmean(values) - rate) <= 1.5, values


PRECISION_SEEDS = range(100)
VERDICT_SWEEP_SEEDS = range(40)


@cache
def precision_sweep(rate: float) -> tuple[int, int, float, float]:
    """(figures within ±1.5 points of the link's loss rate, figures, sd, mean packets) over
    `PRECISION_SEEDS` x both directions of a 50 Mbit/s link."""
    hits, values, packets = 0, [], []
    for seed in PRECISION_SEEDS:
        r = simulate(_sym(5, 50_000, loss_pct=rate), seed=seed, settings=SETTINGS,
                     thresholds=THRESHOLDS)
        for d in ("up", "down"):
            m = getattr(r.metrics, d)
            assert m.loss_pct is not None
            hits += abs(m.loss_pct - rate) <= 1.5
            values.append(m.loss_pct)
            packets.append(m.packets)
    return hits, len(values), statistics.pstdev(values), statistics.fmean(packets)


@pytest.mark.parametrize("rate,floor", [(3.0, 0.90), (8.0, 0.80)])
def test_loss_precision_over_seeds(rate: float, floor: float) -> None:
    """How often one check's loss figure lands within ±1.5 points of the link's rate (100
    seeds, both directions). ≥ 90 % at 3 %; at 8 %, ±1.5 points needs ~1260 packets a
    direction and the check stops at the precision reserve with ~1210 (binomial limit
    ~94 %): asserted ≥ 80 %, the rate is in the table."""
    hits, n, _, _ = precision_sweep(rate)
    assert hits / n >= floor, (hits, n)


@pytest.mark.parametrize("name", HEAVY_LOSS)
def test_heavy_loss_no_crash_and_phone(name: str) -> None:
    for seed in LOSS_SEEDS:
        r = result(name, seed)
        assert r.verdict.verdict == PHONE, (seed, r.verdict.verdict, r.reason_codes())
        assert r.stopped_by == "finished" and r.total_s <= SETTINGS.max_duration_s


# --- delay


@pytest.mark.parametrize("name", LONG_RTT)
def test_long_rtt(name: str) -> None:
    r = result(name)
    assert r.verdict.verdict in CASES[name].expect, (r.verdict.verdict, r.reason_codes())
    lo, hi = r.link.true_rtt_range_ms()
    assert r.metrics.rtt_ms is not None and 0.9 * lo <= r.metrics.rtt_ms <= 1.1 * hi


# --- bufferbloat


def test_bufferbloat_uplink_not_overstated_and_rtt_unloaded() -> None:
    r = result("bloat 2M up, 1s queue")
    m = r.metrics
    assert m.up.kbps is not None and 0.7 * 2000 <= m.up.kbps <= 1.1 * 2000
    assert not m.up.kbps_at_least
    assert rtt_ok(m.rtt_ms, r.link), (m.rtt_ms, r.link.true_rtt_range_ms())
    queue_ms = r.up.max_queue_delay_s * 1000
    assert queue_ms > 200, "the test should have filled the queue"
    assert m.rtt_loaded_ms is not None
    assert m.rtt_loaded_ms >= m.rtt_ms + 100, (m.rtt_loaded_ms, m.rtt_ms)
    assert m.rtt_loaded_ms <= r.link.true_rtt_range_ms()[1] + queue_ms + 5


def test_bufferbloat_slow_downlink_rtt_unloaded() -> None:
    r = result("bloat 150k down, 1s queue")
    assert r.down.max_queue_delay_s > 0.2, "the test should have filled the queue"
    assert rtt_ok(r.metrics.rtt_ms, r.link), (r.metrics.rtt_ms, r.link.true_rtt_range_ms())
    assert r.metrics.rtt_loaded_ms is not None
    assert r.metrics.rtt_loaded_ms >= r.metrics.rtt_ms + 100


# --- jitter


def test_jitter_measured_on_the_real_transits() -> None:
    r = result("jitter +-15ms")
    assert r.verdict.verdict == VIDEO
    for d in ("up", "down"):
        got, truth = getattr(r.metrics, d).jitter_ms, r.true_jitter_ms(d)
        assert got is not None and truth is not None
        assert got == pytest.approx(truth, rel=0.02, abs=0.05), (d, got, truth)


# --- time to verdict


@pytest.mark.parametrize("name", list(CASES))
def test_time_to_verdict_within_cap(name: str) -> None:
    r = result(name)
    assert r.stopped_by == "finished", f"cut off by the cap after {r.total_s:.2f} s"
    assert r.total_s <= SETTINGS.max_duration_s


# --- the harness itself


def test_link_model_rate_queue_and_order() -> None:
    sim = Simulator()
    link = LinkDirection(sim, Direction(delay_ms=10, rate_kbps=1000, queue_bytes=10_000),
                         "t", seed=0)
    arrivals: list[float] = []
    for _ in range(20):  # 20 x 1000 B at once: 10 fit the queue, 1000 B take 8 ms each
        link.send(1000, "x", arrivals.append)
    sim.run(10)
    assert link.stats.delivered["x"] == 10 and link.stats.dropped_queue["x"] == 10
    assert arrivals == pytest.approx([0.010 + 0.008 * (i + 1) for i in range(10)])


def test_deterministic_and_clock_independent() -> None:
    """Same seed, same result. Other clock offsets (client vs reflector) give the same
    verdict and figures: netprobe never mixes the two clocks. (Not bit-identical: probes,
    ticks and rung boundaries fall on exactly the same instants, so float rounding of the
    offsets can move a rung switch by one probe interval.)"""
    link = CASES["loss 8%"].link
    a, b = simulate(link, seed=3), simulate(link, seed=3)
    assert a.metrics == b.metrics and a.verdict == b.verdict
    c = simulate(link, seed=3, client_clock=5.0, reflector_clock=987_654.25)
    assert c.verdict.verdict == a.verdict.verdict
    assert c.metrics.rtt_ms == pytest.approx(a.metrics.rtt_ms, abs=0.1)
    for d in ("up", "down"):
        x, y = getattr(a.metrics, d), getattr(c.metrics, d)
        assert y.loss_pct == pytest.approx(x.loss_pct, abs=0.5)
        assert y.kbps == pytest.approx(x.kbps, rel=0.02)
        assert y.jitter_ms == pytest.approx(x.jitter_ms, abs=0.1)


@cache
def full_length_check() -> tuple[SimResult, float]:
    """A clean link with 3.6 s rungs (4 x 3.6 s runs into the cap), and its CPU time."""
    slow_ladder = replace(SETTINGS, rung_duration_s=3.6)
    t = time.process_time()
    r = simulate(CASES["clean 10ms 50/20M"].link, settings=slow_ladder)
    return r, time.process_time() - t


def test_a_full_15s_check_is_fast() -> None:
    """The harness's own cost (everything but the session's control-loop calls, which are
    netprobe's cost and reported in the table) stays small for a full 15 s check."""
    r, cpu = full_length_check()
    assert r.stopped_by == "deadline" and r.total_s >= SETTINGS.max_duration_s - 0.3
    session_cpu = sum(c for _, c in r.iteration_cpu)
    assert cpu - session_cpu < 1.0, f"{cpu - session_cpu:.2f} s of harness CPU"


_rate = st.one_of(st.none(), st.floats(150, 6000))


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(up=_rate, down=_rate, d_up=st.floats(1, 120), d_down=st.floats(1, 120),
       q=st.sampled_from([50.0, 200.0, 1000.0]), seed=st.integers(0, 1000))
def test_property_never_overstates_and_always_finishes(
        up: float | None, down: float | None, d_up: float, d_down: float, q: float,
        seed: int) -> None:
    link = LinkSpec(Direction(d_up, rate_kbps=up, queue_ms=q),
                    Direction(d_down, rate_kbps=down, queue_ms=q))
    r = simulate(link, seed=seed)
    assert not r.errors
    assert r.stopped_by == "finished" and r.total_s <= SETTINGS.max_duration_s
    assert r.metrics.rtt_ms is not None and r.metrics.rtt_ms >= link.base_rtt_ms - 0.5
    for d in ("up", "down"):
        true, m = getattr(link, d).rate_kbps, getattr(r.metrics, d)
        if true is not None and m.kbps is not None:
            assert m.kbps <= 1.1 * true, (d, m.kbps, true)


# ------------------------------------------------------------------------ the table


def _row(name: str) -> str:
    case = CASES[name]
    r = run(name)
    expect = "/".join(case.expect)
    if isinstance(r, Exception):
        return (f"{name:26} {expect:17} {'CRASH':10} {'-':>17}  "
                f"{type(r).__name__}: {str(r)[:60]}")
    m = r.metrics
    lo, hi = r.link.true_rtt_range_ms()
    true_rtt = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"
    if r.link.up.jitter_ms or r.link.down.jitter_ms:
        true_rtt += "+jit"  # propagation only: jitter without reordering adds to the mean
    loss = (f"loss {_fmt(m.up.loss_pct, 1)}/{r.link.up.loss_pct:g}"
            f"[{_fmt(r.true_loss_pct('up'), 1)}] "
            f"{_fmt(m.down.loss_pct, 1)}/{r.link.down.loss_pct:g}"
            f"[{_fmt(r.true_loss_pct('down'), 1)}] n{m.up.packets}/{m.down.packets}")
    loaded = f" (loaded {m.rtt_loaded_ms:.0f})" if m.rtt_loaded_ms is not None else ""
    ok = "" if r.verdict.verdict in case.expect else " !"
    timing = f"{r.total_s:5.2f} ({r.session_s:4.2f}) {r.stopped_by[:3]}"
    return (f"{name:26} {expect:17} {r.verdict.verdict + ok:10} {timing:>17}  "
            f"rtt {_fmt(m.rtt_ms)}/{true_rtt}{loaded}  "
            f"up {_rate_txt(m.up, r.link.up.rate_kbps)}  "
            f"down {_rate_txt(m.down, r.link.down.rate_kbps)}  {loss}")


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    lines = [
        "",
        "simulated checks (measured/true; kbps '+' = at least; loss measured/link rate"
        "[random loss the link inflicted on the counted packets] nPackets up/down; time: "
        "total incl. connect (session) stopped-by)",
        f"{'case':26} {'expected':17} {'got':10} {'sim time s':>17}  measured/true",
    ]
    lines += [_row(n) for n in CASES]
    lines.append("")
    lines.append(f"random loss over seeds {list(LOSS_SEEDS)} (reported up/down %, "
                 "[what the link dropped of the counted packets], packets):")
    for rate in LOSS_RATES:
        parts, vals = [], []
        for s in LOSS_SEEDS:
            r = result(f"loss {rate:g}%", s)
            u, d = r.metrics.up, r.metrics.down
            vals += [u.loss_pct, d.loss_pct]
            parts.append(f"{u.loss_pct:.1f}/{d.loss_pct:.1f}"
                         f"[{r.true_loss_pct('up'):.1f}/{r.true_loss_pct('down'):.1f}]"
                         f" n{u.packets}")
        spread = f"min {min(vals):.2f} max {max(vals):.2f} mean {statistics.fmean(vals):.2f}"
        lines.append(f"  {rate:4g} %: {spread};  " + "  ".join(parts))
    lines.append("")
    lines.append(f"loss figure within ±1.5 points of the link's rate, {len(PRECISION_SEEDS)} "
                 "seeds x 2 directions (50 Mbit/s link):")
    for rate in (3.0, 8.0):
        hits, n, sd, packets = precision_sweep(rate)
        lines.append(f"  {rate:4g} %: {hits}/{n} = {100 * hits / n:.0f} %  (sd {sd:.2f} points, "
                     f"{packets:.0f} packets a direction)")
    lines.append("")
    r, cpu = full_length_check()
    worst_t, worst = max(r.iteration_cpu, key=lambda x: x[1])
    full = sorted(c for _, c in r.iteration_cpu)
    session_cpu = sum(full)
    clean = sorted(c for _, c in result("clean 10ms 50/20M").iteration_cpu)

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.1f}"

    lines.append(f"session CPU per control-loop iteration (tick+progress+finished), "
                 f"median/p95/max: clean check {ms(clean, 0.5)}/{ms(clean, 0.95)}/"
                 f"{1000 * clean[-1]:.1f} ms; full 15 s check {ms(full, 0.5)}/{ms(full, 0.95)}/"
                 f"{1000 * worst:.1f} ms (max at {worst_t:.1f} s; {len(r.echoes)} echoes), "
                 f"{session_cpu:.2f} of {cpu:.2f} s CPU")
    lines.append("")
    name = "200k symmetric, loss 8%"
    got = [simulate(CASES[name].link, seed=s).verdict.verdict for s in VERDICT_SWEEP_SEEDS]
    lines.append(f"{name}: true verdict {AUDIO_ONLY}, got it in "
                 f"{got.count(AUDIO_ONLY)}/{len(got)} seeds ({got.count(PHONE)} x {PHONE})")
    print("\n".join(lines))


def test_no_case_crashes() -> None:
    crashed = [n for n in CASES if isinstance(run(n), Exception)]
    crashed += [f"{n} seed {s}" for n in HEAVY_LOSS + [f"loss {x:g}%" for x in LOSS_RATES]
                for s in LOSS_SEEDS if isinstance(run(n, s), Exception)]
    assert not crashed, crashed

"""netprobe's whole check, run over simulated links whose true values are known.

The harness (`simlink.py`) runs the real `ClientSession`, `Responder`, wire format and
classifier the way `probe.py` and `reflector.py` drive them, over a discrete-event link
model; every assertion compares what netprobe reports with what the link really is.

Run with `-s` to get the table of cases (expected, got, time to verdict, measured vs true).

Failures found in netprobe's session/ladder logic are marked `xfail(strict=True)` with the
reason; they are described in full in the table's footnotes and the report.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.classify import AUDIO_ONLY, PHONE, VIDEO, classify
from netprobe.config import ProbeSettings, load_thresholds
from netprobe.emodel import estimate_audio_quality
from netprobe.metrics import DirectionMetrics, LinkMetrics

from simlink import Direction, LinkDirection, LinkSpec, SimResult, Simulator, simulate

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
    Case("700 up 1s queue/3540 down", LinkSpec(
        Direction(150, rate_kbps=700, queue_ms=1000), Direction(15, rate_kbps=3540)), (VIDEO,)),
    Case("loss 3%", _sym(5, 50_000, loss_pct=3.0), (VIDEO,)),
    Case("loss 8%", _sym(5, 50_000, loss_pct=8.0), NOT_VIDEO),
    Case("loss 30%", _sym(5, 50_000, loss_pct=30.0), (PHONE,)),
    Case("rtt 600ms", _sym(300, 50_000), (AUDIO_ONLY,)),
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
              "700 up 1s queue/3540 down"]
LOSS_SEEDS = range(5)


@lru_cache(maxsize=None)
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


def test_clean_link() -> None:
    r = result("clean 10ms 50/20M")
    m = r.metrics
    assert r.verdict.verdict == VIDEO
    assert rtt_ok(m.rtt_ms, r.link), (m.rtt_ms, r.link.true_rtt_range_ms())
    assert m.up.loss_pct == 0 and m.down.loss_pct == 0
    assert m.up.kbps_at_least and m.down.kbps_at_least
    assert m.up.kbps == pytest.approx(TOP_RUNG) and m.down.kbps == pytest.approx(TOP_RUNG)
    assert r.stopped_by == "finished"


XF_STALE_UP_REPORT = pytest.mark.xfail(strict=True, reason=(
    "Ladder.evaluate judges an uplink rung at ended_at + settle on the latest echo's "
    "RungReport; the downlink rung saturating 150 kbit/s delays/drops the echoes, so the "
    "report is stale (29 of 121 packets, though the reflector got all 121): ratio 0.24 "
    "fails rung 300, uplink reported 300 kbit/s (not at_least) on a 20 Mbit/s uplink"))
XF_ABORTED_LOWER_BOUND = pytest.mark.xfail(strict=True, reason=(
    "finished() aborts the ladders once the verdict is certain; metrics() then reports the "
    "last passed rung as kbps with kbps_at_least=True and classify._rate_check counts an "
    "'at least 300' below 600 as too slow: the fast direction is blamed in the reasons"))
XF_SELF_LOSS = pytest.mark.xfail(strict=True, reason=(
    "_up_counts/_down_counts count every probe/echo lost, also those dropped by the queue "
    "the check's own saturating rungs filled (RTT samples of failed rungs are excluded, "
    "losses are not): loss 12.7 % (200k) / 40.9 % (150 down) / 36.9 % (150 up) on links "
    "with no random loss -> audio_quality_too_low -> phone instead of audio_only"))
XF_BLOAT_CALM = pytest.mark.xfail(strict=True, reason=(
    "The ladder keeps sending 800/1600/3200 while rung 300 awaits judgement (settle = "
    "0.15 + 1.5 x an RTT estimate inflated by the queue, > 1 s); Ladder.evaluate marks only "
    "the failed rung and the next as failed_rungs(), so _unloaded_rtts counts probes sent "
    "during rungs 2-3 (queue full) as calm: rtt_ms 983 ms on a 16-23 ms link -> phone"))
XF_PASSED_RUNG_LOSS = pytest.mark.xfail(strict=True, reason=(
    "Rung 800 on a 720 kbit/s downlink passes (657 >= 0.85 x keep x 800, keep lowered to "
    "0.955 by the echoes the rung itself got dropped), so _down_counts adds its 17 "
    "queue-dropped load packets to the loss: 24/396 = 6.1 % on a lossless link -> "
    "loss_too_high_for_video -> audio_only on a link that carries video"))
XF_LATE_DOWN_RUNG = pytest.mark.xfail(strict=True, reason=(
    "Down rung 3200 is judged at ended_at + settle, but its request rode on probes that sat "
    "0.94 s in the bloated uplink queue: the reflector sent rung 1600 for 1.41 s (283 "
    "packets) and had sent only 13 packets of 3200 (48 ms) when Ladder._judge ran; 13 "
    "packets give 2519 kbit/s, the rung fails, and a 3540 kbit/s downlink is reported as "
    "a 2519 limit (not at_least)"))
XF_CRASH = pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "ClientSession.bounds(): with < 20 echoes received, the pessimistic jitter is math.inf "
    "and _mos() passes it to estimate_audio_quality, which raises ValueError; finished() "
    "calls bounds() from min_probe_s (1.5 s) on, so any link with RTT >= 1.1 s (or "
    "random loss of ~40-60 %) crashes run_check (ValueError is not caught by the CLI either)"))


def _case_param(name: str, *marks: pytest.MarkDecorator) -> object:
    return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", [
    _case_param("200k symmetric"),
    _case_param("1000k symmetric"),
    _case_param("1500 up/20000 down"),
    _case_param("20000 up/150 down", XF_STALE_UP_REPORT),
    _case_param("150 up/20000 down"),
    _case_param("2500k symmetric"),
    _case_param("720k down, 20ms queue"),
    _case_param("700 up 1s queue/3540 down", XF_LATE_DOWN_RUNG),
])
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


@pytest.mark.parametrize("name", [
    _case_param(n, XF_PASSED_RUNG_LOSS) if n == "720k down, 20ms queue" else _case_param(n)
    for n in RATE_CASES])
def test_rate_verdict_names_starved_direction(name: str) -> None:
    r = result(name)
    assert r.verdict.verdict in CASES[name].expect, (r.verdict.verdict, r.reason_codes())
    codes = r.reason_codes()
    for d in ("up", "down"):
        true = getattr(r.link, d).rate_kbps
        if true is not None and true < VIDEO_MIN:
            assert any(c.startswith(f"{WORD[d]}_too_slow") for c in codes), (d, codes)


@pytest.mark.parametrize("name", [
    _case_param("clean 10ms 50/20M"),
    _case_param("200k symmetric", XF_SELF_LOSS),
    _case_param("1000k symmetric"),
    _case_param("1500 up/20000 down"),
    _case_param("20000 up/150 down", XF_SELF_LOSS),
    _case_param("150 up/20000 down", XF_SELF_LOSS),
    _case_param("2500k symmetric"),
    _case_param("720k down, 20ms queue", XF_PASSED_RUNG_LOSS),
    _case_param("700 up 1s queue/3540 down"),
    _case_param("loss 3%"),
    _case_param("loss 8%"),
    _case_param("loss 30%"),
    _case_param("rtt 600ms"),
    _case_param("rtt 1600ms", XF_CRASH),
    _case_param("bloat 2M up, 1s queue"),
    _case_param("bloat 150k down, 1s queue", XF_BLOAT_CALM),
    _case_param("jitter +-15ms"),
])
def test_verdict_is_the_true_links_verdict(name: str) -> None:
    """Stricter than the task's accepted verdicts: classify() of the link's true values."""
    r = result(name)
    ideal = classify(true_metrics(r), THRESHOLDS)
    assert r.verdict.verdict == ideal.verdict, (r.verdict.verdict, r.reason_codes(),
                                                ideal.verdict)


@pytest.mark.parametrize("name", [
    _case_param("clean 10ms 50/20M"),
    _case_param("200k symmetric", XF_SELF_LOSS),
    _case_param("1000k symmetric"),
    _case_param("1500 up/20000 down"),
    _case_param("20000 up/150 down", XF_STALE_UP_REPORT),
    _case_param("150 up/20000 down", XF_ABORTED_LOWER_BOUND),
    _case_param("2500k symmetric"),
    _case_param("720k down, 20ms queue", XF_PASSED_RUNG_LOSS),
    _case_param("700 up 1s queue/3540 down"),
    _case_param("loss 3%"),
    _case_param("loss 8%"),
    _case_param("loss 30%", XF_ABORTED_LOWER_BOUND),
    _case_param("rtt 600ms", XF_ABORTED_LOWER_BOUND),
    _case_param("rtt 1600ms", XF_CRASH),
    _case_param("bloat 2M up, 1s queue"),
    _case_param("bloat 150k down, 1s queue", XF_BLOAT_CALM),
    _case_param("jitter +-15ms"),
])
def test_reasons_blame_only_true_faults(name: str) -> None:
    """Every failing reason (notes `*_marginal_*` aside) must be one that the link's true
    values give too: a patient must not be told to stop uploads when the delay is the
    problem."""
    r = result(name)
    ideal = {c.code for c in classify(true_metrics(r), THRESHOLDS).reasons}
    wrong = [c for c in r.reason_codes() if "_marginal_" not in c and c not in ideal]
    assert not wrong, (wrong, sorted(ideal))


# --- random loss


LOSS_RATES = [3.0, 8.0, 30.0]


@pytest.mark.parametrize("rate", LOSS_RATES)
def test_random_loss_verdict_and_accounting(rate: float) -> None:
    """Verdict per seed, and the loss figure equals what the link really dropped of the
    packets the figure counts (probes/echoes and the load of passed rungs), ±1.5 points."""
    name = f"loss {rate:g}%"
    for seed in LOSS_SEEDS:
        r = result(name, seed)
        assert r.verdict.verdict in CASES[name].expect, (seed, r.verdict.verdict)
        for d in ("up", "down"):
            got, truth = getattr(r.metrics, d).loss_pct, r.true_loss_pct(d)
            assert got is not None and truth is not None
            assert abs(got - truth) <= 1.5, (seed, d, got, truth)


@pytest.mark.parametrize("rate", LOSS_RATES)
def test_random_loss_unbiased_over_seeds(rate: float) -> None:
    values = [getattr(result(f"loss {rate:g}%", s).metrics, d).loss_pct
              for s in LOSS_SEEDS for d in ("up", "down")]
    assert abs(statistics.fmean(values) - rate) <= 1.5, values


XF_LOSS_SAMPLE = {
    3.0: "the full ladder counts only ~706 packets per direction (binomial sd 0.64 pt): "
         "seed 1 down reports 4.83 %, exactly what the link dropped of those packets; ±1.5 "
         "holds in ~97 % of runs (117/120 in a 60-seed sweep)",
    8.0: "finished() stops at 1.9-3.1 s once 'not video' is certain, leaving 336-705 packets "
         "(sd 1.05 pt over 60 seeds; 104/120 runs within ±1.5): seed 2 up reports 9.63 %",
    30.0: "finished() stops at min_probe_s (1.5 s) once 'phone' is certain: ~160-196 packets "
          "(down to 50), sd 3.7 pt over 60 seeds, errors -14..+8 pt; 46/120 runs within ±1.5",
}


@pytest.mark.parametrize("rate", [pytest.param(r, marks=pytest.mark.xfail(
    strict=True, reason=XF_LOSS_SAMPLE[r])) for r in LOSS_RATES])
def test_random_loss_each_run_within_1_5_points(rate: float) -> None:
    for seed in LOSS_SEEDS:
        r = result(f"loss {rate:g}%", seed)
        for d in ("up", "down"):
            got = getattr(r.metrics, d).loss_pct
            assert got is not None and abs(got - rate) <= 1.5, (seed, d, got)


# --- delay


@pytest.mark.parametrize("name", [_case_param("rtt 600ms"),
                                  _case_param("rtt 1600ms", XF_CRASH)])
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


@XF_BLOAT_CALM
def test_bufferbloat_slow_downlink_rtt_unloaded() -> None:
    r = result("bloat 150k down, 1s queue")
    assert rtt_ok(r.metrics.rtt_ms, r.link), (r.metrics.rtt_ms, r.link.true_rtt_range_ms())


# --- jitter


def test_jitter_measured_on_the_real_transits() -> None:
    r = result("jitter +-15ms")
    assert r.verdict.verdict == VIDEO
    for d in ("up", "down"):
        got, truth = getattr(r.metrics, d).jitter_ms, r.true_jitter_ms(d)
        assert got is not None and truth is not None
        assert got == pytest.approx(truth, rel=0.02, abs=0.05), (d, got, truth)


# --- time to verdict


@pytest.mark.parametrize("name", [
    _case_param(n, XF_CRASH) if n == "rtt 1600ms" else _case_param(n) for n in CASES])
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


def test_a_full_15s_check_is_fast() -> None:
    slow_ladder = replace(SETTINGS, rung_duration_s=3.6)  # 4 x 3.6 s: runs into the cap
    t = time.process_time()
    r = simulate(CASES["clean 10ms 50/20M"].link, settings=slow_ladder)
    cpu = time.process_time() - t
    assert r.stopped_by == "deadline" and r.total_s >= SETTINGS.max_duration_s - 0.3
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for a simulated {r.total_s:.1f} s check"


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
    loss = (f"loss {_fmt(m.up.loss_pct, 1)}/{r.link.up.loss_pct:g} "
            f"{_fmt(m.down.loss_pct, 1)}/{r.link.down.loss_pct:g}")
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
        "simulated checks (measured/true; kbps '+' = at least; time: total incl. "
        "connect (session) stopped-by)",
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
    print("\n".join(lines))


def test_no_other_case_crashes() -> None:
    """Only the long-RTT case hits the bounds() crash (see XF_CRASH)."""
    crashed = [n for n in CASES if isinstance(run(n), Exception)]
    assert crashed == ["rtt 1600ms"], crashed

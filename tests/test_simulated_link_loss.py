"""The loss figure of a simulated check: what it counts, how precise it is when the check
stops, and that random loss is never taken for a slow link.

Run with `-s` to get the random-loss figures per seed, the loss-precision rates over 100
seeds and a verdict sweep.
"""

from __future__ import annotations

import statistics
from functools import cache

import pytest
from simcases import (
    CASES,
    HEAVY_LOSS,
    LOSS_SEEDS,
    SETTINGS,
    THRESHOLDS,
    half_width_pts,
    result,
    run,
    sym,
)
from simlink import SimResult, simulate
from simnet import Direction, LinkSpec

from netprobe.core.classify import AUDIO_ONLY, PHONE
from netprobe.core.session import DEADLINE_MARGIN_S, PRECISION_RESERVE_S

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
        if truth["counted"] == 0 and r.session.stop_reason == "settled":
            continue  # the verdict was certain before any loss was counted (rtt 1600ms)
        got = getattr(r.metrics, d).loss_pct
        assert got is not None and truth["counted"] == getattr(r.metrics, d).packets, (d, truth)
        assert got == pytest.approx(r.true_loss_pct(d), abs=1e-9), (d, got, truth)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_figure_precise_at_stop_or_reported_with_its_interval(name: str) -> None:
    """What issue 10 promises for stopping: a check stops as soon as its verdict is certain
    (`settled`), and a loss figure that is not yet within 1.5 points (95 % half-width; or
    clearly above 15 %) is reported with its interval, which holds the link's true loss;
    otherwise it stops with its figures measured. `precision_reserve` only for a verdict
    that never settled."""
    r = result(name)
    assert r.session.stop_reason in ("measured", "settled", "precision_reserve"), \
        r.session.stop_reason
    if r.session.stop_reason == "precision_reserve":
        deadline = SETTINGS.max_duration_s - DEADLINE_MARGIN_S
        assert r.total_s >= deadline - PRECISION_RESERVE_S - 1e-6, r.total_s
    for d in ("up", "down"):
        m = getattr(r.metrics, d)
        if m.packets == 0:
            assert r.session.stop_reason == "settled" and m.loss_pct is None, (d, m)
            continue
        half, lower = half_width_pts(m)
        if lower > 15.0 or half <= 1.5:
            continue
        assert r.session.stop_reason in ("settled", "precision_reserve"), (d, m)
        assert m.loss_interval_pct is not None
        lo, hi = m.loss_interval_pct
        truth = r.link.up.loss_pct if d == "up" else r.link.down.loss_pct
        assert lo <= truth <= hi + 1.0, (d, truth, m.loss_interval_pct)


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
    """Over seeds the figure centres on the true rate, to within the precision the checks
    stopped at (a check on a link with clearly too much loss stops as soon as its verdict is
    certain, with fewer samples: issue 10), and each figure's interval holds the truth."""
    metrics = [getattr(result(f"loss {rate:g}%", s).metrics, d)
               for s in LOSS_SEEDS for d in ("up", "down")]
    values = [m.loss_pct for m in metrics]
    halves = [half_width_pts(m)[0] for m in metrics]
    tolerance = max(1.5, 2 * statistics.fmean(halves) / len(metrics) ** 0.5)
    assert abs(statistics.fmean(values) - rate) <= tolerance, (values, tolerance)
    assert sum(m.loss_interval_pct[0] <= rate <= m.loss_interval_pct[1] for m in metrics) \
        >= len(metrics) - 1, [m.loss_interval_pct for m in metrics]


PRECISION_SEEDS = range(100)
VERDICT_SWEEP_SEEDS = range(40)


@cache
def precision_sweep(rate: float) -> tuple[int, int, float, float]:
    """(figures within ±1.5 points of the link's loss rate, figures, sd, mean packets) over
    `PRECISION_SEEDS` x both directions of a 50 Mbit/s link."""
    hits, values, packets = 0, [], []
    for seed in PRECISION_SEEDS:
        r = simulate(sym(5, 50_000, loss_pct=rate), seed=seed, settings=SETTINGS,
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




# --- the classes of link that once got wrong answers

HEAVY_RANDOM_LOSS = [5.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0]
CLASS_SEEDS = range(4)


@cache
def fast_lossy(loss_pct: float, seed: int, up_only: bool = False) -> SimResult:
    lossy = Direction(5, rate_kbps=50_000, loss_pct=loss_pct)
    link = LinkSpec(lossy, Direction(5, rate_kbps=50_000) if up_only else lossy)
    return simulate(link, seed=seed, settings=SETTINGS, thresholds=THRESHOLDS)


@pytest.mark.parametrize("up_only", [False, True], ids=["both ways", "uplink only"])
@pytest.mark.parametrize("loss_pct", HEAVY_RANDOM_LOSS)
def test_random_loss_is_never_blamed_on_speed(loss_pct: float, up_only: bool) -> None:
    """On a fast link with random loss, any rate from 5 to 60 %, over seeds: no direction is
    reported as a rate limit and no reason blames the speed. (A rung judged on too few calm
    probes failed on the loss alone, and its loss-thinned rate was reported as the link's:
    "your upload is too slow" to a client whose problem is loss.)"""
    for seed in CLASS_SEEDS:
        r = fast_lossy(loss_pct, seed, up_only)
        for d in ("up", "down"):
            m = getattr(r.metrics, d)
            assert m.kbps is None or m.kbps_at_least, (seed, d, m.kbps, r.ladder(d))
        speed = [c.code for c in r.verdict.reasons
                 if "_too_slow_" in c.code or "_not_tested_" in c.code]
        assert not speed, (seed, speed)


SLOW_LINKS = [(100, 100), (150, 150), (200, 200), (300, 300), (500, 500), (700, 700),
              (150, 5000), (5000, 150), (100, 20_000), (20_000, 100), (400, 1000)]


@pytest.mark.parametrize("up,down", SLOW_LINKS, ids=[f"{u}/{d}" for u, d in SLOW_LINKS])
def test_slow_clean_link_loss_figure_is_precise(up: int, down: int) -> None:
    """A slow link without loss gets a loss figure of 0, precise to 1.5 points, or, when the
    verdict was certain sooner (issue 10: no waiting for precision nobody needs), reported
    with its interval from 0; the session says it stopped measured or settled."""
    r = simulate(LinkSpec(Direction(10, rate_kbps=up), Direction(10, rate_kbps=down)),
                 settings=SETTINGS, thresholds=THRESHOLDS)
    assert r.session.stop_reason in ("measured", "settled"), r.session.stop_reason
    for d in ("up", "down"):
        m = getattr(r.metrics, d)
        half, _ = half_width_pts(m)
        assert m.loss_pct == 0, (d, m.loss_pct)
        assert half <= 1.5 or (r.session.stop_reason == "settled" and m.loss_interval_pct
                               and m.loss_interval_pct[0] == 0), (d, m.packets, half)


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    lines: list[str] = []
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
    name = "200k symmetric, loss 8%"
    got = [simulate(CASES[name].link, seed=s).verdict.verdict for s in VERDICT_SWEEP_SEEDS]
    lines.append(f"{name}: true verdict {AUDIO_ONLY}, got it in "
                 f"{got.count(AUDIO_ONLY)}/{len(got)} seeds ({got.count(PHONE)} x {PHONE})")
    print("\n".join(lines))


def test_no_case_crashes() -> None:
    crashed = [f"{n} seed {s}" for n in HEAVY_LOSS + [f"loss {x:g}%" for x in LOSS_RATES]
                for s in LOSS_SEEDS if isinstance(run(n, s), Exception)]
    assert not crashed, crashed

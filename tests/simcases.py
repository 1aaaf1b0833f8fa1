"""The simulated links the check is judged on, and the truth a perfect check would report.

Shared by `test_simulated_link.py` (verdicts, rates, delay, the harness) and
`test_simulated_link_loss.py` (loss accounting and precision): each case is simulated once
per seed (`run` caches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from simlink import SimResult, simulate
from simnet import Direction, LinkSpec

from netprobe.config import ProbeSettings, load_thresholds
from netprobe.core.classify import AUDIO_ONLY, PHONE, VIDEO
from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.measure import wilson_interval
from netprobe.core.metrics import DirectionMetrics, LinkMetrics

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


def sym(delay_ms: float, rate: float | None, **kw: object) -> LinkSpec:
    d = Direction(delay_ms=delay_ms, rate_kbps=rate, **kw)  # type: ignore[arg-type]
    return LinkSpec(d, d)


def _rates(up: float | None, down: float | None, delay_ms: float = 5.0) -> LinkSpec:
    return LinkSpec(Direction(delay_ms, rate_kbps=up), Direction(delay_ms, rate_kbps=down))


NOT_VIDEO = (AUDIO_ONLY, PHONE)
CASES = {c.name: c for c in [
    Case("clean 10ms 50/20M", _rates(50_000, 20_000), (VIDEO,)),
    Case("200k symmetric", sym(5, 200), (AUDIO_ONLY, PHONE)),
    Case("1000k symmetric", sym(5, 1000), (VIDEO,)),
    Case("1500 up/20000 down", _rates(1500, 20_000), (VIDEO,)),
    Case("20000 up/150 down", _rates(20_000, 150), NOT_VIDEO),
    Case("150 up/20000 down", _rates(150, 20_000), NOT_VIDEO),
    Case("2500k symmetric", sym(5, 2500), (VIDEO,)),
    # found by a random sweep: a link that truly carries video
    Case("720k down, 20ms queue", LinkSpec(Direction(5), Direction(5, rate_kbps=720,
                                                                   queue_ms=20)), (VIDEO,)),
    # found by a random sweep: rung 800 passes while overflowing the short queue
    Case("750k down 20ms queue, 1%", LinkSpec(
        Direction(5, loss_pct=1.0), Direction(5, rate_kbps=750, queue_ms=20, loss_pct=1.0)),
        (VIDEO,)),
    # a video call fills the 700 kbit/s uplink and its 1 s queue: 1.3 s of delay (issue 10)
    Case("700 up 1s queue/3540 down", LinkSpec(
        Direction(150, rate_kbps=700, queue_ms=1000), Direction(15, rate_kbps=3540)),
        (AUDIO_ONLY,)),
    Case("loss 3%", sym(5, 50_000, loss_pct=3.0), (VIDEO,)),
    Case("loss 8%", sym(5, 50_000, loss_pct=8.0), NOT_VIDEO),
    Case("200k symmetric, loss 8%", sym(5, 200, loss_pct=8.0), (AUDIO_ONLY,)),
    Case("loss 30%", sym(5, 50_000, loss_pct=30.0), (PHONE,)),
    Case("loss 40%", sym(5, 50_000, loss_pct=40.0), (PHONE,)),
    Case("loss 50%", sym(5, 50_000, loss_pct=50.0), (PHONE,)),
    Case("loss 60%", sym(5, 50_000, loss_pct=60.0), (PHONE,)),
    Case("rtt 600ms", sym(300, 50_000), (AUDIO_ONLY,)),
    Case("rtt 1100ms", sym(550, 50_000), (PHONE,)),
    Case("rtt 1600ms", sym(800, 50_000), (PHONE,)),
    Case("bloat 2M up, 1s queue", LinkSpec(Direction(5, rate_kbps=2000, queue_ms=1000),
                                           Direction(5, rate_kbps=20_000)), (VIDEO,)),
    Case("bloat 150k down, 1s queue", LinkSpec(Direction(5, rate_kbps=2000),
                                               Direction(5, rate_kbps=150, queue_ms=1000)),
         NOT_VIDEO),
    Case("jitter +-15ms", sym(20, 50_000, jitter_ms=15.0), (VIDEO,)),
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
    # A rung that fills a bottleneck the ladder can fill meets its full queue (bufferbloat).
    queues = [d.queue_ms for d in (link.up, link.down)
              if d.rate_kbps is not None and d.rate_kbps <= TOP_RUNG and d.queue_bytes is None]
    loaded = rtt + max(queues) if queues else None
    return LinkMetrics(rtt_ms=rtt, rtt_loaded_ms=loaded, mos_audio=mos, up=up, down=down,
                       connected=True)


def rtt_ok(measured: float | None, link: LinkSpec) -> bool:
    """Within ±10 % or ±5 ms (whichever is wider) of the true unloaded RTT range."""
    if measured is None:
        return False
    lo, hi = link.true_rtt_range_ms()
    tol = max(0.1 * lo, 5.0)
    return lo - tol <= measured <= hi + tol


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def rate_txt(d: DirectionMetrics, true: float | None) -> str:
    t = "inf" if true is None else f"{true:g}"
    return f"{fmt(d.kbps)}{'+' if d.kbps_at_least else ''}/{t}"



def half_width_pts(m: DirectionMetrics) -> tuple[float, float]:
    """(95 % Wilson half-width, lower bound) of a loss figure, percentage points."""
    lost = round((m.loss_pct or 0.0) * m.packets / 100)
    lo, hi = wilson_interval(lost, m.packets)
    return 100 * (hi - lo) / 2, 100 * lo


#: Cases whose definition leaves too little time to sharpen the loss figure before the
#: precision reserve (`PRECISION_RESERVE_S` before the deadline), so the check is expected

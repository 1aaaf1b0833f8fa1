"""The best and the worst a link could still turn out to be, from a check's samples so far
(pure): what `ClientSession` stops on, once both classify alike."""

from __future__ import annotations

from netprobe.core.ladder import Ladder
from netprobe.core.measure import percentile, wilson_interval
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.sampling import HUGE_MS, Analysis, Counts, audio_mos

#: A rate no ladder reaches: "unbounded" in a bound.
BIG_KBPS = 1e9
#: The loss bounds are 99 % Wilson intervals: a check stops early only on a verdict that
#: holds across them (with 95 %, one early stop in twenty would rest on a loss sample that
#: misses the truth, and a few dozen warm-up probes do that often enough to matter).
SETTLE_Z = 2.576


def bounds(a: Analysis, loss_counts: tuple[Counts, Counts], up: Ladder, down: Ladder
           ) -> tuple[LinkMetrics, LinkMetrics]:
    """(optimistic, pessimistic) metrics: Wilson intervals for loss (`SETTLE_Z`), quartiles
    for RTT, half to 1.5 x the median for jitter, the ladders' bounds for the rates."""
    calm = a.calm_rtts
    if len(calm) >= 5:
        rtt_lo, rtt_hi = percentile(calm, 25), percentile(calm, 75)
    else:
        rtt_lo, rtt_hi = 0.0, HUGE_MS
    loss = []
    for counts in loss_counts:
        lo, hi = wilson_interval(counts.lost, counts.expected, SETTLE_Z)
        loss.append((100 * lo, 100 * hi))
    jit = []
    for values in (a.up_jitters, a.down_jitters):
        if len(values) >= 20:
            j = percentile(values, 50)
            jit.append((j * 0.5, j * 1.5 + 2))
        else:
            jit.append((0.0, HUGE_MS))

    def side(optimistic: bool) -> LinkMetrics:
        k = 0 if optimistic else 1
        rtt = rtt_lo if optimistic else rtt_hi
        up_rate = up.upper_bound() if optimistic else up.lower_bound()
        down_rate = down.upper_bound() if optimistic else down.lower_bound()
        losses = [loss[0][k], loss[1][k]]
        jitters = [jit[0][k], jit[1][k]]
        return LinkMetrics(
            rtt_ms=rtt,
            mos_audio=audio_mos(rtt, losses, jitters, a.burst_ratios),
            up=DirectionMetrics(min(up_rate, BIG_KBPS), True, losses[0], jitters[0]),
            down=DirectionMetrics(min(down_rate, BIG_KBPS), True, losses[1], jitters[1]),
            connected=True,
        )

    return side(True), side(False)

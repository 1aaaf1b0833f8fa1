"""How often a session's probe stream probes, pure: at the full rate near a line, at half of
it while the link is clearly good.

A monitoring probe and its echo cost the measuring process about 1 ms of processor time
(aiortc's own per-packet work: RTP, SRTP, ICE, the coroutine layers), so the probe rate is
most of what watching a session costs (scripts/bench_monitor_child.py). The full rate,
`monitor_probe_interval_ms` (50 ms), is what the reactions of issue 4 were measured at: a
window of 5 s needs ~100 probes a direction to tell 5 % loss from 8 %. A link that is nowhere
near a line needs no such precision. So:

- a stream starts at the full rate;
- after `CALM_AFTER_S` of windows that are all comfortable (`comfortable`: every figure within
  the thresholds' "good" values, the window's verdict and the recommendation both `video`), it
  probes every `monitor_calm_interval_ms` (100 ms);
- the first window that is not comfortable puts it back at the full rate at once.

A loss shows in the first window or two, well before the three windows in a row that step
the recommendation down; a longer delay or jitter moves a window's median past the "good"
value no later than past the line. Either way the rate is full from then on, and the windows
that step down are mostly made of full-rate echoes. The figures themselves do not depend on
the rate (each echo counts once, whatever the spacing), only their noise does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netprobe.core.classify import VIDEO, Thresholds, Verdict
from netprobe.core.metrics import LinkMetrics

#: How long every window must have been comfortable before the stream probes at its calm rate.
CALM_AFTER_S = 10.0


def comfortable(metrics: LinkMetrics | None, thresholds: Thresholds) -> bool:
    """True if every figure of a window is within the comfortable values of the thresholds
    (`good_rtt_ms`, `good_loss_pct` and `good_jitter_ms` in both directions, `good_mos`); a
    window without figures is not."""
    v = thresholds.video
    if metrics is None or metrics.rtt_ms is None or metrics.rtt_ms > v.good_rtt_ms:
        return False
    if metrics.mos_audio is not None and metrics.mos_audio < thresholds.audio.good_mos:
        return False
    return all(d.loss_pct is not None and d.loss_pct <= v.good_loss_pct
               and d.jitter_ms is not None and d.jitter_ms <= v.good_jitter_ms
               for d in (metrics.up, metrics.down))


@dataclass
class ProbeRate:
    """The probe spacing of one stream. `full_s`: the spacing near a line; `calm_s`: while
    clearly good (never faster than `full_s`; equal turns the calm rate off)."""

    full_s: float
    calm_s: float
    interval_s: float = field(init=False)
    """The spacing the stream probes at now, seconds."""
    _calm_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.calm_s = max(self.calm_s, self.full_s)
        self.interval_s = self.full_s

    def observe(self, now: float, window: Verdict, metrics: LinkMetrics | None,
                recommendation: str, thresholds: Thresholds) -> float | None:
        """Take one window (its verdict and figures) under the current `recommendation`.
        Returns the new spacing when it changes, else None."""
        if not (window.verdict == VIDEO == recommendation and comfortable(metrics, thresholds)):
            self._calm_since = None
            return self._to(self.full_s)
        if self._calm_since is None:
            self._calm_since = now
        return self._to(self.calm_s) if now - self._calm_since >= CALM_AFTER_S else None

    def _to(self, interval_s: float) -> float | None:
        if interval_s == self.interval_s:
            return None
        self.interval_s = interval_s
        return interval_s

"""What the tests of netprobe.core.classify share: links built from figures, the known reason
codes, and hypothesis strategies for link metrics."""

from __future__ import annotations

from hypothesis import strategies as st

from netprobe.core.classify import Thresholds, Verdict
from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.metrics import DirectionMetrics, LinkMetrics

T = Thresholds()

#: Every reason code the classifier can give. Codes are an interface (support staff and the
#: docs refer to them): a new or renamed code must be added here on purpose.
KNOWN_CODES = {
    "nothing_measured",
    "video_ok",
    "upload_marginal_for_video",
    "download_marginal_for_video",
    "loss_marginal_for_video",
    "upload_not_measured",
    "download_not_measured",
    "loss_not_measured",
    "rtt_not_measured",
    "rtt_too_high_under_load",
    "audio_quality_not_measured",
    "upload_not_tested_for_video",
    "download_not_tested_for_video",
    "upload_not_tested_for_audio",
    "download_not_tested_for_audio",
    "upload_too_slow_for_video",
    "download_too_slow_for_video",
    "upload_too_slow_for_audio",
    "download_too_slow_for_audio",
    "loss_too_high_for_video",
    "rtt_too_high_for_video",
    "jitter_too_high_for_video",
    "audio_quality_too_low",
}


def link(
    up_kbps: float | None = 5000, down_kbps: float | None = 5000, *, at_least: bool = True,
    loss: float | None = 0.5, rtt: float | None = 40, jitter: float | None = 5,
    mos: float | None | str = "auto", up_loss: float | None | str = "same",
    up_at_least: bool | None = None,
) -> LinkMetrics:
    """A link built from figures; MOS by default from the E-model for those figures, as the
    probe session computes it."""
    if mos == "auto":
        mos = estimate_audio_quality(rtt or 0.0, loss or 0.0, jitter or 0.0).mos
    ul = loss if up_loss == "same" else up_loss
    return LinkMetrics(
        rtt_ms=rtt,
        mos_audio=mos,  # type: ignore[arg-type]
        up=DirectionMetrics(up_kbps, at_least if up_at_least is None else up_at_least, ul,
                            jitter, 500),
        down=DirectionMetrics(down_kbps, at_least, loss, jitter, 500),
        connected=True,
    )


def codes(v: Verdict) -> list[str]:
    return [r.code for r in v.reasons]


# ------------------------------------------------------------------------ strategies

_kbps = st.one_of(st.none(), st.floats(0, 20_000))
_loss = st.one_of(st.none(), st.floats(0, 100))
_jitter = st.one_of(st.none(), st.floats(0, 500))


@st.composite
def directions(draw: st.DrawFn) -> DirectionMetrics:
    return DirectionMetrics(draw(_kbps), draw(st.booleans()), draw(_loss), draw(_jitter),
                            draw(st.integers(0, 5000)))


@st.composite
def metrics(draw: st.DrawFn) -> LinkMetrics:
    return LinkMetrics(
        rtt_ms=draw(st.one_of(st.none(), st.floats(0, 5000))),
        rtt_loaded_ms=draw(st.one_of(st.none(), st.floats(0, 5000))),
        mos_audio=draw(st.one_of(st.none(), st.floats(1, 4.5))),
        up=draw(directions()),
        down=draw(directions()),
        connected=True,
    )


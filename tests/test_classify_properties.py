"""Properties of netprobe.core.classify: the monotonicity the module promises (a worse link
never gets a better verdict), the rules as written, symmetry and the verdict's shape."""

from __future__ import annotations

from dataclasses import replace

from classify_support import KNOWN_CODES, T, metrics
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.core.classify import (
    AUDIO_ONLY,
    PHONE,
    UNKNOWN,
    VERDICTS,
    VIDEO,
    Thresholds,
    classify,
)
from netprobe.core.metrics import DirectionMetrics, LinkMetrics


def _worse_dir(d: DirectionMetrics, draw: st.DrawFn) -> DirectionMetrics:
    return DirectionMetrics(
        None if d.kbps is None else d.kbps * draw(st.floats(0, 1)),
        d.kbps_at_least and draw(st.booleans()),
        None if d.loss_pct is None else min(100.0, d.loss_pct + draw(st.floats(0, 100))),
        None if d.jitter_ms is None else d.jitter_ms + draw(st.floats(0, 500)),
        d.packets,
    )


@st.composite
def worsened(draw: st.DrawFn) -> tuple[LinkMetrics, LinkMetrics]:
    m = draw(metrics())
    w = LinkMetrics(
        rtt_ms=None if m.rtt_ms is None else m.rtt_ms + draw(st.floats(0, 3000)),
        rtt_loaded_ms=m.rtt_loaded_ms,
        mos_audio=None if m.mos_audio is None else m.mos_audio - draw(st.floats(0, 3.5)),
        up=_worse_dir(m.up, draw) if draw(st.booleans()) else m.up,
        down=_worse_dir(m.down, draw) if draw(st.booleans()) else m.down,
        connected=True,
    )
    return m, w


@settings(max_examples=400)
@given(worsened())
def test_worse_link_never_gets_better_verdict(pair: tuple[LinkMetrics, LinkMetrics]) -> None:
    better, worse = pair
    assert classify(worse).rank >= classify(better).rank


@settings(max_examples=200)
@given(metrics())
def test_disconnecting_never_improves(m: LinkMetrics) -> None:
    assert classify(replace(m, connected=False)).rank >= classify(m).rank


def _reference(m: LinkMetrics, t: Thresholds = T) -> str:
    """The classifier's rules written out plainly (module docstring and thresholds.toml)."""
    if not m.connected or (m.rtt_ms is None and m.up.kbps is None and m.down.kbps is None):
        return UNKNOWN
    v, a = t.video, t.audio
    rates = [m.up.kbps, m.down.kbps]
    losses = [x for x in (m.up.loss_pct, m.down.loss_pct) if x is not None]
    jitters = [x for x in (m.up.jitter_ms, m.down.jitter_ms) if x is not None]
    video = (all(r is not None and r >= v.min_kbps for r in rates)
             and bool(losses) and max(losses) <= v.max_loss_pct
             and m.rtt_ms is not None and m.rtt_ms <= v.max_rtt_ms
             and (not jitters or max(jitters) <= v.max_jitter_ms))
    if video:
        return VIDEO
    audio = (all(r is not None and r >= a.min_kbps for r in rates)
             and m.mos_audio is not None and m.mos_audio >= a.min_mos)
    return AUDIO_ONLY if audio else PHONE


@settings(max_examples=400)
@given(metrics())
def test_classify_matches_reference_rules(m: LinkMetrics) -> None:
    assert classify(m).verdict == _reference(m)


@settings(max_examples=300)
@given(metrics())
def test_verdict_shape(m: LinkMetrics) -> None:
    v = classify(m)
    assert v.verdict in VERDICTS
    assert v.rank == VERDICTS.index(v.verdict)
    assert 0.0 <= v.confidence <= 1.0
    assert v.reasons
    for r in v.reasons:
        assert r.code in KNOWN_CODES
        assert r.message.strip()
    if v.verdict == VIDEO:
        assert v.reasons[0].code == "video_ok"
    else:
        assert all(r.code != "video_ok" for r in v.reasons)


@settings(max_examples=300)
@given(metrics())
def test_directions_are_symmetric(m: LinkMetrics) -> None:
    # The same thresholds apply each way: swapping up and down keeps the verdict.
    # (With an RTT measured: without one, see test_download_alone_counts_as_measured.)
    m = m if m.rtt_ms is not None else replace(m, rtt_ms=50.0)
    assert classify(replace(m, up=m.down, down=m.up)).verdict == classify(m).verdict


def test_download_alone_counts_as_measured() -> None:
    only_up = LinkMetrics(up=DirectionMetrics(kbps=0.0), connected=True)
    only_down = LinkMetrics(down=DirectionMetrics(kbps=0.0), connected=True)
    assert classify(only_up).verdict == PHONE
    assert classify(only_down).verdict == PHONE


@settings(max_examples=300)
@given(metrics(), st.floats(0, 599.99), st.booleans())
def test_good_down_bad_up_never_video(m: LinkMetrics, up_kbps: float, which: bool) -> None:
    good = DirectionMetrics(20_000, True, 0.0, 0.0, 1000)
    bad = DirectionMetrics(up_kbps, False, 0.0, 0.0, 1000)
    m = replace(m, up=bad, down=good) if which else replace(m, up=good, down=bad)
    assert classify(m).verdict != VIDEO

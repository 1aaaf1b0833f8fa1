"""Tests for netprobe.core.classify: table of clear-cut links, reasons, confidence, and the
monotonicity the module promises (a worse link never gets a better verdict)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config import load_thresholds
from netprobe.core.classify import (
    AUDIO_ONLY,
    PHONE,
    UNKNOWN,
    VERDICTS,
    VIDEO,
    AudioThresholds,
    Reason,
    Thresholds,
    Verdict,
    VideoThresholds,
    classify,
    worst,
)
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


# ------------------------------------------------------------------------ table


def test_clean_fast_link_is_video() -> None:
    v = classify(link())
    assert v.verdict == VIDEO
    assert codes(v) == ["video_ok"]
    # smallest margin: jitter (30-5)/30 = 0.83 -> 0.5 + 0.49 * min(1, 0.83/0.5) = 0.99
    assert v.confidence == 0.99


def test_slow_upload_good_download_is_audio_only() -> None:
    v = classify(link(up_kbps=200, up_at_least=False))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["upload_too_slow_for_video"]
    msg = v.reasons[0].message
    assert "0.2" in msg and "0.6" in msg  # 200 kbit/s measured, 600 kbit/s needed
    assert "upload" in msg.lower()


def test_starved_download_is_audio_only() -> None:
    v = classify(link(down_kbps=300, at_least=False, up_at_least=True))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["download_too_slow_for_video"]
    assert "0.3" in v.reasons[0].message and "0.6" in v.reasons[0].message


def test_loss_8_percent_is_audio_only() -> None:
    m = link(loss=8)
    assert m.mos_audio is not None and m.mos_audio > 3.1  # E-model: ~3.5 at 8 %, 40 ms
    v = classify(m)
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["loss_too_high_for_video"]
    assert "8.0 %" in v.reasons[0].message


def test_loss_in_one_direction_only_counts() -> None:
    v = classify(link(up_loss=8.0, loss=0.5, mos=4.0))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["loss_too_high_for_video"]


def test_loss_30_percent_is_phone() -> None:
    m = link(loss=30)
    assert m.mos_audio is not None and m.mos_audio < 3.1  # E-model: ~2.0
    v = classify(m)
    assert v.verdict == PHONE
    assert codes(v)[0] == "audio_quality_too_low"
    assert "loss_too_high_for_video" in codes(v)


def test_rtt_600_is_audio_only() -> None:
    m = link(rtt=600)
    assert m.mos_audio is not None and m.mos_audio > 3.1  # E-model: ~3.5
    v = classify(m)
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["rtt_too_high_for_video"]
    assert "600 ms" in v.reasons[0].message


def test_rtt_1600_is_phone() -> None:
    m = link(rtt=1600)
    assert m.mos_audio is not None and m.mos_audio < 3.1  # E-model: ~2.2
    v = classify(m)
    assert v.verdict == PHONE
    assert codes(v)[0] == "audio_quality_too_low"
    assert "rtt_too_high_for_video" in codes(v)


def test_30_kbps_both_ways_is_phone() -> None:
    v = classify(link(up_kbps=30, down_kbps=30, at_least=False))
    assert v.verdict == PHONE
    assert codes(v)[:2] == ["upload_too_slow_for_audio", "download_too_slow_for_audio"]
    assert "0.03" in v.reasons[0].message and "0.1" in v.reasons[0].message


@pytest.mark.parametrize("direction", ["up", "down"])
def test_30_kbps_one_way_is_phone(direction: str) -> None:
    m = link(**{f"{direction}_kbps": 30}, at_least=False)  # type: ignore[arg-type]
    v = classify(m)
    word = "upload" if direction == "up" else "download"
    assert v.verdict == PHONE
    assert codes(v)[0] == f"{word}_too_slow_for_audio"
    # too slow for audio implies too slow for video: the reason is given once, not twice
    assert f"{word}_too_slow_for_video" not in codes(v)


def test_jitter_60_is_audio_only() -> None:
    m = link(jitter=60)
    assert m.mos_audio is not None and m.mos_audio > 3.1
    v = classify(m)
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["jitter_too_high_for_video"]
    assert "60 ms" in v.reasons[0].message


def test_nothing_measured_is_unknown() -> None:
    v = classify(LinkMetrics())
    assert v.verdict == UNKNOWN
    assert v.confidence == 0.0
    assert codes(v) == ["nothing_measured"]
    assert "phone" in v.reasons[0].message


def test_not_connected_is_unknown_whatever_the_figures() -> None:
    v = classify(replace(link(), connected=False))
    assert v.verdict == UNKNOWN


def test_connected_but_no_rtt_and_no_upload_is_not_unknown() -> None:
    # Something was measured (the download), so the verdict is a cautious one, not "unknown":
    # without an upload figure neither video nor audio can be promised.
    v = classify(LinkMetrics(connected=True, down=DirectionMetrics(5000, True, 0.0, 1.0)))
    assert v.verdict == PHONE
    assert "upload_not_measured" in codes(v)
    assert classify(LinkMetrics(connected=True)).verdict == UNKNOWN


def test_marginal_rates_and_loss_give_video_with_notes() -> None:
    v = classify(link(up_kbps=1000, down_kbps=1000, at_least=False, loss=3.0))
    assert v.verdict == VIDEO
    assert codes(v) == ["video_ok", "upload_marginal_for_video", "download_marginal_for_video",
                        "loss_marginal_for_video"]


def test_at_least_rate_below_good_gets_no_marginal_note() -> None:
    # Ladder top rung passed at 1000: the link may be much faster, no note.
    v = classify(link(up_kbps=1000, down_kbps=1000, at_least=True))
    assert codes(v) == ["video_ok"]


def test_exact_thresholds_pass() -> None:
    # Every requirement is "at least"/"at most": sitting on the line passes.
    m = link(up_kbps=600, down_kbps=600, at_least=False, loss=5.0, rtt=300, jitter=30, mos=3.1)
    assert classify(m).verdict == VIDEO
    m = link(up_kbps=100, down_kbps=100, at_least=False, loss=0.0, rtt=40, jitter=5, mos=3.1)
    assert classify(m).verdict == AUDIO_ONLY


def test_missing_loss_or_rtt_blocks_video() -> None:
    v = classify(link(loss=None, mos=4.0))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["loss_not_measured"]
    v = classify(link(rtt=None, mos=4.0, up_kbps=5000))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["rtt_not_measured"]


def test_missing_mos_blocks_audio() -> None:
    v = classify(link(up_kbps=200, up_at_least=False, mos=None))
    assert v.verdict == PHONE
    assert codes(v)[0] == "audio_quality_not_measured"


def test_missing_jitter_does_not_block_video() -> None:
    assert classify(link(jitter=None)).verdict == VIDEO


def test_unmeasured_upload_blocks_video_and_audio() -> None:
    v = classify(link(up_kbps=None))
    assert v.verdict == PHONE
    assert "upload_not_measured" in codes(v)


# ------------------------------------------------------------------------ reasons


def _reason_examples() -> list[Verdict]:
    return [
        classify(m) for m in (
            LinkMetrics(),
            link(),
            link(up_kbps=1000, down_kbps=1000, at_least=False, loss=3.0),
            link(up_kbps=200, up_at_least=False),
            link(down_kbps=300, at_least=False, up_at_least=True),
            link(loss=8), link(loss=30), link(rtt=600), link(rtt=1600), link(jitter=60),
            link(up_kbps=30, down_kbps=30, at_least=False),
            link(up_kbps=None), link(down_kbps=None), link(loss=None, mos=4.0),
            link(rtt=None, mos=4.0), link(up_kbps=200, up_at_least=False, mos=None),
            # the ladder stopped early: shown to carry "at least" less than the need
            link(up_kbps=300, down_kbps=300, at_least=True),
            link(up_kbps=50, down_kbps=50, at_least=True),
        )
    ]


def test_reason_codes_are_known_and_messages_plain() -> None:
    seen = set()
    for v in _reason_examples():
        assert v.reasons, v
        for r in v.reasons:
            seen.add(r.code)
            assert r.code in KNOWN_CODES
            assert re.fullmatch(r"[a-z]+(_[a-z]+)*", r.code)
            assert r.message.strip() and r.message[0].isupper() and r.message.endswith(".")
            assert r.to_json() == {"code": r.code, "message": r.message}
    # The examples reach every code: a code that can no longer occur should leave KNOWN_CODES.
    assert seen == KNOWN_CODES


#: Words that make a reason's advice concrete: something the client can do.
_ADVICE = re.compile(r"\b(try|close|pause|move closer|moving closer|use a cable|cable|call|"
                     r"phone|wired|check)\b", re.IGNORECASE)


def test_failure_reasons_for_rates_loss_rtt_jitter_and_quality_suggest_something() -> None:
    for v in _reason_examples():
        for r in v.reasons:
            if "too_" in r.code or r.code.endswith("marginal_for_video") or \
                    r.code == "nothing_measured":
                assert _ADVICE.search(r.message), r


def test_messages_read_as_sentences() -> None:
    for v in _reason_examples():
        for r in v.reasons:
            assert not re.search(r"(: or |, but or )", r.message), r.message


@pytest.mark.parametrize("m", [link(loss=None, mos=4.0), link(rtt=None, mos=4.0)])
def test_not_measured_reasons_suggest_something(m: LinkMetrics) -> None:
    for r in classify(m).reasons:
        assert _ADVICE.search(r.message), r


@pytest.mark.parametrize("kbps", [560.0, 599.0, 95.0])
def test_too_slow_message_shows_measured_below_needed(kbps: float) -> None:
    v = classify(link(up_kbps=kbps, up_at_least=False))
    msg = next(r.message for r in v.reasons if r.code.startswith("upload_too_slow"))
    found = re.search(r"([\d.]+) Mbit/s measured, ([\d.]+) needed", msg)
    assert found, msg
    measured, needed = found.groups()
    assert float(measured) < float(needed), msg


def test_reason_codes_unique_within_a_verdict() -> None:
    # An unmeasured upload blocks both audio and video; the reason is given once.
    v = classify(link(up_kbps=None))
    assert codes(v).count("upload_not_measured") == 1  # said once, not per verdict level
    for m in (link(loss=30), link(rtt=1600), link(up_kbps=30, down_kbps=30, at_least=False)):
        cs = codes(classify(m))
        assert len(cs) == len(set(cs)), cs


# ------------------------------------------------------------------------ confidence


def test_confidence_higher_far_from_threshold() -> None:
    # video: up at 610 (margin (610-600)/600 = 0.017 -> 0.5 + 0.49*0.033 = 0.52) vs 5000
    near = classify(link(up_kbps=610, up_at_least=False))
    far = classify(link())
    assert near.verdict == far.verdict == VIDEO
    assert near.confidence == pytest.approx(0.52, abs=0.005)
    assert far.confidence > near.confidence + 0.3
    # audio_only: upload just below the video line (590) vs clearly below (200)
    near = classify(link(up_kbps=590, up_at_least=False))
    far = classify(link(up_kbps=200, up_at_least=False))
    assert near.verdict == far.verdict == AUDIO_ONLY
    assert far.confidence > near.confidence
    # audio_only limited by an audio margin: upload 110 (margin 0.1) vs 200 (margin 1.0)
    near = classify(link(up_kbps=110, up_at_least=False))
    assert near.verdict == AUDIO_ONLY
    assert near.confidence < far.confidence
    # phone: upload 95 (just under audio's 100) vs 20
    near = classify(link(up_kbps=95, up_at_least=False))
    far = classify(link(up_kbps=20, up_at_least=False))
    assert near.verdict == far.verdict == PHONE
    assert far.confidence > near.confidence


def test_confidence_worked_value_audio_only() -> None:
    # up 400, everything else clean, mos fixed 4.0:
    # audio margins: up (400-100)/100 = 3, down large, mos (4.0-3.1)/1.4 = 0.643
    # clearest video failure: -(400-600)/600 = 0.333  -> min 0.333
    # confidence = 0.5 + 0.49 * 0.333/0.5 = 0.8267 -> 0.83
    v = classify(link(up_kbps=400, up_at_least=False, mos=4.0))
    assert v.verdict == AUDIO_ONLY
    assert v.confidence == 0.83


# ------------------------------------------------------------------------ properties

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


# ------------------------------------------------------------------------ thresholds


def test_shipped_thresholds_equal_defaults() -> None:
    assert load_thresholds() == Thresholds()


def test_shipped_thresholds_consistent() -> None:
    t = load_thresholds()
    assert 0 < t.video.min_kbps <= t.video.good_kbps
    assert 0 < t.video.good_loss_pct <= t.video.max_loss_pct <= 100
    assert 0 < t.video.good_rtt_ms <= t.video.max_rtt_ms
    assert 0 < t.video.good_jitter_ms <= t.video.max_jitter_ms
    assert 0 < t.audio.min_kbps <= t.audio.good_kbps
    assert 1.0 <= t.audio.min_mos <= t.audio.good_mos < 4.5
    # audio needs less than video, or audio_only could demand more than video does
    assert t.audio.min_kbps <= t.video.min_kbps


def test_custom_thresholds_move_the_line() -> None:
    m = link(up_kbps=800, down_kbps=800, at_least=False)
    assert classify(m).verdict == VIDEO
    strict = Thresholds(video=VideoThresholds(min_kbps=1000, good_kbps=2000),
                        audio=AudioThresholds())
    v = classify(m, strict)
    assert v.verdict == AUDIO_ONLY
    assert "1.0 needed" in v.reasons[0].message


# ------------------------------------------------------------------------ helpers


def test_worst_picks_more_cautious() -> None:
    a = Verdict(VIDEO, 0.9, (Reason("video_ok", "x"),))
    b = Verdict(PHONE, 0.6, ())
    u = Verdict(UNKNOWN, 0.0, ())
    assert worst(a, b) is b and worst(b, a) is b
    assert worst(b, u) is u
    assert worst(a, a) is a


def test_verdict_order() -> None:
    assert VERDICTS == (VIDEO, AUDIO_ONLY, PHONE, UNKNOWN)


def test_metrics_json_and_measured_anything() -> None:
    m = link(up_kbps=1234.56, rtt=41.26)
    j = m.to_json()
    assert j["up"]["kbps"] == 1235.0
    assert j["rtt_ms"] == 41.3
    assert j["down"]["kbps_at_least"] is True
    assert LinkMetrics().to_json()["up"]["kbps"] is None
    assert m.measured_anything
    assert not LinkMetrics().measured_anything
    assert not LinkMetrics(rtt_ms=10).measured_anything  # not connected
    assert LinkMetrics(rtt_ms=10, connected=True).measured_anything
    assert m.with_changes(rtt_ms=99).rtt_ms == 99


def test_untested_direction_after_early_stop_is_not_blamed() -> None:
    # A check that stopped early (RTT decided the verdict) tested the upload only up to
    # 300 kbit/s: the upload must not be called "too slow", only "not tested further".
    m = link(rtt=600, up_kbps=300, down_kbps=300, at_least=True)
    v = classify(m)
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["rtt_too_high_for_video"]
    m = link(up_kbps=300, down_kbps=300, at_least=True)
    v = classify(m)  # nothing else is wrong: then the missing test is the reason
    assert v.verdict == AUDIO_ONLY
    assert set(codes(v)) == {"upload_not_tested_for_video", "download_not_tested_for_video"}


_INCOMPLETE = re.compile(r"_not_measured$|_not_tested_for_")


@pytest.mark.parametrize("direction", ["up", "down"])
def test_at_least_rate_below_need_is_not_tested_rather_than_too_slow(direction: str) -> None:
    word = "upload" if direction == "up" else "download"
    # shown to carry at least 300 kbit/s, video needs 600: not shown enough, not "too slow"
    v = classify(link(**{f"{direction}_kbps": 300}))  # type: ignore[arg-type]
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == [f"{word}_not_tested_for_video"]
    msg = v.reasons[0].message
    assert word in msg and "0.3" in msg and "0.6" in msg
    assert "too slow" not in msg
    # the same figure, measured as the link's limit, is too slow
    m = link(**{f"{direction}_kbps": 300}, at_least=False)  # type: ignore[arg-type]
    assert codes(classify(m)) == [f"{word}_too_slow_for_video"]
    # at least 50, audio needs 100: not tested for audio, said once (video is implied)
    v = classify(link(**{f"{direction}_kbps": 50}))  # type: ignore[arg-type]
    assert v.verdict == PHONE
    assert codes(v) == [f"{word}_not_tested_for_audio"]
    assert "0.05" in v.reasons[0].message and "0.1" in v.reasons[0].message


def test_at_least_rate_at_or_above_need_passes() -> None:
    assert classify(link(up_kbps=600, down_kbps=600, at_least=True)).verdict == VIDEO
    v = classify(link(up_kbps=100, down_kbps=100, at_least=True))
    assert v.verdict == AUDIO_ONLY
    assert set(codes(v)) == {"upload_not_tested_for_video", "download_not_tested_for_video"}


def test_missing_measurements_not_listed_when_a_figure_is_bad() -> None:
    # video level: a bad RTT or jitter hides "loss/rtt not measured" and "not tested"
    v = classify(link(loss=None, rtt=600, mos=4.0))
    assert (v.verdict, codes(v)) == (AUDIO_ONLY, ["rtt_too_high_for_video"])
    v = classify(link(rtt=None, jitter=60, mos=4.0))
    assert (v.verdict, codes(v)) == (AUDIO_ONLY, ["jitter_too_high_for_video"])
    v = classify(link(up_kbps=300, loss=8, mos=4.0))
    assert (v.verdict, codes(v)) == (AUDIO_ONLY, ["loss_too_high_for_video"])
    # audio level: a too-slow upload hides the missing voice-quality estimate
    v = classify(link(up_kbps=30, up_at_least=False, mos=None))
    assert (v.verdict, codes(v)) == (PHONE, ["upload_too_slow_for_audio"])
    v = classify(link(down_kbps=50, loss=30))
    assert v.verdict == PHONE
    assert codes(v) == ["audio_quality_too_low", "loss_too_high_for_video"]


def test_missing_measurements_listed_when_nothing_is_bad() -> None:
    v = classify(link(loss=None, rtt=None, mos=4.0))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["loss_not_measured", "rtt_not_measured"]
    v = classify(link(up_kbps=300, loss=None, mos=4.0))
    assert v.verdict == AUDIO_ONLY
    assert codes(v) == ["upload_not_tested_for_video", "loss_not_measured"]
    # the verdict rests on missing evidence only: as unsure as at a threshold
    assert v.confidence == 0.5
    v = classify(link(up_kbps=50, mos=None))
    assert v.verdict == PHONE
    assert codes(v) == ["upload_not_tested_for_audio", "audio_quality_not_measured"]


@settings(max_examples=300)
@given(metrics())
def test_at_least_direction_never_called_too_slow(m: LinkMetrics) -> None:
    v = classify(m)
    for name, d in (("upload", m.up), ("download", m.down)):
        if d.kbps_at_least:
            assert not any(c.startswith(f"{name}_too_slow") for c in codes(v)), (m, codes(v))
        else:
            assert not any(c.startswith(f"{name}_not_tested") for c in codes(v)), (m, codes(v))


@settings(max_examples=300)
@given(metrics())
def test_audio_only_reasons_never_mix_bad_and_missing(m: LinkMetrics) -> None:
    # audio_only's reasons are the video failures: the bad figures if any, else the missing
    v = classify(m)
    if v.verdict == AUDIO_ONLY:
        incomplete = [bool(_INCOMPLETE.search(c)) for c in codes(v)]
        assert all(incomplete) or not any(incomplete), codes(v)

"""Tests for netprobe.core.classify: table of clear-cut links, confidence, thresholds and the
small helpers. Reasons: test_classify_reasons.py; properties (a worse link never gets a better
verdict, the rules as written): test_classify_properties.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from classify_support import codes, link

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
from netprobe.core.metrics import DirectionMetrics, LinkMetrics

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

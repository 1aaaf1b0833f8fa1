"""Tests for netprobe.core.classify's reasons: codes known and plain, advice concrete, and
what an incomplete check (a direction not tested far enough, a figure not measured) says."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from classify_support import KNOWN_CODES, codes, link, metrics
from hypothesis import given, settings

from netprobe.core.classify import (
    AUDIO_ONLY,
    PHONE,
    VIDEO,
    Verdict,
    classify,
)
from netprobe.core.metrics import LinkMetrics

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
            replace(link(up_kbps=1000, down_kbps=8000, at_least=False), rtt_loaded_ms=700),
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


# ------------------------------------------------------------------------ incomplete evidence


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


# ------------------------------------------------------------------------ delay under load


def test_a_call_that_fills_the_link_is_judged_at_the_loaded_delay() -> None:
    from netprobe.core.classify import AUDIO_ONLY, loaded_rtt_ms

    slow = replace(link(up_kbps=1000, down_kbps=8000, at_least=False, rtt=40),
                   rtt_loaded_ms=650)
    v = classify(slow)
    assert v.verdict == AUDIO_ONLY and codes(v) == ["rtt_too_high_under_load"]
    message = v.reasons[0].message
    assert "slows down when it is busy" in message and "40 to 650 ms" in message
    assert "cable" in message and "Smart Queue Management" in message
    # the same delay under load on a link the call does not fill: the idle delay counts
    fast = replace(link(up_kbps=3200, down_kbps=3200, at_least=True, rtt=40),
                   rtt_loaded_ms=650)
    assert loaded_rtt_ms(fast, 2500) is None and classify(fast).verdict == VIDEO
    # a little bufferbloat under the limit keeps video
    mild = replace(link(up_kbps=1000, down_kbps=8000, at_least=False, rtt=40),
                   rtt_loaded_ms=200)
    assert classify(mild).verdict == VIDEO


def test_a_voice_call_is_judged_at_the_idle_delay() -> None:
    """A voice call (~100 kbit/s) fills no link that passes the audio rate checks: its packets
    do not queue behind its own, whatever the link's delay under a full queue."""
    starved = replace(link(up_kbps=150, down_kbps=2000, at_least=False, rtt=60, loss=1.0),
                      rtt_loaded_ms=2500)
    v = classify(starved)
    assert v.verdict == AUDIO_ONLY and v.confidence == classify(
        replace(starved, rtt_loaded_ms=None)).confidence

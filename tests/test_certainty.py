"""Certainty in words (netprobe.core.certainty): the mapping's boundaries, what the classifier's
verdicts map to, and that people never read `confidence` as a percentage while the JSON of a
check and the agent's status carry both the number and the code."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import pytest
from agent_support import FakeSampler
from classify_support import link

from netprobe.agent.runtime import AgentRuntime
from netprobe.cli.report import render_text
from netprobe.config import Settings
from netprobe.core.certainty import (
    CERTAINTIES,
    FAIRLY_SURE,
    FAIRLY_SURE_FROM,
    SURE,
    SURE_FROM,
    UNSURE,
    certainty,
    certainty_of,
    with_certainty,
)
from netprobe.core.classify import (
    AUDIO_ONLY,
    PHONE,
    UNKNOWN,
    VIDEO,
    Reason,
    Verdict,
    classify,
)
from netprobe.core.metrics import LinkMetrics
from netprobe.core.result import CheckResult

OK = Reason("video_ok", "Your connection can hold a video session.")


def code(verdict: str, confidence: float, *codes: str) -> str | None:
    c = certainty_of(verdict, confidence, codes)
    return None if c is None else c.code


# ------------------------------------------------------------------------ the mapping


@pytest.mark.parametrize(("confidence", "expected"), [
    (0.99, SURE), (SURE_FROM, SURE), (0.89, FAIRLY_SURE), (FAIRLY_SURE_FROM, FAIRLY_SURE),
    (0.69, UNSURE), (0.5, UNSURE), (0.0, UNSURE), (1.0, SURE),
])
@pytest.mark.parametrize("verdict", [VIDEO, AUDIO_ONLY, PHONE])
def test_the_boundaries(verdict: str, confidence: float, expected: str) -> None:
    assert code(verdict, confidence) == expected


def test_unknown_has_no_certainty_whatever_the_number() -> None:
    assert certainty_of(UNKNOWN, 0.0, ()) is None
    assert certainty_of(UNKNOWN, 0.99, ["video_ok"]) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_number_that_is_not_finite_is_unsure(bad: float) -> None:
    assert code(VIDEO, bad) == UNSURE


@pytest.mark.parametrize("reason", [
    "upload_not_tested_for_video", "download_not_tested_for_audio", "loss_not_measured",
    "rtt_not_measured", "audio_quality_not_measured", "upload_not_measured",
])
def test_a_verdict_resting_on_an_unfinished_figure_is_unsure_even_far_from_limits(
        reason: str) -> None:
    c = certainty_of(AUDIO_ONLY, 0.99, ["some_other_reason", reason])
    assert c is not None and c.code == UNSURE
    assert "before every figure was known" in c.words


def test_the_words_for_people_are_plain_and_never_a_percentage() -> None:
    words = {c: certainty_of(VIDEO, x, ()) for c, x in ((SURE, 0.95), (FAIRLY_SURE, 0.75),
                                                       (UNSURE, 0.55))}
    assert {k: v.words for k, v in words.items() if v} == {
        SURE: "sure", FAIRLY_SURE: "fairly sure",
        UNSURE: "not sure (the figures sit close to a limit)"}
    assert set(CERTAINTIES) == {SURE, FAIRLY_SURE, UNSURE}


# ------------------------------------------------------------ what classified links map to


@pytest.mark.parametrize(("metrics", "verdict", "expected"), [
    (link(), VIDEO, SURE),                          # clean, far from every limit
    (link(rtt=200), VIDEO, FAIRLY_SURE),            # a third of the way below 300 ms
    (link(rtt=285), VIDEO, UNSURE),                 # 5 % below the delay limit
    (link(up_kbps=640, at_least=False), VIDEO, UNSURE),  # just over 600 kbit/s
    (link(up_kbps=2000, down_kbps=2000, at_least=False, loss=3.5), VIDEO, FAIRLY_SURE),
    (link(loss=30.0), PHONE, SURE),                 # far below the audio limit
    (link(loss=15.0), PHONE, UNSURE),               # MOS just below it
    (link(up_kbps=400, up_at_least=False), AUDIO_ONLY, FAIRLY_SURE),  # a third below video
    (link(up_kbps=400, up_at_least=True), AUDIO_ONLY, UNSURE),        # stopped at 400
])
def test_classified_links(metrics: LinkMetrics, verdict: str, expected: str) -> None:
    v = classify(metrics)
    c = certainty(v)
    assert v.verdict == verdict and c is not None and c.code == expected, (v, c)


def test_nothing_measured_has_no_certainty() -> None:
    assert certainty(classify(LinkMetrics(connected=True))) is None


# ------------------------------------------------------------------------ the text report


def result(v: Verdict, metrics: LinkMetrics | None = None) -> CheckResult:
    return CheckResult(v, link() if metrics is None else metrics,
                       datetime(2026, 11, 28, 3, 38, 57, tzinfo=UTC), 3.15)


@pytest.mark.parametrize(("confidence", "words"), [
    (0.99, "sure"), (0.8, "fairly sure"), (0.52, "not sure (the figures sit close to a limit)"),
])
def test_the_report_says_the_certainty_in_words_without_a_percentage(
        confidence: float, words: str) -> None:
    text = render_text(result(Verdict(VIDEO, confidence, (OK,))))
    line = next(x for x in text.splitlines() if "Certainty" in x)
    assert line.split(None, 1)[1] == words
    assert "%" not in line
    assert f"{confidence:.0%}" not in text and str(confidence) not in text
    assert "3.1 s" in text or "3.2 s" in text  # how long it took is still said


def test_the_report_shows_certainty_for_a_verdict_made_without_a_connection() -> None:
    lossy = Verdict(PHONE, 0.99, (Reason("too_lossy_to_connect", "Please call by phone."),))
    text = render_text(result(lossy, LinkMetrics()))
    assert re.search(r"^\s*Certainty\s+sure$", text, re.M), text
    assert "99" not in text


def test_the_report_has_no_certainty_for_unknown() -> None:
    text = render_text(result(Verdict(UNKNOWN, 0.0, (Reason("nothing_measured", "x"),))))
    assert "Certainty" not in text and "Took" in text


# ------------------------------------------------------------------------ JSON documents


@pytest.mark.parametrize(("v", "expected"), [
    (Verdict(VIDEO, 0.99, (OK,)), SURE),
    (Verdict(AUDIO_ONLY, 0.75, ()), FAIRLY_SURE),
    (Verdict(PHONE, 0.5, ()), UNSURE),
    (Verdict(UNKNOWN, 0.0, ()), None),
])
def test_the_check_json_has_the_number_and_the_code(v: Verdict, expected: str | None) -> None:
    doc = json.loads(json.dumps(result(v).to_json()))
    assert doc["confidence"] == v.confidence and doc["certainty"] == expected
    keys = list(doc)
    assert keys.index("certainty") == keys.index("confidence") + 1


def test_with_certainty_reads_a_status_document_and_keeps_it_otherwise() -> None:
    doc = {"schema": "netprobe.status/1", "recommendation": AUDIO_ONLY, "confidence": 0.99,
           "reasons": [{"code": "upload_not_tested_for_video", "message": "m"}], "age_s": 1}
    out = with_certainty(doc, "recommendation")
    assert out["certainty"] == UNSURE and "certainty" not in doc
    assert list(out) == ["schema", "recommendation", "confidence", "certainty", "reasons",
                         "age_s"]


async def test_the_agent_status_carries_the_code_and_none_while_unknown() -> None:
    now = [100.0]
    runtime = AgentRuntime(Settings(), overrides={"server": "http://127.0.0.1:9"},
                           clock=lambda: now[0], sampler=FakeSampler())
    first = runtime.status()
    assert first["recommendation"] == UNKNOWN and first["certainty"] is None
    runtime.policy.recommendation = Verdict(VIDEO, 0.8, (OK,))
    runtime.policy.updated_at = now[0]
    st = runtime.status()
    assert st["confidence"] == 0.8 and st["certainty"] == FAIRLY_SURE
    now[0] += runtime.settings.agent.stale_after_s + 1  # too old: unknown, so no certainty
    assert runtime.status()["certainty"] is None

"""A session's probe spacing (`netprobe.core.probe_rate`), pure: half the rate once every window
has been comfortable for a while, the full rate again at the first window that is not; and
the policy that asks the runtime for it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy import Drive, of, streaming

from netprobe.core.classify import AUDIO_ONLY, VIDEO, Thresholds, Verdict
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.policy_events import (
    EchoReceived,
    MonitorEnded,
    SessionStopRequested,
    SetProbeInterval,
)
from netprobe.core.probe_rate import CALM_AFTER_S, ProbeRate, comfortable
from netprobe.core.wire import Echo

T = Thresholds()
CLEAN = LinkMetrics(rtt_ms=30.0, mos_audio=4.3,
                    up=DirectionMetrics(loss_pct=0.0, jitter_ms=2.0),
                    down=DirectionMetrics(loss_pct=0.0, jitter_ms=2.0), connected=True)
OK = Verdict(VIDEO, 0.9, ())


def test_a_clean_window_is_comfortable_and_each_figure_past_its_good_value_is_not() -> None:
    v = T.video
    assert comfortable(CLEAN, T)
    at_the_line = replace(CLEAN, rtt_ms=v.good_rtt_ms,
                          up=DirectionMetrics(loss_pct=v.good_loss_pct,
                                              jitter_ms=v.good_jitter_ms))
    assert comfortable(at_the_line, T)
    worse = [
        replace(CLEAN, rtt_ms=v.good_rtt_ms + 1),
        replace(CLEAN, mos_audio=T.audio.good_mos - 0.01),
        replace(CLEAN, up=DirectionMetrics(loss_pct=v.good_loss_pct + 0.1, jitter_ms=2.0)),
        replace(CLEAN, down=DirectionMetrics(loss_pct=0.0, jitter_ms=v.good_jitter_ms + 0.1)),
        replace(CLEAN, down=DirectionMetrics(loss_pct=None, jitter_ms=2.0)),
        replace(CLEAN, rtt_ms=None),
        None,
    ]
    assert [comfortable(m, T) for m in worse] == [False] * len(worse)


def test_the_stream_starts_at_the_full_rate_and_calms_only_after_ten_comfortable_seconds(
        ) -> None:
    rate = ProbeRate(0.05, 0.1)
    assert rate.interval_s == 0.05
    for t in range(int(CALM_AFTER_S)):
        assert rate.observe(float(t), OK, CLEAN, VIDEO, T) is None
        assert rate.interval_s == 0.05
    assert rate.observe(CALM_AFTER_S, OK, CLEAN, VIDEO, T) == 0.1
    assert rate.observe(CALM_AFTER_S + 1, OK, CLEAN, VIDEO, T) is None  # said once
    assert rate.interval_s == 0.1


@pytest.mark.parametrize("window, metrics, recommendation", [
    (OK, replace(CLEAN, up=DirectionMetrics(loss_pct=3.0, jitter_ms=2.0)), VIDEO),
    (OK, None, VIDEO),
    (Verdict(AUDIO_ONLY, 0.7, ()), CLEAN, VIDEO),
    (OK, CLEAN, AUDIO_ONLY),  # windows better than the recommendation: a step up is near
], ids=["lossy", "no figures", "window not video", "recommendation not video"])
def test_one_window_that_is_not_comfortable_puts_the_full_rate_back_at_once(
        window: Verdict, metrics: LinkMetrics | None, recommendation: str) -> None:
    rate = ProbeRate(0.05, 0.1)
    for t in range(int(CALM_AFTER_S) + 1):
        rate.observe(float(t), OK, CLEAN, VIDEO, T)
    assert rate.interval_s == 0.1
    assert rate.observe(20.0, window, metrics, recommendation, T) == 0.05
    # and the calm rate needs ten comfortable seconds again, counted from afresh
    assert rate.observe(21.0, OK, CLEAN, VIDEO, T) is None
    assert rate.observe(21.0 + CALM_AFTER_S - 0.5, OK, CLEAN, VIDEO, T) is None
    assert rate.observe(21.0 + CALM_AFTER_S, OK, CLEAN, VIDEO, T) == 0.1


@given(full=st.floats(0.01, 5.0), calm=st.floats(0.01, 5.0))
def test_the_calm_rate_is_never_faster_than_the_full_one(full: float, calm: float) -> None:
    rate = ProbeRate(full, calm)
    changes = [rate.observe(float(t), OK, CLEAN, VIDEO, T) for t in range(30)]
    assert rate.interval_s == max(full, calm) >= full
    assert [c for c in changes if c is not None] == ([] if calm <= full else [calm])


# -- the policy ---------------------------------------------------------------------------------


def lossy_echoes(d: Drive, seconds: float, every: float = 0.1, lose_every: int = 4) -> None:
    """A probe stream that loses one echo in `lose_every` on the way back (25 %)."""
    end = d.now + seconds
    while d.now + every <= end:
        d.until(d.now + every)
        d.seq += 1
        if d.seq % lose_every:
            echo = Echo(d.seq, d.now, d.seq, d.now - 0.02, 0.0, d.seq + 1, d.seq, 0.001)
            d.actions += d.feed(EchoReceived(d.now, d.policy.link, echo))


def test_a_session_on_a_clean_link_halves_its_probe_rate_and_a_lossy_window_restores_it(
        ) -> None:
    d = Drive()
    streaming(d)
    assert d.status()["probe_interval_ms"] == 50.0
    d.actions.clear()
    d.echoes(8.0)
    assert of(SetProbeInterval, d.actions) == []  # not yet: 10 comfortable seconds first
    d.echoes(8.0)
    assert of(SetProbeInterval, d.actions) == [SetProbeInterval(d.policy.link, 0.1)]
    assert d.status()["probe_interval_ms"] == 100.0
    d.actions.clear()
    d.echoes(3.0, every=0.1)
    assert of(SetProbeInterval, d.actions) == []  # the calm rate's own echoes: still calm
    lossy_echoes(d, 2.0)
    assert of(SetProbeInterval, d.actions) == [SetProbeInterval(d.policy.link, 0.05)]
    assert d.status()["recommendation"] == VIDEO  # the rate moved long before the verdict
    d.feed(MonitorEnded(d.now, d.policy.link))  # the only reflector: wait, with no stream
    assert d.policy.phase == "waiting" and d.status()["probe_interval_ms"] is None
    d.feed(SessionStopRequested(d.now, "api"))
    assert d.status()["probe_interval_ms"] is None


def test_calm_equal_to_the_full_spacing_keeps_one_rate() -> None:
    d = Drive(monitor_calm_interval_ms=50.0)
    streaming(d)
    d.echoes(30.0)
    assert of(SetProbeInterval, d.actions) == []
    assert d.status()["probe_interval_ms"] == 50.0

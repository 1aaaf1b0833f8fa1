"""During-session monitoring, pure: `Hysteresis` (step down quickly, step up only after a
confirmed, sustained improvement, never flap), `passive_verdict` and this computer's own traffic
as a cause. Time is an explicit argument everywhere: no clock, no I/O. `ProbeWindow`:
test_monitor_window.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor_support import KNOWN, make, rank, v, verdicts

from netprobe.core.classify import AUDIO_ONLY, PHONE, UNKNOWN, VIDEO, Reason, Verdict
from netprobe.core.metrics import DirectionMetrics
from netprobe.core.monitor import own_traffic_note, passive_verdict

# ---------------------------------------------------------------------------------------------
# Hysteresis


def test_steps_down_only_after_enough_consecutive_worse_windows() -> None:
    h = make(VIDEO, step_down_after=3)
    assert h.observe(v(AUDIO_ONLY), 1.0) == (None, False)
    assert h.observe(v(AUDIO_ONLY), 2.0) == (None, False)
    assert h.current.verdict == VIDEO
    changed, confirm = h.observe(v(AUDIO_ONLY), 3.0)
    assert changed is not None and changed.verdict == AUDIO_ONLY and not confirm
    assert h.current.verdict == AUDIO_ONLY


def test_a_good_window_restarts_the_count() -> None:
    h = make(VIDEO, step_down_after=3)
    for t, verdict in enumerate([AUDIO_ONLY, AUDIO_ONLY, VIDEO, AUDIO_ONLY, AUDIO_ONLY], 1):
        assert h.observe(v(verdict), float(t)) == (None, False)
    changed, _ = h.observe(v(AUDIO_ONLY), 6.0)
    assert changed is not None and changed.verdict == AUDIO_ONLY


def test_steps_down_only_as_far_as_every_window_of_the_run_agrees() -> None:
    # one noisy phone window among audio_only ones must not send the client to the phone
    h = make(VIDEO, step_down_after=3)
    h.observe(v(AUDIO_ONLY, "loss_too_high_for_video"), 1.0)
    h.observe(v(PHONE), 2.0)
    changed, _ = h.observe(v(AUDIO_ONLY, "jitter_too_high_for_video"), 3.0)
    assert changed is not None and changed.verdict == AUDIO_ONLY
    assert changed.reasons[0].code.endswith("_for_video")  # the reasons go with the verdict
    for t in (4.0, 5.0):
        assert h.observe(v(PHONE), t) == (None, False)
    changed, _ = h.observe(v(PHONE, "audio_quality_too_low"), 6.0)
    assert changed is not None and changed.verdict == PHONE


def test_a_run_after_an_unknown_window_is_judged_on_its_own_windows() -> None:
    h = make(VIDEO, step_down_after=3)
    h.observe(v(AUDIO_ONLY), 1.0)
    h.observe(Verdict(UNKNOWN, 0.0, ()), 2.0)  # the run of worse windows is broken here
    h.observe(v(PHONE), 3.0)
    h.observe(v(PHONE), 4.0)
    changed, _ = h.observe(v(PHONE), 5.0)  # three consecutive windows agree on phone
    assert changed is not None and changed.verdict == PHONE


def test_step_down_after_one_is_immediate() -> None:
    h = make(AUDIO_ONLY, step_down_after=1)
    changed, _ = h.observe(v(PHONE), 1.0)
    assert changed is not None and changed.verdict == PHONE


def test_never_steps_up_on_its_own_but_asks_for_confirmation_after_the_hold_time() -> None:
    h = make(AUDIO_ONLY, step_up_after_s=20)
    asked_at = []
    for t in range(1, 61):
        changed, confirm = h.observe(v(VIDEO), float(t))
        assert changed is None
        if confirm:
            asked_at.append(t)
    assert h.current.verdict == AUDIO_ONLY  # a minute of good windows changed nothing by itself
    assert asked_at and asked_at[0] == 1 + 20  # 20 s after the first better window


def test_same_verdict_refreshes_reasons_and_restarts_the_better_period() -> None:
    h = make(AUDIO_ONLY, step_up_after_s=5)
    for t in range(1, 5):
        h.observe(v(VIDEO), float(t))
    h.observe(v(AUDIO_ONLY, "loss_marginal"), 5.0)
    assert h.current.reasons[0].code == "loss_marginal"
    for t in range(6, 11):
        assert h.observe(v(VIDEO), float(t)) == (None, False)
    assert h.observe(v(VIDEO), 11.0) == (None, True)


def test_confirm_with_a_better_verdict_steps_up() -> None:
    h = make(PHONE, step_up_after_s=10)
    for t in range(1, 12):
        _, confirm = h.observe(v(VIDEO), float(t))
    assert confirm
    stepped = h.confirm(v(VIDEO, "video_ok"), 11.5)
    assert stepped is not None and stepped.verdict == VIDEO
    assert h.current.verdict == VIDEO


@pytest.mark.parametrize("check", [AUDIO_ONLY, PHONE, UNKNOWN])
def test_confirm_with_an_equal_or_worse_verdict_waits_another_full_period(check: str) -> None:
    h = make(AUDIO_ONLY, step_up_after_s=10)
    for t in range(1, 12):
        _, confirm = h.observe(v(VIDEO), float(t))
    assert confirm
    assert h.confirm(v(check), 11.0) is None
    assert h.current.verdict == AUDIO_ONLY  # a failed confirmation never steps down either
    asked = [t for t in range(12, 30) if h.observe(v(VIDEO), float(t))[1]]
    assert asked[0] == 21  # another full 10 s after the failed confirmation


def test_unknown_windows_never_change_anything() -> None:
    for current in KNOWN:
        h = make(current, step_down_after=1, step_up_after_s=1)
        for t in range(1, 50):
            assert h.observe(Verdict(UNKNOWN, 0.0, ()), float(t)) == (None, False)
        assert h.current.verdict == current


def test_from_unknown_a_cautious_window_is_taken_at_once_video_only_when_confirmed() -> None:
    for verdict in (AUDIO_ONLY, PHONE):
        changed, confirm = make(UNKNOWN).observe(v(verdict), 1.0)
        assert changed is not None and changed.verdict == verdict and not confirm
    h = make(UNKNOWN)
    assert h.observe(v(VIDEO), 1.0) == (None, True)  # a capacity check must say so first
    assert h.current.verdict == UNKNOWN
    assert h.confirm(v(UNKNOWN), 1.5) is None and h.current.verdict == UNKNOWN
    stepped = h.confirm(v(VIDEO), 2.0)
    assert stepped is not None and stepped.verdict == VIDEO


@settings(max_examples=150, deadline=None)
@given(windows=st.lists(verdicts, max_size=60), checks=st.lists(verdicts, max_size=6))
def test_from_unknown_video_is_only_reached_through_a_confirming_check(
        windows: list[str], checks: list[str]) -> None:
    h = make(UNKNOWN)
    asked = 0
    for t, w in enumerate(windows, 1):
        changed, confirm = h.observe(v(w), float(t))
        assert changed is None or changed.verdict in (AUDIO_ONLY, PHONE)
        if confirm:
            check = checks[asked % len(checks)] if checks else UNKNOWN
            asked += 1
            stepped = h.confirm(v(check), float(t))
            assert stepped is None or stepped.verdict == check != UNKNOWN
    if h.current.verdict == VIDEO:
        assert VIDEO in checks


@dataclass
class Run:
    """A simulated monitoring session: one window a second, confirmations answered as told."""

    step_down_after: int
    step_up_after_s: float
    changes: list[tuple[int, float, str, str, str]] = field(default_factory=list)
    """(window index, time, 'down' or 'up', from, to)"""
    windows: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, window verdict, recommendation before it)"""


def simulate(start: str, windows: list[str], checks: list[str], step_down_after: int,
             step_up_after_s: float, dts: list[float] | None = None) -> Run:
    h = make(start, step_down_after, step_up_after_s)
    run = Run(step_down_after, step_up_after_s)
    now, asked = 0.0, 0
    for i, w in enumerate(windows):
        now += dts[i % len(dts)] if dts else 1.0
        before = h.current.verdict
        run.windows.append((now, w, before))
        changed, confirm = h.observe(v(w), now)
        if changed is not None:
            run.changes.append((i, now, "down", before, changed.verdict))
        if confirm:
            check = checks[asked % len(checks)] if checks else UNKNOWN
            asked += 1
            before = h.current.verdict
            stepped = h.confirm(v(check), now)
            if stepped is not None:
                run.changes.append((i, now, "up", before, stepped.verdict))
        assert h.current.verdict == (run.changes[-1][4] if run.changes else start)
    return run


@settings(max_examples=200, deadline=None)
@given(start=st.sampled_from(KNOWN), windows=st.lists(verdicts, max_size=150),
       checks=st.lists(verdicts, max_size=10), step_down_after=st.integers(1, 5),
       step_up_after_s=st.floats(2, 30),
       dts=st.lists(st.floats(0.5, 1.5), min_size=1, max_size=5))
def test_no_flapping_whatever_the_windows_and_confirmations(
        start: str, windows: list[str], checks: list[str], step_down_after: int,
        step_up_after_s: float, dts: list[float]) -> None:
    run = simulate(start, windows, checks, step_down_after, step_up_after_s, dts)
    downs = [c for c in run.changes if c[2] == "down"]
    ups = [c for c in run.changes if c[2] == "up"]
    # at most one step down per `step_down_after` windows
    assert len(downs) <= len(windows) // step_down_after
    previous_index, previous_time = -1, 0.0
    for index, at, kind, old, new in run.changes:
        if kind == "down":
            assert rank(new) > rank(old)  # observe() only ever steps down
            run_of_worse = [w for _, w, before in run.windows[index - step_down_after + 1:
                                                             index + 1]]
            assert len(run_of_worse) == step_down_after
            assert all(w != UNKNOWN and rank(w) > rank(old) for w in run_of_worse)
            # never further down than every window of the run agrees on
            assert rank(new) <= min(rank(w) for w in run_of_worse)
            assert index - previous_index >= step_down_after
        else:
            assert rank(new) < rank(old) and new != UNKNOWN
            # only after the hold time, and every window of it was better than `old`
            assert at - previous_time >= step_up_after_s - 1e-9
            held = [w for t, w, _ in run.windows if at - step_up_after_s <= t <= at]
            assert held and all(w != UNKNOWN and rank(w) < rank(old) for w in held)
        previous_index, previous_time = index, at
    total_time = run.windows[-1][0] if run.windows else 0.0
    assert len(ups) <= total_time / step_up_after_s


@st.composite
def calm_alternation(draw: st.DrawFn) -> tuple[str, list[str], int, float]:
    """Window verdicts that change faster than the hold times: every run of worse windows is
    shorter than `step_down_after`, every run of better ones shorter than `step_up_after_s`."""
    start = draw(st.sampled_from(KNOWN))
    step_down_after = draw(st.integers(1, 5))
    step_up_after_s = draw(st.integers(2, 30))
    worse = [x for x in KNOWN if rank(x) > rank(start)]
    better = [x for x in KNOWN if rank(x) < rank(start)]
    kinds = ["same"] + (["worse"] if worse and step_down_after > 1 else []) + (
        ["better"] if better else [])
    windows: list[str] = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(kinds))
        if kind == "worse":
            windows += draw(st.lists(st.sampled_from(worse), min_size=1,
                                     max_size=step_down_after - 1))
        elif kind == "better":
            windows += draw(st.lists(st.sampled_from(better), min_size=1,
                                     max_size=step_up_after_s))
        windows.append(draw(st.sampled_from((start, UNKNOWN))))  # the run ends
    return start, windows, step_down_after, float(step_up_after_s)


@settings(max_examples=200, deadline=None)
@given(calm_alternation(), st.lists(verdicts, min_size=1, max_size=5))
def test_windows_alternating_faster_than_the_hold_times_change_nothing(
        case: tuple[str, list[str], int, float], checks: list[str]) -> None:
    start, windows, step_down_after, step_up_after_s = case
    run = simulate(start, windows, checks, step_down_after, step_up_after_s)
    assert run.changes == []


# ---------------------------------------------------------------------------------------------
# passive_verdict


@pytest.mark.parametrize("base", [*KNOWN, UNKNOWN])
def test_interface_down_means_phone(base: str) -> None:
    result = passive_verdict(v(base), interface_up=False, cpu_percent=10.0)
    assert result.verdict == PHONE
    assert [r.code for r in result.reasons] == ["network_down"]


def test_saturated_cpu_turns_video_into_audio_only() -> None:
    result = passive_verdict(v(VIDEO), interface_up=True, cpu_percent=95.0, cpu_limit=90.0)
    assert result.verdict == AUDIO_ONLY
    assert [r.code for r in result.reasons] == ["cpu_saturated"]
    assert "95 %" in result.reasons[0].message
    at_limit = passive_verdict(v(VIDEO), interface_up=True, cpu_percent=90.0, cpu_limit=90.0)
    assert at_limit.verdict == AUDIO_ONLY
    below = passive_verdict(v(VIDEO), interface_up=True, cpu_percent=89.9, cpu_limit=90.0)
    assert below.verdict == VIDEO


@settings(max_examples=300)
@given(base=st.sampled_from((*KNOWN, UNKNOWN)), interface_up=st.booleans(),
       cpu=st.none() | st.floats(0, 100), limit=st.floats(1, 100))
def test_passive_signals_never_improve_a_verdict(base: str, interface_up: bool,
                                                 cpu: float | None, limit: float) -> None:
    before = v(base)
    result = passive_verdict(before, interface_up=interface_up, cpu_percent=cpu,
                             cpu_limit=limit)
    if not interface_up:
        assert result.verdict == PHONE  # more useful than `unknown`: the call will drop
    elif base == VIDEO and cpu is not None and cpu >= limit:
        assert result.verdict == AUDIO_ONLY
    else:
        assert result == before
    if base != UNKNOWN:
        assert rank(result.verdict) >= rank(base)


# -- this computer's own traffic as a cause -------------------------------------------------

_SLOW_UP = Verdict(AUDIO_ONLY, 0.8, (Reason("upload_too_slow_for_video", "slow upload"),))


def test_own_upload_filling_a_measured_uplink_is_named_second() -> None:
    v = own_traffic_note(_SLOW_UP, tx_kbps=1400, rx_kbps=100,
                         up=DirectionMetrics(kbps=1600), down=DirectionMetrics(kbps=8000))
    assert v.verdict == AUDIO_ONLY and v.confidence == 0.8  # the verdict is not changed
    assert [r.code for r in v.reasons] == ["upload_too_slow_for_video", "own_upload_busy"]
    msg = v.reasons[1].message
    assert "1.4 Mbit/s" in msg and "1.6 Mbit/s" in msg and "the call included" in msg
    assert "pausing them" in msg


def test_own_download_named_for_phone_too() -> None:
    phone = Verdict(PHONE, 0.9, (Reason("loss_too_high_for_audio", "loss"),))
    v = own_traffic_note(phone, tx_kbps=10, rx_kbps=900,
                         up=DirectionMetrics(kbps=500), down=DirectionMetrics(kbps=1000))
    assert [r.code for r in v.reasons] == ["loss_too_high_for_audio", "own_download_busy"]


@pytest.mark.parametrize("verdict, tx, up", [
    (Verdict(VIDEO, 0.9, ()), 1500, DirectionMetrics(kbps=1600)),  # video: the call itself
    (_SLOW_UP, 1000, DirectionMetrics(kbps=1600)),  # 62 % of the uplink: not most of it
    (_SLOW_UP, 5000, DirectionMetrics(kbps=3200, kbps_at_least=True)),  # capacity unknown
    (_SLOW_UP, None, DirectionMetrics(kbps=1600)),  # no reading
    (_SLOW_UP, 1500, DirectionMetrics()),  # never measured
])
def test_own_traffic_not_named_without_evidence(verdict: Verdict, tx: float | None,
                                                up: DirectionMetrics) -> None:
    assert own_traffic_note(verdict, tx_kbps=tx, rx_kbps=None, up=up, down=None) == verdict

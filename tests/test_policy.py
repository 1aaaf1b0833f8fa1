"""The agent's policy, pure: events and `now` in, actions out. No real time passes, no I/O:
each test drives `AgentPolicy` the way the runtime does (feeding a Tick at every deadline it
asks for) and looks at the actions and the status document."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config import AgentSettings, Settings
from netprobe.core.classify import AUDIO_ONLY, UNKNOWN, VIDEO, Reason, Verdict
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.policy import (
    FIRST_CHECK_AFTER_S,
    FRESH_FOR_SESSION_S,
    SILENCE_S,
    AgentPolicy,
    changed_keys,
    light_check_settings,
)
from netprobe.core.policy_events import (
    Action,
    CheckFailed,
    CheckFinished,
    CheckRequested,
    EchoReceived,
    Event,
    Log,
    MonitorConnected,
    MonitorConnectFailed,
    MonitorEnded,
    PassiveSampled,
    Publish,
    SessionStartRequested,
    SessionStopRequested,
    SettingsChanged,
    StartCheck,
    Started,
    StartMonitor,
    StopMonitor,
    Tick,
)
from netprobe.core.result import CheckResult
from netprobe.core.wire import Echo

SERVER = "http://reflector.test:8765"


@dataclass(frozen=True)
class Readings:
    """The machine's own signals, as the psutil adapter would read them."""

    interface_up: bool = True
    interface_index: int | None = 2
    cpu_percent: float | None = 5.0
    rx_kbps: float | None = 100.0
    tx_kbps: float | None = 100.0

    def to_json(self) -> dict[str, Any]:
        return {"interface_up": self.interface_up, "cpu_percent": self.cpu_percent,
                "rx_kbps": self.rx_kbps, "tx_kbps": self.tx_kbps}


def result(verdict: str = VIDEO, *, connected: bool = True, code: str | None = None,
           kbps: float | None = 3000.0) -> CheckResult:
    code = code or {VIDEO: "video_ok", AUDIO_ONLY: "audio_only_low_bandwidth",
                    UNKNOWN: "server_unreachable"}.get(verdict, "x")
    if not connected:
        return CheckResult(Verdict(verdict, 0.0, (Reason(code, "..."),)), LinkMetrics(),
                           datetime(2026, 1, 1, tzinfo=UTC), 1.0)
    d = DirectionMetrics(kbps=kbps, kbps_at_least=True, loss_pct=0.0, jitter_ms=1.0, packets=500)
    return CheckResult(Verdict(verdict, 0.9, (Reason(code, "..."),)),
                       LinkMetrics(rtt_ms=20.0, mos_audio=4.4, up=d, down=d, connected=True),
                       datetime(2026, 1, 1, tzinfo=UTC), 2.5)


class Drive:
    """The policy with a clock that only moves when told, and a record of what it said."""

    def __init__(self, jitter: float = 0.0, **agent: Any) -> None:
        self.settings = Settings(agent=AgentSettings(server=SERVER, **agent))
        self.policy = AgentPolicy(self.settings, Readings(), jitter=lambda: jitter)
        self.now = 0.0
        self.actions: list[Action] = []
        self.seq = 0

    def feed(self, event: Event) -> list[Action]:
        out = self.policy.handle(event)
        self.actions += out
        return out

    def start(self) -> list[Action]:
        return self.feed(Started(self.now))

    def until(self, t: float) -> list[Action]:
        """Let time pass to `t`, feeding a Tick at every deadline (as the runtime does)."""
        out: list[Action] = []
        while (deadline := self.policy.next_deadline()) is not None and deadline <= t:
            self.now = max(self.now, deadline)
            out += self.feed(Tick(self.now))
            after = self.policy.next_deadline()
            assert after is None or after > self.now, "a Tick must move the deadline on"
        self.now = max(self.now, t)
        return out

    def finish(self, res: CheckResult, after: float = 2.0) -> list[Action]:
        purpose = self.policy.check_running
        assert purpose is not None
        self.now += after
        return self.feed(CheckFinished(self.now, purpose, res))

    def echoes(self, seconds: float, every: float = 0.05) -> list[Action]:
        """A clean probe stream on the current link for `seconds` (ticks in between)."""
        out: list[Action] = []
        end = self.now + seconds
        while self.now + every <= end:
            out += self.until(self.now + every)
            echo = Echo(self.seq, self.now, self.seq, self.now - 0.02, 0.0, self.seq + 1,
                        self.seq, 0.001)
            self.seq += 1
            out += self.feed(EchoReceived(self.now, self.policy.link, echo))
        return out

    def logs(self, event: str) -> list[Log]:
        return [a for a in self.actions if isinstance(a, Log) and a.event == event]

    def status(self) -> dict[str, Any]:
        return self.policy.status_document(self.now, 1_000_000.0, "test")


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def streaming(d: Drive) -> None:
    """From idle with a fresh video check to a session's stream connected."""
    d.start()
    d.until(FIRST_CHECK_AFTER_S)
    d.finish(result(VIDEO))
    out = d.feed(SessionStartRequested(d.now))
    assert of(StartMonitor, out) and not of(StartCheck, out)
    d.feed(MonitorConnected(d.now, d.policy.link))


# -- idle checks -------------------------------------------------------------------------------


@given(jitter=st.floats(-1, 1), interval=st.floats(10, 5000), spread=st.floats(0, 0.9))
def test_idle_checks_a_second_after_start_then_every_jittered_interval(
        jitter: float, interval: float, spread: float) -> None:
    d = Drive(jitter, idle_interval_s=interval, idle_jitter=spread)
    assert d.start() == [] and d.policy.next_deadline() == FIRST_CHECK_AFTER_S
    out = d.until(FIRST_CHECK_AFTER_S)
    assert of(StartCheck, out) == [StartCheck("idle", light=True, servers=(SERVER,))]
    assert d.status()["check_running"] is True
    out = d.finish(result(VIDEO))
    [changed] = [a for a in out if isinstance(a, Log) and a.event == "recommendation_changed"]
    assert changed.fields == {"from": "unknown", "to": "video", "reasons": ["video_ok"],
                              "trigger": "check"}
    assert of(Publish, out) == [Publish("recommendation", {"from": "unknown"})]
    deadline = d.policy.next_deadline()
    assert deadline == pytest.approx(d.now + interval * (1 + spread * jitter))
    assert interval * (1 - spread) - 1e-6 <= deadline - d.now <= interval * (1 + spread) + 1e-6
    st_ = d.status()
    assert st_["recommendation"] == "video" and st_["reflector"] == "ok"
    assert st_["check_running"] is False and st_["age_s"] == 0


@settings(max_examples=50)
@given(low=st.floats(0.1, 60), factor=st.floats(1, 100), failures=st.integers(1, 12))
def test_unreachable_reflector_backs_off_doubling_up_to_the_maximum_then_resets(
        low: float, factor: float, failures: int) -> None:
    high = low * factor
    d = Drive(backoff_min_s=low, backoff_max_s=high)
    d.start()
    d.until(FIRST_CHECK_AFTER_S)
    for i in range(failures):
        d.finish(result(UNKNOWN, connected=False))
        wait = min(low * 2 ** i, high)
        assert d.logs("reflector_unreachable")[-1].fields == {
            "retry_in_s": pytest.approx(wait), "error_code": "server_unreachable"}
        assert d.policy.next_deadline() == pytest.approx(d.now + wait)  # when the line says
        assert of(StartCheck, d.until(d.now + wait)) == [
            StartCheck("idle", light=True, servers=(SERVER,))]
    assert d.status()["reflector"] == "unreachable" and d.status()["recommendation"] == "unknown"
    d.finish(result(VIDEO))
    assert d.logs("reflector_recovered") and d.policy.backoff_s == low


def test_a_busy_reflector_is_not_unreachable() -> None:
    d = Drive()
    d.start()
    d.until(1)
    d.finish(result(UNKNOWN, connected=False, code="server_busy"))
    assert not d.logs("reflector_unreachable") and d.status()["reflector"] == "unknown"


@given(stale=st.floats(60, 10_000), extra=st.floats(0.01, 1000))
def test_old_figures_are_reported_as_unknown(stale: float, extra: float) -> None:
    d = Drive(stale_after_s=stale)
    d.start()
    d.until(1)
    d.finish(result(VIDEO))
    t = d.now
    assert d.policy.status_document(t + stale - 1e-3, 0, "v")["recommendation"] == "video"
    old = d.policy.status_document(t + stale + extra, 0, "v")
    assert old["recommendation"] == "unknown" and old["confidence"] == 0
    assert [r["code"] for r in old["reasons"]] == ["status_stale"]
    assert old["metrics"]["rtt_ms"] == 20.0  # the figures are still shown, as figures


def test_the_status_carries_wall_clock_times_and_the_schema() -> None:
    d = Drive()
    before = d.status()
    assert before["schema"] == "netprobe.status/1" and before["updated_at"] is None
    assert [r["code"] for r in before["reasons"]] == ["no_check_yet"]
    d.start()
    d.until(1)
    d.finish(result(VIDEO))  # at now = 3
    doc = d.policy.status_document(d.now, 1_700_000_000.0, "9.9")
    assert doc["updated_at"] == "2023-11-14T22:13:23Z" and doc["version"] == "9.9"


def test_a_manual_check_is_refused_while_another_runs_and_resets_the_idle_timer() -> None:
    d = Drive()
    d.start()
    d.until(1)
    assert d.feed(CheckRequested(d.now)) == []  # the idle check is running
    d.finish(result(VIDEO))
    out = d.feed(CheckRequested(d.now))
    assert of(StartCheck, out) == [StartCheck("manual", light=False, servers=(SERVER,))]
    assert d.until(d.now + 10_000) == []  # no idle check while the manual one runs
    d.finish(result(VIDEO), after=1)
    assert d.policy.next_deadline() == pytest.approx(d.now + 600)


def test_a_failed_check_is_logged_and_the_idle_checks_go_on() -> None:
    d = Drive()
    d.start()
    d.until(1)
    d.feed(CheckFailed(d.now, "idle", "the measuring process ended"))
    [error] = d.logs("error")
    assert error.level == "error" and error.fields["where"] == "idle_check"
    assert d.policy.next_deadline() == pytest.approx(d.now + 600)


def test_a_network_change_or_a_reload_asks_for_a_check_at_once() -> None:
    d = Drive()
    d.start()
    d.until(1)
    d.finish(result(VIDEO))
    d.feed(PassiveSampled(d.now, Readings(), "default_route_changed"))
    assert d.logs("network_changed")[0].fields == {"change": "default_route_changed",
                                                   "interface": 2}
    assert of(StartCheck, d.until(d.now)) == [StartCheck("idle", light=True, servers=(SERVER,))]
    # a reload during that check: another check as soon as it ends
    new = replace(d.settings, agent=replace(d.settings.agent, step_down_after=5))
    d.feed(SettingsChanged(d.now, new))
    assert d.logs("config_reloaded")[0].fields == {"changed": ["agent.step_down_after"]}
    d.finish(result(VIDEO))
    assert d.policy.next_deadline() == d.now and d.policy.settings is new


def test_changed_keys_and_light_settings() -> None:
    s = Settings(agent=AgentSettings(server=SERVER))
    assert changed_keys(s, s) == []
    light = light_check_settings(s)
    assert light.probe.ladder_kbps == (300, 800, 1600) and light.probe.max_duration_s <= 10
    assert changed_keys(s, light)[0].startswith("probe.")


# -- sessions ----------------------------------------------------------------------------------


def test_a_session_with_a_fresh_result_streams_at_once_and_judges_windows() -> None:
    d = Drive()
    streaming(d)
    assert d.status()["state"] == "monitoring" and d.status()["session_started_at"]
    out = d.echoes(6)
    assert not d.logs("recommendation_changed")[1:] and not of(StartCheck, out)
    st_ = d.status()
    assert st_["recommendation"] == "video" and st_["age_s"] <= 1
    assert 50 <= st_["metrics"]["down"]["packets"] <= 150  # the window's, not the check's
    assert st_["metrics"]["down"]["kbps"] == 3000  # capacity from the last check


@pytest.mark.parametrize("how", ["no_check", "old_check", "unreachable"])
def test_a_session_without_a_fresh_result_checks_first(how: str) -> None:
    d = Drive()
    d.start()
    d.until(1)
    if how != "no_check":
        d.finish(result(VIDEO) if how == "old_check" else result(UNKNOWN, connected=False))
    d.now += FRESH_FOR_SESSION_S + 1 if how == "old_check" else 0
    out = d.feed(SessionStartRequested(d.now))
    if how == "no_check":  # the idle check still runs: its end is awaited, no second check
        assert not of(StartCheck, out)
        out = d.finish(result(VIDEO))
    else:
        assert of(StartCheck, out) == [StartCheck("session", light=False, servers=(SERVER,))]
        assert d.logs("check_started")[-1].fields == {"kind": "session"}
        out = d.finish(result(VIDEO))
    assert of(StartMonitor, out) and d.status()["recommendation"] == "video"


def test_a_session_whose_first_check_fails_is_still_watched() -> None:
    # the check raising used to kill the monitor task while the status said "monitoring"
    d = Drive()
    d.start()
    d.feed(SessionStartRequested(d.now))
    d.feed(CheckFailed(d.now + 1, "session", "the measuring process ended"))
    assert d.policy.phase == "connecting" and d.policy.link_open
    assert d.logs("error")[0].fields["where"] == "session_check"


def test_a_saturated_processor_steps_down_after_enough_windows() -> None:
    d = Drive(step_down_after=2)
    streaming(d)
    d.echoes(3)
    d.feed(PassiveSampled(d.now, Readings(cpu_percent=97.0)))
    d.echoes(3)
    [_, change] = d.logs("recommendation_changed")
    assert change.fields["to"] == AUDIO_ONLY and change.fields["trigger"] == "passive"
    assert change.fields["reasons"] == ["cpu_saturated"]


def test_silence_loses_the_reflector_then_it_reconnects_and_confirms_before_video() -> None:
    d = Drive(backoff_min_s=0.5)
    streaming(d)
    d.echoes(2)
    quiet_since, out = d.now, []
    while not out:
        out = d.until(d.now + 0.1)
    assert SILENCE_S < d.now - quiet_since <= SILENCE_S + 1.1
    assert of(StopMonitor, out) == [StopMonitor(1)]
    [lost] = d.logs("reflector_unreachable")
    assert lost.fields == {"retry_in_s": 0.5, "error_code": "monitor_silent"}
    st_ = d.status()
    assert st_["state"] == "monitoring" and st_["reflector"] == "unreachable"
    assert [r["code"] for r in st_["reasons"]] == ["reflector_unreachable"]
    # what the old stream says now counts for nothing
    d.feed(MonitorEnded(d.now, 1))
    assert len(d.logs("reflector_unreachable")) == 1
    out = d.until(d.now + 0.5)
    assert of(StartMonitor, out) == [StartMonitor(2, d.settings, SERVER)]
    d.feed(MonitorConnected(d.now, 2))
    assert d.logs("reflector_recovered") and d.policy.backoff_s == 0.5
    out = d.echoes(3)  # the windows say video: only a light check may confirm it
    assert StartCheck("confirm", light=True, servers=(SERVER,)) in out
    assert d.logs("check_started")[-1].fields == {"kind": "session"}
    assert d.status()["recommendation"] == "unknown"
    assert d.until(d.now + 5) == []  # windows pause during the check
    d.finish(result(VIDEO), after=0.5)
    assert d.logs("recommendation_changed")[-1].fields["trigger"] == "check"
    assert d.status()["recommendation"] == "video"


def test_a_stream_that_cannot_connect_is_retried_with_backoff() -> None:
    d = Drive(backoff_min_s=1.0, backoff_max_s=4.0)
    streaming(d)
    d.feed(MonitorEnded(d.now, 1))
    assert d.logs("reflector_unreachable")[-1].fields["error_code"] == "monitor_closed"
    waits = []
    for link in (2, 3, 4):
        deadline = d.policy.next_deadline()
        assert deadline is not None
        waits.append(deadline - d.now)
        [monitor] = of(StartMonitor, d.until(deadline))
        d.feed(MonitorConnectFailed(d.now, monitor.link, "ServerUnreachable"))
        assert monitor.link == link
    assert waits == [1.0, 2.0, 4.0]
    assert d.logs("reflector_unreachable")[-1].fields["error_code"] == "ServerUnreachable"


def test_an_unreachable_check_during_a_session_does_not_override_the_windows() -> None:
    d = Drive()
    streaming(d)
    d.echoes(2)
    d.feed(CheckRequested(d.now))
    d.finish(result(UNKNOWN, connected=False), after=0.1)
    assert d.status()["recommendation"] == "video"


def test_a_forgotten_session_ends_by_itself() -> None:
    d = Drive(max_session_s=30.0)
    streaming(d)
    t0 = d.now
    d.echoes(29)
    assert d.status()["state"] == "monitoring"
    out = d.echoes(2)
    assert StopMonitor(1) in out and Publish("state") in out
    [stopped] = d.logs("session_stopped")
    assert stopped.level == "warning" and stopped.fields["reason"] == "max_duration"
    assert stopped.fields["duration_s"] == pytest.approx(30, abs=0.1)
    assert d.status()["state"] == "idle" and d.now - t0 < 31
    assert d.feed(SessionStopRequested(d.now)) == []  # nothing left to stop


def test_stopping_a_session_closes_its_stream_and_idle_checks_resume() -> None:
    d = Drive()
    streaming(d)
    d.echoes(1)
    out = d.feed(SessionStopRequested(d.now, "api"))
    assert of(StopMonitor, out) == [StopMonitor(1)] and of(Publish, out) == [Publish("state")]
    assert d.logs("session_stopped")[0].fields["reason"] == "api"
    assert d.feed(EchoReceived(d.now, 1, Echo(0, 0, 0, 0, 0, 1, 0, 0))) == []
    assert d.policy.next_deadline() is not None

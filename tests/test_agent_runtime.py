"""The agent in-process as a clinic runs it: a real reflector (in-process, or a `netprobe
serve` process that can be killed) and real aiortc peers on loopback, the local API over real
HTTP (aiohttp client); and the configuration reloaded (SIGHUP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import (
    STATUS_KEYS,
    EventStream,
    FakeSampler,
    StartAgent,
    agents,
    events,
    parse_prometheus,
    until,
)
from procs import free_port, serve

from netprobe.agent.app import Agent
from netprobe.agent.passive import PassiveState
from netprobe.config import ReflectorSettings, Settings, load_settings
from netprobe.webrtc.reflector import Reflector


@pytest.fixture
async def start_agent(settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
                      ) -> AsyncIterator[StartAgent]:
    async with agents(settings, tmp_path, caplog) as start:
        yield start



def assert_first_check_status(st: dict[str, Any]) -> None:
    assert STATUS_KEYS <= set(st)
    assert st["schema"] == "netprobe.status/1" and st["state"] == "idle"
    assert st["recommendation"] == "video" and 0 < st["confidence"] <= 1
    assert st["reasons"][0]["code"] == "video_ok"
    # code and English message, and the template with its arguments (for `netprobe status`)
    assert all(set(x) == {"code", "message", "template", "args"} and x["message"]
               for x in st["reasons"])
    assert st["reflector"] == "ok"
    assert 0 <= st["age_s"] < 5
    updated = datetime.fromisoformat(st["updated_at"].replace("Z", "+00:00"))
    assert st["updated_at"].endswith("Z") and abs(datetime.now(UTC) - updated).total_seconds() < 30
    m = st["metrics"]
    assert 0 < m["rtt_ms"] < 50 and m["mos_audio"] > 4
    for d in ("up", "down"):
        assert m[d]["kbps"] > 1000 and m[d]["loss_pct"] < 1 and m[d]["jitter_ms"] is not None


async def test_status_metrics_events_and_a_monitored_session(
        reflector: Reflector, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    """One agent's life: before and after its first idle check, a session watched over its own
    connection, the processor saturating, the session's end, the figures going stale, the
    agent stopping with an event stream open."""
    sampler = FakeSampler(cpu=5.0)
    offset = [0.0]
    r = await start_agent(reflector.url, sampler=sampler, step_down_after=2,
                          clock=lambda: time.monotonic() + offset[0])
    before = await r.status()
    assert STATUS_KEYS <= set(before)
    assert before["schema"] == "netprobe.status/1" and before["state"] == "idle"
    assert before["recommendation"] == "unknown" and before["reflector"] == "unknown"
    assert [x["code"] for x in before["reasons"]] == ["no_check_yet"]
    assert before["updated_at"] is None and before["age_s"] is None

    async with r.http.get(r.url("/v1/events")) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        stream = EventStream(resp)
        kind, first = await stream.next()
        assert kind == "status" and first["schema"] == "netprobe.status/1"
        assert first["recommendation"] == "unknown"

        # The first idle check: video on loopback, in the events, the status and the metrics.
        change = await stream.next_of("recommendation", 10)
        assert (change["from"], change["recommendation"]) == ("unknown", "video")
        st = await r.status()
        assert_first_check_status(st)
        [finished] = events(caplog, "check_finished")
        assert finished.kind == "idle" and finished.verdict == "video"  # type: ignore
        [changed] = events(caplog, "recommendation_changed")
        assert (changed.__dict__["from"], changed.to, changed.trigger) == (  # type: ignore
            "unknown", "video", "check")
        async with r.http.get(r.url("/metrics")) as metrics:
            assert metrics.status == 200 and metrics.content_type == "text/plain"
            prom = parse_prometheus(await metrics.text())
        assert prom["netprobe_recommendation"] == {
            'verdict="video"': 1, 'verdict="audio_only"': 0, 'verdict="phone"': 0,
            'verdict="unknown"': 0}
        assert prom["netprobe_monitoring"] == {"": 0}
        assert prom["netprobe_reflector_up"] == {"": 1}
        assert prom["netprobe_checks_total"] == {'verdict="video"': 1}
        assert prom["netprobe_recommendation_changes_total"] == {"": 1}
        assert prom["netprobe_rtt_ms"][""] == pytest.approx(st["metrics"]["rtt_ms"], abs=0.1)
        assert set(prom["netprobe_kbps"]) == {'direction="up"', 'direction="down"'}

        # A session: monitoring over a connection of its own.
        assert await r.post("/v1/session", {"action": "start"}) == (
            200, {"state": "monitoring", "changed": True})
        assert await r.post("/v1/session", {"action": "start"}) == (
            200, {"state": "monitoring", "changed": False})
        state = await stream.next_of("state")
        assert state["state"] == "monitoring" and state["session_started_at"]
        monitor_limit = reflector.settings.monitor_timeout_s
        await until(lambda: any(s.time_limit == monitor_limit
                                for s in reflector.sessions.values()), 5, "monitor session")
        await r.until_status(lambda s: s["metrics"]["down"]["packets"] <= 150, 5,
                             "figures from a 5 s window at 20 probes/s, not from a check")
        for _ in range(2):
            st = await r.status()
            assert st["state"] == "monitoring" and st["recommendation"] == "video", st
            assert st["reflector"] == "ok" and st["age_s"] <= 1.5
            await asyncio.sleep(0.25)
        async with r.http.get(r.url("/metrics")) as metrics:
            assert parse_prometheus(await metrics.text())["netprobe_monitoring"] == {"": 1}
        assert not events(caplog, "recommendation_changed")[1:]

        # A clean link: after 10 comfortable seconds the measuring process probes at half the
        # rate, and the windows are made of those echoes (~50 in 5 s, not ~100).
        assert st["probe_interval_ms"] == 50.0
        await r.until_status(lambda s: s["probe_interval_ms"] == 100.0, 20, "the calm rate")
        await asyncio.sleep(r.agent.settings.agent.window_s + 0.5)
        st = await r.status()
        assert 30 <= st["metrics"]["down"]["packets"] <= 70, st["metrics"]
        assert st["recommendation"] == "video"

        # The processor saturates: down to audio only after step_down_after windows.
        sampler.state = PassiveState(interface_up=True, cpu_percent=97.0)
        t0 = time.monotonic()
        change = await stream.next_of("recommendation", 10)
        assert 0.8 < time.monotonic() - t0 < 8
        assert (change["from"], change["recommendation"]) == ("video", "audio_only")
        assert [x["code"] for x in change["reasons"]] == ["cpu_saturated"]
        assert events(caplog, "recommendation_changed")[-1].trigger == "passive"  # type: ignore
        assert change["probe_interval_ms"] == 50.0  # not comfortable: the full rate again

        assert await r.post("/v1/session", {"action": "stop"}) == (
            200, {"state": "idle", "changed": True})
        state = await stream.next_of("state")
        assert state["state"] == "idle" and state["session_started_at"] is None
        [stopped] = events(caplog, "session_stopped")
        assert stopped.duration_s > 1  # type: ignore[attr-defined]
        assert stopped.reason == "api"  # type: ignore[attr-defined]
        await until(lambda: not reflector.sessions, 5, "monitor connection closed")

        # The figures age: past stale_after_s the status no longer vouches for anything.
        offset[0] = r.agent.settings.agent.stale_after_s + 1
        stale = await r.status()
        assert stale["state"] == "idle" and stale["recommendation"] == "unknown"
        assert [x["code"] for x in stale["reasons"]] == ["status_stale"]
        assert stale["age_s"] > r.agent.settings.agent.stale_after_s
        async with r.http.get(r.url("/metrics")) as metrics:
            prom = parse_prometheus(await metrics.text())
        assert prom["netprobe_recommendation"]['verdict="unknown"'] == 1
        assert prom["netprobe_recommendation"]['verdict="audio_only"'] == 0

        # Stopping the agent ends the stream promptly, with no error.
        t0 = time.monotonic()
        r.agent.request_stop()
        assert await asyncio.wait_for(r.task, 5) == 0
        assert time.monotonic() - t0 < 3
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            await stream.next(5)


async def test_post_check_runs_one_check_at_a_time(reflector: Reflector,
                                                   start_agent: StartAgent) -> None:
    r = await start_agent(reflector.url)
    results = await asyncio.gather(r.post("/v1/check"), r.post("/v1/check"))
    by_status = dict(results)
    assert sorted(by_status) == [200, 409]
    doc = by_status[200]
    assert doc["schema"] == "netprobe.check/1" and doc["verdict"] == "video"
    assert len(doc["ladder"]["up"]) == len(r.agent.settings.probe.ladder_kbps)  # a full check
    assert by_status[409]["error"]["code"] == "check_running"
    st = await r.status()
    assert st["recommendation"] == "video" and st["metrics"]["rtt_ms"] == doc["metrics"]["rtt_ms"]


async def test_a_forgotten_session_stops_by_itself(
        reflector: Reflector, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    # The video app crashed without stopping its session: the monitoring stream must not run
    # (and load the client's link) for ever.
    r = await start_agent(reflector.url, max_session_s=3.0)
    assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
    await r.until_status(lambda s: s["state"] == "monitoring", 5, "monitoring")
    st = await r.until_status(lambda s: s["state"] == "idle", 20, "the session to expire")
    assert st["session_started_at"] is None
    [stopped] = events(caplog, "session_stopped")
    assert stopped.reason == "max_duration" and stopped.levelname == "WARNING"  # type: ignore
    assert 3.0 <= stopped.duration_s < 6  # type: ignore[attr-defined]
    await until(lambda: not reflector.sessions, 5, "monitor connection closed")
    # and a new session can start as usual
    assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
    assert (await r.status())["state"] == "monitoring"


async def test_reflector_lost_during_a_session_then_back(
        loopback_ice: None, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    ref = await serve(port)
    try:
        r = await start_agent(f"http://127.0.0.1:{port}", backoff_min_s=0.3, backoff_max_s=1.0)
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
        await r.until_status(lambda s: s["recommendation"] == "video" and s["reflector"] == "ok"
                             and s["metrics"]["down"]["packets"] < 200, 15,
                             "video from the monitoring windows")

        # Killed: no goodbye, the connection just goes silent, as when the network drops.
        ref.kill()
        await ref.wait()
        t0 = time.monotonic()
        seen = set()
        while (st := await r.status())["reflector"] == "ok":
            seen.add(st["recommendation"])
            assert time.monotonic() - t0 < 10, "the loss of the reflector never showed"
            await asyncio.sleep(0.1)
        assert seen <= {"video"}
        assert st["recommendation"] == "unknown" and st["state"] == "monitoring"
        assert [x["code"] for x in st["reasons"]] == ["reflector_unreachable"]
        assert st["reflector"] == "unreachable"
        assert events(caplog, "reflector_unreachable")[0].error_code == (  # type: ignore
            "monitor_silent")
        async with r.http.get(r.url("/metrics")) as resp:
            assert parse_prometheus(await resp.text())["netprobe_reflector_up"] == {"": 0}
        for _ in range(3):  # never back to a stale video while the reflector is away
            await asyncio.sleep(0.2)
            assert (await r.status())["recommendation"] == "unknown"
        assert not r.task.done()

        ref = await serve(port)  # the same port
        st = await r.until_status(lambda s: s["reflector"] == "ok", 10, "reconnection")
        assert st["state"] == "monitoring" and st["recommendation"] != "video"
        assert events(caplog, "reflector_recovered")
        assert r.agent.policy.backoff_s == r.agent.settings.agent.backoff_min_s  # restarted
        # from unknown back to video only once a check confirms it
        st = await r.until_status(lambda s: s["recommendation"] == "video", 10, "video again")
        assert events(caplog, "recommendation_changed")[-1].trigger == "check"  # type: ignore
    finally:
        with contextlib.suppress(ProcessLookupError):
            ref.terminate()
        assert await asyncio.wait_for(ref.wait(), 10) in (0, -signal.SIGTERM, -signal.SIGKILL)


async def test_idle_checks_back_off_while_the_reflector_is_away(
        start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    r = await start_agent(f"http://127.0.0.1:{port}", backoff_min_s=0.25, backoff_max_s=0.5)
    await until(lambda: events(caplog, "reflector_unreachable"), 5, "a failed idle check")
    assert r.agent.policy.backoff_s == 0.5  # doubled once
    st = await r.status()
    assert st["recommendation"] == "unknown" and st["reflector"] == "unreachable"
    assert st["reasons"][0]["code"] == "server_unreachable"
    await until(lambda: len(events(caplog, "check_started")) >= 4, 5, "three retries")
    failures = events(caplog, "reflector_unreachable")[:3]
    assert [f.retry_in_s for f in failures] == [0.25, 0.5, 0.5]  # type: ignore[attr-defined]
    assert {f.error_code for f in failures} == {"server_unreachable"}  # type: ignore[attr-defined]
    assert r.agent.policy.backoff_s == 0.5  # doubling stops at backoff_max_s
    # each retry comes when the log line said it would, counted from that line
    started = [c.created for c in events(caplog, "check_started")[1:4]]
    for failure, retry_at in zip(failures, started, strict=True):
        gap = retry_at - failure.created
        assert gap == pytest.approx(failure.retry_in_s, abs=0.15)  # type: ignore[attr-defined]
    assert not r.task.done() and (await r.status())["reflector"] == "unreachable"


async def test_a_busy_reflector_refusing_a_check_during_a_session_changes_nothing(
        loopback_ice: None, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    busy = Reflector(ReflectorSettings(host="127.0.0.1", port=0, max_sessions=1))
    await busy.start()
    r = await start_agent(busy.url, backoff_min_s=0.3, backoff_max_s=1.0)
    try:
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
        await r.until_status(lambda s: s["recommendation"] == "video" and s["reflector"] == "ok"
                             and s["metrics"]["down"]["packets"] < 200, 15,
                             "video from the monitoring windows")
        status, doc = await r.post("/v1/check")  # the one slot is the monitoring connection's
        assert status == 200 and doc["reasons"][0]["code"] == "server_busy"
        for _ in range(6):  # the windows keep judging the session, and say video
            await asyncio.sleep(0.25)
            st = await r.status()
            assert st["recommendation"] == "video" and st["state"] == "monitoring", st
            assert st["metrics"]["down"]["kbps"] is not None  # capacity of the last good check
        assert st["reflector"] == "ok"  # it answered: busy, not unreachable
        assert not events(caplog, "reflector_unreachable")
    finally:
        r.agent.request_stop()
        await asyncio.wait_for(r.task, 10)
        await busy.stop()


async def test_a_check_cut_short_does_not_pin_the_next_session_to_phone(
        loopback_ice: None, start_agent: StartAgent) -> None:
    first = Reflector(ReflectorSettings(host="127.0.0.1", port=0))
    await first.start()
    port = first.port
    r = await start_agent(first.url, backoff_min_s=0.3, backoff_max_s=1.0)
    # the reflector goes away while the first idle check is measuring, and comes back
    await until(lambda: any(s.pc.connectionState == "connected"
                            for s in first.sessions.values()), 10, "the idle check to connect",
                interval=0.02)
    await asyncio.sleep(0.3)
    await first.stop()
    await r.until_status(lambda s: sum(r.agent.checks_total.values()) >= 1
                         and not s["check_running"], 15, "the idle check to end")
    assert r.agent.last_check is None  # a check cut short gives no capacity to rely on
    again = Reflector(ReflectorSettings(host="127.0.0.1", port=port))
    await again.start()
    try:
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
        # the session's own check measures the clean link: about 4 s, more on a busy machine
        # (a fixed 5 s to see `video` was CI's margin, not the agent's)
        seen: list[str] = []

        def says_video(status: dict[str, Any]) -> bool:
            seen.append(status["recommendation"])
            return status["recommendation"] == "video"

        try:
            await r.until_status(says_video, 30, "video")
        except AssertionError:
            raise AssertionError(f"a clean link, yet the session says {set(seen)}") from None
    finally:
        r.agent.request_stop()
        await asyncio.wait_for(r.task, 10)
        await again.stop()


# ---------------------------------------------------------------------------------------------
# Reloading the configuration (SIGHUP)


def agent_from(path: Path, tmp_path: Path) -> Agent:
    return Agent(load_settings(path), path, {"api_port": 0,
                                             "api_token_file": str(tmp_path / "token")})


AGENT_TOML = "[agent]\nserver = \"http://127.0.0.1:9\"\nidle_interval_s = 600\n"


def test_reload_applies_a_changed_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML)
    agent = agent_from(path, tmp_path)
    path.write_text(AGENT_TOML.replace("600", "120") + "step_down_after = 5\n")
    agent.reload()
    assert agent.settings.agent.idle_interval_s == 120
    assert agent.settings.agent.step_down_after == 5
    assert agent.settings.agent.api_port == 0  # the command line still wins
    [reloaded] = events(caplog, "config_reloaded")
    assert reloaded.changed == ["agent.idle_interval_s",  # type: ignore[attr-defined]
                                "agent.step_down_after"]
    assert agent.policy.next_deadline() == pytest.approx(agent.clock(), abs=1)  # a check, now


@pytest.mark.parametrize("broken", [
    "[agent]\nserver = \"http://127.0.0.1:9\"\nidle_interval_s = \n",     # not TOML
    "[agent]\nserver = \"http://127.0.0.1:9\"\nidle_interval_s = 5\n",    # below the minimum
    "[agent]\nidle_interval_s = 600\n",                                   # no server any more
])
def test_reload_with_a_broken_file_keeps_the_old_settings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML)
    agent = agent_from(path, tmp_path)
    before = agent.settings
    path.write_text(broken)
    agent.reload()
    assert agent.settings is before
    [error] = events(caplog, "config_error")
    assert error.levelno == logging.ERROR
    assert error.path == str(path) and error.error  # type: ignore[attr-defined]
    assert not events(caplog, "config_reloaded")


def test_config_error_names_the_file_line_and_key(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_TOML)
    agent = agent_from(path, tmp_path)
    path.write_text(AGENT_TOML.replace("600", "5"))
    agent.reload()
    [error] = events(caplog, "config_error")
    assert str(path) in error.error and "line 3" in error.error  # type: ignore[attr-defined]
    assert "idle_interval_s" in error.error  # type: ignore[attr-defined]



class CrashingLink:
    """A session's probe stream whose measuring process breaks in a way nobody foresaw (the
    child process is not under test here: the agent's handling of the crash is)."""

    def __init__(self, *args: Any) -> None:
        self.failed = asyncio.Event()
        self.closed = False

    async def connect(self, timeout: float) -> None:
        raise RuntimeError("the stream broke in an unforeseen way")

    async def close(self) -> None:
        self.closed = True
        self.failed.set()


async def test_a_crashing_probe_stream_is_logged_retried_and_the_session_still_stops(
        reflector: Reflector, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    # It used to kill the monitor task while the status still said "monitoring" and the
    # reflector "ok", and the session's stop then answered 500.
    r = await start_agent(reflector.url, monitor_link=CrashingLink, backoff_min_s=0.2,
                          backoff_max_s=0.4)
    assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
    st = await r.until_status(lambda s: s["reflector"] == "unreachable", 20,
                              "the crash to show in the status")
    assert st["state"] == "monitoring" and st["recommendation"] == "unknown"
    assert [x["code"] for x in st["reasons"]] == ["reflector_unreachable"]
    await until(lambda: len([e for e in events(caplog, "error") if e.where == "monitor"]) >= 2,
                10, "a second attempt, after the backoff")
    crash = next(e for e in events(caplog, "error") if e.where == "monitor")  # type: ignore
    assert crash.exc_info and crash.exc_info[0] is RuntimeError  # logged with its traceback
    assert crash.error == "RuntimeError"  # type: ignore[attr-defined]
    assert events(caplog, "reflector_unreachable")[-1].error_code == (  # type: ignore
        "monitor_closed")
    assert not r.task.done()
    assert await r.post("/v1/session", {"action": "stop"}) == (
        200, {"state": "idle", "changed": True})
    assert (await r.status())["state"] == "idle"

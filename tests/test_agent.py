"""The background agent as a clinic runs it: a real reflector (in-process, or a `netprobe
serve` process that can be killed) and real aiortc peers on loopback, the local API over real
HTTP (aiohttp client), and `python -m netprobe agent` processes.

Stand-ins, only for what is not under test: the psutil adapter (`FakeSampler`; the machine's
own CPU readings are not under test, and a busy test machine must not turn video into
audio_only), and once a clock running ahead, to age the status past `stale_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from procs import CHILD_ENV, NETPROBE, free_port, serve

from netprobe.agent.api import AgentApi
from netprobe.agent.passive import PassiveState
from netprobe.agent.runtime import Agent
from netprobe.config import ReflectorSettings, Settings, load_settings
from netprobe.errors import ConfigError
from netprobe.webrtc.reflector import Reflector

ORIGIN = "https://video.clinic.example"
STATUS_KEYS = {"schema", "state", "recommendation", "confidence", "reasons", "metrics",
               "updated_at", "age_s", "reflector"}


async def until(probe: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.05) -> Any:
    """Poll `probe` (sync or async) until it gives something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(interval)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


class FakeSampler:
    """Stands in for `passive.PassiveSampler` (psutil): readings the test sets."""

    def __init__(self, cpu: float = 5.0) -> None:
        self.state = PassiveState(interface_up=True, cpu_percent=cpu)

    def sample(self) -> str | None:
        return None


@dataclass
class Running:
    agent: Agent
    task: asyncio.Task[int]
    port: int
    token: str
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.url("/v1/status")) as resp:
            assert resp.status == 200
            return await resp.json()  # type: ignore[no-any-return]

    async def post(self, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        async with self.http.post(self.url(path), json=body,
                                  headers={**self.auth, **headers}) as resp:
            return resp.status, await resp.json()

    async def until_status(self, ok: Callable[[dict[str, Any]], bool], timeout: float,
                           what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            st = await self.status()
            return st if ok(st) else None
        return await until(probe, timeout, what, interval=0.1)  # type: ignore[no-any-return]


StartAgent = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_agent(settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
                      ) -> AsyncIterator[StartAgent]:
    """Start `Agent.run()` (local API on port 0, learnt from the `agent_start` log line)."""
    running: list[Running] = []

    async def start(server: str, *, sampler: FakeSampler | None = None,
                    clock: Callable[[], float] | None = None, **overrides: Any) -> Running:
        caplog.set_level(logging.INFO, logger="netprobe")
        token_file = tmp_path / f"state{len(running)}" / "api-token"
        agent = Agent(settings, overrides={
            "server": server, "api_port": 0, "idle_interval_s": 3600.0,
            "token_file": str(token_file), **overrides}, **({"clock": clock} if clock else {}))
        agent._sampler = sampler or FakeSampler()  # type: ignore[assignment]
        seen = len(caplog.records)
        task = asyncio.get_running_loop().create_task(agent.run())

        def started() -> int | None:
            assert not task.done(), task
            return next((r.api_port for r in caplog.records[seen:]  # type: ignore[attr-defined]
                         if getattr(r, "event", None) == "agent_start"), None)

        port = await until(started, 5, "agent_start")
        r = Running(agent, task, port, token_file.read_text().strip(), aiohttp.ClientSession())
        running.append(r)
        return r

    yield start
    for r in running:
        await r.http.close()
        r.agent.request_stop()
        assert await asyncio.wait_for(r.task, 10) == 0


class EventStream:
    """A reader of text/event-stream."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        async def read() -> tuple[str, dict[str, Any]]:
            kind, data = "message", []
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the event stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        return kind, json.loads("\n".join(data))
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
        return await asyncio.wait_for(read(), timeout)

    async def next_of(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got, data = await self.next(max(0.01, deadline - time.monotonic()))
            if got == kind:
                return data


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? (\S+)(?: -?\d+)?$")


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Parse the text exposition format (0.0.4) strictly: {name: {labels: value}}."""
    assert text.endswith("\n")
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            assert name not in types and name not in samples, "TYPE after samples: " + line
            types[name] = kind
        elif line.startswith("#") or not line:
            continue
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), (m.group(2) or "{}")[1:-1], m.group(3)
            assert name in types, f"sample without TYPE: {line!r}"
            assert labels not in samples.get(name, {}), f"duplicate sample: {line!r}"
            samples.setdefault(name, {})[labels] = float(value)
    assert set(types) == helps
    return samples


# ---------------------------------------------------------------------------------------------
# The agent in-process against a real reflector


def assert_first_check_status(st: dict[str, Any]) -> None:
    assert STATUS_KEYS <= set(st)
    assert st["schema"] == "netprobe.status/1" and st["state"] == "idle"
    assert st["recommendation"] == "video" and 0 < st["confidence"] <= 1
    assert st["reasons"][0]["code"] == "video_ok"
    assert all(set(x) == {"code", "message"} and x["message"] for x in st["reasons"])
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

        # The processor saturates: down to audio only after step_down_after windows.
        sampler.state = PassiveState(interface_up=True, cpu_percent=97.0)
        t0 = time.monotonic()
        change = await stream.next_of("recommendation", 10)
        assert 0.8 < time.monotonic() - t0 < 8
        assert (change["from"], change["recommendation"]) == ("video", "audio_only")
        assert [x["code"] for x in change["reasons"]] == ["cpu_saturated"]
        assert events(caplog, "recommendation_changed")[-1].trigger == "passive"  # type: ignore

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
        assert r.agent._backoff == r.agent.settings.agent.backoff_min_s  # the backoff restarts
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
    assert r.agent._backoff == 0.5  # doubled once
    st = await r.status()
    assert st["recommendation"] == "unknown" and st["reflector"] == "unreachable"
    assert st["reasons"][0]["code"] == "server_unreachable"
    await until(lambda: len(events(caplog, "check_started")) >= 4, 5, "three retries")
    failures = events(caplog, "reflector_unreachable")[:3]
    assert [f.retry_in_s for f in failures] == [0.25, 0.5, 0.5]  # type: ignore[attr-defined]
    assert {f.error_code for f in failures} == {"server_unreachable"}  # type: ignore[attr-defined]
    assert r.agent._backoff == 0.5  # doubling stops at backoff_max_s
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
    await until(lambda: sum(r.agent.checks_total.values()) >= 1
                and not r.agent._check_lock.locked(), 15, "the idle check to end")
    assert r.agent.last_check is None  # a check cut short gives no capacity to rely on
    again = Reflector(ReflectorSettings(host="127.0.0.1", port=port))
    await again.start()
    try:
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200
        seen = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and (not seen or seen[-1] != "video"):
            await asyncio.sleep(0.2)
            seen.append((await r.status())["recommendation"])
        assert seen[-1] == "video", f"a clean link, yet the session says {set(seen)}"
    finally:
        r.agent.request_stop()
        await asyncio.wait_for(r.task, 10)
        await again.stop()


# ---------------------------------------------------------------------------------------------
# Reloading the configuration (SIGHUP)


def agent_from(path: Path, tmp_path: Path) -> Agent:
    return Agent(load_settings(path), path, {"api_port": 0,
                                             "token_file": str(tmp_path / "token")})


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
    assert agent._wake_idle.is_set()  # a fresh check with the new settings


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


# ---------------------------------------------------------------------------------------------
# API security (the real AgentApi over real HTTP; no session or check is started)


@dataclass
class Api:
    api: AgentApi
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api.token}"}


@pytest.fixture
async def api(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    agent = Agent(settings, overrides={
        "server": "http://127.0.0.1:9", "api_port": 0, "cors_origins": (ORIGIN,),
        "token_file": str(tmp_path / "state" / "netprobe" / "api-token")})
    server = AgentApi(agent)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(server, http)
    finally:
        await server.stop()


async def error_code(resp: aiohttp.ClientResponse) -> str:
    return (await resp.json())["error"]["code"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("host", ["attacker.example:{port}", "attacker.example",
                                  "127.0.0.1", "127.0.0.1:{other}", "localhost.attacker.example"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/status"), ("GET", "/metrics"),
                                              ("GET", "/v1/events"), ("POST", "/v1/session")])
async def test_a_foreign_host_header_is_refused(api: Api, caplog: pytest.LogCaptureFixture,
                                                host: str, method: str, path: str) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    host = host.format(port=api.api.port, other=api.api.port + 1)
    async with api.http.request(method, api.url(path), json={"action": "start"},
                                headers={"Host": host, "Origin": ORIGIN, **api.auth}) as resp:
        assert resp.status == 403 and await error_code(resp) == "bad_host"
        assert "Access-Control-Allow-Origin" not in resp.headers
    [rejected] = events(caplog, "api_request_rejected")
    assert rejected.reason == "bad_host" and rejected.path == path  # type: ignore[attr-defined]
    assert "attacker" not in json.dumps({k: str(v) for k, v in vars(rejected).items()})
    assert api.api.agent.state == "idle"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
async def test_the_loopback_host_names_are_accepted(api: Api, host: str) -> None:
    async with api.http.get(api.url("/v1/status"),
                            headers={"Host": host.format(port=api.api.port)}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("path", ["/v1/session", "/v1/check"])
@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong",
                                           "Bearer {token}x", "{token}", "Basic {token}"])
async def test_post_without_the_right_token_is_refused(api: Api, path: str,
                                                       authorization: str | None) -> None:
    headers = {} if authorization is None else {
        "Authorization": authorization.format(token=api.api.token)}
    async with api.http.post(api.url(path), json={"action": "start"}, headers=headers) as resp:
        assert resp.status == 401 and await error_code(resp) == "bad_token"
    assert api.api.agent.state == "idle" and not api.api.agent._check_lock.locked()


async def test_post_with_the_token_passes_the_guard(api: Api) -> None:
    async with api.http.post(api.url("/v1/session"), json={"action": "dance"},
                             headers=api.auth) as resp:
        assert resp.status == 400 and await error_code(resp) == "bad_request"


@pytest.mark.parametrize("origin", ["https://attacker.example", "null", ORIGIN + ":8443",
                                    ORIGIN.replace("https", "http")])
async def test_post_from_a_foreign_origin_is_refused_even_with_the_token(api: Api,
                                                                         origin: str) -> None:
    async with api.http.post(api.url("/v1/session"), json={"action": "start"},
                             headers={"Origin": origin, **api.auth}) as resp:
        assert resp.status == 403 and await error_code(resp) == "bad_origin"
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert api.api.agent.state == "idle"


async def test_cors_only_for_the_configured_origins(api: Api) -> None:
    async with api.http.get(api.url("/v1/status"), headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Origin" in resp.headers.get("Vary", "")
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    async with api.http.options(api.url("/v1/session"), headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    async with api.http.post(api.url("/v1/session"), json={"action": "dance"},
                             headers={"Origin": ORIGIN, **api.auth}) as resp:
        assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN

    for headers in ({"Origin": "https://attacker.example"}, {}):
        async with api.http.get(api.url("/v1/status"), headers=headers) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    async with api.http.options(api.url("/v1/session"), headers={
            **preflight, "Origin": "https://attacker.example"}) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize(("body", "content_type", "status", "code"), [
    (b"{not json", "application/json", 400, "bad_request"),
    (b"[\"start\"]", "application/json", 400, "bad_request"),
    (b"action=start", "application/x-www-form-urlencoded", 400, "bad_request"),
    (b'{"action": "start", "pad": "' + b"x" * 5000 + b'"}', "application/json", 413,
     "body_too_large"),
])
async def test_session_endpoint_refuses_bad_bodies(api: Api, body: bytes, content_type: str,
                                                   status: int, code: str) -> None:
    async with api.http.post(api.url("/v1/session"), data=body,
                             headers={"Content-Type": content_type, **api.auth}) as resp:
        assert resp.status == status and await error_code(resp) == code
    assert api.api.agent.state == "idle"


async def test_token_file_is_private(api: Api) -> None:
    path = api.api.token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == api.api.token and len(api.api.token) >= 32


def test_a_readable_token_file_is_made_private(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("k" * 43 + "\n")
    path.chmod(0o644)
    agent = Agent(settings, overrides={"server": "http://127.0.0.1:9",
                                       "token_file": str(path)})
    assert AgentApi(agent).token == "k" * 43  # the token survives; only its mode changes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_too_short_token_is_replaced(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("guessable\n")
    agent = Agent(settings, overrides={"server": "http://127.0.0.1:9",
                                       "token_file": str(path)})
    token = AgentApi(agent).token
    assert token != "guessable" and len(token) >= 32
    assert path.read_text().strip() == token and stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_api_listens_on_loopback_only(api: Api) -> None:
    runner = api.api._runner
    assert runner is not None and runner.addresses
    assert all(address[0] == "127.0.0.1" for address in runner.addresses)
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection(address, api.api.port), 2)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "agent.clinic.example"])
def test_a_non_loopback_api_host_is_a_config_error(tmp_path: Path, host: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nserver = "http://127.0.0.1:9"\napi_host = "{host}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)
    assert "api_host" in str(info.value)


# ---------------------------------------------------------------------------------------------
# `netprobe agent` processes


def run_cli(*args: str) -> tuple[int, str]:
    import subprocess

    proc = subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=30,
                          env=CHILD_ENV)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("content", "line", "needle"), [
    ('[agent]\nserver = "http://127.0.0.1:9"\nidle_interval_s = 5\n', 3, "idle_interval_s"),
    ('[agent]\napi_host = "0.0.0.0"\n', 2, "api_host"),
    ('[agent]\nserver = "http://127.0.0.1:9"\n\nfrobnicate = true\n', 4, "frobnicate"),
    ('[agent]\nserver = "http://127.0.0.1:9"\nidle_interval_s =\n', 3, "not valid TOML"),
])
def test_agent_with_a_bad_config_exits_2_naming_file_and_line(
        tmp_path: Path, content: str, line: int, needle: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(content)
    code, err = run_cli("--config", str(path), "agent", "--log-file", str(tmp_path / "a.log"))
    assert code == 2, err
    assert str(path) in err and f"line {line}" in err and needle in err
    assert "Traceback" not in err


def test_agent_without_a_server_exits_2(tmp_path: Path) -> None:
    code, err = run_cli("agent", "--log-file", str(tmp_path / "a.log"))
    assert code == 2, err
    assert "--server" in err and "Traceback" not in err


@dataclass
class AgentProcess:
    proc: asyncio.subprocess.Process
    port: int
    config: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and everything it wrote to stderr."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), 15)
        return await asyncio.wait_for(self.proc.wait(), 5), err.decode()


@pytest.fixture
async def agent_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AgentProcess]]]:
    started: list[AgentProcess] = []

    async def start(server: str, log_file: Path) -> AgentProcess:
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nidle_interval_s = 3600\n'
                          f'token_file = "{tmp_path / "state" / "api-token"}"\n')
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *NETPROBE, "--config", str(config), "agent", "--server", server,
            "--api-port", str(port), "--log-file", str(log_file),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
        started.append(AgentProcess(proc, port, config))
        return started[-1]

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


async def test_agent_with_a_server_that_is_not_a_url_exits_2(
        agent_process: Callable[..., Awaitable[AgentProcess]], tmp_path: Path) -> None:
    p = await agent_process("not-a-url", tmp_path / "agent.log")
    try:
        code = await asyncio.wait_for(p.proc.wait(), 3)
    except TimeoutError:
        raise AssertionError("the agent is running with --server not-a-url") from None
    assert p.proc.stderr is not None
    err = (await p.proc.stderr.read()).decode()
    assert code == 2 and "server" in err and "Traceback" not in err


async def get_status(http: aiohttp.ClientSession, p: AgentProcess) -> dict[str, Any] | None:
    assert p.proc.returncode is None, "the agent process exited"
    try:
        async with http.get(p.url("/v1/status")) as resp:
            return await resp.json() if resp.status == 200 else None  # type: ignore[no-any-return]
    except aiohttp.ClientConnectionError:
        return None


async def test_agent_process_serves_status_and_stops_cleanly_on_sigterm(
        reflector: Reflector, agent_process: Callable[..., Awaitable[AgentProcess]],
        tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "agent.log"
    p = await agent_process(reflector.url, log_file)
    async with aiohttp.ClientSession() as http:
        st = await until(lambda: get_status(http, p), 15, "the agent's API", interval=0.1)
        assert st["schema"] == "netprobe.status/1" and st["state"] == "idle"
        token_file = tmp_path / "state" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # stop it while its first idle check has a live peer connection to the reflector
        await until(lambda: any(s.pc.connectionState == "connected"
                                for s in reflector.sessions.values()), 10,
                    "the idle check to connect", interval=0.02)
        assert (await get_status(http, p) or {}).get("check_running")
    code, err = await p.stop()
    assert code == 0, err
    assert "Traceback" not in err and "Task was destroyed" not in err
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    names = [line["event"] for line in lines]
    assert names[0] == "agent_start" and lines[0]["api_port"] == p.port
    assert "check_started" in names
    assert names[-1] == "agent_stop" and lines[-1]["reason"] == "signal"
    assert all(line["ts"].endswith("Z") for line in lines)
    # the peer connection was closed, not left for the reflector to time out
    await until(lambda: not reflector.sessions, 5, "the reflector to see the client go")


def read_only_location(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        directory = tmp_path / "read-only"
        directory.mkdir()
        directory.chmod(0o555)
        return directory / "agent.log"
    if Path("/sys/kernel").is_dir():
        return Path("/sys/netprobe-test-agent.log")  # sysfs: not even root creates files there
    pytest.skip("no read-only location for root on this system")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
async def test_agent_with_an_unwritable_log_file_logs_to_stderr_and_runs(
        agent_process: Callable[..., Awaitable[AgentProcess]], tmp_path: Path,
        where: str) -> None:
    if where == "under_a_file":
        (tmp_path / "plain-file").write_text("")
        log_file = tmp_path / "plain-file" / "logs" / "agent.log"  # cannot be created
    else:
        log_file = read_only_location(tmp_path)
    p = await agent_process(f"http://127.0.0.1:{free_port()}", log_file)
    async with aiohttp.ClientSession() as http:
        st = await until(lambda: get_status(http, p), 15, "the agent's API", interval=0.1)
        assert st["schema"] == "netprobe.status/1"
    code, err = await p.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert not log_file.exists()
    json_lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [line for line in json_lines if line["event"] == "log_file_error"]
    assert len(failures) == 1, err
    assert failures[0]["path"] == str(log_file)
    assert re.fullmatch(r"E[A-Z]+", failures[0]["error"])
    names = [line["event"] for line in json_lines]
    assert "agent_start" in names and names[-1] == "agent_stop"

"""Several reflectors, live: real reflectors (in-process, and `netprobe serve` processes that
are killed), real aiortc checks and the agent's real monitoring streams over loopback. A check
moves on from a dead, busy or rate-limiting reflector and says `video` from the next; it does
not move on from a refused token; the agent's monitoring stream moves when its reflector
drains or dies, its recommendation unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import StartAgent, agents, events, until
from procs import free_port, serve, stop

from netprobe.config import ReflectorSettings, Settings
from netprobe.webrtc.client import run_check_attempts
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.signalling import ANSWER_CAP_S

SECRET = "s3cret-" + "y" * 40


@contextlib.asynccontextmanager
async def reflectors(*configs: dict[str, Any]) -> AsyncIterator[list[Reflector]]:
    started: list[Reflector] = []
    try:
        for config in configs:
            r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, **config))
            await r.start()
            started.append(r)
        yield started
    finally:
        for r in started:
            await r.stop()


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


async def valid_offer(url: str) -> int:
    """POST one real offer (to use up a rate limit); the HTTP status."""
    from netprobe.webrtc.engine import PacketTrack, create_peer_connection, prefer_test_codecs

    pc = create_peer_connection(())
    pc.addTransceiver(PacketTrack("audio"), direction="sendrecv")
    pc.addTransceiver(PacketTrack("video"), direction="sendrecv")
    prefer_test_codecs(pc)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http, http.post(
                url + "/v1/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}
        ) as resp:
            return resp.status
    finally:
        await pc.close()


def outcomes(attempts: tuple[Any, ...]) -> list[str]:
    return [a.outcome for a in attempts]


async def test_a_dead_first_reflector_moves_on_fast(loopback_ice: None,
                                                     settings: Settings) -> None:
    async with reflectors({}) as [good]:
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
        result, attempts = await run_check_attempts([dead, good.url], settings)
        assert result.verdict.verdict == "video", result.verdict
        assert outcomes(attempts) == ["unreachable", "answered"]
        assert [a.url for a in attempts] == [dead, good.url]
        with silent_listener() as hung:  # answers nothing: given up after ANSWER_CAP_S
            result, attempts = await run_check_attempts([hung, good.url], settings)
        assert result.verdict.verdict == "video", result.verdict
        assert outcomes(attempts) == ["unreachable", "answered"]
        assert ANSWER_CAP_S < result.duration_s < settings.probe.max_duration_s


@pytest.mark.parametrize("why", ["busy", "draining", "rate_limited"])
async def test_a_busy_or_rate_limiting_first_reflector_moves_on(
        loopback_ice: None, settings: Settings, why: str) -> None:
    config = {"busy": {"max_checks": 0}, "draining": {},
              "rate_limited": {"offers_per_minute": 0.01, "offer_burst": 1}}[why]
    async with reflectors(config, {}) as [first, good]:
        if why == "draining":
            first.draining = True
        if why == "rate_limited":
            assert await valid_offer(first.url) == 200  # the one offer of its burst
        result, attempts = await run_check_attempts([first.url, good.url], settings)
        assert result.verdict.verdict == "video", result.verdict
        assert outcomes(attempts) == [
            "rate_limited" if why == "rate_limited" else "busy", "answered"]
        if why != "busy":
            assert attempts[0].retry_after_s and attempts[0].retry_after_s > 0


async def test_every_reflector_failing_gives_the_most_telling_reason(
        loopback_ice: None, settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with reflectors({"max_checks": 0}) as [busy]:
        for order in ([dead, busy.url], [busy.url, dead]):
            result, attempts = await run_check_attempts(order, settings)
            assert result.verdict.verdict == "unknown"
            assert result.verdict.reasons[0].code == "server_busy", order
            assert len(attempts) == 2
    result, attempts = await run_check_attempts([dead, f"http://127.0.0.1:{free_port()}"],
                                                settings)
    assert [r.code for r in result.verdict.reasons] == ["server_unreachable"]
    assert outcomes(attempts) == ["unreachable", "unreachable"]


async def test_a_refused_token_does_not_move_on(loopback_ice: None, settings: Settings,
                                                tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"k1 = {SECRET}\n")
    secret.chmod(0o600)
    async with reflectors({"token_secret_file": str(secret)}, {}) as [secured, good]:
        result, attempts = await run_check_attempts(
            [secured.url, good.url], replace(settings, access_token="not-a-token"))
        assert result.verdict.verdict == "unknown"
        assert result.verdict.reasons[0].code == "unauthorized"
        assert outcomes(attempts) == ["denied"]  # the next one was not tried
        assert not good.sessions


# -- the agent -------------------------------------------------------------------------------


@pytest.fixture
async def start_agent(settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
                      ) -> AsyncIterator[StartAgent]:
    async with agents(settings, tmp_path, caplog) as start:
        yield start


async def test_the_monitoring_stream_moves_off_a_draining_reflector(
        loopback_ice: None, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    async with reflectors({}, {}) as pair:
        r = await start_agent((pair[0].url, pair[1].url))
        await r.until_status(lambda s: s["recommendation"] == "video", 20, "the first check")
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200

        def streaming() -> Reflector | None:
            return next((x for x in pair if x.admission.count("monitor")
                         and any(s.connected.is_set() for s in x.sessions.values())), None)
        current = await until(streaming, 15, "a monitoring stream")
        other = pair[1] if current is pair[0] else pair[0]
        await asyncio.sleep(2)  # a few windows on the first reflector
        for session in current.sessions.values():  # what drain() does
            session.responder.draining = True
        await until(lambda: other.admission.count("monitor") == 1, 15, "the stream to move")
        [moved] = events(caplog, "monitor_moved")
        assert moved.reason == "draining"  # type: ignore[attr-defined]
        await asyncio.sleep(3)
        st = await r.status()
        assert st["recommendation"] == "video" and st["reflector"] == "ok", st
        assert [e.to for e in events(caplog, "recommendation_changed")] == ["video"]  # type: ignore
        assert not events(caplog, "reflector_unreachable")


async def test_the_monitoring_stream_moves_off_a_killed_reflector(
        loopback_ice: None, start_agent: StartAgent, caplog: pytest.LogCaptureFixture) -> None:
    ports = [free_port(), free_port()]
    procs = [await serve(port, "--workers", "1") for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        r = await start_agent(tuple(urls))
        await r.until_status(lambda s: s["recommendation"] == "video", 20, "the first check")
        assert (await r.post("/v1/session", {"action": "start"}))[0] == 200

        async def monitors() -> list[int]:
            counts = []
            async with aiohttp.ClientSession() as http:
                for i, url in enumerate(urls):
                    if procs[i].returncode is not None:
                        counts.append(0)
                        continue
                    async with http.get(url + "/healthz") as resp:
                        counts.append((await resp.json())["monitors"])
            return counts

        counts = await until(lambda: _one_stream(monitors()), 15, "a monitoring stream")
        victim = counts.index(1)
        await asyncio.sleep(2)
        procs[victim].kill()  # no drain, no goodbye: the stream goes silent
        await procs[victim].wait()
        survivor = 1 - victim

        async def moved() -> bool:
            return (await monitors())[survivor] == 1
        await until(moved, 30, "the stream to move to the surviving reflector")
        [log] = events(caplog, "monitor_moved")
        assert log.reason in ("monitor_silent", "monitor_closed")  # type: ignore[attr-defined]
        assert log.from_reflector == victim + 1  # type: ignore[attr-defined]
        await asyncio.sleep(3)
        st = await r.status()
        assert st["recommendation"] == "video", st
        assert [e.to for e in events(caplog, "recommendation_changed")] == ["video"]  # type: ignore
    finally:
        for proc in procs:
            await stop(proc)


async def _one_stream(counts: Any) -> list[int] | None:
    got = await counts
    return got if sorted(got) == [0, 1] else None

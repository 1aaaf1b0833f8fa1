"""The probe engine against a real reflector and real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import web
from procs import free_port, serve, served, stop

from netprobe.config import ReflectorSettings, Settings
from netprobe.core.result import SCHEMA
from netprobe.webrtc.client import run_check
from netprobe.webrtc.reflector import Reflector


def _capped(settings: Settings, seconds: float) -> Settings:
    return replace(settings, probe=replace(settings.probe, max_duration_s=seconds,
                                           connect_timeout_s=seconds - 1))


async def test_loopback_check_says_video_with_sane_figures(reflector: Reflector,
                                                           settings: Settings) -> None:
    progress: list[object] = []
    result = await run_check(reflector.url, settings, on_progress=progress.append)
    m = result.metrics
    assert result.verdict.verdict == "video", result.verdict
    assert m.connected
    assert m.rtt_ms is not None and 0 < m.rtt_ms < 50
    for d in (m.up, m.down):
        assert d.loss_pct is not None and d.loss_pct < 1.0
        assert d.jitter_ms is not None and d.jitter_ms < 20
        # loopback carries the whole ladder: the top rung passes in both directions
        assert d.kbps_at_least and d.kbps is not None
        assert d.kbps >= 0.9 * settings.probe.ladder_kbps[-1]
        assert d.packets > 100
    assert m.mos_audio is not None and m.mos_audio > 4.0
    assert result.duration_s < settings.probe.max_duration_s
    assert [r["passed"] for r in result.ladder["up"]] == [True] * len(settings.probe.ladder_kbps)
    assert "connecting" in progress and len(progress) > 5
    doc = result.to_json()
    assert doc["schema"] == SCHEMA and doc["server"] is None  # no address unless asked
    # the reflector closed the session once the client hung up
    for _ in range(50):
        if not reflector.sessions:
            break
        await asyncio.sleep(0.1)
    assert not reflector.sessions


async def test_server_address_only_reported_when_configured(reflector: Reflector,
                                                            settings: Settings) -> None:
    # A check that reached the reflector (the default case, unconfigured, is in the first
    # test) and one that did not: both name the server once log_addresses is set.
    settings = replace(settings, privacy=replace(settings.privacy, log_addresses=True))
    measured = await run_check(reflector.url, _capped(settings, 3))
    assert measured.metrics.connected
    assert measured.to_json()["server"] == reflector.url
    unreachable = f"http://127.0.0.1:{free_port()}"
    failed = await run_check(unreachable, _capped(settings, 3))
    assert failed.verdict.reasons[0].code == "server_unreachable"
    assert failed.to_json()["server"] == unreachable
    default = await run_check(unreachable, _capped(replace(
        settings, privacy=replace(settings.privacy, log_addresses=False)), 3))
    assert default.to_json()["server"] is None


async def test_unreachable_server_gives_unknown_quickly(settings: Settings) -> None:
    t0 = time.monotonic()
    result = await run_check(f"http://127.0.0.1:{free_port()}", settings)
    assert result.verdict.verdict == "unknown"
    assert result.verdict.reasons[0].code == "server_unreachable"
    assert not result.metrics.connected
    assert time.monotonic() - t0 < 5


async def test_bad_url_gives_unknown(settings: Settings) -> None:
    result = await run_check("not a url", _capped(settings, 3))
    assert result.verdict.verdict == "unknown"
    assert result.verdict.reasons[0].code == "server_unreachable"


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts TCP connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_silent_server_times_out_within_cap(silent_server: str, settings: Settings) -> None:
    t0 = time.monotonic()
    result = await run_check(silent_server, _capped(settings, 3))
    took = time.monotonic() - t0
    assert result.verdict.verdict == "unknown"
    assert result.verdict.reasons[0].code == "connect_timeout"
    assert took <= 3.5


@pytest.fixture
async def garbage_server() -> AsyncIterator[str]:
    """Answers offers with 200 and a body that is not an SDP answer."""
    async def offer(request: web.Request) -> web.Response:
        return web.json_response({"sdp": "v=0\r\nnonsense", "type": "answer"})

    app = web.Application()
    app.router.add_post("/v1/offer", offer)
    runner, url = await served(app)
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_garbage_answer_gives_unknown(garbage_server: str, settings: Settings) -> None:
    result = await run_check(garbage_server, _capped(settings, 4))
    assert result.verdict.verdict == "unknown"
    assert result.verdict.reasons[0].code == "server_unreachable"


async def test_busy_reflector_gives_server_busy(loopback_ice: None, settings: Settings) -> None:
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, max_sessions=1))
    await r.start()
    try:
        first = asyncio.create_task(run_check(r.url, settings))
        for _ in range(100):
            if r.sessions:
                break
            await asyncio.sleep(0.02)
        second = await run_check(r.url, _capped(settings, 3))
        assert second.verdict.verdict == "unknown"
        assert second.verdict.reasons[0].code == "server_busy"
        assert (await first).verdict.verdict == "video"
    finally:
        await r.stop()


async def test_two_concurrent_checks_are_measured_apart(loopback_ice: None,
                                                        settings: Settings) -> None:
    # The reflector runs in its own process, as a clinic's does: one event loop hosting it
    # and both clients (six 3.2 Mbit/s streams) would be the bottleneck on a busy 2-core
    # machine, and would be measured instead of the link.
    port = free_port()
    server = await serve(port)
    try:
        url = f"http://127.0.0.1:{port}"
        a, b = await asyncio.gather(run_check(url, settings), run_check(url, settings))
    finally:
        err = await stop(server)
    assert server.returncode == 0 and b"Traceback" not in err, err.decode()
    for result in (a, b):
        assert result.verdict.verdict == "video", result.to_json()
        # Mixed-up sessions would show as lost or duplicated sequence numbers.
        assert result.metrics.up.loss_pct is not None and result.metrics.up.loss_pct < 2
        assert result.metrics.down.loss_pct is not None and result.metrics.down.loss_pct < 2

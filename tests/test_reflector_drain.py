"""Graceful drain on SIGTERM, against real `netprobe serve` processes and real aiortc clients:
a running check still ends `video`, a new offer gets 503 `draining`, `/healthz` says
`draining`, a monitoring client sees the drain flag in its echoes, and the process exits 0
within the drain timeout; a second SIGTERM stops it at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from agent_support import until
from offers import offer_sdp
from procs import free_port, serve

from netprobe.config import Settings
from netprobe.core.session import Progress
from netprobe.webrtc.client import MonitorLink, run_check

pytestmark = pytest.mark.timeout(90)


async def post_offer(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        body = {"sdp": await offer_sdp(), "type": "offer"}
        async with http.post(url + "/v1/offer", json=body) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_drains_checks_finish_monitors_told_new_offers_refused(
        settings: Settings, loopback_ice: None, workers: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await serve(port, "--workers", workers, "--drain-timeout", "15")
    flags: list[bool] = []
    link = MonitorLink(url, settings, 0.05, lambda echo, now: flags.append(echo.draining))
    try:
        await link.connect(10)
        await until(lambda: len(flags) > 5, 5, "monitoring echoes")
        assert not any(flags)
        measuring = asyncio.Event()

        def progress(p: Progress | str) -> None:
            if not isinstance(p, str):
                measuring.set()

        check = asyncio.create_task(run_check(url, settings, on_progress=progress))
        await asyncio.wait_for(measuring.wait(), 10)
        proc.terminate()
        stopped_at = time.monotonic()
        await until(lambda: any(flags), 5, "an echo with the drain flag")
        status, body, headers = await post_offer(url)
        assert (status, body["error"]["code"]) == (503, "draining"), body
        assert int(headers["Retry-After"]) > 0
        status, doc = await health(url)
        assert (status, doc["status"]) == (503, "draining")
        result = await check
        assert result.verdict.verdict == "video", result.verdict.reasons
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        took = time.monotonic() - stopped_at
    finally:
        await link.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert took < 15 + 5, took
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    events = [x["event"] for x in lines]
    assert "reflector_draining" in events and events[-1] == "reflector_stopped", events
    ended = [x for x in lines if x["event"] == "probe_session_ended" and x["kind"] == "check"]
    assert [x["reason"] for x in ended] == ["closed"]  # the check ended itself, not cut off


async def test_a_second_sigterm_stops_at_once(settings: Settings, loopback_ice: None) -> None:
    port = free_port()
    proc = await serve(port, "--workers", "1", "--drain-timeout", "60")
    url = f"http://127.0.0.1:{port}"
    try:
        status, _, _ = await post_offer(url)  # a check that never connects holds the drain
        assert status == 200
        proc.terminate()
        await until(lambda: _draining(url), 5, "draining")
        started = time.monotonic()
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and time.monotonic() - started < 5, err.decode()
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    stopped = [x for x in lines if x["event"] == "reflector_stopped"]
    assert stopped and stopped[0]["reason"] == "second_signal", lines
    ended = [x["reason"] for x in lines if x["event"] == "probe_session_ended"]
    assert ended == ["shutdown"], ended


async def _draining(url: str) -> bool:
    try:
        status, doc = await health(url)
    except aiohttp.ClientError:
        return False
    return status == 503 and doc["status"] == "draining"

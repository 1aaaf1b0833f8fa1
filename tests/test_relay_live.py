"""The relay paths end to end on loopback: a real coturn (started here), a real reflector that
hands out its credentials, real aiortc peers, and signalling through a proxy that makes the
direct path fail as a network that blocks UDP would (the candidates of an offer with host
candidates, and of its answer, point at a black hole). The same over an emulated link with
UDP really dropped: tests/lab/test_relay_lab.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from coturn_support import Coturn, coturn
from procs import free_port, secret_file

from netprobe.config import ReflectorSettings, Settings
from netprobe.webrtc.client import MonitorLink, run_check
from netprobe.webrtc.reflector import Reflector

TURN_SECRET = "relay-" + "r" * 32


@pytest.fixture
async def turn(tmp_path: Path) -> AsyncIterator[Coturn]:
    async with coturn(tmp_path, TURN_SECRET) as server:
        yield server


class BlockingProxy:
    """Signalling to `target`; an offer with host candidates (the direct path) has them, and
    its answer's, pointed at `hole`; a relay-only offer passes unchanged."""

    def __init__(self, target: str, hole: int) -> None:
        self.target, self.hole = target, hole
        self.offers: list[str] = []

    def _hide(self, sdp: str) -> str:
        return re.sub(r"(a=candidate:\S+ \d+ udp \d+ \S+) \d+ (typ host)", rf"\1 {self.hole} \2",
                      sdp, flags=re.IGNORECASE)

    async def offer(self, request: web.Request) -> web.Response:
        offer = await request.json()
        direct = " typ host" in offer["sdp"]
        self.offers.append("direct" if direct else "relay")
        if direct:
            offer["sdp"] = self._hide(offer["sdp"])
        async with aiohttp.ClientSession() as http, \
                http.post(self.target + "/v1/offer", json=offer) as resp:
            body = await resp.json()
            status = resp.status
        if direct and status == 200:
            body["sdp"] = self._hide(body["sdp"])
        return web.json_response(body, status=status)


@pytest.fixture
async def relayed(loopback_ice: None, tmp_path: Path, turn: Coturn, black_hole: int,
                  request: pytest.FixtureRequest) -> AsyncIterator[tuple[BlockingProxy, str]]:
    urls, secret = getattr(request, "param", (("tcp",), TURN_SECRET))
    reflector = Reflector(ReflectorSettings(
        host="127.0.0.1", port=0, turn_urls=tuple(turn.url(u) for u in urls),
        turn_secret_file=str(secret_file(tmp_path / "turn-secret", secret + "\n"))))
    await reflector.start()
    proxy = BlockingProxy(reflector.url, black_hole)
    app = web.Application()
    app.router.add_post("/v1/offer", proxy.offer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await reflector.stop()


@pytest.mark.parametrize("relayed", [(("tcp",), TURN_SECRET)], indirect=True)
async def test_udp_blocked_check_measures_over_turn_tcp(
        relayed: tuple[BlockingProxy, str], settings: Settings) -> None:
    proxy, url = relayed
    doc = (await run_check(url, settings)).to_json()
    assert doc["path"] == "relay_tcp", doc["paths_tried"]
    assert doc["verdict"] == "video", doc["reasons"]
    assert doc["connect"]["local_candidate"] == "relay"
    assert [t["path"] for t in doc["paths_tried"]] == ["direct", "relay_tcp"]
    assert doc["paths_tried"][0]["outcome"] == "udp_blocked"
    assert "udp_blocked" in [r["code"] for r in doc["reasons"]]
    assert proxy.offers == ["direct", "relay"]
    assert doc["metrics"]["up"]["kbps"] and doc["metrics"]["down"]["kbps"]


@pytest.mark.parametrize("relayed", [(("udp", "tcp"), TURN_SECRET)], indirect=True)
async def test_turn_over_udp_is_preferred_when_it_allocates(
        relayed: tuple[BlockingProxy, str], settings: Settings) -> None:
    _, url = relayed
    doc = (await run_check(url, settings)).to_json()
    assert doc["path"] == "relay_udp", doc["paths_tried"]
    assert doc["connect"]["local_candidate"] == "relay"
    assert "relayed" in [r["code"] for r in doc["reasons"]]


@pytest.mark.parametrize("relayed", [(("udp", "tcp"), "wrong-" + "w" * 32)], indirect=True)
async def test_refused_credentials_fall_through_to_udp_blocked(
        relayed: tuple[BlockingProxy, str], settings: Settings) -> None:
    proxy, url = relayed
    doc = (await run_check(url, settings)).to_json()
    assert doc["verdict"] == "unknown" and doc["reasons"][0]["code"] == "udp_blocked"
    tried = {t["path"]: t for t in doc["paths_tried"]}
    assert tried["relay_udp"]["outcome"] == "refused"
    assert tried["relay_tcp"]["outcome"] == "refused"
    assert "credentials" in tried["relay_tcp"]["detail"]
    assert proxy.offers == ["direct"]


@pytest.mark.parametrize("relayed", [(("tcp",), TURN_SECRET)], indirect=True)
async def test_the_monitoring_stream_also_falls_back_to_the_relay(
        relayed: tuple[BlockingProxy, str], settings: Settings) -> None:
    _, url = relayed
    echoes: list[float] = []
    link = MonitorLink(url, replace(settings), 0.05, lambda echo, now: echoes.append(now))
    await link.connect(10.0)
    try:
        assert link.path == "relay_tcp"
        await asyncio.sleep(1.0)
        assert len(echoes) >= 5, link.state
    finally:
        await link.close()

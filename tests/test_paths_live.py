"""Paths (webrtc/paths.py) with real aiortc peers and a real reflector on loopback: the direct
path and its evidence, and a reflector whose media never answers (UDP "blocked"), with relays
that are unreachable or silent. The relay itself, with coturn, is tested in the lab
(tests/lab/test_relay_lab.py) and with a loopback coturn (tests/test_turn_credentials.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from procs import free_port

from netprobe.config import IceServer, Settings
from netprobe.core.connect import MIN_BLOCKED_SENT
from netprobe.webrtc.client import run_check
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.relays import relay_kind, relay_servers
from netprobe.webrtc.tcpprobe import TcpProber


async def test_a_direct_check_says_its_path_and_evidence(reflector: Reflector,
                                                         settings: Settings) -> None:
    result = await run_check(reflector.url, settings)
    doc = result.to_json()
    assert doc["verdict"] == "video"
    assert doc["path"] == "direct"
    assert doc["paths_tried"] == [{"path": "direct", "outcome": "connected"}]
    assert doc["connect"]["local_candidate"] == "host"
    assert doc["connect"]["remote_candidate"] == "host"
    assert doc["connect"]["stun_answered"] > 0 or doc["connect"]["udp_from_server"] > 0
    assert doc["tcp"] is None
    assert not [r for r in doc["reasons"] if r["code"] in ("udp_blocked", "relayed")]


class _Proxy:
    """Signalling to a real reflector, but the candidates of the offer and of the answer point
    at `hole`: neither side's UDP reaches the other, as on a network that blocks UDP. Adds
    `ice_servers` to the answer."""

    def __init__(self, target: str, hole: int, ice_servers: list[dict[str, Any]]) -> None:
        self.target, self.hole, self.ice_servers = target, hole, ice_servers
        self.offers = 0

    def _hide(self, sdp: str) -> str:
        return re.sub(r"(a=candidate:\S+ \d+ udp \d+ \S+) \d+ ", rf"\1 {self.hole} ", sdp,
                      flags=re.IGNORECASE)

    async def offer(self, request: web.Request) -> web.Response:
        self.offers += 1
        offer = await request.json()
        offer["sdp"] = self._hide(offer["sdp"])  # neither side's checks reach the other
        async with aiohttp.ClientSession() as http, \
                http.post(self.target + "/v1/offer", json=offer) as resp:
            body = await resp.json()
        body["sdp"] = self._hide(body["sdp"])
        body["ice_servers"] = self.ice_servers
        return web.json_response(body)


async def _serve_proxy(proxy: _Proxy) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/offer", proxy.offer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def blocked(reflector: Reflector, black_hole: int) -> AsyncIterator[_Proxy]:
    closed_tcp = free_port()
    proxy = _Proxy(reflector.url, black_hole, [
        {"urls": f"turn:127.0.0.1:{black_hole}?transport=udp", "username": "1:x",
         "credential": "y"},
        {"urls": f"turn:127.0.0.1:{closed_tcp}?transport=tcp", "username": "1:x",
         "credential": "y"},
        {"urls": "not a url", "username": "u", "credential": "c"},
        "garbage",
    ])
    runner, proxy.url = await _serve_proxy(proxy)  # type: ignore[attr-defined]
    try:
        yield proxy
    finally:
        await runner.cleanup()


async def test_udp_blocked_is_found_in_seconds_and_each_relay_is_tried(
        blocked: _Proxy, settings: Settings) -> None:
    result = await run_check(blocked.url, settings)  # type: ignore[attr-defined]
    doc = result.to_json()
    assert doc["verdict"] == "unknown"
    assert doc["reasons"][0]["code"] == "udp_blocked"
    assert "blocks the kind of connection video calls use" in doc["reasons"][0]["message"]
    assert doc["path"] is None
    # well before the 12 s connect timeout: the window is 2 s, a silent relay gets 3.5 s
    assert doc["duration_s"] < settings.probe.connect_timeout_s - 2
    assert doc["connect"]["udp_from_server"] == 0
    assert doc["connect"]["stun_sent"] >= MIN_BLOCKED_SENT
    tried = {t["path"]: t for t in doc["paths_tried"]}
    assert tried["direct"]["outcome"] == "udp_blocked"
    assert tried["relay_udp"]["outcome"] == "timeout"
    assert tried["relay_tcp"]["outcome"] == "unreachable"
    assert "relay_tls" not in tried
    assert blocked.offers == 1  # no relay allocated, so no second offer
    # the TCP speed test ran against the proxy, which serves none: an error, not figures
    assert doc["tcp"] is not None and doc["tcp"].get("error")


async def test_a_check_without_relays_says_udp_blocked_sooner(
        reflector: Reflector, black_hole: int, settings: Settings) -> None:
    proxy = _Proxy(reflector.url, black_hole, [])
    runner, url = await _serve_proxy(proxy)
    try:
        doc = (await run_check(url, settings)).to_json()
    finally:
        await runner.cleanup()
    assert doc["verdict"] == "unknown" and doc["reasons"][0]["code"] == "udp_blocked"
    assert doc["paths_tried"] == [{"path": "direct", "outcome": "udp_blocked"}]


def test_relay_kinds_and_the_order_of_sources(settings: Settings) -> None:
    assert relay_kind(IceServer("turns:relay.example:443?transport=tcp")) == "relay_tls"
    assert relay_kind(IceServer("turn:relay.example:3478?transport=tcp")) == "relay_tcp"
    assert relay_kind(IceServer("turn:relay.example:3478")) == "relay_udp"
    assert relay_kind(IceServer("stun:stun.example:3478")) is None
    local = replace(settings, probe=replace(settings.probe, ice_servers=(
        IceServer("turn:local.example:3478?transport=tcp", "lu", "lp"),)))
    body = {"ice_servers": [
        {"urls": "turn:clinic.example:3478?transport=tcp", "username": "u", "credential": "c"},
        {"urls": ["turn:clinic.example:3478"], "username": "u", "credential": "c"},
        {"urls": "turn:clinic.example:3478", "username": 5, "credential": "c"},
        {"urls": "turn:" + "x" * 600, "username": "u", "credential": "c"},
    ]}
    found = relay_servers(local, body)
    assert found["relay_tcp"].urls == "turn:local.example:3478?transport=tcp"  # local first
    assert found["relay_udp"].urls == "turn:clinic.example:3478"
    assert set(found) == {"relay_tcp", "relay_udp"}
    assert relay_servers(settings, {"ice_servers": "nonsense"}) == {}
    assert relay_servers(settings, {}) == {}


async def test_tcp_handshakes_count_first_tries_and_ignore_a_closed_port() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    prober = TcpProber(f"http://127.0.0.1:{port}")
    prober.start()
    await asyncio.sleep(1.5)
    await prober.stop()
    evidence = prober.evidence(time.monotonic())
    server.close()
    await server.wait_closed()
    assert evidence.sent >= 10 and evidence.answered >= evidence.sent - 2
    assert evidence.rtt_ms is not None and evidence.rtt_ms < 100
    closed = TcpProber(f"http://127.0.0.1:{free_port()}")
    closed.start()
    await asyncio.sleep(0.5)
    await closed.stop()
    refused = closed.evidence(time.monotonic())
    assert refused.answered == 0 and refused.settled == 0  # refusals are not loss


def test_the_text_report_names_a_relay_path() -> None:
    from datetime import UTC, datetime

    from netprobe.cli.report import render_text
    from netprobe.core.classify import Verdict, classify
    from netprobe.core.connect import relayed_reason
    from netprobe.core.metrics import DirectionMetrics, LinkMetrics
    from netprobe.core.result import CheckResult

    d = DirectionMetrics(kbps=3200, kbps_at_least=True, loss_pct=0.0, jitter_ms=2, packets=900)
    m = LinkMetrics(connected=True, rtt_ms=30, up=d, down=d, mos_audio=4.3)
    v = classify(m)
    note = relayed_reason("relay_tls")
    assert note is not None
    result = CheckResult(Verdict(v.verdict, v.confidence, (*v.reasons, note)), m,
                         datetime.now(UTC), 5.0, path="relay_tls")
    text = render_text(result)
    assert "through the clinic's relay, over an encrypted web connection" in text
    assert "blocks the usual path for video calls" in text
    assert "Path" not in render_text(CheckResult(v, m, datetime.now(UTC), 5.0, path="direct"))


async def test_relays_that_answer_garbage_are_recorded_and_passed_over(
        reflector: Reflector, black_hole: int, settings: Settings) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 this is not TURN, nor TLS\r\n\r\n" * 50)
        await writer.drain()
        await reader.read(65536)  # until the client gives up
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = _Proxy(reflector.url, black_hole, [
        {"urls": f"turn:127.0.0.1:{port}?transport=tcp", "username": "1:x", "credential": "y"},
        {"urls": f"turns:127.0.0.1:{port}?transport=tcp", "username": "1:x",
         "credential": "y"},
    ])
    runner, url = await _serve_proxy(proxy)
    try:
        doc = (await run_check(url, settings)).to_json()
    finally:
        await runner.cleanup()
        server.close()
    assert doc["verdict"] == "unknown" and doc["reasons"][0]["code"] == "udp_blocked"
    tried = {t["path"]: t for t in doc["paths_tried"]}
    assert tried["relay_tcp"]["outcome"] in ("garbage", "timeout", "unreachable")
    assert tried["relay_tls"]["outcome"] == "tls_error"
    assert all(t.get("detail") for t in doc["paths_tried"][1:])

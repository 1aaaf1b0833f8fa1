"""The reflector never dies from one request: bad input gets a 4xx JSON error."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import aiohttp
import aioice.ice
import pytest
from offers import offer_sdp

from netprobe.config import IceServer, ReflectorSettings
from netprobe.errors import CannotListen, ConfigError, NetprobeError
from netprobe.webrtc.engine import (
    create_peer_connection,
    restrict_to_loopback_if_local,
)
from netprobe.webrtc.reflector import Reflector


async def _post(url: str, **kwargs: object) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/offer", **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.json(content_type=None)


def _assert_error(status: int, body: object, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def _healthy(r: Reflector) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(r.url + "/healthz") as resp:
            assert resp.status == 200
            return await resp.json()


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "bad_json"),
        ({"data": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}, 400,
         "bad_json"),
        ({"data": b"NaN", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
        ({"json": [1, 2, 3]}, 400, "bad_request"),
        ({"json": {"sdp": "v=0\r\n", "type": "answer"}}, 400, "bad_request"),
        ({"json": {"sdp": 42, "type": "offer"}}, 400, "bad_request"),
        ({"json": {"type": "offer"}}, 400, "bad_request"),
        ({"json": {"sdp": "hello", "type": "offer"}}, 400, "bad_request"),
        ({"json": {"sdp": "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=garbage\r\n", "type": "offer"}},
         400, "bad_sdp"),
        ({"json": {"sdp": "v=0\r\n" + "a=x\r\n" * 7000, "type": "offer"}}, 400,
         "bad_request"),
        ({"data": b"sdp=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         415, "unsupported_media_type"),
        ({"data": b"x" * 200_000, "headers": {"Content-Type": "application/json"}}, 413,
         "body_too_large"),
    ],
)
async def test_bad_offers_get_json_errors(reflector: Reflector, kwargs: dict, status: int,
                                          code: str) -> None:
    got_status, body = await _post(reflector.url, **kwargs)
    _assert_error(got_status, body, status, code)
    health = await _healthy(reflector)
    assert health["sessions"] == 0  # nothing leaked


async def test_offer_without_video_is_rejected(reflector: Reflector) -> None:
    pc = create_peer_connection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    status, body = await _post(reflector.url, json={"sdp": sdp, "type": "offer"})
    _assert_error(status, body, 400, "bad_sdp")
    assert (await _healthy(reflector))["sessions"] == 0


async def test_wrong_method_and_path(reflector: Reflector) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(reflector.url + "/v1/offer") as resp:
            _assert_error(resp.status, await resp.json(), 405, "method_not_allowed")
        async with http.delete(reflector.url + "/healthz") as resp:
            _assert_error(resp.status, await resp.json(), 405, "method_not_allowed")
        async with http.get(reflector.url + "/nope") as resp:
            _assert_error(resp.status, await resp.json(), 404, "not_found")


async def test_valid_offer_gets_answer_and_session_counted(reflector: Reflector) -> None:
    status, body = await _post(reflector.url, json={"sdp": await offer_sdp(), "type": "offer"})
    assert status == 200, body
    assert isinstance(body, dict) and body["type"] == "answer" and body["sdp"].startswith("v=0")
    assert (await _healthy(reflector))["sessions"] == 1


async def test_session_cap_gives_503_and_time_limit_frees_it(loopback_ice: None) -> None:
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, max_sessions=2,
                                    session_timeout_s=1.0))
    await r.start()
    try:
        for _ in range(2):
            status, _ = await _post(r.url, json={"sdp": await offer_sdp(), "type": "offer"})
            assert status == 200
        status, body = await _post(r.url, json={"sdp": await offer_sdp(), "type": "offer"})
        _assert_error(status, body, 503, "busy")
        # The offers never connect; the hard time limit must close them.
        for _ in range(40):
            if (await _healthy(r))["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await _healthy(r))["sessions"] == 0
        status, _ = await _post(r.url, json={"sdp": await offer_sdp(), "type": "offer"})
        assert status == 200
    finally:
        await r.stop()
    assert r.sessions == {}


async def test_many_concurrent_bad_requests_do_not_hurt(reflector: Reflector) -> None:
    async def one(i: int) -> int:
        status, _ = await _post(reflector.url, data=json.dumps({"sdp": "v=0 " * i,
                                                                "type": "offer"}),
                                headers={"Content-Type": "application/json"})
        return status

    statuses = await asyncio.gather(*(one(i) for i in range(50)))
    assert set(statuses) == {400}
    assert (await _healthy(reflector))["status"] == "ok"


async def test_stop_closes_open_sessions(loopback_ice: None) -> None:
    r = Reflector(replace(ReflectorSettings(), host="127.0.0.1", port=0))
    await r.start()
    status, _ = await _post(r.url, json={"sdp": await offer_sdp(), "type": "offer"})
    assert status == 200
    sessions = list(r.sessions.values())
    await r.stop()
    assert r.sessions == {}
    assert all(s.pc.connectionState == "closed" for s in sessions)


async def test_a_port_in_use_raises_cannot_listen_and_leaves_nothing_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = Reflector(ReflectorSettings(host="127.0.0.1", port=port))
        with pytest.raises(CannotListen, match=f"127.0.0.1:{port}: the port is already in use"):
            await r.start()
        await r.stop()  # nothing to stop, and no error
    assert issubclass(CannotListen, NetprobeError)


async def test_an_address_not_ours_raises_cannot_listen() -> None:
    r = Reflector(ReflectorSettings(host="192.0.2.1", port=0))
    with pytest.raises(CannotListen, match="cannot listen on 192.0.2.1:"):
        await r.start()


# ------------------------------------------------------------------------ the loopback rule


@pytest.mark.parametrize(("address", "candidates"), [
    ("http://127.0.0.1:8765", ["127.0.0.1"]),
    ("https://localhost:8765/", ["127.0.0.1"]),
    ("http://[::1]:8765", ["::1"]),
    ("127.0.0.2", ["127.0.0.2"]),  # a reflector's listen address (`serve --host`)
    ("localhost", ["127.0.0.1"]),
    ("::1", ["::1"]),
    ("http://192.0.2.1:8765", None),
    ("http://reflector.example:8765", None),
    ("0.0.0.0", None),
    ("http://[::1", None),  # not a URL: not this machine either, and no exception
])
def test_loopback_rule(monkeypatch: pytest.MonkeyPatch, address: str,
                       candidates: list[str] | None) -> None:
    def untouched(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["192.0.2.50"]

    monkeypatch.setattr(aioice.ice, "get_host_addresses", untouched)  # restored after the test
    assert restrict_to_loopback_if_local(address) is (candidates is not None)
    gathered = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    assert gathered == (candidates or ["192.0.2.50"])


def test_an_ice_url_aiortc_cannot_parse_is_a_config_error() -> None:
    # The loader refuses these first; this is the boundary for callers that build settings
    # in code (aiortc itself raises a bare ValueError later, outside any handler).
    with pytest.raises(ConfigError, match="'http://stun.example.org'"):
        create_peer_connection((IceServer("http://stun.example.org"),))

"""The agent's local API and its security (the real AgentApi over real HTTP, in front of a
real agent whose loops are not started: no session or check runs)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
from agent_support import ORIGIN, FakeSampler, events

from netprobe.agent.api import AgentApi
from netprobe.agent.app import Agent
from netprobe.config import Settings, load_settings
from netprobe.errors import ConfigError


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
        "api_token_file": str(tmp_path / "state" / "netprobe" / "api-token")},
        sampler=FakeSampler())
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
    assert api.api.agent.status()["state"] == "idle"


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
    assert api.api.agent.status()["state"] == "idle"
    assert not api.api.agent.status()["check_running"]


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
    assert api.api.agent.status()["state"] == "idle"


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
    assert api.api.agent.status()["state"] == "idle"


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
                                       "api_token_file": str(path)}, sampler=FakeSampler())
    assert AgentApi(agent).token == "k" * 43  # the token survives; only its mode changes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_too_short_token_is_replaced(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("guessable\n")
    agent = Agent(settings, overrides={"server": "http://127.0.0.1:9",
                                       "api_token_file": str(path)}, sampler=FakeSampler())
    token = AgentApi(agent).token
    assert token != "guessable" and len(token) >= 32
    assert path.read_text().strip() == token and stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_api_listens_on_loopback_only(api: Api) -> None:
    assert api.api.addresses
    assert all(address[0] == "127.0.0.1" for address in api.api.addresses)
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


"""TURN credentials from the reflector (docs/reflector.md, "TURN relay"): a real coturn process
on loopback started by the test (`--use-auth-secret`), a real reflector (in-process, and
`netprobe serve` processes), allocations made with aioice's own TURN client over UDP and TCP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import until
from aioice import stun
from aioice.turn import create_turn_endpoint
from coturn_support import Coturn, coturn
from offers import offer_sdp
from procs import CHILD_ENV, NETPROBE, free_port, secret_file

from netprobe.config import ReflectorSettings
from netprobe.errors import ConfigError
from netprobe.tokens import issue, load_keys
from netprobe.turncreds import (
    MONITOR_MARGIN_S,
    credential,
    lifetime_s,
    load_turn_secret,
    parse_turn_secret,
    password_for,
)
from netprobe.webrtc.reflector import Reflector

TURN_SECRET = "turn-" + "t" * 32
TOKEN_SECRET = "s3cret-" + "x" * 40


@pytest.fixture
async def turn(tmp_path: Path) -> AsyncIterator[Coturn]:
    async with coturn(tmp_path, TURN_SECRET) as server:
        yield server


async def secured(tmp_path: Path, server: Coturn, turn_secret: str = TURN_SECRET,
                  **changes: Any) -> Reflector:
    settings = ReflectorSettings(**{
        "host": "127.0.0.1", "port": 0,
        "token_secret_file": str(secret_file(tmp_path / "tokens", f"k1 = {TOKEN_SECRET}\n")),
        "turn_urls": (server.url("udp"), server.url("tcp")),
        "turn_secret_file": str(secret_file(tmp_path / "turn-secret", turn_secret + "\n")),
        **changes})
    r = Reflector(settings)
    await r.start()
    return r


def token(tmp_path: Path, scope: str = "check") -> str:
    return issue(load_keys(tmp_path / "tokens"), scope, time.time())


async def allocate(entry: dict[str, str]) -> tuple[str, int]:
    """Allocate on `entry` (an `ice_servers` entry) as a client does (aioice), release it, and
    return the relayed address; raises what aioice raises."""
    host, port = entry["urls"].split(":")[1], entry["urls"].split(":")[2].split("?")[0]
    transport = "tcp" if "transport=tcp" in entry["urls"] else "udp"
    relay, _ = await asyncio.wait_for(create_turn_endpoint(
        asyncio.DatagramProtocol, (host, int(port)), entry["username"], entry["credential"],
        transport=transport), 10)
    address = relay.get_extra_info("sockname")
    relay.close()
    await asyncio.sleep(0.2)  # the allocation's deletion
    return address


async def get_ice(url: str, bearer: str | None, query: str = "") -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with aiohttp.ClientSession() as http, \
            http.get(url + "/v1/ice" + query, headers=headers) as resp:
        return resp.status, await resp.json()


# ------------------------------------------------------------------------ the credentials, pure


def test_a_credential_is_expiry_and_a_random_id_signed_with_hmac_sha1() -> None:
    secret = parse_turn_secret(TURN_SECRET, "test")
    username, password = credential(secret, 1_800_000_000.4, 600)
    assert re.fullmatch(r"1800000600:[0-9a-f]{16}", username)
    assert credential(secret, 1_800_000_000, 600)[0] != username  # a new random id each time
    # RFC 2104 HMAC-SHA1 test vector 2 (key "Jefe"), base64: the scheme coturn checks
    jefe = replace(secret, value=b"Jefe")
    assert password_for(jefe, "what do ya want for nothing?") == "7/zfauXrL6LSdBbV8YTfnCWafHk="
    assert password == password_for(secret, username)
    assert lifetime_s("check", 600, 14400) == 600
    assert lifetime_s("monitor", 600, 14400) == 14400 + MONITOR_MARGIN_S


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), ("\n \n", "empty"), ("a" * 20 + "\n" + "b" * 20, "one line"),
    ("short", "at least 16"), ("static-auth-secret=" + "a" * 20, "the secret alone"),
    ("abc def ghi jkl mno", "blanks")])
def test_a_bad_turn_secret_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_turn_secret(text, "turn-secret")


def test_a_turn_secret_file_others_can_read_or_that_is_missing_is_refused(tmp_path: Path
                                                                        ) -> None:
    path = secret_file(tmp_path / "turn", TURN_SECRET)
    assert load_turn_secret(path).value == TURN_SECRET.encode()
    assert TURN_SECRET not in repr(load_turn_secret(path))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_turn_secret(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_turn_secret(tmp_path / "missing")


# ------------------------------------------------------------------------ against coturn


async def test_credentials_from_ice_and_from_the_answer_are_accepted_by_coturn(
        loopback_ice: None, tmp_path: Path, turn: Coturn) -> None:
    r = await secured(tmp_path, turn)
    try:
        status, body = await get_ice(r.url, None)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        check = token(tmp_path)
        status, body = await get_ice(r.url, check)
        assert status == 200, body
        assert [e["urls"] for e in body["ice_servers"]] == [turn.url("udp"), turn.url("tcp")]
        assert body["ttl_s"] == 600
        for entry in body["ice_servers"]:
            assert (await allocate(entry))[0] == "127.0.0.1"
        # the offer's answer carries them too, and a spent check token still gets /v1/ice
        async with aiohttp.ClientSession() as http, http.post(
                r.url + "/v1/offer", headers={"Authorization": f"Bearer {check}"},
                json={"sdp": await offer_sdp(), "type": "offer"}) as resp:
            answer = await resp.json()
        assert resp.status == 200, answer
        assert len(answer["ice_servers"]) == 2
        for entry in answer["ice_servers"]:
            await allocate(entry)
        assert (await get_ice(r.url, check))[0] == 200
        status, body = await get_ice(r.url, check, "?mode=monitor")
        assert status == 403, body  # a check token opens no monitoring stream
        status, body = await get_ice(r.url, token(tmp_path, "monitor"), "?mode=monitor")
        assert status == 200 and body["ttl_s"] == 14400 + MONITOR_MARGIN_S
        expiry = int(body["ice_servers"][0]["username"].split(":")[0])
        assert expiry >= time.time() + 14400
    finally:
        await r.stop()


async def test_an_open_reflector_hands_out_credentials_without_a_token_at_the_offer_rate(
        loopback_ice: None, tmp_path: Path, turn: Coturn) -> None:
    r = await secured(tmp_path, turn, open=True, offer_burst=2, offers_per_minute=1.0)
    try:
        status, body = await get_ice(r.url, None)
        assert status == 200 and len(body["ice_servers"]) == 2, body
        await allocate(body["ice_servers"][1])
        status, body = await get_ice(r.url, None, "?mode=monitor")
        assert status == 401, body  # monitoring still needs a monitor token
        assert (await get_ice(r.url, None))[0] == 200  # the burst's second
        status, body = await get_ice(r.url, None)
        assert status == 429 and body["error"]["code"] == "rate_limited", body
        status, body = await get_ice(r.url, None, "?mode=other")
        assert status == 400 and body["error"]["code"] == "bad_request", body
    finally:
        await r.stop()


async def test_an_expired_credential_is_refused_by_coturn(turn: Coturn) -> None:
    secret = parse_turn_secret(TURN_SECRET, "test")
    username, password = credential(secret, time.time() - 1000, 60)
    entry = {"urls": turn.url("udp"), "username": username, "credential": password}
    with pytest.raises(stun.TransactionFailed) as exc:
        await allocate(entry)
    assert exc.value.response.error_code == 401
    username, password = credential(secret, time.time(), 60)  # the same secret, in time: ok
    await allocate({**entry, "username": username, "credential": password})


async def test_the_reflector_checks_its_credentials_and_logs_a_wrong_secret(
        loopback_ice: None, tmp_path: Path, turn: Coturn,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    (tmp_path / "good").mkdir()
    good = await secured(tmp_path / "good", turn)
    try:
        assert await good.turn.check_all() == {"1": 1, "2": 1}
    finally:
        await good.stop()
    (tmp_path / "bad").mkdir()
    bad = await secured(tmp_path / "bad", turn, turn_secret="wrong-" + "w" * 30)
    try:
        assert await bad.turn.check_all() == {"1": 0, "2": 0}
        status, body = await get_ice(bad.url, token(tmp_path / "bad"))
        with pytest.raises(stun.TransactionFailed):  # what a client would meet
            await allocate(body["ice_servers"][0])
        async with aiohttp.ClientSession() as http, http.get(bad.url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'netprobe_turn_ok{url="1",transport="udp"} 0' in metrics
        assert 'netprobe_turn_ok{url="2",transport="tcp"} 0' in metrics
    finally:
        await bad.stop()
    checked = [rec for rec in caplog.records if getattr(rec, "event", "") == "turn_checked"]
    outcomes = [(rec.url, rec.transport, rec.outcome, rec.levelname) for rec in checked]
    assert (1, "udp", "ok", "INFO") in outcomes and (2, "tcp", "ok", "INFO") in outcomes
    assert (1, "udp", "refused", "ERROR") in outcomes and (2, "tcp", "refused", "ERROR") \
        in outcomes
    refused = next(rec for rec in checked if rec.outcome == "refused")
    assert "shared secret differs" in refused.error and "clocks" in refused.error
    assert all("127.0.0.1" not in rec.getMessage() + str(rec.error) for rec in checked)


async def test_the_self_check_reports_an_unreachable_relay(
        loopback_ice: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")
    nobody = Coturn(free_port(), tmp_path / "none")
    r = await secured(tmp_path, nobody)
    try:
        ok = await asyncio.wait_for(r.turn.check_all(), 15)
        assert ok == {"1": 0, "2": 0}
    finally:
        await r.stop()
    outcomes = {rec.transport: (rec.outcome, rec.levelname) for rec in caplog.records
                if getattr(rec, "event", "") == "turn_checked"}
    assert outcomes["tcp"] == ("unreachable", "WARNING")
    assert outcomes["udp"] in (("timeout", "WARNING"), ("unreachable", "WARNING"))


async def test_the_example_turnserver_conf_takes_the_credentials_over_udp_tcp_and_tls(
        loopback_ice: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with coturn(tmp_path, TURN_SECRET, example=True) as server:
        assert server.ca is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))  # turns: verifies the certificate
        r = await secured(tmp_path, server, turn_urls=(
            server.url("udp"), server.url("tcp"), server.url("tls")))
        try:
            assert await r.turn.check_all() == {"1": 1, "2": 1, "3": 1}
            status, body = await get_ice(r.url, token(tmp_path))
            assert status == 200 and len(body["ice_servers"]) == 3
            tls = body["ice_servers"][2]
            port = int(tls["urls"].rsplit(":", 1)[1])
            relay, _ = await asyncio.wait_for(create_turn_endpoint(
                asyncio.DatagramProtocol, ("127.0.0.1", port), tls["username"],
                tls["credential"], ssl=ssl.create_default_context(cafile=server.ca),
                transport="tcp"), 10)
            assert relay.get_extra_info("sockname")[0] == "127.0.0.1"
            relay.close()
            await asyncio.sleep(0.2)
        finally:
            await r.stop()
        monkeypatch.delenv("SSL_CERT_FILE")  # a certificate nobody vouches for: refused
        r = await secured(tmp_path, server, turn_urls=(server.url("tls"),))
        try:
            assert await r.turn.check_all() == {"1": 0}
        finally:
            await r.stop()


async def test_sighup_rereads_the_secret_keeps_it_if_bad_and_checks_again(
        loopback_ice: None, tmp_path: Path, turn: Coturn,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe")

    def events(name: str) -> list[logging.LogRecord]:
        return [rec for rec in caplog.records if getattr(rec, "event", "") == name]

    r = await secured(tmp_path, turn, turn_secret="wrong-" + "w" * 30)
    try:
        assert r.turn.ok == {}  # start() does not wait for the self-check
        await until(lambda: len(events("turn_checked")) >= 2, 10, "the first self-check")
        assert r.turn.ok == {"1": 0, "2": 0}
        secret_file(tmp_path / "turn-secret", "\n")
        r.reload()  # what SIGHUP calls
        failed = events("reflector_reload_failed")
        assert failed and failed[-1].what == "turn" and "empty" in failed[-1].error
        assert r.turn.secret is not None and r.turn.secret.value.startswith(b"wrong-")
        secret_file(tmp_path / "turn-secret", TURN_SECRET + "\n")
        r.reload()
        assert events("reflector_reloaded")[-1].what == "turn"
        await until(lambda: r.turn.ok == {"1": 1, "2": 1}, 10,
                    "the self-check after the reload")
        status, body = await get_ice(r.url, token(tmp_path))
        await allocate(body["ice_servers"][0])
    finally:
        await r.stop()


# ------------------------------------------------------------------------ `netprobe serve`


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, "serve", "--port", str(free_port()), "--workers", "1",
                           *args], capture_output=True, text=True, timeout=30, env=CHILD_ENV)


def test_bad_turn_settings_stop_serve_at_start_with_the_reason(tmp_path: Path) -> None:
    good = secret_file(tmp_path / "turn", TURN_SECRET)
    empty = secret_file(tmp_path / "empty", "")
    for args, words in (
            (("--turn-url", "turn:127.0.0.1:3478"), "turn_secret_file"),
            (("--turn-secret-file", str(good)), "turn_urls"),
            (("--turn-url", "stun:127.0.0.1:3478", "--turn-secret-file", str(good)),
             "turn: or turns:"),
            (("--turn-url", "turns:127.0.0.1:5349?transport=udp", "--turn-secret-file",
              str(good)), "transport=tcp"),
            (("--turn-url", "turn:127.0.0.1:3478", "--turn-secret-file",
              str(tmp_path / "missing")), "no such file"),
            (("--turn-url", "turn:127.0.0.1:3478", "--turn-secret-file", str(empty)),
             "empty")):
        done = serve(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


async def test_serve_with_workers_checks_its_relays_in_one_process(
        tmp_path: Path, turn: Coturn) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "serve", "--port", str(port), "--workers", "2",
        "--turn-url", turn.url("udp"), "--turn-url", turn.url("tcp"),
        "--turn-secret-file", str(secret_file(tmp_path / "turn", TURN_SECRET)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while len([x for x in lines if x.get("event") == "turn_checked"]) < 2:
                line = await proc.stderr.readline()
                assert line, "serve ended before its TURN self-check"
                if line.startswith(b"{"):
                    lines.append(json.loads(line))
            await asyncio.sleep(1.5)  # room for a second process's (wrong) check
            async with aiohttp.ClientSession() as http:
                for _ in range(4):  # whichever worker answers: worker 0's outcome
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = await resp.text()
                    assert 'netprobe_turn_ok{url="1",transport="udp"} 1' in text
                    assert 'netprobe_turn_ok{url="2",transport="tcp"} 1' in text
    finally:
        proc.terminate()
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    lines += [json.loads(x) for x in (rest or b"").splitlines() if x.startswith(b"{")]
    checked = [x for x in lines if x.get("event") == "turn_checked"]
    assert sorted((x["url"], x["outcome"]) for x in checked) == [(1, "ok"), (2, "ok")]
    assert all("127.0.0.1" not in json.dumps(x) for x in checked)

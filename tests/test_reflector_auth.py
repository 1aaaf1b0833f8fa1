"""Access tokens end to end: a real reflector (in-process `Reflector`, and `netprobe serve`
processes), real aiortc checks and monitoring links, real PyJWT tokens, over loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import until
from offers import offer_sdp
from procs import CHILD_ENV, NETPROBE, free_port, secret_file, serve, stop

from netprobe.agent.runtime import AgentRuntime
from netprobe.agent.worker import IsolatedMonitorLink
from netprobe.config import AgentSettings, ReflectorSettings, Settings, load_settings
from netprobe.errors import AccessDenied, ConfigError
from netprobe.tokens import CHECK_OFFERS, Keyring, check_link, issue, load_keys
from netprobe.webrtc.client import MonitorLink, run_check
from netprobe.webrtc.reflector import Reflector

SECRET = "s3cret-" + "x" * 40
FAKE_SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def secret_path(tmp_path: Path) -> Path:
    return secret_file(tmp_path / "token-secret", f"k1 = {SECRET}\n")


@pytest.fixture
def keys(secret_path: Path) -> Keyring:
    return load_keys(secret_path)


async def started(settings: ReflectorSettings) -> Reflector:
    r = Reflector(replace(settings, host="127.0.0.1", port=0))
    await r.start()
    return r


@pytest.fixture
async def secured(loopback_ice: None, secret_path: Path) -> AsyncIterator[Reflector]:
    r = await started(ReflectorSettings(token_secret_file=str(secret_path)))
    try:
        yield r
    finally:
        await r.stop()


async def post_offer(url: str, token: str | None, mode: str = "check",
                     body: Any = None) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = body if body is not None else {"sdp": FAKE_SDP, "type": "offer", "mode": mode}
    async with aiohttp.ClientSession() as http, http.post(
            url + "/v1/offer", json=payload, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def capped(settings: Settings, seconds: float, token: str = "") -> Settings:
    probe = replace(settings.probe, max_duration_s=seconds,
                    connect_timeout_s=min(settings.probe.connect_timeout_s, seconds - 1))
    return replace(settings, probe=probe, access_token=token)


# ------------------------------------------------------------------------ signalling answers


async def test_offers_without_a_valid_token_get_401_and_the_wrong_scope_403(
        secured: Reflector, keys: Keyring, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="netprobe")
    now = time.time()
    for token in (None, "garbage", issue(keys, "check", now - 90_000, 3600),  # expired
                  issue(Keyring((("k1", b"y" * 40),)), "check", now),  # bad signature
                  issue(Keyring((("k9", SECRET.encode()),)), "check", now)):  # unknown kid
        status, body, headers = await post_offer(secured.url, token)
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized" and body["error"]["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    # checked before the body is read: not even JSON gets past without a token
    status, body, _ = await post_offer(secured.url, None, body=["not", "an", "offer"])
    assert status == 401
    check = issue(keys, "check", now)
    status, body, _ = await post_offer(secured.url, check, mode="monitor")
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert "monitor" in body["error"]["message"]
    # a good token gets past the gate to the SDP, which is refused (replays: the real checks)
    status, body, _ = await post_offer(secured.url, check)
    assert status == 400 and body["error"]["code"] == "bad_sdp"
    assert not secured.sessions
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert check not in logged and "offer_refused" in logged


async def test_a_rotated_key_still_verifies_and_a_retired_one_does_not(
        loopback_ice: None, tmp_path: Path, keys: Keyring) -> None:
    old_token = issue(keys, "monitor", time.time())
    rotated = tmp_path / "rotated"
    rotated.write_text(f"k2 = {'n' * 32}\nk1 = {SECRET}\n")
    rotated.chmod(0o600)
    retired = tmp_path / "retired"
    retired.write_text(f"k2 = {'n' * 32}\n")
    retired.chmod(0o600)
    for path, expected in ((rotated, 400), (retired, 401)):
        r = await started(ReflectorSettings(token_secret_file=str(path)))
        try:
            status, body, _ = await post_offer(r.url, old_token, mode="monitor")
            assert status == expected, body
            new = issue(load_keys(path), "check", time.time())
            assert (await post_offer(r.url, new))[0] == 400  # signed by k2, accepted
        finally:
            await r.stop()


# ------------------------------------------------------------------------ real checks and links


async def spend_retries(url: str, token: str) -> int:
    """Take a check token's remaining offers (`CHECK_OFFERS` in all; a check has taken one or
    more) with real offers, as a client falling back to a relay would; returns how many."""
    for taken in range(CHECK_OFFERS):
        status, body, _ = await post_offer(url, token, body={"sdp": await offer_sdp(),
                                                             "type": "offer"})
        if status == 403:
            return taken
        assert status == 200, body
    raise AssertionError(f"a check token took more than {CHECK_OFFERS} offers")


async def test_a_real_check_needs_its_token_and_its_retries_run_out(
        secured: Reflector, keys: Keyring, settings: Settings) -> None:
    refused = await run_check(secured.url, capped(settings, 4))
    assert refused.verdict.verdict == "unknown"
    assert refused.verdict.reasons[0].code == "unauthorized"
    assert "check link" in refused.verdict.reasons[0].message
    token = issue(keys, "check", time.time())
    result = await run_check(secured.url, replace(settings, access_token=token))
    assert result.verdict.verdict == "video", result.verdict
    await spend_retries(secured.url, token)  # the fallback's offers: 3 within 30 s in all
    assert secured.counters.started["check"] == CHECK_OFFERS
    again = await run_check(secured.url, capped(settings, 4, token))
    assert again.verdict.verdict == "unknown"
    assert again.verdict.reasons[0].code == "forbidden"
    assert "already used" in again.verdict.reasons[0].message
    assert token not in json.dumps(again.to_json())


async def test_monitoring_needs_a_monitor_token(secured: Reflector, keys: Keyring,
                                                settings: Settings) -> None:
    echoes: list[float] = []
    check_token = issue(keys, "check", time.time())
    link = MonitorLink(secured.url, replace(settings, access_token=check_token), 0.05,
                       lambda echo, now: None)
    with pytest.raises(AccessDenied, match="monitor") as exc:
        await link.connect(5)
    assert exc.value.code == "forbidden"
    monitor = issue(keys, "monitor", time.time())
    for _ in range(2):  # reused: an agent reconnects with the same token
        link = MonitorLink(secured.url, replace(settings, access_token=monitor), 0.05,
                           lambda echo, now: echoes.append(now))
        await link.connect(8)
        try:
            await until(lambda: echoes, 5, "an echo on the monitoring stream")
        finally:
            await link.close()
        echoes.clear()


async def test_the_agent_reads_its_token_file_and_its_worker_sends_it(
        secured: Reflector, keys: Keyring, settings: Settings, tmp_path: Path) -> None:
    token_file = tmp_path / "reflector-token"
    token_file.write_text(issue(keys, "monitor", time.time()) + "\n")
    agent = replace(settings.agent, server=secured.url,
                    token_file=str(token_file), api_token_file=str(tmp_path / "api"))
    runtime = AgentRuntime(replace(settings, agent=agent))
    assert runtime.settings.access_token == token_file.read_text().strip()
    assert runtime.settings.access_token not in repr(runtime.settings)
    echoes: list[float] = []
    link = IsolatedMonitorLink(secured.url, runtime.settings, 0.05,
                               lambda echo, now: echoes.append(now))
    await link.connect(10)  # in a child process, as the agent runs it
    try:
        await until(lambda: echoes, 5, "an echo from the worker's monitoring stream")
    finally:
        await link.close()
    tokenless = IsolatedMonitorLink(secured.url, replace(runtime.settings, access_token=""),
                                    0.05, lambda echo, now: None)
    with pytest.raises(AccessDenied) as exc:
        await tokenless.connect(5)
    assert exc.value.code == "unauthorized"
    assert AgentSettings().token_file == ""


async def test_the_agent_rereads_its_token_file_on_reload(keys: Keyring, tmp_path: Path
                                                          ) -> None:
    token_file = tmp_path / "reflector-token"
    token_file.write_text(issue(keys, "monitor", time.time()) + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nserver = "http://127.0.0.1:9"\napi_token_file = '
                      f'"{tmp_path / "api"}"\ntoken_file = "{token_file}"\n')
    runtime = AgentRuntime(load_settings(config), config_path=config)
    first = runtime.settings.access_token
    renewed = issue(keys, "monitor", time.time(), 3600)
    token_file.write_text(renewed + "\n")
    runtime.reload()  # as on SIGHUP
    assert first and runtime.settings.access_token == renewed
    token_file.write_text("garbage\n")
    runtime.reload()  # a bad file keeps the old token (and says so in the log)
    assert runtime.settings.access_token == renewed


def test_the_older_key_name_reflector_token_file_is_still_read(keys: Keyring, tmp_path: Path
                                                               ) -> None:
    token_file = tmp_path / "reflector-token"
    token = issue(keys, "monitor", time.time())
    token_file.write_text(token + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nserver = "http://127.0.0.1:9"\n'
                      f'reflector_token_file = "{token_file}"\n')
    assert AgentRuntime(load_settings(config), config_path=config).settings.access_token == token


async def test_an_open_reflector_without_a_secret_checks_anyone_and_monitors_no_one(
        loopback_ice: None, settings: Settings) -> None:
    r = await started(ReflectorSettings(open=True))
    try:
        status, body, _ = await post_offer(r.url, None)
        assert status == 400 and body["error"]["code"] == "bad_sdp"  # past the gate
        status, body, _ = await post_offer(r.url, None, mode="monitor")
        assert status == 401 and "no monitoring stream" in body["error"]["message"]
        link = MonitorLink(r.url, settings, 0.05, lambda echo, now: None)
        with pytest.raises(AccessDenied, match="no monitoring stream"):
            await link.connect(5)
    finally:
        await r.stop()


async def test_a_reflector_beyond_loopback_without_a_secret_refuses_to_start() -> None:
    r = Reflector(ReflectorSettings(host="0.0.0.0", port=0))
    with pytest.raises(ConfigError, match="--open"):
        await r.start()
    await r.stop()
    opened = Reflector(ReflectorSettings(host="0.0.0.0", port=0, open=True))
    await opened.start()
    await opened.stop()


# ------------------------------------------------------------------------ `netprobe serve`/`check`


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**CHILD_ENV, **(env or {})})


async def test_serve_with_a_secret_and_check_with_a_link(secret_path: Path, keys: Keyring
                                                         ) -> None:
    port = free_port()
    proc = await serve(port, "--token-secret-file", str(secret_path))
    url = f"http://127.0.0.1:{port}"
    token = issue(keys, "check", time.time())
    try:
        done = await asyncio.to_thread(run, "-v", "check", "--link", check_link(url, token),
                                       "--json", "--no-progress")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["verdict"] == "video"
        assert token not in done.stdout + done.stderr  # -v: every INFO log line included
        await spend_retries(url, token)
        for args, env, code in (
                ((), None, "unauthorized"),
                ((), {"NETPROBE_TOKEN": token}, "forbidden"),  # already used
                (("--token", "not.a.token"), None, "unauthorized")):
            failed = await asyncio.to_thread(run, "check", "--server", url, "--json",
                                             "--max-duration", "4", *args, env=env)
            assert failed.returncode == 12, failed.stderr
            doc = json.loads(failed.stdout)
            assert doc["verdict"] == "unknown" and doc["reasons"][0]["code"] == code
            assert token not in failed.stdout + failed.stderr
            assert "Traceback" not in failed.stderr
    finally:
        err = await stop(proc)
    assert token.encode() not in err and b"Traceback" not in err


def test_serve_beyond_loopback_without_a_secret_exits_2_unless_open(tmp_path: Path) -> None:
    proc = run("serve", "--host", "0.0.0.0", "--port", str(free_port()), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "--token-secret-file" in proc.stderr and "--open" in proc.stderr
    assert "Traceback" not in proc.stderr
    short = tmp_path / "short"
    short.write_text("k1 = tooshort\n")
    short.chmod(0o600)
    proc = run("serve", "--host", "0.0.0.0", "--port", str(free_port()),
               "--token-secret-file", str(short), timeout=30)
    assert proc.returncode == 2 and "at least 32" in proc.stderr
    opened = subprocess.Popen([*NETPROBE, "serve", "--host", "0.0.0.0", "--port",
                               str(free_port()), "--open"], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True, env=CHILD_ENV)
    try:
        assert opened.stderr is not None
        line = opened.stderr.readline()
        assert "listening" in line and "checks open to anyone" in line, line
    finally:
        opened.terminate()
        assert opened.wait(20) == 0

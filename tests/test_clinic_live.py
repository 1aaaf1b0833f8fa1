"""The clinic's contact end to end: a real reflector (`netprobe serve` processes, and
in-process `Reflector`s) hands out its `[clinic]` in the answer and at `GET /v1/clinic`; real
checks name it (JSON and text), local keys win; a reflector without one leaves the local
contact; a hostile answer's malformed `clinic` is ignored, logged and changes no verdict; the
agent's status names the local number when nothing could be checked."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import until
from aiohttp import web
from procs import CHILD_ENV, NETPROBE, free_port, secret_file, serve, served, stop

from netprobe.config import ReflectorSettings, Settings
from netprobe.settings import ClinicSettings
from netprobe.webrtc.client import run_check
from netprobe.webrtc.reflector import Reflector

CLINIC_TOML = """[clinic]
name = "Riverside Clinic"
phone = "020 7946 0000"
phone_region = "GB"
hours = "Mon-Sun 00:00-24:00"
timezone = "Europe/London"
message = "Out of hours, call NHS 111."
"""
RIVERSIDE = ClinicSettings(name="Riverside Clinic", phone="+44 20 7946 0000",
                           hours="Mon-Sun 00:00-24:00", timezone="Europe/London",
                           message="Out of hours, call NHS 111.")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=60,
                          env=CHILD_ENV)


async def test_served_clinic_reaches_every_worker_and_every_check(tmp_path: Path) -> None:
    config = tmp_path / "reflector.toml"
    config.write_text(CLINIC_TOML)
    port = free_port()
    proc = await serve(port, "--workers", "2", "--config", str(config))
    try:
        url = f"http://127.0.0.1:{port}"
        seen = []
        for _ in range(24):  # a fresh connection each: SO_REUSEPORT spreads them over both
            async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/clinic") as resp:
                assert resp.status == 200
                seen.append((await resp.json())["clinic"])
        assert all(c == {"name": "Riverside Clinic", "phone": "+442079460000",
                         "hours": "Mon-Sun 00:00-24:00", "timezone": "Europe/London",
                         "message": "Out of hours, call NHS 111."} for c in seen)
        empty = tmp_path / "client.toml"
        empty.write_text("")
        checked = await asyncio.to_thread(run, "--config", str(empty), "check", "--server",
                                          url, "--json")
        assert checked.returncode == 0, checked.stderr
        doc = json.loads(checked.stdout)
        assert doc["verdict"] == "video"
        assert doc["fallback"]["phone"] == "+442079460000"
        assert doc["fallback"]["source"] == "reflector" and doc["fallback"]["open_now"] is True
        assert doc["fallback"]["phone_national"] == "020 7946 0000"
    finally:
        err = await stop(proc)
    assert b"Traceback" not in err


def test_unknown_names_the_local_number_in_text_and_json(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(CLINIC_TOML)
    server = f"http://127.0.0.1:{free_port()}"
    text = run("--config", str(config), "check", "--server", server, "--max-duration", "4")
    assert text.returncode == 12, text.stderr
    lines = text.stdout.splitlines()
    assert "Call Riverside Clinic on 020 7946 0000 (open now)." in lines[:3]
    assert "Out of hours, call NHS 111." in lines[:3]
    doc = json.loads(run("--config", str(config), "check", "--server", server, "--json",
                         "--max-duration", "4").stdout)
    assert doc["verdict"] == "unknown"
    assert doc["fallback"]["source"] == "local" and doc["fallback"]["phone"] == "+442079460000"
    bare = run("check", "--server", server, "--max-duration", "4")  # no contact known
    assert "Call " not in bare.stdout and "Traceback" not in bare.stderr


@pytest.fixture
async def clinic_reflector(loopback_ice: None) -> AsyncIterator[Reflector]:
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, clinic=RIVERSIDE))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_local_keys_win_over_the_reflectors(clinic_reflector: Reflector,
                                                  settings: Settings) -> None:
    own = replace(settings, clinic=ClinicSettings(message="Ring reception first."))
    result = await run_check(clinic_reflector.url, own)
    assert result.verdict.verdict == "video" and result.fallback is not None
    doc = result.to_json()["fallback"]
    assert (doc["phone"], doc["name"], doc["message"], doc["source"]) == (
        "+442079460000", "Riverside Clinic", "Ring reception first.", "both")
    plain = await run_check(clinic_reflector.url, settings)
    assert plain.fallback is not None and plain.fallback.source == "reflector"


async def test_a_reflector_without_a_clinic_leaves_the_local_one(
        reflector: Reflector, settings: Settings) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{reflector.url}/v1/clinic") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "no_clinic"
    assert (await run_check(reflector.url, settings)).fallback is None
    result = await run_check(reflector.url, replace(settings, clinic=RIVERSIDE))
    assert result.verdict.verdict == "video"
    assert result.fallback is not None and result.fallback.source == "local"


async def test_v1_clinic_needs_no_token_on_a_secured_reflector(loopback_ice: None,
                                                              tmp_path: Path) -> None:
    secret = secret_file(tmp_path / "secret", f"k1 = {'s' * 40}\n")
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, token_secret_file=str(secret),
                                    clinic=RIVERSIDE))
    await r.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{r.url}/v1/clinic") as resp:
                assert resp.status == 200
                assert (await resp.json())["clinic"]["phone"] == "+442079460000"
            async with http.post(f"{r.url}/v1/offer", json={}) as resp:
                assert resp.status == 401  # the offer still needs its token
    finally:
        await r.stop()


HOSTILE_CLINICS: list[Any] = [
    "call us",
    {"phone": 442079460000},
    {"phone": "+44 123", "name": "Fake"},
    {"phone": "+442079460000", "message": "m" * 5000},
    {"phone": "+442079460000", "timezone": "../../../../etc/passwd"},
    {"phone": "+442079460000", "hours": "always open"},
]


@pytest.fixture
async def hostile(reflector: Reflector) -> AsyncIterator[tuple[str, list[Any]]]:
    """A server that passes offers to a real reflector and spoils the answer's `clinic` with
    the next of HOSTILE_CLINICS (the list it yields: append to choose)."""
    queue: list[Any] = []

    async def offer(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.post(
                f"{reflector.url}/v1/offer", data=await request.read(),
                headers={"Content-Type": "application/json"}) as resp:
            body = await resp.json()
        if resp.status == 200:
            body["clinic"] = queue.pop(0)
        return web.json_response(body, status=resp.status)

    app = web.Application()
    app.router.add_post("/v1/offer", offer)
    runner, url = await served(app)
    try:
        yield url, queue
    finally:
        await runner.cleanup()


async def test_a_malformed_clinic_in_the_answer_keeps_the_local_one(
        hostile: tuple[str, list[Any]], settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    url, queue = hostile
    local = replace(settings, clinic=ClinicSettings(phone="+34 912 34 56 78"))
    for spoiled in HOSTILE_CLINICS:
        caplog.clear()
        caplog.set_level(logging.INFO, logger="netprobe.clinic")
        queue.append(spoiled)
        result = await run_check(url, local)
        assert result.verdict.verdict == "video", result.verdict.reasons  # unaffected
        assert result.fallback is not None and result.fallback.source == "local"
        assert result.fallback.phone == "+34912345678"
        assert (result.fallback.name, result.fallback.message, result.fallback.hours,
                result.fallback.timezone) == ("", "", "", "")  # nothing of the reflector's
        ignored = [r for r in caplog.records if getattr(r, "event", None) == "clinic_ignored"]
        assert len(ignored) == 1 and ignored[0].exc_info is None
        assert not queue  # the hostile answer was the one used
    queue.append({"phone": 12})
    assert (await run_check(url, settings)).fallback is None  # nothing local either


async def test_the_agents_status_names_the_local_number_when_nothing_was_checked(
        tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(CLINIC_TOML + f'[agent]\nidle_interval_s = 3600\napi_token_file = '
                      f'"{tmp_path / "api-token"}"\n')
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "--config", str(config), "agent", "--server",
        f"http://127.0.0.1:{free_port()}", "--api-port", str(port), "--log-file",
        str(tmp_path / "agent.log"), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)

    async def failed_check() -> dict[str, Any] | None:
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{port}/v1/status") as resp:
                doc = await resp.json() if resp.status == 200 else None
        except aiohttp.ClientConnectionError:
            return None
        return doc if doc and doc.get("reflector") == "unreachable" else None

    try:
        status = await until(failed_check, 30, "the first check to fail", interval=0.2)
        assert status["recommendation"] == "unknown"
        assert status["fallback"]["phone"] == "+442079460000"
        assert status["fallback"]["source"] == "local" and status["fallback"]["open_now"]
    finally:
        err = await stop(proc)
    assert b"Traceback" not in err

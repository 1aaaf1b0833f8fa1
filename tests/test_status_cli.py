"""`netprobe status` as a person runs it: the real command (a child process) against a real agent
and its API on loopback; no agent; something else on the port; and the words themselves."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import FakeSampler, agents
from aiohttp import web
from procs import CHILD_ENV, NETPROBE, free_port

from netprobe import exitcodes
from netprobe.cli.status import render_status
from netprobe.config import Settings
from netprobe.webrtc.reflector import Reflector


async def status_cli(*args: str) -> tuple[int, str, str]:
    """Run `netprobe status ARGS` without blocking this loop (the agent runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "status", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_of_a_running_agent_in_words_and_as_json(
        reflector: Reflector, settings: Settings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    async with agents(settings, tmp_path, caplog) as start:
        r = await start(reflector.url, sampler=FakeSampler())
        await r.until_status(lambda s: s["recommendation"] == "video", 15, "the first check")
        code, out, err = await status_cli("--api-port", str(r.port))
        assert code == exitcodes.OK, err
        lines = out.splitlines()
        assert lines[0] == ("The agent recommends video: your connection can hold a video "
                            "session now.")
        assert "No session is being watched; the agent checks now and then." in lines
        assert any(line.startswith("Last checked: just now (") for line in lines), out
        assert "video_ok" not in out and "{" not in out

        assert await r.post("/v1/session", {"action": "start"}) == (
            200, {"state": "monitoring", "changed": True})
        code, out, _ = await status_cli("--api-port", str(r.port))
        assert code == 0 and "A session is being watched" in out, out

        code, out, _ = await status_cli("--api-port", str(r.port), "--json")
        doc = json.loads(out)
        assert code == 0 and doc["schema"] == "netprobe.status/1"
        assert doc["state"] == "monitoring" and doc["recommendation"] == "video"


async def test_no_agent_is_one_clear_line_and_exit_3() -> None:
    port = free_port()
    code, out, err = await status_cli("--api-port", str(port))
    assert code == exitcodes.UNAVAILABLE and out == ""
    assert err == (f"netprobe: the agent is not running (nothing answers on 127.0.0.1:{port}); "
                   "start it with `netprobe agent`, or see `netprobe service status`\n")


async def test_the_port_from_the_config_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\napi_port = {port}\n")
    code, _, err = await status_cli("--config", str(config))
    assert code == exitcodes.UNAVAILABLE and f"127.0.0.1:{port}" in err


@pytest.mark.parametrize(("body", "content_type", "why"), [
    ("<html>hello</html>", "text/html", "not JSON"),
    ('{"schema": "something/1"}', "application/json", "not a netprobe.status/1 document"),
    ("[1, 2]", "application/json", "not a netprobe.status/1 document"),
])
async def test_something_else_on_the_port_is_exit_1_without_a_traceback(
        body: str, content_type: str, why: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/v1/status", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await status_cli("--api-port", str(port))
    finally:
        await runner.cleanup()
    assert code == exitcodes.FAILED and out == ""
    assert err.strip() == f"netprobe: 127.0.0.1:{port} did not answer as the agent does: {why}"


NOW = datetime(2025, 3, 4, 14, 30).astimezone()


def status(**fields: Any) -> dict[str, Any]:
    return {"schema": "netprobe.status/1", "state": "idle", "recommendation": "video",
            "confidence": 0.95, "reasons": [{"code": "video_ok", "message": "All good."}],
            "updated_at": None, "age_s": None, "reflector": "ok", "check_running": False,
            **fields}


def iso(at: datetime) -> str:
    return at.astimezone().isoformat()


def test_phone_with_the_clinic_number_a_detected_call_and_the_reasons() -> None:
    text = render_status(status(
        recommendation="phone", confidence=0.8, state="monitoring", session_source="detected",
        session_started_at=iso(NOW - timedelta(minutes=20)),
        updated_at=iso(NOW - timedelta(minutes=3)), age_s=180.0,
        reasons=[{"code": "loss_too_high_for_audio", "message": "Too much is lost."}],
        fallback={"name": "Riverside Clinic", "phone": "+442079460000",
                  "phone_national": "020 7946 0000", "open_now": True, "open_until": "17:00",
                  "message": "Out of hours: call 111."}), NOW)
    assert text == (
        "The agent recommends the phone: your internet connection is not steady enough for a "
        "call right now.\n"
        "How sure: fairly sure.\n\n"
        "Why:\n  - Too much is lost.\n\n"
        "A session is being watched (a call noticed on this computer), since 14:10.\n"
        "Last checked: 3 minutes ago (14:27).\n\n"
        "If you need to phone:\n"
        "  Call Riverside Clinic on 020 7946 0000 (open now, until 17:00).\n"
        "  Out of hours: call 111.\n")


def test_unknown_not_checked_yet_and_a_closed_clinic() -> None:
    text = render_status(status(
        recommendation="unknown", confidence=0.0, reflector="unreachable", check_running=True,
        reasons=[{"code": "no_check_yet", "message": "No check has run yet."}],
        fallback={"phone": "+442079460000", "phone_national": "020 7946 0000",
                  "open_now": False, "opens": {"day": "wed", "time": "09:00"}}), NOW)
    assert "How sure" not in text
    assert "Not checked yet.\nA check is running now.\n" in text
    assert "The clinic's test server could not be reached last time." in text
    assert "Call your clinic on 020 7946 0000 (closed now; opens Wednesday 09:00)." in text


def test_a_hostile_status_never_breaks_the_words() -> None:
    text = render_status({"schema": "netprobe.status/1", "recommendation": ["x"],
                          "reasons": ["a", {"code": 3}], "confidence": "high",
                          "updated_at": "yesterday", "fallback": {"phone": 5}}, NOW)
    assert text.startswith("The agent cannot tell right now")
    assert "Not checked yet." in text and "phone:" not in text


def test_the_reasons_in_the_language_asked_for() -> None:
    # The agent's status carries each reason's template and arguments (policy_status), so a
    # Spanish `netprobe status` says them in Spanish; the English message stays beside them.
    from netprobe import i18n
    from netprobe.core.classify import classify
    from netprobe.core.metrics import DirectionMetrics, LinkMetrics
    from netprobe.core.policy_status import status_document

    verdict = classify(LinkMetrics(rtt_ms=40, mos_audio=4.2, connected=True,
                                   up=DirectionMetrics(200, False, 0.0, 2.0),
                                   down=DirectionMetrics(5000, True, 0.0, 2.0)))
    assert verdict.verdict == "audio_only"

    class Policy:  # what status_document reads of a policy
        state, session_source, updated_at, reflector = "idle", None, None, "ok"
        session_started_at, check_running, probe_rate = None, None, None
        metrics = LinkMetrics()

        class passive:  # noqa: N801
            @staticmethod
            def to_json() -> dict[str, Any]:
                return {}

    doc = json.loads(json.dumps(status_document(Policy(), verdict, None, 0.0, "x")))
    reason = doc["reasons"][0]
    assert reason["code"] == "upload_too_slow_for_video" and "template" in reason
    english = render_status(doc, NOW)
    assert reason["message"] in english
    try:
        i18n.set_language("es")
        spanish = render_status(doc, NOW)
    finally:
        i18n.set_language("en")
    assert reason["message"] not in spanish and "0,2" in spanish and "Por qué:" in spanish

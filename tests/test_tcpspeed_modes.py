"""The TCP speed test's modes: the time-bounded quick test (`tcp_speed(budget_s=...)`), the
JSON `tcp` object (`tcp_report`), and `netprobe check --thorough [--public-speedtest]`, against
a real reflector and against small aiohttp apps that stall or answer garbage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import procs
import pytest
from aiohttp import web

from netprobe.errors import ServerUnreachable
from netprobe.tcpreport import tcp_report
from netprobe.tcpspeed import tcp_speed
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.speedtest_mini import MINI_PAGE

SLACK_S = 3.0
"""Generous bound over a budget (noisy machines): only a test that ignores its budget fails."""
TCP_KEYS = {"against", "mode", "down_kbps", "up_kbps", "latency_ms", "bytes_down", "bytes_up",
            "duration_s", "error"}


async def served(app: web.Application) -> tuple[web.AppRunner, str]:
    return await procs.served(app, access_log=None, shutdown_timeout=0.5)


def stalling_app(stall: str) -> web.Application:
    """A Speedtest Mini whose `stall` part (page, transfers) never answers."""
    async def hang() -> None:
        await asyncio.sleep(3600)

    async def page(request: web.Request) -> web.Response:
        if stall == "page":
            await hang()
        return web.Response(text=MINI_PAGE, content_type="text/html")

    async def latency(request: web.Request) -> web.Response:
        return web.Response(text="test=test")

    async def image(request: web.Request) -> web.Response:
        await hang()
        raise AssertionError

    async def upload(request: web.Request) -> web.Response:
        await hang()
        raise AssertionError

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/speedtest/latency.txt", latency)
    app.router.add_get(r"/speedtest/random{n:\d+}x{m:\d+}.jpg", image)
    app.router.add_post("/speedtest/upload.php", upload)
    return app


@pytest.fixture
async def stalling(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    runner, url = await served(stalling_app(request.param))
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_the_quick_test_measures_within_its_budget(reflector: Reflector) -> None:
    started = time.monotonic()
    result = await tcp_speed(reflector.url, budget_s=1.5)
    took = time.monotonic() - started
    assert took < 1.5 + SLACK_S, took
    assert result.latency_ms is not None and result.latency_ms > 0, result
    assert result.down_mbps is not None and result.down_mbps > 1, result  # loopback
    assert result.up_mbps is not None and result.up_mbps > 1, result
    assert result.bytes_down > 0 and result.bytes_up > 0, result


@pytest.mark.parametrize("stalling", ["transfers"], indirect=True)
async def test_stalled_transfers_end_at_the_budget_unmeasured(stalling: str) -> None:
    started = time.monotonic()
    result = await tcp_speed(stalling, budget_s=2.0)
    took = time.monotonic() - started
    assert took < 2.0 + SLACK_S, took
    assert result.latency_ms is not None  # latency.txt answered
    assert result.down_mbps is None and result.up_mbps is None, result
    assert result.bytes_down == 0 and result.bytes_up == 0


@pytest.mark.parametrize("stalling", ["page"], indirect=True)
async def test_a_server_that_never_answers_is_said_so_in_time(stalling: str) -> None:
    started = time.monotonic()
    with pytest.raises(ServerUnreachable):
        await tcp_speed(stalling, budget_s=1.0)
    assert time.monotonic() - started < 1.0 + SLACK_S
    report = await tcp_report(stalling, budget_s=1.0)
    assert report["error"]["code"] == "unreachable", report
    assert report["down_kbps"] is None and report["mode"] == "quick"


async def test_garbage_ends_the_report_with_a_reason() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>not a speed test</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner, url = await served(app)
    try:
        report = await tcp_report(url, budget_s=2.0)
    finally:
        await runner.cleanup()
    assert set(report) == TCP_KEYS
    assert report["error"]["code"] == "bad_answer", report
    assert "Speedtest Mini" in report["error"]["message"]


async def test_no_reflector_and_a_bad_budget_are_errors_not_tracebacks() -> None:
    report = await tcp_report(None)
    assert report["error"]["code"] == "unreachable"
    report = await tcp_report("http://127.0.0.1:9", budget_s=-1)
    assert report["error"]["code"] == "bad_config", report


async def test_the_sustained_report_against_the_reflector(reflector: Reflector) -> None:
    report = await tcp_report(reflector.url, length_s=1.0)
    assert set(report) == TCP_KEYS
    assert report["error"] is None, report
    assert report["against"] == "reflector" and report["mode"] == "sustained"
    assert report["down_kbps"] > 1000 and report["up_kbps"] > 1000, report
    assert report["bytes_down"] > 0 and report["bytes_up"] > 0


#: Runs `netprobe check` with an audit hook that writes every address connected to, as JSON,
#: to stderr's last line: what the process contacted, seen from inside it.
AUDITED = """
import json, sys
connects = []
def audit(event, args):
    if event == "socket.connect":
        connects.append(list(args[1])[:2] if isinstance(args[1], tuple) else [str(args[1])])
    elif event == "socket.getaddrinfo":
        connects.append(["lookup", str(args[0])])
sys.addaudithook(audit)
from netprobe.cli.main import main
try:
    status = main(sys.argv[1:])
finally:
    sys.stderr.write("\\nCONNECTS " + json.dumps(connects) + "\\n")
sys.exit(status)
"""


def audited_check(*args: str, timeout: float = 90) -> tuple[int, str, str, list[list[str]]]:
    env = dict(os.environ, NETPROBE_TOKEN="")
    proc = subprocess.run([sys.executable, "-c", AUDITED, "check", "--local", "--no-progress",
                           *args], capture_output=True, text=True, timeout=timeout, env=env)
    marker = proc.stderr.rsplit("CONNECTS ", 1)
    assert len(marker) == 2, proc.stderr[-2000:]
    return proc.returncode, proc.stdout, marker[0], json.loads(marker[1])


def test_thorough_json_has_the_tcp_test_and_contacts_only_the_reflector() -> None:
    status, out, err, connects = audited_check("--thorough", "--json")
    assert "Traceback" not in err, err
    result = json.loads(out)
    assert status == {"video": 0, "audio_only": 10, "phone": 11, "unknown": 12}[
        result["verdict"]]
    tcp = result["tcp"]
    assert set(tcp) == TCP_KEYS
    assert tcp["error"] is None and tcp["against"] == "reflector", tcp
    assert tcp["down_kbps"] > 1000 and tcp["up_kbps"] > 1000 and tcp["latency_ms"] > 0, tcp
    assert connects, "no connection seen: the audit hook did not work"
    hosts = {c[0] for c in connects if c[0] != "lookup"}
    assert hosts == {"127.0.0.1"}, connects  # the --local reflector, and nothing else
    lookups = {c[1] for c in connects if c[0] == "lookup"}
    assert lookups <= {"127.0.0.1"}, lookups


def test_without_thorough_there_is_no_tcp_test() -> None:
    status, out, err, _ = audited_check("--json")
    assert json.loads(out)["tcp"] is None, out


def test_thorough_text_output_has_the_section() -> None:
    status, out, err, _ = audited_check("--thorough")
    assert "Traceback" not in err, err
    assert "TCP speed test (against the test server" in out, out
    section = out.split("TCP speed test", 1)[1]
    assert "Upload" in section and "Download" in section and "Mbit/s" in section, out


def test_the_public_speedtest_fails_cleanly_without_internet() -> None:
    """This machine (and CI) has no route to speedtest.net: the thorough test says so in
    `tcp.error`, the verdict stands, and it ends in bounded time (the public test's own
    deadline is 45 s)."""
    started = time.monotonic()
    status, out, err, connects = audited_check("--thorough", "--public-speedtest", "--json")
    assert time.monotonic() - started < 60 + SLACK_S
    assert "Traceback" not in err, err
    result = json.loads(out)
    tcp = result["tcp"]
    assert tcp["against"] == "speedtest.net" and tcp["down_kbps"] is None, tcp
    assert tcp["error"]["code"] == "unreachable", tcp
    assert "speedtest.net" in tcp["error"]["message"]
    assert status == {"video": 0, "audio_only": 10, "phone": 11, "unknown": 12}[
        result["verdict"]]
    assert any("speedtest.net" in c[-1] for c in connects if c[0] == "lookup"), connects


def test_public_speedtest_needs_thorough() -> None:
    proc = subprocess.run([sys.executable, "-m", "netprobe", "check", "--local",
                           "--public-speedtest"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert "--thorough" in proc.stderr and "Traceback" not in proc.stderr

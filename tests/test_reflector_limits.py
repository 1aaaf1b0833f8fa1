"""The reflector's admission, with a real aiohttp reflector and real aiortc peers: checks and
monitoring streams capped apart, unconnected offers freed, the per-source rate limit (429 with
Retry-After, and the client's `rate_limited` reason), X-Forwarded-For only from trusted proxies,
`/metrics` in Prometheus text, and JSON log lines without the client's address."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import parse_prometheus, until
from offers import offer_sdp
from procs import free_port, serve, stop

from netprobe.config import ReflectorSettings, Settings
from netprobe.errors import ServerBusy
from netprobe.logs import jsonlog
from netprobe.webrtc.client import MonitorLink, run_check
from netprobe.webrtc.reflector import Reflector


@asynccontextmanager
async def running(**changes: Any) -> AsyncIterator[Reflector]:
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, **changes))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
    assert r.sessions == {} and r.admission.count("check") == r.admission.count("monitor") == 0


async def offer(r: Reflector, mode: str = "check", forwarded_for: str | None = None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An offer that never connects: (status, body, headers)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"sdp": await offer_sdp(), "type": "offer", "mode": mode}
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/v1/offer", json=body, headers=headers) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def get(r: Reflector, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(r.url + path) as resp:
            return resp.status, await resp.text()


async def metrics(r: Reflector) -> dict[str, dict[str, float]]:
    status, text = await get(r, "/metrics")
    assert status == 200, text
    return parse_prometheus(text)


def _monitor(r: Reflector, settings: Settings, echoes: list[float]) -> MonitorLink:
    def on_echo(echo: object, now: float) -> None:
        echoes.append(now)
    return MonitorLink(r.url, settings, 0.05, on_echo)


async def test_monitoring_streams_do_not_take_check_slots(loopback_ice: None,
                                                          settings: Settings) -> None:
    async with running(max_checks=1, max_monitors=2) as r:
        echoes: list[float] = []
        links = [_monitor(r, settings, echoes) for _ in range(2)]
        try:
            for link in links:
                await link.connect(10)
            third = _monitor(r, settings, [])
            with pytest.raises(ServerBusy):  # the monitoring cap is full ...
                await third.connect(10)
            assert r.admission.count("monitor") == 2
            # ... and a check still gets the one check slot, and measures the link
            check, (status, body, _) = await asyncio.gather(
                run_check(r.url, settings), _later(0.3, offer(r, "check")))
            assert check.verdict.verdict == "video", check.verdict
            assert (status, body["error"]["code"]) == (503, "busy")  # that slot was taken
            await until(lambda: len(echoes) > 20, 10, "echoes on the monitoring streams")
        finally:
            for link in links:
                await link.close()


async def _later(delay: float, awaitable: Any) -> Any:
    await asyncio.sleep(delay)
    return await awaitable


async def test_an_offer_that_never_connects_is_freed_after_the_connect_timeout(
        loopback_ice: None, settings: Settings) -> None:
    async with running(max_monitors=1, connect_timeout_s=0.5) as r:
        status, _, _ = await offer(r, "monitor")  # holds the only monitoring slot ...
        assert status == 200
        status, body, _ = await offer(r, "monitor")
        assert (status, body["error"]["code"]) == (503, "busy")
        # ... for the connect timeout, not the monitoring time limit of 4 h
        await until(lambda: r.admission.count("monitor") == 0, 10, "the slot to be freed")
        ended = (await metrics(r))["netprobe_reflector_sessions_ended_total"]
        assert ended['kind="monitor",reason="not_connected"'] == 1
        # a stream that does connect keeps its slot past the connect timeout
        echoes: list[float] = []
        link = _monitor(r, settings, echoes)
        try:
            await link.connect(10)
            await asyncio.sleep(1.0)
            assert r.admission.count("monitor") == 1
            assert all(s.connected.is_set() for s in r.sessions.values())
            now = await metrics(r)
            assert now["netprobe_reflector_sessions"]['kind="monitor",state="connected"'] == 1
            moved = now["netprobe_reflector_bytes_total"]  # probes in, echoes out
            assert moved['direction="received"'] > 0 and moved['direction="sent"'] > 0
        finally:
            await link.close()


async def test_too_many_offers_from_one_address_get_429_with_retry_after(
        loopback_ice: None, settings: Settings) -> None:
    async with running(offers_per_minute=1.0, offer_burst=2, session_timeout_s=2.0) as r:
        for _ in range(2):
            assert (await offer(r))[0] == 200
        status, body, headers = await offer(r)
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert 1 <= int(headers["Retry-After"]) <= 60
        # a real client is told why, in plain words
        result = await run_check(r.url, settings)
        reason = result.verdict.reasons[0]
        assert (result.verdict.verdict, reason.code) == ("unknown", "rate_limited")
        assert "wait" in reason.message
        refused = (await metrics(r))["netprobe_reflector_offers_refused_total"]
        assert refused['reason="rate_limited"'] == 2


async def test_forwarded_for_counts_only_from_a_trusted_proxy(loopback_ice: None) -> None:
    async with running(max_checks_per_source=1) as r:  # no trusted proxy: the header is noise
        assert (await offer(r, forwarded_for="198.51.100.1"))[0] == 200
        status, body, _ = await offer(r, forwarded_for="198.51.100.2")
        assert (status, body["error"]["code"]) == (429, "too_many_sessions")
    async with running(max_checks_per_source=1, trusted_proxies=("127.0.0.1",)) as r:
        assert (await offer(r, forwarded_for="198.51.100.1"))[0] == 200
        assert (await offer(r, forwarded_for="6.6.6.6, 198.51.100.2"))[0] == 200
        status, body, _ = await offer(r, forwarded_for="198.51.100.1")
        assert (status, body["error"]["code"]) == (429, "too_many_sessions")


async def test_metrics_are_prometheus_text_and_count_refusals(loopback_ice: None) -> None:
    async with running(max_checks=1) as r:
        before = await metrics(r)
        assert before["netprobe_reflector_offers_refused_total"]['reason="busy"'] == 0
        assert before["netprobe_reflector_session_limit"] == {'kind="check"': 1,
                                                              'kind="monitor"': 200}
        assert (await offer(r))[0] == 200
        assert (await offer(r))[0] == 503
        async with aiohttp.ClientSession() as http:
            async with http.post(r.url + "/v1/offer", data=b"{nope",
                                 headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400
        after = await metrics(r)
        refused = after["netprobe_reflector_offers_refused_total"]
        assert refused['reason="busy"'] == 1 and refused['reason="bad_json"'] == 1
        assert after["netprobe_reflector_sessions"]['kind="check",state="connecting"'] == 1
        assert after["netprobe_reflector_sessions_started_total"]['kind="check"'] == 1
        assert after["process_cpu_seconds_total"][""] > 0
        assert set(after["netprobe_reflector_bytes_total"]) == {'direction="sent"',
                                                                'direction="received"'}
    async with running(metrics_from=("192.0.2.0/24",)) as r:
        status, text = await get(r, "/metrics")
        assert status == 403 and json.loads(text)["error"]["code"] == "forbidden"


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    path = tmp_path / "reflector.log"
    root = logging.getLogger()
    level = root.level
    jsonlog.setup_json_logging(path)
    yield lambda: [json.loads(line) for line in path.read_text().splitlines()]
    jsonlog.flush_and_close()
    root.setLevel(level)


async def test_json_log_lines_carry_a_keyed_hash_not_the_address(
        loopback_ice: None, json_log: Callable[[], list[dict[str, Any]]], tmp_path: Path) -> None:
    client = "203.0.113.77"
    async with running(max_checks_per_source=1, trusted_proxies=("127.0.0.1",),
                       connect_timeout_s=0.3) as r:
        assert (await offer(r, forwarded_for=client))[0] == 200
        assert (await offer(r, forwarded_for=client))[0] == 429
        await until(lambda: not r.sessions, 10, "the unconnected offer to be freed")
    lines = [line for line in json_log() if line["logger"].startswith("netprobe")]
    events = {line["event"]: line for line in lines if line["event"] != "log"}
    started, refused = events["probe_session_started"], events["offer_refused"]
    assert re.fullmatch(r"[0-9a-f]{16}", started["source"])
    assert refused["source"] == started["source"]  # the same client, correlated
    assert (refused["reason"], refused["status"]) == ("too_many_sessions", 429)
    assert events["probe_session_ended"]["reason"] == "not_connected"
    text = "\n".join(json.dumps(line) for line in lines)
    # not even redacted: the reflector never logs the address (the redaction is a safety net)
    assert client not in text and "<ip>" not in text and "address" not in text
    # a shared key makes several workers (or a restart) agree on the hash
    key = tmp_path / "log.key"
    key.write_bytes(b"k" * 32)
    hashes = {Reflector(ReflectorSettings(log_key_file=str(key))).hash_source(client)
              for _ in range(2)}
    assert len(hashes) == 1 and hashes != {r.hash_source(client)}  # r's key was random


async def test_serve_takes_the_caps_and_writes_its_json_log_to_a_file(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    proc = await serve(port, "--max-checks", "1", "--max-monitors", "3", "--log-file", str(log))
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for expected in (200, 503):
                body = {"sdp": await offer_sdp(), "type": "offer"}
                async with http.post(url + "/v1/offer", json=body) as resp:
                    assert resp.status == expected
            async with http.get(url + "/healthz") as resp:
                health = await resp.json()
        assert (health["max_checks"], health["max_monitors"], health["checks"]) == (1, 3, 1)
    finally:
        err = await stop(proc)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = [line["event"] for line in lines]
    for name in ("reflector_started", "probe_session_started", "offer_refused",
                 "reflector_stopping", "probe_session_ended"):
        assert name in events, events
    started = next(line for line in lines if line["event"] == "reflector_started")
    assert (started["max_checks"], started["max_monitors"], started["port"]) == (1, 3, port)
    assert next(line for line in lines if line["event"] == "offer_refused")["reason"] == "busy"

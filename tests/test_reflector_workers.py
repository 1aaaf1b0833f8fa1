"""`netprobe serve --workers 2` as a real process tree: both workers serve real aiortc checks,
any worker's `/metrics` and `/healthz` describe the whole reflector, and a killed worker is
replaced (its counters kept) while checks keep working."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from agent_support import parse_prometheus, until
from procs import CHILD_ENV, NETPROBE, free_port

from netprobe.config import Settings
from netprobe.webrtc.client import run_check

pytestmark = pytest.mark.timeout(120)


async def serve_workers(port: int, run_parent: Path, *args: str) -> asyncio.subprocess.Process:
    """`netprobe serve --workers 2` whose run directory is made under `run_parent`. The
    per-source limits are lifted: split over two workers (2 concurrent checks from one source
    each), hashing would refuse this one test client's third concurrent check now and then."""
    config = run_parent / "netprobe.toml"
    config.write_text("[reflector]\nmax_checks_per_source = 16\n")
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**CHILD_ENV, "RUNTIME_DIRECTORY": str(run_parent)})
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert f"127.0.0.1:{port}" in line.decode() and "2 worker processes" in line.decode(), line
    return proc


async def stop(proc: asyncio.subprocess.Process) -> bytes:
    if proc.returncode is None:
        proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 40)
    return err


def worker_snapshots(run_parent: Path) -> dict[int, dict[str, Any]]:
    """Each live worker's last published snapshot, by worker index."""
    found: dict[int, dict[str, Any]] = {}
    for path in run_parent.glob("netprobe-reflector-*/worker-*.json"):
        found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
    return found


def run_dirs(run_parent: Path) -> list[Path]:
    return list(run_parent.glob("netprobe-reflector-*"))


def workers_of(proc: asyncio.subprocess.Process) -> list[int]:
    return sorted(c.pid for c in psutil.Process(proc.pid).children())


async def scrape(url: str) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        return parse_prometheus(await resp.text())


async def checks(url: str, settings: Settings, n: int) -> None:
    results = await asyncio.gather(*(run_check(url, settings) for _ in range(n)))
    assert [r.verdict.verdict for r in results] == ["video"] * n, \
        [r.verdict.reasons for r in results]


async def test_two_workers_both_serve_checks_and_metrics_sum_them(
        tmp_path: Path, settings: Settings, loopback_ice: None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await serve_workers(port, tmp_path)
    try:
        assert len(workers_of(proc)) == 2
        done = 0
        for _ in range(5):  # SO_REUSEPORT hashes each connection: a few rounds reach both
            await checks(url, settings, 3)
            done += 3
            snaps = await until(lambda done=done: (s := worker_snapshots(tmp_path))
                                and len(s) == 2 and done == sum(
                                    x["started"].get("check", 0) for x in s.values()) and s,
                                5, "both workers' snapshots")
            if all(s["started"].get("check", 0) for s in snaps.values()):
                break
        per_worker = [s["started"].get("check", 0) for s in snaps.values()]
        assert all(per_worker), f"one worker served every check: {per_worker}"
        for _ in range(4):  # whichever worker answers the scrape, it sums both
            m = await scrape(url)
            assert m["netprobe_reflector_sessions_started_total"]['kind="check"'] == done
            assert m["netprobe_reflector_workers"][""] == 2
            assert m["netprobe_reflector_session_limit"]['kind="check"'] == 8  # the whole cap
        async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
            health = await resp.json()
        assert (health["workers"], health["max_checks"], health["status"]) == (2, 8, "ok")
    finally:
        err = await stop(proc)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    assert not run_dirs(tmp_path), "the run directory was left behind"


async def test_a_killed_worker_is_replaced_and_checks_keep_working(
        tmp_path: Path, settings: Settings, loopback_ice: None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await serve_workers(port, tmp_path)
    try:
        await checks(url, settings, 2)
        snaps = await until(lambda: (s := worker_snapshots(tmp_path)) and sum(
            x["started"].get("check", 0) for x in s.values()) == 2 and s, 5, "the snapshots")
        before = workers_of(proc)
        victim = next(s for s in snaps.values() if s["started"].get("check", 0))
        assert victim["pid"] in before
        os.kill(victim["pid"], signal.SIGKILL)  # a worker that has served checks
        after = await until(lambda: (w := workers_of(proc)) and len(w) == 2 and
                            victim["pid"] not in w and w, 20, "a replacement worker")
        assert set(before) - {victim["pid"]} <= set(after)
        await until(lambda: len(worker_snapshots(tmp_path)) == 2, 10, "its first snapshot")
        await checks(url, settings, 4)  # both workers, the new one included

        async def started() -> float:
            m = await scrape(url)
            return m["netprobe_reflector_sessions_started_total"]['kind="check"']

        # the dead worker's counters were kept: every scrape, whichever worker answers it
        await until(lambda: _is(started(), 6), 5, "all six checks counted")
        for _ in range(3):
            assert await started() == 6
    finally:
        err = await stop(proc)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    exited = [x for x in lines if x["event"] == "reflector_worker_exited"]
    assert len(exited) == 1 and exited[0]["exit_status"] == -signal.SIGKILL, exited


async def _is(value: Any, expected: float) -> bool:
    return bool(await value == expected)

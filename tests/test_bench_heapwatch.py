"""The fuzz script's heap inspector (netprobe.bench.heapwatch) on a real reflector process: a
SIGUSR1 writes one snapshot; a check's session is among the live objects while it runs and gone
once it ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from procs import CHILD_ENV, NETPROBE, free_port, stop


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _snapshot(pid: int, path: Path, count: int) -> dict:
    os.kill(pid, signal.SIGUSR1)
    async with asyncio.timeout(15):
        while len(_lines(path)) < count:  # noqa: ASYNC110 - a file written by another process
            await asyncio.sleep(0.05)
    return json.loads(_lines(path)[-1])


async def test_snapshots_count_live_sessions(tmp_path: Path) -> None:
    port = free_port()
    heap = tmp_path / "heap.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netprobe.bench.heapwatch", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**CHILD_ENV, "NETPROBE_HEAPWATCH": str(heap)})
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        assert f"127.0.0.1:{port}" in line.decode(), line
        first = await _snapshot(proc.pid, heap, 1)
        assert first["rss"] > 10e6 and first["rss_after_trim"] > 0
        assert first["watched"]["ReflectorSession"] == 0
        assert first["malloc"]["uordblks"] > 0  # glibc's mallinfo2 read
        check = await asyncio.create_subprocess_exec(
            *NETPROBE, "check", "--server", f"http://127.0.0.1:{port}", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=CHILD_ENV)
        async with asyncio.timeout(20), aiohttp.ClientSession() as http:
            while True:  # the check's session is live
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if (await resp.json())["sessions"]:
                        break
                await asyncio.sleep(0.05)
        during = await _snapshot(proc.pid, heap, 2)
        assert during["watched"]["ReflectorSession"] == 1
        assert during["watched"]["RTCPeerConnection"] == 1
        out, _ = await asyncio.wait_for(check.communicate(), 60)
        assert json.loads(out)["verdict"] == "video"
        await asyncio.sleep(1)  # the session ends when the client closes
        after = await _snapshot(proc.pid, heap, 3)
        assert after["watched"]["ReflectorSession"] == 0
        assert after["watched"]["RTCPeerConnection"] == 0
    finally:
        await stop(proc)

"""The pre-session check's own cost (`scripts/bench_check.py`), on loopback, no lab: wall time
of `netprobe check --local` from process launch to exit, and the CPU of a check process and of
`netprobe serve` per concurrent check, each as its own process (sampled with psutil every
20 ms). Every process started here is stopped on the way out, also on cancellation.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from netprobe.bench.kit import NETPROBE, stop_process
from netprobe.bench.procstats import own_cpu_seconds
from netprobe.errors import NetprobeError

VERDICTS = ("video", "audio_only", "phone", "unknown")


class CheckFailed(NetprobeError):
    """A check or the reflector did not do its part (no JSON, no verdict, did not start)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Measured:
    wall_s: float
    """From starting the process to its exit."""
    cpu_s: float
    """CPU seconds of the process, sampled every 20 ms while it ran."""
    doc: dict[str, Any]


async def run_measured(*args: str) -> Measured:
    """Run a netprobe command; its wall time, CPU time and parsed JSON output."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*NETPROBE, *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    communicate = asyncio.create_task(proc.communicate())
    try:
        cpu = 0.0
        while not communicate.done():
            cpu = max(cpu, own_cpu_seconds(proc.pid))  # 0 once reaped: keep the last figure
            await asyncio.wait([communicate], timeout=0.02)
        out, err = communicate.result()
    finally:
        if proc.returncode is None:
            proc.kill()
        communicate.cancel()
        await asyncio.gather(communicate, return_exceptions=True)
        await proc.wait()
    wall = time.monotonic() - t0
    try:
        doc = json.loads(out)
    except ValueError:
        raise CheckFailed(f"netprobe printed no JSON: {err.decode()[-500:]}") from None
    if doc.get("verdict") not in VERDICTS:
        raise CheckFailed(f"netprobe printed no verdict: {out.decode()[-500:]}")
    return Measured(wall, cpu, doc)


@dataclass
class LocalRuns:
    """`netprobe check --local` (client and reflector in one process), `runs` times."""

    runs: int
    walls: list[float] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    @property
    def has_figures(self) -> bool:
        return bool(self.walls)

    async def measure(self) -> None:
        for _ in range(self.runs):
            m = await run_measured("check", "--local", "--json")
            self.walls.append(m.wall_s)
            self.verdicts.append(m.doc["verdict"])
            self.durations.append(m.doc["duration_s"])

    def print(self) -> None:
        print(f"check --local: {len(self.walls)} runs, verdicts {sorted(set(self.verdicts))}")
        print(f"  wall time from command start: median {statistics.median(self.walls):.2f} s "
              f"(min {min(self.walls):.2f}, max {max(self.walls):.2f})   target <= 6 s")
        print(f"  measurement itself (duration_s): median "
              f"{statistics.median(self.durations):.2f} s", flush=True)


@dataclass
class CpuRounds:
    """`runs` rounds of `concurrent` checks at once against `netprobe serve`."""

    runs: int
    concurrent: int
    client_pct: list[float] = field(default_factory=list)
    """Each check process's CPU, % of one core over its whole life (start-up included)."""
    server_pct: list[float] = field(default_factory=list)
    """The reflector's CPU per round, % of one core per concurrent check."""

    @property
    def has_figures(self) -> bool:
        return bool(self.server_pct)

    async def measure(self) -> None:
        port = _free_port()
        server = await asyncio.create_subprocess_exec(
            *NETPROBE, "serve", "--port", str(port), "--workers", "1",  # its CPU: one process
            "--max-sessions", str(max(4, self.concurrent)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert server.stderr is not None
        drain: asyncio.Task[None] | None = None
        try:
            line = await asyncio.wait_for(server.stderr.readline(), 30)
            if b"listening" not in line:
                raise CheckFailed(f"the reflector did not start: {line.decode(errors='replace')}")
            drain = asyncio.create_task(_drain(server.stderr))
            url = f"http://127.0.0.1:{port}"
            for _ in range(self.runs):
                before = own_cpu_seconds(server.pid)
                t0 = time.monotonic()
                checks = await asyncio.gather(
                    *(run_measured("check", "--server", url, "--json")
                      for _ in range(self.concurrent)))
                wall = time.monotonic() - t0
                used = own_cpu_seconds(server.pid) - before
                self.client_pct += [100 * m.cpu_s / max(m.wall_s, 1e-3) for m in checks]
                self.server_pct.append(100 * used / wall / self.concurrent)
        finally:
            await stop_process(server)
            if drain is not None:
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)

    def print(self) -> None:
        print(f"CPU, {len(self.server_pct)} rounds of {self.concurrent} concurrent check(s) "
              f"against `netprobe serve`:")
        print(f"  client: mean {statistics.mean(self.client_pct):.0f} % of one core over a "
              f"whole check process (start-up included; max {max(self.client_pct):.0f} %)   "
              f"target <= 60 %")
        print(f"  reflector: mean {statistics.mean(self.server_pct):.0f} % of one core per "
              f"concurrent check (max {max(self.server_pct):.0f} %)   target <= 40 %",
              flush=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass

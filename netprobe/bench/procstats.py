"""What a process costs, for the benchmarks: CPU seconds and memory of a process and its
children (psutil), and a sampler of CPU time over a window.

A process that has exited reads as nothing (0 CPU seconds, NaN or None memory): a benchmark
reads a process that may end at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from pathlib import Path

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants (empty once it has exited)."""
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process alone (0 once it has been reaped)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process, its live children, and reaped children."""
    total = 0.0
    for i, process in enumerate(process_tree(pid)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
            if i == 0:
                total += times.children_user + times.children_system
    return total


def rss_mb(pid: int) -> float:
    """Resident set size of the process and its children, summed, MB."""
    total = 0
    for process in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 1e6


def own_rss_mb(pid: int) -> float:
    """RSS of the process alone (its measuring children not included), MB."""
    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.NoSuchProcess:
        return math.nan


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of the process and its children (shared pages counted once
    across them), MB."""
    total = 0
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 1e6


def uss_mb(pid: int) -> float | None:
    """Unique set size of the process (memory only it holds), MB."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_full_info().uss / 1e6
    return None


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of the process's RSS (VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


class CpuSampler:
    """Samples a process's CPU time (this process by default) every `interval_s`; `share`
    gives CPU seconds per second over a window. ``async with`` owns the sampling task."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.1) -> None:
        self._pid = os.getpid() if pid is None else pid
        self._interval_s = interval_s
        self._samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Cancel the sampling task and wait for its end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._samples.append((time.monotonic(), own_cpu_seconds(self._pid)))
            await asyncio.sleep(self._interval_s)

    def share(self, start: float, end: float) -> float:
        """CPU seconds per second between the first and last sample inside [start, end]
        (monotonic clock); NaN with fewer than two samples there."""
        inside = [s for s in self._samples if start <= s[0] <= end]
        if len(inside) < 2:
            return math.nan
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)

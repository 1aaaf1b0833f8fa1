#!/usr/bin/env python3
"""Benchmark the reflector's capacity: what a monitoring stream and a check cost it.

    python scripts/bench_reflector.py [--streams N] [--minutes M | --duration S]
                                      [--check-every S] [--workers N] [--generator-nice N]

The issue's scenario on a 2-core machine: `--streams 60 --check-every 5 --minutes 5`.

One `netprobe serve` on loopback (`--workers N` passed only when given; else serve's own
default, `[reflector] workers`: one worker process per core on Linux, under a supervisor);
this process is the load generator and holds N monitoring streams
(`MonitorLink`, 20 probes/s each, as the agent sends); a `netprobe check` process starts every
--check-every seconds. The reflector's CPU is its whole process tree's (psutil: the process,
its live children and reaped ones). Printed:

1. idle CPU, then CPU per monitoring stream (% of one core, idle subtracted) with streams only;
2. CPU per check (CPU-seconds) while checks run beside them: the tree's CPU over the checks'
   minutes minus the streams' own rate (measured alone before and after them);
3. the monitoring streams' RTT p95 (ms), the checks' verdicts, and every refusal (the
   reflector's `netprobe_reflector_offers_refused_total` and streams that failed).

The load generator competes with the reflector for the same cores: it runs at
`--generator-nice` (default 5; the checks it starts are put back to niceness 0 where allowed,
as root), and its own CPU and the checks' are printed, so a starved reflector shows.

The load generator is one source, so the reflector runs with the per-source rate limit off
and `max_monitors_per_source` above N (the global caps stay). Bounded: at most 1000 streams,
30 min; loopback only. Ctrl-C or SIGTERM stop it (exit status 130)
after the figures so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.kit import NETPROBE, stop_process  # noqa: E402
from netprobe.bench.procstats import cpu_seconds, own_cpu_seconds, process_tree  # noqa: E402
from netprobe.config import load_settings  # noqa: E402
from netprobe.errors import NetprobeError  # noqa: E402
from netprobe.webrtc.client import MonitorLink  # noqa: E402
from netprobe.webrtc.engine import restrict_to_loopback_if_local  # noqa: E402

MAX_STREAMS = 1000
MAX_DURATION_S = 1800.0


class BenchFailed(NetprobeError):
    """The reflector did not start, or nothing could be measured."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _refusals(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("netprobe_reflector_offers_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            if float(value):
                out[labels.split('"')[1]] = float(value)
    return out


def _normal_priority() -> None:
    """In a check's child process: back to niceness 0 (needs root; else the generator's)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (the checks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _check(url: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "check", "--server", url, "--json", "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_normal_priority)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    try:
        doc = json.loads(out)
        return doc["verdict"], (doc.get("reasons") or [{}])[0].get("code", "")
    except (ValueError, KeyError, TypeError, IndexError):
        return "no_result", ""


class Bench:
    def __init__(self, streams: int, duration: float, check_every: float,
                 workers: int | None = None, generator_nice: int = 5) -> None:
        self.streams, self.duration, self.check_every = streams, duration, check_every
        self.workers, self.generator_nice = workers, generator_nice
        self.summary = benchkit.Summary()
        self.rtts: list[float] = []
        self.failed_streams = 0
        self.verdicts: list[tuple[str, str]] = []
        self._recording = False

    def _on_echo(self, echo: Any, now: float) -> None:
        rtt = now - echo.probe_sent_at - max(0.0, echo.hold)
        if 0 <= rtt < 10 and self._recording:
            self.rtts.append(rtt * 1000)

    async def measure(self) -> None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        restrict_to_loopback_if_local(url)
        settings = load_settings()
        work = Path(tempfile.mkdtemp(prefix="bench_reflector."))
        log, config = work / "reflector.log", work / "netprobe.toml"
        # one load generator is one source: lift the per-source limits (not the caps)
        config.write_text(f"[reflector]\noffers_per_minute = 0.0\n"
                          f"max_monitors_per_source = {self.streams + 10}\n")
        server = await asyncio.create_subprocess_exec(
            *NETPROBE, "--config", str(config), "serve", "--port", str(port),
            "--max-monitors", str(self.streams + 10), "--max-checks", "8",
            "--log-file", str(log),
            *(["--workers", str(self.workers)] if self.workers is not None else []),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        links: list[MonitorLink] = []
        drain: asyncio.Task[None] | None = None
        try:
            assert server.stderr is not None
            line = await asyncio.wait_for(server.stderr.readline(), 30)
            if b"listening" not in line:
                raise BenchFailed(f"the reflector did not start: {line.decode(errors='replace')}")
            drain = asyncio.create_task(_drain(server.stderr))
            pid = server.pid
            me = os.getpid()
            os.setpriority(os.PRIO_PROCESS, 0, self.generator_nice)  # after the reflector's fork
            await asyncio.sleep(2)
            processes = len(process_tree(pid))
            t, c = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(5)
            idle = (cpu_seconds(pid) - c) / (time.monotonic() - t)
            self.summary.add(f"reflector idle CPU ({processes} processes)",
                             f"{100 * idle:.2f} % of a core", "(information)", None)
            interval = settings.agent.monitor_probe_interval_ms / 1000
            for i in range(self.streams):
                link = MonitorLink(url, settings, interval, self._on_echo)
                try:
                    await link.connect(15)
                except (NetprobeError, TimeoutError) as exc:
                    self.failed_streams += 1
                    print(f"  stream {i} failed to connect: {exc}", flush=True)
                    continue
                links.append(link)
            print(f"{len(links)} monitoring streams up", flush=True)
            await asyncio.sleep(3)
            self._recording = True
            window = min(20.0, self.duration / 3)
            t, c, g = time.monotonic(), cpu_seconds(pid), own_cpu_seconds(me)
            await asyncio.sleep(window)
            span = time.monotonic() - t
            streams_rate = (cpu_seconds(pid) - c) / span
            generator_rate = (own_cpu_seconds(me) - g) / span
            per_stream = 100 * (streams_rate - idle) / max(1, len(links))
            self.summary.add(f"CPU per monitoring stream ({len(links)} streams)",
                             f"{per_stream:.3f} % of a core", "<= 0.5 %",
                             per_stream <= 0.5 if links else None)
            self.summary.add(f"load generator CPU, {len(links)} streams (nice "
                             f"{self.generator_nice})", f"{100 * generator_rate:.1f} % of a core",
                             "(information)", None)
            checks: list[asyncio.Task[tuple[str, str]]] = []
            t, c = time.monotonic(), cpu_seconds(pid)
            g, k = own_cpu_seconds(me), _children_cpu_seconds()
            end = t + self.duration
            while time.monotonic() < end - 6:
                checks.append(asyncio.create_task(_check(url)))
                await asyncio.sleep(self.check_every)
            self.verdicts = list(await asyncio.gather(*checks))
            elapsed = time.monotonic() - t
            total = cpu_seconds(pid) - c
            # the streams' own rate again after the checks: the checks' share is a difference
            # of two large numbers, so the streams' rate is the mean of before and after
            await asyncio.sleep(2)
            t2, c2 = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(window)
            after_rate = (cpu_seconds(pid) - c2) / (time.monotonic() - t2)
            used = total - (streams_rate + after_rate) / 2 * elapsed
            per_check = used / max(1, len(checks))
            self.summary.add(f"CPU per check ({len(checks)} checks, every "
                             f"{self.check_every:g} s)", f"{per_check:.3f} CPU-seconds",
                             "<= 0.3 s", per_check <= 0.3)
            self.summary.add(f"reflector CPU, streams and checks ({elapsed:.0f} s)",
                             f"{100 * total / elapsed:.1f} % of a core", "(information)", None)
            self.summary.add("load generator CPU, streams and checks",
                             f"{100 * (own_cpu_seconds(me) - g) / elapsed:.1f} % of a core",
                             "(information)", None)
            per_client = (_children_cpu_seconds() - k) / max(1, len(checks))
            self.summary.add("check processes CPU, per check",
                             f"{per_client:.2f} CPU-seconds", "(information)", None)
            self._recording = False
            p95 = _p95(self.rtts)
            self.summary.add(f"monitoring RTT p95 ({len(self.rtts)} echoes)",
                             f"{benchkit.fmt(p95, 2)} ms", "<= 20 ms",
                             None if p95 is None else p95 <= 20)
            video = sum(1 for v, _ in self.verdicts if v == "video")
            others = sorted({f"{v}/{r}" for v, r in self.verdicts if v != "video"})
            self.summary.add("checks saying video", f"{video} of {len(self.verdicts)}"
                             + (f" ({', '.join(others)})" if others else ""),
                             "all", video == len(self.verdicts))
            refused = await _refusals(url)
            self.summary.add("refusals", (", ".join(f"{k} {v:g}" for k, v in refused.items())
                                          or "none") + f"; streams failed {self.failed_streams}",
                             "none", not refused and not self.failed_streams)
        finally:
            self._recording = False
            await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
            if drain is not None:
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)
            await stop_process(server)

    def report(self) -> int:
        print(f"\nreflector capacity on loopback ({benchkit.code_version()}):")
        for line in self.summary.lines():
            print(line)
        return 0


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read the reflector's warnings so its stderr pipe never fills; echo them."""
    while line := await stream.readline():
        print("  reflector: " + line.decode(errors="replace").rstrip(), flush=True)


def _p95(values: list[float]) -> float | None:
    if len(values) < 20:
        return None
    return statistics.quantiles(values, n=20)[18]


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of checks beside the streams (default 60)")
    parser.add_argument("--minutes", type=float,
                        help="the same in minutes (overrides --duration)")
    parser.add_argument("--check-every", type=float, default=5.0)
    parser.add_argument("--workers", type=int, metavar="N",
                        help="passed to `netprobe serve --workers N` (default: not passed)")
    parser.add_argument("--generator-nice", type=int, default=5, metavar="N",
                        help="niceness of this load generator, 0-19 (default 5)")
    args = parser.parse_args()
    if args.minutes is not None:
        args.duration = args.minutes * 60
    if not 1 <= args.streams <= MAX_STREAMS:
        parser.error(f"--streams must be 1-{MAX_STREAMS}")
    if not (12 <= args.duration <= MAX_DURATION_S and math.isfinite(args.duration)):
        parser.error(f"--duration must be 12-{MAX_DURATION_S:g} seconds")
    if not 1 <= args.check_every <= 60:
        parser.error("--check-every must be 1-60 seconds")
    if args.workers is not None and not 1 <= args.workers <= 64:
        parser.error("--workers must be 1-64")
    if not 0 <= args.generator_nice <= 19:
        parser.error("--generator-nice must be 0-19")
    bench = Bench(args.streams, args.duration, args.check_every, args.workers,
                  args.generator_nice)
    return benchkit.run("bench_reflector", bench.measure, bench.report)


if __name__ == "__main__":
    sys.exit(main())

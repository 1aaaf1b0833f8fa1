#!/usr/bin/env python3
"""Accuracy of the TCP speed test (speedtest-cli against the reflector) on emulated links.

    sudo python scripts/bench_tcpspeed.py [--rate KBPS ...] [--runs N] [--budget S] [--length S]

For each rate (default 2000 and 8000 kbit/s, the same both ways, 40 ms RTT, a 200 ms drop-tail
queue), starts the link lab, and for each run a fresh `netprobe serve` in the server namespace
(fresh, so its per-source request limit does not throttle the runs) and the test in the client
namespace as a separate process: the quick mode (`tcp_speed(url, budget_s=...)`, the one used
when UDP is blocked) and the sustained mode of `netprobe check --thorough`
(`tcp_speed(url, length_s=...)`). Prints, per run, the reported and the true rate each way, the
error in percent of the link's rate (IP packets, as the emulator counts it; TCP/IP headers take
~3.5 % of that, so -3.5 % is a perfect TCP figure), and the test's duration; then the worst
error per mode and rate, against the targets: +-15 % (the issue's, at 2 Mbit/s) for the
sustained mode at every rate and the quick mode at 2 Mbit/s, +-20 % for the quick mode at other
rates from 1 Mbit/s (below, information). Needs root and /dev/net/tun (the link lab).
Exit status 1 if a figure misses its target or a quick test overran its budget by more than
1 s; 3 if the lab cannot run here; 130 if stopped (after the figures so far).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.errors import NetprobeError  # noqa: E402
from netprobe.lab.accuracy import start_reflector  # noqa: E402
from netprobe.lab.link import LinkConfig  # noqa: E402
from netprobe.lab.linklab import LinkLab  # noqa: E402
from netprobe.lab.profiles import Profile  # noqa: E402

PORT = 8765
TARGET = 0.15
"""The issue's tolerance at 2 Mbit/s: the reported rate within +-15 % of the link's."""
QUICK_TARGET = 0.20
"""The quick test's (2.5 s for both ways) tolerance at rates other than 2 Mbit/s, from
1 Mbit/s up (below, a 200 ms queue is shorter than a new connection's first burst)."""
OVERRUN_S = 1.0
"""How far past its budget a quick test may end (one request's timeout, at most)."""


def target(rate_kbps: float, mode: str) -> float | None:
    """The tolerance a mode's figures are judged by at `rate_kbps` (None: information)."""
    if mode != "quick" or rate_kbps == 2000.0:
        return TARGET
    return QUICK_TARGET if rate_kbps >= 1000.0 else None

#: The test, run in the client namespace as its own process: prints one JSON object.
CLIENT = """
import asyncio, json, sys
from netprobe.tcpspeed import tcp_speed
async def main():
    url, mode, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
    kw = {"budget_s": value} if mode == "quick" else {"length_s": value}
    try:
        r = await tcp_speed(url, **kw)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    print(json.dumps({"down": r.down_mbps, "up": r.up_mbps, "latency": r.latency_ms,
                      "duration": r.duration_s}))
asyncio.run(main())
"""


@dataclass(frozen=True)
class Run:
    rate_kbps: float
    mode: str
    down_kbps: float | None
    up_kbps: float | None
    duration_s: float | None
    error: str | None

    def err_pct(self, kbps: float | None) -> float | None:
        return None if kbps is None else (kbps - self.rate_kbps) / self.rate_kbps * 100.0


def profile(rate_kbps: float) -> Profile:
    queue = int(rate_kbps * 1000 / 8 * 0.2)  # 200 ms of queue
    link = LinkConfig(delay_ms=20, rate_kbps=rate_kbps, queue_packets=None, queue_bytes=queue)
    return Profile(f"tcp-{rate_kbps:g}", f"{rate_kbps:g} kbit/s each way, 40 ms RTT",
                   up=link, down=link)


async def one_run(lab: LinkLab, rate_kbps: float, mode: str, value: float) -> Run:
    server = await start_reflector(lab, PORT)
    try:
        client = await lab.exec_client(
            sys.executable, "-c", CLIENT, f"http://{lab.server_addr}:{PORT}", mode, str(value),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(client.communicate(), 60)
    finally:
        await benchkit.stop_process(server, 10)
    try:
        got = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise NetprobeError(f"the test printed no result: {err.decode()[-300:]}") from None
    if "error" in got:
        return Run(rate_kbps, mode, None, None, None, got["error"])

    def kbps(mbps: float | None) -> float | None:
        return None if mbps is None else mbps * 1000.0

    return Run(rate_kbps, mode, kbps(got["down"]), kbps(got["up"]), got["duration"], None)


def line(r: Run) -> str:
    if r.error:
        return f"{r.rate_kbps:>7g} {r.mode:<9} error: {r.error}"
    f = benchkit.fmt
    return (f"{r.rate_kbps:>7g} {r.mode:<9} down {f(r.down_kbps, 0):>6} "
            f"({f(r.err_pct(r.down_kbps)):>6} %)"
            f"  up {f(r.up_kbps, 0):>6} ({f(r.err_pct(r.up_kbps)):>6} %)"
            f"  {f(r.duration_s, 2):>5} s")


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--rate", type=float, action="append", metavar="KBPS",
                        help="link rate each way (repeat; default 2000 and 8000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode and rate")
    parser.add_argument("--budget", type=float, default=2.5, help="quick mode's budget (s)")
    parser.add_argument("--length", type=float, default=5.0,
                        help="sustained mode's length per direction (s)")
    args = parser.parse_args()
    if args.runs < 1 or args.budget <= 0 or args.length <= 0:
        parser.error("--runs, --budget and --length must be positive")
    rates = args.rate or [2000.0, 8000.0]
    if any(r <= 0 for r in rates):
        parser.error("--rate must be positive")
    runs: list[Run] = []
    modes = (("quick", args.budget), ("sustained", args.length))

    async def measure() -> None:
        print(f"{'rate':>7} {'mode':<9} reported kbit/s (error vs link rate), duration")
        for rate in rates:
            async with LinkLab(profile(rate)) as lab:
                for mode, value in modes:
                    for _ in range(args.runs):
                        run = await one_run(lab, rate, mode, value)
                        runs.append(run)
                        print(line(run), flush=True)

    def report() -> int:
        summary = benchkit.Summary()
        for rate in rates:
            for mode, value in modes:
                rs = [r for r in runs if r.rate_kbps == rate and r.mode == mode]
                if not rs:
                    continue
                errs = [abs(e) for r in rs for e in (r.err_pct(r.down_kbps),
                                                     r.err_pct(r.up_kbps))
                        if e is not None]
                missing = sum(r.down_kbps is None or r.up_kbps is None for r in rs)
                tolerance = target(rate, mode)
                ok = bool(errs) and not missing and (tolerance is None or
                                                     max(errs) <= tolerance * 100)
                summary.add(f"{rate:g} kbit/s {mode}: worst |error|",
                            f"{max(errs):.1f} % ({len(rs)} runs, {missing} incomplete)"
                            if errs else f"none measured ({len(rs)} runs)",
                            f"<= {tolerance * 100:.0f} %" if tolerance else "(information)",
                            ok if tolerance else None)
                durations = [r.duration_s for r in rs if r.duration_s is not None]
                if durations:
                    limit = value + OVERRUN_S if mode == "quick" else None
                    summary.add(f"{rate:g} kbit/s {mode}: longest test", f"{max(durations):.2f} s",
                                f"<= {limit:g} s" if limit else "(information)",
                                max(durations) <= limit if limit else None)
        print("\nsummary:")
        print("\n".join(summary.lines()))
        return 1 if summary.missed else 0

    return benchkit.run("bench_tcpspeed", measure, report, needs_lab=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What the monitoring stream's measuring child costs, by probe spacing, on loopback.

    python scripts/bench_monitor_child.py [--spacings-ms 5000,100,50] [--seconds 45]

`scripts/bench_agent.py --only monitor` measures a monitored session as a whole (the agent and
its measuring child, over the link lab, as root). This isolates the child
(`netprobe.agent.worker`, the aiortc peer): a real child process, started as the agent starts
it (`IsolatedMonitorLink`), streams probes to an in-process reflector on 127.0.0.1 at each
spacing in turn, and the child's CPU (user + system, % of one core,
`netprobe.bench.procstats`) is read over `--seconds` after 3 s of settling. A spacing of
seconds shows what the connection costs without probes (RTCP, consent); the others show what
each probe and its echo add. The echoes the agent side received are printed too, so a stream
that stalled shows. Prints, asserts
nothing; no root needed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.agent.worker import IsolatedMonitorLink  # noqa: E402
from netprobe.bench.procstats import own_cpu_seconds  # noqa: E402
from netprobe.config import ReflectorSettings, load_settings  # noqa: E402
from netprobe.webrtc.engine import restrict_to_loopback_if_local  # noqa: E402
from netprobe.webrtc.reflector import Reflector  # noqa: E402

SETTLE_S = 3.0


async def one(url: str, spacing_ms: float, seconds: float) -> tuple[float, int]:
    """(child CPU %, echoes) for one stream at `spacing_ms`."""
    echoes = 0

    def on_echo(echo: object, now: float) -> None:
        nonlocal echoes
        echoes += 1

    link = IsolatedMonitorLink(url, load_settings(), spacing_ms / 1000, on_echo)
    await link.connect(10)
    try:
        pid = link._child._proc.pid  # type: ignore[union-attr]
        await asyncio.sleep(SETTLE_S)
        before, at, seen = own_cpu_seconds(pid), time.monotonic(), echoes
        await asyncio.sleep(seconds)
        used, span = own_cpu_seconds(pid) - before, time.monotonic() - at
    finally:
        await link.close()
    return used / span * 100, echoes - seen


async def main(spacings: list[float], seconds: float) -> None:
    reflector = Reflector(ReflectorSettings(host="127.0.0.1", port=0))
    await reflector.start()
    restrict_to_loopback_if_local(reflector.url)
    try:
        print(f"measuring child on loopback, {seconds:g} s per spacing", flush=True)
        for spacing in spacings:
            cpu, echoes = await one(reflector.url, spacing, seconds)
            print(f"  probe every {spacing:g} ms: child {cpu:.2f} % of a core, "
                  f"{echoes} echoes ({echoes / seconds:.1f}/s)", flush=True)
    finally:
        await reflector.stop()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings-ms", default="5000,100,50")
    parser.add_argument("--seconds", type=float, default=45.0)
    args = parser.parse_args(argv)
    try:
        spacings = [float(s) for s in args.spacings_ms.split(",") if s.strip()]
    except ValueError:
        parser.error("--spacings-ms: comma-separated milliseconds, e.g. 5000,100,50")
    if not spacings or any(s <= 0 for s in spacings) or args.seconds <= 0:
        parser.error("spacings and --seconds must be positive")
    try:
        asyncio.run(main(spacings, args.seconds))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())

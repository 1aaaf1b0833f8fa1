#!/usr/bin/env python3
"""What a failed first reflector costs a check that has a second one (issue 8, failover).

    python scripts/bench_failover.py [--runs 3]

For each kind of first reflector (none: the working one alone; refused: nothing listens;
busy: it answers 503; syn_dropped: its accept queue is full, so its SYNs vanish as a dead
host's do; no_answer: it accepts the connection and never answers) it runs `--runs` checks
against [that one, a working reflector] on loopback, in process, and prints the verdicts, what
became of each URL and the median check duration. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.config import ReflectorSettings, load_settings  # noqa: E402
from netprobe.webrtc.client import run_check_attempts  # noqa: E402
from netprobe.webrtc.engine import restrict_to_loopback_if_local  # noqa: E402
from netprobe.webrtc.reflector import Reflector  # noqa: E402


def _dead_host() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: further SYNs are dropped."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(hole.getsockname())
        except BlockingIOError:
            pass
        fill.append(c)
    return hole, fill


async def measure(runs: int) -> None:
    settings = load_settings()
    good = Reflector(ReflectorSettings(port=0))
    busy = Reflector(ReflectorSettings(port=0, max_checks=0, max_monitors=1))
    await good.start()
    await busy.start()
    hole, fill = _dead_host()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    cases = {
        "none": [good.url],
        "refused": ["http://127.0.0.1:1", good.url],
        "busy": [busy.url, good.url],
        "syn_dropped": [f"http://127.0.0.1:{hole.getsockname()[1]}", good.url],
        "no_answer": [f"http://127.0.0.1:{silent.getsockname()[1]}", good.url],
    }
    try:
        print(f"{'first reflector':16s} {'verdicts':24s} {'attempts':32s} median check")
        alone = None
        for name, urls in cases.items():
            took, verdicts, outcomes = [], [], []
            for _ in range(runs):
                result, attempts = await run_check_attempts(urls, settings, local=True)
                took.append(result.duration_s)
                verdicts.append(result.verdict.verdict)
                outcomes = [a.outcome for a in attempts]
            median = statistics.median(took)
            alone = median if alone is None else alone
            extra = "" if name == "none" else f"  (+{median - alone:.2f} s)"
            print(f"{name:16s} {','.join(verdicts):24s} {'/'.join(outcomes):32s} "
                  f"{median:.2f} s{extra}")
    finally:
        for s in (hole, silent, *fill):
            s.close()
        await good.stop()
        await busy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not restrict_to_loopback_if_local("127.0.0.1"):
        print("no loopback interface to run checks over", file=sys.stderr)
        return 1
    asyncio.run(measure(max(1, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

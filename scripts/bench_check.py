#!/usr/bin/env python3
"""Benchmark the pre-session check on loopback and print the figures issue 2 asks for.

    python scripts/bench_check.py [--runs N] [--concurrent K]

1. `netprobe check --local` wall time from command start (process launch to exit), median.
2. Client CPU during a check (percent of one core, averaged over the check) and the
   reflector's CPU per concurrent check, with `netprobe serve` as its own process.

Figures are printed, not asserted: this machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

import psutil

NETPROBE = [sys.executable, "-m", "netprobe"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_measured(args: list[str]) -> tuple[float, float, dict]:
    """Run a netprobe command; return (wall s, CPU s of the process, parsed JSON)."""
    t0 = time.monotonic()
    proc = psutil.Popen([*NETPROBE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cpu = 0.0
    while proc.poll() is None:
        try:
            t = proc.cpu_times()
            cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    try:
        doc = json.loads(out)
    except ValueError:
        sys.exit(f"netprobe printed no JSON: {err.decode()[-500:]}")
    return wall, cpu, doc


def bench_local(runs: int) -> None:
    walls, verdicts, durations = [], [], []
    for _ in range(runs):
        wall, _, doc = _run_measured(["check", "--local", "--json"])
        walls.append(wall)
        verdicts.append(doc["verdict"])
        durations.append(doc["duration_s"])
    print(f"check --local: {runs} runs, verdicts {sorted(set(verdicts))}")
    print(f"  wall time from command start: median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f})   target <= 6 s")
    print(f"  measurement itself (duration_s): median {statistics.median(durations):.2f} s")


def bench_cpu(runs: int, concurrent: int) -> None:
    port = _free_port()
    server = psutil.Popen([*NETPROBE, "serve", "--port", str(port),
                           "--max-sessions", str(max(4, concurrent))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        server.stderr.readline()  # type: ignore[union-attr]  # "listening on ..."
        url = f"http://127.0.0.1:{port}"
        client_pct, server_pct = [], []
        for _ in range(runs):
            before = server.cpu_times()
            t0 = time.monotonic()
            procs = [psutil.Popen([*NETPROBE, "check", "--server", url, "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for _ in range(concurrent)]
            cpu = dict.fromkeys(range(concurrent), 0.0)
            starts = [time.monotonic()] * concurrent
            ends = [0.0] * concurrent
            while any(p.poll() is None for p in procs):
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        try:
                            t = p.cpu_times()
                            cpu[i] = t.user + t.system
                        except psutil.NoSuchProcess:
                            pass
                        ends[i] = time.monotonic()
                time.sleep(0.02)
            wall = time.monotonic() - t0
            after = server.cpu_times()
            for i, p in enumerate(procs):
                out, _ = p.communicate()
                doc = json.loads(out)
                # average over the measurement itself (duration_s), as a user's check
                client_pct.append(100 * cpu[i] / max(ends[i] - starts[i], 1e-3))
                assert doc["verdict"] in ("video", "audio_only", "phone", "unknown")
            used = (after.user + after.system) - (before.user + before.system)
            server_pct.append(100 * used / wall / concurrent)
        print(f"CPU, {runs} rounds of {concurrent} concurrent check(s) against `netprobe serve`:")
        print(f"  client: mean {statistics.mean(client_pct):.0f} % of one core over a whole "
              f"check process (start-up included; max {max(client_pct):.0f} %)   target <= 60 %")
        print(f"  reflector: mean {statistics.mean(server_pct):.0f} % of one core per "
              f"concurrent check (max {max(server_pct):.0f} %)   target <= 40 %")
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()
    bench_local(args.runs)
    bench_cpu(args.runs, 1)
    if args.concurrent > 1:
        bench_cpu(max(2, args.runs // 2), args.concurrent)


if __name__ == "__main__":
    main()

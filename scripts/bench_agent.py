#!/usr/bin/env python3
"""Performance benchmark of the background agent (`netprobe agent`), on the link lab.

    sudo /work/venv/bin/python scripts/bench_agent.py [--only idle,monitor,reaction,status]
        [--idle-minutes 10] [--runs 10] [--monitor-seconds 60] [--status-requests 500]

Everything runs as real processes over the link lab (docs/lab.md): `netprobe serve` in the
server namespace, `netprobe agent` (its own process, a temporary config: reflector URL, API
port, token file and JSON log in a temporary directory) in the client namespace, and a small
HTTP helper in the client namespace too (the agent's API listens on the client namespace's
127.0.0.1, so nothing outside that namespace can reach it). The figures of issue 4:

1. idle: CPU (% of one core, process and children, psutil) averaged over `--idle-minutes`
   with the default idle interval, and the agent process's peak RSS (checks run in a short-
   lived child process, `netprobe/agent/worker.py`; the agent with that child is printed too, RSS
   and PSS, with the seconds a child was alive). The window starts when the API answers,
   so the agent's start-up check (1 s after start) and any scheduled light check that falls in
   the window are *included* in the average; the CPU spent in checks and between them, and the
   long-run average they imply at the configured mean interval, are printed too.
2. monitor: agent CPU and the traffic on the emulated link each way (the lab's per-direction
   byte counters: everything the agent sends and receives, RTP, RTCP, STUN consent and DTLS
   included) while a session is monitored, over `--monitor-seconds`, starting after the
   session's monitoring link is up (no check runs in the window; the log is checked for that).
3. reaction: on profile `agent-degrade` (clean, then 200 kbit/s with 8 % loss, then clean),
   time from the degradation to `audio_only` and from the recovery to `video`, and every
   recommendation change during the session, over `--runs` runs. Changes are read from the
   agent's server-sent events (`GET /v1/events`, stamped on arrival with the monotonic clock,
   which the namespaces share with the lab) and cross-checked with the JSON log's
   `recommendation_changed` lines.
4. status: median and p95 of `GET /v1/status` (one keep-alive connection, one request every
   20 ms) while a session is monitored, over `--status-requests` requests; plus the same with
   a new TCP connection per request.

The figures are printed, not asserted (exit status 0; 3 if the lab cannot run here; 130 if
stopped by Ctrl-C or SIGTERM, after the figures so far). Needs root and /dev/net/tun. Every
namespace is removed at the end, also on Ctrl-C and SIGTERM. The rig, the helper and the
measurements are modules: `netprobe.bench.agent`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.agent.reaction import REACTION_PROFILE  # noqa: E402
from netprobe.bench.agent.report import PARTS, AgentBenchPlan, run_sections  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.parser(__doc__)
    benchkit.add_only(parser, PARTS)
    parser.add_argument("--idle-minutes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=10, help="reaction runs (default 10)")
    parser.add_argument("--monitor-seconds", type=float, default=60.0)
    parser.add_argument("--status-requests", type=int, default=500)
    parser.add_argument("--profile", default=REACTION_PROFILE,
                        help=f"reaction profile (default {REACTION_PROFILE})")
    args = parser.parse_args(argv)
    plan = AgentBenchPlan(
        only=frozenset(benchkit.parse_only(parser, args.only, PARTS)),
        idle_minutes=args.idle_minutes, runs=args.runs, monitor_seconds=args.monitor_seconds,
        status_requests=args.status_requests, profile=args.profile)
    summary = benchkit.Summary()
    started_version = ""

    async def measure() -> None:
        nonlocal started_version
        started_version = benchkit.code_version()
        print(f"netprobe code measured: {started_version} (each section names the code its "
              f"agent started from)", flush=True)
        await run_sections(plan, summary)

    def report() -> int:
        ended_version = benchkit.code_version()
        print(f"\n== summary (issue 4, figures to reach), netprobe {started_version}"
              + (f" -> {ended_version}: THE CODE CHANGED DURING THE RUN"
                 if ended_version != started_version else ""))
        print("\n".join(summary.lines()), flush=True)
        return 0

    return benchkit.run("bench_agent", measure, report, needs_lab=True)


if __name__ == "__main__":
    sys.exit(main())

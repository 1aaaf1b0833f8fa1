#!/usr/bin/env python3
"""Calls noticed by themselves (issue 11), measured on the link lab.

    sudo /work/venv/bin/python scripts/bench_calls.py [--only calls,idle,monitor] [--runs 10]
        [--kbps 300] [--call-seconds 30] [--idle-minutes 3] [--monitor-seconds 60]

Real processes, as scripts/bench_agent.py runs them (`netprobe.bench.agent.rig`): `netprobe
serve` in the server namespace, `netprobe agent` (default settings but a temporary config) in
the client namespace.

1. calls: `--runs` calls on one agent whose idle checks are due every 10 s. A call is two-way
   UDP media (`netprobe.bench.agent.media`: 1000-byte datagrams at `--kbps` each way, paced)
   from a process of its own in the client namespace to an echo in the server namespace, for
   `--call-seconds`. Per run: seconds from the first packet to the status saying `monitoring`
   with `session_source` "detected" (target <= 15 s), from the last packet to `idle` (<= 60 s),
   and idle checks started in between (0), read from the agent's JSON log.
2. idle: the idle agent's CPU (% of a core, process and children) over `--idle-minutes` after
   its start-up check, once with `[agent] detect_calls = "on"` and once "off"; the difference is
   what detection costs (target <= 0.2 % of a core).
3. monitor: a session's CPU and traffic each way (`bench_agent.py --only monitor`, reused).

The figures are printed, not asserted (exit status 0; 3 if the lab cannot run here; 130 if
stopped). Needs root and /dev/net/tun; every namespace is removed at the end.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.agent.calls import CALL_KBPS, CALL_S, bench_calls, idle_cpu  # noqa: E402
from netprobe.bench.agent.usage import bench_monitor  # noqa: E402

PARTS = ("calls", "idle", "monitor")


def main(argv: list[str] | None = None) -> int:
    parser = benchkit.parser(__doc__)
    benchkit.add_only(parser, PARTS)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kbps", type=float, default=CALL_KBPS)
    parser.add_argument("--call-seconds", type=float, default=CALL_S)
    parser.add_argument("--idle-minutes", type=float, default=3.0)
    parser.add_argument("--monitor-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    only = benchkit.parse_only(parser, args.only, PARTS)
    summary = benchkit.Summary()
    fmt = benchkit.fmt

    async def measure() -> None:
        print(f"netprobe code measured: {benchkit.code_version()}", flush=True)
        if "calls" in only:
            print(f"== calls: {args.runs} x {args.kbps:.0f} kbit/s each way for "
                  f"{args.call_seconds:.0f} s, idle checks due every 10 s", flush=True)
            res = await bench_calls(args.runs, kbps=args.kbps, call_s=args.call_seconds)
            runs = res.runs
            starts = [r.to_monitoring_s for r in runs]
            ends = [r.to_idle_s for r in runs]
            good_start = sum(1 for s in starts if s is not None and s <= 15)
            good_end = sum(1 for e in ends if e is not None and e <= 60)
            worst = max((s for s in starts if s is not None), default=None)
            summary.add("call -> monitoring (worst; median)",
                        f"{fmt(worst)} s; {fmt(_median(starts))} s",
                        "<= 15 s", worst is not None and good_start == len(runs))
            summary.add("runs monitored within 15 s", f"{good_start}/{len(runs)}",
                        f"{len(runs)}/{len(runs)}", good_start == len(runs))
            worst = max((e for e in ends if e is not None), default=None)
            summary.add("call ended -> idle (worst; median)",
                        f"{fmt(worst)} s; {fmt(_median(ends))} s", "<= 60 s",
                        worst is not None and good_end == len(runs))
            summary.add("runs idle within 60 s", f"{good_end}/{len(runs)}",
                        f"{len(runs)}/{len(runs)}", good_end == len(runs))
            during = sum(r.idle_checks for r in runs)
            summary.add("idle checks during calls", f"{during} (outside: "
                        f"{res.idle_checks_outside})", "0", during == 0)
            summary.add("agent exit status", str(res.agent_exit), "0", res.agent_exit == 0)
        if "idle" in only:
            print(f"== idle CPU, detection on and off, {args.idle_minutes:g} min each",
                  flush=True)
            on = await idle_cpu(args.idle_minutes, "on")
            off = await idle_cpu(args.idle_minutes, "off")
            print(f"  on {on:.3f} %, off {off:.3f} % of a core", flush=True)
            summary.add("idle CPU, detect_calls on / off", f"{fmt(on, 3)} / {fmt(off, 3)} %",
                        "(information)", None)
            summary.add("call detection's cost while idle", f"{fmt(on - off, 3)} % of a core",
                        "<= 0.2 %", on - off <= 0.2)
        if "monitor" in only:
            print(f"== monitoring a session, {args.monitor_seconds:g} s", flush=True)
            mon, _ = await bench_monitor(args.monitor_seconds, 0, do_status=False)
            summary.add("monitoring: agent CPU", f"{fmt(mon.cpu_pct, 2)} % of a core",
                        "<= 3 %", mon.cpu_pct <= 3)
            summary.add("monitoring: traffic up / down",
                        f"{fmt(mon.up_kbps)} / {fmt(mon.down_kbps)} kbit/s", "<= 64 kbit/s",
                        max(mon.up_kbps, mon.down_kbps) <= 64)

    def report() -> int:
        print("\n== summary (issue 11, figures to reach)")
        print("\n".join(summary.lines()), flush=True)
        return 0

    return benchkit.run("bench_calls", measure, report, needs_lab=True)


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


if __name__ == "__main__":
    sys.exit(main())

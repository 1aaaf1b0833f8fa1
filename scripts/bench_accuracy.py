#!/usr/bin/env python3
"""Accuracy benchmark: `netprobe check` against `netprobe serve` over every emulated link.

    sudo python scripts/bench_accuracy.py [--profile NAME ...] [--repeat N]

For each profile of config/lab-profiles.toml that has an expectation (and no mid-run phases),
runs a real check over the link lab and prints: profile, expected verdict(s), the verdict got,
time to verdict (from starting the check process), measured/true RTT, loss and throughput
per direction, and the bytes the check put on the link; then a summary (verdicts, time to
verdict, bytes per check on the clean link). Needs root and /dev/net/tun (the link lab).
Exit status 1 if any verdict is wrong, a figure is out of tolerance or a verdict takes over
15 s; 3 if the lab cannot run here; 130 if stopped by Ctrl-C or SIGTERM (after the summary
of the runs so far).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.lab import load_profiles  # noqa: E402
from netprobe.lab.accuracy import (  # noqa: E402
    HEADER,
    AccuracyRow,
    check_on_profile,
    format_row,
    judged_profiles,
)

MAX_WALL_S = 15.0
"""Time to verdict the issue allows (from starting the check process)."""


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--profile", action="append", help="only these profiles")
    parser.add_argument("--repeat", type=int, default=1, help="runs per profile")
    args = parser.parse_args()
    profiles = judged_profiles(load_profiles())
    if args.profile:
        unknown = set(args.profile) - {p.name for p in profiles}
        if unknown:
            parser.error(f"--profile: no judged profile {', '.join(sorted(unknown))}")
        profiles = [p for p in profiles if p.name in args.profile]
    rows: list[AccuracyRow] = []

    async def measure() -> None:
        print(HEADER)
        for profile in profiles:
            for _ in range(args.repeat):
                row = await check_on_profile(profile)
                rows.append(row)
                print(format_row(row) + f"  [{_bytes(row)}]", flush=True)

    def report() -> int:
        if not rows:
            return 0
        walls = [r.wall_s for r in rows]
        wrong = [r for r in rows if not r.verdict_ok]
        bad_video = [r for r in rows if r.verdict == "video" and "video" not in r.expected]
        figures = [r for r in rows if r.verdict_ok and not r.ok]
        clean = [r.link_bytes for r in rows if r.profile == "clean"]
        if clean:
            print(f"bytes on the link per check, clean: median {statistics.median(clean) / 1e6:.2f}"
                  f" MB, max {max(clean) / 1e6:.2f} MB (target <= 1.2 MB)")
        print(f"\nverdicts right: {len(rows) - len(wrong)}/{len(rows)}; video on a link that "
              f"cannot hold it: {len(bad_video)}; time to verdict: median "
              f"{statistics.median(walls):.1f} s, max {max(walls):.1f} s "
              f"({max(rows, key=lambda r: r.wall_s).profile}); figures out of tolerance: "
              f"{len(figures)} run(s)")
        return 1 if wrong or bad_video or figures or max(walls) > MAX_WALL_S else 0

    return benchkit.run("bench_accuracy", measure, report, needs_lab=True)


def _bytes(row: AccuracyRow) -> str:
    return f"{row.link_bytes / 1e6:.2f} MB"


if __name__ == "__main__":
    sys.exit(main())

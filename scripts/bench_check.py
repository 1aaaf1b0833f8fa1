#!/usr/bin/env python3
"""Benchmark the pre-session check on loopback and print the figures issue 2 asks for.

    python scripts/bench_check.py [--runs N] [--concurrent K]

1. `netprobe check --local` wall time from command start (process launch to exit), median.
2. Client CPU during a check (percent of one core, averaged over the check) and the
   reflector's CPU per concurrent check, with `netprobe serve` as its own process.

Figures are printed, not asserted: this machine is noisy. Ctrl-C or SIGTERM stop it (exit
status 130) after the figures of the runs so far.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.check import CpuRounds, LocalRuns  # noqa: E402


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()
    sections: list[LocalRuns | CpuRounds] = [LocalRuns(args.runs), CpuRounds(args.runs, 1)]
    if args.concurrent > 1:
        sections.append(CpuRounds(max(2, args.runs // 2), args.concurrent))
    printed = 0

    async def measure() -> None:
        nonlocal printed
        for section in sections:
            await section.measure()
            section.print()
            printed += 1

    def report() -> int:  # after an interruption: the section cut short, its runs so far
        for section in sections[printed:]:
            if section.has_figures:
                section.print()
        return 0

    return benchkit.run("bench_check", measure, report)


if __name__ == "__main__":
    sys.exit(main())

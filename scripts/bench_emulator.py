#!/usr/bin/env python3
"""How faithful and how cheap is the link lab? Configured vs measured, per direction.

    sudo /work/venv/bin/python scripts/bench_emulator.py [--quick]
        [--only delay,loss,rate,trace,cpu]

UDP streams run between the lab's namespaces (``netprobe.lab.udpmeter``): one-way delay from
send and arrival stamps on the shared monotonic clock, loss from sequence numbers, rate from
the IP bytes that arrive while the bottleneck is saturated. The forwarder runs in this process,
so its CPU cost is this process's CPU time while traffic flows. Targets: delay within 1 ms,
loss within 0.5 points, rate within 3 %. Exit status 1 if one is missed; 3 if the lab cannot
run here; 130 if stopped by Ctrl-C or SIGTERM (after the rows so far).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.emulator import BENCHES, HEADER, Rows  # noqa: E402


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer packets (noisier loss)")
    benchkit.add_only(parser, BENCHES)
    args = parser.parse_args()
    only = benchkit.parse_only(parser, args.only, BENCHES)
    rows = Rows()

    async def measure() -> None:
        print(HEADER)
        for name, bench in BENCHES.items():
            if name in only:
                await bench(args.quick, rows)

    def report() -> int:
        print("\n" + rows.closing_line())
        return 1 if rows.missed else 0

    return benchkit.run("bench_emulator", measure, report, needs_lab=True)


if __name__ == "__main__":
    sys.exit(main())

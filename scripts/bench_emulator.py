#!/usr/bin/env python3
"""How faithful and how cheap is the link lab? Configured vs measured, per direction.

    sudo /work/venv/bin/python scripts/bench_emulator.py [--quick]
        [--only delay,loss,rate,trace,cpu,bucket]

UDP streams run between the lab's namespaces (``netprobe.lab.udpmeter``): one-way delay from
send and arrival stamps on the shared monotonic clock, loss from sequence numbers, rate from
the IP bytes that arrive while the bottleneck is saturated. The forwarder runs in this process,
so its CPU cost is this process's CPU time while traffic flows. Targets: delay within 1 ms,
loss within 0.5 points, rate within 3 %. `bucket` (issue 10): a stream at the line rate (at most
20 Mbit/s) through a policer and a shaper each way gets the bucket's burst, then its sustained
rate (targets: burst within 5 % or 3000 B, sustained rate within 3 %). Exit status 1 if one
is missed; 3 if the lab cannot run here; 130 if stopped by Ctrl-C or SIGTERM (after the rows
so far).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.bench.emulator import BENCHES, HEADER, RATE_TOL, Rows  # noqa: E402
from netprobe.lab.bucket import fit_bucket  # noqa: E402
from netprobe.lab.linklab import LinkLab, Side  # noqa: E402
from netprobe.lab.profiles import load_profile  # noqa: E402
from netprobe.lab.udpmeter import _json_output, _module_argv, _wait_ready  # noqa: E402

BUCKET_CASES: tuple[tuple[str, Side], ...] = (
    ("policer-up-200k", "client"), ("policer-down-200k", "server"),
    ("shaper-up", "client"), ("shaper-down", "server"),
)


async def bench_bucket(quick: bool, rows: Rows) -> None:
    """A stream at the line rate gets the bucket's burst, then the sustained rate."""
    seconds, size = (3.0 if quick else 6.0), 1200
    for name, sender in BUCKET_CASES:
        profile = load_profile(name)
        link, direction = (profile.up, "up") if sender == "client" else (profile.down, "down")
        bucket = link.policer or link.shaper
        assert bucket is not None and link.rate_kbps is not None
        offered = min(link.rate_kbps, 20_000.0)
        async with LinkLab(profile) as lab:
            to = lab.server_addr if sender == "client" else lab.client_addr
            recv = await lab.exec("server" if sender == "client" else "client",
                                  *_module_argv("recv", "--port", "47020", "--idle", "1.5"),
                                  stdout=asyncio.subprocess.PIPE)
            await _wait_ready(recv)
            send = await lab.exec(sender, *_module_argv(
                "send", "--to", to, "--port", "47020", "--size", str(size), "--rate-kbps",
                str(offered), "--count", str(int(offered * 1000 * seconds / (size * 8)))),
                stdout=asyncio.subprocess.PIPE)
            await _json_output(send)
            arrivals = (await _json_output(recv))["arrivals"]  # [seq, sent, arrived, bytes]
        fit = fit_bucket([(a[2], a[3]) for a in arrivals])
        late = [1000 * (a[2] - a[1]) for a in arrivals[-50:]]
        rows.record(f"{name} burst ({offered:g} kbit/s offered)", direction,
                    bucket.burst_bytes, fit.burst_bytes, "bytes",
                    abs(fit.burst_bytes - bucket.burst_bytes)
                    <= max(0.05 * bucket.burst_bytes, 3000))
        rows.record(f"{name} sustained rate", direction, bucket.rate_kbps, fit.sustained_kbps,
                    "kbit/s", abs(fit.sustained_kbps / bucket.rate_kbps - 1) <= RATE_TOL)
        rows.record(f"{name} delay at the end (median)", direction, None,
                    statistics.median(late), "ms", None)


def main() -> int:
    parser = benchkit.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer packets (noisier loss)")
    benches = {**BENCHES, "bucket": bench_bucket}
    benchkit.add_only(parser, benches)
    args = parser.parse_args()
    only = benchkit.parse_only(parser, args.only, benches)
    rows = Rows()

    async def measure() -> None:
        print(HEADER)
        for name, bench in benches.items():
            if name in only:
                await bench(args.quick, rows)

    def report() -> int:
        print("\n" + rows.closing_line())
        return 1 if rows.missed else 0

    return benchkit.run("bench_emulator", measure, report, needs_lab=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Relay and connect-breaking benchmark (issue 9): `netprobe check` over the link lab where UDP
is blocked, with and without a TURN relay (coturn), and over links too lossy to connect.

    sudo python scripts/bench_relay.py [--runs N] [--only PART ...]

Parts (all by default; `--only` repeats or comma-separates):
  udp-blocked  UDP dropped both ways, no relay: verdict, reasons and time to verdict of each
               run; target `unknown` + `udp_blocked` in <= 6 s (including the TCP speed test)
  relay        UDP dropped both ways, coturn beside the reflector (profiles udp-blocked-relay,
               udp-blocked-relay-slow-up): verdict, path and time of each run; target the
               profile's verdict over `relay_tcp` in <= 10 s
  loss         random loss of 30, 35, 40 and 45 % both ways (no fixed seed: every run draws
               its own losses): `phone` in N runs out of N, and the longest time; target
               `phone` every time, each in <= 12 s

Each run is a fresh lab: `netprobe serve` (and coturn) in the server namespace, `netprobe
check --json` in the client namespace; the time is from starting the check process to its
exit. Needs root and /dev/net/tun (the link lab) and, for `relay`, coturn's `turnserver`.
Exit status 0, or 1 if a target is missed or a run fails; 3 if the lab (or coturn) cannot run
here; 130 after Ctrl-C or SIGTERM (the figures so far are printed).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netprobe import exitcodes  # noqa: E402
from netprobe.bench import kit as benchkit  # noqa: E402
from netprobe.lab import Profile, load_profiles  # noqa: E402
from netprobe.lab.accuracy import AccuracyRow, check_on_profile  # noqa: E402
from netprobe.lab.coturn import TURNSERVER  # noqa: E402

PARTS = ("udp-blocked", "relay", "loss")
RELAY_PROFILES = ("udp-blocked-relay", "udp-blocked-relay-slow-up")
LOSS_PROFILES = {30: "loss-30", 35: "connect-loss-35", 40: "connect-loss-40",
                 45: "connect-loss-45"}
MAX_BLOCKED_S, MAX_RELAY_S, MAX_LOSS_S = 6.0, 10.0, 12.0
"""Time-to-verdict targets of the issue's figures."""


def unseeded(profile: Profile) -> Profile:
    """``profile`` with fresh random losses each run (loss-30 has fixed seeds, for the
    accuracy matrix; here every run must draw its own)."""
    return dataclasses.replace(profile, up=dataclasses.replace(profile.up, seed=None),
                               down=dataclasses.replace(profile.down, seed=None))


def codes(row: AccuracyRow) -> list[str]:
    """The reason codes of a run's result."""
    reasons = row.result.get("reasons")
    if not isinstance(reasons, list):
        return []
    return [str(r.get("code") if isinstance(r, dict) else r) for r in reasons]


def describe(row: AccuracyRow) -> str:
    if not row.result:  # the check printed no result: say how it ended
        last = (row.stderr.strip().splitlines() or ["(no output)"])[-1][:120]
        return f"{row.profile:<26} no result, exit status {row.exit_code}: {last}"
    connect = row.result.get("connect") or {}
    pair = (f"{connect.get('local_candidate')}/{connect.get('remote_candidate')}"
            if isinstance(connect, dict) and connect.get("local_candidate") else "-")
    return (f"{row.profile:<26} {row.verdict:<10} path {str(row.result.get('path')):<9} "
            f"pair {pair:<12} {row.wall_s:5.1f} s  reasons {','.join(codes(row)) or '-'}")


def main() -> int:
    parser = benchkit.parser(__doc__)
    benchkit.add_only(parser, PARTS)
    parser.add_argument("--runs", type=int, default=10, metavar="N",
                        help="runs per profile (default 10)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    only = benchkit.parse_only(parser, args.only, PARTS)
    if "relay" in only and shutil.which(TURNSERVER) is None:
        print(f"bench_relay: cannot run here: {TURNSERVER} (coturn) is not installed "
              "(apt-get install coturn), or leave the relay part out: --only udp-blocked,loss",
              file=sys.stderr)
        return exitcodes.UNAVAILABLE
    profiles = load_profiles()
    summary = benchkit.Summary()
    rows: dict[str, list[AccuracyRow]] = {}

    async def run(name: str, profile: Profile) -> None:
        for i in range(args.runs):
            row = await check_on_profile(profile)
            rows.setdefault(name, []).append(row)
            print(f"  {i + 1:>2}/{args.runs} {describe(row)}", flush=True)

    async def measure() -> None:
        print(f"bench_relay: code {benchkit.code_version()}, {args.runs} run(s) per profile",
              flush=True)
        if "udp-blocked" in only:
            print("UDP blocked, no relay:", flush=True)
            await run("udp-blocked", profiles["udp-blocked"])
        if "relay" in only:
            print("UDP blocked, TURN relay (coturn) beside the reflector:", flush=True)
            for name in RELAY_PROFILES:
                await run(name, profiles[name])
        if "loss" in only:
            print("Random loss both ways, fresh losses each run:", flush=True)
            for pct, name in LOSS_PROFILES.items():
                await run(f"loss {pct} %", unseeded(profiles[name]))

    def report() -> int:
        for name, got in rows.items():
            n = len(got)
            longest = max(r.wall_s for r in got)
            times = f"max {longest:.1f} s"
            if name == "udp-blocked":
                right = sum(r.verdict == "unknown" and "udp_blocked" in codes(r) for r in got)
                summary.add(f"{name}: unknown + udp_blocked", f"{right}/{n}, {times}",
                            f"{n}/{n}, <= {MAX_BLOCKED_S:g} s",
                            right == n and longest <= MAX_BLOCKED_S)
            elif name in RELAY_PROFILES:
                expected = profiles[name].expect
                verdicts = expected.verdicts if expected else ()
                right = sum(r.verdict in verdicts and r.result.get("path") == "relay_tcp"
                            for r in got)
                summary.add(f"{name}: {'/'.join(verdicts)} over relay_tcp",
                            f"{right}/{n}, {times}", f"{n}/{n}, <= {MAX_RELAY_S:g} s",
                            right == n and longest <= MAX_RELAY_S)
            else:
                right = sum(r.verdict == "phone" for r in got)
                summary.add(f"{name}: phone", f"{right}/{n}, {times}",
                            f"{n}/{n}, <= {MAX_LOSS_S:g} s",
                            right == n and longest <= MAX_LOSS_S)
        if not summary.figures:
            return exitcodes.OK
        print("\nsummary:")
        for line in summary.lines():
            print(line)
        return exitcodes.FAILED if summary.missed else exitcodes.OK

    return benchkit.run("bench_relay", measure, report, needs_lab=True)


if __name__ == "__main__":
    sys.exit(main())

"""How faithful and how cheap is the link lab (`scripts/bench_emulator.py`): configured vs
measured, per direction, one row each.

UDP streams run between the lab's namespaces (`netprobe.lab.udpmeter`): one-way delay from
send and arrival stamps on the shared monotonic clock, loss from sequence numbers, rate from
the IP bytes that arrive while the bottleneck is saturated. The forwarder runs in this process,
so its CPU cost is this process's CPU time while traffic flows. Targets: delay within 1 ms,
loss within 0.5 points, rate within 3 %.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from dataclasses import dataclass, field

from netprobe.bench.kit import verdict
from netprobe.bench.procstats import CpuSampler
from netprobe.lab.link import LinkConfig
from netprobe.lab.linklab import LinkLab, Side
from netprobe.lab.profiles import Profile, load_profile
from netprobe.lab.udpmeter import OneWaySummary, one_way, round_trip

DELAY_TOL_MS = 1.0
LOSS_TOL_POINTS = 0.5
RATE_TOL = 0.03


@dataclass
class Row:
    what: str
    direction: str
    configured: float | None
    measured: float
    unit: str
    ok: bool | None

    def line(self) -> str:
        configured = "" if self.configured is None else f"{self.configured:.2f}"
        return (
            f"{self.what:<44} {self.direction:<5} {configured:>10} "
            f"{self.measured:>10.2f} {self.unit:<7} {verdict(self.ok)}"
        )


@dataclass
class Rows:
    """The rows of a run, each printed as it is recorded."""

    rows: list[Row] = field(default_factory=list)

    def record(self, what: str, direction: str, configured: float | None, measured: float,
               unit: str, ok: bool | None) -> None:
        row = Row(what, direction, configured, measured, unit, ok)
        self.rows.append(row)
        print(row.line(), flush=True)

    @property
    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def closing_line(self) -> str:
        if self.missed:
            return f"{len(self.missed)} row(s) MISSED the target"
        return f"{len(self.rows)} of {len(self.rows)} rows within target"


async def bench_delay(quick: bool, rows: Rows) -> None:
    for delay in (50.0, 300.0):
        profile = Profile(
            f"delay-{delay:g}", "", LinkConfig(delay_ms=delay), LinkConfig(delay_ms=delay)
        )
        async with LinkLab(profile) as lab:
            rtts = await round_trip(lab, count=50 if quick else 100, interval_s=0.02)
            n = 300 if quick else 1000
            up, down = await asyncio.gather(
                one_way(lab, "client", count=n, rate_kbps=400, size=200, idle_s=0.5),
                one_way(lab, "server", count=n, rate_kbps=400, size=200, idle_s=0.5, port=47010),
            )
        for name, s in (("up", up), ("down", down)):
            rows.record(f"delay {delay:g} ms (median one-way)", name, delay,
                        s.delay_ms_median, "ms", abs(s.delay_ms_median - delay) <= DELAY_TOL_MS)
            rows.record(f"delay {delay:g} ms (mean one-way)", name, delay, s.delay_ms_mean,
                        "ms", abs(s.delay_ms_mean - delay) <= DELAY_TOL_MS)
        rtts.sort()
        median = rtts[len(rtts) // 2]
        rows.record(f"delay {delay:g} ms (median UDP ping RTT)", "both", 2 * delay, median,
                    "ms", abs(median - 2 * delay) <= 2 * DELAY_TOL_MS)


async def bench_loss(quick: bool, rows: Rows) -> None:
    # Random loss over n packets has a sampling spread of sqrt(p(1-p)/n): 0.19 points for
    # p = 30 % and n = 60000, which is what a 0.5-point target needs. The forwarder itself
    # must add nothing: what arrives is exactly what the model let through.
    n = 10000 if quick else 60000
    for name in ("loss-3", "loss-8", "loss-30", "wifi-bursty"):
        profile = load_profile(name)
        async with LinkLab(profile) as lab:
            up = await one_way(lab, "client", count=n, rate_kbps=8000, size=250, idle_s=0.5)
            down = await one_way(lab, "server", count=n, rate_kbps=8000, size=250, idle_s=0.5)
            stats = lab.stats()
        for direction, link, s, model in (
            ("up", profile.up, up, stats.up),
            ("down", profile.down, down, stats.down),
        ):
            configured = link.loss_pct if link.gilbert is None else 100 * link.gilbert.mean_loss
            sigma = 100 * math.sqrt(configured / 100 * (1 - configured / 100) / n)
            spread = "bursty" if link.gilbert is not None else f"sd {sigma:.2f}"
            rows.record(f"{name} loss ({n} pkts, {spread})", direction, configured,
                        s.loss_pct, "%", abs(s.loss_pct - configured) <= LOSS_TOL_POINTS)
            extra = (s.sent - s.received) - (model.dropped_loss + model.dropped_queue)
            rows.record(f"{name} loss added by forwarder", direction, 0, extra, "packets",
                        extra == 0)


async def bench_rate(quick: bool, rows: Rows) -> None:
    seconds = 4 if quick else 8
    cases: list[tuple[str, tuple[Side, ...]]] = [
        ("dsl", ("client", "server")),
        ("slow-symmetric", ("client", "server")),
        ("starved-uplink", ("client",)),
    ]
    for name, senders in cases:
        profile = load_profile(name)
        async with LinkLab(profile) as lab:
            tasks = []
            for sender in senders:
                link, port = (profile.up, 47000) if sender == "client" else (profile.down, 47010)
                assert link.rate_kbps is not None
                offered = 1.3 * link.rate_kbps
                count = max(50, int(offered * 1000 * seconds / (1200 * 8)))
                stream = one_way(
                    lab, sender, count=count, rate_kbps=offered, size=1200, idle_s=1.5, port=port
                )
                tasks.append((sender, link.rate_kbps, asyncio.create_task(stream)))
            for sender, rate, task in tasks:
                s = await task
                direction = "up" if sender == "client" else "down"
                rows.record(f"{name} rate (saturated, 1200 B)", direction, rate, s.rate_kbps,
                            "kbit/s", abs(s.rate_kbps / rate - 1) <= RATE_TOL)


async def bench_trace(quick: bool, rows: Rows) -> None:
    seconds = 5 if quick else 10
    for name, direction, offered in (
        ("tmobile-umts", "up", 2000.0),
        ("verizon-lte", "up", 14000.0),
    ):
        profile = load_profile(name)
        link = profile.up
        assert link.trace is not None
        async with LinkLab(profile) as lab:
            count = int(offered * 1000 * seconds / (1500 * 8))
            s = await one_way(lab, "client", count=count, rate_kbps=offered, size=1500, idle_s=1.5)
            epoch = lab.epoch
        capacity = _trace_capacity_kbps(link.trace, epoch, link.delay_ms, s)
        rows.record(f"{name} trace rate (over the run)", direction, capacity, s.rate_kbps,
                    "kbit/s", abs(s.rate_kbps / capacity - 1) <= RATE_TOL)


def _trace_capacity_kbps(
    trace: tuple[int, ...], epoch: float, delay_ms: float, s: OneWaySummary
) -> float:
    """What the trace could carry between the first and last arrival (1500 B per opportunity)."""
    start_ms = (s.first_arrival - epoch) * 1000 - delay_ms
    end_ms = (s.last_arrival - epoch) * 1000 - delay_ms
    period = trace[-1]

    def upto(ms: float) -> int:
        cycles, offset = divmod(ms, period)
        return int(cycles) * len(trace) + bisect.bisect_right(trace, offset)

    opportunities = upto(end_ms) - upto(start_ms)
    return opportunities * 1500 * 8 / (s.last_arrival - s.first_arrival) / 1000


async def bench_cpu(quick: bool, rows: Rows) -> None:
    seconds = 5 if quick else 15
    cases = [
        ("5 Mbit/s one way, 20 ms link", LinkConfig(delay_ms=20), 5000.0, False),
        ("5 Mbit/s each way, 20 ms link", LinkConfig(delay_ms=20), 5000.0, True),
        (
            "5 Mbit/s bottleneck, saturated",
            LinkConfig(delay_ms=20, rate_kbps=5000, queue_packets=100),
            6000.0,
            False,
        ),
    ]
    for label, config, offered, both in cases:
        count = int(offered * 1000 * seconds / (1200 * 8))
        async with LinkLab(Profile("cpu", "", config, config)) as lab, CpuSampler() as cpu:
            streams = [one_way(lab, "client", count=count, rate_kbps=offered, idle_s=0.5)]
            if both:
                streams.append(one_way(lab, "server", count=count, rate_kbps=offered,
                                       idle_s=0.5, port=47010))
            results = await asyncio.gather(*streams)
        s = results[0]
        share = cpu.share(s.first_arrival + 0.5, s.last_arrival - 0.5)
        rows.record(f"CPU, {label}", "", None, 100 * share, "% core", None)


BENCHES = {
    "delay": bench_delay,
    "loss": bench_loss,
    "rate": bench_rate,
    "trace": bench_trace,
    "cpu": bench_cpu,
}


HEADER = f"{'what':<44} {'dir':<5} {'configured':>10} {'measured':>10}"

BENCHES = {
    "delay": bench_delay,
    "loss": bench_loss,
    "rate": bench_rate,
    "trace": bench_trace,
    "cpu": bench_cpu,
}
"""The parts of the benchmark, in the order they run."""

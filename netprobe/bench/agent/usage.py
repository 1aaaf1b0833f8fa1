"""What the agent costs: idle (CPU and memory over minutes, checks included) and while it
monitors a session (CPU, traffic on the link, and how fast its API answers)."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from netprobe.bench.agent.rig import DEFAULT_IDLE_INTERVAL_S, Rig, RigError, parse_ts, rig
from netprobe.bench.procstats import (
    cpu_seconds,
    own_rss_mb,
    peak_rss_mb,
    process_tree,
    rss_mb,
    tree_pss_mb,
    uss_mb,
)
from netprobe.lab.profiles import load_profile

# -- idle --------------------------------------------------------------------------------------


@dataclass
class IdleResult:
    seconds: float
    cpu_s: float
    cpu_pct: float
    rss_max_mb: float
    """The agent process alone, sampled each second."""
    rss_peak_mb: float | None
    """The agent process's VmHWM: its RSS high-water mark, between samples too."""
    tree_rss_max_mb: float
    """The agent and its measuring children (alive only during a check), summed RSS."""
    tree_pss_max_mb: float
    """The same as PSS: shared library pages counted once."""
    child_seconds: float
    """Seconds of the window with a measuring child alive."""
    checks: list[tuple[float, float, str]]
    """(start, end, verdict) of each check in the window, seconds from the window's start."""
    check_cpu_s: float
    between_cpu_pct: float
    projected_pct: float
    uss_mb: float | None = None
    """Unique set size at the end (memory only this process holds), MB."""


async def bench_idle(minutes: float, *, say: Any = print) -> IdleResult:
    """The agent idle on a clean link for `minutes`, from when its API answers (so its
    start-up check and any scheduled light check in the window are included)."""
    async with rig(load_profile("clean")) as r:
        pid = r.pid
        t0, c0, wall0 = time.monotonic(), cpu_seconds(pid), time.time()
        end = t0 + minutes * 60
        samples: list[tuple[float, float, float]] = [(t0, wall0, c0)]
        rss_max = own_rss_mb(pid)
        tree_rss = tree_pss = child_s = 0.0
        next_say = t0 + 60
        while (now := time.monotonic()) < end:
            step = min(1.0, end - now)
            await asyncio.sleep(step)
            samples.append((time.monotonic(), time.time(), cpu_seconds(pid)))
            rss_max = max(rss_max, own_rss_mb(pid))
            tree_rss = max(tree_rss, rss_mb(pid))
            tree_pss = max(tree_pss, tree_pss_mb(pid))
            if len(process_tree(pid)) > 1:
                child_s += step
            if time.monotonic() >= next_say:
                t, _, c = samples[-1]
                say(f"  idle: {(t - t0) / 60:4.1f} min, CPU so far "
                    f"{100 * (c - c0) / (t - t0):.3f} % of a core, agent RSS "
                    f"{own_rss_mb(pid):.1f} MB")
                next_say += 60
        t1, _, c1 = samples[-1]
        peak = peak_rss_mb(pid)
        uss = uss_mb(pid)
        log = r.log()
    # checks from the JSON log, as wall-clock spans
    checks, started = [], None
    for e in log:
        if e.get("event") == "check_started":
            started = parse_ts(e["ts"])
        elif e.get("event") == "check_finished" and started is not None:
            checks.append((started, parse_ts(e["ts"]), str(e.get("verdict"))))
            started = None
    # CPU in 1 s samples that overlap a check (±1 s) vs the rest
    in_check = between = 0.0
    between_t = 0.0
    for (ta, wa, ca), (tb, wb, cb) in zip(samples, samples[1:], strict=False):
        busy = any(wa < e + 1.0 and wb > s - 1.0 for s, e, _ in checks)
        if busy:
            in_check += cb - ca
        else:
            between += cb - ca
            between_t += tb - ta
    n_checks = len(checks)
    per_check = in_check / n_checks if n_checks else 0.0
    between_pct = 100 * between / between_t if between_t > 0 else math.nan
    projected = between_pct + 100 * per_check / DEFAULT_IDLE_INTERVAL_S
    return IdleResult(
        seconds=t1 - t0, cpu_s=c1 - c0, cpu_pct=100 * (c1 - c0) / (t1 - t0),
        rss_max_mb=rss_max, rss_peak_mb=peak, tree_rss_max_mb=tree_rss,
        tree_pss_max_mb=tree_pss, child_seconds=child_s,
        checks=[(s - wall0, e - wall0, v) for s, e, v in checks],
        check_cpu_s=per_check, between_cpu_pct=between_pct, projected_pct=projected, uss_mb=uss)


# -- monitoring and status latency -------------------------------------------------------------


@dataclass
class MonitorResult:
    seconds: float = 0.0
    cpu_pct: float = math.nan
    up_kbps: float = math.nan
    down_kbps: float = math.nan
    up_pps: float = math.nan
    down_pps: float = math.nan
    checks_in_window: int = 0
    recommendation: str = ""
    rss_mb: float = math.nan


@dataclass
class StatusResult:
    n: int = 0
    median_ms: float = math.nan
    p95_ms: float = math.nan
    max_ms: float = math.nan
    bad: int = 0
    fresh_median_ms: float = math.nan
    fresh_p95_ms: float = math.nan


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile, linear between the closest ranks (NaN for no values)."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def start_monitoring(r: Rig, settle_s: float = 5.0) -> None:
    """Start a session once the start-up check is over; return when no check runs and the
    monitoring link has had `settle_s` to come up."""
    await r.wait_first_check()
    body = await r.session("start")
    if body.get("state") != "monitoring":
        raise RigError(f"the session did not start: {body}")
    # a session check runs only if the last one is older than 60 s; wait it out if so
    deadline = time.monotonic() + 30
    while (await r.status()).get("check_running") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    await asyncio.sleep(settle_s)  # the monitoring link's ICE/DTLS set-up


async def bench_monitor(seconds: float, status_requests: int, *, do_monitor: bool = True,
                        do_status: bool = True) -> tuple[MonitorResult, StatusResult]:
    """A session monitored on a clean link: CPU and traffic over `seconds`, then
    `status_requests` timed status reads (keep-alive), then 100 on new connections."""
    mon, st = MonitorResult(), StatusResult()
    async with rig(load_profile("clean")) as r:
        await start_monitoring(r)
        if do_monitor:
            lab, pid = r.lab, r.pid
            s0, c0, t0, w0 = lab.stats(), cpu_seconds(pid), time.monotonic(), time.time()
            await asyncio.sleep(seconds)
            s1, c1, t1, w1 = lab.stats(), cpu_seconds(pid), time.monotonic(), time.time()
            dt = t1 - t0
            mon.seconds = dt
            mon.cpu_pct = 100 * (c1 - c0) / dt
            mon.up_kbps = (s1.up.delivered_bytes - s0.up.delivered_bytes) * 8 / dt / 1000
            mon.down_kbps = (s1.down.delivered_bytes - s0.down.delivered_bytes) * 8 / dt / 1000
            mon.up_pps = (s1.up.delivered - s0.up.delivered) / dt
            mon.down_pps = (s1.down.delivered - s0.down.delivered) / dt
            mon.checks_in_window = sum(
                1 for e in r.log() if e.get("event") == "check_started"
                and w0 <= parse_ts(e["ts"]) <= w1)
            mon.rss_mb = rss_mb(pid)
            status = await r.status()
            mon.recommendation = f"{status['state']}/{status['recommendation']}"
        if do_status:
            warm = 20
            reply = await r.call({"op": "latency", "n": status_requests, "gap_s": 0.02,
                                  "warmup": warm}, timeout=status_requests * 0.5 + 60)
            if "times_ms" not in reply:
                raise RigError(f"the status reads failed: {reply}")
            times = reply["times_ms"]
            st.n, st.bad = len(times), reply["bad"]
            st.median_ms, st.p95_ms, st.max_ms = (statistics.median(times),
                                                  percentile(times, 95), max(times))
            reply = await r.call({"op": "latency", "n": 100, "gap_s": 0.02, "fresh": True,
                                  "warmup": 5}, timeout=120)
            if "times_ms" not in reply:
                raise RigError(f"the status reads on new connections failed: {reply}")
            fresh = reply["times_ms"]
            st.fresh_median_ms, st.fresh_p95_ms = statistics.median(fresh), percentile(fresh, 95)
            st.bad += reply["bad"]
    return mon, st

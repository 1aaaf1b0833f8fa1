"""The agent benchmark's sections as `scripts/bench_agent.py` prints them: a line per run or
measurement as it ends, and the figures of issue 4 (against `targets`) into a `Summary`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from netprobe.bench.agent import targets
from netprobe.bench.agent.reaction import (
    REACTION_PROFILE,
    ReactionResult,
    phase_times,
    reaction_run,
)
from netprobe.bench.agent.rig import DEFAULT_IDLE_INTERVAL_S
from netprobe.bench.agent.usage import bench_idle, bench_monitor
from netprobe.bench.kit import Summary, code_version, fmt
from netprobe.lab.errors import LabError
from netprobe.lab.profiles import load_profile

PARTS = ("idle", "monitor", "reaction", "status")


@dataclass(frozen=True)
class AgentBenchPlan:
    only: frozenset[str]
    """Which of PARTS to run."""
    idle_minutes: float = 10.0
    runs: int = 10
    """Reaction runs."""
    monitor_seconds: float = 60.0
    status_requests: int = 500
    profile: str = REACTION_PROFILE
    """The reaction's profile (clean, degraded, clean)."""


def _say(text: str) -> None:
    print(text, flush=True)


def _spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{max(xs):.1f} s ({statistics.median(xs):.1f} s)"


async def reaction_section(plan: AgentBenchPlan, summary: Summary) -> None:
    profile = load_profile(plan.profile)
    degrade, recover = phase_times(profile)
    _say(f"== reaction: profile {profile.name!r} (degraded {degrade:g}-{recover:g} s of "
         f"the lab), {plan.runs} run(s)")
    results: list[ReactionResult] = []
    try:
        for i in range(plan.runs):
            try:
                res = await reaction_run(plan.profile)
            except (LabError, RuntimeError) as exc:  # the reflector's start: RuntimeError
                _say(f"  run {i + 1}: FAILED TO RUN: {exc}")
                continue
            results.append(res)
            _say(f"  run {i + 1}: {res.report()}")
    finally:  # also when interrupted: the runs so far are figures too
        downs = [r.down_s for r in results if r.down_s is not None]
        ups = [r.up_s for r in results if r.up_s is not None]
        exact = sum(1 for r in results if (r.n_down, r.n_up) == (1, 1))
        runs = plan.runs
        summary.add("reaction: to audio_only after degradation, max (median)",
                    f"{_spread(downs)}, {len(downs)}/{runs} runs", "<= 10 s",
                    bool(downs) and len(downs) == runs and max(downs) <= targets.DOWN_S)
        summary.add("reaction: back to video after recovery, max (median)",
                    f"{_spread(ups)}, {len(ups)}/{runs} runs", "<= 60 s",
                    bool(ups) and len(ups) == runs and max(ups) <= targets.UP_S)
        summary.add("reaction: runs with exactly one change each way",
                    f"{exact}/{runs} (changes down/up per run: "
                    f"{' '.join(f'{r.n_down}/{r.n_up}' for r in results)})", "all",
                    exact == runs and len(results) == runs)


async def monitoring_section(plan: AgentBenchPlan, summary: Summary) -> None:
    do_monitor, do_status = "monitor" in plan.only, "status" in plan.only
    what = [f"{plan.monitor_seconds:g} s measured"] if do_monitor else []
    what += [f"{plan.status_requests} status reads"] if do_status else []
    _say(f"== monitoring a session (clean link): {', '.join(what)} [{code_version()}]")
    mon, st = await bench_monitor(plan.monitor_seconds, plan.status_requests,
                                  do_monitor=do_monitor, do_status=do_status)
    if do_monitor:
        _say(f"  {mon.seconds:.0f} s monitored ({mon.recommendation}): agent CPU "
             f"{mon.cpu_pct:.2f} % of a core, RSS {mon.rss_mb:.1f} MB; link up "
             f"{mon.up_kbps:.1f} kbit/s ({mon.up_pps:.1f} packets/s), down "
             f"{mon.down_kbps:.1f} kbit/s ({mon.down_pps:.1f} packets/s); checks in the "
             f"window: {mon.checks_in_window}")
        summary.add("monitoring: agent CPU, % of one core", f"{mon.cpu_pct:.2f} %", "<= 3 %",
                    mon.cpu_pct <= targets.MONITOR_CPU_PCT)
        summary.add("monitoring: traffic up (client -> reflector), IP bytes",
                    f"{mon.up_kbps:.1f} kbit/s", "<= 64 kbit/s",
                    mon.up_kbps <= targets.MONITOR_KBPS)
        summary.add("monitoring: traffic down (reflector -> client), IP bytes",
                    f"{mon.down_kbps:.1f} kbit/s", "<= 64 kbit/s",
                    mon.down_kbps <= targets.MONITOR_KBPS)
    if do_status:
        _say(f"  GET /v1/status x{st.n} (keep-alive, every 20 ms, while monitoring): "
             f"median {st.median_ms:.2f} ms, p95 {st.p95_ms:.2f} ms, max "
             f"{st.max_ms:.2f} ms; new connection each: median {st.fresh_median_ms:.2f} "
             f"ms, p95 {st.fresh_p95_ms:.2f} ms; bad answers {st.bad}")
        summary.add("status read while monitoring: median (p95)",
                    f"{st.median_ms:.2f} ms ({st.p95_ms:.2f} ms)", "<= 5 ms median",
                    st.median_ms <= targets.STATUS_MEDIAN_MS and st.bad == 0)


async def idle_section(plan: AgentBenchPlan, summary: Summary) -> None:
    interval = DEFAULT_IDLE_INTERVAL_S
    _say(f"== idle: {plan.idle_minutes:g} min, default idle interval "
         f"({interval:g} s ±20 %) [{code_version()}]")
    idle = await bench_idle(plan.idle_minutes, say=_say)
    checks = ", ".join(f"{s:.0f}-{e:.0f} s ({v})" for s, e, v in idle.checks) or "none"
    _say(f"  {idle.seconds:.0f} s: {idle.cpu_s:.2f} CPU-s = {idle.cpu_pct:.3f} % of a "
         f"core (checks in the window: {checks}); {idle.check_cpu_s:.2f} CPU-s per light "
         f"check, {idle.between_cpu_pct:.3f} % between checks; long-run average at one "
         f"check per {interval:g} s: {idle.projected_pct:.3f} %")
    _say(f"  memory: agent process RSS max {idle.rss_max_mb:.1f} MB (sampled each "
         f"second), VmHWM {fmt(idle.rss_peak_mb)} MB, USS at the end "
         f"{fmt(idle.uss_mb)} MB; with its measuring child (alive "
         f"{idle.child_seconds:.0f} s of {idle.seconds:.0f} s, during checks): RSS "
         f"summed max {idle.tree_rss_max_mb:.1f} MB, PSS max "
         f"{idle.tree_pss_max_mb:.1f} MB")
    summary.add(f"idle: CPU over {plan.idle_minutes:g} min (start-up check included)",
                f"{idle.cpu_pct:.3f} %", "<= 0.5 %", idle.cpu_pct <= targets.IDLE_CPU_PCT)
    summary.add(f"idle: CPU between checks / long-run with one check per {interval:g} s",
                f"{idle.between_cpu_pct:.3f} % / {idle.projected_pct:.3f} %", "<= 0.5 %",
                idle.projected_pct <= targets.IDLE_CPU_PCT)
    summary.add("idle: agent max RSS (peak VmHWM)",
                f"{idle.rss_max_mb:.1f} MB ({fmt(idle.rss_peak_mb)} MB)", "<= 80 MB",
                max(idle.rss_max_mb, idle.rss_peak_mb or 0) <= targets.IDLE_RSS_MB)
    summary.add(f"idle: + measuring child during checks ({idle.child_seconds:.0f} s), RSS/PSS",
                f"{idle.tree_rss_max_mb:.1f}/{idle.tree_pss_max_mb:.1f} MB", "(information)",
                None)


async def run_sections(plan: AgentBenchPlan, summary: Summary) -> None:
    """The planned sections in the benchmark's order: reaction, monitoring, idle."""
    if "reaction" in plan.only:
        await reaction_section(plan, summary)
    if plan.only & {"monitor", "status"}:
        await monitoring_section(plan, summary)
    if "idle" in plan.only:
        await idle_section(plan, summary)

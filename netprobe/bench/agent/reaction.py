"""How the agent reacts to a link that degrades mid-session and recovers: one run on a
clean -> degraded -> clean profile (`agent-degrade` by default), every recommendation change
of the session read from the agent's server-sent events and cross-checked with its JSON log.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netprobe.bench.agent import targets
from netprobe.bench.agent.rig import RigError, parse_ts, rig
from netprobe.bench.kit import fmt
from netprobe.lab.profiles import Profile, load_profile

REACTION_PROFILE = "agent-degrade"
RANK = {"video": 0, "audio_only": 1, "phone": 2, "unknown": 3}
"""Recommendations from best to worst: a change to a higher rank is a step down."""
KEEP_DIR = Path(tempfile.gettempdir()) / "netprobe-bench-agent"
"""Where the agent's log of a reaction run that went wrong is kept."""


@dataclass
class Change:
    at: float
    """Seconds from the lab's start (monotonic arrival of the SSE event)."""
    old: str
    new: str
    reasons: list[str] = field(default_factory=list)
    metrics: str = ""
    """The figures the agent published with the change (window or check)."""

    @property
    def down(self) -> bool:
        return RANK.get(self.new, 9) > RANK.get(self.old, 9)

    def __str__(self) -> str:
        return (f"{self.at:6.1f} s {self.old}->{self.new} ({','.join(self.reasons)})"
                + (f" [{self.metrics}]" if self.metrics else ""))


def brief_metrics(m: dict[str, Any] | None) -> str:
    """The figures of an event's `metrics`, on one line."""
    if not m:
        return ""
    up, down = m.get("up") or {}, m.get("down") or {}
    return (f"rtt {fmt(m.get('rtt_ms'), 0)} ms, mos {fmt(m.get('mos_audio'), 2)}, loss up/down "
            f"{fmt(up.get('loss_pct'))}/{fmt(down.get('loss_pct'))} %, jitter up/down "
            f"{fmt(up.get('jitter_ms'))}/{fmt(down.get('jitter_ms'))} ms, kbit/s up/down "
            f"{fmt(up.get('kbps'), 0)}/{fmt(down.get('kbps'), 0)}, packets up/down "
            f"{up.get('packets')}/{down.get('packets')}")


@dataclass
class ReactionResult:
    degrade_at: float
    recover_at: float
    session_at: float
    changes: list[Change]
    log_changes: list[tuple[str, str]]
    """(from, to) of the JSON log's recommendation_changed lines after session_started."""
    down_s: float | None = None
    up_s: float | None = None
    n_down: int = 0
    n_up: int = 0
    problems: list[str] = field(default_factory=list)
    checks: list[tuple[str, float, float, str]] = field(default_factory=list)
    """Checks from the agent's log (kind, start, end in lab seconds, verdict)."""
    agent_exit: int | None = None
    """The agent's exit status after SIGTERM."""
    agent_stderr: str = ""
    version: str = ""
    """The netprobe code the agent ran (`benchkit.code_version`)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        """`line()`, then every change and every check of the run, one a line."""
        lines = [self.line()]
        lines += [f"        change {c}" for c in self.changes]
        lines += [f"        check  {s:6.1f}-{e:5.1f} s {kind:<7} -> {v}"
                  for kind, s, e, v in self.checks]
        return "\n".join(lines)

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "  -  " if v is None else f"{v:5.1f}"
        return (f"[{self.version}] session at {self.session_at:5.1f} s; audio_only after "
                f"{f(self.down_s)} s, "
                f"video after {f(self.up_s)} s; changes down {self.n_down}, up {self.n_up}"
                + ("" if self.ok else "  <- " + "; ".join(self.problems)))


def phase_times(profile: Profile) -> tuple[float, float]:
    """(degradation, recovery) seconds of a clean -> degraded -> clean profile."""
    phases = sorted(profile.phases, key=lambda p: p.start_s)
    if len(phases) < 2:
        raise ValueError(f"profile {profile.name!r} needs two phases (degrade, recover)")
    return phases[0].start_s, phases[1].start_s


def _judge(res: ReactionResult, first_down: Change | None) -> None:
    """Add to `res.problems` whatever misses the targets."""
    changes = res.changes
    before = [c for c in changes if c.at < res.degrade_at]
    if before:
        res.problems.append(f"{len(before)} change(s) before the degradation")
    if res.down_s is None:
        res.problems.append("no step down to audio_only during the degradation"
                            + (f" (first change: {first_down})" if first_down else ""))
    elif res.down_s > targets.DOWN_S:
        res.problems.append(f"audio_only only after {res.down_s:.1f} s")
    if res.up_s is None:
        res.problems.append("no step back up to video after the recovery")
    elif res.up_s > targets.UP_S:
        res.problems.append(f"video only after {res.up_s:.1f} s")
    if (res.n_down, res.n_up) != (1, 1):
        res.problems.append(f"{res.n_down} change(s) down and {res.n_up} up, not 1 and 1: "
                            + "; ".join(str(c) for c in changes))
    sse_pairs = [(c.old, c.new) for c in changes]
    if sse_pairs != res.log_changes:
        res.problems.append(f"events {sse_pairs} differ from the log {res.log_changes}")


def _keep_log(log: list[dict[str, Any]], to_lab_s: Callable[[str], float],
              stderr: str) -> Path:
    """Write the agent's log (each line with its time from the lab's start) to KEEP_DIR."""
    KEEP_DIR.mkdir(parents=True, exist_ok=True)
    kept = KEEP_DIR / f"reaction-{time.strftime('%H%M%S')}.jsonl"
    with kept.open("w") as f:
        for e in log:
            t = to_lab_s(e["ts"]) if "ts" in e else None
            f.write(json.dumps({"lab_s": None if t is None else round(t, 2), **e}) + "\n")
        f.write(json.dumps({"agent_stderr": stderr}) + "\n")
    return kept


async def reaction_run(profile_name: str = REACTION_PROFILE, *, tail_s: float = 62.0,
                       min_lead_s: float = 10.0) -> ReactionResult:
    """One run: start a session on the clean link, let the profile degrade and recover it,
    collect the recommendation changes until `tail_s` after the recovery. A run that goes
    wrong keeps the agent's log (KEEP_DIR, named in `problems`)."""
    profile = load_profile(profile_name)
    degrade, recover = phase_times(profile)
    async with rig(profile) as r:
        lab = r.lab
        await r.start_events()
        await r.wait_first_check()
        if lab.elapsed() > degrade - min_lead_s:
            raise RigError(f"the agent's first check ended only at {lab.elapsed():.1f} s "
                           f"of the lab, too close to the degradation at {degrade} s")
        await r.session("start")
        session_at = lab.elapsed()
        end = recover + tail_s
        await asyncio.sleep(max(0.0, end - lab.elapsed()))
        await r.session("stop")
        await asyncio.sleep(0.3)
        epoch, log = lab.epoch, r.log()
        events = list(r.events)
        wall_minus_mono = time.time() - time.monotonic()

    def to_lab_s(ts: str) -> float:
        return parse_ts(ts) - wall_minus_mono - epoch

    changes = [Change(e["t"] - epoch, str(e["from"]), str(e["recommendation"]), e["reasons"],
                      brief_metrics(e.get("metrics")))
               for e in events if e.get("type") == "recommendation"]
    session_changes = [c for c in changes if c.at >= session_at]
    session_log = log[next((i for i, e in enumerate(log)
                            if e.get("event") == "session_started"), len(log)):]
    log_changes = [(str(e.get("from")), str(e.get("to"))) for e in session_log
                   if e.get("event") == "recommendation_changed"]
    checks, started = [], None
    for e in log:
        if e.get("event") == "check_started":
            started = (e.get("kind"), to_lab_s(e["ts"]))
        elif e.get("event") == "check_finished" and started is not None:
            checks.append((str(started[0]), started[1], to_lab_s(e["ts"]),
                           str(e.get("verdict"))))
            started = None
    res = ReactionResult(degrade, recover, session_at, session_changes, log_changes,
                         checks=checks, agent_exit=r.exit_code, agent_stderr=r.stderr_text,
                         version=r.version)
    res.n_down = sum(1 for c in session_changes if c.down)
    res.n_up = sum(1 for c in session_changes if not c.down)
    first_down = next((c for c in session_changes if c.at >= degrade), None)
    if first_down is not None and first_down.new == "audio_only" and first_down.at < recover:
        res.down_s = first_down.at - degrade
    first_up = next((c for c in session_changes if c.at >= recover and c.new == "video"), None)
    if first_up is not None:
        res.up_s = first_up.at - recover
    _judge(res, first_down)
    if res.problems:  # keep the evidence: the agent's log (times from the lab's start)
        kept = _keep_log(log, to_lab_s, r.stderr_text)
        res.problems.append(f"agent log kept in {kept}")
    return res

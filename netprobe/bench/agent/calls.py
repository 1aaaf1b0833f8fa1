"""Calls noticed by themselves, measured (issue 11): on the link lab, a "call" (two-way UDP
media from a process of its own, `media.py`, to an echo in the server namespace) starts on an
idle agent; how long until the agent monitors it (`session_source` "detected"), how long after
the call ends until it is idle again, and how many idle checks ran during the call; and what
detection costs an idle agent (CPU with `detect_calls` on and off).

    async with rig(load_profile("clean"), CALL_CONFIG) as r:
        run = await call_run(r)
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from netprobe.bench.agent.rig import Rig, RigError, parse_ts, rig
from netprobe.bench.procstats import cpu_seconds
from netprobe.lab.profiles import load_profile

MEDIA = (sys.executable, "-m", "netprobe.bench.agent.media")
ECHO_PORT = 40_000
#: A small 1:1 video call's media, each way.
CALL_KBPS = 300.0
CALL_S = 30.0
#: Idle checks every 10 s (the least allowed): without the rule, several would fall in a call.
CALL_CONFIG = "idle_interval_s = 10\nidle_jitter = 0\n"


@dataclass
class CallRun:
    to_monitoring_s: float | None = None
    """From the first media packet to `state` monitoring with `session_source` detected."""
    to_idle_s: float | None = None
    """From the last media packet to `state` idle again."""
    idle_checks: int = 0
    """Idle checks started between the call's start and the agent's return to idle."""
    kind: str = ""
    """What the call was recognised by (the `call_detected` log line)."""


@dataclass
class CallsResult:
    runs: list[CallRun] = field(default_factory=list)
    idle_checks_outside: int = 0
    """Idle checks that ran outside the calls (proof that idle checks were due)."""
    agent_exit: int | None = None
    agent_stderr: str = ""

    def report(self) -> str:
        return "\n".join(f"  run {i + 1}: monitoring after {_s(r.to_monitoring_s)}, idle "
                         f"{_s(r.to_idle_s)} after the end, {r.idle_checks} idle check(s) "
                         f"during the call, recognised by {r.kind or '-'}"
                         for i, r in enumerate(self.runs))


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


async def _until(r: Rig, ok: Any, timeout: float) -> float | None:
    """Poll the status every 0.25 s until `ok(status)`; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok(await r.status()):
            return time.monotonic()
        await asyncio.sleep(0.25)
    return None


def _detected(st: dict[str, Any]) -> bool:
    return st.get("state") == "monitoring" and st.get("session_source") == "detected"


async def call_run(r: Rig, *, kbps: float = CALL_KBPS, call_s: float = CALL_S,
                   say: Any = print) -> CallRun:
    """One call on the idle agent of `r` (an echo must run in its server namespace)."""
    run = CallRun()
    # start just after an idle check: the next ones fall due during the call
    if await _until(r, lambda st: st.get("state") == "idle" and st.get("check_running"),
                    60) is None:
        raise RigError("no idle check ran before the call")
    if await _until(r, lambda st: st.get("state") == "idle" and not st.get("check_running"),
                    60) is None:
        raise RigError("the agent did not come to rest before the call")
    wall0 = time.time()
    caller = await r.lab.exec_client(*MEDIA, "call", r.lab.server_addr, str(ECHO_PORT),
                                     str(kbps), stdout=asyncio.subprocess.PIPE)
    assert caller.stdout is not None
    await asyncio.wait_for(caller.stdout.readline(), 10)
    t0 = time.monotonic()
    try:
        seen = await _until(r, _detected, call_s)
        run.to_monitoring_s = None if seen is None else seen - t0
        await asyncio.sleep(max(0.0, t0 + call_s - time.monotonic()))
    finally:
        caller.terminate()
        await caller.wait()
    t1 = time.monotonic()
    back = await _until(r, lambda st: st.get("state") == "idle", 120)
    run.to_idle_s = None if back is None else back - t1
    wall1 = time.time()
    log = r.log()
    run.idle_checks = sum(1 for e in log if e.get("event") == "check_started"
                          and e.get("kind") == "idle" and wall0 <= parse_ts(e["ts"]) <= wall1)
    kinds = [e.get("kind", "") for e in log if e.get("event") == "call_detected"
             and wall0 <= parse_ts(e["ts"]) <= wall1]
    run.kind = kinds[-1] if kinds else ""
    say(f"  call: monitoring after {_s(run.to_monitoring_s)}, idle {_s(run.to_idle_s)} after "
        f"the end, {run.idle_checks} idle check(s) during it ({run.kind or '-'})")
    return run


async def bench_calls(runs: int, *, kbps: float = CALL_KBPS, call_s: float = CALL_S,
                      say: Any = print) -> CallsResult:
    """`runs` calls on one agent (idle checks every 10 s), each just after an idle check."""
    res = CallsResult()
    async with rig(load_profile("clean"), CALL_CONFIG) as r:
        echo = await r.lab.exec_server(*MEDIA, "echo", str(ECHO_PORT),
                                       stdout=asyncio.subprocess.PIPE)
        assert echo.stdout is not None
        await asyncio.wait_for(echo.stdout.readline(), 10)
        await r.wait_first_check()
        try:
            for _ in range(runs):
                res.runs.append(await call_run(r, kbps=kbps, call_s=call_s, say=say))
        finally:
            echo.terminate()
            await echo.wait()
        total = sum(1 for e in r.log() if e.get("event") == "check_started"
                    and e.get("kind") == "idle")
        res.idle_checks_outside = total - sum(run.idle_checks for run in res.runs)
    res.agent_exit, res.agent_stderr = r.exit_code, r.stderr_text
    return res


async def idle_cpu(minutes: float, detect: str) -> float:
    """The idle agent's CPU, % of a core, over `minutes` after its start-up check (no other
    check: the idle interval is an hour), with `[agent] detect_calls = detect`."""
    config = f'idle_interval_s = 3600\ndetect_calls = "{detect}"\n'
    async with rig(load_profile("clean"), config) as r:
        await r.wait_first_check()
        await asyncio.sleep(3.0)  # the check's child process gone
        t0, c0 = time.monotonic(), cpu_seconds(r.pid)
        await asyncio.sleep(minutes * 60)
        t1, c1 = time.monotonic(), cpu_seconds(r.pid)
        if any(e.get("event") == "check_started" for e in r.log()[1:]
               if parse_ts(e["ts"]) > time.time() - (t1 - t0)):
            return math.nan  # a check fell in the window: not an idle figure
    return 100 * (c1 - c0) / (t1 - t0)

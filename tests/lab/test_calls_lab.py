"""End to end: a real `netprobe agent` (its own process in the lab's client namespace, against
`netprobe serve` in the server namespace, idle checks every 10 s) notices a call by itself: two-way
UDP media of 300 kbit/s each way from another process (`netprobe.bench.agent.media`) to an echo
across the emulated link. The status goes to `session_source` "detected" within 15 s, back to
idle within 60 s of the call's end, and no idle check runs during the call (while they do run
before it: each call starts just after one). One run of scripts/bench_calls.py; about 1.5 minutes.
"""

from __future__ import annotations

import pytest

from netprobe.bench.agent.calls import bench_calls
from netprobe.lab import check_lab_available

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

_REASON = check_lab_available()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


async def test_agent_notices_a_call_monitors_it_and_returns_to_idle() -> None:
    res = await bench_calls(1, say=lambda _: None)
    detail = res.report() + "\nagent stderr:\n" + res.agent_stderr[-3000:]
    (run,) = res.runs
    assert run.to_monitoring_s is not None, "the call was not noticed: " + detail
    assert run.to_monitoring_s <= 15.0, detail
    assert run.to_idle_s is not None, "the agent stayed in the session: " + detail
    assert run.to_idle_s <= 60.0, detail
    assert run.idle_checks == 0, detail
    assert run.kind == "udp", detail  # the media's UDP socket corroborated it
    assert res.idle_checks_outside >= 2, "idle checks did not run (the rule is untested): " \
        + detail
    assert res.agent_exit == 0, detail
    assert "Traceback" not in res.agent_stderr, detail

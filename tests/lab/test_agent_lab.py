"""End to end: the background agent (`netprobe agent`, a real process, against `netprobe
serve` over the link lab) reacts to a link that degrades mid-session and recovers (issue 4).

One run of the agent benchmark's reaction part (`netprobe.bench.agent.reaction`; profile
`agent-degrade`: clean, then 200 kbit/s with 8 % loss each way from 30 s to 60 s, then clean;
the session starts at ~5 s): `audio_only` within 10 s of the degradation, `video` within 60 s
of the recovery, exactly one change each way. About 2 minutes 10 seconds.
scripts/bench_agent.py runs it ten times.
"""

from __future__ import annotations

import pytest

from netprobe.bench.agent.reaction import reaction_run
from netprobe.lab import check_lab_available

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

_REASON = check_lab_available()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))


async def test_agent_steps_down_and_back_up_once() -> None:
    res = await reaction_run()
    detail = res.report() + "\nagent stderr:\n" + res.agent_stderr[-3000:]
    assert res.session_at < res.degrade_at - 10, detail
    assert not [c for c in res.changes if c.at < res.degrade_at], detail
    assert res.down_s is not None, "no step down to audio_only: " + detail
    assert res.down_s <= 10.0, detail
    assert res.up_s is not None, "no step back up to video: " + detail
    assert res.up_s <= 60.0, detail
    assert (res.n_down, res.n_up) == (1, 1), "not exactly one change each way: " + detail
    assert [(c.old, c.new) for c in res.changes] == [("video", "audio_only"),
                                                      ("audio_only", "video")], detail
    assert res.agent_exit == 0, detail
    assert "Traceback" not in res.agent_stderr, detail

"""What the tests of netprobe.core.monitor share: verdicts made up for a test, their order,
a hysteresis started at a given recommendation, and the capacity a window is judged with."""

from __future__ import annotations

from hypothesis import strategies as st

from netprobe.core.classify import AUDIO_ONLY, PHONE, UNKNOWN, VERDICTS, VIDEO, Reason, Verdict
from netprobe.core.metrics import DirectionMetrics
from netprobe.core.monitor import Hysteresis, HysteresisSettings

KNOWN = (VIDEO, AUDIO_ONLY, PHONE)
verdicts = st.sampled_from((*KNOWN, UNKNOWN))
PROBE_INTERVAL = 0.05  # the agent's default monitor_probe_interval_ms
#: What the last capacity check measured (the window cannot measure throughput itself).
GOOD_CAPACITY = (DirectionMetrics(kbps=3200, kbps_at_least=True),
                 DirectionMetrics(kbps=3200, kbps_at_least=True))


def rank(verdict: str) -> int:
    return VERDICTS.index(verdict)


def v(verdict: str, code: str = "test") -> Verdict:
    return Verdict(verdict, 0.8, (Reason(code, f"{verdict} for the test"),))


def make(current: str, step_down_after: int = 3, step_up_after_s: float = 20.0) -> Hysteresis:
    h = Hysteresis(HysteresisSettings(step_down_after, step_up_after_s))
    h.reset(v(current))
    return h

"""The figures issue 4 asks of the background agent (the benchmark prints each against its
target)."""

from __future__ import annotations

IDLE_CPU_PCT = 0.5
"""Idle: CPU, % of one core (process and children), averaged."""
IDLE_RSS_MB = 80.0
"""Idle: the agent process's peak RSS."""
MONITOR_CPU_PCT = 3.0
"""While a session is monitored: CPU, % of one core."""
MONITOR_KBPS = 64.0
"""While a session is monitored: traffic each way on the link (IP bytes)."""
DOWN_S = 10.0
"""Reaction: from a degradation to `audio_only`."""
UP_S = 60.0
"""Reaction: from the recovery back to `video`."""
STATUS_MEDIAN_MS = 5.0
"""`GET /v1/status` while monitoring, median."""

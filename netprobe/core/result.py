"""The result of one check: what `run_check` returns, in memory and as JSON
(`netprobe.check/1`, docs/check-format.md). Free of I/O, so a process that only reads
results (the agent) need not load the WebRTC stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from netprobe.core.certainty import certainty
from netprobe.core.classify import Verdict
from netprobe.core.clinic import Fallback
from netprobe.core.metrics import LinkMetrics

SCHEMA = "netprobe.check/1"


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    metrics: LinkMetrics
    started_at: datetime
    duration_s: float
    stopped_early: bool = False
    """The verdict was certain before the ladder finished, so the check stopped sooner."""
    local: bool = False
    """Measured against a reflector on this machine: the internet link was not tested."""
    server: str | None = None
    """The reflector URL, only when privacy.log_addresses is on."""
    ladder: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per direction, each rung judged: rate sent, delivered, passed."""
    path: str | None = None
    """What carried the measurement: `direct`, `relay_udp`, `relay_tcp` or `relay_tls`; None
    when no connection was made (docs/check-format.md, "Paths")."""
    paths_tried: tuple[dict[str, Any], ...] = ()
    """Each path tried in order: `{"path": ..., "outcome": ..., "detail": ...}`."""
    connect: dict[str, Any] | None = None
    """What the connection attempt measured (STUN checks sent and answered, UDP packets from
    the reflector), when it says something the figures do not (udp_blocked, a failed link)."""
    tcp: dict[str, Any] | None = None
    """The TCP speed test (speedtest-cli), when one ran: `--thorough`, or UDP blocked."""
    fallback: Fallback | None = None
    """The clinic's contact to call (the reflector's, local keys winning), open or closed at
    `started_at`; None when no number is known (docs/check-format.md, "Fallback")."""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "verdict": self.verdict.verdict,
            "confidence": self.verdict.confidence,
            "certainty": None if (c := certainty(self.verdict)) is None else c.code,
            "reasons": [r.to_json() for r in self.verdict.reasons],
            "metrics": self.metrics.to_json(),
            "duration_s": round(self.duration_s, 2),
            "started_at": self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "stopped_early": self.stopped_early,
            "local": self.local,
            "server": self.server,
            "ladder": self.ladder,
            "path": self.path,
            "paths_tried": list(self.paths_tried),
            "connect": self.connect,
            "tcp": self.tcp,
            "fallback": None if self.fallback is None else self.fallback.to_json(),
        }

"""What `netprobe.core.policy` reports and derives, kept apart from what it decides: the
agent's status document (schema `netprobe.status/1`, docs/agent-api.md), the list of changed
settings a reload logs, and the settings of the light check. Pure: the wall-clock offset and
`now` come in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from netprobe.config import Settings
from netprobe.core.classify import Verdict
from netprobe.core.words import phrase_json

if TYPE_CHECKING:
    from netprobe.core.policy import AgentPolicy


#: The light check run while idle: enough rungs to tell video from audio, a shorter cap.
LIGHT_LADDER = (300, 800, 1600)
LIGHT_CAP_S = 10.0


def light_check_settings(settings: Settings) -> Settings:
    """The settings of a light check: the idle ladder, capped at LIGHT_CAP_S."""
    probe = replace(settings.probe, ladder_kbps=LIGHT_LADDER,
                    max_duration_s=min(LIGHT_CAP_S, settings.probe.max_duration_s),
                    connect_timeout_s=min(LIGHT_CAP_S - 2, settings.probe.connect_timeout_s))
    return replace(settings, probe=probe)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The settings that differ, as `section.key`."""
    changed = []
    for section in ("probe", "reflector", "privacy", "agent", "thresholds"):
        a, b = getattr(old, section), getattr(new, section)
        if a != b:
            changed.extend(f"{section}.{key}" for key in vars(a)
                           if getattr(a, key) != getattr(b, key))
    return changed


def iso(ts: float | None, offset: float) -> str | None:
    """Monotonic `ts` as UTC ISO 8601 (`offset`: add it to get Unix seconds)."""
    if ts is None:
        return None
    at = datetime.fromtimestamp(ts + offset, UTC)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def status_document(p: AgentPolicy, verdict: Verdict, age: float | None, wall_offset: float,
                    version: str) -> dict[str, Any]:
    """The status of policy `p`, showing `verdict` (the recommendation, or the stale one)."""
    return {
        "schema": "netprobe.status/1",
        "state": p.state,
        "session_source": p.session_source,
        "recommendation": verdict.verdict,
        "confidence": verdict.confidence,
        # with their templates, so that `netprobe status` can say them in its language
        "reasons": [r.to_json() | (phrase_json(r.template, r.args) if r.template else {})
                    for r in verdict.reasons],
        "metrics": p.metrics.to_json(),
        "updated_at": iso(p.updated_at, wall_offset),
        "age_s": None if age is None else round(age, 1),
        "reflector": p.reflector,
        "session_started_at": iso(p.session_started_at, wall_offset),
        "check_running": p.check_running is not None,
        "probe_interval_ms": None if p.probe_rate is None
        else round(p.probe_rate.interval_s * 1000, 1),
        "passive": p.passive.to_json(),
        "version": version,
    }

"""What a check measured: typed, JSON-ready, free of I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class DirectionMetrics:
    """One direction of the link: `up` is client to server, `down` server to client."""

    kbps: float | None = None
    """Throughput the direction sustained, kbit/s of wire bytes; None if not measured."""
    kbps_at_least: bool = False
    """True when the ladder's top rung passed: the link can do *at least* `kbps`."""
    loss_pct: float | None = None
    """Packet loss in percent (0-100) of the probe and unsaturated load packets."""
    jitter_ms: float | None = None
    """RFC 3550 interarrival jitter of the probe stream, milliseconds."""
    packets: int = 0
    """Packets the loss figure is based on."""
    loss_interval_pct: tuple[float, float] | None = None
    """95 % interval of the loss figure (Wilson), percent: a check that stopped as soon as
    its verdict was certain reports how precise its loss figure got."""

    def to_json(self) -> dict[str, Any]:
        interval = self.loss_interval_pct
        return {
            "kbps": _round(self.kbps, 0),
            "kbps_at_least": self.kbps_at_least,
            "loss_pct": _round(self.loss_pct, 2),
            "loss_interval_pct": None if interval is None else
            [round(interval[0], 2), round(interval[1], 2)],
            "jitter_ms": _round(self.jitter_ms, 1),
            "packets": self.packets,
        }


@dataclass(frozen=True)
class LinkMetrics:
    """Everything the classifier looks at. A None field was not measured."""

    rtt_ms: float | None = None
    """Median round-trip time of probes sent while the link was not saturated, ms."""
    rtt_loaded_ms: float | None = None
    """Median round-trip time while a ladder rung saturated the link (bufferbloat), ms."""
    mos_audio: float | None = None
    """E-model (ITU-T G.107) MOS estimate for a voice call over this link, 1-4.5."""
    up: DirectionMetrics = field(default_factory=DirectionMetrics)
    down: DirectionMetrics = field(default_factory=DirectionMetrics)
    connected: bool = False
    """Whether a WebRTC connection to the reflector was established at all."""
    burst_ratio: float | None = None
    """G.107 burst ratio (BurstR) of the probe losses in the direction `mos_audio` rates
    worse: 1 for random loss, up to 8 for clustered loss (`core.lossruns`)."""

    @property
    def measured_anything(self) -> bool:
        return self.connected and (
            self.rtt_ms is not None or self.up.kbps is not None or self.down.kbps is not None)

    def with_changes(self, **changes: Any) -> LinkMetrics:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "rtt_ms": _round(self.rtt_ms, 1),
            "rtt_loaded_ms": _round(self.rtt_loaded_ms, 1),
            "mos_audio": _round(self.mos_audio, 2),
            "burst_ratio": _round(self.burst_ratio, 2),
            "up": self.up.to_json(),
            "down": self.down.to_json(),
        }


def _round(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    return round(float(value), digits)

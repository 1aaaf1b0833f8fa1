"""Words for people: the verdict line, reasons, figures and the live progress line."""

from __future__ import annotations

from typing import Any

from netprobe import exitcodes
from netprobe.core.certainty import certainty
from netprobe.core.classify import AUDIO_ONLY, PHONE, UNKNOWN, VIDEO
from netprobe.core.metrics import DirectionMetrics
from netprobe.core.result import CheckResult
from netprobe.core.session import Progress

VERDICT_LINES = {
    VIDEO: "Your connection is ready for a video session.",
    AUDIO_ONLY: "Please use audio only for this session: your connection cannot hold "
                "video steadily right now.",
    PHONE: "Please call your therapist by phone for this session: your internet connection "
           "is not steady enough for a call right now.",
    UNKNOWN: "Your connection could not be tested.",
}

EXIT_CODES = exitcodes.BY_VERDICT
"""`check`'s exit status by verdict (`netprobe.exitcodes`)."""


def _rate(d: DirectionMetrics) -> str:
    if d.kbps is None:
        return "not measured"
    prefix = "at least " if d.kbps_at_least else ""
    return f"{prefix}{d.kbps / 1000:.1f} Mbit/s" if d.kbps >= 1000 else \
        f"{prefix}{d.kbps:.0f} kbit/s"


def _dir_line(name: str, d: DirectionMetrics) -> str:
    parts = [_rate(d)]
    if d.loss_pct is not None:
        parts.append(f"{d.loss_pct:.1f} % lost")
    if d.jitter_ms is not None:
        parts.append(f"jitter {d.jitter_ms:.0f} ms")
    return f"  {name:<10}{', '.join(parts)}"


def render_text(result: CheckResult) -> str:
    v = result.verdict
    lines = [VERDICT_LINES[v.verdict], ""]
    reasons = [r for r in v.reasons if r.code != "video_ok"]
    if reasons:
        lines.append("Why:" if v.verdict != VIDEO else "Good to know:")
        lines += [f"  - {r.message}" for r in reasons]
        lines.append("")
    m = result.metrics
    if m.connected:
        lines.append("What was measured:")
        if m.rtt_ms is not None:
            loaded = f" ({m.rtt_loaded_ms:.0f} ms when the line is full)" if m.rtt_loaded_ms \
                else ""
            lines.append(f"  {'Delay':<10}{m.rtt_ms:.0f} ms there and back{loaded}")
        lines.append(_dir_line("Upload", m.up))
        lines.append(_dir_line("Download", m.down))
        if m.mos_audio is not None:
            lines.append(f"  {'Voice':<10}quality {m.mos_audio:.1f} of 5 (estimate)")
        lines += _certainty_lines(result)
        if result.path in _PATH_WORDS:
            lines.append(f"  {'Path':<10}{_PATH_WORDS[result.path]}")
        lines.append("")
    elif certainty(v) is not None:  # a verdict without a connection (too lossy to connect)
        lines += [*_certainty_lines(result), ""]
    if result.tcp is not None:
        lines += _tcp_lines(result.tcp)
    if result.local:
        lines.append("Note: this was a self-test against a test server on this computer. It "
                     "shows netprobe works here; it did not test your internet connection.")
    return "\n".join(lines).rstrip() + "\n"


def _certainty_lines(result: CheckResult) -> list[str]:
    """How sure the verdict is, in words: `confidence` is a distance from thresholds, not a
    probability, so it is never shown as a percentage (netprobe/core/certainty.py)."""
    c = certainty(result.verdict)
    lines = [] if c is None else [f"  {'Certainty':<10}{c.words}"]
    return [*lines, f"  {'Took':<10}{result.duration_s:.1f} s"]


_PATH_WORDS = {
    "relay_udp": "through the clinic's relay",
    "relay_tcp": "through the clinic's relay, over an ordinary web connection (TCP)",
    "relay_tls": "through the clinic's relay, over an encrypted web connection (TLS)",
}
"""How the test streams travelled, when not directly (docs/check-format.md, "Paths")."""


def _kbps(kbps: float | None) -> str:
    if kbps is None:
        return "not measured in time"
    return f"{kbps / 1000:.1f} Mbit/s" if kbps >= 1000 else f"{kbps:.0f} kbit/s"


def _tcp_lines(tcp: dict[str, Any]) -> list[str]:
    """The "TCP speed test" section: capacity over TCP, not what a call gets."""
    against = "speedtest.net" if tcp.get("against") == "speedtest.net" else "the test server"
    lines = [f"TCP speed test (against {against}; the line's capacity, not what a call gets):"]
    error = tcp.get("error")
    if error:
        lines += [f"  {'Result':<10}could not run: {error.get('message', '')}", ""]
        return lines
    lines.append(f"  {'Upload':<10}{_kbps(tcp.get('up_kbps'))}")
    lines.append(f"  {'Download':<10}{_kbps(tcp.get('down_kbps'))}")
    if tcp.get("latency_ms") is not None:
        lines.append(f"  {'Latency':<10}{tcp['latency_ms']:.0f} ms (speedtest-cli's figure)")
    lines += [f"  {'Took':<10}{tcp.get('duration_s', 0):.1f} s", ""]
    return lines


def render_progress(p: Progress | str) -> str:
    if isinstance(p, str):
        return "Connecting to the test server…" if p == "connecting" else p
    parts = [f"Measuring your connection… {p.elapsed_s:4.1f} s"]
    if p.rtt_ms is not None:
        parts.append(f"delay {p.rtt_ms:.0f} ms")
    if p.phase != "warmup":
        parts.append(f"upload ≥ {p.up_kbps / 1000:.1f} Mbit/s{'' if not p.up_done else ' ✓'}")
        parts.append(f"download ≥ {p.down_kbps / 1000:.1f} Mbit/s"
                     f"{'' if not p.down_done else ' ✓'}")
    return " · ".join(parts)

"""Words for people: the verdict line, reasons, figures and the live progress line, in the
language chosen with `netprobe.i18n.set_language` (the JSON stays in English and codes)."""

from __future__ import annotations

from typing import Any

from netprobe import exitcodes
from netprobe.clinic import result_lines
from netprobe.core.certainty import certainty
from netprobe.core.classify import AUDIO_ONLY, PHONE, UNKNOWN, VIDEO, format_mbps
from netprobe.core.metrics import DirectionMetrics
from netprobe.core.result import CheckResult
from netprobe.core.session import Progress
from netprobe.i18n import N_, Phrase, _, n_, text_of

VERDICT_LINES = {
    VIDEO: N_("Your connection is ready for a video session."),
    AUDIO_ONLY: N_("Please use audio only for this session: your connection cannot hold "
                   "video steadily right now."),
    PHONE: N_("Please call your therapist by phone for this session: your internet "
              "connection is not steady enough for a call right now."),
    UNKNOWN: N_("Your connection could not be tested. Please run the check again in a "
                "minute; if it still fails, call your therapist by phone."),
}
"""The first line of the report (English msgids; shown translated)."""

SELF_TEST_LINES = {
    VIDEO: N_("Self-test passed: netprobe works on this computer."),
    AUDIO_ONLY: N_("Self-test: netprobe runs on this computer, but its test did not run "
                   "smoothly even here (this computer may be very busy)."),
    UNKNOWN: N_("Self-test failed: netprobe could not run its test on this computer."),
}
"""The first line of a `--local` check: it tested netprobe, not the internet connection."""

EXIT_CODES = exitcodes.BY_VERDICT
"""`check`'s exit status by verdict (`netprobe.exitcodes`)."""


def _say(template: str, **args: Any) -> str:
    return text_of(Phrase.of(template, **args))


def _label(text: str) -> str:
    return f"  {_(text):<10}"


def _rate(d: DirectionMetrics) -> str:
    if d.kbps is None:
        return _("speed not measured")
    if d.kbps_at_least:
        return _say(N_("speed at least {rate} Mbit/s"), rate=format_mbps(d.kbps))
    return _say(N_("speed {rate} Mbit/s"), rate=format_mbps(d.kbps))


def _dir_line(name: str, d: DirectionMetrics) -> str:
    parts = [_rate(d)]
    if d.loss_pct is not None:
        parts.append(_say(N_("{loss:.1f} % lost"), loss=d.loss_pct))
    if d.jitter_ms is not None:
        n = round(d.jitter_ms)
        parts.append(n_("delay varies by {n} millisecond", "delay varies by {n} milliseconds",
                        n).format(n=n))
    return _label(name) + ", ".join(parts)


def _first_line(result: CheckResult) -> str:
    if result.local:
        return _(SELF_TEST_LINES.get(result.verdict.verdict, SELF_TEST_LINES[AUDIO_ONLY]))
    return _(VERDICT_LINES[result.verdict.verdict])


def render_text(result: CheckResult) -> str:
    v = result.verdict
    lines = [_first_line(result), *result_lines(v.verdict, result.fallback), ""]
    reasons = [r for r in v.reasons if r.code != "video_ok"]
    if reasons:
        lines.append(_("Why:") if v.verdict != VIDEO else _("Good to know:"))
        lines += [f"  - {text_of(r)}" for r in reasons]
        lines.append("")
    m = result.metrics
    if m.connected:
        lines.append(_("What was measured:"))
        if m.rtt_ms is not None:
            lines.append(_label(N_("Delay")) + _delay_words(m.rtt_ms, m.rtt_loaded_ms))
        lines.append(_dir_line(N_("Upload"), m.up))
        lines.append(_dir_line(N_("Download"), m.down))
        if m.mos_audio is not None:
            lines.append(_label(N_("Voice")) + _say(N_("quality {mos:.1f} of 5 (estimate)"),
                                                    mos=m.mos_audio))
        lines += _certainty_lines(result)
        if result.path in _PATH_WORDS:
            lines.append(_label(N_("Path")) + _(_PATH_WORDS[result.path]))
        lines.append("")
    elif certainty(v) is not None:  # a verdict without a connection (too lossy to connect)
        lines += [*_certainty_lines(result), ""]
    if result.tcp is not None:
        lines += _tcp_lines(result.tcp)
    if result.local:
        lines.append(_("Note: this was a self-test against a test server on this computer. It "
                       "shows netprobe works here; it did not test your internet connection."))
    return "\n".join(lines).rstrip() + "\n"


def _delay_words(rtt_ms: float, loaded_ms: float | None) -> str:
    n = round(rtt_ms)
    if loaded_ms:
        return n_("{n} millisecond there and back ({loaded} when the connection is full)",
                  "{n} milliseconds there and back ({loaded} when the connection is full)",
                  n).format(n=n, loaded=round(loaded_ms))
    return n_("{n} millisecond there and back", "{n} milliseconds there and back",
              n).format(n=n)


def _certainty_lines(result: CheckResult) -> list[str]:
    """How sure the verdict is, in words: `confidence` is a distance from thresholds, not a
    probability, so it is never shown as a percentage (netprobe/core/certainty.py)."""
    c = certainty(result.verdict)
    lines = [] if c is None else [_label(N_("Certainty")) + _(c.words)]
    return [*lines, _label(N_("Took")) + _say(N_("{seconds:.1f} s"),
                                              seconds=result.duration_s)]


_PATH_WORDS = {
    "relay_udp": N_("through the clinic's relay"),
    "relay_tcp": N_("through the clinic's relay, over an ordinary web connection (TCP)"),
    "relay_tls": N_("through the clinic's relay, over an encrypted web connection (TLS)"),
}
"""How the test streams travelled, when not directly (docs/check-format.md, "Paths")."""


def _kbps(kbps: float | None) -> str:
    if kbps is None:
        return _("not measured in time")
    return _say(N_("{rate} Mbit/s"), rate=format_mbps(kbps))


def _tcp_lines(tcp: dict[str, Any]) -> list[str]:
    """The "TCP speed test" section: capacity over TCP, not what a call gets."""
    lines = [_("TCP speed test (against speedtest.net; the line's capacity, not what a call "
               "gets):") if tcp.get("against") == "speedtest.net" else
             _("TCP speed test (against the test server; the line's capacity, not what a "
               "call gets):")]
    error = tcp.get("error")
    if error:
        lines += [_label(N_("Result")) + _say(N_("could not run: {error}"),
                                              error=str(error.get("message", ""))), ""]
        return lines
    lines.append(_label(N_("Upload")) + _kbps(tcp.get("up_kbps")))
    lines.append(_label(N_("Download")) + _kbps(tcp.get("down_kbps")))
    if tcp.get("latency_ms") is not None:
        lines.append(_label(N_("Latency")) + _say(N_("{ms:.0f} ms (speedtest-cli's figure)"),
                                                  ms=tcp["latency_ms"]))
    lines += [_label(N_("Took")) + _say(N_("{seconds:.1f} s"),
                                        seconds=tcp.get("duration_s", 0)), ""]
    return lines


def render_progress(p: Progress | str) -> str:
    if isinstance(p, str):
        return _("Connecting to the test server…") if p == "connecting" else _(p)
    parts = [_say(N_("Measuring your connection… {seconds:4.1f} s"), seconds=p.elapsed_s)]
    if p.rtt_ms is not None:
        parts.append(_say(N_("delay {ms:.0f} ms"), ms=p.rtt_ms))
    if p.phase != "warmup":
        parts.append(_say(N_("upload ≥ {rate:.1f} Mbit/s"), rate=p.up_kbps / 1000)
                     + ("" if not p.up_done else " ✓"))
        parts.append(_say(N_("download ≥ {rate:.1f} Mbit/s"), rate=p.down_kbps / 1000)
                     + ("" if not p.down_done else " ✓"))
    return " · ".join(parts)

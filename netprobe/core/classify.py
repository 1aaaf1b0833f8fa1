"""The classifier: a pure function from `LinkMetrics` to a `Verdict`.

`video` needs every video requirement in both directions; otherwise `audio_only` needs every
audio requirement; otherwise `phone`. `unknown` only when nothing could be measured. The
thresholds come from config/thresholds.toml, which cites a source for each number.

Monotonic by construction: every rule is a threshold on one figure, so a link that is worse
in any figure can never get a better verdict (tested with hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.words import N_, Phrase

VIDEO = "video"
AUDIO_ONLY = "audio_only"
PHONE = "phone"
UNKNOWN = "unknown"

#: Best first. A verdict's index is its rank: a bigger index is a more cautious verdict.
VERDICTS = (VIDEO, AUDIO_ONLY, PHONE, UNKNOWN)


@dataclass(frozen=True)
class VideoThresholds:
    min_kbps: float = 600
    """Each direction must sustain at least this, kbit/s."""
    good_kbps: float = 1500
    """Comfortable video rate; below it `video` comes with lower confidence and a note."""
    max_loss_pct: float = 5.0
    """Highest packet loss, percent, in either direction."""
    good_loss_pct: float = 2.0
    """Comfortable loss, percent."""
    max_rtt_ms: float = 300
    """Highest round-trip time, ms."""
    good_rtt_ms: float = 150
    """Comfortable round-trip time, ms."""
    max_jitter_ms: float = 30
    """Highest jitter in either direction, ms."""
    good_jitter_ms: float = 15
    """Comfortable jitter, ms."""
    loads_link_below_kbps: float = 1800
    """A video call fills a direction slower than this: delay is judged at the loaded RTT."""


@dataclass(frozen=True)
class AudioThresholds:
    min_kbps: float = 100
    """Each direction must sustain at least this, kbit/s."""
    good_kbps: float = 200
    """Comfortable audio rate, kbit/s."""
    min_mos: float = 3.1
    """Lowest E-model MOS (G.107: R = 60)."""
    good_mos: float = 3.6
    """Comfortable MOS."""


@dataclass(frozen=True)
class Thresholds:
    video: VideoThresholds = VideoThresholds()
    audio: AudioThresholds = AudioThresholds()


@dataclass(frozen=True)
class Reason:
    code: str
    """Stable identifier, e.g. `upload_too_slow_for_video` (documented in docs/)."""
    message: str
    """Plain-language explanation with something concrete to try, in English (the JSON and
    the logs keep it; a person reads `netprobe.i18n.text_of(reason)`, translated)."""
    template: str = ""
    """The English template `message` was made of (a catalogue msgid); "" for none."""
    args: tuple[tuple[str, Any], ...] = ()
    """The template's arguments: numbers, texts, or `Phrase`s (translated too)."""

    @classmethod
    def of(cls, code: str, template: str, **args: Any) -> Reason:
        """A reason from a template marked with `N_` and its arguments."""
        phrase = Phrase.of(template, **args)
        return cls(code, phrase.english(), template, phrase.args)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    """One of `video`, `audio_only`, `phone`, `unknown`."""
    confidence: float
    """0-1: how far the figures sit from the thresholds that decided the verdict."""
    reasons: tuple[Reason, ...]
    """Why, most important first."""

    @property
    def rank(self) -> int:
        return VERDICTS.index(self.verdict)


def format_mbps(kbps: float, digits: int = 2) -> str:
    """Mbit/s with `digits` significant digits (at least one decimal below 10 Mbit/s)."""
    mbps = kbps / 1000
    if mbps >= 10:
        return f"{mbps:.0f}"
    return f"{mbps:.{digits}g}" if mbps < 1 else f"{mbps:.{max(1, digits - 1)}f}"


def _mbps_pair(measured: float, needed: float) -> tuple[str, str]:
    """Both figures, with just enough digits that a shortfall never reads as equal."""
    for digits in (2, 3, 4):
        a, b = format_mbps(measured, digits), format_mbps(needed, 2)
        if a != b:
            return a, b
    return a, b


_WORDS = {"up": "upload", "down": "download"}
#: (direction, purpose) -> the sentence for a speed not measured, not tested far enough (the
#: check ended first) or too slow. Whole sentences per case, for the translators.
_NOT_MEASURED = {
    ("up", "video"): N_("Your upload speed could not be measured, so video cannot be promised. "
                        "Run the check again; if this repeats, your connection may be "
                        "dropping out."),
    ("down", "video"): N_("Your download speed could not be measured, so video cannot be "
                          "promised. Run the check again; if this repeats, your connection "
                          "may be dropping out."),
    ("up", "audio"): N_("Your upload speed could not be measured, so audio cannot be promised. "
                        "Run the check again; if this repeats, your connection may be "
                        "dropping out."),
    ("down", "audio"): N_("Your download speed could not be measured, so audio cannot be "
                          "promised. Run the check again; if this repeats, your connection "
                          "may be dropping out."),
}
_NOT_TESTED = {
    ("up", "video"): N_("Your upload was only tested up to {tested} Mbit/s before the check "
                        "ended; video needs {needed}. Run the check again to test it fully."),
    ("down", "video"): N_("Your download was only tested up to {tested} Mbit/s before the "
                          "check ended; video needs {needed}. Run the check again to test it "
                          "fully."),
    ("up", "audio"): N_("Your upload was only tested up to {tested} Mbit/s before the check "
                        "ended; audio needs {needed}. Run the check again to test it fully."),
    ("down", "audio"): N_("Your download was only tested up to {tested} Mbit/s before the "
                          "check ended; audio needs {needed}. Run the check again to test it "
                          "fully."),
}
_TOO_SLOW = {
    ("up", "video"): N_("Your upload is too slow for video: {measured} Mbit/s measured, "
                        "{needed} needed. Try to close other uploads (cloud backup, photo "
                        "sync, file sharing). Moving closer to your Wi-Fi router, or using a "
                        "network cable, often helps."),
    ("down", "video"): N_("Your download is too slow for video: {measured} Mbit/s measured, "
                          "{needed} needed. Try to pause downloads and streaming on other "
                          "devices. Moving closer to your Wi-Fi router, or using a network "
                          "cable, often helps."),
    ("up", "audio"): N_("Your upload is too slow for audio: {measured} Mbit/s measured, "
                        "{needed} needed. Try to close other uploads (cloud backup, photo "
                        "sync, file sharing). Moving closer to your Wi-Fi router, or using a "
                        "network cable, often helps."),
    ("down", "audio"): N_("Your download is too slow for audio: {measured} Mbit/s measured, "
                          "{needed} needed. Try to pause downloads and streaming on other "
                          "devices. Moving closer to your Wi-Fi router, or using a network "
                          "cable, often helps."),
}
_MARGINAL = {
    "up": N_("Your upload ({measured} Mbit/s) is enough for video but without much room to "
             "spare: the picture may be softer. If it stutters, close other uploads (cloud "
             "backup, photo sync, file sharing)."),
    "down": N_("Your download ({measured} Mbit/s) is enough for video but without much room "
               "to spare: the picture may be softer. If it stutters, pause downloads and "
               "streaming on other devices."),
}


@dataclass
class _Check:
    """One requirement's outcome: `margin` > 0 passes, < 0 fails; |margin| is relative."""

    ok: bool
    margin: float
    reason: Reason | None = None
    incomplete: bool = False
    """Failed for want of a measurement, not because a figure was bad."""


def _at_least(value: float, limit: float) -> float:
    return (value - limit) / limit if limit else 1.0


def _at_most(value: float, limit: float) -> float:
    return (limit - value) / limit if limit else 1.0


def _rate_check(d: DirectionMetrics, name: str, need: float, purpose: str) -> _Check:
    word = _WORDS[name]
    if d.kbps is None:
        return _Check(False, 0.0, incomplete=True, reason=Reason.of(
            f"{word}_not_measured", _NOT_MEASURED[name, purpose]))
    margin = 1.0 if d.kbps_at_least and d.kbps >= need else _at_least(d.kbps, need)
    if margin >= 0:
        return _Check(True, margin)
    if d.kbps_at_least:
        # The check stopped before testing this direction any higher (the verdict was
        # already decided by other figures): not shown to be too slow, just not shown enough.
        return _Check(False, 0.0, incomplete=True, reason=Reason.of(
            f"{word}_not_tested_for_{purpose}", _NOT_TESTED[name, purpose],
            tested=format_mbps(d.kbps), needed=format_mbps(need)))
    measured, needed = _mbps_pair(d.kbps, need)
    return _Check(False, margin, Reason.of(
        f"{word}_too_slow_for_{purpose}", _TOO_SLOW[name, purpose],
        measured=measured, needed=needed))


def _video_checks(m: LinkMetrics, t: VideoThresholds) -> list[_Check]:
    checks = [_rate_check(m.up, "up", t.min_kbps, "video"),
              _rate_check(m.down, "down", t.min_kbps, "video")]
    losses = [x for x in (m.up.loss_pct, m.down.loss_pct) if x is not None]
    if not losses:
        checks.append(_Check(False, 0.0, incomplete=True, reason=Reason.of(
            "loss_not_measured",
            N_("Packet loss could not be measured, so video cannot be promised. Run the check "
               "again; if this repeats, your connection may be dropping out."))))
    else:
        loss = max(losses)
        ok = loss <= t.max_loss_pct
        checks.append(_Check(ok, _at_most(loss, t.max_loss_pct), None if ok else Reason.of(
            "loss_too_high_for_video",
            N_("Too much of your data gets lost for smooth video: {loss:.1f} % lost, video "
               "needs under {limit:g} %. This is often weak Wi-Fi. Moving closer to your "
               "Wi-Fi router, or using a network cable, often helps."),
            loss=loss, limit=t.max_loss_pct)))
    if m.rtt_ms is None:
        checks.append(_Check(False, 0.0, incomplete=True, reason=Reason.of(
            "rtt_not_measured",
            N_("The delay to the test server could not be measured. Run the check again; if "
               "this repeats, your connection may be dropping out."))))
    elif (loaded := loaded_rtt_ms(m, t.loads_link_below_kbps)) is not None \
            and loaded > t.max_rtt_ms:
        checks.append(_Check(False, _at_most(loaded, t.max_rtt_ms), Reason.of(
            "rtt_too_high_under_load",
            N_("Your connection slows down when it is busy: its delay grows from {idle:.0f} "
               "to {loaded:.0f} ms there and back while it is full, and a video call fills "
               "it (video needs under {limit:g} ms). A network cable instead of Wi-Fi, "
               "pausing uploads and downloads on other devices, or a router setting against "
               "\"bufferbloat\" (often called Smart Queue Management, SQM) can help."),
            idle=m.rtt_ms, loaded=loaded, limit=t.max_rtt_ms)))
    else:
        rtt = max(m.rtt_ms, loaded or 0.0)
        ok = rtt <= t.max_rtt_ms
        checks.append(_Check(ok, _at_most(rtt, t.max_rtt_ms), None if ok else Reason.of(
            "rtt_too_high_for_video",
            N_("Your connection has a long delay: {rtt:.0f} ms there and back, video needs "
               "under {limit:g} ms. Replies would arrive late, so you and your therapist "
               "would often talk over each other. A satellite or mobile link often causes "
               "this: a wired or other connection helps."),
            rtt=m.rtt_ms, limit=t.max_rtt_ms)))
    jitters = [x for x in (m.up.jitter_ms, m.down.jitter_ms) if x is not None]
    if jitters:
        jit = max(jitters)
        ok = jit <= t.max_jitter_ms
        checks.append(_Check(ok, _at_most(jit, t.max_jitter_ms), None if ok else Reason.of(
            "jitter_too_high_for_video",
            N_("Your connection is unsteady: delay varies by {jitter:.0f} ms, video needs "
               "under {limit:g} ms or the picture will stutter. Other devices using the "
               "connection or weak Wi-Fi cause this: pause what you can. Moving closer to "
               "your Wi-Fi router, or using a network cable, often helps."),
            jitter=jit, limit=t.max_jitter_ms)))
    return checks


def _audio_checks(m: LinkMetrics, t: AudioThresholds) -> list[_Check]:
    checks = [_rate_check(m.up, "up", t.min_kbps, "audio"),
              _rate_check(m.down, "down", t.min_kbps, "audio")]
    if m.mos_audio is None:
        checks.append(_Check(False, 0.0, incomplete=True, reason=Reason.of(
            "audio_quality_not_measured",
            N_("Voice quality could not be estimated, so an internet audio call cannot be "
               "promised. A phone call is the safe choice; you can also run the check again."),
        )))
    else:
        # At the idle delay: a voice call (~100 kbit/s) fills no link that passes the rate
        # checks above, so its packets do not queue behind its own (docs/check-format.md).
        ok = m.mos_audio >= t.min_mos
        margin = (m.mos_audio - t.min_mos) / (4.5 - t.min_mos)
        checks.append(_Check(ok, margin, None if ok else Reason.of(
            "audio_quality_too_low",
            N_("Even a voice-only internet call would sound broken up or delayed (estimated "
               "quality {mos:.1f} of 5, at least {limit:g} needed). A phone call will be more "
               "reliable."),
            mos=m.mos_audio, limit=t.min_mos)))
    return checks


def loaded_rtt_ms(m: LinkMetrics, below_kbps: float) -> float | None:
    """The round trip a call meets when its own rate fills the link: the loaded RTT, if a
    direction is slower than `below_kbps` (the call fills it) and the delay grew under load;
    None otherwise. On a link faster than the ladder's top rung no rung filled it, so there
    is no loaded RTT, and none is needed: the call does not fill that link either."""
    rates = [d.kbps for d in (m.up, m.down) if d.kbps is not None]
    if m.rtt_loaded_ms is None or m.rtt_ms is None or not rates or min(rates) >= below_kbps:
        return None
    return m.rtt_loaded_ms if m.rtt_loaded_ms > m.rtt_ms else None


def _decisive(fails: list[_Check]) -> list[_Check]:
    """The failures to explain: those of bad figures if any, else the missing ones."""
    bad = [c for c in fails if not c.incomplete]
    return bad or fails


def _confidence(margins: list[float]) -> float:
    """Map the smallest relative margin to 0.5-0.99: at the threshold we are 50 % sure."""
    if not margins:
        return 0.5
    return round(min(0.99, 0.5 + 0.49 * min(1.0, abs(min(margins)) / 0.5)), 2)


def classify(m: LinkMetrics, t: Thresholds = Thresholds()) -> Verdict:
    """Recommend `video`, `audio_only`, `phone` or `unknown` for the measured link."""
    if not m.measured_anything:
        return Verdict(UNKNOWN, 0.0, (Reason.of(
            "nothing_measured",
            N_("The connection could not be tested: the test server did not answer. Check "
               "that you are online and run the check again in a minute; if it still fails, "
               "call your therapist by phone."),
        ),))
    video = _video_checks(m, t.video)
    if all(c.ok for c in video):
        notes = _video_notes(m, t.video)
        return Verdict(VIDEO, _confidence([c.margin for c in video]), (Reason.of(
            "video_ok", N_("Your connection can hold a video session.")),) + notes)
    video_fails = _decisive([c for c in video if not c.ok])
    audio = _audio_checks(m, t.audio)
    if all(c.ok for c in audio):
        # Sure of audio_only as far as the nearest audio threshold and the clearest video
        # failure allow: a link just below the video line is a less certain audio_only.
        margins = [c.margin for c in audio] + [max(-c.margin for c in video_fails)]
        return Verdict(AUDIO_ONLY, _confidence(margins),
                       tuple(c.reason for c in video_fails if c.reason))
    audio_fails = _decisive([c for c in audio if not c.ok])
    reasons = tuple(c.reason for c in audio_fails if c.reason)
    # A direction too slow for audio is too slow for video too: say it once.
    implied = {r.code.replace("_for_audio", "_for_video") for r in reasons} | {
        r.code for r in reasons}
    reasons += tuple(c.reason for c in video_fails if c.reason and c.reason.code not in implied)
    return Verdict(PHONE, _confidence([max(-c.margin for c in audio_fails)]), reasons)


def _video_notes(m: LinkMetrics, t: VideoThresholds) -> tuple[Reason, ...]:
    notes: list[Reason] = []
    for name, d in (("up", m.up), ("down", m.down)):
        if d.kbps is not None and d.kbps < t.good_kbps and not d.kbps_at_least:
            notes.append(Reason.of(f"{_WORDS[name]}_marginal_for_video", _MARGINAL[name],
                                   measured=format_mbps(d.kbps, 2)))
    losses = [x for x in (m.up.loss_pct, m.down.loss_pct) if x is not None]
    if losses and max(losses) > t.good_loss_pct:
        notes.append(Reason.of(
            "loss_marginal_for_video",
            N_("Some data gets lost ({loss:.1f} %); video should cope. If the picture "
               "freezes: moving closer to your Wi-Fi router, or using a network cable, often "
               "helps."),
            loss=max(losses)))
    return tuple(notes)


def worst(a: Verdict, b: Verdict) -> Verdict:
    """The more cautious of two verdicts."""
    return a if a.rank >= b.rank else b

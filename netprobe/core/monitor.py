"""During-session monitoring, pure: a rolling window of probe/echo samples, and the
hysteresis that turns window verdicts into calm recommendation changes.

`ProbeWindow` keeps what a low-rate probe stream to the reflector tells (RTT, loss and jitter
in each direction) for the last few seconds. `Hysteresis` steps the recommendation *down* as
soon as a few consecutive windows agree on a worse verdict, and *up* only after conditions have
been better for a sustained time and a fresh capacity check has confirmed it: never flapping.
Both take `now` as an argument and do no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from netprobe.core.classify import (
    AUDIO_ONLY,
    PHONE,
    UNKNOWN,
    VERDICTS,
    VIDEO,
    Reason,
    Thresholds,
    Verdict,
    classify,
    format_mbps,
)
from netprobe.core.lossruns import LossRuns
from netprobe.core.measure import JitterEstimator, percentile, wilson_interval
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.sampling import audio_fields
from netprobe.core.wire import Echo
from netprobe.core.words import N_

#: Fewest echoes in a window for it to say anything (a very lossy link returns few: their
#: sequence gaps still tell the loss).
MIN_WINDOW_SAMPLES = 3
#: Most echoes a window keeps (the oldest go first): a reflector that floods echoes must not
#: grow the agent's memory or its once-a-second work (100 s of echoes at 100/s).
MAX_WINDOW_SAMPLES = 10_000


@dataclass(frozen=True)
class _Sample:
    at: float
    """Arrival time of the echo (client clock)."""
    seq: int
    rtt: float
    up_settled: int
    up_lost_so_far: int
    up_jitter: float
    down_jitter: float


class ProbeWindow:
    """The last `span` seconds of a monitoring probe stream."""

    def __init__(self, span: float = 5.0) -> None:
        self.span = span
        self._samples: deque[_Sample] = deque()
        self._seqs: set[int] = set()  # echo numbers in the window (duplicates are dropped)
        self._jitter = JitterEstimator()
        self.last_echo_at: float | None = None

    def on_echo(self, echo: Echo, now: float) -> None:
        if echo.seq in self._seqs:
            return
        self._jitter.update(echo.sent_at, now)
        self.last_echo_at = now
        rtt = now - echo.probe_sent_at - max(0.0, echo.hold)
        if rtt < 0:
            return
        self._seqs.add(echo.seq)
        self._samples.append(_Sample(
            now, echo.seq, rtt, echo.up_probes_highest,
            echo.up_probes_highest + 1 - echo.up_probes_received, echo.up_jitter,
            self._jitter.jitter))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and (self._samples[0].at < now - self.span
                                 or len(self._samples) > MAX_WINDOW_SAMPLES):
            self._seqs.discard(self._samples.popleft().seq)

    def metrics(self, now: float, capacity: tuple[DirectionMetrics, DirectionMetrics] | None,
                span: float | None = None, *, sure: bool = False) -> LinkMetrics | None:
        """Figures over the last `span` seconds (default: the whole window; None if too few
        echoes). Throughput cannot be measured by a gentle probe stream: it comes from the
        last capacity check (`capacity`).

        `sure`: report each direction's loss as the least it can be with 95 % confidence (the
        Wilson lower bound), not the point estimate: for confirming the strongest advice
        (phone) on evidence, not on a window that happened to lose a few more packets."""
        self._trim(now)
        since = now - (self.span if span is None else span)
        recent = [s for s in self._samples if s.at >= since]
        if len(recent) < MIN_WINDOW_SAMPLES:
            return None
        ordered = sorted(recent, key=lambda s: s.seq)
        first, last = ordered[0], ordered[-1]
        down_expected = last.seq - first.seq
        down_lost = down_expected - (len(ordered) - 1)
        up_expected = last.up_settled - first.up_settled
        up_lost = max(0, last.up_lost_so_far - first.up_lost_so_far)
        up_loss = _loss_pct(min(up_lost, up_expected), up_expected, sure)
        down_loss = _loss_pct(max(0, down_lost), down_expected, sure)
        rtt = percentile([s.rtt for s in ordered], 50) * 1000
        up_jitter = percentile([s.up_jitter for s in ordered], 50) * 1000
        down_jitter = percentile([s.down_jitter for s in ordered], 50) * 1000
        up_rate, down_rate = capacity or (DirectionMetrics(), DirectionMetrics())
        return LinkMetrics(
            rtt_ms=rtt,
            **audio_fields(rtt, [up_loss, down_loss], [up_jitter, down_jitter],
                           _burst_ratios(ordered)),
            up=replace(up_rate, loss_pct=up_loss, jitter_ms=up_jitter, packets=up_expected),
            down=replace(down_rate, loss_pct=down_loss, jitter_ms=down_jitter,
                         packets=down_expected),
            connected=True,
        )

    def clear(self) -> None:
        """Forget the samples so far (e.g. after our own check loaded the link)."""
        self._samples.clear()
        self._seqs.clear()

    def silent_for(self, now: float) -> float:
        """Seconds since the last echo arrived (inf if none ever did)."""
        return float("inf") if self.last_echo_at is None else now - self.last_echo_at


def _burst_ratios(ordered: list[_Sample]) -> list[float]:
    """[uplink, downlink] G.107 burst ratios of the losses between consecutive echoes (in
    sequence order): echo numbers missing downlink, the reflector's settled counters up."""
    up, down = LossRuns(), LossRuns()
    for a, b in zip(ordered, ordered[1:], strict=False):
        up.add_stretch(b.up_settled - a.up_settled, b.up_lost_so_far - a.up_lost_so_far)
        down.add(False, b.seq - a.seq - 1)
        down.add(True)
    return [up.burst_ratio, down.burst_ratio]


def _loss_pct(lost: int, expected: int, sure: bool) -> float:
    """Percent lost: the point estimate, or with `sure` the Wilson lower bound."""
    if expected <= 0:
        return 0.0
    return 100 * (wilson_interval(lost, expected)[0] if sure else lost / expected)


@dataclass(frozen=True)
class HysteresisSettings:
    step_down_after: int = 3
    """Consecutive evaluations (one per second) that must agree on a worse verdict; the
    recommendation then steps down to the least cautious of their verdicts."""
    step_up_after_s: float = 20.0
    """How long conditions must stay better before a step up is even tried."""


@dataclass
class Hysteresis:
    """Turns a stream of per-window verdicts into recommendation changes."""

    settings: HysteresisSettings = field(default_factory=HysteresisSettings)
    current: Verdict = field(default_factory=lambda: Verdict(UNKNOWN, 0.0, ()))
    _worse_count: int = 0
    _worse_verdict: Verdict | None = None
    _better_since: float | None = None
    _better_verdict: str | None = None

    def reset(self, verdict: Verdict) -> None:
        """Take `verdict` as the recommendation (from a full check)."""
        self.current = verdict
        self._worse_count = 0
        self._worse_verdict = None
        self._better_since = None

    def observe(self, verdict: Verdict, now: float) -> tuple[Verdict | None, bool]:
        """Feed one window verdict. Returns (new recommendation or None, want_confirmation):
        a step down happens here; a step up is only proposed (`want_confirmation`), to be
        confirmed by a capacity check and applied with `confirm`."""
        rank, cur = VERDICTS.index(verdict.verdict), VERDICTS.index(self.current.verdict)
        if verdict.verdict == UNKNOWN:
            self._worse_count = 0
            self._worse_verdict = None
            self._better_since = None
            return None, False
        if self.current.verdict == UNKNOWN and verdict.verdict == VIDEO:
            # from "we do not know" to video only through a confirming capacity check
            self._worse_count = 0
            return None, True
        if rank > cur or self.current.verdict == UNKNOWN:
            self._better_since = None
            self._worse_count += 1
            # step down only as far as every window of the run agrees on (the least cautious
            # of them): one noisy window must not send a client to the phone
            if self._worse_verdict is None or rank < VERDICTS.index(self._worse_verdict.verdict):
                self._worse_verdict = verdict
            if self._worse_count >= self.settings.step_down_after or \
                    self.current.verdict == UNKNOWN:
                new = self._worse_verdict
                self.reset(new)
                return new, False
            return None, False
        self._worse_count = 0
        self._worse_verdict = None
        if rank < cur:
            # the clock runs for one better verdict: a change of it starts the wait afresh
            if self._better_since is None or verdict.verdict != self._better_verdict:
                self._better_since = now
                self._better_verdict = verdict.verdict
            if now - self._better_since >= self.settings.step_up_after_s:
                return None, True
            return None, False
        self._better_since = None
        # same verdict: keep the recommendation, refresh its reasons and confidence
        self.current = verdict
        return None, False

    def confirm(self, verdict: Verdict, now: float) -> Verdict | None:
        """Apply the result of a confirmation check: step up if it is better than now."""
        if VERDICTS.index(verdict.verdict) < VERDICTS.index(self.current.verdict) and \
                verdict.verdict != UNKNOWN:
            self.reset(verdict)
            return verdict
        self._better_since = now  # not yet: wait another full period before trying again
        return None


def passive_verdict(base: Verdict, *, interface_up: bool, cpu_percent: float | None,
                    cpu_limit: float = 90.0) -> Verdict:
    """Fold the machine's own signals into a window verdict: no network interface means the
    call will drop (phone); a saturated CPU cannot encode video (at most audio only)."""
    if not interface_up:
        return Verdict(PHONE, 0.9, (Reason.of(
            "network_down",
            N_("This computer has lost its network connection. If it does not come back "
               "within a minute, call your therapist by phone.")),))
    if cpu_percent is not None and cpu_percent >= cpu_limit and base.verdict == VIDEO:
        return Verdict(AUDIO_ONLY, 0.7, (Reason.of(
            "cpu_saturated",
            N_("This computer is very busy ({cpu:.0f} % processor use), too busy to send and "
               "show video smoothly. Close other programs, or switch to audio only."),
            cpu=cpu_percent),))
    return base


#: This computer's own traffic in a direction, as a share of that direction's last measured
#: capacity, at which it is named as a likely cause of a worse verdict.
OWN_TRAFFIC_SHARE = 0.7


_OWN_BUSY = {
    "up": N_("This computer is sending {own} Mbit/s in all, the call included: most of what "
             "your upload carried in the last check ({capacity} Mbit/s). If other programs on "
             "it are uploading (a cloud backup, file sync), pausing them should help."),
    "down": N_("This computer is receiving {own} Mbit/s in all, the call included: most of "
               "what your download carried in the last check ({capacity} Mbit/s). If other "
               "programs on it are downloading (updates, streaming), pausing them should help."),
}


def own_traffic_note(verdict: Verdict, *, tx_kbps: float | None, rx_kbps: float | None,
                     up: DirectionMetrics | None, down: DirectionMetrics | None,
                     share: float = OWN_TRAFFIC_SHARE) -> Verdict:
    """Name this computer's own traffic as a possible cause when a window says less than
    video.

    `tx_kbps`/`rx_kbps`: what the default interface sent/received over the window; `up`/`down`:
    the last check's capacities. Only a capacity the check pinned down counts (a top rung that
    passed says "at least", which no traffic figure can be compared with). The verdict itself
    is unchanged: a video call also fills the link, by design, and psutil cannot tell the
    call's traffic from other programs', so the advice is conditional: what this adds is the
    one cause the client may be able to act on from this computer (a backup, a sync, a
    download).
    """
    if verdict.verdict not in (AUDIO_ONLY, PHONE):
        return verdict
    notes = []
    for name, own, cap in (("up", tx_kbps, up), ("down", rx_kbps, down)):
        if own is None or cap is None or cap.kbps is None or cap.kbps_at_least or cap.kbps <= 0:
            continue
        if own >= share * cap.kbps:
            word = "upload" if name == "up" else "download"
            # The interface also carries the call itself: the advice is conditional.
            notes.append(Reason.of(f"own_{word}_busy", _OWN_BUSY[name], own=format_mbps(own),
                                   capacity=format_mbps(cap.kbps)))
    if not notes:
        return verdict
    return replace(verdict, reasons=verdict.reasons[:1] + tuple(notes) + verdict.reasons[1:])


def window_verdict(metrics: LinkMetrics | None, thresholds: Thresholds,
                   longer: LinkMetrics | None = None) -> Verdict:
    """The verdict of a window. `phone` is the strongest advice, and a few seconds of probes
    are noisy (8 % loss reads as 12 % often enough): it must be confirmed by the `longer`
    window too (taken with `sure=True`: loss it is 95 % sure of), else the verdict stays at
    audio only."""
    if metrics is None:
        return Verdict(UNKNOWN, 0.0, ())
    verdict = classify(metrics, thresholds)
    if verdict.verdict != PHONE or longer is None:
        return verdict
    sustained = classify(longer, thresholds)
    if sustained.verdict == PHONE:
        return verdict
    if sustained.verdict == AUDIO_ONLY:
        return sustained
    reasons = tuple(r for r in verdict.reasons if r.code != "audio_quality_too_low")
    return Verdict(AUDIO_ONLY, 0.5, reasons or verdict.reasons)

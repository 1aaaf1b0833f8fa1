"""The client side of a check, as a pure state machine (sans-I/O, `now` always passed in).

The engine (`probe.py`) feeds it what arrives (echoes, downlink load packets) and asks it
what to send (probes, uplink load) and whether to stop. It turns everything into
`LinkMetrics`, and into optimistic/pessimistic bounds so that a check can stop as soon as
no further measurement could change the verdict.

Figures are taken from *calm* periods only: while a ladder rung saturates a direction (and
while its queue drains), probes measure our own congestion, not the link. Their RTT is
reported apart (`rtt_loaded_ms`) and their losses are not counted as the link's loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .classify import VIDEO, Thresholds, classify
from .config import ProbeSettings
from .emodel import estimate_audio_quality
from .ladder import Ladder, Rung, RungObservation, make_ladder
from .measure import JitterEstimator, SequenceTracker, percentile, wilson_interval
from .metrics import DirectionMetrics, LinkMetrics
from .wire import NO_RUNG, Echo, Load, Probe, RungReport

BIG_KBPS = 1e9
#: A finite stand-in for "could be anything" in the pessimistic bounds (ms).
HUGE_MS = 1e6
#: Loss above this (percent) decides every verdict by itself: no need to measure it finer.
LOSS_DECISIVE_PCT = 15.0
#: Half-width (percentage points, 95 %) the loss figure must reach before stopping early.
LOSS_PRECISION_PTS = 1.5
#: Stop sharpening the loss figure this long before the deadline (seconds).
PRECISION_RESERVE_S = 4.0
#: RFC 3550 jitter starts at 0 and converges with gain 1/16: skip its first samples.
JITTER_WARMUP = 16


@dataclass
class _RungRx:
    """Downlink load received in one rung."""

    seqs: SequenceTracker = field(default_factory=SequenceTracker)
    payload_bytes: int = 0
    first_at: float = 0.0
    last_at: float = 0.0


@dataclass(frozen=True)
class _EchoSample:
    seq: int
    """Echo sequence number."""
    probe_sent_at: float
    """When the answered probe left the client (client clock)."""
    rtt: float
    """Round-trip time in seconds."""
    up_received: int
    up_highest: int
    up_jitter: float
    down_jitter: float
    """The client's downlink jitter estimate right after this echo, seconds."""
    index: int
    """Order of arrival (for the jitter estimator's warm-up)."""


@dataclass(frozen=True)
class Progress:
    """A snapshot for a live display."""

    phase: str
    """`warmup`, `ladder` or `finishing`."""
    elapsed_s: float
    rtt_ms: float | None
    up_kbps: float
    """What the uplink has been shown to carry so far."""
    down_kbps: float
    up_done: bool
    down_done: bool


@dataclass(frozen=True)
class _Counts:
    lost: int = 0
    expected: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.lost + other.lost, self.expected + other.expected)

    @property
    def fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


class ClientSession:
    def __init__(self, settings: ProbeSettings, thresholds: Thresholds, now: float,
                 deadline: float | None = None):
        self.settings = settings
        self.thresholds = thresholds
        self.started_at = now
        self.deadline = now + settings.max_duration_s if deadline is None else deadline
        """When the engine will stop regardless (same clock as `now`)."""
        self.rungs = make_ladder(settings.ladder_kbps, settings.rung_pps)
        self.up = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio)
        self.down = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio)
        self._probe_seq = 0
        self._echoes = SequenceTracker()
        self._samples: list[_EchoSample] = []
        self._down_jitter = JitterEstimator()
        self._up_reports: dict[int, RungReport] = {}
        self._up_final: dict[int, RungReport | None] = {}
        self._down_sent: dict[int, int] = {}
        self._down_final: set[int] = set()
        self._up_load_seq = 0
        self._up_sent: dict[int, int] = {}
        self._down_rx: dict[int, _RungRx] = {}

    # -- what to send ------------------------------------------------------------------

    def next_probe(self, now: float) -> Probe:
        """A probe to send now; it also asks the reflector for the current downlink rung."""
        rung = self.down.current()
        probe = Probe(
            seq=self._probe_seq,
            sent_at=now,
            down_rung=rung.index if rung else NO_RUNG,
            down_rate_kbps=int(rung.rate_kbps) if rung else 0,
            down_size=rung.payload_size if rung else 0,
            down_duration_ms=int(self.settings.rung_duration_s * 1000) if rung else 0,
        )
        self._probe_seq += 1
        return probe

    def up_rung(self, now: float) -> Rung | None:
        """The uplink rung to send now, or None."""
        return self.up.sending(now)

    def next_up_load(self, rung: Rung, now: float) -> Load:
        load = Load(rung.index, self._up_load_seq, now)
        self._up_load_seq += 1
        self._up_sent[rung.index] = self._up_sent.get(rung.index, 0) + 1
        return load

    # -- what arrives ------------------------------------------------------------------

    def on_echo(self, echo: Echo, now: float) -> None:
        if not self._echoes.add(echo.seq):
            return
        self._down_jitter.update(echo.sent_at, now)
        rtt = now - echo.probe_sent_at - max(0.0, echo.hold)
        reports = {r.rung: r for r in echo.up_rungs}
        for rung, report in reports.items():
            old = self._up_reports.get(rung)
            if old is None or report.packets >= old.packets:
                self._up_reports[rung] = report
        # The probe this echo answers left after the current uplink rung ended and travelled
        # behind it: the reflector's count of that rung is final.
        current = self.up.current()
        if current is not None and current.index not in self._up_final and \
                echo.probe_sent_at >= self.up.end_of(current.index):
            self._up_final[current.index] = reports.get(current.index)
        for rung, sent, finished in echo.down_sent:
            self._down_sent[rung] = max(sent, self._down_sent.get(rung, 0))
            if finished:
                self._down_final.add(rung)
        if rtt >= 0:
            self._samples.append(_EchoSample(
                echo.seq, echo.probe_sent_at, rtt, echo.up_probes_received,
                echo.up_probes_highest, echo.up_jitter, self._down_jitter.jitter,
                len(self._samples)))

    def on_down_load(self, load: Load, payload_size: int, now: float) -> None:
        rx = self._down_rx.setdefault(load.rung, _RungRx())
        if not rx.seqs.add(load.seq):
            return
        if rx.seqs.received == 1:
            rx.first_at = now
        rx.payload_bytes += payload_size
        rx.last_at = now

    # -- calm and loaded periods -------------------------------------------------------------

    def _loaded(self, start: float, end: float, ladders: tuple[Ladder, ...]) -> bool:
        """True if [start, end] meets a period when one of `ladders` saturated the link."""
        return any(ws <= end and start <= we
                   for ladder in ladders for ws, we in ladder.loaded_windows())

    def _calm_rtts(self) -> tuple[list[float], list[float]]:
        """RTT samples in ms, split into (calm, loaded)."""
        calm, loaded = [], []
        both = (self.up, self.down)
        for s in self._samples:
            t = s.probe_sent_at
            (loaded if self._loaded(t, t, both) else calm).append(s.rtt * 1000)
        return calm, loaded

    def _probe_counts(self) -> tuple[_Counts, _Counts]:
        """(up, down) probe and echo losses, over calm stretches only.

        Consecutive echoes (in sequence order) bound a stretch: the echo numbers missing
        between them were lost on the downlink, and the reflector's cumulative counters in
        them tell how many probes of the stretch it received on the uplink.
        """
        up = down = _Counts()
        prev_seq, prev_t, prev_rx, prev_hi = -1, self.started_at, 0, -1
        for s in sorted(self._samples, key=lambda x: x.seq):
            t = s.probe_sent_at
            if not self._loaded(prev_t, t, (self.up,)) and s.up_highest > prev_hi:
                expected = s.up_highest - prev_hi
                up += _Counts(max(0, expected - (s.up_received - prev_rx)), expected)
            if not self._loaded(prev_t, t, (self.down,)):
                down += _Counts(s.seq - prev_seq - 1, s.seq - prev_seq)
            prev_seq, prev_t = s.seq, t
            prev_rx, prev_hi = max(prev_rx, s.up_received), max(prev_hi, s.up_highest)
        return up, down

    def _load_counts(self) -> tuple[_Counts, _Counts]:
        """(up, down) losses of load packets in rungs that passed (did not saturate)."""
        up = down = _Counts()
        for i, result in self.up.results.items():
            obs = self._observe_up(i)
            if result.passed and obs is not None:
                up += _Counts(max(0, obs.sent - obs.received), obs.sent)
        for i, result in self.down.results.items():
            obs = self._observe_down(i)
            if result.passed and obs is not None:
                down += _Counts(max(0, obs.sent - obs.received), obs.sent)
        return up, down

    def _loss_counts(self) -> tuple[_Counts, _Counts]:
        (pu, pd), (lu, ld) = self._probe_counts(), self._load_counts()
        return pu + lu, pd + ld

    def _calm_jitters(self) -> tuple[list[float], list[float]]:
        """(up, down) jitter estimates in ms from echoes of calm probes, after warm-up."""
        up, down = [], []
        for s in self._samples:
            if s.index < JITTER_WARMUP:
                continue
            t = s.probe_sent_at
            if not self._loaded(t, t, (self.up,)):
                up.append(s.up_jitter * 1000)
            if not self._loaded(t, t, (self.down,)):
                down.append(s.down_jitter * 1000)
        return up, down

    # -- progress and stopping ---------------------------------------------------------

    @property
    def rtt_estimate(self) -> float | None:
        """Median of the latest RTT samples, seconds (loaded ones included: for timeouts)."""
        if not self._samples:
            return None
        return percentile([s.rtt for s in self._samples[-20:]], 50)

    def tick(self, now: float) -> None:
        """Start the ladders after the warm-up, and judge rungs whose evidence is in."""
        if now - self.started_at >= self.settings.warmup_s and self._samples:
            self.up.start(now)
            self.down.start(now)
        timeout = 1.0 + 2 * (self.rtt_estimate or 0.0)
        up_probes, down_probes = self._probe_counts()
        self.up.evaluate(now, self._observe_up, up_probes.fraction,
                         lambda i: i in self._up_final, timeout)
        self.down.evaluate(now, self._observe_down, down_probes.fraction,
                           lambda i: i in self._down_final, timeout)

    def finished(self, now: float) -> bool:
        """True when more measuring cannot change the verdict or sharpen its figures."""
        if now - self.started_at < self.settings.min_probe_s:
            return False
        if self.up.done and self.down.done:
            return True
        optimistic, pessimistic = self.bounds()
        best = classify(optimistic, self.thresholds)
        if best.verdict != classify(pessimistic, self.thresholds).verdict:
            return False
        if best.verdict == VIDEO:
            return False  # finish the ladder: the figures must tell 1.5 from 5 Mbit/s
        if now < self.deadline - PRECISION_RESERVE_S and not self._loss_precise():
            return False  # the verdict is settled; sharpen the loss figure while time allows
        self.up.abort(now)
        self.down.abort(now)
        return True

    def _loss_precise(self) -> bool:
        for counts in self._loss_counts():
            lo, hi = wilson_interval(counts.lost, counts.expected)
            if 100 * lo > LOSS_DECISIVE_PCT:
                continue
            if 100 * (hi - lo) / 2 > LOSS_PRECISION_PTS:
                return False
        return True

    def progress(self, now: float) -> Progress:
        rtt = self.rtt_estimate
        phase = "warmup" if not self.up.started else (
            "ladder" if self.up.in_flight() or self.down.in_flight() else "finishing")
        return Progress(phase, now - self.started_at, None if rtt is None else rtt * 1000,
                        self.up.lower_bound(), self.down.lower_bound(),
                        self.up.done, self.down.done)

    # -- observations --------------------------------------------------------------------

    def _observe_up(self, rung: int) -> RungObservation | None:
        sent = self._up_sent.get(rung, 0)
        report = self._up_final.get(rung) or self._up_reports.get(rung)
        if report is None:
            return RungObservation(sent, 0, 0, 0.0, 0.0) if sent else None
        return RungObservation(sent, report.packets, report.payload_bytes, report.first_at,
                               report.last_at)

    def _observe_down(self, rung: int) -> RungObservation | None:
        rx = self._down_rx.get(rung)
        got = rx.seqs.received if rx else 0
        sent = max(self._down_sent.get(rung, 0), got)
        if rx is None:
            return RungObservation(sent, 0, 0, 0.0, 0.0) if sent else None
        return RungObservation(sent, got, rx.payload_bytes, rx.first_at, rx.last_at)

    # -- results ---------------------------------------------------------------------------

    def metrics(self) -> LinkMetrics:
        calm, loaded = self._calm_rtts()
        rtt = percentile(calm, 50) if calm else (percentile(loaded, 50) if loaded else None)
        up_counts, down_counts = self._loss_counts()
        up_loss = 100 * up_counts.fraction if up_counts.expected else None
        down_loss = 100 * down_counts.fraction if down_counts.expected else None
        up_j, down_j = self._calm_jitters()
        up_jitter = percentile(up_j, 50) if up_j else None
        down_jitter = percentile(down_j, 50) if down_j else None
        up_kbps, up_least = self.up.capacity()
        down_kbps, down_least = self.down.capacity()
        return LinkMetrics(
            rtt_ms=rtt,
            rtt_loaded_ms=percentile(loaded, 50) if loaded else None,
            mos_audio=_mos(rtt, [up_loss, down_loss], [up_jitter, down_jitter]),
            up=DirectionMetrics(up_kbps, up_least, up_loss, up_jitter, up_counts.expected),
            down=DirectionMetrics(down_kbps, down_least, down_loss, down_jitter,
                                  down_counts.expected),
            connected=True,
        )

    def bounds(self) -> tuple[LinkMetrics, LinkMetrics]:
        """(optimistic, pessimistic) metrics: the best and worst the link could still turn
        out to be, given the samples so far (Wilson intervals for loss, quartiles for RTT)."""
        calm, _ = self._calm_rtts()
        if len(calm) >= 5:
            rtt_lo, rtt_hi = percentile(calm, 25), percentile(calm, 75)
        else:
            rtt_lo, rtt_hi = 0.0, HUGE_MS
        loss = []
        for counts in self._loss_counts():
            lo, hi = wilson_interval(counts.lost, counts.expected)
            loss.append((100 * lo, 100 * hi))
        jit = []
        for values in self._calm_jitters():
            if len(values) >= 20:
                j = percentile(values, 50)
                jit.append((j * 0.5, j * 1.5 + 2))
            else:
                jit.append((0.0, HUGE_MS))

        def side(optimistic: bool) -> LinkMetrics:
            k = 0 if optimistic else 1
            rtt = rtt_lo if optimistic else rtt_hi
            up_rate = self.up.upper_bound() if optimistic else self.up.lower_bound()
            down_rate = self.down.upper_bound() if optimistic else self.down.lower_bound()
            losses = [loss[0][k], loss[1][k]]
            jitters = [jit[0][k], jit[1][k]]
            return LinkMetrics(
                rtt_ms=rtt,
                mos_audio=_mos(rtt, losses, jitters),
                up=DirectionMetrics(min(up_rate, BIG_KBPS), True, losses[0], jitters[0]),
                down=DirectionMetrics(min(down_rate, BIG_KBPS), True, losses[1], jitters[1]),
                connected=True,
            )

        return side(True), side(False)


def _mos(rtt_ms: float | None, losses: list[float | None],
         jitters: list[float | None]) -> float | None:
    if rtt_ms is None:
        return None
    loss = max((x for x in losses if x is not None), default=0.0)
    jitter = max((x for x in jitters if x is not None), default=0.0)
    finite = [v if math.isfinite(v) else HUGE_MS for v in (rtt_ms, jitter)]
    return estimate_audio_quality(finite[0], min(max(loss, 0.0), 100.0), finite[1]).mos

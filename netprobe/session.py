"""The client side of a check, as a pure state machine (sans-I/O, `now` always passed in).

The engine (`probe.py`) feeds it what arrives (echoes, downlink load packets) and asks it
what to send (probes, uplink load) and whether to stop. It turns everything into
`LinkMetrics`, and into optimistic/pessimistic bounds so that a check can stop as soon as
no further measurement could change the verdict.
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


@dataclass
class _RungRx:
    """Downlink load received in one rung."""

    seqs: SequenceTracker = field(default_factory=SequenceTracker)
    payload_bytes: int = 0
    first_at: float = 0.0
    last_at: float = 0.0


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


class ClientSession:
    def __init__(self, settings: ProbeSettings, thresholds: Thresholds, now: float):
        self.settings = settings
        self.thresholds = thresholds
        self.started_at = now
        self.rungs = make_ladder(settings.ladder_kbps, settings.rung_pps)
        self.up = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio)
        self.down = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio)
        # probes and echoes
        self._probe_seq = 0
        self._rtt: list[tuple[float, float]] = []  # (probe sent_at, rtt seconds)
        self._echoes = SequenceTracker()
        self._down_jitter = JitterEstimator()
        self._last_echo: Echo | None = None
        self._up_reports: dict[int, RungReport] = {}
        self._down_sent: dict[int, int] = {}
        # load
        self._up_load_seq = 0
        self._up_sent: dict[int, int] = {}
        self._down_rx: dict[int, _RungRx] = {}

    # -- what to send ------------------------------------------------------------------

    def next_probe(self, now: float) -> Probe:
        """A probe to send now; it also tells the reflector which downlink rung to send."""
        rung = self.down.sending(now)
        probe = Probe(
            seq=self._probe_seq,
            sent_at=now,
            down_rung=rung.index if rung else NO_RUNG,
            down_rate_kbps=int(rung.rate_kbps) if rung else 0,
            down_size=rung.payload_size if rung else 0,
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
        if rtt >= 0:
            self._rtt.append((echo.probe_sent_at, rtt))
        if self._last_echo is None or echo.seq > self._last_echo.seq:
            self._last_echo = echo
        for report in echo.up_rungs:
            old = self._up_reports.get(report.rung)
            if old is None or report.packets >= old.packets:
                self._up_reports[report.rung] = report
        for rung, sent in echo.down_sent:
            self._down_sent[rung] = max(sent, self._down_sent.get(rung, 0))

    def on_down_load(self, load: Load, payload_size: int, now: float) -> None:
        rx = self._down_rx.setdefault(load.rung, _RungRx())
        if not rx.seqs.add(load.seq):
            return
        if rx.seqs.received == 1:
            rx.first_at = now
        rx.payload_bytes += payload_size
        rx.last_at = now

    # -- progress and stopping ---------------------------------------------------------

    @property
    def rtt_estimate(self) -> float | None:
        if not self._rtt:
            return None
        return percentile([r for _, r in self._rtt[-20:]], 50)

    def tick(self, now: float) -> None:
        """Start the ladders after the warm-up and judge the rungs that have settled."""
        if now - self.started_at >= self.settings.warmup_s and self._rtt:
            self.up.start(now)
            self.down.start(now)
        rtt = self.rtt_estimate or 0.0
        settle = 0.15 + 1.5 * rtt
        self.up.evaluate(now, self._observe_up, self._up_probe_loss(), settle)
        self.down.evaluate(now, self._observe_down, self._down_probe_loss(), settle)

    def finished(self, now: float) -> bool:
        """True when more measuring cannot change the verdict or its figures."""
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
        self.up.abort()
        self.down.abort()
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
        report = self._up_reports.get(rung)
        if report is None:
            return RungObservation(sent, 0, 0, 0.0, 0.0) if sent else None
        return RungObservation(sent, report.packets, report.payload_bytes, report.first_at,
                               report.last_at)

    def _observe_down(self, rung: int) -> RungObservation | None:
        sent = self._down_sent.get(rung, 0)
        rx = self._down_rx.get(rung)
        if rx is None:
            return RungObservation(sent, 0, 0, 0.0, 0.0) if sent else None
        return RungObservation(max(sent, rx.seqs.received), rx.seqs.received, rx.payload_bytes,
                               rx.first_at, rx.last_at)

    # -- loss ------------------------------------------------------------------------------

    def _up_counts(self) -> tuple[int, int]:
        """(lost, expected) on the uplink: probes, plus load of rungs that did not saturate."""
        lost = expected = 0
        e = self._last_echo
        if e is not None and e.up_probes_highest >= 0:
            expected += e.up_probes_highest + 1
            lost += max(0, e.up_probes_highest + 1 - e.up_probes_received)
        for i, result in self.up.results.items():
            if result.passed:
                sent = self._up_sent.get(i, 0)
                report = self._up_reports.get(i)
                got = report.packets if report else 0
                expected += sent
                lost += max(0, sent - got)
        return lost, expected

    def _down_counts(self) -> tuple[int, int]:
        lost = self._echoes.lost()
        expected = self._echoes.highest + 1
        for i, result in self.down.results.items():
            if result.passed:
                rx = self._down_rx.get(i)
                got = rx.seqs.received if rx else 0
                sent = max(self._down_sent.get(i, 0), got)
                expected += sent
                lost += sent - got
        return lost, expected

    def _up_probe_loss(self) -> float:
        e = self._last_echo
        if e is None or e.up_probes_highest < 0:
            return 0.0
        return 1 - e.up_probes_received / (e.up_probes_highest + 1)

    def _down_probe_loss(self) -> float:
        if self._echoes.highest < 0:
            return 0.0
        return self._echoes.lost() / (self._echoes.highest + 1)

    # -- results ---------------------------------------------------------------------------

    def _unloaded_rtts(self) -> tuple[list[float], list[float]]:
        """RTT samples split into (link not saturated, saturated by a failing rung)."""
        busy = self.up.failed_rungs(), self.down.failed_rungs()
        calm, loaded = [], []
        for sent_at, rtt in self._rtt:
            up, down = self.up.rung_at(sent_at), self.down.rung_at(sent_at)
            (loaded if up in busy[0] or down in busy[1] else calm).append(rtt * 1000)
        return calm, loaded

    def metrics(self) -> LinkMetrics:
        calm, loaded = self._unloaded_rtts()
        rtt = percentile(calm, 50) if calm else (percentile(loaded, 50) if loaded else None)
        up_lost, up_expected = self._up_counts()
        down_lost, down_expected = self._down_counts()
        up_loss = 100 * up_lost / up_expected if up_expected else None
        down_loss = 100 * down_lost / down_expected if down_expected else None
        e = self._last_echo
        up_jitter = e.up_jitter * 1000 if e is not None else None
        down_jitter = self._down_jitter.jitter * 1000 if self._down_jitter.samples else None
        up_kbps, up_least = self.up.capacity()
        down_kbps, down_least = self.down.capacity()
        return LinkMetrics(
            rtt_ms=rtt,
            rtt_loaded_ms=percentile(loaded, 50) if loaded else None,
            mos_audio=_mos(rtt, [up_loss, down_loss], [up_jitter, down_jitter]),
            up=DirectionMetrics(up_kbps, up_least, up_loss, up_jitter, up_expected),
            down=DirectionMetrics(down_kbps, down_least, down_loss, down_jitter, down_expected),
            connected=True,
        )

    def bounds(self) -> tuple[LinkMetrics, LinkMetrics]:
        """(optimistic, pessimistic) metrics: the best and worst the link could still turn
        out to be, given the samples so far (Wilson intervals for loss, quartiles for RTT)."""
        calm, _ = self._unloaded_rtts()
        if len(calm) >= 5:
            rtt_lo, rtt_hi = percentile(calm, 25), percentile(calm, 75)
        else:
            rtt_lo, rtt_hi = 0.0, math.inf
        loss = []
        for lost, expected in (self._up_counts(), self._down_counts()):
            lo, hi = wilson_interval(lost, expected)
            loss.append((100 * lo, 100 * hi))
        e = self._last_echo
        jit = []
        for value, n in ((e.up_jitter if e else 0.0, self._echoes.received),
                         (self._down_jitter.jitter, self._down_jitter.samples)):
            if n >= 20:
                jit.append((value * 1000 * 0.5, value * 1000 * 1.5 + 2))
            else:
                jit.append((0.0, math.inf))

        def side(optimistic: bool) -> LinkMetrics:
            k = 0 if optimistic else 1
            rtt = rtt_lo if optimistic else rtt_hi
            up_rate = self.up.upper_bound() if optimistic else self.up.lower_bound()
            down_rate = self.down.upper_bound() if optimistic else self.down.lower_bound()
            losses = [loss[0][k], loss[1][k]]
            jitters = [jit[0][k], jit[1][k]]
            return LinkMetrics(
                rtt_ms=rtt if math.isfinite(rtt) else 1e6,
                mos_audio=_mos(rtt if math.isfinite(rtt) else 1e6, losses, jitters),
                up=DirectionMetrics(min(up_rate, BIG_KBPS), True, losses[0],
                                    min(jitters[0], 1e6)),
                down=DirectionMetrics(min(down_rate, BIG_KBPS), True, losses[1],
                                      min(jitters[1], 1e6)),
                connected=True,
            )

        return side(True), side(False)


def _mos(rtt_ms: float | None, losses: list[float | None], jitters: list[float | None]) -> (
        float | None):
    if rtt_ms is None:
        return None
    loss = max((x for x in losses if x is not None), default=0.0)
    jitter = max((x for x in jitters if x is not None), default=0.0)
    return estimate_audio_quality(rtt_ms, min(loss, 100.0), jitter).mos

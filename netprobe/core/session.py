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
from dataclasses import dataclass

from netprobe.config import ProbeSettings
from netprobe.core.classify import VIDEO, Thresholds, classify
from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.ladder import Ladder, Rung, RungObservation, make_ladder
from netprobe.core.measure import (
    PROBE_OVERHEAD_BYTES,
    JitterEstimator,
    RungArrivals,
    SequenceTracker,
    percentile,
    wilson_interval,
)
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.wire import NO_RUNG, Echo, Load, Probe, RungReport

BIG_KBPS = 1e9
#: A finite stand-in for "could be anything" in the pessimistic bounds (ms).
HUGE_MS = 1e6
#: Loss above this (percent) decides every verdict by itself: no need to measure it finer.
LOSS_DECISIVE_PCT = 15.0
#: Half-width (percentage points, 95 %) the loss figure must reach before stopping early.
LOSS_PRECISION_PTS = 1.5
#: Calm packets without a single loss after which 0 % loss is reported without sharpening.
MIN_CLEAN_SAMPLES = 100
#: Calm probes needed before their loss is allowed for when judging a rung.
MIN_LOSS_SAMPLES = 20
#: Stop sharpening the loss figure this long before the deadline (seconds).
PRECISION_RESERVE_S = 4.0
#: Probes and echoes may use at most this share of a direction's measured capacity; on a
#: slower link they are spaced out (at most `MAX_PROBE_INTERVAL_S` apart).
PROBE_SHARE = 0.2
MAX_PROBE_INTERVAL_S = 0.5
#: After probes were slowed down, the queue they built takes this long to drain (seconds).
SLOWDOWN_DRAIN_S = 2.0
#: Bounds of the wait for packets overtaken by the proof that a rung is complete (seconds).
MIN_REORDER_MARGIN_S = 0.02
MAX_REORDER_MARGIN_S = 0.5
#: Consecutive RTT samples looked at to tell that the probes themselves flood the link.
FLOOD_SAMPLES = 10
#: An echo's size on the wire (IP bytes), for pacing probes on slow links.
ECHO_WIRE_BYTES = 110 + PROBE_OVERHEAD_BYTES
#: RFC 3550 jitter starts at 0 and converges with gain 1/16: skip its first samples.
JITTER_WARMUP = 16


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
class _Counts:
    lost: int = 0
    expected: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.lost + other.lost, self.expected + other.expected)

    @property
    def fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


@dataclass(frozen=True)
class _Analysis:
    idle_rtts: list[float]
    """RTT samples (ms) of probes sent while no rung was running at all."""
    calm_rtts: list[float]
    """RTT samples (ms) of probes sent while the link was calm (idle or a rung well below
    capacity)."""
    loaded_rtts: list[float]
    """RTT samples (ms) of probes sent while a rung too fast for the link was being sent
    (the queue full: bufferbloat)."""
    up_probes: _Counts
    down_probes: _Counts
    up_loss: _Counts
    """Probes plus load of rungs well below capacity."""
    down_loss: _Counts
    up_jitters: list[float]
    down_jitters: list[float]
    loaded_until: float
    """End of the latest loaded window (inf while a rung is being judged)."""


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
        self._down_final: dict[int, float] = {}
        self._up_load_seq = 0
        self._up_sent: dict[int, int] = {}
        self._down_rx: dict[int, RungArrivals] = {}
        self._version = 0
        self.probe_interval = settings.probe_interval_ms / 1000
        """Current probe spacing, seconds (grows on a link too slow for the default)."""
        self._slowed_at: float | None = None
        """When probes were last slowed because they flooded the link on their own."""
        self._calm_from = now
        self._arrivals: list[float] = []
        self._flood_mark = 0
        self._cache: tuple[tuple[int, int, int], _Analysis] | None = None

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
        self._version += 1
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
                echo.probe_sent_at >= self.up.end_of(current.index) + self._reorder_margin():
            self._up_final[current.index] = reports.get(current.index)
        for rung, sent, finished in echo.down_sent:
            self._down_sent[rung] = max(sent, self._down_sent.get(rung, 0))
            if finished:
                self._down_final.setdefault(rung, now)
        self._arrivals.append(now)
        if rtt >= 0:
            self._samples.append(_EchoSample(
                echo.seq, echo.probe_sent_at, rtt, echo.up_probes_received,
                echo.up_probes_highest, echo.up_jitter, self._down_jitter.jitter,
                len(self._samples)))

    def on_down_load(self, load: Load, payload_size: int, now: float) -> None:
        if self._down_rx.setdefault(load.rung, RungArrivals()).add(load.seq, payload_size, now):
            self._version += 1

    # -- calm and loaded periods -------------------------------------------------------------

    def _analysis(self) -> _Analysis:
        """Everything derived from the samples, recomputed only when something changed."""
        key = (self._version, self.up.version, self.down.version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._analyse())
        return self._cache[1]

    def _analyse(self) -> _Analysis:
        up_w, down_w = self.up.loaded_windows(), self.down.loaded_windows()
        if self._slowed_at is not None:
            # Until the probes were slowed down they overloaded the link themselves (and for
            # as long again as the queue they built takes to drain: `_with_drain`).
            flooded = (self.started_at, self._slowed_at)
            up_w, down_w = up_w + [flooded], down_w + [flooded]
        up_w, down_w = self._with_drain(up_w), self._with_drain(down_w)
        both = up_w + down_w
        active = self.up.active_windows() + self.down.active_windows() + both

        def loaded(start: float, end: float, windows: list[tuple[float, float]]) -> bool:
            return any(ws <= end and start <= we for ws, we in windows)

        full = self.up.failed_windows() + self.down.failed_windows()
        idle_rtt, calm_rtt, loaded_rtt, up_jit, down_jit = [], [], [], [], []
        for s in self._samples:
            t = s.probe_sent_at
            if not loaded(t, t, both):
                calm_rtt.append(s.rtt * 1000)
            if loaded(t, t, full):
                loaded_rtt.append(s.rtt * 1000)
            if not loaded(t, t, active):
                idle_rtt.append(s.rtt * 1000)
            if s.index >= JITTER_WARMUP:
                if not loaded(t, t, up_w):
                    up_jit.append(s.up_jitter * 1000)
                if not loaded(t, t, down_w):
                    down_jit.append(s.down_jitter * 1000)

        # Probe and echo losses, over calm stretches only. Consecutive echoes (in sequence
        # order) bound a stretch: the echo numbers missing between them were lost on the
        # downlink, and the reflector's cumulative counters in them tell how many probes of
        # the stretch it received on the uplink.
        # Uplink: the reflector's "lost so far" (highest + 1 - received) may go down again
        # when a reordered probe turns up late, so a stretch's loss is the change in it.
        up_lost = up_expected = 0
        down = _Counts()
        prev_seq, prev_t, prev_lost, prev_hi = -1, self.started_at, 0, -1
        for s in sorted(self._samples, key=lambda x: x.seq):
            t = s.probe_sent_at
            lost_so_far = s.up_highest + 1 - s.up_received
            if not loaded(prev_t, t, up_w):
                up_lost += lost_so_far - prev_lost
                up_expected += max(0, s.up_highest - prev_hi)
            if not loaded(prev_t, t, down_w):
                down += _Counts(s.seq - prev_seq - 1, s.seq - prev_seq)
            prev_seq, prev_t, prev_lost = s.seq, t, lost_so_far
            prev_hi = max(prev_hi, s.up_highest)
        up = _Counts(min(max(0, up_lost), up_expected), up_expected)

        # Load of rungs that passed well below capacity (a rung close to it may have
        # overflowed the queue: its drops are ours, not the link's).
        load_up = load_down = _Counts()
        for ladder, observe, which in ((self.up, self._observe_up, "up"),
                                       (self.down, self._observe_down, "down")):
            for i, result in ladder.results.items():
                obs = observe(i)
                if result.passed and not ladder.near_capacity(i) and obs is not None:
                    counts = _Counts(max(0, obs.sent - obs.received), obs.sent)
                    if which == "up":
                        load_up += counts
                    else:
                        load_down += counts
        return _Analysis(idle_rtt, calm_rtt, loaded_rtt, up, down, up + load_up, down + load_down,
                         up_jit, down_jit, max((we for _, we in both), default=0.0))

    def _with_drain(self, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Extend each loaded window by the queueing delay seen in it: a queue needs as long
        to drain as the extra delay it built."""
        if not self._samples or not windows:
            return windows
        base = min(s.rtt for s in self._samples)
        out = []
        for ws, we in windows:
            peak = max((s.rtt for s in self._samples if ws <= s.probe_sent_at <= we),
                       default=base)
            out.append((ws, we + (peak - base)))
        return out

    def _loss_counts(self) -> tuple[_Counts, _Counts]:
        a = self._analysis()
        return a.up_loss, a.down_loss

    # -- progress and stopping ---------------------------------------------------------

    @property
    def rtt_estimate(self) -> float | None:
        """Median of the latest RTT samples, seconds (loaded ones included: for timeouts)."""
        if not self._samples:
            return None
        return percentile([s.rtt for s in self._samples[-20:]], 50)

    def tick(self, now: float) -> None:
        """Start the ladders after the warm-up, and judge rungs whose evidence is in."""
        if not self.up.started:
            if self._probes_flooding():
                self._slow_probes_to_echo_spacing(now)
            elif now - self.started_at >= self.settings.warmup_s and now >= self._calm_from \
                    and len(self._samples) >= FLOOD_SAMPLES \
                    and len(self._samples) - self._flood_mark >= 3:
                self.up.start(now)
                self.down.start(now)
        timeout = 1.0 + 2 * (self.rtt_estimate or 0.0)
        a = self._analysis()
        # Allow for random loss generously (the upper end of its 95 % interval): a rung that
        # only lost what the link loses anyway must not be taken for a saturated one.
        up_loss, down_loss = _random_loss(a.up_probes), _random_loss(a.down_probes)
        margin = self._reorder_margin()
        self.up.evaluate(now, self._observe_up, up_loss, lambda i: i in self._up_final,
                         timeout)
        self.down.evaluate(now, self._observe_down, down_loss,
                           lambda i: now >= self._down_final.get(i, math.inf) + margin,
                           timeout)
        self._pace_probes(now)

    def _reorder_margin(self) -> float:
        """How far a packet may lag one sent after it (s): the spread of recent RTTs. The
        echo that proves a rung complete waits this long more, so that jitter or reordering
        does not leave the rung's last packets still on the way."""
        rtts = [s.rtt for s in self._samples[-50:]]
        if len(rtts) < 5:
            return MIN_REORDER_MARGIN_S
        spread = percentile(rtts, 90) - percentile(rtts, 10)
        return min(MAX_REORDER_MARGIN_S, max(MIN_REORDER_MARGIN_S, spread))

    def _probes_flooding(self) -> bool:
        """True when the probes alone fill the link: RTT climbing steadily, sample after
        sample (a queue growing at the bottleneck), by more than 50 ms. Random jitter almost
        never climbs 8 times out of 9 (a chance of about 3 in 10,000)."""
        since = self._slowed_at if self._slowed_at is not None else -math.inf
        # Judge the current probe rate on probes sent at it (earlier ones are still queued).
        recent = [s.rtt for s in self._samples[-FLOOD_SAMPLES:] if s.probe_sent_at >= since]
        if len(recent) < FLOOD_SAMPLES:
            return False
        rises = sum(b > a for a, b in zip(recent, recent[1:], strict=False))
        return rises >= len(recent) - 2 and recent[-1] - recent[0] >= 0.05

    def _slow_probes_to_echo_spacing(self, now: float) -> None:
        """A saturated bottleneck spaces echoes by its own service time: slow the probes to
        use `PROBE_SHARE` of that, and wait for the queue they built to drain."""
        recent = sorted(s for s in self._arrivals[-FLOOD_SAMPLES:])
        gaps = [b - a for a, b in zip(recent, recent[1:], strict=False)]
        spacing = percentile(gaps, 50) if gaps else self.probe_interval
        self.probe_interval = min(MAX_PROBE_INTERVAL_S,
                                  max(self.probe_interval * 2, spacing / PROBE_SHARE))
        backlog = self._samples[-1].rtt - min(s.rtt for s in self._samples)
        self._slowed_at = now
        self._calm_from = now + max(SLOWDOWN_DRAIN_S, backlog + 0.5)
        self._flood_mark = len(self._samples)
        self._version += 1

    def _pace_probes(self, now: float) -> None:
        """Space probes out on a link too slow for them (known once a rung failed)."""
        needed = self.probe_interval
        for ladder, wire in ((self.up, self.settings.probe_size + PROBE_OVERHEAD_BYTES),
                             (self.down, ECHO_WIRE_BYTES)):
            kbps, at_least = ladder.capacity()
            if kbps is not None and not at_least and kbps > 0:
                needed = max(needed, wire * 8 / (PROBE_SHARE * kbps * 1000))
            elif kbps == 0:
                needed = MAX_PROBE_INTERVAL_S
        needed = min(needed, MAX_PROBE_INTERVAL_S)
        if needed > self.probe_interval * 1.05:
            self.probe_interval = needed

    @property
    def stopped_early(self) -> bool:
        """The verdict was certain before a ladder found its direction's capacity."""
        return any(ladder.aborted or not ladder.done for ladder in (self.up, self.down))

    def finished(self, now: float) -> bool:
        """True when more measuring cannot change the verdict or sharpen its figures."""
        if now - self.started_at < self.settings.min_probe_s:
            return False
        sharpen = now < self.deadline - PRECISION_RESERVE_S
        if self.up.done and self.down.done:
            # Measured all we wanted; let a saturated queue drain and the loss figure settle
            # on calm probes while time allows.
            a = self._analysis()
            return not sharpen or (now >= a.loaded_until and self._loss_precise())
        optimistic, pessimistic = self.bounds()
        best = classify(optimistic, self.thresholds)
        if best.verdict != classify(pessimistic, self.thresholds).verdict:
            return False
        if best.verdict == VIDEO:
            return False  # finish the ladder: the figures must tell 1.5 from 5 Mbit/s
        if sharpen and not self._loss_precise():
            return False  # the verdict is settled; sharpen the loss figure while time allows
        self.up.abort(now)
        self.down.abort(now)
        return True

    def _loss_precise(self) -> bool:
        for counts in self._loss_counts():
            lo, hi = wilson_interval(counts.lost, counts.expected)
            if 100 * lo > LOSS_DECISIVE_PCT:
                continue
            if counts.lost == 0 and counts.expected >= MIN_CLEAN_SAMPLES:
                continue  # no loss at all so far: 0 % is the honest figure
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
        a = self._analysis()
        calm, loaded = a.calm_rtts, a.loaded_rtts
        # The idle RTT (what a ping would say), else the calm one, else whatever we have.
        every = [s.rtt * 1000 for s in self._samples]
        rtts = next((x for x in (a.idle_rtts, calm, every) if len(x) >= 5),
                    a.idle_rtts or calm or every)
        rtt = percentile(rtts, 50) if rtts else None
        up_counts, down_counts = self._loss_counts()
        up_loss = 100 * up_counts.fraction if up_counts.expected else None
        down_loss = 100 * down_counts.fraction if down_counts.expected else None
        up_j, down_j = a.up_jitters, a.down_jitters
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
        a = self._analysis()
        calm = a.calm_rtts
        if len(calm) >= 5:
            rtt_lo, rtt_hi = percentile(calm, 25), percentile(calm, 75)
        else:
            rtt_lo, rtt_hi = 0.0, HUGE_MS
        loss = []
        for counts in self._loss_counts():
            lo, hi = wilson_interval(counts.lost, counts.expected)
            loss.append((100 * lo, 100 * hi))
        jit = []
        for values in (a.up_jitters, a.down_jitters):
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


def _random_loss(counts: _Counts) -> float:
    """The link's own loss to allow for when judging a rung: the upper end of its 95 %
    interval once enough calm probes were counted, the plain share lost before that (the
    upper end of a handful of samples would excuse any shortfall)."""
    if counts.expected < MIN_LOSS_SAMPLES:
        return counts.fraction
    return wilson_interval(counts.lost, counts.expected)[1]


def _mos(rtt_ms: float | None, losses: list[float | None],
         jitters: list[float | None]) -> float | None:
    if rtt_ms is None:
        return None
    loss = max((x for x in losses if x is not None), default=0.0)
    jitter = max((x for x in jitters if x is not None), default=0.0)
    finite = [v if math.isfinite(v) else HUGE_MS for v in (rtt_ms, jitter)]
    return estimate_audio_quality(finite[0], min(max(loss, 0.0), 100.0), finite[1]).mos

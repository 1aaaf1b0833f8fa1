"""The client side of a check, as a pure state machine (sans-I/O, `now` always passed in).

The engine (`webrtc/client.py`) feeds it what arrives (echoes, downlink load packets), asks
it what to send (probes, uplink load), and calls `step(now)` on every echo and at the
deadline `step` returned: the session says when it next needs to run, nobody polls it.
It turns everything into `LinkMetrics`, and into optimistic/pessimistic bounds so that a
check can stop as soon as no further measurement could change the verdict.

Figures are taken from *calm* periods only: while a ladder rung saturates a direction (and
while its queue drains), probes measure our own congestion, not the link. Their RTT is
reported apart (`rtt_loaded_ms`) and their losses are not counted as the link's loss.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from netprobe.config import ProbeSettings
from netprobe.core.classify import VIDEO, Thresholds, classify
from netprobe.core.ladder import Ladder, Rung, RungObservation, make_ladder
from netprobe.core.measure import (
    MAX_TIMED_ARRIVALS,
    JitterEstimator,
    RungArrivals,
    SequenceTracker,
    loss_interval_pct,
    others_kbps,
    percentile,
    round_trip_s,
    wilson_interval,
    wire_interval_s,
)
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.pacing import ECHO_WIRE_BYTES, probe_wire_bytes
from netprobe.core.sampling import (
    JITTER_WARMUP,
    MIN_LOSS_SAMPLES,
    Analysis,
    Counts,
    EchoSample,
    analyse,
    random_loss,
)
from netprobe.core.session_bounds import bounds
from netprobe.core.wire import NO_RUNG, Echo, Load, Probe, RungReport, encode_load, encode_probe

__all__ = ["DEADLINE_MARGIN_S", "JITTER_WARMUP", "MIN_LOSS_SAMPLES", "STOP_REASONS",
           "ClientSession", "Progress", "check_deadline"]

#: Builds a packet's payload given its send time (called as the packet leaves).
Build = Callable[[float], bytes]

#: Loss above this (percent) decides every verdict by itself: no need to measure it finer.
LOSS_DECISIVE_PCT = 15.0
#: Half-width (percentage points, 95 %) the loss figure must reach before stopping early.
#: No loss seen is no exception: 0 of 50 still allows 7 % (0 of 128 reaches 1.5 points).
LOSS_PRECISION_PTS = 1.5
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

#: The engine stops this long before the hard cap (`max_duration_s`), to report in time.
DEADLINE_MARGIN_S = 0.2

#: Why a check ended (`ClientSession.stop_reason`):
#: `measured`: both ladders found what they could and the loss figure is precise;
#: `settled`: the verdict was certain (no figure still to come could change it): the loss
#: figure stops where it is and is reported with its interval;
#: `precision_reserve`: the verdict was not settled and the loss figure still too coarse
#: when the last `PRECISION_RESERVE_S` before the deadline began (sharpening stops there);
#: `deadline`: the deadline came before the verdict was certain.
STOP_REASONS = ("measured", "settled", "precision_reserve", "deadline")


def check_deadline(check_started_at: float, settings: ProbeSettings) -> float:
    """When the engine ends a check that began at `check_started_at` (connection set-up
    included) whatever the session says: `DEADLINE_MARGIN_S` before the hard cap."""
    return check_started_at + settings.max_duration_s - DEADLINE_MARGIN_S


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
                 deadline: float | None = None, tails: bool = True):
        self.settings = settings
        self.thresholds = thresholds
        self.started_at = now
        self.deadline = now + settings.max_duration_s if deadline is None else deadline
        """When the engine will stop regardless (same clock as `now`)."""
        self.rungs = make_ladder(settings.ladder_kbps, settings.rung_pps)
        # `tails`: judge rungs on their tails (token buckets); not over a TCP relay
        self.up = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio, tails)
        self.down = Ladder(self.rungs, settings.rung_duration_s, settings.pass_ratio, tails)
        self._probe_seq = 0
        self._echoes = SequenceTracker()
        self._samples: list[EchoSample] = []
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
        self._echo_rx: deque[tuple[float, int]] = deque(maxlen=MAX_TIMED_ARRIVALS)
        """(arrival, wire bytes) of the latest echoes: they share the downlink with its rungs."""
        self._flood_mark = 0
        self._cache: tuple[tuple[int, int, int], Analysis] | None = None
        self.stop_reason: str | None = None
        """Why the check ended (one of `STOP_REASONS`), None while it runs."""

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

    def probe_step(self, now: float) -> tuple[float, Build]:
        """The probe pacer's schedule: (seconds to the next probe, build(send time))."""
        return self.probe_interval, lambda at: encode_probe(self.next_probe(at),
                                                            self.settings.probe_size)

    def up_load_step(self, now: float) -> tuple[float, Build] | None:
        """The uplink load pacer's schedule: (seconds to the next packet, build(send
        time)), or None while no rung is being sent."""
        rung = self.up.sending(now)
        if rung is None:
            return None
        return rung.interval, lambda at: encode_load(self.next_up_load(rung, at),
                                                     rung.payload_size)

    def next_up_load(self, rung: Rung, now: float) -> Load:
        load = Load(rung.index, self._up_load_seq, now)
        self._up_load_seq += 1
        self._up_sent[rung.index] = self._up_sent.get(rung.index, 0) + 1
        return load

    # -- what arrives ------------------------------------------------------------------

    def on_echo(self, echo: Echo, now: float) -> None:
        # Bounded (lesson 11): echoes of probes sent, at most 2 per probe, our ladder's rungs.
        if echo.probe_seq >= self._probe_seq or len(self._arrivals) > 2 * self._probe_seq \
                or not self._echoes.add(echo.seq):
            return
        self._version += 1
        self._down_jitter.update(echo.sent_at, now)
        rtt = round_trip_s(now, echo.probe_sent_at, echo.hold)
        reports = {r.rung: r for r in echo.up_rungs if r.rung in self._up_sent}
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
        for rung, sent, finished in (d for d in echo.down_sent if 0 <= d[0] < len(self.rungs)):
            self._down_sent[rung] = max(sent, self._down_sent.get(rung, 0))
            if finished:
                self._down_final.setdefault(rung, now)
        self._arrivals.append(now)
        self._echo_rx.append((now, ECHO_WIRE_BYTES))
        if rtt >= 0:
            self._samples.append(EchoSample(
                echo.seq, echo.probe_sent_at, rtt, echo.up_probes_received,
                echo.up_probes_highest, echo.up_jitter, self._down_jitter.jitter,
                len(self._samples), echo.probe_seq))

    def on_down_load(self, load: Load, payload_size: int, now: float) -> None:
        if not 0 <= load.rung < len(self.rungs):
            return
        if self._down_rx.setdefault(load.rung, RungArrivals()).add(load.seq, payload_size, now,
                                                                   load.sent_at):
            self._version += 1

    # -- calm and loaded periods -------------------------------------------------------------

    def _analysis(self) -> Analysis:
        """Everything derived from the samples, recomputed only when something changed."""
        key = (self._version, self.up.version, self.down.version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, analyse(self._samples, self.started_at, self._slowed_at,
                                        self.up, self.down, self._observe_up,
                                        self._observe_down))
        return self._cache[1]

    def _loss_counts(self) -> tuple[Counts, Counts]:
        a = self._analysis()
        return a.up_loss, a.down_loss

    # -- progress and stopping ---------------------------------------------------------

    @property
    def rtt_estimate(self) -> float | None:
        """Median of the latest RTT samples, seconds (loaded ones included: for timeouts)."""
        if not self._samples:
            return None
        return percentile([s.rtt for s in self._samples[-20:]], 50)

    def step(self, now: float) -> float | None:
        """Do everything due at `now` (`tick`, then the stopping rule). Returns the latest
        time to step again (an echo arriving sooner is reason to step then), or None once
        the check is over: `stop_reason` says why."""
        self.tick(now)
        if self.finished(now):
            return None
        if now >= self.deadline:
            self.stop_reason = "deadline"
            return None
        return self.next_deadline(now)

    def tick(self, now: float) -> None:
        """Start the ladders after the warm-up, and judge rungs whose evidence is in."""
        if not self.up.started:
            if self._probes_flooding():
                self._slow_probes_to_echo_spacing(now)
            elif self._ready_for_ladder(now):
                self.up.start(now)
                self.down.start(now)
        timeout = self._rung_timeout()
        a = self._analysis()
        # Allow for random loss generously (the upper end of its 95 % interval): a rung that
        # only lost what the link loses anyway must not be taken for a saturated one.
        up_loss, down_loss = random_loss(a.up_probes), random_loss(a.down_probes)
        margin = self._reorder_margin()
        self.up.evaluate(now, self._observe_up, up_loss, lambda i: i in self._up_final,
                         timeout, a.up_probes.fraction)
        down_final = lambda i: now >= self._down_final.get(i, math.inf) + margin  # noqa: E731
        self.down.evaluate(now, self._observe_down, down_loss, down_final, timeout,
                           a.down_probes.fraction)
        # a rung judged on its timeout gets its figures from what arrived since
        self.up.refine(self._observe_up, up_loss, lambda i: i in self._up_final)
        self.down.refine(self._observe_down, down_loss, down_final)
        self._pace_probes(now)

    def _ready_for_ladder(self, now: float) -> bool:
        """The warm-up is over: enough RTT samples, no queue of the probes' own left, and
        (unless the probes had to be slowed down) at least `MIN_LOSS_SAMPLES` calm probes
        counted each way, so that a rung's judgement can allow for the link's random loss.
        Judged on fewer, a rung that lost only what the link loses anyway fails, and the
        loss-thinned rate it delivered is reported as the link's capacity."""
        if now - self.started_at < self.settings.warmup_s or now < self._calm_from:
            return False
        if len(self._samples) < FLOOD_SAMPLES or len(self._samples) - self._flood_mark < 3:
            return False
        a = self._analysis()
        return self._slowed_at is not None or \
            min(a.up_probes.expected, a.down_probes.expected) >= MIN_LOSS_SAMPLES

    def _rung_timeout(self) -> float:
        """How long after its end a rung without final evidence is judged anyway (s)."""
        return 1.0 + 2 * (self.rtt_estimate or 0.0)

    def next_deadline(self, now: float) -> float:
        """The next time something becomes due without a packet arriving: the warm-up's
        end, a rung's end or timeout, the reorder margin after a downlink rung finished,
        the least probing time, the end of a loaded window, the precision reserve, the
        deadline. Everything else happens on an echo's arrival."""
        due = [self.deadline, self.started_at + self.settings.min_probe_s,
               self.deadline - PRECISION_RESERVE_S]
        if not self.up.started:
            due.append(max(self.started_at + self.settings.warmup_s, self._calm_from))
        timeout, margin = self._rung_timeout(), self._reorder_margin()
        for ladder in (self.up, self.down):
            rung = ladder.current()
            if rung is not None:
                end = ladder.end_of(rung.index)
                due += [end, end + timeout]
        rung = self.down.current()
        if rung is not None and rung.index in self._down_final:
            due.append(self._down_final[rung.index] + margin)
        if self.up.done and self.down.done:
            due.append(self._analysis().loaded_until)
        return min((t for t in due if t > now), default=self.deadline)

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
        for ladder, wire in ((self.up, probe_wire_bytes(self.settings.probe_size)),
                             (self.down, ECHO_WIRE_BYTES)):
            kbps, at_least = ladder.capacity()
            if kbps is not None and not at_least and kbps > 0:
                needed = max(needed, wire_interval_s(wire, PROBE_SHARE * kbps))
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
        """True when more measuring cannot change the verdict or sharpen its figures (then
        `stop_reason` says which)."""
        if now - self.started_at < self.settings.min_probe_s:
            return False
        sharpen = now < self.deadline - PRECISION_RESERVE_S
        optimistic, pessimistic = self.bounds()
        best = classify(optimistic, self.thresholds)
        settled = best.verdict == classify(pessimistic, self.thresholds).verdict
        if self.up.done and self.down.done:
            # Measured all we wanted; let a saturated queue drain and the loss figure settle
            # on calm probes, unless the verdict is settled already (the loss figure is then
            # reported with its interval: nobody needs it sharper).
            precise = self._loss_precise()
            done = now >= self._analysis().loaded_until and precise
            if done or settled or not sharpen:
                self.stop_reason = "measured" if done else (
                    "settled" if settled else "precision_reserve")
                return True
            return False
        if not settled or best.verdict == VIDEO:
            return False  # for video, finish the ladder: the figures must tell 1.5 from 5
        self.up.abort(now)
        self.down.abort(now)
        self.stop_reason = "settled"
        return True

    def _loss_precise(self) -> bool:
        """Each direction's loss figure is clearly above `LOSS_DECISIVE_PCT` or known to
        within `LOSS_PRECISION_PTS` (95 %), a figure of 0 lost included."""
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
        # Bounded (lesson 11): no tail faster than the rung was sent, with its probes.
        most = self.rungs[rung].rate_kbps + self._probe_kbps()
        tail, end = (min(x, most) or None for x in (report.tail_kbps, report.end_kbps))
        return RungObservation(sent, report.packets, report.payload_bytes, report.first_at,
                               report.last_at, tail, end, self._up_cross_kbps(rung, report))

    def _observe_down(self, rung: int) -> RungObservation | None:
        rx = self._down_rx.get(rung)
        got = rx.seqs.received if rx else 0
        sent = max(self._down_sent.get(rung, 0), got)
        if rx is None:
            return RungObservation(sent, 0, 0, 0.0, 0.0) if sent else None
        return RungObservation(sent, got, rx.payload_bytes, rx.first_at, rx.last_at,
                               *rx.tails(self._echo_rx),
                               others_kbps(self._echo_rx, rx.first_at, rx.last_at))

    def _probe_kbps(self) -> float:
        """The probes' rate on the uplink at their current spacing, kbit/s of wire bytes."""
        return probe_wire_bytes(self.settings.probe_size) * 8 / self.probe_interval / 1000

    def _up_cross_kbps(self, rung: int, report: RungReport) -> float:
        """The rate of the probes that shared the uplink with `rung`, kbit/s: those sent
        while it was (and whose echo came back), over the span it arrived in."""
        start, span = self.up.started_at(rung), report.last_at - report.first_at
        if start is None or span <= 0:
            return 0.0
        end = self.up.end_of(rung)
        probes = sum(1 for x in self._samples if start <= x.probe_sent_at <= end)
        kbps = probes * probe_wire_bytes(self.settings.probe_size) * 8 / span / 1000
        # Bounded (lesson 11): the span is the reflector's word; probes arrive no faster
        # than twice the rate they are sent at.
        return min(kbps, 2 * self._probe_kbps())

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
            **a.audio(rtt, [up_loss, down_loss], [up_jitter, down_jitter]),
            up=DirectionMetrics(up_kbps, up_least, up_loss, up_jitter, up_counts.expected,
                                loss_interval_pct(up_counts.lost, up_counts.expected)),
            down=DirectionMetrics(down_kbps, down_least, down_loss, down_jitter,
                                  down_counts.expected,
                                  loss_interval_pct(down_counts.lost, down_counts.expected)),
            connected=True,
        )

    def bounds(self) -> tuple[LinkMetrics, LinkMetrics]:
        """(optimistic, pessimistic) metrics: the best and worst the link could still turn
        out to be, given the samples so far (`session_bounds.bounds`)."""
        return bounds(self._analysis(), self._loss_counts(), self.up, self.down)

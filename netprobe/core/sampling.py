"""What a check's echoes say, split into calm, idle and loaded periods (pure).

`ClientSession` records one `EchoSample` per echo; `analyse` turns them, with the two
ladders' windows, into the RTT, jitter and loss samples its figures are made of. Figures
are taken from *calm* periods only: while a ladder rung saturates a direction (and while its
queue drains), probes measure our own congestion, not the link.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.ladder import Ladder, RungObservation
from netprobe.core.lossruns import MAX_BURST_RATIO, LossRuns
from netprobe.core.measure import wilson_interval

#: RFC 3550 jitter starts at 0 and converges with gain 1/16: skip its first samples.
JITTER_WARMUP = 16
#: Calm probes needed before their loss is allowed for when judging a rung.
MIN_LOSS_SAMPLES = 20

#: A finite stand-in for "could be anything" in the pessimistic bounds (ms).
HUGE_MS = 1e6

Window = tuple[float, float]


@dataclass(frozen=True)
class EchoSample:
    seq: int
    """Echo sequence number."""
    probe_sent_at: float
    """When the answered probe left the client (client clock)."""
    rtt: float
    """Round-trip time in seconds."""
    up_received: int
    """The reflector's count of distinct probes received, numbered 0..`up_highest`."""
    up_highest: int
    """The highest probe number whose fate the reflector has settled."""
    up_jitter: float
    """The reflector's uplink jitter estimate, seconds."""
    down_jitter: float
    """The client's downlink jitter estimate right after this echo, seconds."""
    index: int
    """Order of arrival (for the jitter estimator's warm-up)."""
    probe_seq: int = -1
    """The answered probe's number (-1: unknown)."""


@dataclass(frozen=True)
class Counts:
    lost: int = 0
    expected: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.lost + other.lost, self.expected + other.expected)

    @property
    def fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


@dataclass(frozen=True)
class Analysis:
    idle_rtts: list[float]
    """RTT samples (ms) of probes sent while no rung was running at all."""
    calm_rtts: list[float]
    """RTT samples (ms) of probes sent while the link was calm (idle or a rung well below
    capacity)."""
    loaded_rtts: list[float]
    """RTT samples (ms) of probes sent while a rung too fast for the link was being sent
    (the queue full: bufferbloat)."""
    up_probes: Counts
    down_probes: Counts
    up_loss: Counts
    """Probes plus load of rungs well below capacity."""
    down_loss: Counts
    up_jitters: list[float]
    down_jitters: list[float]
    loaded_until: float
    """End of the latest loaded window (inf while a rung is being judged)."""
    up_burst: float = 1.0
    """G.107 burst ratio of the calm probes lost on the uplink (`LossRuns`; 1 = random)."""
    down_burst: float = 1.0
    """The same for the echoes lost on the downlink."""

    @property
    def burst_ratios(self) -> list[float]:
        """[uplink, downlink] burst ratios, in the order `audio_mos` takes losses."""
        return [self.up_burst, self.down_burst]

    def audio(self, rtt_ms: float | None, losses: list[float | None],
              jitters: list[float | None]) -> AudioFields:
        """`audio_fields` with these burst ratios: `losses` and `jitters` are [up, down]."""
        return audio_fields(rtt_ms, losses, jitters, self.burst_ratios)


def random_loss(counts: Counts) -> float:
    """The link's own loss to allow for when judging a rung: the upper end of its 95 %
    interval once enough calm probes were counted, the plain share lost before that (the
    upper end of a handful of samples would excuse any shortfall; the session does not
    start the ladder before `MIN_LOSS_SAMPLES` are in)."""
    if counts.expected < MIN_LOSS_SAMPLES:
        return counts.fraction
    return wilson_interval(counts.lost, counts.expected)[1]


def with_drain(samples: list[EchoSample], windows: list[Window]) -> list[Window]:
    """Extend each loaded window by the queueing delay seen in it: a queue needs as long
    to drain as the extra delay it built."""
    if not samples or not windows:
        return windows
    base = min(s.rtt for s in samples)
    out = []
    for ws, we in windows:
        peak = max((s.rtt for s in samples if ws <= s.probe_sent_at <= we), default=base)
        out.append((ws, we + (peak - base)))
    return out


def _meets(start: float, end: float, windows: list[Window]) -> bool:
    return any(ws <= end and start <= we for ws, we in windows)


def analyse(samples: list[EchoSample], started_at: float, flooded_until: float | None,
            up: Ladder, down: Ladder,
            observe_up: Callable[[int], RungObservation | None],
            observe_down: Callable[[int], RungObservation | None]) -> Analysis:
    """Everything the figures are made of. `flooded_until`: when the probes, which flooded
    the link on their own until then, were last slowed down (None if they never were)."""
    up_w, down_w = up.loaded_windows(), down.loaded_windows()
    if flooded_until is not None:
        # Until the probes were slowed down they overloaded the link themselves (and for
        # as long again as the queue they built takes to drain: `with_drain`).
        flooded = (started_at, flooded_until)
        up_w, down_w = up_w + [flooded], down_w + [flooded]
    up_w, down_w = with_drain(samples, up_w), with_drain(samples, down_w)
    both = up_w + down_w
    active = up.active_windows() + down.active_windows() + both
    full = up.failed_windows() + down.failed_windows()
    idle_rtt, calm_rtt, loaded_rtt, up_jit, down_jit = [], [], [], [], []
    for s in samples:
        t = s.probe_sent_at
        if not _meets(t, t, both):
            calm_rtt.append(s.rtt * 1000)
        if _meets(t, t, full):
            loaded_rtt.append(s.rtt * 1000)
        if not _meets(t, t, active):
            idle_rtt.append(s.rtt * 1000)
        if s.index >= JITTER_WARMUP:
            if not _meets(t, t, up_w):
                up_jit.append(s.up_jitter * 1000)
            if not _meets(t, t, down_w):
                down_jit.append(s.down_jitter * 1000)

    # Probe and echo losses, over calm stretches only. Consecutive echoes (in sequence
    # order) bound a stretch: the echo numbers missing between them were lost on the
    # downlink, and the reflector's cumulative counters in them tell how many probes of
    # the stretch it received on the uplink.
    # Uplink: the reflector's "lost so far" (highest + 1 - received) may go down again
    # when a reordered probe turns up late, so a stretch's loss is the change in it.
    # The same stretches, in order, give each direction's loss runs (G.107 BurstR).
    up_lost = up_expected = 0
    down_counts = Counts()
    up_runs, down_runs = LossRuns(), LossRuns()
    # The uplink counts from the first echo's report on: probes sent before the reflector's
    # side of the connection was up (its DTLS handshake may finish a retransmission later
    # than ours) never reached its counters, and are not the link's loss.
    # Its counters settle a reorder window behind the newest probe, so the base is the first
    # report that has settled every probe before the first one known to have arrived.
    prev_seq, prev_t, prev_lost, prev_hi = -1, started_at, 0, -1
    arrived = [s.probe_seq for s in samples if s.probe_seq >= 0]
    start = min(arrived) if arrived else 0
    based = False
    for s in sorted(samples, key=lambda x: x.seq):
        t = s.probe_sent_at
        lost_so_far = s.up_highest + 1 - s.up_received
        if not based:
            if s.up_highest >= start - 1:
                based, prev_lost, prev_hi = True, lost_so_far, s.up_highest
        elif not _meets(prev_t, t, up_w):
            up_lost += lost_so_far - prev_lost
            up_expected += max(0, s.up_highest - prev_hi)
            up_runs.add_stretch(s.up_highest - prev_hi, lost_so_far - prev_lost)
        else:
            up_runs.pause()
        if not _meets(prev_t, t, down_w):
            down_counts += Counts(s.seq - prev_seq - 1, s.seq - prev_seq)
            down_runs.add(False, s.seq - prev_seq - 1)
            down_runs.add(True)
        else:
            down_runs.pause()
        prev_seq, prev_t, prev_lost = s.seq, t, lost_so_far
        prev_hi = max(prev_hi, s.up_highest)
    up_counts = Counts(min(max(0, up_lost), up_expected), up_expected)

    # Load of rungs that passed well below capacity (a rung close to it may have
    # overflowed the queue: its drops are ours, not the link's).
    load = {"up": Counts(), "down": Counts()}
    for ladder, observe, which in ((up, observe_up, "up"), (down, observe_down, "down")):
        for i, result in ladder.results.items():
            obs = observe(i)
            if result.passed and not ladder.near_capacity(i) and obs is not None:
                load[which] += Counts(max(0, obs.sent - obs.received), obs.sent)
    return Analysis(idle_rtt, calm_rtt, loaded_rtt, up_counts, down_counts,
                    up_counts + load["up"], down_counts + load["down"], up_jit, down_jit,
                    max((we for _, we in both), default=0.0),
                    up_runs.burst_ratio, down_runs.burst_ratio)


class AudioFields(TypedDict):
    """The `LinkMetrics` fields of the audio estimate."""

    mos_audio: float | None
    burst_ratio: float | None


def audio_fields(rtt_ms: float | None, losses: list[float | None],
                 jitters: list[float | None],
                 burst_ratios: list[float] | None = None) -> AudioFields:
    """The audio MOS (E-model) at `rtt_ms` of the direction that rates worse, with its loss
    (percent) and burst ratio (`losses` and `burst_ratios` in the same order, a missing burst
    ratio taken as 1), and the worst jitter; and that direction's burst ratio (None when no
    loss was measured: the MOS then assumes none)."""
    if rtt_ms is None:
        return AudioFields(mos_audio=None, burst_ratio=None)
    bursts = [min(max(b, 1.0), MAX_BURST_RATIO) if math.isfinite(b) else 1.0
              for b in burst_ratios or []]
    pairs = [(min(max(loss, 0.0), 100.0), bursts[i] if i < len(bursts) else 1.0)
             for i, loss in enumerate(losses) if loss is not None]
    jitter = max((x for x in jitters if x is not None), default=0.0)
    rtt, jit = (v if math.isfinite(v) else HUGE_MS for v in (rtt_ms, jitter))
    mos, burst = min((estimate_audio_quality(rtt, loss, jit, burst_ratio=b).mos, b)
                     for loss, b in pairs or [(0.0, 1.0)])
    return AudioFields(mos_audio=mos, burst_ratio=burst if pairs else None)


def audio_mos(rtt_ms: float | None, losses: list[float | None],
              jitters: list[float | None],
              burst_ratios: list[float] | None = None) -> float | None:
    """The audio MOS of the direction that rates worse (`audio_fields`)."""
    return audio_fields(rtt_ms, losses, jitters, burst_ratios)["mos_audio"]

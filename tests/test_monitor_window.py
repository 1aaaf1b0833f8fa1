"""During-session monitoring, pure: `ProbeWindow` figures from synthetic echo streams, and
phone only on sure evidence. Time is an explicit argument everywhere: no clock, no I/O.
Hysteresis and the passive signals: test_monitor.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from monitor_support import GOOD_CAPACITY, PROBE_INTERVAL, v

from netprobe.core.classify import AUDIO_ONLY, PHONE, UNKNOWN, VIDEO, Thresholds
from netprobe.core.monitor import (
    MIN_WINDOW_SAMPLES,
    Hysteresis,
    HysteresisSettings,
    ProbeWindow,
    window_verdict,
)
from netprobe.core.policy import SILENCE_S
from netprobe.core.wire import Echo

# ---------------------------------------------------------------------------------------------
# ProbeWindow


@dataclass
class Stream:
    """What a reflector answering a 20/s probe stream sends back, as (echo, arrival) pairs in
    send order. Probes in `up_lost` never reach the reflector (no echo, and its uplink counters
    show the gap); echoes whose own sequence number is in `down_lost` are lost on the way back."""

    n_probes: int
    rtt: float = 0.030
    hold: float = 0.0
    up_lost: frozenset[int] = frozenset()
    down_lost: frozenset[int] = frozenset()
    up_jitter: float = 0.0
    extra_delay: dict[int, float] = field(default_factory=dict)
    """Extra one-way delay of the echo answering probe N (jitter on the way back)."""
    start: float = 100.0

    def echoes(self) -> list[tuple[Echo, float]]:
        out = []
        echo_seq = received = 0
        for probe in range(self.n_probes):
            if probe in self.up_lost:
                continue
            received += 1
            sent = self.start + probe * PROBE_INTERVAL
            seq, echo_seq = echo_seq, echo_seq + 1
            if seq in self.down_lost:
                continue
            extra = self.extra_delay.get(probe, 0.0)
            echo = Echo(
                seq=seq,
                sent_at=5000.0 + probe * PROBE_INTERVAL + self.hold,  # the reflector's clock
                probe_seq=probe, probe_sent_at=sent, hold=self.hold,
                up_probes_received=received, up_probes_highest=probe,
                up_jitter=self.up_jitter)
            out.append((echo, sent + self.rtt + self.hold + extra))
        return out


def feed(window: ProbeWindow, pairs: list[tuple[Echo, float]]) -> float:
    for echo, at in pairs:
        window.on_echo(echo, at)
    return pairs[-1][1]


def test_clean_stream_gives_rtt_without_hold_no_loss_no_jitter() -> None:
    window = ProbeWindow(span=10)
    now = feed(window, Stream(150, rtt=0.030, hold=0.005).echoes())
    m = window.metrics(now, GOOD_CAPACITY)
    assert m is not None and m.connected
    assert m.rtt_ms == pytest.approx(30.0, abs=0.01)  # the reflector's hold is not path delay
    assert m.up.loss_pct == 0 and m.down.loss_pct == 0
    assert m.up.jitter_ms == 0 and m.down.jitter_ms == pytest.approx(0, abs=1e-6)
    assert m.down.packets == pytest.approx(150, abs=1) and m.up.packets == pytest.approx(150, abs=1)
    # throughput comes from the last capacity check, loss/jitter from the window
    assert m.up.kbps == 3200 and m.down.kbps_at_least
    assert m.mos_audio is not None and m.mos_audio > 4.0
    assert window_verdict(m, Thresholds()).verdict == VIDEO


@pytest.mark.parametrize(("up_every", "down_every", "up_pct", "down_pct"), [
    (10, None, 10.0, 0.0),    # every 10th probe lost on the way to the reflector
    (None, 20, 0.0, 5.0),     # every 20th echo lost on the way back
    (10, 20, 10.0, 5.0),      # both at once: each direction keeps its own figure
    (4, 10, 25.0, 10.0),
])
def test_loss_is_told_apart_per_direction(up_every: int | None, down_every: int | None,
                                          up_pct: float, down_pct: float) -> None:
    n = 200
    up_lost = frozenset(range(3, n, up_every)) if up_every else frozenset()
    down_lost = frozenset(range(5, n, down_every)) if down_every else frozenset()
    window = ProbeWindow(span=20)
    now = feed(window, Stream(n, up_lost=up_lost, down_lost=down_lost).echoes())
    m = window.metrics(now, GOOD_CAPACITY)
    assert m is not None
    assert m.up.loss_pct == pytest.approx(up_pct, abs=1.0)
    assert m.down.loss_pct == pytest.approx(down_pct, abs=1.0)


def test_reordered_echoes_are_not_loss() -> None:
    pairs = Stream(120).echoes()
    swapped = []
    for i in range(0, len(pairs) - 1, 2):  # every other echo is overtaken by the next one
        (a, _), (b, at_b) = pairs[i], pairs[i + 1]
        swapped += [(b, at_b), (a, at_b + 0.001)]
    window = ProbeWindow(span=10)
    now = feed(window, swapped)
    m = window.metrics(now, GOOD_CAPACITY)
    assert m is not None
    assert m.down.loss_pct == 0 and m.up.loss_pct == 0
    assert m.rtt_ms == pytest.approx(30, abs=PROBE_INTERVAL * 1000 + 0.1)


def test_duplicated_echoes_count_once() -> None:
    pairs = Stream(120, down_lost=frozenset(range(0, 120, 10))).echoes()
    once, twice = ProbeWindow(span=10), ProbeWindow(span=10)
    now = feed(once, pairs)
    feed(twice, [p for pair in pairs for p in (pair, (pair[0], pair[1] + 0.001))])
    a, b = once.metrics(now, GOOD_CAPACITY), twice.metrics(now + 0.001, GOOD_CAPACITY)
    assert a is not None and b is not None
    assert b.down.loss_pct == a.down.loss_pct > 0  # a duplicate never makes up for a loss
    assert b.down.packets == a.down.packets and b.rtt_ms == a.rtt_ms


def test_jitter_on_the_way_back_and_uplink_jitter_reported_by_the_reflector() -> None:
    # every other echo 8 ms late: transit differences of 8 ms, RFC 3550 jitter tends to 8 ms
    late = {p: 0.008 for p in range(1, 400, 2)}
    window = ProbeWindow(span=30)
    now = feed(window, Stream(400, extra_delay=late, up_jitter=0.004).echoes())
    m = window.metrics(now, GOOD_CAPACITY)
    assert m is not None
    assert 7.0 < m.down.jitter_ms <= 8.0
    assert m.up.jitter_ms == pytest.approx(4.0)
    assert m.rtt_ms == pytest.approx(30, abs=8.1)


def test_too_few_echoes_say_nothing() -> None:
    pairs = Stream(MIN_WINDOW_SAMPLES).echoes()
    window = ProbeWindow(span=5)
    now = feed(window, pairs[:-1])
    assert window.metrics(now, GOOD_CAPACITY) is None
    assert window_verdict(None, Thresholds()).verdict == UNKNOWN
    window.on_echo(*pairs[-1])
    assert window.metrics(pairs[-1][1], GOOD_CAPACITY) is not None


def test_window_keeps_only_its_span() -> None:
    # 10 s of probes; every 5th echo lost, but only in the first 5 s
    pairs = Stream(200, down_lost=frozenset(range(0, 100, 5))).echoes()
    window = ProbeWindow(span=5)
    now = feed(window, pairs)
    m = window.metrics(now, GOOD_CAPACITY)
    assert m is not None
    assert m.down.loss_pct == 0  # the lossy first half has left the window
    assert m.down.packets == pytest.approx(5 / PROBE_INTERVAL, abs=2)
    assert window.silent_for(now + 2) == pytest.approx(2)
    # nothing for longer than the span: nothing left to judge by
    assert window.metrics(now + 5.5, GOOD_CAPACITY) is None
    assert ProbeWindow().silent_for(now) == float("inf")


def test_clear_forgets_the_samples() -> None:
    window = ProbeWindow(span=5)
    now = feed(window, Stream(60).echoes())
    window.clear()
    assert window.metrics(now, GOOD_CAPACITY) is None


def test_a_link_that_loses_nearly_everything_does_not_keep_video() -> None:
    # The agent's _monitor_tick pipeline: window -> classifier -> hysteresis, once a second.
    # Some echoes still arrive, so the agent's silence rule never fires: the window must tell.
    n = 30 * 20  # 30 s at 20 probes/s
    survivors = frozenset(range(0, n, 12))  # 1 echo in 12 gets back: ~92 % round-trip loss
    pairs = Stream(n, down_lost=frozenset(range(n)) - survivors).echoes()
    window = ProbeWindow(span=5)
    hysteresis = Hysteresis(HysteresisSettings(step_down_after=3, step_up_after_s=20))
    hysteresis.reset(v(VIDEO, "video_ok"))
    i = 0
    for tick in range(1, 31):
        now = 100.0 + tick
        while i < len(pairs) and pairs[i][1] <= now:
            window.on_echo(*pairs[i])
            i += 1
        assert window.silent_for(now) < SILENCE_S  # the agent would not call the link dead
        verdict = window_verdict(window.metrics(now, GOOD_CAPACITY), Thresholds())
        changed, _ = hysteresis.observe(verdict, now)
        if changed is not None:
            break
    assert hysteresis.current.verdict == PHONE
    assert tick <= 10


# -- phone only on sure evidence ----------------------------------------------------------


def _lossy(n: int, every: int) -> Stream:
    lost = frozenset(range(3, n, every))
    return Stream(n, up_lost=lost, down_lost=lost)


def test_sure_loss_is_the_lower_confidence_bound_and_never_above_the_estimate() -> None:
    window = ProbeWindow(span=20)
    now = feed(window, _lossy(300, 8).echoes())  # 12.5 % each way
    point = window.metrics(now, GOOD_CAPACITY)
    sure = window.metrics(now, GOOD_CAPACITY, sure=True)
    assert point is not None and sure is not None
    assert point.down.loss_pct == pytest.approx(12.5, abs=0.5)
    assert 8.0 < sure.down.loss_pct < point.down.loss_pct  # Wilson, 300 packets: ~9.2 %
    assert sure.mos_audio is not None and point.mos_audio is not None
    assert sure.mos_audio > point.mos_audio


def test_a_short_unlucky_stretch_of_moderate_loss_does_not_send_a_session_to_the_phone() -> None:
    # 8 % true loss read as 12.5 % over 15 s: the point estimate is below the audio line
    # (MOS < 3.1) but not surely so: audio only.
    window = ProbeWindow(span=15)
    now = feed(window, _lossy(300, 8).echoes())
    point = window.metrics(now, GOOD_CAPACITY, 5)
    assert point is not None
    assert window_verdict(point, Thresholds()).verdict == PHONE  # the 5 s window alone
    longer = window.metrics(now, GOOD_CAPACITY, sure=True)
    assert window_verdict(point, Thresholds(), longer).verdict == AUDIO_ONLY


def test_heavy_loss_is_surely_phone() -> None:
    window = ProbeWindow(span=15)
    now = feed(window, _lossy(300, 4).echoes())  # 25 % each way
    point = window.metrics(now, GOOD_CAPACITY, 5)
    longer = window.metrics(now, GOOD_CAPACITY, sure=True)
    assert point is not None and longer is not None
    assert window_verdict(point, Thresholds(), longer).verdict == PHONE

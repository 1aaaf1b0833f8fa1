"""Hostile numbers against the pure core: whatever a peer sends, work and memory stay bounded.

Issue 8: one well-formed probe whose sequence number was near 2^32 sent the reflector into a
loop of billions of steps (`SequenceTracker.settled`); random payloads grew its memory. Work is
measured here without a clock: as the Python lines the core runs per packet (`sys.settrace`),
which a loop over a peer's numbers would multiply; memory as what `tracemalloc` sees retained.
"""

from __future__ import annotations

import math
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config import ProbeSettings, load_settings
from netprobe.core import wire
from netprobe.core.classify import Thresholds, classify
from netprobe.core.measure import SEQ_MEMORY, RungArrivals, SequenceTracker
from netprobe.core.monitor import MAX_WINDOW_SAMPLES, ProbeWindow
from netprobe.core.responder import (
    MAX_DOWN_PPS,
    MAX_RUNG_S,
    MAX_RUNGS,
    REORDER_WINDOW,
    Responder,
    ResponderLimits,
)
from netprobe.core.session import ClientSession
from netprobe.core.wire import (
    LOAD_MAX_SIZE,
    MAX_DELAY_S,
    MAX_ECHO_ENTRIES,
    MAX_TIME_S,
    NO_RUNG,
    Echo,
    Load,
    Probe,
    RungReport,
    decode_echo,
    decode_load,
    decode_probe,
    encode_echo,
)
from netprobe.errors import ConfigError, ProtocolError

CORE = str(Path(__file__).resolve().parents[1] / "netprobe" / "core")
U32 = st.integers(0, 2**32 - 1)
TIMES = st.floats(-MAX_TIME_S, MAX_TIME_S)
DELAYS = st.floats(0.0, MAX_DELAY_S, width=32)
#: Python lines of the core one packet may cost: a few dozen (a loop over a peer's numbers
#: would cost billions; one over the tracker's memory, thousands).
LINES_PER_PACKET = 400


def lines_run(fn: Callable[[], Any]) -> int:
    """How many lines of netprobe/core `fn()` executes (a clock-free measure of work)."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if not frame.f_code.co_filename.startswith(CORE):
            return None
        if event == "line":
            count += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


def retained_bytes(fn: Callable[[], Any]) -> int:
    """Bytes allocated by `fn()` and still held afterwards (what it keeps is returned to the
    caller and dropped only after the measurement)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fn()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


# ------------------------------------------------------------------------ the packet


def test_one_probe_near_2_to_the_32_costs_a_few_lines_not_billions() -> None:
    responder = Responder()
    probe = Probe(seq=2**32 - 1, sent_at=1.0)
    work = lines_run(lambda: (responder.on_probe(probe, 10.0),
                              encode_echo(responder.echo(probe, 10.0, 10.0))))
    assert work < LINES_PER_PACKET
    echo = decode_echo(encode_echo(responder.echo(probe, 10.0, 10.0)))
    assert echo.up_probes_highest == 2**32 - 1 - REORDER_WINDOW
    assert echo.up_probes_received == 0  # nothing numbered 0..highest-10 arrived


# ------------------------------------------------------------------------ SequenceTracker

absurd_seqs = st.lists(st.one_of(U32, st.integers(0, 2**62), st.integers(0, 50)),
                       max_size=300)


@settings(max_examples=60, deadline=None)
@given(absurd_seqs)
def test_tracker_work_per_packet_is_bounded_whatever_the_numbers(seqs: list[int]) -> None:
    t = SequenceTracker()
    for s in seqs:
        assert lines_run(lambda s=s: (t.add(s), t.settled(REORDER_WINDOW))) < LINES_PER_PACKET
    assert len(t._ring) == SEQ_MEMORY  # its only store, whatever came
    assert t.received + t.duplicates + t.stale == len(seqs)


def test_tracker_memory_does_not_grow_with_the_packets() -> None:
    # 200,000 distinct numbers (a 4-hour monitoring stream is 720,000 at 50/s): the old
    # tracker kept a set of every one, ~10 MB; this one keeps its 4 KB ring.
    def run() -> SequenceTracker:
        t = SequenceTracker()
        for s in range(0, 400_000, 2):
            t.add(s)
        return t

    assert retained_bytes(run) < 64_000


class _Model:
    """Brute force: what a tracker with `memory` must say (tests/test_measure.py checks the
    unbounded case)."""

    def __init__(self, memory: int) -> None:
        self.memory, self.accepted, self.highest = memory, set[int](), -1
        self.stale = self.duplicates = 0

    def add(self, s: int) -> bool:
        if s <= self.highest - self.memory:
            self.stale += 1
            return False
        if s in self.accepted:
            self.duplicates += 1
            return False
        self.accepted.add(s)
        self.highest = max(self.highest, s)
        return True


@settings(max_examples=200)
@given(st.integers(2, 12), st.lists(st.integers(0, 60), max_size=80), st.integers(0, 11))
def test_tracker_with_a_small_memory_matches_the_model(memory: int, seqs: list[int],
                                                       window: int) -> None:
    window = min(window, memory - 1)
    t, m = SequenceTracker(memory), _Model(memory)
    for s in seqs:
        assert t.add(s) == m.add(s)
        settled, received = t.settled(window)
        expected = m.highest - window if m.highest >= 0 else -1 - window
        assert settled == max(expected, -1)
        assert received == sum(1 for x in m.accepted if x <= settled)
    assert (t.received, t.stale, t.duplicates, t.highest) == (
        len(m.accepted), m.stale, m.duplicates, m.highest)
    assert t.lost() == max(0, m.highest + 1 - len(m.accepted))
    floor = m.highest - memory
    for limit in range(floor + 1, m.highest + 2):
        assert t.received_below(limit) == sum(1 for x in m.accepted if x < limit)


def test_a_jump_counts_the_numbers_in_between_as_missing() -> None:
    t = SequenceTracker()
    for s in range(100):
        t.add(s)
    t.add(2**40)
    assert t.settled(REORDER_WINDOW) == (2**40 - REORDER_WINDOW, 100)
    assert t.lost() == 2**40 + 1 - 101
    assert t.add(50) is False and t.stale == 1  # far below the new highest: too old to tell


def test_a_reflector_cannot_report_a_tail_faster_than_its_rung() -> None:
    session = ClientSession(ProbeSettings(), Thresholds(), 0.0)
    session._up_sent[0] = 100
    rate = session.rungs[0].rate_kbps
    session._up_reports[0] = RungReport(0, 50, 6000, 1.0, 1.5, 0, 99, 1e7, 1e7)
    obs = session._observe_up(0)
    assert obs is not None and obs.tail_kbps is not None and obs.end_kbps is not None
    assert rate <= obs.tail_kbps <= rate + 100 and obs.end_kbps == obs.tail_kbps
    session._up_reports[0] = RungReport(0, 50, 6000, 1.0, 1.5, 0, 99, 120.0, 0.0)
    obs = session._observe_up(0)
    assert obs is not None and (obs.tail_kbps, obs.end_kbps) == (120.0, None)


def test_an_old_reflectors_tail_counts_are_ignored() -> None:
    # ECHO_FLAG_TAIL_COUNTS (0x02) and its !IIII per rung: read as an echo without tails.
    import struct

    from netprobe.core.wire import ECHO_FLAG_TAIL_COUNTS, Echo, decode_echo, encode_echo

    e = Echo(1, 2.0, 3, 1.5, 0.0, 4, 3, 0.0, (RungReport(0, 50, 6000, 1.0, 1.5, 0, 99),), ())
    data = encode_echo(e) + bytes([ECHO_FLAG_TAIL_COUNTS]) + struct.pack("!IIII", 9, 900, 4, 400)
    assert decode_echo(data) == e


def test_rung_arrivals_bounded_too() -> None:
    rung = RungArrivals()
    for seq in (2**32 - 1, 0, 2**31, 7, 2**32 - 1):
        rung.add(seq, 1200, 1.0)
    assert len(rung.seqs._ring) == SEQ_MEMORY
    # 2**32 - 1 counted once (its copy a duplicate); the others are far below it: stale
    assert (rung.seqs.received, rung.seqs.duplicates, rung.seqs.stale) == (1, 1, 3)


# ------------------------------------------------------------------------ wire


@settings(max_examples=300)
@given(st.binary(min_size=4, max_size=300), st.sampled_from([1, 2, 3]))
def test_whatever_decodes_is_within_the_documented_ranges(body: bytes, kind: int) -> None:
    data = b"NP" + bytes([wire.VERSION, kind]) + body
    for decode in (decode_probe, decode_echo, decode_load):
        try:
            got = decode(data)
        except ProtocolError:
            continue
        if isinstance(got, Probe):
            assert abs(got.sent_at) <= MAX_TIME_S and got.down_rung >= NO_RUNG
        elif isinstance(got, Load):
            assert abs(got.sent_at) <= MAX_TIME_S and got.rung >= 0
        else:
            assert isinstance(got, Echo)
            assert all(abs(t) <= MAX_TIME_S for t in (got.sent_at, got.probe_sent_at))
            assert 0 <= got.hold <= MAX_DELAY_S and 0 <= got.up_jitter <= MAX_DELAY_S
            assert len(got.up_rungs) <= MAX_ECHO_ENTRIES
            assert len(got.down_sent) <= MAX_ECHO_ENTRIES
            assert all(math.isfinite(r.first_at) and r.rung >= 0 for r in got.up_rungs)


# ------------------------------------------------------------------------ Responder

hostile_probes = st.builds(
    Probe, seq=st.one_of(U32, st.integers(0, 100)), sent_at=TIMES,
    down_rung=st.integers(-1, 2**15 - 1), down_rate_kbps=U32,
    down_size=st.integers(0, 2**16 - 1), down_duration_ms=st.integers(0, 2**16 - 1))
hostile_loads = st.builds(Load, rung=st.integers(0, 2**15 - 1),
                          seq=st.one_of(U32, st.integers(0, 100)), sent_at=TIMES)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.5), st.one_of(hostile_probes, hostile_loads),
                          st.integers(0, 65_535)), max_size=200))
def test_responder_caps_everything_a_client_asks(
        events: list[tuple[float, Probe | Load, int]]) -> None:
    limits = ResponderLimits()
    r = Responder(limits, started_at=0.0)
    now = 0.0
    for gap, packet, size in events:
        now += gap

        def one(packet: Probe | Load = packet, size: int = size, now: float = now) -> None:
            if isinstance(packet, Load):
                r.on_up_load(packet, size, now)
            elif r.on_probe(packet, now):
                encode_echo(r.echo(packet, now, now))  # always encodable
            step = r.down_step(now)
            if step is not None:
                step[1](now)

        assert lines_run(one) < LINES_PER_PACKET
        request = r.down_request(now)
        if request is not None:
            assert request.rate_kbps <= limits.max_down_kbps
            assert request.packet_size <= LOAD_MAX_SIZE
            assert request.duration_s <= MAX_RUNG_S
            pps = 1 / request.interval
            assert pps <= MAX_DOWN_PPS * 1.001 or request.packet_size == LOAD_MAX_SIZE
    assert len(r._up) <= MAX_RUNGS and len(r._down_started) <= MAX_RUNGS
    assert len(r._down_sent) <= MAX_RUNGS and len(r._down_finished) <= MAX_RUNGS


def test_downlink_bytes_per_session_are_capped() -> None:
    # A client asking for the most of everything, rung after rung, for a minute.
    limits = ResponderLimits(max_down_kbps=3200)
    r = Responder(limits)
    now = next_probe = 0.0
    seq = rung = sent = 0
    while now < 60.0:
        if now >= next_probe:
            r.on_probe(Probe(seq, now, rung, 2**32 - 1, 65_535, 65_535), now)
            seq, next_probe = seq + 1, now + 0.02
            if r.down_request(now) is None:
                rung += 1  # that one is over: ask for another
        step = r.down_step(now)
        if step is None:
            now = next_probe
            continue
        sent += len(step[1](now))
        now += step[0]
    assert r.down_bytes <= limits.max_down_bytes
    assert sent <= limits.max_down_bytes
    assert rung > MAX_RUNGS and len(r._down_started) == MAX_RUNGS
    assert r.refused["rungs"] > 0


def test_probes_over_the_rate_are_not_answered_and_end_the_session() -> None:
    limits = ResponderLimits()
    r = Responder(limits, started_at=0.0)
    answered = sum(r.on_probe(Probe(i, 1.0), 1.0) for i in range(5000))
    assert answered == limits.probe_burst
    assert r.refused["probe_rate"] == 5000 - limits.probe_burst
    assert r.end_reason(1.0) == "refused"
    # at the rate, a client is answered every time
    ok = Responder(limits, started_at=0.0)
    assert all(ok.on_probe(Probe(i, i / 50), 10 + i / 50) for i in range(5000))
    assert ok.end_reason(10 + 5000 / 50) is None


def test_a_session_that_stops_probing_is_silent() -> None:
    limits = ResponderLimits(silence_s=10.0, first_probe_s=30.0)
    r = Responder(limits, started_at=100.0)
    assert r.end_reason(129.9) is None
    assert r.end_reason(130.0) == "silent"  # never probed
    r.on_probe(Probe(0, 1.0), 120.0)
    assert r.silence_deadline() == 130.0
    assert r.end_reason(129.9) is None and r.end_reason(130.0) == "silent"
    assert Responder().end_reason(1e9) is None  # no start given: only after a first probe


# ------------------------------------------------------------------------ client side

hostile_echoes = st.builds(
    Echo, seq=U32, sent_at=TIMES, probe_seq=st.one_of(U32, st.integers(0, 200)),
    probe_sent_at=TIMES, hold=DELAYS, up_probes_received=U32,
    up_probes_highest=st.integers(-1, 2**32 - 2), up_jitter=DELAYS,
    up_rungs=st.lists(st.builds(RungReport, st.integers(0, 2**15 - 1), U32, U32, TIMES, TIMES,
                                U32, U32, st.floats(0, 1e7), st.floats(0, 1e7)),
                      max_size=MAX_ECHO_ENTRIES).map(tuple),
    down_sent=st.lists(st.tuples(st.integers(0, 2**15 - 1), U32, st.booleans()),
                       max_size=MAX_ECHO_ENTRIES).map(tuple))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(hostile_echoes, hostile_loads), max_size=150))
def test_a_hostile_reflector_cannot_hang_or_bloat_a_check(packets: list[Echo | Load]) -> None:
    cfg = ProbeSettings()
    session = ClientSession(cfg, Thresholds(), 0.0)
    now = 0.0
    for i, packet in enumerate(packets):
        now = i * 0.01
        session.next_probe(now)
        if isinstance(packet, Echo):
            session.on_echo(packet, now)
        else:
            session.on_down_load(packet, 1000, now)
        due = session.step(now)
        assert due is None or (math.isfinite(due) and due <= session.deadline)
    assert len(session._samples) <= 2 * session._probe_seq + 1
    assert set(session._down_rx) <= set(range(len(session.rungs)))
    assert set(session._down_sent) <= set(range(len(session.rungs)))
    assert set(session._up_reports) <= set(session._up_sent)
    assert session.step(session.deadline) is None  # the deadline ends it, whatever came
    classify(session.metrics(), Thresholds())


def test_echoes_flooding_a_monitoring_window_are_bounded() -> None:
    window = ProbeWindow(span=30.0)
    for seq in range(3 * MAX_WINDOW_SAMPLES):
        window.on_echo(Echo(seq, 1.0, seq, 99.99, 0.0, 2**32 - 1, 2**32 - 2, MAX_DELAY_S),
                       100.0)
    assert len(window._samples) <= MAX_WINDOW_SAMPLES
    assert len(window._seqs) == len(window._samples)
    metrics = window.metrics(100.0, None)
    assert metrics is not None and classify(metrics, Thresholds()).verdict


def test_the_downlink_cap_is_a_checked_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text("[reflector]\nmax_down_kbps = 5000\n")
    assert load_settings(cfg).reflector.max_down_kbps == 5000
    for bad in ("10", "-1", "1e12"):
        cfg.write_text(f"[reflector]\nmax_down_kbps = {bad}\n")
        with pytest.raises(ConfigError, match="max_down_kbps"):
            load_settings(cfg)
    for key in ("monitor_probe_interval_ms", "monitor_calm_interval_ms"):
        for bad in ("20000", "0", "-5"):
            cfg.write_text(f"[agent]\n{key} = {bad}\n")
            with pytest.raises(ConfigError, match=key):
                load_settings(cfg)
    cfg.write_text("[agent]\nmonitor_calm_interval_ms = 250\n")
    assert load_settings(cfg).agent.monitor_calm_interval_ms == 250


def test_a_reflector_cannot_inflate_the_probes_beside_a_rung() -> None:
    # A rung report with an absurdly short span would make the probes beside it look fast.
    session = ClientSession(ProbeSettings(), Thresholds(), 0.0)
    session.up.start(0.0)
    session._up_sent[0] = 100
    from netprobe.core.sampling import EchoSample

    session._samples += [EchoSample(k, 0.02 * k, 0.01, k, k, 0.0, 0.0, k, k) for k in range(30)]
    report = RungReport(0, 100, 12_000, 1.0, 1.0 + 1e-9, 0, 99)
    assert 0 < session._up_cross_kbps(0, report) <= 2 * session._probe_kbps()
    honest = RungReport(0, 100, 12_000, 1.0, 1.6, 0, 99)  # 30 probes over 0.6 s: their rate
    assert session._up_cross_kbps(0, honest) == pytest.approx(session._probe_kbps(), rel=0.05)

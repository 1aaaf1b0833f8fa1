"""Loss runs and the G.107 burst ratio (netprobe.core.lossruns), and their use by the agent's
monitoring windows. Pure: synthetic fate sequences and echo streams, seeded randomness."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netprobe.core.lossruns import MAX_BURST_RATIO, LossRuns
from netprobe.core.measure import SequenceTracker
from netprobe.core.monitor import ProbeWindow
from netprobe.core.responder import REORDER_WINDOW
from netprobe.core.wire import Echo

# --------------------------------------------------------------------------- helpers


def feed(fates: list[bool]) -> LossRuns:
    runs = LossRuns()
    for fate in fates:
        runs.add(fate)
    return runs


def reference_burst_ratio(fates: list[bool]) -> float:
    """Written out independently: transitions counted pairwise, then 1/(p+q) or the
    definition (mean run length x share received), clamped to [1, 8]."""
    lost = fates.count(False)
    if lost == 0:
        return 1.0
    pairs = list(zip(fates, fates[1:], strict=False))
    from_found = [b for a, b in pairs if a]
    from_loss = [b for a, b in pairs if not a]
    if from_found and from_loss:
        p = from_found.count(False) / len(from_found)
        q = from_loss.count(True) / len(from_loss)
        value = 1 / (p + q) if p + q > 0 else MAX_BURST_RATIO
    else:
        runs = sum(1 for i, f in enumerate(fates) if not f and (i == 0 or fates[i - 1]))
        value = lost / runs * (len(fates) - lost) / len(fates)
    return min(MAX_BURST_RATIO, max(1.0, value))


def bernoulli(n: int, loss: float, rng: random.Random) -> list[bool]:
    return [rng.random() >= loss for _ in range(n)]


def gilbert(n: int, p: float, q: float, rng: random.Random) -> list[bool]:
    """2-state Markov loss: from "found" a packet is lost with probability p, from "loss" it
    is received with probability q (every packet in the loss state is lost)."""
    out, ok = [], True
    for _ in range(n):
        ok = (rng.random() >= p) if ok else (rng.random() < q)
        out.append(ok)
    return out


# --------------------------------------------------------------------------- worked examples


def test_no_loss_is_random_loss() -> None:
    assert LossRuns().burst_ratio == 1.0
    assert feed([True] * 500).burst_ratio == 1.0


def test_counts_of_a_short_sequence() -> None:
    # R L L R R L R: found->loss 2, loss->loss 1, loss->found 2, found->found 1
    runs = feed([True, False, False, True, True, False, True])
    assert (runs.received, runs.lost, runs.loss_runs) == (4, 3, 2)
    assert (runs.found_to_found, runs.found_to_loss) == (1, 2)
    assert (runs.loss_to_found, runs.loss_to_loss) == (2, 1)
    assert runs.p == pytest.approx(2 / 3) and runs.q == pytest.approx(2 / 3)
    assert runs.burst_ratio == 1.0  # 1/(4/3) = 0.75: less clustered than random, rated as random


def test_one_burst_in_a_long_stream() -> None:
    # 490 received, 10 lost in a row, then received: p = 1/489, q = 1/10 -> 1/(0.1020) = 9.80,
    # clamped to 8
    runs = feed([True] * 480 + [False] * 10 + [True] * 10)
    assert runs.p == pytest.approx(1 / 489) and runs.q == pytest.approx(1 / 10)
    assert runs.burst_ratio == MAX_BURST_RATIO
    # Two lost in a row among 200: p = 1/197, q = 1/2 -> 1/0.50508 = 1.980
    assert feed([True] * 100 + [False] * 2 + [True] * 98).burst_ratio == pytest.approx(
        1 / (1 / 197 + 1 / 2))


def test_unknown_transitions_fall_back_to_the_definition() -> None:
    # L L L R: no transition out of "found": mean run 3 x share received 1/4 = 0.75 -> 1
    assert feed([False, False, False, True]).burst_ratio == 1.0
    # R R R R L L L L (a run still open): p = 1/4, q = 0/3 -> 1/(p + q) = 4
    assert feed([True] * 4 + [False] * 4).burst_ratio == pytest.approx(4.0)
    # L L R R R: p = 0/2, q = 1/2 -> 1/(p + q) = 2
    assert feed([False, False, True, True, True]).burst_ratio == pytest.approx(2.0)
    assert feed([False] * 50).burst_ratio == 1.0  # nothing received: Ppl is 100 % anyway


def test_pause_counts_no_transition_across_a_gap() -> None:
    runs = LossRuns()
    runs.add(True, 5)
    runs.pause()
    runs.add(False, 2)
    runs.add(True, 3)
    assert runs.found_to_loss == 0  # the loss run began after the pause
    assert (runs.loss_to_loss, runs.loss_to_found, runs.found_to_found) == (1, 1, 6)
    assert runs.loss_runs == 1


def test_add_stretch_puts_the_losses_first_and_clamps() -> None:
    runs = LossRuns()
    runs.add_stretch(3, 1)
    assert (runs.lost, runs.received, runs.found_to_loss, runs.loss_to_found) == (1, 2, 0, 1)
    runs.add_stretch(2, 5)  # more lost than settled: all of it lost
    runs.add_stretch(4, -2)  # a late probe made "lost so far" fall: none lost here
    runs.add_stretch(-3, 1)  # counters that went backwards: nothing
    assert (runs.lost, runs.received) == (3, 6)


def test_a_huge_run_costs_nothing_and_stays_bounded() -> None:
    runs = LossRuns()
    t0 = time.perf_counter()
    runs.add(True, 10**15)
    runs.add(False, 10**15)
    runs.add(True)
    assert time.perf_counter() - t0 < 0.1  # O(1): a hostile sequence jump loops over nothing
    assert 1.0 <= runs.burst_ratio <= MAX_BURST_RATIO


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(("loss", "seed"), [(0.01, 1), (0.05, 2), (0.15, 3), (0.30, 4)])
def test_bernoulli_loss_gives_burst_ratio_about_1(loss: float, seed: int) -> None:
    fates = bernoulli(40_000, loss, random.Random(seed))
    assert feed(fates).burst_ratio == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize(
    ("loss", "mean_burst", "seed"),
    [(0.05, 3.0, 5), (0.02, 5.0, 6), (0.10, 2.0, 7), (0.20, 4.0, 8)],
)
def test_gilbert_loss_gives_its_model_burst_ratio(loss: float, mean_burst: float,
                                                  seed: int) -> None:
    # q = 1/mean burst; stationary loss p/(p+q) = loss -> p = loss q / (1 - loss)
    q = 1 / mean_burst
    p = loss * q / (1 - loss)
    model = 1 / (p + q)
    assert 1.5 < model < MAX_BURST_RATIO  # a clearly bursty case, inside the clamp
    fates = gilbert(200_000, p, q, random.Random(seed))
    assert feed(fates).burst_ratio == pytest.approx(model, rel=0.08)


def test_bursty_and_random_loss_are_told_apart_at_the_same_rate() -> None:
    rng = random.Random(9)
    random_loss = feed(bernoulli(20_000, 0.05, rng)).burst_ratio
    q = 1 / 4
    bursty = feed(gilbert(20_000, 0.05 * q / 0.95, q, rng)).burst_ratio
    assert random_loss < 1.2 < 3.0 < bursty


_fates = st.lists(st.booleans(), max_size=300)


@given(_fates)
def test_bounded(fates: list[bool]) -> None:
    assert 1.0 <= feed(fates).burst_ratio <= MAX_BURST_RATIO


@given(_fates)
def test_incremental_equals_batch(fates: list[bool]) -> None:
    one_by_one = feed(fates)
    assert one_by_one.burst_ratio == pytest.approx(reference_burst_ratio(fates), rel=1e-12)
    # the same fates given as runs (what the echo gaps feed) count exactly the same
    as_runs = LossRuns()
    i = 0
    while i < len(fates):
        j = i
        while j < len(fates) and fates[j] == fates[i]:
            j += 1
        as_runs.add(fates[i], j - i)
        i = j
    assert as_runs == one_by_one
    # and every prefix's figure is the batch figure of that prefix
    runs = LossRuns()
    for k, fate in enumerate(fates, 1):
        runs.add(fate)
        if k % 37 == 0:
            assert runs.burst_ratio == pytest.approx(reference_burst_ratio(fates[:k]),
                                                     rel=1e-12)


# --------------------------------------------------------------------------- monitoring windows

PROBE_INTERVAL = 0.05


def echo_stream(n: int, up_lost: set[int], down_lost: set[int],
                late: dict[int, float] | None = None) -> list[tuple[Echo, float]]:
    """(echo, arrival) pairs, sorted by arrival, of a reflector answering `n` probes: its
    uplink counters come from the reflector's own `SequenceTracker` and reorder window;
    echo numbers in `down_lost` never arrive; `late` delays some echoes (overtaken)."""
    tracker, out, echo_seq = SequenceTracker(), [], 0
    for probe in range(n):
        if probe in up_lost:
            continue
        tracker.add(probe)
        settled, received = tracker.settled(REORDER_WINDOW)
        seq, echo_seq = echo_seq, echo_seq + 1
        if seq in down_lost:
            continue
        sent = 100.0 + probe * PROBE_INTERVAL
        echo = Echo(seq=seq, sent_at=5000.0 + probe * PROBE_INTERVAL, probe_seq=probe,
                    probe_sent_at=sent, hold=0.0, up_probes_received=received,
                    up_probes_highest=settled, up_jitter=0.0)
        out.append((echo, sent + 0.030 + (late or {}).get(seq, 0.0)))
    return sorted(out, key=lambda pair: pair[1])


def window_of(pairs: list[tuple[Echo, float]]):  # type: ignore[no-untyped-def]
    window = ProbeWindow(span=60)
    for echo, at in pairs:
        window.on_echo(echo, at)
    m = window.metrics(pairs[-1][1], None)
    assert m is not None
    return m


def isolated(n: int, every: int, offset: int = 0) -> set[int]:
    return {i for i in range(offset + 20, n - 20, every)}


def bursts(n: int, every: int, length: int, offset: int = 0) -> set[int]:
    return {i + k for i in range(offset + 20, n - 40, every) for k in range(length)}


def test_window_random_loss_reads_as_random() -> None:
    m = window_of(echo_stream(1200, up_lost=isolated(1200, 25), down_lost=isolated(1200, 31, 7)))
    assert m.up.loss_pct == pytest.approx(4.0, abs=0.5) and m.burst_ratio == 1.0


@pytest.mark.parametrize("direction", ["up", "down"])
def test_window_bursty_loss_lowers_mos_at_the_same_loss(direction: str) -> None:
    n = 1200
    spread, clustered = isolated(n, 20), bursts(n, 100, 5)
    assert len(spread) == pytest.approx(len(clustered), rel=0.05)  # the same loss rate

    def make(lost: set[int]):  # type: ignore[no-untyped-def]
        if direction == "up":
            return window_of(echo_stream(n, up_lost=lost, down_lost=set()))
        return window_of(echo_stream(n, up_lost=set(), down_lost=lost))

    random_m, bursty_m = make(spread), make(clustered)
    loss = {"up": lambda m: m.up.loss_pct, "down": lambda m: m.down.loss_pct}[direction]
    assert loss(random_m) == pytest.approx(loss(bursty_m), abs=0.3)
    # 5-packet runs: q = 1/5, p ~ 1/95 -> BurstR ~ 4.8
    assert random_m.burst_ratio == 1.0
    assert bursty_m.burst_ratio == pytest.approx(4.8, abs=0.6)
    assert bursty_m.mos_audio < random_m.mos_audio


def test_window_overtaken_echoes_are_not_loss_runs() -> None:
    # every 10th echo arrives 3 probe intervals late (after later ones): nothing is lost
    late = {seq: 3 * PROBE_INTERVAL for seq in range(5, 1000, 10)}
    m = window_of(echo_stream(1000, up_lost=set(), down_lost=set(), late=late))
    assert m.down.loss_pct == 0 and m.up.loss_pct == 0
    assert m.burst_ratio == 1.0

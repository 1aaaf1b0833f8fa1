"""Tests for netprobe.core.ladder's state machine, with explicit, binary-exact times: one rung
at a time, judged once, on its final signal or at the timeout; bounds; loaded windows; a sender
held back by its own machine."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from ladder_sim import (
    DEFAULT_RATES,
    DURATION,
    TIMEOUT,
)

from netprobe.core.ladder import (
    DRAIN_S,
    Ladder,
    Rung,
    RungObservation,
    RungResult,
    make_ladder,
)

# ------------------------------------------------------------------------ state machine

# Binary-exact times, so that boundaries compare exactly: rungs of 0.5 s.
D = 0.5


def _full(rung: Rung, n: int = 100) -> RungObservation:
    """All `n` packets of `rung` in, at its send rate."""
    return RungObservation(n, n, n * rung.payload_size, 0.0, (n - 1) * rung.interval)


def _starved(rung: Rung, n: int = 100) -> RungObservation:
    """Half the packets in, at half the rate: a bottleneck at half the rung's rate."""
    got = n // 2
    return RungObservation(n, got, got * rung.payload_size, 0.0, (n - 1) * rung.interval)


def _observer(lad: Ladder, good: set[int], calls: list[int] | None = None,
              ) -> Callable[[int], RungObservation]:
    def observe(i: int) -> RungObservation:
        if calls is not None:
            calls.append(i)
        return _full(lad.rungs[i]) if i in good else _starved(lad.rungs[i])
    return observe


def _never(i: int) -> bool:
    return False


def _always(i: int) -> bool:
    return True


def test_sending_and_current_with_explicit_times() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    assert lad.sending(0.0) is None and lad.current() is None  # not started
    assert lad.started_at(0) is None
    assert not lad.started and not lad.in_flight()
    lad.start(1.0)
    lad.start(5.0)  # a second start does not restart
    assert lad.started and lad.in_flight()
    assert lad.started_at(0) == 1.0 and lad.end_of(0) == 1.5
    assert lad.started_at(1) is None
    assert lad.sending(1.0).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.49).index == 0  # type: ignore[union-attr]
    assert lad.sending(1.5) is None  # rung 0 over...
    assert lad.sending(9.0) is None  # ...and no next rung until it is judged
    assert lad.current().index == 0  # type: ignore[union-attr]  # awaiting judgement
    assert lad.in_flight()
    r = lad.evaluate(1.75, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert r is not None and r.rung.index == 0 and r.passed
    assert lad.current().index == 1  # type: ignore[union-attr]
    assert lad.started_at(1) == 1.75 and lad.end_of(1) == 2.25  # starts when 0 is judged
    assert lad.sending(1.75).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.24).index == 1  # type: ignore[union-attr]
    assert lad.sending(2.25) is None
    assert lad.current().index == 1  # type: ignore[union-attr]
    r = lad.evaluate(2.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert r is not None and r.rung.index == 1 and r.passed
    assert lad.done and not lad.in_flight()  # the top rung passed
    assert lad.current() is None and lad.sending(2.5) is None
    assert lad.started_at(2) is None


def test_rung_not_judged_before_its_end_even_if_final() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    for now in (0.0, 0.25, 0.49):
        assert lad.evaluate(now, _observer(lad, {0, 1}, calls), 0.0, _always, TIMEOUT) is None
    assert calls == [] and lad.results == {}
    assert lad.capacity() == (None, False)
    assert lad.current().index == 0  # type: ignore[union-attr]
    r = lad.evaluate(0.5, _observer(lad, {0, 1}, calls), 0.0, _always, TIMEOUT)
    assert calls == [0]
    assert r is not None and r.passed and r.final
    assert lad.results == {0: r}
    assert not lad.done


def test_rung_judged_on_final_before_the_timeout() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    final: set[int] = set()
    lad.start(0.0)
    observe = _observer(lad, {0, 1}, calls)
    # ended at 0.5, not final yet: waits (the timeout is 1 s away)
    for now in (0.5, 0.6, 0.7):
        assert lad.evaluate(now, observe, 0.0, final.__contains__, 1.0) is None
    assert calls == []
    final.add(0)
    r = lad.evaluate(0.75, observe, 0.0, final.__contains__, 1.0)
    assert calls == [0]
    assert r is not None and r.final is True and r.passed
    assert lad.started_at(1) == 0.75  # the next rung starts at once
    # the next rung's final flag is its own: rung 0's does not judge it
    assert lad.evaluate(1.25, observe, 0.0, final.__contains__, 1.0) is None
    assert calls == [0]


def test_rung_judged_at_the_timeout_without_final() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    observe = _observer(lad, {0}, calls)
    assert lad.evaluate(1.49, observe, 0.0, _never, 1.0) is None  # end 0.5 + timeout 1.0
    assert calls == []
    r = lad.evaluate(1.5, observe, 0.0, _never, 1.0)
    assert calls == [0]
    assert r is not None and r.final is False and r.passed
    assert lad.results[0].final is False
    assert lad.started_at(1) == 1.5
    # rung 1 (starved) also times out: fails, not final, the ladder is done
    assert lad.evaluate(2.99, observe, 0.0, _never, 1.0) is None
    r = lad.evaluate(3.0, observe, 0.0, _never, 1.0)
    assert r is not None and r.rung.index == 1 and not r.passed and r.final is False
    assert lad.done
    assert calls == [0, 1]


def test_evaluate_judges_each_rung_once() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    calls: list[int] = []
    lad.start(0.0)
    observe = _observer(lad, {0, 1}, calls)
    results = [lad.evaluate(now, observe, 0.0, _always, TIMEOUT)
               for now in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert [r is not None for r in results] == [True, False, False, False, False]
    assert calls == [0]  # rung 1 (started at 0.5) is not over before 1.0
    assert lad.evaluate(1.0, observe, 0.0, _always, TIMEOUT) is not None
    assert calls == [0, 1] and lad.done
    for now in (1.5, 5.0, 50.0):  # done: nothing more is judged
        assert lad.evaluate(now, observe, 0.0, _always, TIMEOUT) is None
    assert calls == [0, 1]
    assert sorted(lad.results) == [0, 1]


def test_failed_rung_ends_the_ladder() -> None:
    lad = Ladder(make_ladder((300, 800, 1600)), D)
    lad.start(0.0)
    observe = _observer(lad, {0})
    assert lad.evaluate(0.5, observe, 0.0, _always, TIMEOUT).passed  # type: ignore[union-attr]
    r = lad.evaluate(1.0, observe, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed
    assert lad.done and lad.current() is None and lad.sending(1.0) is None
    assert lad.started_at(2) is None  # the next rung is never started
    assert lad.evaluate(9.0, observe, 0.0, _always, TIMEOUT) is None


def test_abort_stops_sending_and_judging() -> None:
    lad = Ladder(make_ladder(DEFAULT_RATES), 0.6)
    lad.start(0.0)
    assert lad.sending(0.0) is not None
    lad.abort(0.1)
    assert lad.done and not lad.in_flight()
    # the rung in progress keeps its loaded window, closed at the abort (+ drain)
    assert lad.loaded_windows() == [(0.0, 0.1 + DRAIN_S)]
    assert lad.current() is None
    assert lad.sending(0.1) is None
    assert lad.sending(0.7) is None
    assert lad.evaluate(5.0, lambda i: pytest.fail("observe called after abort"), 0.0,
                        lambda i: pytest.fail("is_final called after abort"), 0.1) is None
    assert lad.results == {}
    assert lad.capacity() == (None, False)


def test_abort_after_a_pass_keeps_what_was_shown() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    lad.abort(0.6)  # during rung 1
    assert lad.capacity() == (300.0, True)
    assert lad.upper_bound() == math.inf
    assert sorted(lad.results) == [0]


def test_nothing_arrived_fails_rung_with_zero_capacity() -> None:
    lad = Ladder(make_ladder((300, 800)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(1.0, lambda i: RungObservation(120, 0, 0, 0.0, 0.0), 0.0, _always, 0.1)
    assert r is not None and r.passed is False and r.delivered_kbps is None
    assert lad.done
    assert lad.results[0] is r
    assert lad.capacity() == (0.0, False)
    assert lad.upper_bound() == 0.0


def test_a_rung_failed_on_a_timeout_without_any_report_has_no_capacity_figure() -> None:
    # A long, slow link: the rung's report had not come back when the timeout struck. That
    # says nothing about the rate: the capacity is unknown, not 0 kbit/s.
    lad = Ladder(make_ladder((300, 800)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(2.0, lambda i: RungObservation(120, 0, 0, 0.0, 0.0), 0.0, _never, 0.1)
    assert r is not None and not r.passed and not r.final
    assert lad.done
    assert lad.capacity() == (None, False)
    assert lad.upper_bound() == math.inf


def test_observe_none_fails_rung() -> None:
    lad = Ladder(make_ladder((300,)), 0.6)
    lad.start(0.0)
    r = lad.evaluate(1.0, lambda i: None, 0.0, _never, 0.1)
    assert lad.done and lad.results[0].passed is False
    assert r == RungResult(lad.rungs[0], False, None, 0.0, False)


def test_delivery_ratio_capped_at_one() -> None:
    # The receiver may count more than the sender's (stale) figure: the ratio stays <= 1.
    lad = Ladder(make_ladder((300,)), D)
    lad.start(0.0)
    rung = lad.rungs[0]
    obs = RungObservation(90, 100, 100 * rung.payload_size, 0.0, 99 * rung.interval)
    r = lad.evaluate(0.5, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and r.delivery_ratio == 1.0 and r.passed


def test_random_loss_allowance() -> None:
    # 10 % random loss measured by the probes: a rung that delivered 90 % of its packets at
    # 90 % of its rate passes (needs 0.85 * 0.9 = 0.765); without the allowance it would not
    # fail either (0.9 >= 0.85), so use 20 %: needs 0.85 * 0.8 = 0.68 of rate and packets.
    rung = make_ladder((800,))[0]
    n = 120
    got = int(n * 0.8)
    # 96 packets of 120 spread over the rung's full span -> rate ~ 0.8 * 800 = 640 kbit/s
    obs = RungObservation(n, got, got * rung.payload_size, 0.0, (n - 1) * rung.interval)

    def judge(base_loss: float) -> bool:
        lad = Ladder((rung,), 0.6)
        lad.start(0.0)
        r = lad.evaluate(1.0, lambda i: obs, base_loss, _always, 0.1)
        assert r is not None
        return r.passed

    assert judge(0.2) is True
    assert judge(0.0) is False
    assert judge(5.0) is True  # absurd loss is capped at 90 %, not negative keep


# ------------------------------------------------------------------------ bounds


def test_lower_bound_is_the_delivered_rate_capped_at_nominal() -> None:
    rungs = make_ladder((300, 800))

    def lower_after(delivered_ratio: float) -> Ladder:
        lad = Ladder(rungs, D)
        lad.start(0.0)
        n, rung = 100, rungs[0]
        span = (n - 1) * rung.interval / delivered_ratio
        obs = RungObservation(n, n, n * rung.payload_size, 0.0, span)
        r = lad.evaluate(0.5, lambda i: obs, 0.0, _always, TIMEOUT)
        assert r is not None and r.passed
        return lad

    fast = lower_after(1.1)  # arrivals bunched: delivered 330 > nominal 300
    assert fast.results[0].delivered_kbps == pytest.approx(330)
    assert fast.lower_bound() == 300.0  # never above the nominal rate
    assert fast.capacity() == (300.0, True)  # no judged rung failed: "at least"
    slow = lower_after(0.9)  # delivered 270, still a pass (>= 0.85 x 300)
    assert slow.lower_bound() == pytest.approx(270)
    assert slow.capacity() == (pytest.approx(270), True)
    assert slow.upper_bound() == math.inf  # no rung failed yet


def test_capacity_after_a_failure_is_the_best_delivered_rate() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0}), 0.0, _always, TIMEOUT)
    lad.evaluate(1.0, _observer(lad, {0}), 0.0, _always, TIMEOUT)
    delivered = lad.results[1].delivered_kbps
    # 50 of 100 packets over the span of 99 intervals: 800 x 49/99 (first packet not counted)
    assert delivered == pytest.approx(800 * 49 / 99)
    assert lad.capacity() == (delivered, False)
    assert lad.upper_bound() == delivered
    assert lad.lower_bound() == pytest.approx(300)


# ------------------------------------------------------------------------ loaded windows


def test_loaded_windows_open_while_unjudged_closed_after_failure() -> None:
    lad = Ladder(make_ladder((300, 800, 1600)), D)
    assert lad.loaded_windows() == []  # not started
    lad.start(1.0)
    assert lad.loaded_windows() == [(1.0, math.inf)]  # being sent: open-ended
    lad.evaluate(1.5, _observer(lad, {0, 1}), 0.0, _never, TIMEOUT)
    assert lad.loaded_windows() == [(1.0, math.inf)]  # ended, unjudged: still open
    lad.evaluate(1.75, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 0 passes
    # a passed rung did not saturate the link: its window is gone; rung 1's is open
    assert lad.loaded_windows() == [(1.75, math.inf)]
    lad.evaluate(2.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 1 passes
    assert lad.loaded_windows() == [(2.5, math.inf)]
    r = lad.evaluate(3.25, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)  # rung 2 fails
    assert r is not None and not r.passed and lad.done
    # closed once judged, plus the time its queue takes to drain; rung 1, the last to pass
    # before the failure, ran close to capacity and counts as loaded too
    assert lad.loaded_windows() == [(1.75, 2.5 + DRAIN_S), (2.5, 3.25 + DRAIN_S)]
    assert lad.near_capacity(1) and not lad.near_capacity(0)


def test_loaded_window_of_a_rung_failed_on_the_timeout() -> None:
    lad = Ladder(make_ladder((300,)), D)
    lad.start(0.0)
    assert lad.evaluate(1.0, _observer(lad, set()), 0.0, _never, 0.75) is None
    assert lad.loaded_windows() == [(0.0, math.inf)]
    r = lad.evaluate(1.25, _observer(lad, set()), 0.0, _never, 0.75)
    assert r is not None and not r.passed and not r.final
    assert lad.loaded_windows() == [(0.0, 1.25 + DRAIN_S)]


def test_loaded_windows_empty_when_the_top_rung_passes() -> None:
    lad = Ladder(make_ladder((300, 800)), D)
    lad.start(0.0)
    lad.evaluate(0.5, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    lad.evaluate(1.0, _observer(lad, {0, 1}), 0.0, _always, TIMEOUT)
    assert lad.done and lad.loaded_windows() == []


def _observed(rung: Rung, sent: int, received: int, span: float) -> RungObservation:
    return RungObservation(sent, received, received * rung.payload_size, 0.0, span)


def test_sender_held_back_by_its_own_machine_is_not_blamed_on_the_link() -> None:
    # A busy CPU let the sender send only 70 % of the rung, spread over the whole rung; the
    # link delivered every one of them. The link carried all it was offered: the rung passes,
    # and what it proves is the rate actually sent, not the rung's.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    full = round(DURATION / rung.interval)
    sent = int(full * 0.7)
    obs = _observed(rung, sent, sent, DURATION - DURATION / sent)
    r = lad.evaluate(DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and r.passed
    assert r.sender_limited
    assert r.sent_kbps == pytest.approx(0.7 * 1600, rel=0.02)
    assert lad.capacity()[0] == pytest.approx(0.7 * 1600, rel=0.05)
    assert lad.capacity()[1] is True


def test_link_slower_than_what_was_sent_still_fails_the_rung() -> None:
    # The sender sent the full rung, the link delivered it at 70 %: a bottleneck.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    full = round(DURATION / rung.interval)
    obs = _observed(rung, full, full, DURATION / 0.7)
    r = lad.evaluate(DURATION / 0.7 + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed
    assert not r.sender_limited
    assert r.delivered_kbps == pytest.approx(0.7 * 1600, rel=0.05)


def test_held_back_sender_on_a_slower_link_still_fails() -> None:
    # 80 % sent, and the link delivered that at only half the rate it was sent.
    lad = Ladder(make_ladder((1600,)), DURATION)
    lad.start(0.0)
    rung = lad.rungs[0]
    sent = int(round(DURATION / rung.interval) * 0.8)
    obs = _observed(rung, sent, sent, 2 * DURATION)
    r = lad.evaluate(2 * DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT)
    assert r is not None and not r.passed and r.sender_limited


def test_abort_marks_a_ladder_cut_short_but_not_a_finished_one() -> None:
    lad = Ladder(make_ladder((300, 800)), DURATION)
    lad.start(0.0)
    lad.abort(0.1)
    assert lad.done and lad.aborted
    finished = Ladder(make_ladder((300,)), DURATION)
    finished.start(0.0)
    rung = finished.rungs[0]
    full = round(DURATION / rung.interval)
    obs = _observed(rung, full, full, DURATION)
    assert finished.evaluate(DURATION + 0.1, lambda i: obs, 0.0, _always, TIMEOUT) is not None
    assert finished.done and not finished.aborted
    finished.abort(1.0)  # too late: the capacity was found
    assert not finished.aborted

"""Several reflectors, pure: the list, its shuffled order, when an attempt moves on, the most
telling failure, Retry-After holds, and the agent's policy moving its monitoring stream (a
drain, a dead reflector, a 429) without a false change of its recommendation."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy import SERVER, Drive, Readings, of, result

from netprobe.config import AgentSettings, Settings
from netprobe.core.classify import UNKNOWN, VIDEO
from netprobe.core.failover import (
    DRAINING_HOLD_S,
    RETRY_AFTER_CAP_S,
    Attempt,
    ReflectorPool,
    StreamRoute,
    bounded_retry_after,
    most_telling,
    moves_on,
    server_list,
    shuffled,
)
from netprobe.core.policy import FIRST_CHECK_AFTER_S, SILENCE_S, AgentPolicy
from netprobe.core.policy_events import (
    CheckFinished,
    EchoReceived,
    Log,
    MonitorConnected,
    MonitorConnectFailed,
    MonitorEnded,
    SessionStartRequested,
    StartCheck,
    StartMonitor,
    StopMonitor,
)
from netprobe.core.wire import Echo

A, B, C = "http://a.test:8765", "http://b.test:8765", "http://c.test:8765"
urls = st.lists(st.sampled_from([f"http://r{i}.test:8765" for i in range(8)]),
                min_size=1, max_size=8, unique=True)


def rngs() -> st.SearchStrategy[random.Random]:
    return st.integers(0, 2**32).map(random.Random)


def test_a_list_from_flags_and_strings() -> None:
    assert server_list(f"{A}, {B},,{A}") == (A, B)
    assert server_list([A, f" {B} ,{C}", A]) == (A, B, C)
    assert server_list("") == () and server_list([]) == ()
    assert AgentSettings(server=f"{A},{B}").servers == (A, B)
    assert AgentSettings(server=(B, A)).servers == (B, A)


@given(urls, rngs())
def test_the_order_is_a_permutation(given_urls: list[str], rng: random.Random) -> None:
    order = shuffled(given_urls, rng.random)
    assert sorted(order) == sorted(given_urls)


def test_the_order_spreads_the_load() -> None:
    """Every URL comes first about as often as the others (a clinic's clients do not all
    start at the same reflector)."""
    rng = random.Random(1)
    firsts = Counter(shuffled((A, B, C), rng.random)[0] for _ in range(3000))
    assert set(firsts) == {A, B, C} and min(firsts.values()) > 850


@pytest.mark.parametrize(("outcome", "moves"), [
    ("unreachable", True), ("busy", True), ("rate_limited", True),
    ("denied", False), ("answered", False)])
def test_which_outcomes_move_on(outcome: str, moves: bool) -> None:
    assert moves_on(outcome) is moves


def test_the_most_telling_failure() -> None:
    dead, busy, slow = Attempt(A, "unreachable"), Attempt(B, "busy"), Attempt(
        C, "rate_limited", 30)
    assert most_telling([dead, busy]) == busy
    assert most_telling([busy, dead, slow]) == slow
    assert most_telling([dead, Attempt(B, "unreachable")]) == Attempt(B, "unreachable")
    assert most_telling([Attempt(A, "answered")]) is None


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_a_retry_after_is_bounded(seconds: float | None) -> None:
    got = bounded_retry_after(seconds)
    assert got is None or 0 <= got <= RETRY_AFTER_CAP_S


@given(urls, rngs(), st.data())
def test_held_urls_go_last_soonest_first(given_urls: list[str], rng: random.Random,
                                         data: st.DataObject) -> None:
    pool = ReflectorPool(given_urls)
    holds = data.draw(st.dictionaries(st.sampled_from(given_urls), st.floats(1, 500)))
    for url, until in holds.items():
        pool.hold(url, until)
    order = pool.order(0.0, rng.random)
    assert sorted(order) == sorted(given_urls)
    free = [u for u in order if u not in holds]
    assert list(order[:len(free)]) == free
    assert [holds[u] for u in order[len(free):]] == sorted(holds.values())
    everything_held = set(holds) == set(given_urls)
    assert pool.all_held_until(0.0) == (min(holds.values()) if everything_held else None)
    assert pool.all_held_until(1000.0) is None  # holds end


def test_learning_from_a_check_puts_a_rate_limiting_url_on_hold() -> None:
    pool = ReflectorPool((A, B))
    pool.learn([Attempt(A, "rate_limited", 99999), Attempt(B, "answered")], now=10.0)
    assert pool.held_until(A, 10.0) == 10.0 + RETRY_AFTER_CAP_S
    assert pool.order(11.0, random.Random(0).random) == (B, A)


@given(urls, rngs())
def test_a_lost_stream_tries_every_url_once_then_waits(given_urls: list[str],
                                                       rng: random.Random) -> None:
    route = StreamRoute(ReflectorPool(given_urls))
    seen = [route.start(0.0, rng.random)]
    while (target := route.lost(0.0, rng.random, "ServerUnreachable")) is not None:
        seen.append(route.start(0.0, rng.random, target))
    assert sorted(seen) == sorted(given_urls)


def test_a_draining_reflector_goes_last_and_a_single_url_is_retried_once() -> None:
    route = StreamRoute(ReflectorPool((A, B)))
    route.start(0.0, lambda: 0.0, A)
    route.connected()
    assert route.lost(1.0, lambda: 0.0, "draining") == B
    assert route.pool.held_until(A, 1.0) == 1.0 + DRAINING_HOLD_S
    single = StreamRoute(ReflectorPool((A,)))
    single.start(0.0, lambda: 0.0)
    single.connected()
    assert single.lost(1.0, lambda: 0.0, "draining") == A  # another worker behind it
    single.start(1.0, lambda: 0.0, A)
    assert single.lost(1.1, lambda: 0.0, "ServerBusy") is None  # then the backoff


# -- the policy --------------------------------------------------------------------------------


class Driver(Drive):
    """`test_policy.Drive` with a list of reflectors."""

    def __init__(self, servers: tuple[str, ...], **agent: Any) -> None:
        super().__init__()
        self.settings = Settings(agent=AgentSettings(server=servers, **agent))
        self.policy = AgentPolicy(self.settings, Readings(), jitter=lambda: 0.0,
                                  rng=random.Random(7).random)


def streaming_to(servers: tuple[str, ...]) -> tuple[Driver, StartMonitor]:
    """A session streaming (video from its first check) to one of `servers`, with echoes."""
    d = Driver(servers)
    d.start()
    [check] = of(StartCheck, d.until(FIRST_CHECK_AFTER_S))
    assert sorted(check.servers) == sorted(servers)
    d.finish(result(VIDEO))
    [monitor] = of(StartMonitor, d.feed(SessionStartRequested(d.now)))
    d.feed(MonitorConnected(d.now, monitor.link))
    d.echoes(3.0)
    return d, monitor


def draining_echo(d: Driver) -> Echo:
    return Echo(d.seq, d.now, d.seq, d.now - 0.02, 0.0, d.seq + 1, d.seq, 0.001,
                draining=True)


def moved(d: Driver) -> list[Log]:
    return d.logs("monitor_moved")


def test_a_draining_reflector_moves_the_stream_at_once_keeping_the_recommendation() -> None:
    d, first = streaming_to((A, B))
    out = d.feed(EchoReceived(d.now, first.link, draining_echo(d)))
    assert StopMonitor(first.link) in out
    [second] = of(StartMonitor, out)  # at once: no backoff
    assert {first.server, second.server} == {A, B} and second.link == first.link + 1
    [log] = moved(d)
    assert log.fields["reason"] == "draining"
    assert {log.fields["from_reflector"], log.fields["to_reflector"]} == {1, 2}
    d.feed(MonitorConnected(d.now, second.link))
    d.echoes(10.0)
    assert d.status()["recommendation"] == "video" and not d.logs("reflector_unreachable")
    assert [c.fields["to"] for c in d.logs("recommendation_changed")] == ["video"]


def test_without_the_flag_an_echo_moves_nothing() -> None:
    d, first = streaming_to((A, B))
    assert not of(StartMonitor, d.echoes(2.0)) and not moved(d)


@pytest.mark.parametrize("how", ["ended", "silent"])
def test_a_dead_reflector_moves_the_stream(how: str) -> None:
    d, first = streaming_to((A, B))
    if how == "ended":
        out = d.feed(MonitorEnded(d.now, first.link))
    else:
        out = d.until(d.now + SILENCE_S + 1.5)  # no echo: silent
    [second] = of(StartMonitor, out)
    assert second.server != first.server
    assert moved(d)[0].fields["reason"] == ("monitor_closed" if how == "ended"
                                            else "monitor_silent")
    d.feed(MonitorConnected(d.now, second.link))
    d.echoes(10.0)
    assert [c.fields["to"] for c in d.logs("recommendation_changed")] == ["video"]
    assert d.status()["recommendation"] == "video"


def test_when_every_reflector_fails_the_session_backs_off() -> None:
    d, first = streaming_to((A, B))
    [second] = of(StartMonitor, d.feed(MonitorEnded(d.now, first.link)))
    out = d.feed(MonitorConnectFailed(d.now, second.link, "ServerUnreachable"))
    assert not of(StartMonitor, out)  # both tried: wait
    assert d.status()["recommendation"] == "unknown"
    [unreachable] = d.logs("reflector_unreachable")
    assert of(StartMonitor, d.until(d.now + unreachable.fields["retry_in_s"] + 0.1))


def test_one_url_keeps_the_backoff() -> None:
    d, first = streaming_to((SERVER,))
    out = d.feed(MonitorEnded(d.now, first.link))
    assert not of(StartMonitor, out) and not moved(d)
    assert d.status()["recommendation"] == "unknown"


def test_a_rate_limited_stream_waits_its_retry_after() -> None:
    d, first = streaming_to((SERVER,))
    d.feed(MonitorEnded(d.now, first.link))
    [unreachable] = d.logs("reflector_unreachable")
    [retry] = of(StartMonitor, d.until(d.now + unreachable.fields["retry_in_s"] + 0.1))
    at = d.now
    d.feed(MonitorConnectFailed(d.now, retry.link, "RateLimited", 120.0))
    assert not of(StartMonitor, d.until(at + 119))  # not the backoff of about 10 s
    assert of(StartMonitor, d.until(at + 121))


def test_a_rate_limited_check_is_not_unreachable_and_holds_the_next_check() -> None:
    d = Driver((A,), idle_interval_s=10.0, idle_jitter=0.0)
    d.start()
    d.until(FIRST_CHECK_AFTER_S)
    purpose = d.policy.check_running
    assert purpose == "idle"
    d.now += 1
    d.feed(CheckFinished(d.now, purpose, result(UNKNOWN, connected=False, code="rate_limited"),
                         (Attempt(A, "rate_limited", 200.0),)))
    assert d.status()["reflector"] != "unreachable" and not d.logs("reflector_unreachable")
    at = d.now
    assert not of(StartCheck, d.until(at + 199))  # idle_interval_s is 10 s, Retry-After 200
    assert of(StartCheck, d.until(at + 201))


def test_settings_default_is_still_one_plain_string() -> None:
    assert Settings().agent.servers == ()
    assert Settings(agent=AgentSettings(server=SERVER)).agent.servers == (SERVER,)

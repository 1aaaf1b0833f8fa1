"""Admission decisions (pure): caps per kind and per source, the per-source token bucket with
its bounded table, the source key, and which X-Forwarded-For entry is believed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.core.admission import (
    Admission,
    AdmissionLimits,
    Admit,
    Refuse,
    client_address,
    parse_networks,
    source_key,
)

NO_RATE = dict(offers_per_minute=0.0)


def test_checks_and_monitors_are_capped_apart() -> None:
    a = Admission(AdmissionLimits(max_checks=2, max_monitors=3, max_checks_per_source=9,
                                  max_monitors_per_source=9, **NO_RATE))
    assert all(isinstance(a.offer("m", "monitor", 0.0), Admit) for _ in range(3))
    busy = a.offer("m", "monitor", 0.0)
    assert isinstance(busy, Refuse) and (busy.status, busy.code) == (503, "busy")
    # the monitoring streams took no check slot
    assert all(isinstance(a.offer("c", "check", 0.0), Admit) for _ in range(2))
    assert a.offer("c", "check", 0.0) == Refuse(503, "busy", busy.message.replace(
        "monitoring streams", "checks"))
    a.release("c", "check")
    assert isinstance(a.offer("c", "check", 0.0), Admit)
    assert (a.count("check"), a.count("monitor")) == (2, 3)


def test_the_deprecated_total_cap_counts_both_kinds() -> None:
    a = Admission(AdmissionLimits(max_total=2, max_checks_per_source=9, **NO_RATE))
    assert isinstance(a.offer("x", "monitor", 0.0), Admit)
    assert isinstance(a.offer("y", "check", 0.0), Admit)
    refused = a.offer("z", "check", 0.0)
    assert isinstance(refused, Refuse) and refused.code == "busy"


def test_per_source_cap_is_429_and_other_sources_still_get_in() -> None:
    a = Admission(AdmissionLimits(max_checks_per_source=2, **NO_RATE))
    assert isinstance(a.offer("one", "check", 0.0), Admit)
    assert isinstance(a.offer("one", "check", 0.0), Admit)
    refused = a.offer("one", "check", 0.0)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.code, refused.retry_after_s) == (429, "too_many_sessions",
                                                                     None)
    assert isinstance(a.offer("two", "check", 0.0), Admit)
    assert isinstance(a.offer("one", "monitor", 0.0), Admit)  # its own count per kind
    a.release("one", "check")
    assert isinstance(a.offer("one", "check", 0.0), Admit)


def test_rate_limit_refuses_with_retry_after_and_refills() -> None:
    a = Admission(AdmissionLimits(offers_per_minute=6.0, offer_burst=2,
                                  max_checks_per_source=99, max_checks=99))
    assert isinstance(a.offer("s", "check", 100.0), Admit)
    assert isinstance(a.offer("s", "check", 100.0), Admit)
    refused = a.offer("s", "check", 100.0)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.code, refused.retry_after_s) == (429, "rate_limited", 10)
    assert isinstance(a.offer("other", "check", 100.0), Admit)  # per source
    later = a.offer("s", "check", 105.0)
    assert isinstance(later, Refuse) and later.retry_after_s == 5
    assert isinstance(a.offer("s", "check", 110.0), Admit)  # one token back after 10 s


def test_an_offer_refused_for_capacity_still_takes_a_token() -> None:
    a = Admission(AdmissionLimits(max_checks=1, offers_per_minute=1.0, offer_burst=2))
    assert isinstance(a.offer("s", "check", 0.0), Admit)
    assert a.offer("s", "check", 0.0).code == "busy"  # type: ignore[union-attr]
    assert a.offer("s", "check", 0.0).code == "rate_limited"  # type: ignore[union-attr]


def test_the_bucket_table_is_bounded_and_forgets_the_oldest() -> None:
    a = Admission(AdmissionLimits(offers_per_minute=1.0, offer_burst=1, max_sources=3,
                                  max_checks=99, max_checks_per_source=99))
    for name in ("a", "b", "c"):
        a.offer(name, "check", 0.0)
    assert a.offer("a", "check", 0.0).code == "rate_limited"  # type: ignore[union-attr]
    a.offer("d", "check", 0.0)  # "b" is now the oldest seen, and is forgotten
    assert a.sources_tracked == 3
    assert isinstance(a.offer("b", "check", 0.0), Admit)  # a full bucket again
    assert a.offer("a", "check", 0.0).code == "rate_limited"  # type: ignore[union-attr]


def test_a_clock_that_steps_back_refills_nothing() -> None:
    a = Admission(AdmissionLimits(offers_per_minute=60.0, offer_burst=1))
    assert isinstance(a.offer("s", "check", 1000.0), Admit)
    a.release("s", "check")
    assert isinstance(a.offer("s", "check", 10.0), Refuse)


def test_releasing_more_than_admitted_is_ignored() -> None:
    a = Admission(AdmissionLimits())
    a.release("nobody", "check")
    assert a.count("check") == 0
    with pytest.raises(ValueError):
        a.offer("s", "bogus", 0.0)


OPS = st.lists(st.tuples(st.sampled_from(["offer", "release"]), st.integers(0, 5),
                         st.sampled_from(["check", "monitor"]),
                         st.floats(0, 5, allow_nan=False)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, caps=st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 3),
                               st.integers(1, 3)),
       rate=st.sampled_from([0.0, 6.0, 60.0]), burst=st.integers(1, 4),
       max_sources=st.integers(1, 4))
def test_no_sequence_of_offers_and_releases_breaks_a_limit(
        ops: list[tuple[str, int, str, float]], caps: tuple[int, int, int, int], rate: float,
        burst: int, max_sources: int) -> None:
    limits = AdmissionLimits(max_checks=caps[0], max_monitors=caps[1],
                             max_checks_per_source=caps[2], max_monitors_per_source=caps[3],
                             offers_per_minute=rate, offer_burst=burst,
                             max_sources=max_sources)
    a = Admission(limits)
    held: dict[tuple[str, str], int] = {}
    now = 0.0
    passed_rate: dict[str, list[float]] = {}
    for op, who, kind, dt in ops:
        now += dt
        source = f"s{who}"
        if op == "release":
            a.release(source, kind)
            if held.get((source, kind)):
                held[(source, kind)] -= 1
            continue
        decision = a.offer(source, kind, now)
        if isinstance(decision, Admit):
            held[(source, kind)] = held.get((source, kind), 0) + 1
        else:
            assert decision.status in (429, 503) and decision.message
            if decision.code == "rate_limited":
                assert decision.retry_after_s is not None and decision.retry_after_s >= 1
            else:
                assert decision.retry_after_s is None
        if not (isinstance(decision, Refuse) and decision.code == "rate_limited"):
            passed_rate.setdefault(source, []).append(now)
        for k, cap, per in (("check", caps[0], caps[2]), ("monitor", caps[1], caps[3])):
            assert a.count(k) == sum(n for (_, kk), n in held.items() if kk == k) <= cap
            assert all(n <= per for (_, kk), n in held.items() if kk == k)
        assert a.sources_tracked <= max_sources
    if rate and max_sources >= 6:  # nothing forgotten: the bucket bounds every source
        for times in passed_rate.values():
            assert len(times) <= burst + (times[-1] - times[0]) * rate / 60.0 + 1e-9


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.5, 600), burst=st.integers(1, 10), t=st.floats(0, 1e6))
def test_waiting_retry_after_is_enough(rate: float, burst: int, t: float) -> None:
    a = Admission(AdmissionLimits(offers_per_minute=rate, offer_burst=burst, max_checks=99,
                                  max_checks_per_source=99))
    decision: Admit | Refuse = Admit()
    while isinstance(decision, Admit):
        decision = a.offer("s", "check", t)
        if isinstance(decision, Admit):
            a.release("s", "check")
    assert decision.code == "rate_limited" and decision.retry_after_s is not None
    assert isinstance(a.offer("s", "check", t + decision.retry_after_s), Admit)


# ------------------------------------------------------------------------ who is the source


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),
])
def test_source_key(address: str, key: str) -> None:
    assert source_key(address) == key


TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(("peer", "header", "client"), [
    ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not a trusted proxy: header ignored
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
    ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the client wrote 6.6.6.6
    ("127.0.0.1", "198.51.100.1, 10.1.2.3", "198.51.100.1"),  # two proxies
    ("127.0.0.1", "10.9.9.9, 10.1.2.3", "10.9.9.9"),  # all trusted: the first
    ("127.0.0.1", "198.51.100.1, garbage", "127.0.0.1"),  # a broken hop ends the walk
    ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
    ("127.0.0.1", "198.51.100.1:5555", "198.51.100.1"),
    ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),
])
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer: str, header: str | None,
                                                            client: str) -> None:
    assert client_address(peer, header, TRUSTED) == client


@settings(max_examples=200, deadline=None)
@given(hops=st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
                     max_size=40),
       last=st.ip_addresses(v=4).filter(lambda a: not a.is_loopback and not a.is_private),
       peer=st.sampled_from(["127.0.0.1", "203.0.113.5"]))
def test_a_client_cannot_choose_its_address(hops: list[str], last: ipaddress.IPv4Address,
                                            peer: str) -> None:
    """Whatever a client writes into the header, the address the trusted proxy appended (the
    last entry) wins; an untrusted peer's header is not read at all."""
    header = ", ".join([*hops, str(last)])
    got = client_address(peer, header, TRUSTED)
    assert got == (str(last) if peer == "127.0.0.1" else peer)

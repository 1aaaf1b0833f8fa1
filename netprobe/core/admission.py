"""Who may open a probe session on the reflector: pure admission decisions.

`Admission.offer(source, kind, now)` decides one offer: `Admit` or `Refuse(status, code,
message, retry_after_s)`; `Admission.release(source, kind)` gives the slot back when the session
ends. It knows nothing of sockets or clocks: the reflector passes the source key (see
`source_key`) and `now` in, and performs the answer.

In this order, an offer is refused with

1. 429 `rate_limited` when its source's token bucket is empty (`offer_burst` offers at once,
   refilled at `offers_per_minute`); `retry_after_s` says when one offer will be allowed again.
   Every offer that passes this step takes a token, even one refused by a cap below: hammering a
   full reflector empties the bucket too;
2. 429 `too_many_sessions` when its source already holds its share of sessions of that kind;
3. 503 `busy` when the reflector holds its limit of sessions of that kind (or, with the
   deprecated `max_total`, of both kinds together).

Checks and monitoring streams are counted apart: a monitoring stream never takes a check's slot.
The bucket table is bounded (`max_sources`): when full, the source not heard from for longest
is forgotten (it gets a full bucket back, the same as a new source). Session counts are not part
of that table; they are bounded by the caps themselves.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

KINDS = ("check", "monitor")
"""The two kinds of session: a pre-session check, and a monitoring stream during a session."""


@dataclass(frozen=True)
class AdmissionLimits:
    max_checks: int = 8
    """Concurrent pre-session checks (0: this reflector takes monitoring streams only)."""
    max_monitors: int = 200
    """Concurrent monitoring streams (0: checks only)."""
    max_total: int | None = None
    """Both kinds together (the deprecated `max_sessions`); None: no such cap."""
    max_checks_per_source: int = 4
    """Concurrent checks from one source address."""
    max_monitors_per_source: int = 50
    """Concurrent monitoring streams from one source (a clinic's office behind one address)."""
    offers_per_minute: float = 60.0
    """Sustained offers per minute from one source (0: no rate limit)."""
    offer_burst: int = 20
    """Offers one source may make at once before the rate applies."""
    max_sources: int = 10000
    """Sources whose buckets are remembered (the oldest is forgotten first)."""


@dataclass(frozen=True)
class Admit:
    """The offer may open a session: its slot is held until `release`."""


@dataclass(frozen=True)
class Refuse:
    status: int
    """HTTP status: 429 (this source) or 503 (the whole reflector)."""
    code: str
    """`rate_limited`, `too_many_sessions` or `busy` (docs/reflector.md)."""
    message: str
    """For a person, in plain words."""
    retry_after_s: int | None = None
    """Whole seconds until an offer from this source would pass the rate limit; None if the
    refusal is about capacity, which no wait can promise."""


Decision = Admit | Refuse


def source_key(address: str) -> str:
    """The key a source is limited by: an IPv4 address as it is, an IPv6 address by its /64
    (one home or office gets a /64, so one attacker has 2^64 addresses), an IPv4-mapped IPv6
    address as its IPv4 address. Anything that is not an address is its own key, shortened."""
    try:
        addr = ipaddress.ip_address(address.strip().partition("%")[0])
    except ValueError:
        return address[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Admission:
    """Counts sessions per kind and per source, and rate-limits offers per source."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """source -> (tokens, when they were counted); least recently seen first."""
        self._counts = {kind: 0 for kind in KINDS}
        self._per_source: dict[tuple[str, str], int] = {}

    # -- the decision

    def offer(self, source: str, kind: str, now: float) -> Decision:
        """Decide one offer of `kind` ("check" or "monitor") from `source` at `now`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        limits = self.limits
        if limits.offers_per_minute > 0:
            tokens = self._tokens(source, now)
            if tokens < 1.0 - 1e-9:  # (a whisker under 1 after waiting Retry-After is 1)
                self._buckets[source] = (tokens, now)
                wait = (1.0 - tokens) * 60.0 / limits.offers_per_minute
                return Refuse(429, "rate_limited",
                              "too many offers from this address; wait before trying again",
                              retry_after_s=max(1, math.ceil(wait)))
            self._buckets[source] = (tokens - 1.0, now)
        per_source = (limits.max_checks_per_source if kind == "check"
                      else limits.max_monitors_per_source)
        if self._per_source.get((source, kind), 0) >= per_source:
            return Refuse(429, "too_many_sessions",
                          f"this address already has {per_source} {kind} session(s) open; "
                          "wait for one to end")
        cap = limits.max_checks if kind == "check" else limits.max_monitors
        total = sum(self._counts.values())
        if self._counts[kind] >= cap or (limits.max_total is not None
                                         and total >= limits.max_total):
            what = "checks" if kind == "check" else "monitoring streams"
            return Refuse(503, "busy", f"the reflector is at its limit of concurrent {what}; "
                          "try again in a few seconds")
        self._counts[kind] += 1
        self._per_source[(source, kind)] = self._per_source.get((source, kind), 0) + 1
        return Admit()

    def release(self, source: str, kind: str) -> None:
        """A session admitted for (`source`, `kind`) has ended. Releasing more than was
        admitted is ignored (counts never go below zero)."""
        key = (source, kind)
        held = self._per_source.get(key, 0)
        if held <= 0:
            return
        if held == 1:
            del self._per_source[key]
        else:
            self._per_source[key] = held - 1
        self._counts[kind] = max(0, self._counts[kind] - 1)

    # -- what the reflector reports

    def count(self, kind: str) -> int:
        """Sessions of `kind` holding a slot now."""
        return self._counts[kind]

    def held_by(self, source: str, kind: str) -> int:
        return self._per_source.get((source, kind), 0)

    @property
    def sources_tracked(self) -> int:
        """Buckets remembered (at most `max_sources`)."""
        return len(self._buckets)

    # -- the bucket

    def _tokens(self, source: str, now: float) -> float:
        """The source's tokens at `now` (a full bucket for a source not seen); marks it the
        most recently seen, and forgets the oldest sources beyond `max_sources`."""
        limits = self.limits
        burst = float(limits.offer_burst)
        entry = self._buckets.get(source)
        if entry is None:
            tokens = burst
            self._buckets[source] = (tokens, now)
            while len(self._buckets) > max(1, limits.max_sources):
                self._buckets.popitem(last=False)
        else:
            held, then = entry
            elapsed = max(0.0, now - then)  # a clock that steps back refills nothing
            tokens = min(burst, held + elapsed * limits.offers_per_minute / 60.0)
            self._buckets.move_to_end(source)
        return tokens


MAX_FORWARDED_HOPS = 16
"""X-Forwarded-For entries looked at, from the right: a longer header is a client's invention."""


def parse_networks(texts: tuple[str, ...] | list[str]
                   ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses and networks (`10.0.0.0/8`, `::1`) as networks; `ValueError` on a bad one."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def network_problem(text: str) -> str | None:
    """Why `text` is not an IP address or network like 10.0.0.0/8, or None."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not an IP address or network (e.g. 10.0.0.0/8)"
    return None


def in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
                ) -> bool:
    """Whether `address` is in one of `networks` (an IPv4-mapped IPv6 address as its IPv4)."""
    addr = _address(address)
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


def client_address(peer: str, forwarded_for: str | None,
                   trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The client's address: `peer` (the TCP peer), unless `peer` is a trusted proxy and sent
    `forwarded_for` (the X-Forwarded-For header(s) joined by ","). Then the header is read from
    the right, skipping trusted proxies: the first address that is not one is the client. An
    entry that is not an address ends the walk at the last address known good, so a client
    cannot choose its own address by writing one into the header."""
    if not forwarded_for or not in_networks(peer, trusted):
        return peer
    client = peer
    hops = [h.strip() for h in forwarded_for.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            break
        client = str(addr)
        if not in_networks(client, trusted):
            break
    return client


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443 (some proxies add the port)
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr

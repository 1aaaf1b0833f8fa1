"""Several reflectors for one client, pure: which to try, in what order, when to move on.

A clinic may give a client (`check --server`, `[agent] server`) several reflector URLs. Each
attempt tries them in an order shuffled afresh (load spread: a clinic's clients do not all
start at the first), and moves on to the next URL only when the one tried could not take the
check: it did not answer (nothing listening, connection refused, no answer in time), it is
busy (HTTP 503 `busy`, `draining`, ...) or it asked us to slow down (HTTP 429
`rate_limited`, `too_many_sessions`). It does not move on when the access token was refused
(401/403: the same token is refused everywhere) nor once a check has connected (its result is
the answer). URLs a reflector asked us to leave alone for a while (Retry-After) go last.

No I/O and no clock: times come in as `now`, randomness as `rng()` (uniform in [0, 1)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from netprobe.core.classify import UNKNOWN, Reason, Verdict
from netprobe.core.words import N_

#: What became of one URL of an attempt.
Outcome = Literal["answered", "unreachable", "busy", "rate_limited", "denied"]
#: The outcomes after which the next URL is tried.
MOVE_ON: frozenset[str] = frozenset({"unreachable", "busy", "rate_limited"})
#: The longest a reflector's Retry-After is honoured (a hostile or broken one could say a day).
RETRY_AFTER_CAP_S = 300.0
#: A reflector that said it is draining goes last in the order for this long.
DRAINING_HOLD_S = 60.0
#: The most URLs one client takes (a list is typed by a person; a longer one is a mistake).
MAX_SERVERS = 16
#: When every URL failed: the failure that says most about why, first. A busy or rate-limiting
#: reflector answered (the client is online); "unreachable" may be the client's own link.
_TELLING = ("denied", "rate_limited", "busy", "unreachable")


def unreachable_verdict() -> Verdict:
    """The agent's advice when no reflector can be reached to watch a session."""
    return Verdict(UNKNOWN, 0.0, (Reason.of(
        "reflector_unreachable",
        N_("The test server cannot be reached right now, so the connection cannot be watched. "
           "If the call also struggles, switch to audio or call by phone.")),))


def stale_verdict() -> Verdict:
    """The agent's advice when its last measurement is too old."""
    return Verdict(UNKNOWN, 0.0, (Reason.of("status_stale", N_(
        "The last measurement is too old to rely on; a new check is due. Until then, do not "
        "count on video.")),))


def no_check_verdict() -> Verdict:
    """The agent's advice before its first check."""
    return Verdict(UNKNOWN, 0.0, (Reason.of("no_check_yet", N_(
        "No check has run yet; the first one starts in a moment.")),))


def server_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """The reflector URLs of `value`: a string (comma-separated URLs) or several strings
    (each may hold commas too); blanks dropped, duplicates dropped, order kept."""
    parts = [value] if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        for url in part.split(","):
            url = url.strip()
            if url and url not in urls:
                urls.append(url)
    return tuple(urls)


def shuffled(urls: Iterable[str], rng: Callable[[], float]) -> tuple[str, ...]:
    """`urls` in a random order (Fisher-Yates, with `rng()` in [0, 1))."""
    out = list(urls)
    for i in range(len(out) - 1, 0, -1):
        j = min(i, int(max(0.0, rng()) * (i + 1)))
        out[i], out[j] = out[j], out[i]
    return tuple(out)


def moves_on(outcome: str) -> bool:
    """Whether an attempt goes on to the next URL after `outcome`."""
    return outcome in MOVE_ON


@dataclass(frozen=True)
class Attempt:
    """One URL tried within one check or connection."""

    url: str
    outcome: Outcome
    retry_after_s: float | None = None
    """The reflector's Retry-After (bounded to RETRY_AFTER_CAP_S), for `rate_limited`."""


def most_telling(attempts: Iterable[Attempt]) -> Attempt | None:
    """Of failed attempts, the one whose failure explains most (the last of its kind)."""
    failed = [a for a in attempts if a.outcome != "answered"]
    for outcome in _TELLING:
        found = [a for a in failed if a.outcome == outcome]
        if found:
            return found[-1]
    return None


def bounded_retry_after(seconds: float | None) -> float | None:
    """A Retry-After from the network, clamped to 0-RETRY_AFTER_CAP_S (None stays None)."""
    if seconds is None or seconds != seconds:  # NaN bounds nothing
        return None
    return max(0.0, min(RETRY_AFTER_CAP_S, float(seconds)))


class ReflectorPool:
    """The agent's reflectors: their order for each attempt, and the ones on hold because they
    asked for time (Retry-After), until when."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = server_list(urls)
        self._hold: dict[str, float] = {}

    def update(self, urls: Iterable[str]) -> None:
        """The configured list changed (a reload): keep the holds of URLs still listed."""
        self.urls = server_list(urls)
        self._hold = {u: t for u, t in self._hold.items() if u in self.urls}

    def position(self, url: str) -> int | None:
        """`url`'s place in the configured list, from 1 (logs name a reflector by it, never by
        its address); None if it is not listed."""
        return self.urls.index(url) + 1 if url in self.urls else None

    def hold(self, url: str, until: float) -> None:
        if url in self.urls:
            self._hold[url] = max(until, self._hold.get(url, until))

    def learn(self, attempts: Iterable[Attempt], now: float) -> None:
        """Take what a check's attempts showed: a Retry-After (of a 429, or of a busy or
        draining reflector's 503) puts its URL on hold."""
        for a in attempts:
            if a.outcome in ("rate_limited", "busy") and a.retry_after_s:
                self.hold(a.url, now + (bounded_retry_after(a.retry_after_s) or 0.0))

    def held_until(self, url: str, now: float) -> float | None:
        until = self._hold.get(url)
        return until if until is not None and until > now else None

    def order(self, now: float, rng: Callable[[], float]) -> tuple[str, ...]:
        """Every URL, shuffled; those on hold last, the soonest free first."""
        mixed = shuffled(self.urls, rng)
        free = [u for u in mixed if self.held_until(u, now) is None]
        held = sorted((u for u in mixed if u not in free), key=lambda u: self._hold[u])
        return (*free, *held)

    def all_held_until(self, now: float) -> float | None:
        """When the first URL comes off hold, if every URL is on hold now; else None."""
        times = [self.held_until(u, now) for u in self.urls]
        if not times or any(t is None for t in times):
            return None
        return min(t for t in times if t is not None)


class StreamRoute:
    """Which reflector the agent's monitoring stream uses, and where it goes when that one is
    lost: to one not yet tried since the last stream that connected (free ones first, at
    random); none left means the agent waits for its backoff."""

    def __init__(self, pool: ReflectorPool) -> None:
        self.pool = pool
        self.server: str | None = None
        """The URL of the current (or last) stream."""
        self._tried: list[str] = []

    def start(self, now: float, rng: Callable[[], float], server: str | None = None) -> str:
        """A new stream: to `server`, or to the first URL of a fresh order."""
        self.server = server or next(iter(self.pool.order(now, rng)), "")  # "": none set
        self._tried.append(self.server)
        return self.server

    def connected(self) -> None:
        """The stream connected: every other URL may be tried again when it is lost."""
        self._tried = [self.server] if self.server else []

    def reset(self) -> None:
        self._tried = []

    def lost(self, now: float, rng: Callable[[], float], why: str,
             hold_s: float | None = None) -> str | None:
        """The stream is gone (`why`: `draining`, an error code, ...): the URL to move to, or
        None (every URL failed in a row: wait). `hold_s`: the reflector asked for this long
        (Retry-After). A draining reflector goes last for DRAINING_HOLD_S; behind a single
        URL (a load balancer, worker processes sharing a port) another may answer, so a
        drain reconnects to it once at once."""
        current = self.server
        if current is not None and hold_s is not None:
            self.pool.hold(current, now + (bounded_retry_after(hold_s) or 0.0))
        if why == "draining" and current is not None:
            self.pool.hold(current, now + DRAINING_HOLD_S)
            if len(self.pool.urls) == 1:
                self._tried = []
        target = next((u for u in self.pool.order(now, rng) if u not in self._tried), None)
        if target is None:
            self._tried = []
        return target

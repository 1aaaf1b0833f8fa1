"""The reflector's operations side: who is asking (the client's address, behind trusted proxies
only), the keyed hash that stands for that address in logs, the counters and the `GET /metrics`
text (docs/reflector.md, "Logs and metrics").

The decisions themselves (caps, rate limit, which X-Forwarded-For entry to believe) are pure, in
`netprobe.core.admission`; this module holds the I/O around them.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from netprobe.config import ReflectorSettings
from netprobe.core.admission import KINDS, AdmissionLimits
from netprobe.errors import ConfigError
from netprobe.promtext import PromText, labels

CLIENT = web.RequestKey("netprobe_client", str)
"""A request's client address (X-Forwarded-For only from a trusted proxy)."""
SOURCE = web.RequestKey("netprobe_source", str)
"""The source key it is limited and hashed by (`core.admission.source_key`)."""

HASH_HEX_CHARS = 16
"""A source's hash in logs: the first 16 hex digits (64 bits) of HMAC-SHA256(key, source)."""

END_REASONS = ("closed", "failed", "time_limit", "not_connected", "bad_offer", "shutdown",
               "silent", "refused")
"""Why a session ended (`session_ended` event, `netprobe_reflector_sessions_ended_total`)."""

REFUSAL_CODES = ("rate_limited", "too_many_sessions", "busy", "unauthorized", "forbidden",
                 "bad_json", "bad_request", "bad_sdp", "body_too_large",
                 "unsupported_media_type", "method_not_allowed", "draining")
"""Error codes counted by name in `netprobe_reflector_offers_refused_total`; any other is
counted as `other`, so a label never takes a value the server did not choose."""


def limits_from(settings: ReflectorSettings) -> AdmissionLimits:
    return AdmissionLimits(
        max_checks=settings.max_checks, max_monitors=settings.max_monitors,
        max_total=settings.max_sessions,
        max_checks_per_source=settings.max_checks_per_source,
        max_monitors_per_source=settings.max_monitors_per_source,
        offers_per_minute=settings.offers_per_minute, offer_burst=settings.offer_burst)


class AddressHasher:
    """HMAC-SHA256 of a source key under a secret key, truncated: the same source gives the
    same hash within a process (or, with a shared key file, across workers and restarts), and
    the address cannot be recovered or confirmed without the key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key else secrets.token_bytes(32)

    @classmethod
    def from_settings(cls, settings: ReflectorSettings) -> AddressHasher:
        """A random key, or the one in `log_key_file` (raises `ConfigError` if unusable)."""
        if not settings.log_key_file:
            return cls()
        path = Path(settings.log_key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"[reflector] log_key_file: {path}: cannot be read "
                              f"({exc.strerror or exc})") from None
        if len(key) < 16:
            raise ConfigError(f"[reflector] log_key_file: {path}: the key must be at least "
                              "16 bytes (e.g. `head -c 32 /dev/urandom | base64`)")
        return cls(key)

    def __call__(self, source: str) -> str:
        digest = hmac.new(self._key, source.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:HASH_HEX_CHARS]


def transport_bytes(pc: Any) -> tuple[int, int]:
    """(sent, received) bytes of a peer connection's DTLS transport (one, bundled); (0, 0) when
    aiortc cannot say. Uses aiortc's synchronous `_get_stats` (no await, no RTCP round)."""
    sent = received = 0
    try:
        seen: set[int] = set()
        for sender in pc.getSenders():
            transport = sender.transport
            if transport is None or id(transport) in seen:
                continue
            seen.add(id(transport))
            for stats in transport._get_stats().values():
                sent += int(getattr(stats, "bytesSent", 0) or 0)
                received += int(getattr(stats, "bytesReceived", 0) or 0)
    except Exception:  # noqa: BLE001 - private API: a changed aiortc must not break a scrape
        return 0, 0
    return sent, received


@dataclass
class ReflectorCounters:
    """What happened since the process started (Prometheus counters)."""

    started: Counter[str] = field(default_factory=Counter)
    """Sessions started, by kind."""
    ended: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Sessions ended, by (kind, reason from END_REASONS)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Offers refused, by error code (REFUSAL_CODES or `other`)."""
    bytes_sent: int = 0
    """Bytes sent by sessions that have ended (live ones are added at each scrape)."""
    bytes_received: int = 0

    def refusal(self, code: str) -> str:
        """Count a refused offer; returns the label it was counted under."""
        label = code if code in REFUSAL_CODES else "other"
        self.refused[label] += 1
        return label


@dataclass
class Snapshot:
    """What one reflector process (or, summed, the whole reflector) reports: its counters and
    what is live now. Workers publish theirs (`worker_share`); `/metrics` sums them."""

    counters: ReflectorCounters = field(default_factory=ReflectorCounters)
    live: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Sessions open now, by (kind, "connecting" or "connected")."""
    live_sent: int = 0
    """Bytes of the live sessions so far (added to the counters' at each scrape)."""
    live_received: int = 0
    sources: int = 0
    """Sources the rate limiter remembers."""
    cpu_s: float = 0.0
    rss: int | None = None
    draining: bool = False
    workers: int = 1
    """Processes summed into this snapshot."""

    @classmethod
    def of(cls, counters: ReflectorCounters, sessions: list[Any], sources: int, *,
           draining: bool = False) -> Snapshot:
        """This process now. `sessions`: the live sessions (`.kind`, `.connected`, `.pc`)."""
        snap = cls(counters=counters, sources=sources, cpu_s=time.process_time(),
                   rss=_rss_bytes(), draining=draining)
        for s in sessions:
            snap.live[(s.kind, "connected" if s.connected.is_set() else "connecting")] += 1
            s_sent, s_received = transport_bytes(s.pc)
            snap.live_sent += s_sent
            snap.live_received += s_received
        return snap

    def count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.live.items() if k == kind)

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {"started": dict(c.started), "ended": [[k, r, n] for (k, r), n in c.ended.items()],
                "refused": dict(c.refused), "bytes": [c.bytes_sent, c.bytes_received],
                "live": [[k, s, n] for (k, s), n in self.live.items()],
                "live_bytes": [self.live_sent, self.live_received], "sources": self.sources,
                "cpu_s": self.cpu_s, "rss": self.rss, "draining": self.draining}

    @classmethod
    def from_json(cls, doc: Any) -> Snapshot:
        """A snapshot written by `to_json` (raises ValueError/KeyError/TypeError if it is not);
        labels outside the known ones are dropped."""
        c = ReflectorCounters()
        c.started.update({k: int(n) for k, n in doc["started"].items() if k in KINDS})
        c.ended.update({(k, r): int(n) for k, r, n in doc["ended"]
                        if k in KINDS and r in END_REASONS})
        c.refused.update({k: int(n) for k, n in doc["refused"].items()
                          if k in (*REFUSAL_CODES, "other")})
        c.bytes_sent, c.bytes_received = (int(v) for v in doc["bytes"])
        snap = cls(counters=c, sources=int(doc["sources"]), cpu_s=float(doc["cpu_s"]),
                   rss=None if doc["rss"] is None else int(doc["rss"]),
                   draining=bool(doc["draining"]))
        snap.live.update({(k, s): int(n) for k, s, n in doc["live"] if k in KINDS
                          and s in ("connecting", "connected")})
        snap.live_sent, snap.live_received = (int(v) for v in doc["live_bytes"])
        return snap

    def add(self, other: Snapshot, *, counters_only: bool = False) -> None:
        """Sum `other` into this one (`counters_only`: a worker that has exited)."""
        c, o = self.counters, other.counters
        c.started.update(o.started)
        c.ended.update(o.ended)
        c.refused.update(o.refused)
        c.bytes_sent += o.bytes_sent + other.live_sent
        c.bytes_received += o.bytes_received + other.live_received
        self.cpu_s += other.cpu_s
        if counters_only:
            return
        c.bytes_sent -= other.live_sent  # live, not final: kept apart
        c.bytes_received -= other.live_received
        self.live.update(other.live)
        self.live_sent += other.live_sent
        self.live_received += other.live_received
        self.sources += other.sources
        self.rss = None if self.rss is None or other.rss is None else self.rss + other.rss
        self.workers += 1


def render_metrics(snap: Snapshot, limits: AdmissionLimits) -> str:
    """The reflector's `/metrics` body from `snap` (one process's, or every worker's summed)
    and the reflector's caps."""
    counters, live = snap.counters, snap.live
    sent = counters.bytes_sent + snap.live_sent
    received = counters.bytes_received + snap.live_received
    p = PromText()
    p.metric("netprobe_reflector_sessions", "gauge",
             "Sessions open now, by kind and state.",
             [(labels(kind=k, state=st), live[(k, st)]) for k in KINDS
              for st in ("connecting", "connected")])
    p.metric("netprobe_reflector_session_limit", "gauge",
             "Concurrent sessions allowed, by kind.",
             [(labels(kind="check"), limits.max_checks),
              (labels(kind="monitor"), limits.max_monitors)])
    p.metric("netprobe_reflector_sessions_started_total", "counter",
             "Sessions admitted, by kind.",
             [(labels(kind=k), counters.started[k]) for k in KINDS])
    p.metric("netprobe_reflector_sessions_ended_total", "counter",
             "Sessions ended, by kind and reason.",
             [(labels(kind=k, reason=r), counters.ended[(k, r)]) for k in KINDS
              for r in END_REASONS])
    p.metric("netprobe_reflector_offers_refused_total", "counter",
             "Offers refused, by error code.",
             [(labels(reason=c), counters.refused[c]) for c in (*REFUSAL_CODES, "other")])
    p.metric("netprobe_reflector_bytes_total", "counter",
             "Bytes of media sent and received by sessions (DTLS transport).",
             [(labels(direction="sent"), sent), (labels(direction="received"), received)])
    p.metric("netprobe_reflector_rate_limit_sources", "gauge",
             "Source addresses the rate limiter remembers (summed over workers).",
             [("", snap.sources)])
    p.metric("netprobe_reflector_workers", "gauge",
             "Worker processes whose figures this answer sums.", [("", snap.workers)])
    p.metric("netprobe_reflector_draining", "gauge",
             "1 while the reflector drains (SIGTERM): it takes no new session.",
             [("", int(snap.draining))])
    p.metric("process_cpu_seconds_total", "counter",
             "User and system CPU time of the reflector's processes, seconds.",
             [("", snap.cpu_s)])
    p.metric("process_resident_memory_bytes", "gauge", "Resident memory, bytes (summed).",
             [("", snap.rss)])
    return p.text()


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - not available here: leave the sample out
        return None


def _libc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass


class MemoryTrimmer:
    """Gives the memory that ended sessions left on glibc's heap back to the system
    (`malloc_trim`, in a thread) once the reflector has been idle for `after_s`. Without it a
    reflector keeps the peak of its busiest minute as RSS (scripts/fuzz_reflector.py: about
    15 MB of the ~30 MB an attack of 40 concurrent peer connections leaves)."""

    def __init__(self, idle: Callable[[], bool], after_s: float = 2.0,
                 trim: Callable[[], None] = _libc_trim) -> None:
        self._idle = idle
        self._trim = trim
        self._after_s = after_s
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def became_idle(self) -> None:
        """Call when the last session ended: a trim follows if nothing starts meanwhile."""
        if sys.platform != "linux" or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self._after_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self._idle():
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._trim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


async def either_set(a: asyncio.Event, b: asyncio.Event, timeout: float) -> bool:
    """Wait until `a` or `b` is set, at most `timeout` seconds; whether one was."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return bool(done)


def error_code(response: web.StreamResponse) -> str:
    """The `error.code` of a documented JSON error response, or "other"."""
    try:
        body = json.loads(getattr(response, "body", b"") or b"")
        code = body["error"]["code"]
    except Exception:  # noqa: BLE001 - not our JSON error: counted as "other"
        return "other"
    return code if isinstance(code, str) else "other"

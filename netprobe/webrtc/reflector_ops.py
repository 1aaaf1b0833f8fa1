"""The reflector's operations side: who is asking (the client's address, behind trusted proxies
only), the keyed hash that stands for that address in logs, the counters and the `GET /metrics`
text (docs/reflector.md, "Logs and metrics").

The decisions themselves (caps, rate limit, which X-Forwarded-For entry to believe) are pure, in
`netprobe.core.admission`; this module holds the I/O around them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
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


def render_metrics(counters: ReflectorCounters, sessions: list[Any], limits: AdmissionLimits,
                   sources_tracked: int) -> str:
    """The reflector's `/metrics` body. `sessions`: the live sessions (`.kind`, `.connected`,
    `.pc`)."""
    live: Counter[tuple[str, str]] = Counter()
    sent, received = counters.bytes_sent, counters.bytes_received
    for s in sessions:
        live[(s.kind, "connected" if s.connected.is_set() else "connecting")] += 1
        s_sent, s_received = transport_bytes(s.pc)
        sent += s_sent
        received += s_received
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
             "Source addresses the rate limiter remembers.", [("", sources_tracked)])
    p.metric("process_cpu_seconds_total", "counter",
             "User and system CPU time of the reflector process, seconds.",
             [("", time.process_time())])
    p.metric("process_resident_memory_bytes", "gauge", "Resident memory, bytes.",
             [("", _rss_bytes())])
    return p.text()


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - not available here: leave the sample out
        return None


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

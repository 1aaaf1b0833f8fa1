"""The reflector's side of one probe session, as a pure state machine (`now` passed in).

It answers every probe with an echo that also reports what the reflector measured on the
uplink, counts the client's uplink load per rung, and tells the engine which downlink rung
the client asked for. If the client's probes stop arriving, the downlink load stops too.

Everything a client asks of it is capped (lesson 11; `ResponderLimits`): the downlink rate,
packet size, packet rate and duration of a rung, the rungs and bytes of a session, the rate of
probes it answers and of load packets it counts. Packets refused for a cap, and malformed ones
the reflector counts with `refuse`, add up; `end_reason` tells the reflector when a session has
been refused too much, or has gone silent, and is to be closed.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    MAX_TIMED_ARRIVALS,
    PROBE_OVERHEAD_BYTES,
    JitterEstimator,
    RungArrivals,
    SequenceTracker,
    wire_interval_s,
)
from netprobe.core.wire import (
    LOAD_MAX_SIZE,
    MAX_DELAY_S,
    MAX_TAIL_KBPS,
    NO_RUNG,
    PROBE_MIN_SIZE,
    Echo,
    Load,
    Probe,
    RungReport,
    encode_load,
)

#: Largest probe payload counted, bytes (a probe is a small packet; a bigger one counts as
#: this much, so the share of the link a client's probes claim stays bounded).
MAX_PROBE_SIZE = 1500
#: A probe counts as lost only once this many later probes have arrived: a probe that is
#: merely overtaken (reordering, jitter) must not count as lost, then found.
REORDER_WINDOW = 10
#: Stop the downlink load when no probe arrived for this long (seconds).
REQUEST_TTL = 1.0
#: Report this many of the most recent rungs in each echo (rungs are sent one at a time, so
#: the latest is the one being measured; keeping echoes small keeps slow links unloaded).
REPORTED_UP_RUNGS = 1
REPORTED_DOWN_RUNGS = 2
#: Smallest downlink load payload the reflector sends (bytes).
MIN_DOWN_PAYLOAD = 64

# Caps on what one client can make the reflector do. Constants, not settings: a clinic has no
# reason to change them, except the downlink rate (`[reflector] max_down_kbps`).
#: Default top downlink rate (kbit/s): the default ladder's top rung.
DEFAULT_MAX_DOWN_KBPS = 3200
#: Most downlink packets per second one rung may ask for: a faster request gets bigger
#: packets (the same rate), up to `LOAD_MAX_SIZE`. The default ladder sends ~300/s.
MAX_DOWN_PPS = 1000
#: Longest a downlink rung may be sent (seconds; the client's settings allow at most 30).
MAX_RUNG_S = 30.0
#: Distinct rungs a session may ask for downlink, and send uplink (the default ladder: 4).
MAX_RUNGS = 16
#: Downlink bytes per session: this many seconds at the top rate (4 MB at 3.2 Mbit/s; the
#: default ladder's check takes 0.55 MB).
DOWN_BUDGET_S = 10.0
#: Probes answered per second, with a burst allowance (a check probes 50/s, at most 200/s).
PROBE_RATE = 250.0
PROBE_BURST = 100
#: Uplink load packets counted per second, with a burst allowance (the default ladder's
#: top rung: ~300/s).
LOAD_RATE = 2000.0
LOAD_BURST = 500
#: Refused packets (malformed, over a rate, beyond a cap) after which a session is closed.
MAX_REFUSED = 1000
#: A session whose probes stopped for this long is closed (seconds; checks probe at least
#: every 0.5 s, monitoring streams every 10-5000 ms).
SILENCE_S = 10.0
#: A session whose first probe has not come this long after its answer is closed (seconds; a
#: client gives up connecting after 12).
FIRST_PROBE_S = 30.0

_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class ResponderLimits:
    """What one session may ask of the reflector (see the module's constants)."""

    max_down_kbps: int = DEFAULT_MAX_DOWN_KBPS
    """Top downlink rate a client may ask for (kbit/s of wire bytes); faster asks get this."""
    max_down_pps: int = MAX_DOWN_PPS
    max_rung_s: float = MAX_RUNG_S
    max_rungs: int = MAX_RUNGS
    down_budget_s: float = DOWN_BUDGET_S
    probe_rate: float = PROBE_RATE
    probe_burst: int = PROBE_BURST
    load_rate: float = LOAD_RATE
    load_burst: int = LOAD_BURST
    max_refused: int = MAX_REFUSED
    silence_s: float = SILENCE_S
    first_probe_s: float = FIRST_PROBE_S

    @property
    def max_down_bytes(self) -> int:
        """Downlink payload bytes one session may be sent."""
        return int(self.max_down_kbps * 125 * self.down_budget_s)

    def down_payload(self, rate_kbps: int, asked: int) -> int:
        """The payload size to send a rung of `rate_kbps` in: what the client asked for, at
        least `MIN_DOWN_PAYLOAD` and big enough for `max_down_pps`, at most `LOAD_MAX_SIZE`."""
        for_pps = math.ceil(rate_kbps * 125 / self.max_down_pps) - LOAD_OVERHEAD_BYTES
        return min(max(asked, MIN_DOWN_PAYLOAD, for_pps), LOAD_MAX_SIZE)


class _Bucket:
    """A token bucket: `rate` per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = float(burst), -math.inf

    def take(self, now: float) -> bool:
        if self._at == -math.inf:
            self._at = now
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class DownRequest:
    rung: int
    rate_kbps: int
    payload_size: int
    duration_s: float

    @property
    def packet_size(self) -> int:
        """Payload bytes of each packet sent (at least `MIN_DOWN_PAYLOAD`)."""
        return max(self.payload_size, MIN_DOWN_PAYLOAD)

    @property
    def interval(self) -> float:
        """Seconds between packets for the requested rate (wire bytes)."""
        return wire_interval_s(self.packet_size + LOAD_OVERHEAD_BYTES, self.rate_kbps)


class Responder:
    def __init__(self, limits: ResponderLimits | None = None,
                 started_at: float | None = None) -> None:
        """`started_at`: when the session was answered (the first probe is due within
        `first_probe_s`); None: no such deadline."""
        self.limits = limits or ResponderLimits()
        self._started_at = started_at
        self._last_probe_at: float | None = None
        self._probe_bucket = _Bucket(self.limits.probe_rate, self.limits.probe_burst)
        self._load_bucket = _Bucket(self.limits.load_rate, self.limits.load_burst)
        self.refused: Counter[str] = Counter()
        """Packets refused, by reason: `malformed`, `probe_rate`, `load_rate`, `rungs`."""
        self.down_bytes = 0
        """Downlink load payload bytes sent so far."""
        self._probes = SequenceTracker()
        self._probe_arrivals: deque[tuple[float, int]] = deque(maxlen=MAX_TIMED_ARRIVALS)
        self._jitter = JitterEstimator()
        self._echo_seq = 0
        self._up: dict[int, RungArrivals] = {}
        self._request: DownRequest | None = None
        self._request_at = 0.0
        self._down_started: dict[int, float] = {}
        self._down_finished: set[int] = set()
        self._down_seq = 0
        self._down_sent: dict[int, int] = {}
        self.probes_seen = 0
        """Probe packets received, duplicates included."""
        self.draining = False
        """Set when the reflector drains: every later echo says so (`Echo.draining`)."""

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def refuse(self, reason: str, count: int = 1) -> None:
        """Count packets refused before they reached the responder (e.g. `malformed`)."""
        self.refused[reason] += count

    def end_reason(self, now: float) -> str | None:
        """Why the session is to be closed now, or None: `refused` (more than `max_refused`
        packets refused), `silent` (no probe for `silence_s`, or none within `first_probe_s`
        of the answer)."""
        if self.refused_total > self.limits.max_refused:
            return "refused"
        due = self.silence_deadline()
        return "silent" if due is not None and now >= due else None

    def silence_deadline(self) -> float | None:
        """When the session counts as silent unless a probe arrives first (None: never)."""
        if self._last_probe_at is not None:
            return self._last_probe_at + self.limits.silence_s
        if self._started_at is not None:
            return self._started_at + self.limits.first_probe_s
        return None

    def on_probe(self, probe: Probe, now: float, size: int | None = None) -> bool:
        """Take a probe (of `size` payload bytes) in; False if it is refused (over the probe
        rate): not to be echoed."""
        if not self._probe_bucket.take(now):
            self.refused["probe_rate"] += 1
            return False
        self.probes_seen += 1
        self._last_probe_at = now
        if not self._probes.add(probe.seq):
            return True
        # the probes share the uplink with its rungs: their tails count them (`tails`)
        self._probe_arrivals.append((now, PROBE_OVERHEAD_BYTES + (
            PROBE_MIN_SIZE if size is None else min(size, MAX_PROBE_SIZE))))
        self._jitter.update(probe.sent_at, now)
        if probe.seq < self._probes.highest:
            return True  # a late, reordered probe carries a stale request
        self._request_at = now
        if probe.down_rung == NO_RUNG or probe.down_rate_kbps <= 0:
            self._finish_current()
            return True
        if probe.down_rung in self._down_started:
            return True  # already sending it, or already sent it: never restart a rung
        self._finish_current()
        limits = self.limits
        if len(self._down_started) >= limits.max_rungs:
            self.refused["rungs"] += 1
            return True
        rate = min(probe.down_rate_kbps, limits.max_down_kbps)
        self._request = DownRequest(probe.down_rung, rate,
                                    limits.down_payload(rate, probe.down_size),
                                    min(probe.down_duration_ms / 1000, limits.max_rung_s))
        self._down_started[probe.down_rung] = now
        self._down_sent.setdefault(probe.down_rung, 0)
        return True

    def _finish_current(self) -> None:
        if self._request is not None:
            self._down_finished.add(self._request.rung)
            self._request = None

    def echo(self, probe: Probe, received_at: float, now: float) -> Echo:
        """The echo answering `probe` (received at `received_at`), to be sent at `now`."""
        self.down_request(now)  # marks a rung finished once its time is up
        settled, settled_received = self._probes.settled(REORDER_WINDOW)
        recent = sorted(self._up)[-REPORTED_UP_RUNGS:]
        reports = tuple(  # counts a u32 cannot hold would stop the echo stream: clamped
            RungReport(i, min(c.seqs.received, _U32), min(c.payload_bytes, _U32), c.first_at,
                       c.last_at, c.seqs.lowest or 0, max(c.seqs.highest, 0),
                       *(min(x or 0.0, MAX_TAIL_KBPS) for x in c.tails(self._probe_arrivals)))
            for i in recent for c in (self._up[i],)
        )
        down = tuple((i, self._down_sent[i], i in self._down_finished)
                     for i in sorted(self._down_sent)[-REPORTED_DOWN_RUNGS:])
        echo = Echo(
            seq=self._echo_seq,
            sent_at=now,
            probe_seq=probe.seq,
            probe_sent_at=probe.sent_at,
            hold=min(max(0.0, now - received_at), MAX_DELAY_S),
            up_probes_received=min(settled_received, _U32),
            up_probes_highest=settled,
            up_jitter=min(self._jitter.jitter, MAX_DELAY_S),
            up_rungs=reports,
            down_sent=down,
            draining=self.draining,
        )
        self._echo_seq += 1
        return echo

    def on_up_load(self, load: Load, payload_size: int, now: float) -> None:
        if load.rung < 0:
            return
        if not self._load_bucket.take(now):
            self.refused["load_rate"] += 1
            return
        arrivals = self._up.get(load.rung)
        if arrivals is None:
            if len(self._up) >= self.limits.max_rungs:
                self.refused["rungs"] += 1
                return
            arrivals = self._up[load.rung] = RungArrivals()
        arrivals.add(load.seq, payload_size, now, load.sent_at)

    def down_request(self, now: float) -> DownRequest | None:
        """The downlink rung to send now, or None: none asked for, its time is up, or the
        client went quiet (no probe for `REQUEST_TTL` seconds)."""
        request = self._request
        if request is None:
            return None
        if now - self._down_started[request.rung] >= request.duration_s or \
                now - self._request_at > REQUEST_TTL or \
                self.down_bytes + request.packet_size > self.limits.max_down_bytes:
            self._finish_current()
            return None
        return request

    def next_down_load(self, request: DownRequest, now: float) -> Load:
        load = Load(request.rung, self._down_seq, now)
        self._down_seq += 1
        self._down_sent[request.rung] = self._down_sent.get(request.rung, 0) + 1
        self.down_bytes += request.packet_size
        return load

    def down_step(self, now: float) -> tuple[float, Callable[[float], bytes]] | None:
        """The downlink load pacer's schedule: (seconds to the next packet, build(send
        time)), or None while no rung is to be sent (a probe may ask for one: wake the
        pacer then)."""
        request = self.down_request(now)
        if request is None:
            return None
        return request.interval, lambda at: encode_load(self.next_down_load(request, at),
                                                        request.packet_size)

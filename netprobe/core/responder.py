"""The reflector's side of one probe session, as a pure state machine (`now` passed in).

It answers every probe with an echo that also reports what the reflector measured on the
uplink, counts the client's uplink load per rung, and tells the engine which downlink rung
the client asked for. If the client's probes stop arriving, the downlink load stops too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    JitterEstimator,
    RungArrivals,
    SequenceTracker,
    wire_interval_s,
)
from netprobe.core.wire import NO_RUNG, Echo, Load, Probe, RungReport, encode_load

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
    def __init__(self) -> None:
        self._probes = SequenceTracker()
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

    def on_probe(self, probe: Probe, now: float) -> None:
        self.probes_seen += 1
        if not self._probes.add(probe.seq):
            return
        self._jitter.update(probe.sent_at, now)
        if probe.seq < self._probes.highest:
            return  # a late, reordered probe carries a stale request
        self._request_at = now
        if probe.down_rung == NO_RUNG or probe.down_rate_kbps <= 0:
            self._finish_current()
            return
        if probe.down_rung in self._down_started:
            return  # already sending it, or already sent it: never restart a rung
        self._finish_current()
        self._request = DownRequest(probe.down_rung, probe.down_rate_kbps,
                                    max(probe.down_size, 1), probe.down_duration_ms / 1000)
        self._down_started[probe.down_rung] = now
        self._down_sent.setdefault(probe.down_rung, 0)

    def _finish_current(self) -> None:
        if self._request is not None:
            self._down_finished.add(self._request.rung)
            self._request = None

    def echo(self, probe: Probe, received_at: float, now: float) -> Echo:
        """The echo answering `probe` (received at `received_at`), to be sent at `now`."""
        self.down_request(now)  # marks a rung finished once its time is up
        settled, settled_received = self._probes.settled(REORDER_WINDOW)
        recent = sorted(self._up)[-REPORTED_UP_RUNGS:]
        reports = tuple(
            RungReport(i, c.seqs.received, c.payload_bytes, c.first_at, c.last_at,
                       c.seqs.lowest or 0, max(c.seqs.highest, 0))
            for i in recent for c in (self._up[i],)
        )
        down = tuple((i, self._down_sent[i], i in self._down_finished)
                     for i in sorted(self._down_sent)[-REPORTED_DOWN_RUNGS:])
        echo = Echo(
            seq=self._echo_seq,
            sent_at=now,
            probe_seq=probe.seq,
            probe_sent_at=probe.sent_at,
            hold=max(0.0, now - received_at),
            up_probes_received=settled_received,
            up_probes_highest=settled,
            up_jitter=self._jitter.jitter,
            up_rungs=reports,
            down_sent=down,
        )
        self._echo_seq += 1
        return echo

    def on_up_load(self, load: Load, payload_size: int, now: float) -> None:
        if load.rung < 0:
            return
        self._up.setdefault(load.rung, RungArrivals()).add(load.seq, payload_size, now)

    def down_request(self, now: float) -> DownRequest | None:
        """The downlink rung to send now, or None: none asked for, its time is up, or the
        client went quiet (no probe for `REQUEST_TTL` seconds)."""
        request = self._request
        if request is None:
            return None
        if now - self._down_started[request.rung] >= request.duration_s or \
                now - self._request_at > REQUEST_TTL:
            self._finish_current()
            return None
        return request

    def next_down_load(self, request: DownRequest, now: float) -> Load:
        load = Load(request.rung, self._down_seq, now)
        self._down_seq += 1
        self._down_sent[request.rung] = self._down_sent.get(request.rung, 0) + 1
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

"""How the test streams are spaced on the wire (pure: `now` is always an argument).

One home for what the senders, the session's probe pacing, the lab's RTT truth and the
simulation all need: the sizes of probe and echo packets on the wire, the spacing of a
paced stream, and the timetable a pacer keeps. The asyncio `Pacer` (webrtc/engine.py) and
the simulation's pacer both drive a `Timetable`; neither polls: a paused stream waits until
it is woken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from netprobe.core.measure import PROBE_OVERHEAD_BYTES, wire_interval_s
from netprobe.core.responder import REPORTED_DOWN_RUNGS, REPORTED_UP_RUNGS
from netprobe.core.wire import Echo, RungReport, encode_echo

#: An echo's payload before the ladder runs (no rung reports, no downlink counts), bytes.
MIN_ECHO_PAYLOAD = len(encode_echo(Echo(0, 0.0, 0, 0.0, 0.0, 0, 0, 0.0)))
#: A typical echo's payload once the ladder runs: as many uplink rung reports and downlink
#: counts as the responder puts in one (`REPORTED_UP_RUNGS`, `REPORTED_DOWN_RUNGS`).
TYPICAL_ECHO_PAYLOAD = len(encode_echo(Echo(
    0, 0.0, 0, 0.0, 0.0, 0, 0, 0.0,
    tuple(RungReport(i, 0, 0, 0.0, 0.0, 0, 0) for i in range(REPORTED_UP_RUNGS)),
    tuple((i, 0, False) for i in range(REPORTED_DOWN_RUNGS)))))
#: Echo sizes on the wire (IP bytes). Measured on a loopback check (aiortc 1.16): echoes of
#: 46, 87 and 94 payload bytes (110, 151 and 158 IP bytes), the typical one 94 (one uplink
#: rung report, two downlink counts); probes of 40 payload bytes, 104 IP bytes.
MIN_ECHO_WIRE_BYTES = MIN_ECHO_PAYLOAD + PROBE_OVERHEAD_BYTES
ECHO_WIRE_BYTES = TYPICAL_ECHO_PAYLOAD + PROBE_OVERHEAD_BYTES


def probe_wire_bytes(probe_size: int) -> int:
    """A probe of `probe_size` payload bytes on the wire (IP bytes)."""
    return probe_size + PROBE_OVERHEAD_BYTES


def serialisation_ms(wire_bytes: int, rate_kbps: float | None) -> float:
    """Time a bottleneck of `rate_kbps` takes to pass one packet (ms); 0 without a limit."""
    if rate_kbps is None or rate_kbps <= 0:
        return 0.0
    return 1000 * wire_interval_s(wire_bytes, rate_kbps)


T = TypeVar("T")
#: `step(now)`: the packet to send now and the interval until the next one, or None to pause.
Step = Callable[[float], "tuple[float, T] | None"]


class Timetable(Generic[T]):
    """A paced stream's absolute timetable: when its next packet is due.

    Sending follows the timetable, so a late timer does not lower the average rate; a
    backlog of more than `max_lag` seconds is dropped, not burst out. A stream whose step
    says "nothing to send" pauses until its sender is woken (`advance` returns None).
    """

    def __init__(self, max_lag: float = 0.05) -> None:
        self.max_lag = max_lag
        self._due: float | None = None

    def advance(self, now: float, step: Step[T]) -> tuple[T | None, float | None]:
        """(packet to send at `now` or None, when to call again): a time, or None to wait
        until woken (the stream paused)."""
        if self._due is None or now - self._due > self.max_lag:
            self._due = now
        if now < self._due:
            return None, self._due
        got = step(now)
        if got is None:
            self._due = None
            return None, None
        interval, packet = got
        self._due += interval
        return packet, self._due

"""Throughput from the TCP speed test's timings (netprobe.tcpspeed; docs/reflector.md, "TCP
speed test"). Pure: every time is passed in (seconds on any one clock).

- `sliced_rate`: a download's rate from its reads `(time, bytes)`, as speedtest.net computes
  it: the slowest and fastest time slices left out (TCP's slow start, and a stall and burst
  around a lost packet, are not the link's rate).
- `busy_rate`: an upload's rate from its bodies `(start, confirmed, bytes)`: the bytes over
  the time at least one body was crossing the link, so the idle time between bodies (a new
  connection's handshake, the wait for the server's answer) does not count against the link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """A measured rate, and the bytes and time it was measured over."""

    bps: float
    """Bytes per second (0.0 when nothing could be measured)."""
    bytes: int
    """Bytes counted."""
    seconds: float
    """Time they took."""


NOTHING = Rate(0.0, 0, 0.0)


def sliced_rate(reads: Sequence[tuple[float, int]], slices: int = 20,
                min_slice_s: float = 0.05, slowest: float = 0.3, fastest: float = 0.1) -> Rate:
    """speedtest.net's method (its Flash-era test): the time from the first read to the last
    cut into `slices` equal slices (fewer if they would be shorter than `min_slice_s`), the
    slowest 30 % and the fastest 10 % left out (TCP's slow start, a stall while a lost packet
    is sent again and the burst that follows it), the rest averaged. The first read's own
    bytes are not counted: they came before the first slice. Over a link that keeps losing
    packets this says what the link carries when TCP keeps it busy, more than one transfer
    would get through the losses."""
    if len(reads) < 2:
        return NOTHING
    reads = sorted(reads)
    first, span = reads[0][0], reads[-1][0] - reads[0][0]
    if span <= 0:
        return NOTHING
    n = max(1, min(slices, int(span / min_slice_s)))
    width = span / n
    counts = [0] * n
    for t, b in reads[1:]:
        counts[min(n - 1, int((t - first) / width))] += b
    kept = sorted(counts)[round(slowest * n):n - round(fastest * n)] or sorted(counts)
    return Rate(sum(kept) / (len(kept) * width), sum(kept), len(kept) * width)


def busy_rate(bodies: Sequence[tuple[float, float, int]], rtt_s: float) -> Rate:
    """Bytes per second over the union of the bodies' transfer times. A body `(start,
    confirmed, bytes)` started to flow at `start` (its connection open) and had all arrived
    one round trip `rtt_s` before its confirmation came back; at most half its time is taken
    off for that round trip, so a wrong `rtt_s` can at most double the rate."""
    spans = []
    counted = 0
    for start, confirmed, n in bodies:
        if confirmed <= start or n <= 0:
            continue
        spans.append((start, max(confirmed - max(0.0, rtt_s), (start + confirmed) / 2)))
        counted += n
    seconds, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            seconds += end - max(start, reach)
            reach = end
    return Rate(counted / seconds, counted, seconds) if seconds > 0 else NOTHING

"""Driving a sans-I/O `Link` in tests: its own deadlines, and a stream of arrivals."""

from __future__ import annotations

import math

from netprobe.lab.link import Link


def drain(link: Link[int], until: float = math.inf) -> list[tuple[int, float]]:
    """Run the link's own deadlines up to ``until``: (packet, exact release time)."""
    out: list[tuple[int, float]] = []
    while (deadline := link.next_deadline()) is not None and deadline <= until:
        out.extend((p, deadline) for p in link.due(deadline))
    return out


def run_stream(link: Link[int], arrivals: list[tuple[float, int]]) -> list[tuple[int, float]]:
    """Feed (time, size) arrivals in order, releasing everything due on the way."""
    out: list[tuple[int, float]] = []
    for i, (t, size) in enumerate(arrivals):
        out += drain(link, t)
        link.submit(i, size, t)
        out += [(p, t) for p in link.due(t)]
    return out + drain(link)

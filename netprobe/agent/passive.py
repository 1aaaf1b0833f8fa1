"""Passive signals from the machine itself (psutil adapter): is the default network
interface up, has it changed, how busy are the processor and the interface."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROUTE_TABLE = Path("/proc/net/route")


@dataclass(frozen=True)
class PassiveState:
    interface_up: bool = True
    """The default interface exists and is up (True when it cannot be told)."""
    interface_index: int | None = None
    """OS index of the default interface (never its name: names can be personal)."""
    cpu_percent: float | None = None
    """Processor use over the last sample, percent of all cores."""
    rx_kbps: float | None = None
    """Traffic received on the default interface, kbit/s."""
    tx_kbps: float | None = None
    """Traffic sent on the default interface, kbit/s."""
    rx_bytes: int | None = None
    """Bytes received on it so far (the OS counter; for call detection, `core.calls`)."""
    tx_bytes: int | None = None
    """Bytes sent on it so far."""

    def to_json(self) -> dict[str, Any]:
        return {
            "interface_up": self.interface_up,
            "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1),
            "rx_kbps": None if self.rx_kbps is None else round(self.rx_kbps),
            "tx_kbps": None if self.tx_kbps is None else round(self.tx_kbps),
        }


def default_interface() -> str | None:
    """The interface of the default route (Linux), else the busiest non-loopback one."""
    try:
        for line in ROUTE_TABLE.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
                return fields[0]
    except OSError:
        pass
    stats = psutil.net_if_stats()
    counters = psutil.net_io_counters(pernic=True)
    candidates = [n for n, s in stats.items() if s.isup and not n.startswith("lo")]
    if not candidates:
        return None
    return max(candidates, key=lambda n: counters[n].bytes_recv if n in counters else 0)


class PassiveSampler:
    """Call `sample()` about once a second; it returns a change to report, or None.
    `interface`: watch this one (`[agent] interface`) instead of the default route's."""

    def __init__(self, interface: str = "") -> None:
        self.state = PassiveState()
        self.interface = interface
        self._iface: str | None = None
        self._last: tuple[float, int, int] | None = None
        self._sampled = False
        psutil.cpu_percent(None)  # prime: the first call measures nothing

    def sample(self) -> str | None:
        iface = self.interface or default_interface()
        stats = psutil.net_if_stats()
        up = iface is not None and iface in stats and stats[iface].isup
        rx = tx = None
        counters = psutil.net_io_counters(pernic=True).get(iface or "")
        now = time.monotonic()
        if counters is not None:
            if self._last is not None and iface == self._iface and now > self._last[0]:
                span = now - self._last[0]
                rx = (counters.bytes_recv - self._last[1]) * 8 / span / 1000
                tx = (counters.bytes_sent - self._last[2]) * 8 / span / 1000
            self._last = (now, counters.bytes_recv, counters.bytes_sent)
        change = None
        if self._sampled:
            if self.state.interface_up and not up:
                change = "interface_down"
            elif not self.state.interface_up and up:
                change = "interface_up"
            elif iface != self._iface:
                change = "default_route_changed"
        self._sampled = True
        self._iface = iface
        index = None
        if iface is not None:
            try:
                index = socket.if_nametoindex(iface)
            except OSError:
                index = None
        self.state = PassiveState(up, index, psutil.cpu_percent(None), rx, tx,
                                  None if counters is None else counters.bytes_recv,
                                  None if counters is None else counters.bytes_sent)
        return change

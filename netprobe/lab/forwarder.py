"""The asyncio adapter around `Link`: TUN fds in, due packets out, on precise timers.

Per direction, a reader callback on the sending side's TUN fd stamps each packet with the
monotonic clock and submits it to that direction's `Link`; a ``timerfd`` armed at the link's
`Link.next_deadline` wakes the loop to write what is due to the other TUN fd. Callbacks rather
than tasks: they cost less per packet, and the `Forwarder` owns all of them (readers, timers,
phase switches), so `Forwarder.aclose` leaves nothing running.

Why a timerfd: asyncio's own timers go through ``epoll_wait``, whose timeout is rounded *up* to
a whole millisecond, so every delayed packet would come out 0-1 ms late (about +0.5 ms on
average per direction, +1 ms on a round trip). A CLOCK_MONOTONIC timerfd with an absolute
deadline fires within tens of microseconds. All times are ``time.monotonic()`` (the same
CLOCK_MONOTONIC), also the lab's epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import time
from dataclasses import dataclass

from netprobe.lab.errors import LabError
from netprobe.lab.link import Link, LinkStats
from netprobe.lab.profiles import Phase, Profile

logger = logging.getLogger(__name__)

_READ_BATCH = 256  # packets read per readiness callback before yielding to the loop
_MAX_PACKET = 65535

#: IP protocol number (IPv4 ``protocol``, IPv6 ``next header``) of UDP.
IPPROTO_UDP = 17

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


def is_udp(packet: bytes) -> bool:
    """Whether an IP packet carries UDP: IPv4 protocol 17 (every fragment of a UDP datagram
    carries it) or IPv6 next header 17 (the fixed header's; extension headers are not
    followed). Too short to tell: False."""
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        return len(packet) >= 20 and packet[9] == IPPROTO_UDP
    if version == 6:
        return len(packet) >= 40 and packet[6] == IPPROTO_UDP
    return False


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)


class _TimerFd:
    """A one-shot CLOCK_MONOTONIC timer as a file descriptor (Linux ``timerfd``)."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise LabError(f"timerfd_create failed: {os.strerror(ctypes.get_errno())}")
        self.fd: int = fd
        self._spec = _Itimerspec()

    def arm(self, when: float | None) -> None:
        """Fire at monotonic time ``when`` (at once if it has passed); None disarms."""
        value = self._spec.it_value
        if when is None:
            value.tv_sec, value.tv_nsec = 0, 0
        else:
            sec = int(when)
            nsec = math.ceil((when - sec) * 1e9)
            if nsec >= 1_000_000_000:
                sec, nsec = sec + 1, nsec - 1_000_000_000
            value.tv_sec, value.tv_nsec = sec, max(nsec, 1 if sec == 0 else 0)
        if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) < 0:
            raise LabError(f"timerfd_settime failed: {os.strerror(ctypes.get_errno())}")

    def acknowledge(self) -> None:
        """Consume the expiry so the fd stops being readable."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class LabStats:
    """Counters of the emulated link since the lab started."""

    up: LinkStats
    """Client to server."""
    down: LinkStats
    """Server to client."""
    ignored: int
    """Packets that were not IPv4 (IPv6 is not carried) and were dropped unseen by the links."""
    write_errors: int
    """Due packets the kernel refused to take back (should stay 0)."""


class _Direction:
    """One direction: the link, where its packets come from and go to, and its timer."""

    __slots__ = ("name", "link", "out_fd", "timer", "armed")

    def __init__(self, name: str, link: Link[bytes], out_fd: int) -> None:
        self.name = name
        self.link = link
        self.out_fd = out_fd
        self.timer = _TimerFd()
        self.armed: float | None = None


class Forwarder:
    """Moves packets between the client and server TUN fds through a `Profile`'s links.

    `start` registers everything on the running loop and fixes the lab's epoch (time zero for
    outages, traces and phases); `aclose` (or `close`) unregisters it all. The fds stay owned
    by the caller.
    """

    def __init__(self, client_fd: int, server_fd: int, profile: Profile) -> None:
        self._client_fd = client_fd
        self._server_fd = server_fd
        self._profile = profile
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up: _Direction | None = None
        self._down: _Direction | None = None
        self._phase_handles: list[asyncio.TimerHandle] = []
        self._ignored = 0
        self._write_errors = 0
        self.epoch = 0.0
        """Monotonic time at which the forwarder started (the lab's time zero)."""

    def start(self) -> None:
        """Start forwarding on the running event loop."""
        if self._loop is not None:
            raise LabError("the forwarder is already started")
        loop = asyncio.get_running_loop()
        self.epoch = now = time.monotonic()
        profile = self._profile
        up = _Direction("up", Link(profile.up, epoch=now), self._server_fd)
        down = _Direction("down", Link(profile.down, epoch=now), self._client_fd)
        self._loop, self._up, self._down = loop, up, down
        loop.add_reader(self._client_fd, self._on_readable, self._client_fd, up)
        loop.add_reader(self._server_fd, self._on_readable, self._server_fd, down)
        for direction in (up, down):
            loop.add_reader(direction.timer.fd, self._on_timer, direction)
        for phase in profile.phases:
            handle = loop.call_later(phase.start_s, self._switch, phase)
            self._phase_handles.append(handle)

    def stats(self) -> LabStats:
        """Counters so far (zeros before `start`)."""
        if self._up is None or self._down is None:
            zero = LinkStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
            return LabStats(zero, zero, 0, 0)
        return LabStats(
            self._up.link.stats(), self._down.link.stats(), self._ignored, self._write_errors
        )

    def close(self) -> None:
        """Stop forwarding: unregister readers, timers and pending phase switches."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for handle in self._phase_handles:
            handle.cancel()
        self._phase_handles.clear()
        for fd in (self._client_fd, self._server_fd):
            loop.remove_reader(fd)
        for direction in (self._up, self._down):
            if direction is not None:
                loop.remove_reader(direction.timer.fd)
                direction.timer.close()

    async def aclose(self) -> None:
        """Async spelling of `close`, for ``async with``-style owners."""
        self.close()

    # -- callbacks ----------------------------------------------------------------------------

    def _on_readable(self, fd: int, direction: _Direction) -> None:
        submit = direction.link.submit
        block_udp = direction.link.config.block_udp
        clock = time.monotonic
        for _ in range(_READ_BATCH):
            try:
                packet = os.read(fd, _MAX_PACKET)
            except BlockingIOError:
                break
            except OSError as exc:  # the device went away: the lab is closing
                logger.debug("read from %s side failed: %s", direction.name, exc)
                break
            if not packet or packet[0] >> 4 != 4:
                self._ignored += 1
                continue
            submit(packet, len(packet), clock(), udp=block_udp and is_udp(packet))
        self._service(direction, clock())

    def _on_timer(self, direction: _Direction) -> None:
        direction.timer.acknowledge()
        direction.armed = None
        self._service(direction, time.monotonic())

    def _switch(self, phase: Phase) -> None:
        now = time.monotonic()
        logger.info("link phase at %.1f s: up %s, down %s", phase.start_s, phase.up, phase.down)
        for direction, config in ((self._up, phase.up), (self._down, phase.down)):
            if direction is not None:
                direction.link.reconfigure(config, now)
                self._service(direction, now)

    def _service(self, direction: _Direction, now: float) -> None:
        """Write what is due, then arm the timer for the next deadline."""
        out_fd = direction.out_fd
        for packet in direction.link.due(now):
            try:
                os.write(out_fd, packet)
            except OSError as exc:
                self._write_errors += 1
                logger.debug("write to %s side failed: %s", direction.name, exc)
        deadline = direction.link.next_deadline()
        if deadline != direction.armed:
            direction.timer.arm(deadline)
            direction.armed = deadline

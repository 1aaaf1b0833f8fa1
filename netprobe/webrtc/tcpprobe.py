"""TCP handshakes with the reflector while an offer waits for its answer: evidence of loss.

On a link that loses a third of its packets, the offer's own HTTP exchange can take many
seconds (each lost SYN costs the kernel's 1 s, then 2 s, then 4 s retransmission timer), so a
check could run out of time before any STUN check is sent. When the answer has not come
within `START_AFTER_S`, `TcpProber` opens a TCP connection to the reflector's port every
`INTERVAL_S` (closed again at once: no request is sent) and counts the handshakes that
complete at their first try, i.e. before the kernel's first SYN retransmission. The share of
first-try handshakes estimates the link's round-trip success for small packets, as the STUN
checks do later (`core.connect.judge_signalling`). A reflector that is down gives no
handshakes at all, which says nothing: that case stays `server_unreachable`/`connect_timeout`.

I/O only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit

from netprobe.core.connect import ConnectEvidence

START_AFTER_S = 1.0
"""How long an offer may wait for its answer before the handshakes start."""
INTERVAL_S = 0.1
"""One handshake this often."""
MAX_PROBES = 100
"""At most this many handshakes per check."""
FIRST_TRY_S = 0.9
"""A handshake counts as completed at the first try within this long (the kernel retries a
SYN after 1 s), or within 2.5 x the fastest handshake seen, on links slower than that."""


class TcpProber:
    """Handshakes with the host and port of `url`, counted (`evidence`)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._started = time.monotonic()
        self._pending: dict[int, float] = {}
        self._done: list[float] = []
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._probes.clear()

    def evidence(self, now: float) -> ConnectEvidence:
        window = max(FIRST_TRY_S, 2.5 * min(self._done)) if self._done else FIRST_TRY_S
        first_try = sum(1 for d in self._done if d <= window)
        late = len(self._done) - first_try
        expired = sum(1 for at in self._pending.values() if now - at > window)
        rtt = min(self._done) * 1000 if self._done else None
        return ConnectEvidence(since_s=now - self._started,
                               sent=len(self._done) + len(self._pending),
                               settled=first_try + late + expired, answered=first_try,
                               inbound=len(self._done), rtt_ms=rtt)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError:
            return
        if not infos:
            return
        family, _, _, _, address = infos[0]
        for _ in range(MAX_PROBES):
            task = loop.create_task(self._one(family, address))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
            await asyncio.sleep(INTERVAL_S)

    async def _one(self, family: int, address: tuple[object, ...]) -> None:
        loop = asyncio.get_running_loop()
        key = self._next
        self._next += 1
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        started = time.monotonic()
        self._pending[key] = started
        try:
            await loop.sock_connect(sock, address)
        except OSError:  # refused or unreachable: not a handshake; forget it
            self._pending.pop(key, None)
            return
        finally:
            sock.close()
        if self._pending.pop(key, None) is not None:
            self._done.append(time.monotonic() - started)

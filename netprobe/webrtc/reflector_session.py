"""One client's probe session on the reflector: its peer connection, test streams, responder
(netprobe.core.responder) and the watchdog that ends it when the responder says so."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection

from netprobe.core.responder import Responder, ResponderLimits
from netprobe.core.wire import (
    TYPE_LOAD,
    TYPE_PROBE,
    decode_load,
    decode_probe,
    encode_echo,
    packet_type,
)
from netprobe.errors import ProtocolError
from netprobe.webrtc.engine import Pacer, PacketTrack, install_tap

logger = logging.getLogger("netprobe.webrtc.reflector")

#: Echoes queued for sending beyond which a probe is not answered (counted `echo_backlog`): the
#: sender drains the queue continuously, so a backlog means the event loop is starved.
MAX_ECHO_BACKLOG = 64

SessionEnd = Callable[["ReflectorSession", str], Awaitable[None]]


class ReflectorSession:
    """One client's probe session: a peer connection, its test streams and its state."""

    def __init__(self, pc: RTCPeerConnection, session_id: str, time_limit: float = 30.0, *,
                 kind: str = "check", source: str = "", limits: ResponderLimits | None = None,
                 end: SessionEnd | None = None) -> None:
        """`limits`: what the client may ask (`core.responder`); `end(session, reason)`: how
        the session is ended when it breaks them or goes silent (default: it closes itself)."""
        self.id = session_id
        self.kind = kind
        """"check" or "monitor": the admission slot it holds."""
        self.source = source
        """The source key it is counted under (`core.admission.source_key`); never logged."""
        self.connected = asyncio.Event()
        """Set once the peer connection first reached "connected"."""
        self.time_limit = time_limit
        self.pc = pc
        self.started_at = time.monotonic()
        self.responder = Responder(limits, started_at=self.started_at)
        self.echo_track = PacketTrack("audio")
        self.load_track = PacketTrack("video")
        self.pacer = Pacer(self.load_track, self.responder.down_step)
        self.closed = asyncio.Event()
        self._closing = False
        self._end = end
        self._alarm = asyncio.Event()
        """Set when the responder's limits may have been broken (the watchdog looks again)."""
        self._watchdog: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Tap the receivers and add our tracks (after the remote offer is applied)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                install_tap(transceiver.receiver, "audio", self._on_audio)
            elif transceiver.kind == "video":
                install_tap(transceiver.receiver, "video", self._on_video)
        self.pc.addTrack(self.echo_track)
        self.pc.addTrack(self.load_track)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    # The media handlers run inside aiortc's receive loop, once per packet: whatever a client
    # sends, they only count, cap and answer; nothing raises, nothing loops on its numbers.

    def _on_audio(self, payload: bytes, now: float) -> None:
        try:
            if packet_type(payload) != TYPE_PROBE:
                raise ProtocolError("not a probe")
            probe = decode_probe(payload)
        except ProtocolError:
            self._refuse("malformed")
            return
        if not self.responder.on_probe(probe, now, len(payload)):
            self._look_again()  # refused: over the probe rate
            return
        if self.responder.probes_seen == 1:
            self._alarm.set()  # the silence deadline moves from "first probe due" to "probes"
        self.pacer.wake()  # a probe may ask for a downlink rung
        if self.echo_track.backlog >= MAX_ECHO_BACKLOG:
            self._refuse("echo_backlog")
            return
        self.echo_track.push(
            lambda: encode_echo(self.responder.echo(probe, now, time.monotonic())))

    def _on_video(self, payload: bytes, now: float) -> None:
        try:
            if packet_type(payload) != TYPE_LOAD:
                raise ProtocolError("not a load packet")
            load = decode_load(payload)
        except ProtocolError:
            self._refuse("malformed")
            return
        self.responder.on_up_load(load, len(payload), now)
        self._look_again()

    def _refuse(self, reason: str) -> None:
        self.responder.refuse(reason)
        self._look_again()

    def _look_again(self) -> None:
        if self.responder.refused_total > self.responder.limits.max_refused:
            self._alarm.set()

    async def _watch(self) -> None:
        """End the session when its responder says so (refused too much, or silent): the
        decision is the responder's (`end_reason`), this only waits for it."""
        while (reason := self.responder.end_reason(time.monotonic())) is None:
            due = self.responder.silence_deadline()
            self._alarm.clear()
            try:
                async with asyncio.timeout(None if due is None
                                           else max(0.0, due - time.monotonic())):
                    await self._alarm.wait()
            except TimeoutError:
                pass
        logger.debug("probe session %s over its limits: %s (refused %s)", self.id, reason,
                     dict(self.responder.refused))
        if self._end is not None:
            await self._end(self, reason)
        else:
            await self.close()

    async def close(self) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        try:
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None and watchdog is not asyncio.current_task():
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            await self.pacer.stop()
            await self.pc.close()
        except Exception:  # closing must never raise into the server
            logger.warning("error while closing a probe session", exc_info=True)
        finally:
            self.closed.set()

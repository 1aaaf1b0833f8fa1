"""The aiortc adapter: test-stream tracks, an RTP receive tap, a pacer, peer connections.

The test streams are real WebRTC media streams: an Opus-negotiated audio stream carries the
probes and echoes, a VP8-negotiated video stream carries the bitrate ladder's load, both over
ICE, DTLS-SRTP, RTP and RTCP as a video call's would. Their payloads are pre-built bytes with a
measurement header (see `wire.py`) handed to aiortc as already-encoded packets, so neither side
pays for encoding or decoding (see ../shared/NOTES-aiortc.md: a VP8 encode costs 17-21 % of a
core per stream). On receive, a tap replaces the receiver's RTP handler: each packet is timed
and counted as it leaves SRTP, before any jitter buffer, and no NACK/RTX retransmission ever
hides a lost packet (aiortc's own receiver stats are unreliable once RTX starts).

This is the only module that imports aiortc and av, besides `aioice` patching for loopback.
"""

from __future__ import annotations

import asyncio
import fractions
import ipaddress
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from netprobe.config import IceServer
from netprobe.core.pacing import Timetable
from netprobe.errors import ConfigError

logger = logging.getLogger(__name__)

_TIME_BASE = {"audio": fractions.Fraction(1, 48000), "video": fractions.Fraction(1, 90000)}
_CODEC = {"audio": "audio/opus", "video": "video/VP8"}

PayloadFactory = Callable[[], bytes]
PayloadBuilder = Callable[[float], bytes]
PacketHandler = Callable[[bytes, float], None]


#: Host candidates for a reflector on this machine.
LOOPBACK = ["127.0.0.1"]


def _loopback_address(address: str) -> str | None:
    """The loopback address `address` (a URL or a bare host) names, or None if it names no
    loopback address. `localhost` is 127.0.0.1."""
    if "//" in address:
        try:
            host = urlsplit(address).hostname or ""
        except ValueError:  # e.g. "http://[::1": not a URL, so not this machine
            return None
    else:
        host = address.strip("[]")
    if host.lower() == "localhost":
        return LOOPBACK[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(ip) if ip.is_loopback else None


def is_loopback_url(url: str) -> bool:
    """True if `url` names this machine (localhost or a loopback address)."""
    return _loopback_address(url) is not None


def restrict_to_loopback_if_local(address: str) -> bool:
    """If `address` (a server URL, or the host a reflector listens on) is this machine, gather
    ICE host candidates on that loopback address only (process-wide), and return True.

    The one place of the loopback rule, for `check --server`/`--local`, `serve` and the
    agent's worker: aioice never offers 127.0.0.1 or ::1, so without this two peers on one
    machine would meet over a LAN address, or not at all.
    """
    loopback = _loopback_address(address)
    if loopback is None:
        return False
    restrict_host_candidates([loopback])
    return True


def restrict_host_candidates(addresses: list[str]) -> None:
    """Gather ICE host candidates only from `addresses` (process-wide).

    aioice skips 127.0.0.1, so a check against a reflector on the same machine (`--local`,
    the tests) gives it the loopback address explicitly.
    """
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


class PacketTrack(MediaStreamTrack):
    """A track whose frames are payloads built at the moment aiortc sends them.

    `push(factory)` queues a payload factory; the sender's loop calls `recv()`, which calls
    the factory (so a send time written into the payload is taken just before sending) and
    wraps the bytes as an already-encoded packet.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[PayloadFactory | None] = asyncio.Queue()
        self._time_base = _TIME_BASE[kind]
        self._origin = time.monotonic()
        self.sent_packets = 0
        self.sent_bytes = 0

    def push(self, factory: PayloadFactory) -> None:
        if self.readyState == "live":
            self._queue.put_nowait(factory)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        if self.readyState == "live":
            self._queue.put_nowait(None)
        super().stop()

    async def recv(self) -> av.Packet:
        factory = await self._queue.get()
        if factory is None or self.readyState != "live":
            raise MediaStreamError
        payload = factory()
        packet = av.Packet(payload)
        packet.pts = int((time.monotonic() - self._origin) / self._time_base)
        packet.time_base = self._time_base
        self.sent_packets += 1
        self.sent_bytes += len(payload)
        return packet


def install_tap(receiver: RTCRtpReceiver, kind: str, handler: PacketHandler) -> None:
    """Deliver each RTP payload arriving at `receiver` to `handler(payload, now)`.

    Replaces the receiver's RTP handling: no jitter buffer, decoder or NACK generator runs.
    Video payloads lose their VP8 payload descriptor first.
    """
    async def tap(packet: object, arrival_time_ms: int = 0) -> None:
        now = time.monotonic()
        payload: bytes = packet.payload  # type: ignore[attr-defined]
        if kind == "video":
            try:
                _, payload = VpxPayloadDescriptor.parse(payload)
            except ValueError:
                return
        try:
            handler(payload, now)
        except Exception:  # a bad packet must never kill the transport's receive loop
            logger.debug("dropped a malformed test packet", exc_info=True)

    receiver._handle_rtp_packet = tap  # type: ignore[method-assign]


def create_peer_connection(ice_servers: tuple[IceServer, ...] = (), *,
                           relay_only: bool = False) -> RTCPeerConnection:
    """A peer connection with host candidates only unless STUN/TURN servers are configured
    (with `relay_only`, relay candidates only: only the first TURN server counts in aioice).

    `iceServers=[]` matters: aiortc's default would contact Google's STUN server. A URL
    aiortc cannot parse raises `ConfigError` here (the config loader rejects them first;
    aiortc itself would raise a bare ValueError later, outside any handler).
    """
    for server in ice_servers:
        try:
            parse_stun_turn_uri(server.urls)
        except ValueError as exc:
            raise ConfigError(f"ICE server {server.urls!r}: {exc}") from None
    servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
               for s in ice_servers]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy,
                                              bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def prefer_test_codecs(pc: RTCPeerConnection) -> None:
    """Negotiate Opus on audio and VP8 (without RTX: nothing is retransmitted) on video."""
    for transceiver in pc.getTransceivers():
        kind = transceiver.kind
        caps = RTCRtpSender.getCapabilities(kind)
        if caps is None:
            continue
        chosen = [c for c in caps.codecs if c.mimeType.lower() == _CODEC[kind].lower()]
        if chosen:
            transceiver.setCodecPreferences(chosen)


class Pacer:
    """Feeds a `PacketTrack` at a rate that may change at any moment.

    `schedule(now)` returns (interval seconds, build) for the next packet, or None to pause;
    `build(send_time)` makes the payload when aiortc sends it (the send time written in it
    is taken then). The timing is a `core.pacing.Timetable` (absolute, a backlog of more than
    `max_lag` seconds dropped, not burst out). A paused pacer sleeps until `wake()`: whoever
    changes what the schedule would say (a new rung, a downlink request) wakes it.
    """

    def __init__(
        self,
        track: PacketTrack,
        schedule: Callable[[float], tuple[float, PayloadBuilder] | None],
        max_lag: float = 0.05,
    ) -> None:
        self._track = track
        self._schedule = schedule
        self._timetable: Timetable[PayloadBuilder] = Timetable(max_lag)
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Ask the schedule again now if the pacer is paused (harmless otherwise)."""
        self._woken.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            build, next_at = self._timetable.advance(now, self._schedule)
            if build is not None:
                self._track.push(lambda build=build: build(time.monotonic()))
            if next_at is None:
                self._woken.clear()
                await self._woken.wait()
            else:  # a packet pushed behind schedule yields too: never a busy loop
                await asyncio.sleep(max(0.0, next_at - now))


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait until it has ended."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def sample_offer_sdp() -> str:
    """The SDP of an offer like a check's (two test streams; its peer connection is closed
    again), for whatever talks to a reflector's signalling directly (tests, the fuzzer)."""
    pc = create_peer_connection()
    pc.addTransceiver(PacketTrack("audio"), direction="sendrecv")
    pc.addTransceiver(PacketTrack("video"), direction="sendrecv")
    prefer_test_codecs(pc)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp

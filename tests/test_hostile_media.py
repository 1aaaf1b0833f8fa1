"""Hostile media against a real reflector and real aiortc peers on loopback (issue 8, item 6).

Malformed and absurd payloads over a real peer connection are counted, never raised into
aiortc; a session that sends too many is closed, a monitoring stream that stops probing is
closed, and a real check afterwards still says `video`. The other way round, a reflector that
answers with absurd echoes cannot hang a check or a monitoring stream.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from dataclasses import replace

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from netprobe.config import Settings
from netprobe.core import wire
from netprobe.core.monitor import ProbeWindow
from netprobe.core.wire import Echo, Load, Probe, RungReport, encode_echo, encode_load, encode_probe
from netprobe.webrtc.client import MonitorLink, run_check
from netprobe.webrtc.engine import PacketTrack, create_peer_connection, prefer_test_codecs
from netprobe.webrtc.reflector import Reflector, ReflectorSession


def _capped(settings: Settings, seconds: float) -> Settings:
    return replace(settings, probe=replace(settings.probe, max_duration_s=seconds,
                                           connect_timeout_s=seconds - 1))


class RawPeer:
    """A client peer that sends whatever payloads it is given on the two test streams."""

    def __init__(self) -> None:
        self.pc: RTCPeerConnection = create_peer_connection()
        self.audio, self.video = PacketTrack("audio"), PacketTrack("video")
        self.pc.addTransceiver(self.audio, direction="sendrecv")
        self.pc.addTransceiver(self.video, direction="sendrecv")
        prefer_test_codecs(self.pc)

    async def connect(self, url: str, mode: str = "check") -> str:
        pc = self.pc
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": mode}
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/offer", json=offer) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await _until(lambda: pc.connectionState == "connected")
        return str(answer["session"])

    async def send(self, payloads: list[tuple[PacketTrack, bytes]], per_ms: int = 2) -> None:
        """Push the payloads, about `per_ms` a millisecond, and wait until aiortc sent them
        (or the connection ended)."""
        for k, (track, data) in enumerate(payloads):
            track.push(lambda data=data: data)
            if k % (10 * per_ms) == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: not (self.audio.backlog or self.video.backlog)
                     or self.pc.connectionState != "connected", 20)  # or the reflector hung up

    async def close(self) -> None:
        await self.pc.close()


def hostile_payloads(peer: RawPeer, n: int, seed: int = 8) -> list[tuple[PacketTrack, bytes]]:
    """`n` payloads: random bytes, truncated and wrong-version packets, non-finite and absurd
    times, sequence numbers near 2^32, absurd downlink requests, loads for hundreds of rungs."""
    rng = random.Random(seed)
    big = 2**32 - 1
    makers: list[Callable[[], tuple[PacketTrack, bytes]]] = [
        lambda: (peer.audio, rng.randbytes(rng.randint(0, 300))),
        lambda: (peer.video, rng.randbytes(rng.randint(0, 1200))),
        lambda: (peer.audio, encode_probe(Probe(rng.randint(0, big), 1.0))[:rng.randint(0, 25)]),
        lambda: (peer.audio, b"NP\x01\x01" + rng.randbytes(40)),  # the previous version
        lambda: (peer.audio, b"NP" + bytes([wire.VERSION, 1]) + struct.pack(
            "!IdhIHH", rng.randint(0, big), rng.choice([float("nan"), float("inf"), 1e300]),
            0, 3200, 1200, 600)),
        lambda: (peer.audio, encode_probe(Probe(big - rng.randint(0, 3), 1.0))),
        lambda: (peer.audio, encode_probe(Probe(rng.randint(0, big), rng.uniform(-1e9, 1e9),
                                                rng.randint(0, 2**15 - 1), big, 65_535,
                                                65_535))),
        lambda: (peer.video, encode_load(Load(rng.randint(0, 2**15 - 1), rng.randint(0, big),
                                              rng.uniform(-1e9, 1e9)), rng.randint(0, 1200))),
        lambda: (peer.audio, encode_echo(Echo(1, 1.0, 1, 1.0, 0.0, 1, 1, 0.0))),  # wrong way
    ]
    return [rng.choice(makers)() for _ in range(n)]


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds (a bound, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - states aiortc and the reflector signal no event for
            await asyncio.sleep(0.05)


async def test_malformed_media_is_counted_the_session_closed_and_checks_still_work(
        reflector: Reflector, settings: Settings) -> None:
    peer = RawPeer()
    try:
        session_id = await peer.connect(reflector.url)
        session = reflector.sessions[session_id]
        await peer.send(hostile_payloads(peer, 3000))
        # More than MAX_REFUSED were refused: the reflector ends the session itself.
        await _until(lambda: session_id not in reflector.sessions)
        assert reflector.counters.ended[("check", "refused")] == 1
        refused = session.responder.refused
        assert refused["malformed"] > 500 and refused["rungs"] > 0
        assert len(session.responder._up) <= session.responder.limits.max_rungs
    finally:
        await peer.close()
    result = await run_check(reflector.url, settings)
    assert result.verdict.verdict == "video", result.verdict


async def test_absurd_but_well_formed_probes_are_answered_within_the_caps(
        reflector: Reflector) -> None:
    # The packet: one probe numbered near 2^32 used to freeze the reflector.
    peer = RawPeer()
    try:
        session_id = await peer.connect(reflector.url)
        session = reflector.sessions[session_id]
        probes = [(peer.audio, encode_probe(Probe(2**32 - 100 + i, 1.0 + i / 50, 0, 2**32 - 1,
                                                  65_535, 65_535), 40)) for i in range(60)]
        await peer.send(probes, per_ms=1)
        await _until(lambda: session.responder.probes_seen == 60)
        request = session.responder._request  # the rung being sent (1 s after the last probe)
        assert request is not None
        assert request.rate_kbps == reflector.settings.max_down_kbps
        assert request.packet_size <= wire.LOAD_MAX_SIZE and request.duration_s <= 30
        await _until(lambda: session.echo_track.sent_packets == 60)
        async with aiohttp.ClientSession() as http:  # and the server is responsive
            async with http.get(reflector.url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        await peer.close()


async def test_a_monitoring_stream_that_stops_probing_is_closed(reflector: Reflector) -> None:
    reflector.media_limits = replace(reflector.media_limits, silence_s=0.5)
    peer = RawPeer()
    try:
        session_id = await peer.connect(reflector.url, mode="monitor")
        await peer.send([(peer.audio, encode_probe(Probe(i, i / 20), 40)) for i in range(10)])
        await _until(lambda: session_id not in reflector.sessions)
        assert reflector.counters.ended[("monitor", "silent")] == 1
    finally:
        await peer.close()


def _absurd_echo(rng: random.Random, probe: Probe) -> bytes:
    big = 2**32 - 1
    return encode_echo(Echo(
        rng.choice([0, big, rng.randint(0, big)]), rng.uniform(-1e9, 1e9),
        rng.choice([probe.seq, big, rng.randint(0, big)]), rng.uniform(-1e9, 1e9),
        rng.uniform(0, 3600), rng.randint(0, big), rng.randint(-1, big - 1), rng.uniform(0, 3600),
        tuple(RungReport(rng.randint(0, 2**15 - 1), big, big, rng.uniform(-1e9, 1e9), 0.0, 0, big)
              for _ in range(rng.randint(0, 8))),
        tuple((rng.randint(0, 2**15 - 1), big, True) for _ in range(rng.randint(0, 8)))))


async def test_a_hostile_reflector_cannot_hang_a_check_or_a_monitoring_stream(
        reflector: Reflector, settings: Settings, monkeypatch: object) -> None:
    rng = random.Random(88)

    def hostile(self: ReflectorSession, payload: bytes, now: float) -> None:
        try:
            probe = wire.decode_probe(payload)
        except Exception:
            return
        for _ in range(3):  # three answers per probe, none of them sane
            self.echo_track.push(lambda: _absurd_echo(rng, probe))
        self.echo_track.push(lambda: rng.randbytes(rng.randint(0, 200)))
        self.load_track.push(lambda: encode_load(Load(rng.randint(0, 2**15 - 1),
                                                      rng.randint(0, 2**32 - 1), 0.0), 1200))

    monkeypatch.setattr(ReflectorSession, "_on_audio", hostile)  # type: ignore[attr-defined]
    capped = _capped(settings, 5)
    result = await asyncio.wait_for(run_check(reflector.url, capped), 15)
    assert result.duration_s < capped.probe.max_duration_s + 1
    assert result.verdict.verdict  # a verdict, whatever it is: the check ended

    window = ProbeWindow(span=5.0)
    got: list[float] = []

    def on_echo(echo: Echo, now: float) -> None:
        window.on_echo(echo, now)
        window.metrics(now, None)
        got.append(now)

    link = MonitorLink(reflector.url, settings, 0.02, on_echo)
    try:
        await link.connect(5.0)
        await _until(lambda: len(got) > 50)
    finally:
        await link.close()

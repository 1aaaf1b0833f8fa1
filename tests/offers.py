"""A real aiortc offer with netprobe's two test streams, for tests that talk to a reflector's
signalling directly."""

from __future__ import annotations

from netprobe.webrtc.engine import PacketTrack, create_peer_connection, prefer_test_codecs


async def offer_sdp() -> str:
    """The SDP of an offer like the client's (its peer connection is closed again)."""
    pc = create_peer_connection()
    pc.addTransceiver(PacketTrack("audio"), direction="sendrecv")
    pc.addTransceiver(PacketTrack("video"), direction="sendrecv")
    prefer_test_codecs(pc)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp

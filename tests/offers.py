"""A real aiortc offer with netprobe's two test streams, for tests that talk to a reflector's
signalling directly (`netprobe.webrtc.engine.sample_offer_sdp`)."""

from __future__ import annotations

from netprobe.webrtc.engine import sample_offer_sdp as offer_sdp

__all__ = ["offer_sdp"]

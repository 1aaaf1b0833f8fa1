"""Signalling for a check or a monitoring stream: the offer/answer over HTTP (aiohttp), the
order in which several reflectors are tried (`core.failover`), and a check's peer connection.

I/O only; what the answers mean for the verdict is the client's (`client.py`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from netprobe.clinic import from_answer
from netprobe.config import IceServer, Settings
from netprobe.core.failover import (
    Attempt,
    Outcome,
    bounded_retry_after,
    most_telling,
    moves_on,
)
from netprobe.errors import (
    AccessDenied,
    NetprobeError,
    ProtocolError,
    RateLimited,
    ServerBusy,
    ServerUnreachable,
)
from netprobe.webrtc.engine import PacketTrack, create_peer_connection, prefer_test_codecs

logger = logging.getLogger(__name__)

#: With more URLs left to try, the longest a TCP connection to one reflector may take: a refused
#: connection fails at once, but a host whose packets vanish would otherwise cost the whole
#: connect budget (the kernel's SYN retries run for minutes).
TCP_CONNECT_CAP_S = 2.0
#: With more URLs left to try, the longest to wait for one reflector's answer to an offer (an
#: answer takes milliseconds; up to ~5 s when the reflector gathers STUN candidates).
ANSWER_CAP_S = 4.0


class Peer:
    """A check's peer connection and its two test tracks (a fresh set per reflector whose
    answer, or lack of one, may have left a session behind there, and per path tried).

    `ice_servers`: the STUN/TURN servers it gathers with (default: the STUN servers of the
    settings; TURN servers are for the relay paths, `paths.py`); `relay_only`: relay
    candidates only (`iceTransportPolicy` RELAY), so the path is certainly the relay."""

    def __init__(self, settings: Settings, ice_servers: tuple[IceServer, ...] | None = None,
                 relay_only: bool = False) -> None:
        if ice_servers is None:
            ice_servers = tuple(s for s in settings.probe.ice_servers
                                if s.urls.lower().startswith("stun"))
        self.pc = create_peer_connection(ice_servers, relay_only=relay_only)
        self.probe_track = PacketTrack("audio")
        self.load_track = PacketTrack("video")
        self.pc.addTransceiver(self.probe_track, direction="sendrecv")
        self.pc.addTransceiver(self.load_track, direction="sendrecv")
        prefer_test_codecs(self.pc)
        self.clinic: dict[str, str] | None = None
        """The reflector's clinic contact from its answer, checked (`clinic.from_answer`);
        None: none given, or malformed (logged)."""


class AttemptFailed(Exception):
    """One URL of an attempt failed with `error`; `offer_unused`: the reflector certainly made
    no session of the offer (it refused it, or was never reached), so it may go elsewhere."""

    def __init__(self, error: NetprobeError, offer_unused: bool,
                 retry_after_s: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.offer_unused = offer_unused
        self.retry_after_s = retry_after_s
        """A 503's or 429's Retry-After (bounded)."""


def _outcome(error: NetprobeError) -> Outcome:
    if isinstance(error, AccessDenied):
        return "denied"
    if isinstance(error, RateLimited):
        return "rate_limited"
    return "busy" if isinstance(error, ServerBusy) else "unreachable"


async def offer_in_turn(urls: tuple[str, ...], settings: Settings, deadline: float,
                        attempts: list[Attempt], mode: str = "check",
                        ) -> tuple[Peer, str, dict[str, Any]]:
    """Offer (`mode` `check` or `monitor`) to each URL in turn until one answers
    (`core.failover`: move on only when it is unreachable, busy or rate-limiting). Returns
    the peer, its answer applied, the URL and the answer's JSON body; raises the most telling
    failure. Every attempt is appended to `attempts`."""
    peer: Peer | None = None
    failures: list[tuple[Attempt, NetprobeError]] = []
    try:
        for i, url in enumerate(urls):
            last = i == len(urls) - 1
            if peer is None:
                peer = Peer(settings)
                await peer.pc.setLocalDescription(await peer.pc.createOffer())
            left = deadline - time.monotonic()
            try:
                body = await post_offer(
                    peer.pc, url, settings.probe.max_duration_s if last
                    else max(0.5, min(ANSWER_CAP_S, left / 2)), mode,
                    settings.access_token, None if last else TCP_CONNECT_CAP_S)
            except AttemptFailed as failed:
                exc = failed.error
                attempt = Attempt(url, _outcome(exc), bounded_retry_after(failed.retry_after_s))
                attempts.append(attempt)
                failures.append((attempt, exc))
                logger.info("reflector %d of %d: %s", i + 1, len(urls), attempt.outcome)
                if last or not moves_on(attempt.outcome):
                    telling = most_telling(a for a, _ in failures)
                    raise next(e for a, e in failures if a is telling) from None
                if not failed.offer_unused:
                    await peer.pc.close()
                    peer = None
                continue
            attempts.append(Attempt(url, "answered"))
            await apply_answer(peer.pc, body)
            peer.clinic = from_answer(body.get("clinic"))
            return peer, url, body
        raise ServerUnreachable("no reflector URL was given")
    except BaseException:
        if peer is not None:
            await peer.pc.close()
        raise


async def connect_offer(pc: Any, server_url: str, cap_s: float, mode: str = "check",
                   token: str = "") -> None:
    """Offer/answer over HTTP, with `Authorization: Bearer token` if a token is given.
    Raises ServerUnreachable, ServerBusy, RateLimited, AccessDenied or ProtocolError."""
    await pc.setLocalDescription(await pc.createOffer())
    try:
        body = await post_offer(pc, server_url, cap_s, mode, token, None)
    except AttemptFailed as failed:
        raise failed.error from None
    await apply_answer(pc, body)


async def post_offer(pc: Any, server_url: str, cap_s: float, mode: str, token: str,
                      tcp_connect_s: float | None) -> dict[str, Any]:
    """POST the offer already set as `pc`'s local description; the answer's JSON body. Raises
    AttemptFailed (ServerUnreachable, ServerBusy, RateLimited, AccessDenied, ProtocolError)."""
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "mode": mode}
    url = server_url.rstrip("/") + "/v1/offer"
    timeout = aiohttp.ClientTimeout(total=cap_s, sock_connect=tcp_connect_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            async with http.post(url, json=offer, headers=headers) as resp:
                retry = retry_after(resp.headers.get("Retry-After"))
                if resp.status == 503:  # busy, too_many_sessions or draining
                    raise AttemptFailed(ServerBusy("the test server is busy"), True, retry)
                if resp.status == 429:
                    raise AttemptFailed(RateLimited(
                        "the test server asked us to slow down", retry), True, retry)
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status in (401, 403):
                    raise AttemptFailed(access_denied(resp.status, body), True)
                if resp.status != 200:
                    detail = body.get("error", {}).get("message") if isinstance(body, dict) \
                        else None
                    detail = detail[:200] if isinstance(detail, str) else None
                    raise AttemptFailed(ServerUnreachable(
                        f"the test server answered HTTP {resp.status}"
                        + (f": {detail}" if detail else "")), True)
    except aiohttp.InvalidURL:
        raise AttemptFailed(ServerUnreachable("the server address is not a valid URL"),
                             True) from None
    except aiohttp.ClientConnectorError:
        raise AttemptFailed(ServerUnreachable("nothing answered at the server address"),
                             True) from None
    except TimeoutError:  # aiohttp's own limits (an outer timeout comes as a cancellation)
        raise AttemptFailed(ServerUnreachable(
            f"the test server did not answer within {cap_s:.0f} s"), False) from None
    except aiohttp.ClientError as exc:
        raise AttemptFailed(ServerUnreachable(
            f"the connection to the server failed: {type(exc).__name__}"), False) from None
    if not isinstance(body, dict) or body.get("type") != "answer" or not isinstance(
            body.get("sdp"), str):
        raise AttemptFailed(ProtocolError("the server's answer is not a valid SDP answer"),
                             False)
    return body


async def apply_answer(pc: Any, body: dict[str, Any]) -> None:
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    except Exception as exc:
        raise ProtocolError("the server's SDP answer could not be used") from exc


def retry_after(value: str | None) -> int | None:
    """The Retry-After header's seconds, bounded to 1 h; None if absent or not a number (an
    HTTP date is not worth parsing here)."""
    if value is None or not (value.strip().isascii() and value.strip().isdigit()):
        return None
    return max(1, min(3600, int(value.strip()[:6])))


def access_denied(status: int, body: Any) -> AccessDenied:
    code = "unauthorized" if status == 401 else "forbidden"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "no valid access token" if status == 401 else "the token does not allow it"
    return AccessDenied(message[:300], code)  # a hostile server's text: bounded

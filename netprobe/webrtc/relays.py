"""The clinic's TURN relays for a check: which ones (`relay_servers`), a peer connection that
has allocated on one (`prepare_relay`), and why one failed (`RelayFailed`), in words for
support staff. The order they are tried in is `paths.py`'s.

aioice's gathering drops the exception of a TURN allocation that failed; `prepare_relay` keeps
it, through a context variable that aioice's own `relayed_candidate` (wrapped once, at import)
appends to, so the reason can be told apart: refused credentials, no answer, garbage.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
from typing import Any

import aioice.ice
from aioice import stun
from aiortc.rtcicetransport import parse_stun_turn_uri

from netprobe.config import IceServer, Settings
from netprobe.webrtc.signalling import Peer

logger = logging.getLogger(__name__)

RELAY_ALLOCATE_S = 3.5
"""How long a relay gets to allocate (aioice itself would wait 5 s for an unanswered one)."""


def relay_kind(server: IceServer) -> str | None:
    """`relay_udp`, `relay_tcp` or `relay_tls` for a TURN URL; None for STUN."""
    url = server.urls.strip().lower()
    if url.startswith("turns:"):
        return "relay_tls"
    if url.startswith("turn:"):
        return "relay_tcp" if "transport=tcp" in url else "relay_udp"
    return None


def relay_servers(settings: Settings, body: dict[str, Any]) -> dict[str, IceServer]:
    """The first relay of each kind: the local settings' TURN servers first (a clinic's
    override), then those in the reflector's answer (`ice_servers`, docs/protocol.md). An
    entry that is not a usable TURN server is skipped and logged (no addresses)."""
    found: dict[str, IceServer] = {}
    offered = body.get("ice_servers")
    entries = offered if isinstance(offered, list) else []
    if offered is not None and not isinstance(offered, list):
        logger.warning("the reflector's ice_servers is not a list: ignored")
    candidates: list[IceServer] = list(settings.probe.ice_servers)
    for i, entry in enumerate(entries[:16]):
        server = _ice_server(entry)
        if server is None:
            logger.warning("the reflector's ice server %d is not usable: ignored", i + 1)
            continue
        candidates.append(server)
    for server in candidates:
        kind = relay_kind(server)
        if kind is not None and kind not in found:
            found[kind] = server
    return found


def _ice_server(entry: Any) -> IceServer | None:
    if not isinstance(entry, dict):
        return None
    urls, user, credential = entry.get("urls"), entry.get("username"), entry.get("credential")
    if isinstance(urls, list) and urls:
        urls = urls[0]
    if not (isinstance(urls, str) and isinstance(user, str) and isinstance(credential, str)):
        return None
    if len(urls) > 512 or len(user) > 512 or len(credential) > 512:
        return None
    try:
        parse_stun_turn_uri(urls)
    except ValueError:
        return None
    server = IceServer(urls=urls, username=user, credential=credential)
    return server if relay_kind(server) else None


_turn_errors: contextvars.ContextVar[list[BaseException] | None] = \
    contextvars.ContextVar("netprobe_turn_errors", default=None)
_relayed_candidate = aioice.ice.relayed_candidate


async def _recording_relayed_candidate(**kwargs: Any) -> Any:
    """aioice's `relayed_candidate`, with its failure kept for the path that asked (aioice's
    gathering drops it)."""
    try:
        return await _relayed_candidate(**kwargs)
    except BaseException as exc:
        errors = _turn_errors.get()
        if errors is not None:
            errors.append(exc)
        raise


aioice.ice.relayed_candidate = _recording_relayed_candidate


class RelayFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


def turn_failure(errors: list[BaseException]) -> RelayFailed:
    """Why a relay gave no candidate, in words for support staff (no addresses)."""
    for exc in errors:
        if isinstance(exc, stun.TransactionFailed):
            code = exc.response.error_code
            if code in (401, 403, 437, 441):
                return RelayFailed("refused", f"the relay refused the credentials ({code})")
            return RelayFailed("refused", f"the relay refused the allocation ({code})")
        if isinstance(exc, ssl.SSLError):
            return RelayFailed("tls_error", f"the relay's TLS failed: {exc.__class__.__name__}")
        if isinstance(exc, stun.TransactionTimeout | TimeoutError | asyncio.CancelledError):
            return RelayFailed("timeout", "the relay did not answer in time")
        if isinstance(exc, ConnectionError):
            return RelayFailed("unreachable", "the relay refused or dropped the connection")
        if isinstance(exc, OSError):
            return RelayFailed("unreachable", f"the relay could not be reached "
                               f"({exc.strerror or exc.__class__.__name__})")
        if isinstance(exc, ValueError):
            return RelayFailed("garbage", "the relay's answer is not valid TURN")
    if errors:
        return RelayFailed("error", f"the relay failed: {errors[0].__class__.__name__}")
    return RelayFailed("timeout", "the relay did not answer in time")


async def prepare_relay(settings: Settings, server: IceServer) -> Peer:
    """A peer whose only candidate is a relay on `server`, its offer made (so allocated);
    raises RelayFailed."""
    errors: list[BaseException] = []
    token = _turn_errors.set(errors)
    peer = Peer(settings, (server,), relay_only=True)
    try:
        async with asyncio.timeout(RELAY_ALLOCATE_S):
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
    except TimeoutError:
        await peer.pc.close()
        raise RelayFailed("timeout", "the relay did not answer in time") from None
    except asyncio.CancelledError:
        await peer.pc.close()
        raise
    except Exception as exc:
        await peer.pc.close()
        raise turn_failure([*errors, exc]) from None
    finally:
        _turn_errors.reset(token)
    if " typ relay" not in peer.pc.localDescription.sdp:
        await peer.pc.close()
        raise turn_failure(errors)
    return peer

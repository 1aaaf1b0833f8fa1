"""The reflector's HTTP pieces that need no reflector: reading an offer, checking its SDP,
JSON errors for aiohttp's own refusals, the answer for a missing token, a TLS context, and
why binding failed, in words."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription

from netprobe.errors import ConfigError, ProtocolError
from netprobe.httpjson import json_error
from netprobe.settings import ReflectorSettings
from netprobe.tokens import AccessRefused, Gate, load_keys

logger = logging.getLogger("netprobe.webrtc.reflector")

MAX_SDP_CHARS = 32768


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error")
        return json_error(exc.status, code, exc.reason)


def sdp_problem(text: str) -> str | None:
    """Why the SDP cannot be a test offer (aiortc's own parser, no peer connection), or None."""
    try:
        kinds = sorted(m.kind for m in SessionDescription.parse(text).media)
    except Exception:  # noqa: BLE001 - aiortc's parser raises ValueError, AssertionError, ...
        return "the SDP offer is invalid"
    return None if kinds == ["audio", "video"] else \
        "the offer must have one audio and one video stream"


def refused(exc: AccessRefused) -> web.Response:
    """The documented error for an offer without the token it needs (never echoes the token);
    `Reflector._observe` counts and logs it as `offer_refused`, as every refusal."""
    headers = {"WWW-Authenticate": 'Bearer realm="netprobe"'} if exc.status == 401 else None
    return json_error(exc.status, exc.code, str(exc), headers=headers)


def listen_failure(exc: OSError) -> str:
    """Why binding failed, in words (asyncio's own message repeats the address)."""
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve ({exc.strerror})"
    return {
        errno.EADDRINUSE: "the port is already in use",
        errno.EADDRNOTAVAIL: "the address is not one of this machine's",
        errno.EACCES: "permission denied (ports below 1024 need administrator rights)",
    }.get(exc.errno or 0, exc.strerror or str(exc))


def parse_offer(body: Any) -> RTCSessionDescription:
    if not isinstance(body, dict):
        raise ProtocolError('the body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise ProtocolError('"type" must be "offer"')
    if body.get("mode", "check") not in ("check", "monitor"):
        raise ProtocolError('"mode" must be "check" or "monitor"')
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError('"sdp" must be a non-empty string')
    if len(sdp) > MAX_SDP_CHARS:
        raise ProtocolError(f'"sdp" must be at most {MAX_SDP_CHARS} characters')
    if not sdp.startswith("v=0"):
        raise ProtocolError('"sdp" is not an SDP session description (must start with "v=0")')
    return RTCSessionDescription(sdp=sdp, type="offer")


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context holding the PEM pair; raises ConfigError saying what is wrong with it
    (unreadable, not PEM, or a key that does not belong to the certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_pair(context, cert_file, key_file)
    return context


def load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load the pair into `context` after trying it on a scratch context first, so a bad pair
    leaves `context` as it was. Raises ConfigError."""
    for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), context):
        try:
            target.load_cert_chain(cert_file, key_file)
        except FileNotFoundError as exc:
            raise ConfigError(f"TLS: {exc.filename}: no such file") from None
        except PermissionError as exc:
            raise ConfigError(f"TLS: {exc.filename}: not readable (permission denied)") \
                from None
        except ssl.SSLError as exc:
            why = ("the key does not belong to the certificate"
                   if "KEY_VALUES_MISMATCH" in str(exc) else
                   f"not a PEM certificate chain and private key ({exc.reason or exc})")
            raise ConfigError(f"TLS: {cert_file} and {key_file}: {why}") from None
        except OSError as exc:
            raise ConfigError(f"TLS: cannot read the certificate or key: "
                              f"{exc.strerror or exc}") from None


def reload_files(settings: ReflectorSettings, tls: ssl.SSLContext | None, gate: Gate) -> None:
    """Load the TLS pair into `tls` and the token secret file into `gate` again (SIGHUP); a
    bad new file keeps the old one and is logged as an error. Never raises."""
    def load_tls() -> None:
        assert tls is not None
        load_pair(tls, settings.tls_cert_file, settings.tls_key_file)

    def load_tokens() -> None:
        gate.keyring = load_keys(settings.token_secret_file)

    for what, wanted, load in (("tls", tls is not None, load_tls),
                               ("tokens", gate.keyring is not None, load_tokens)):
        if not wanted:
            continue
        try:
            load()
        except ConfigError as exc:
            logger.error("kept the old %s files: %s", what, exc, extra={
                "event": "reflector_reload_failed", "what": what, "error": str(exc)})
        else:
            logger.info("reloaded the %s files", what,
                        extra={"event": "reflector_reloaded", "what": what})

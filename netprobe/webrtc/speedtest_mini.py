"""The Speedtest Mini HTTP endpoints on the reflector, for speedtest-cli's TCP speed test
(docs/reflector.md, "TCP speed test").

`speedtest-cli --mini BASE/` (and `netprobe.tcpspeed`, which drives it as a library) speaks:

- `GET BASE/`: the mini page; speedtest-cli reads `upload_extension: "php"` from it;
- `GET BASE/speedtest/latency.txt`: `test=test`;
- `GET BASE/speedtest/random{N}x{N}.jpg` (N in speedtest-cli's sizes, 350..4000): generated
  bytes of about the original Mini's image sizes, streamed from one reusable block;
- `POST BASE/speedtest/upload.php`: the body streamed and counted, never held (at most
  `max_upload_bytes` per request), answered `size=N`.

BASE is the reflector's URL, or `URL/t/TOKEN` where the reflector needs access tokens
(speedtest-cli sends no headers of its own; `Authorization: Bearer` works as well). Any valid
token of the reflector's opens these endpoints for its lifetime (a check token too, although its
offer has spent it: the TCP test follows a check). Transfers are capped per source and in all,
and each source's requests are rate-limited (netprobe.core.admission), each transfer lasts at
most `max_transfer_s`, and shutting the reflector down ends them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from netprobe.core.admission import Admission, AdmissionLimits, Refuse, source_key
from netprobe.httpjson import json_error
from netprobe.tokens import AccessRefused, Gate
from netprobe.webrtc.reflector_http import refused
from netprobe.webrtc.reflector_ops import SOURCE

logger = logging.getLogger(__name__)

IMAGE_BYTES = {350: 245388, 500: 505544, 750: 1118012, 1000: 1986284, 1500: 4468241,
               2000: 7907740, 2500: 12407926, 3000: 17816816, 3500: 24262167, 4000: 31625365}
"""Bytes served for `random{N}x{N}.jpg` (speedtest-cli asks for these N only)."""
BLOCK_BYTES = 64 * 1024
"""The one generated block every download is cut from, and the upload read size."""
TOKEN_PREFIX = "/t/{token}"
"""Path prefix carrying an access token, for clients that cannot send headers."""
MINI_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>netprobe TCP speed test</title></head>
<body><p>netprobe reflector: Speedtest Mini endpoints for speedtest-cli --mini.</p>
<script>var config = { upload_extension: "php" };</script></body></html>
"""
_IMAGE = re.compile(r"random([0-9]{3,4})x\1\.jpg")


@dataclass(frozen=True)
class MiniLimits:
    """What the speedtest endpoints let clients do (so they cannot flood the reflector's link)."""

    max_transfers: int = 32
    """Concurrent downloads and uploads in all (503 `busy` beyond)."""
    max_transfers_per_source: int = 8
    """Concurrent downloads and uploads from one source (429 `too_many_transfers` beyond)."""
    requests_per_minute: float = 60.0
    """Sustained requests per minute from one source (429 `rate_limited`; 0: no limit)."""
    request_burst: int = 120
    """Requests one source may make at once (a speed test takes about 30)."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Largest upload body (413 `body_too_large` beyond)."""
    max_transfer_s: float = 15.0
    """Longest one download or upload may last; it is cut off then."""


_MESSAGES = {
    "rate_limited": "too many speed test requests from this address; wait before trying again",
    "too_many_sessions": "this address already runs as many speed test transfers as allowed; "
                         "wait for one to end",
    "busy": "the reflector runs as many speed test transfers as it allows; try again shortly",
}
_CODES = {"too_many_sessions": "too_many_transfers"}


class SpeedtestMini:
    """The endpoints' state: access, limits, and the transfers running (see module doc)."""

    def __init__(self, gate: Gate, limits: MiniLimits | None = None,
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.gate = gate
        self.limits = limits or MiniLimits()
        self.draining = draining
        """Whether the reflector is draining (new transfers get 503 `draining`)."""
        self.stopping = asyncio.Event()
        """Set on the app's shutdown: running transfers end at once."""
        self.rate = Admission(AdmissionLimits(
            max_checks=2**31, max_monitors=0, max_checks_per_source=2**31,
            offers_per_minute=self.limits.requests_per_minute,
            offer_burst=self.limits.request_burst))
        """Each source's request rate (every request takes a token; holds no slot)."""
        self.admission = Admission(AdmissionLimits(
            max_checks=self.limits.max_transfers, max_monitors=0,
            max_checks_per_source=self.limits.max_transfers_per_source,
            offers_per_minute=0))
        """The transfers running, per source and in all (a transfer counts as a `check`)."""
        self.block = os.urandom(BLOCK_BYTES)

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("", TOKEN_PREFIX):
            app.router.add_get(prefix + "/", self.page)
            app.router.add_get(prefix + "/speedtest/latency.txt", self.latency)
            app.router.add_get(prefix + "/speedtest/{name}", self.download)
            app.router.add_post(prefix + "/speedtest/upload.php", self.upload)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stopping.set()

    # -- access and limits

    def _refusal(self, request: web.Request, transfer: bool) -> web.Response | None:
        """The error answer for `request`, or None if it may go ahead (a transfer then holds
        a slot until its handler releases it)."""
        if self.draining():
            return json_error(503, "draining", "this reflector is shutting down")
        token = request.match_info.get("token")
        authorization = f"Bearer {token}" if token else request.headers.get("Authorization")
        gate = self.gate
        try:
            if gate.refusal is not None:
                raise AccessRefused(503, "not_configured", gate.refusal)
            if not (gate.local or gate.open):
                if not authorization:
                    raise AccessRefused(401, "unauthorized", "this reflector needs an access "
                                        "token: use BASE/t/TOKEN/ or Authorization: Bearer")
                gate.authenticate(authorization, time.time())
        except AccessRefused as exc:
            return self._log(refused(exc), exc.code)
        source, now = _source(request), time.monotonic()
        decision = self.rate.offer(source, "check", now)
        self.rate.release(source, "check")
        if transfer and not isinstance(decision, Refuse):
            decision = self.admission.offer(source, "check", now)  # held until released
        if isinstance(decision, Refuse):
            code = _CODES.get(decision.code, decision.code)
            headers = {"Retry-After": str(decision.retry_after_s)} \
                if decision.retry_after_s else None
            return self._log(json_error(decision.status, code, _MESSAGES[decision.code],
                                        headers=headers), code)
        return None

    def _log(self, response: web.Response, code: str) -> web.Response:
        logger.info("refused a speed test request: %s", code,
                    extra={"event": "speedtest_refused", "reason": code,
                           "status": response.status})
        return response

    # -- the endpoints

    async def page(self, request: web.Request) -> web.Response:
        return self._refusal(request, False) or web.Response(
            text=MINI_PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def latency(self, request: web.Request) -> web.Response:
        return self._refusal(request, False) or web.Response(
            text="test=test", content_type="text/plain", headers={"Cache-Control": "no-cache"})

    async def download(self, request: web.Request) -> web.StreamResponse:
        match = _IMAGE.fullmatch(request.match_info["name"])
        size = IMAGE_BYTES.get(int(match.group(1))) if match else None
        if size is None:
            return json_error(404, "not_found", "no such speed test file (random{N}x{N}.jpg "
                              f"with N one of {', '.join(map(str, IMAGE_BYTES))})")
        refusal = self._refusal(request, True)
        if refusal is not None:
            return refusal
        source = _source(request)
        try:
            response = web.StreamResponse(headers={
                "Content-Type": "image/jpeg", "Cache-Control": "no-cache"})
            response.content_length = size
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            await self._within_limit(self._send(response, size))
            return response
        finally:
            self.admission.release(source, "check")

    async def _send(self, response: web.StreamResponse, size: int) -> None:
        block, left = memoryview(self.block), size
        while left > 0:
            n = min(left, BLOCK_BYTES)
            await response.write(block[:n])
            left -= n
        if left == 0:
            await response.write_eof()

    async def upload(self, request: web.Request) -> web.Response:
        limit = self.limits.max_upload_bytes
        if (request.content_length or 0) > limit:
            return json_error(413, "body_too_large", f"an upload is at most {limit} bytes")
        refusal = self._refusal(request, True)
        if refusal is not None:
            return refusal
        received = [0]
        try:
            await self._within_limit(self._receive(request, received, limit))
        except _TooLarge:
            return json_error(413, "body_too_large", f"an upload is at most {limit} bytes")
        finally:
            self.admission.release(_source(request), "check")
        return web.Response(text=f"size={received[0]}", content_type="text/plain")

    async def _receive(self, request: web.Request, received: list[int], limit: int) -> None:
        async for chunk in request.content.iter_chunked(BLOCK_BYTES):
            received[0] += len(chunk)
            if received[0] > limit:
                raise _TooLarge

    async def _within_limit(self, transfer: Coroutine[Any, Any, None]) -> None:
        """Run `transfer` for at most `max_transfer_s`, and no longer than until shutdown; a
        client that goes away or stops reading ends it quietly. Raises `_TooLarge`."""
        task = asyncio.ensure_future(transfer)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, timeout=self.limits.max_transfer_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            task.cancel()
            outcome, _ = await asyncio.gather(task, stop, return_exceptions=True)
        if isinstance(outcome, _TooLarge):
            raise outcome
        if isinstance(outcome, Exception) and not isinstance(outcome, ConnectionError) and \
                outcome.__class__.__name__ not in ("ClientPayloadError",
                                                   "ClientConnectionResetError"):
            raise outcome


class _TooLarge(Exception):
    pass


def _source(request: web.Request) -> str:
    """The source key the reflector's middleware found, or the TCP peer's."""
    return request.get(SOURCE) or source_key(request.remote or "")


def add_speedtest_routes(app: web.Application, gate: Gate, *,
                         limits: MiniLimits | None = None,
                         draining: Callable[[], bool] = lambda: False) -> SpeedtestMini:
    """Serve the Speedtest Mini endpoints on `app` behind `gate`'s access rules."""
    mini = SpeedtestMini(gate, limits, draining)
    mini.add_routes(app)
    return mini

"""The agent's local HTTP API (aiohttp, loopback only). Documented in docs/agent-api.md and
docs/agent-api.yaml (OpenAPI).

A browser can reach any local web server, so: the Host header must name the loopback API
(DNS rebinding), CORS headers go only to configured origins, and the mutating endpoints
(`POST /v1/session`, `POST /v1/check`) need the token kept in a file only this user can read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from netprobe.agent.control import AgentControl, CheckAlreadyRunning
from netprobe.errors import NetprobeError
from netprobe.httpjson import json_error, strict_loads
from netprobe.promtext import PromText
from netprobe.promtext import response as prometheus_response

logger = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0
MAX_BODY = 4096


def default_token_path() -> Path:
    state = os.environ.get("STATE_DIRECTORY")  # systemd's StateDirectory=
    if state:
        return Path(state.split(":")[0]) / "api-token"
    import platformdirs

    return Path(platformdirs.user_state_dir("netprobe")) / "api-token"


def load_or_create_token(path: Path) -> str:
    """Read the API token, creating it (mode 0600, directory 0700) if missing; a token file
    others can read is made private again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                os.chmod(path, 0o600)
                logger.warning("the API token file was readable by others; made it private")
            token = path.read_text().strip()
            if len(token) >= 32:
                return token
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    except OSError as exc:
        raise NetprobeError(f"cannot keep the API token in {path}: {exc.strerror}") from None


class AgentApi:
    """The API over any `AgentControl` (the running agent, in `app.py`)."""

    def __init__(self, agent: AgentControl) -> None:
        self.agent = agent
        a = agent.settings.agent
        self.host = a.api_host
        self.port = a.api_port
        self.token_path = Path(a.api_token_file) if a.api_token_file else default_token_path()
        self.token = load_or_create_token(self.token_path)
        self._runner: web.AppRunner | None = None
        self._streams: set[web.StreamResponse] = set()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/v1/status", self.get_status)
        app.router.add_get("/v1/events", self.get_events)
        app.router.add_post("/v1/session", self.post_session)
        app.router.add_post("/v1/check", self.post_check)
        app.router.add_get("/metrics", self.get_metrics)
        for path in ("/v1/status", "/v1/events", "/v1/session", "/v1/check", "/metrics"):
            app.router.add_route("OPTIONS", path, self.preflight)
        self.app = app

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise NetprobeError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") \
                from None
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        if sockets:
            self.port = sockets[0].getsockname()[1]

    @property
    def addresses(self) -> list[Any]:
        """The addresses the API listens on (empty until started)."""
        return list(self._runner.addresses) if self._runner is not None else []

    async def stop(self) -> None:
        for stream in list(self._streams):
            stream.force_close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- security ---------------------------------------------------------------------------

    def _host_ok(self, request: web.Request) -> bool:
        host = request.headers.get("Host", "")
        allowed = {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"}
        return host in allowed

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and origin in self.agent.settings.agent.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"

    def _reject(self, reason: str, request: web.Request, status: int, message: str
                ) -> web.Response:
        logger.warning("API request rejected: %s", reason, extra={
            "event": "api_request_rejected", "reason": reason, "path": request.path})
        return json_error(status, reason, message)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self._host_ok(request):
            return self._reject("bad_host", request, 403,
                                "this API answers only to http://127.0.0.1:PORT")
        origin = request.headers.get("Origin")
        allowed = origin is None or origin in self.agent.settings.agent.cors_origins
        if request.method == "POST":
            if not allowed:
                return self._reject("bad_origin", request, 403,
                                    "this web origin is not allowed to use the API")
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = self._reject("bad_token", request, 401,
                                        f"send Authorization: Bearer <token from "
                                        f"{self.token_path.name}>")
                self._cors(request, response)
                return response
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
                exc.status, "http_error")
            allow = exc.headers.get("Allow")
            response = json_error(exc.status, code, exc.reason,
                                  headers={"Allow": allow} if allow else None)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # one request must never take the agent down
            logger.error("API request failed: %s", type(exc).__name__, exc_info=True, extra={
                "event": "error", "where": f"api {request.path}", "error": type(exc).__name__})
            response = json_error(500, "internal_error", "the agent could not answer this request")
        if not response.prepared:
            self._cors(request, response)
        return response

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if not origin or origin not in self.agent.settings.agent.cors_origins:
            return self._reject("bad_origin", request, 403,
                                "this web origin is not allowed to use the API")
        return web.Response(status=204)

    # -- endpoints ----------------------------------------------------------------------------

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.status())

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        if request.content_type != "application/json":
            raise ValueError("send JSON with Content-Type: application/json")
        body = await request.json(loads=strict_loads)
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    async def post_session(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
        except (ValueError, UnicodeDecodeError) as exc:
            return json_error(400, "bad_request", str(exc) or "the body is not valid JSON")
        action = body.get("action")
        if action in ("start", "stop"):
            changed = await (self.agent.start_session() if action == "start"
                             else self.agent.stop_session())
            return web.json_response({"state": self.agent.status()["state"], "changed": changed})
        return json_error(400, "bad_request", '"action" must be "start" or "stop"')

    async def post_check(self, request: web.Request) -> web.Response:
        try:
            result = await self.agent.check_now()
        except CheckAlreadyRunning:
            return json_error(409, "check_running", "a check is already running; read "
                              "/v1/status when it is done")
        except NetprobeError:  # the agent has logged why
            return json_error(503, "check_failed", "the check could not run; see the agent's log")
        return web.json_response(result.to_json())

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        self._cors(request, response)
        await response.prepare(request)
        queue = self.agent.subscribe()
        self._streams.add(response)
        try:
            await response.write(_sse("status", self.agent.status()))
            while True:
                try:  # (asyncio.timeout: wait_for may swallow the shutdown's cancellation)
                    async with asyncio.timeout(SSE_KEEPALIVE_S):
                        event = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(_sse(event.get("type", "status"), event))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.agent.unsubscribe(queue)
            self._streams.discard(response)
        return response

    async def get_metrics(self, request: web.Request) -> web.Response:
        checks, changes = self.agent.counters()
        return prometheus_response(prometheus(self.agent.status(), checks, changes))


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def prometheus(status: dict[str, Any], checks: dict[str, int], changes: int) -> str:
    """The status in Prometheus text exposition format (version 0.0.4)."""
    text = PromText()
    metric = text.metric

    rec = status["recommendation"]
    metric("netprobe_recommendation", "gauge", "1 for the current recommendation.",
           [(f'{{verdict="{v}"}}', 1 if v == rec else 0)
            for v in ("video", "audio_only", "phone", "unknown")])
    metric("netprobe_monitoring", "gauge", "1 while a session is being watched.",
           [("", 1 if status["state"] == "monitoring" else 0)])
    metric("netprobe_status_age_seconds", "gauge", "Age of the figures.",
           [("", status["age_s"])])
    m = status["metrics"]
    metric("netprobe_rtt_ms", "gauge", "Round-trip time to the reflector.", [("", m["rtt_ms"])])
    metric("netprobe_mos_audio", "gauge", "E-model voice quality estimate.",
           [("", m["mos_audio"])])
    for field, help_ in (("kbps", "Throughput sustained, kbit/s."),
                         ("loss_pct", "Packet loss, percent."),
                         ("jitter_ms", "RFC 3550 jitter, ms.")):
        metric(f"netprobe_{field}", "gauge", help_,
               [(f'{{direction="{d}"}}', m[d][field]) for d in ("up", "down")])
    metric("netprobe_checks_total", "counter", "Checks run, by verdict.",
           [(f'{{verdict="{v}"}}', n) for v, n in sorted(checks.items())])
    metric("netprobe_recommendation_changes_total", "counter", "Recommendation changes.",
           [("", changes)])
    metric("netprobe_reflector_up", "gauge", "1 if the reflector answered last time.",
           [("", 1 if status["reflector"] == "ok" else 0)])
    return text.text()

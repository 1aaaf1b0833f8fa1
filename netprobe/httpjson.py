"""JSON over HTTP, shared by the reflector and the agent's local API: the error body
`{"error": {"code", "message"}}` that both document, and strict JSON parsing of request bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web


def json_error(status: int, code: str, message: str, *,
               headers: Mapping[str, str] | None = None) -> web.Response:
    """The documented error response: HTTP `status` with `{"error": {"code", "message"}}`."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def strict_loads(text: str) -> Any:
    """`json.loads` that refuses NaN and Infinity (not JSON; Python accepts them by default)."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")
    return json.loads(text, parse_constant=no_constants)

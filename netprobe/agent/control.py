"""What the local API needs from the agent, and nothing more: the API (`api.py`) depends on
this interface, the runtime (`runtime.py`) provides it, and the composition root (`app.py`)
puts the two together. Neither imports the other."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from netprobe.config import Settings
from netprobe.core.result import CheckResult
from netprobe.errors import NetprobeError


class CheckAlreadyRunning(NetprobeError):
    """A check was asked for while another one runs (they run one at a time)."""


class AgentControl(Protocol):
    @property
    def settings(self) -> Settings:
        """The settings in force (they change on a reload)."""
        ...

    def status(self) -> dict[str, Any]:
        """The status document, schema `netprobe.status/1`."""
        ...

    def counters(self) -> tuple[dict[str, int], int]:
        """(checks run by verdict, recommendation changes) since the agent started."""
        ...

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of the events for `/v1/events` (`type` names the kind)."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None: ...

    async def start_session(self) -> bool:
        """Start monitoring; False if a session was already being watched."""
        ...

    async def stop_session(self) -> bool:
        """Stop monitoring; False if no session was being watched."""
        ...

    async def check_now(self) -> CheckResult:
        """Run a full check and take its verdict. Raises CheckAlreadyRunning, or
        NetprobeError if the check could not run at all."""
        ...

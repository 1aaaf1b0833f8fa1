"""The composition root of `netprobe agent`: the runtime (`runtime.py`), its local API
(`api.py`, which sees the runtime only as an `AgentControl`) and the process signals
(`netprobe.signals`: SIGINT and SIGTERM stop, SIGHUP reloads), wired together in `run_agent`.
"""

from __future__ import annotations

import asyncio
import logging

from netprobe import __version__, exitcodes
from netprobe.agent.api import AgentApi
from netprobe.agent.runtime import AgentRuntime
from netprobe.signals import on_reload_signal, on_stop_signals, remove_stop_signals

logger = logging.getLogger(__name__)


async def run_agent(agent: AgentRuntime) -> int:
    """Serve `agent` with its API until a stop signal (or `agent.request_stop()`); returns
    the exit status."""
    api = AgentApi(agent)
    await api.start()
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, agent.request_stop)
    on_reload_signal(loop, agent.reload)
    logger.info("agent started", extra={"event": "agent_start", "version": __version__,
                                         "config_path": str(agent.config_path or ""),
                                         "api_port": api.port})
    code = exitcodes.FAILED
    try:
        code = await agent.serve()
    finally:
        remove_stop_signals(loop)
        await api.stop()
        logger.info("agent stopped", extra={
            "event": "agent_stop", "reason": "signal" if code == exitcodes.OK else "error"})
    return code


class Agent(AgentRuntime):
    """The background agent (public API): `Agent(settings, ...)`, `await .run()`."""

    async def run(self) -> int:
        return await run_agent(self)

"""What the agent's tests share: polling, the log events, a stand-in for the psutil adapter,
an in-process agent with its API over real HTTP (`start_agent`), an event-stream reader and a
strict Prometheus parser.

Stand-ins, only for what is not under test: the psutil adapter (`FakeSampler`; the machine's
own CPU readings are not under test, and a busy test machine must not turn video into
audio_only), and once a clock running ahead, to age the status past `stale_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netprobe.agent.app import Agent
from netprobe.agent.passive import PassiveState
from netprobe.agent.runtime import MonitorLinkFactory
from netprobe.config import Settings

ORIGIN = "https://video.clinic.example"
STATUS_KEYS = {"schema", "state", "recommendation", "confidence", "reasons", "metrics",
               "updated_at", "age_s", "reflector"}


async def until(probe: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.05) -> Any:
    """Poll `probe` (sync or async) until it gives something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(interval)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


class FakeSampler:
    """Stands in for `passive.PassiveSampler` (psutil): readings the test sets."""

    def __init__(self, cpu: float = 5.0) -> None:
        self.state = PassiveState(interface_up=True, cpu_percent=cpu)

    def sample(self) -> str | None:
        return None


@dataclass
class Running:
    agent: Agent
    task: asyncio.Task[int]
    port: int
    token: str
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.url("/v1/status")) as resp:
            assert resp.status == 200
            return await resp.json()  # type: ignore[no-any-return]

    async def post(self, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        async with self.http.post(self.url(path), json=body,
                                  headers={**self.auth, **headers}) as resp:
            return resp.status, await resp.json()

    async def until_status(self, ok: Callable[[dict[str, Any]], bool], timeout: float,
                           what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            st = await self.status()
            return st if ok(st) else None
        return await until(probe, timeout, what, interval=0.1)  # type: ignore[no-any-return]


StartAgent = Callable[..., Awaitable[Running]]


@contextlib.asynccontextmanager
async def agents(settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
                 ) -> AsyncIterator[StartAgent]:
    """Start `Agent.run()`s (local API on port 0, learnt from the `agent_start` log line);
    each is stopped at the end, and must end with exit status 0."""
    running: list[Running] = []

    async def start(server: str, *, sampler: FakeSampler | None = None,
                    clock: Callable[[], float] | None = None,
                    monitor_link: MonitorLinkFactory | None = None,
                    **overrides: Any) -> Running:
        caplog.set_level(logging.INFO, logger="netprobe")
        token_file = tmp_path / f"state{len(running)}" / "api-token"
        agent = Agent(settings, overrides={
            "server": server, "api_port": 0, "idle_interval_s": 3600.0,
            "api_token_file": str(token_file), **overrides}, **({"clock": clock} if clock else {}),
            **({"monitor_link": monitor_link} if monitor_link else {}),
            sampler=sampler or FakeSampler())
        seen = len(caplog.records)
        task = asyncio.get_running_loop().create_task(agent.run())

        def started() -> int | None:
            assert not task.done(), task
            return next((r.api_port for r in caplog.records[seen:]  # type: ignore[attr-defined]
                         if getattr(r, "event", None) == "agent_start"), None)

        port = await until(started, 5, "agent_start")
        r = Running(agent, task, port, token_file.read_text().strip(), aiohttp.ClientSession())
        running.append(r)
        return r

    yield start
    for r in running:
        await r.http.close()
        r.agent.request_stop()
        assert await asyncio.wait_for(r.task, 10) == 0


class EventStream:
    """A reader of text/event-stream."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        async def read() -> tuple[str, dict[str, Any]]:
            kind, data = "message", []
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the event stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        return kind, json.loads("\n".join(data))
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
        return await asyncio.wait_for(read(), timeout)

    async def next_of(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got, data = await self.next(max(0.01, deadline - time.monotonic()))
            if got == kind:
                return data


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? (\S+)(?: -?\d+)?$")


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Parse the text exposition format (0.0.4) strictly: {name: {labels: value}}."""
    assert text.endswith("\n")
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            assert name not in types and name not in samples, "TYPE after samples: " + line
            types[name] = kind
        elif line.startswith("#") or not line:
            continue
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), (m.group(2) or "{}")[1:-1], m.group(3)
            assert name in types, f"sample without TYPE: {line!r}"
            assert labels not in samples.get(name, {}), f"duplicate sample: {line!r}"
            samples.setdefault(name, {})[labels] = float(value)
    assert set(types) == helps
    return samples


"""The agent benchmark's rig: `netprobe serve` in the lab's server namespace, `netprobe agent`
(its own process, with a temporary config: reflector URL, API port, token file and JSON log in
a temporary directory) and the HTTP helper (`netprobe.bench.agent.helper`) in its client
namespace.

    async with rig(load_profile("clean")) as r:
        await r.session("start")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil

from netprobe.bench.kit import NETPROBE, code_version
from netprobe.config import AgentSettings
from netprobe.lab.accuracy import start_reflector
from netprobe.lab.errors import LabError
from netprobe.lab.linklab import LinkLab
from netprobe.lab.profiles import Profile
from netprobe.tokens import issue, load_keys

REFLECTOR_PORT = 8765
API_PORT = 8766
HELPER = (sys.executable, "-m", "netprobe.bench.agent.helper")
#: The idle interval the agent uses by default.
DEFAULT_IDLE_INTERVAL_S = AgentSettings.idle_interval_s


class RigError(LabError):
    """The rig could not do what a benchmark asked (the agent did not start or answer)."""


def parse_ts(ts: str) -> float:
    """A JSON log line's `ts` as a Unix time."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file (lines that are not JSON left out; none if no file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


class Rig:
    """`netprobe serve` in the server namespace, `netprobe agent` and an HTTP helper in the
    client namespace of `lab`. `start()` starts them; `stop()` ends every process and task
    the rig started."""

    def __init__(self, lab: LinkLab, workdir: Path) -> None:
        self.lab = lab
        self.dir = workdir
        self.log_path = workdir / "agent.log"
        self.token_path = workdir / "api-token"
        self.config_path = workdir / "agent.toml"
        self.agent: asyncio.subprocess.Process | None = None
        self.helper: asyncio.subprocess.Process | None = None
        self.events_proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        """The helper's events, in arrival order."""
        self.token = ""
        self.api_up_at: float | None = None
        self.agent_started_at: float | None = None
        self.reflector_err: list[str] = []
        self.exit_code: int | None = None
        """The agent's exit status after SIGTERM (set when the rig closes)."""
        self.stderr_text = ""
        """What the agent wrote to stderr (set when the rig closes)."""
        self.version = code_version()
        """The netprobe code the agent was started from."""
        self._tasks: list[asyncio.Task[Any]] = []
        self._agent_err: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.pid

    async def start(self, extra_agent_config: str = "") -> None:
        lab = self.lab
        secret, reflector_token = self.dir / "token-secret", self.dir / "reflector-token"
        secret.write_text(f"lab = {secrets.token_hex(32)}\n")
        secret.chmod(0o600)
        reflector_token.write_text(issue(load_keys(secret), "monitor", time.time()) + "\n")
        server = await start_reflector(lab, REFLECTOR_PORT, timeout=30,
                                       args=("--token-secret-file", str(secret)))
        assert server.stderr is not None
        self._tasks.append(asyncio.create_task(self._drain(server.stderr, self.reflector_err)))
        self.config_path.write_text(
            "[agent]\n"
            f'server = "http://{lab.server_addr}:{REFLECTOR_PORT}"\n'
            f"api_port = {API_PORT}\n"
            f'api_token_file = "{self.token_path}"\n'
            f'token_file = "{reflector_token}"\n'
            f'log_file = "{self.log_path}"\n' + extra_agent_config)
        self._agent_err = (self.dir / "agent.stderr").open("wb")  # noqa: ASYNC230, SIM115
        self.agent_started_at = time.monotonic()
        self.agent = await lab.exec_client(
            *NETPROBE, "--config", str(self.config_path), "agent",
            stdout=asyncio.subprocess.DEVNULL, stderr=self._agent_err)
        self.helper = await lab.exec_client(
            *HELPER, "repl", str(API_PORT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        reply = await self.call({"op": "wait", "timeout": 30}, timeout=40)
        if reply.get("status") != 200:
            raise RigError(f"the agent's API did not answer: {reply}; agent stderr: "
                           f"{self.agent_stderr()[-2000:]}")
        self.api_up_at = time.monotonic()
        self.token = self.token_path.read_text().strip()
        name = psutil.Process(self.pid).cmdline()
        if "agent" not in name:
            raise RigError(f"pid {self.pid} is not the agent: {name}")

    async def start_events(self) -> None:
        """Follow the agent's event stream (into `events`); returns at the first event or
        after 10 s."""
        self.events_proc = await self.lab.exec_client(
            *HELPER, "events", str(API_PORT), stdout=asyncio.subprocess.PIPE)
        assert self.events_proc.stdout is not None
        self._tasks.append(asyncio.create_task(self._read_events(self.events_proc.stdout)))
        deadline = time.monotonic() + 10
        while not self.events and time.monotonic() < deadline:  # noqa: ASYNC110 (a pipe)
            await asyncio.sleep(0.05)

    async def _read_events(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode(errors="replace"))

    async def call(self, cmd: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """One command to the helper (see its module), its one-line answer."""
        assert self.helper is not None and self.helper.stdin and self.helper.stdout
        self.helper.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.helper.stdin.drain()
        line = await asyncio.wait_for(self.helper.stdout.readline(), timeout)
        if not line:
            raise RigError("the HTTP helper exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def status(self) -> dict[str, Any]:
        reply = await self.call({"op": "get", "path": "/v1/status"})
        if reply.get("status") != 200:
            raise RigError(f"GET /v1/status failed: {reply}")
        body: dict[str, Any] = reply["body"]
        return body

    async def session(self, action: str) -> dict[str, Any]:
        reply = await self.call({"op": "post", "path": "/v1/session",
                                 "body": {"action": action}, "token": self.token})
        if reply.get("status") != 200:
            raise RigError(f"POST /v1/session {action} failed: {reply}")
        body: dict[str, Any] = reply["body"]
        return body

    async def wait_first_check(self, timeout: float = 40) -> None:
        """Until the start-up check has finished (read from the log: no API traffic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == "check_finished" for e in self.log()):
                return
            await asyncio.sleep(0.2)
        raise RigError("the agent's first check did not finish in time")

    def log(self) -> list[dict[str, Any]]:
        """The agent's JSON log so far."""
        return read_log(self.log_path)

    def agent_stderr(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "agent.stderr").read_text(errors="replace")
        return ""

    async def stop(self) -> int | None:
        """Stop the agent with SIGTERM (as a service manager would) and the helpers; return
        the agent's exit status (None if it had to be killed)."""
        code = None
        if self.agent is not None and self.agent.returncode is None:
            self.agent.terminate()
            try:
                code = await asyncio.wait_for(self.agent.wait(), 10)
            except TimeoutError:
                self.agent.kill()
                await self.agent.wait()
        elif self.agent is not None:
            code = self.agent.returncode
        for proc in (self.helper, self.events_proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._agent_err is not None:
            self._agent_err.close()
        return code


@contextlib.asynccontextmanager
async def rig(profile: Profile, extra_agent_config: str = "") -> AsyncIterator[Rig]:
    """A lab for `profile` with a started `Rig` in it; everything stopped and removed on the
    way out (also on an exception or a cancellation)."""
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        async with LinkLab(profile) as lab:
            r = Rig(lab, Path(tmp))
            try:
                await r.start(extra_agent_config)
                yield r
            finally:
                r.exit_code = await r.stop()
                r.stderr_text = r.agent_stderr()

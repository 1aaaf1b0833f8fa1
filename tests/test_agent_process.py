"""`netprobe agent` as a process: bad configurations refused with exit status 2 and no
traceback, the API served, SIGTERM a clean stop, an unwritable log file survived."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import until
from procs import CHILD_ENV, NETPROBE, free_port

from netprobe.webrtc.reflector import Reflector


def run_cli(*args: str) -> tuple[int, str]:
    import subprocess

    proc = subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=30,
                          env=CHILD_ENV)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("content", "line", "needle"), [
    ('[agent]\nserver = "http://127.0.0.1:9"\nidle_interval_s = 5\n', 3, "idle_interval_s"),
    ('[agent]\napi_host = "0.0.0.0"\n', 2, "api_host"),
    ('[agent]\nserver = "http://127.0.0.1:9"\n\nfrobnicate = true\n', 4, "frobnicate"),
    ('[agent]\nserver = "http://127.0.0.1:9"\nidle_interval_s =\n', 3, "not valid TOML"),
])
def test_agent_with_a_bad_config_exits_2_naming_file_and_line(
        tmp_path: Path, content: str, line: int, needle: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(content)
    code, err = run_cli("--config", str(path), "agent", "--log-file", str(tmp_path / "a.log"))
    assert code == 2, err
    assert str(path) in err and f"line {line}" in err and needle in err
    assert "Traceback" not in err


def test_agent_without_a_server_exits_2(tmp_path: Path) -> None:
    code, err = run_cli("agent", "--log-file", str(tmp_path / "a.log"))
    assert code == 2, err
    assert "--server" in err and "Traceback" not in err


@dataclass
class AgentProcess:
    proc: asyncio.subprocess.Process
    port: int
    config: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and everything it wrote to stderr."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), 15)
        return await asyncio.wait_for(self.proc.wait(), 5), err.decode()


@pytest.fixture
async def agent_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AgentProcess]]]:
    started: list[AgentProcess] = []

    async def start(server: str, log_file: Path) -> AgentProcess:
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nidle_interval_s = 3600\n'
                          f'api_token_file = "{tmp_path / "state" / "api-token"}"\n')
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *NETPROBE, "--config", str(config), "agent", "--server", server,
            "--api-port", str(port), "--log-file", str(log_file),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
        started.append(AgentProcess(proc, port, config))
        return started[-1]

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


async def test_agent_with_a_server_that_is_not_a_url_exits_2(
        agent_process: Callable[..., Awaitable[AgentProcess]], tmp_path: Path) -> None:
    p = await agent_process("not-a-url", tmp_path / "agent.log")
    try:
        code = await asyncio.wait_for(p.proc.wait(), 3)
    except TimeoutError:
        raise AssertionError("the agent is running with --server not-a-url") from None
    assert p.proc.stderr is not None
    err = (await p.proc.stderr.read()).decode()
    assert code == 2 and "server" in err and "Traceback" not in err


async def get_status(http: aiohttp.ClientSession, p: AgentProcess) -> dict[str, Any] | None:
    assert p.proc.returncode is None, "the agent process exited"
    try:
        async with http.get(p.url("/v1/status")) as resp:
            return await resp.json() if resp.status == 200 else None  # type: ignore[no-any-return]
    except aiohttp.ClientConnectionError:
        return None


async def test_agent_process_serves_status_and_stops_cleanly_on_sigterm(
        reflector: Reflector, agent_process: Callable[..., Awaitable[AgentProcess]],
        tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "agent.log"
    p = await agent_process(reflector.url, log_file)
    async with aiohttp.ClientSession() as http:
        st = await until(lambda: get_status(http, p), 15, "the agent's API", interval=0.1)
        assert st["schema"] == "netprobe.status/1" and st["state"] == "idle"
        token_file = tmp_path / "state" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # stop it while its first idle check has a live peer connection to the reflector
        await until(lambda: any(s.pc.connectionState == "connected"
                                for s in reflector.sessions.values()), 10,
                    "the idle check to connect", interval=0.02)
        assert (await get_status(http, p) or {}).get("check_running")
    code, err = await p.stop()
    assert code == 0, err
    assert "Traceback" not in err and "Task was destroyed" not in err
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    names = [line["event"] for line in lines]
    assert names[0] == "agent_start" and lines[0]["api_port"] == p.port
    assert "check_started" in names
    assert names[-1] == "agent_stop" and lines[-1]["reason"] == "signal"
    assert all(line["ts"].endswith("Z") for line in lines)
    # the peer connection was closed, not left for the reflector to time out
    await until(lambda: not reflector.sessions, 5, "the reflector to see the client go")


def read_only_location(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        directory = tmp_path / "read-only"
        directory.mkdir()
        directory.chmod(0o555)
        return directory / "agent.log"
    if Path("/sys/kernel").is_dir():
        return Path("/sys/netprobe-test-agent.log")  # sysfs: not even root creates files there
    pytest.skip("no read-only location for root on this system")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
async def test_agent_with_an_unwritable_log_file_logs_to_stderr_and_runs(
        agent_process: Callable[..., Awaitable[AgentProcess]], tmp_path: Path,
        where: str) -> None:
    if where == "under_a_file":
        (tmp_path / "plain-file").write_text("")
        log_file = tmp_path / "plain-file" / "logs" / "agent.log"  # cannot be created
    else:
        log_file = read_only_location(tmp_path)
    p = await agent_process(f"http://127.0.0.1:{free_port()}", log_file)
    async with aiohttp.ClientSession() as http:
        st = await until(lambda: get_status(http, p), 15, "the agent's API", interval=0.1)
        assert st["schema"] == "netprobe.status/1"
    code, err = await p.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert not log_file.exists()
    json_lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [line for line in json_lines if line["event"] == "log_file_error"]
    assert len(failures) == 1, err
    assert failures[0]["path"] == str(log_file)
    assert re.fullmatch(r"E[A-Z]+", failures[0]["error"])
    names = [line["event"] for line in json_lines]
    assert "agent_start" in names and names[-1] == "agent_stop"


"""Checks and monitoring streams in a child process (`netprobe.agent.worker`), against a real
reflector: what the agent gets back, and how it copes when the child fails."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
from aioice import stun
from procs import free_port

from netprobe.agent import worker
from netprobe.config import Settings
from netprobe.core.result import CheckResult
from netprobe.errors import NetprobeError, ServerUnreachable
from netprobe.webrtc.client import MonitorLink
from netprobe.webrtc.paths import ice_connection
from netprobe.webrtc.reflector import Reflector


async def test_check_in_a_child_returns_the_whole_result(reflector: Reflector,
                                                          settings: Settings) -> None:
    result = await worker.run_check_isolated(reflector.url, settings)
    assert isinstance(result, CheckResult)
    assert result.verdict.verdict == "video", result.to_json()
    assert result.metrics.connected and result.metrics.rtt_ms is not None
    assert result.ladder["up"] and result.to_json()["schema"] == "netprobe.check/1"


async def test_check_in_a_child_on_an_unreachable_server_is_a_verdict(
        settings: Settings) -> None:
    result = await worker.run_check_isolated(f"http://127.0.0.1:{free_port()}", settings)
    assert result.verdict.verdict == "unknown"
    assert result.verdict.reasons[0].code == "server_unreachable"


async def test_monitor_in_a_child_streams_echoes_then_stops_when_asked(
        reflector: Reflector, settings: Settings) -> None:
    echoes: list[tuple[Any, float]] = []
    link = worker.IsolatedMonitorLink(reflector.url, settings, 0.05,
                                      lambda echo, now: echoes.append((echo, now)))
    await link.connect(10)
    try:
        await asyncio.sleep(1.5)
        assert not link.failed.is_set()
    finally:
        await link.close()
    assert link.failed.is_set()
    assert 15 <= len(echoes) <= 40, len(echoes)  # 20 probes a second
    seqs = [e.seq for e, _ in echoes]
    assert seqs == sorted(seqs)
    # sent in batches, but each echo keeps its own arrival time (20 a second, not 5 bunches)
    nows = [now for _, now in echoes]
    assert nows == sorted(nows) and len(set(nows)) == len(nows)
    assert statistics.median(b - a for a, b in itertools.pairwise(nows)) > 0.02
    # arrival times are this process's monotonic clock: usable by the agent's windows
    assert all(abs(now - time.monotonic()) < 5 for _, now in echoes)
    await asyncio.sleep(0.5)
    assert not reflector.sessions, "the reflector still holds the monitoring session"


async def test_monitor_child_that_cannot_connect_raises(settings: Settings) -> None:
    link = worker.IsolatedMonitorLink(f"http://127.0.0.1:{free_port()}", settings, 0.05,
                                      lambda echo, now: None)
    with pytest.raises(ServerUnreachable):
        await link.connect(5)
    assert link.failed.is_set()


@pytest.mark.parametrize("spacing", [0.0, -1.0, 1e9, float("nan")])
async def test_a_monitor_request_with_a_spacing_out_of_range_is_refused(
        reflector: Reflector, settings: Settings, spacing: float) -> None:
    link = worker.IsolatedMonitorLink(reflector.url, settings, spacing, lambda echo, now: None)
    with pytest.raises(NetprobeError, match="probe spacing .* out of range"):
        await link.connect(5)
    assert link.failed.is_set() and not reflector.sessions


async def test_killed_monitor_child_sets_failed(reflector: Reflector, settings: Settings) -> None:
    link = worker.IsolatedMonitorLink(reflector.url, settings, 0.05, lambda echo, now: None)
    await link.connect(10)
    try:
        assert link._child is not None
        link._child._proc.kill()
        await asyncio.wait_for(link.failed.wait(), 5)
    finally:
        await link.close()


async def test_child_that_dies_before_answering_is_a_clear_error(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken installation: the child's interpreter cannot even import netprobe.
    monkeypatch.setattr(worker, "_WORKER_ARGS", ("-c", "import sys; sys.exit('no netprobe')"))
    with pytest.raises(NetprobeError, match="ended without a result.*exit status 1.*no netprobe"):
        await worker.run_check_isolated("http://127.0.0.1:1", settings)


def test_bad_request_gives_exit_2_and_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "netprobe.agent.worker"],
                          input=b"\x00\x00\x00\x03abc",
                          capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"unreadable request" in proc.stderr and b"Traceback" not in proc.stderr
    assert proc.stdout == b""


def test_empty_stdin_exits_quietly() -> None:
    proc = subprocess.run([sys.executable, "-m", "netprobe.agent.worker"], input=b"",
                          capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""


def test_the_agent_never_loads_the_webrtc_stack() -> None:
    # What keeps an idle agent small: its own process imports neither aiortc nor PyAV.
    code = ("import sys, netprobe.cli.main, netprobe.agent.runtime, netprobe.agent.api, "
            "netprobe.logs.jsonlog, "
            "netprobe.agent.passive, netprobe.service.manager; "
            "print(sorted(m for m in ('aiortc', 'av', 'aioice') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"


async def test_child_of_an_agent_that_died_stops_and_frees_the_reflector(
        reflector: Reflector, settings: Settings) -> None:
    # An agent killed with SIGKILL leaves no chance to stop its child: the kernel closes the
    # child's pipes, and that alone must end it (and its reflector session).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netprobe.agent.worker", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(worker.encode_frame(("monitor", reflector.url, settings, 0.05, 10.0)))
    await proc.stdin.drain()
    (size,) = struct.unpack("!I", await asyncio.wait_for(proc.stdout.readexactly(4), 20))
    assert pickle.loads(await proc.stdout.readexactly(size)) == ("connected",)
    assert len(reflector.sessions) == 1
    proc.stdin.close()
    proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    err = await proc.stderr.read() if proc.stderr else b""
    assert b"Traceback" not in err, err.decode()
    for _ in range(50):
        if not reflector.sessions:
            break
        await asyncio.sleep(0.1)
    assert not reflector.sessions


async def test_an_echo_the_agent_cannot_take_ends_the_stream_not_the_agent(
        reflector: Reflector, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    def broken(echo: Any, now: float) -> None:
        raise ValueError("unexpected echo")

    link = worker.IsolatedMonitorLink(reflector.url, settings, 0.05, broken)
    await link.connect(10)
    try:
        await asyncio.wait_for(link.failed.wait(), 5)
    finally:
        await link.close()  # must not raise
    [rec] = [r for r in caplog.records if getattr(r, "event", None) == "error"]
    assert rec.where == "monitor" and "ValueError" in rec.error  # type: ignore[attr-defined]


async def test_a_monitoring_link_stops_probing_the_path_once_connected(
        reflector: Reflector, settings: Settings) -> None:
    """The path's STUN prober (20 Binding requests a second) is for finding the path: a
    monitored session keeps only aioice's own consent checks (one every ~5 s)."""
    link = MonitorLink(reflector.url, settings, 0.05, lambda echo, now: None)
    await link.connect(10)
    try:
        connection = ice_connection(link._peer.pc)  # type: ignore[union-attr]
        assert connection is not None
        requests: list[float] = []
        for protocol in connection._protocols:
            send = protocol.send_stun

            def counting(message: Any, addr: Any, send: Any = send) -> None:
                if message.message_class == stun.Class.REQUEST:
                    requests.append(time.monotonic())
                send(message, addr)

            protocol.send_stun = counting
        await asyncio.sleep(2.0)
        assert not link.failed.is_set()
    finally:
        await link.close()
    assert len(requests) <= 2, len(requests)


async def test_the_agent_changes_a_monitoring_childs_probe_spacing_while_it_streams(
        reflector: Reflector, settings: Settings) -> None:
    """`("interval", s)` on the child's stdin: the probes (and so their echoes) come at the
    new spacing, in both directions of a change; a nonsense spacing is ignored."""
    echoes: list[float] = []
    link = worker.IsolatedMonitorLink(reflector.url, settings, 0.05,
                                      lambda echo, now: echoes.append(now))

    async def spacing_over(seconds: float) -> float:
        start = len(echoes)
        await asyncio.sleep(seconds)
        return statistics.median(b - a for a, b in itertools.pairwise(echoes[start:]))

    await link.connect(10)
    try:
        await asyncio.sleep(0.3)
        assert 0.04 < await spacing_over(1.5) < 0.06
        link.set_interval(0.2)
        await asyncio.sleep(0.5)  # the batch in flight and the probe already scheduled
        assert 0.18 < await spacing_over(2.0) < 0.22
        link._child.send(("interval", 0))  # type: ignore[union-attr]  # (would busy-loop)
        link._child.send(("interval", "fast"))  # type: ignore[union-attr]
        link.set_interval(0.05)
        await asyncio.sleep(0.5)
        assert 0.04 < await spacing_over(1.5) < 0.06
        link._child.send(("interval", 1e9))  # type: ignore[union-attr]  # (would go silent)
        before = len(echoes)
        await asyncio.sleep(1.5)
        assert len(echoes) - before >= 20, "the stream stopped probing"
        assert not link.failed.is_set()
    finally:
        await link.close()

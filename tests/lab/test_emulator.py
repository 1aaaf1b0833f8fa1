"""The emulator end to end: real namespaces, TUN devices and UDP traffic.

Needs root and /dev/net/tun; skipped with the reason otherwise (CI runs as root).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netprobe.lab import (
    LabUnavailable,
    LinkConfig,
    LinkLab,
    Phase,
    Profile,
    check_lab_available,
)
from netprobe.lab import netns as netns_module
from netprobe.lab.netns import list_namespaces
from netprobe.lab.profiles import PROJECT_ROOT
from netprobe.lab.udpmeter import one_way, round_trip

REASON = check_lab_available()
lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def mine() -> list[str]:
    """Lab namespaces created by this test process."""
    return [n for n in list_namespaces() if n.startswith(f"np-{os.getpid()}-")]


def running(pattern: str) -> bool:
    """Whether a process whose command line matches ``pattern`` runs."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def symmetric(name: str, config: LinkConfig) -> Profile:
    return Profile(name, name, config, config)


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    if REASON is None:
        assert mine() == []


# -- preconditions (these run anywhere) -------------------------------------------------------


def test_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = check_lab_available()
    assert reason is not None and "root" in reason


async def test_lab_refuses_clearly_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabUnavailable, match="needs root"):
        async with LinkLab(symmetric("x", LinkConfig())):
            pass


def test_missing_tun_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_exists = os.path.exists
    monkeypatch.setattr(
        netns_module.os.path, "exists", lambda p: False if p == "/dev/net/tun" else real_exists(p)
    )
    assert check_lab_available() == (
        "/dev/net/tun is missing: load the tun kernel module (or pass the device in)"
    )


# -- accuracy -----------------------------------------------------------------------------------


@pytest.mark.lab
@lab
async def test_delay_round_trip_and_one_way() -> None:
    profile = symmetric("delay-50", LinkConfig(delay_ms=50))
    async with LinkLab(profile) as lab_:
        rtts = await round_trip(lab_, count=50)
        up = await one_way(lab_, "client", count=200, rate_kbps=400, size=200, idle_s=0.5)
        down = await one_way(lab_, "server", count=200, rate_kbps=400, size=200, idle_s=0.5)
    assert len(rtts) == 50
    assert 100.0 <= statistics.median(rtts) < 101.5
    for summary in (up, down):
        assert summary.received == 200 and summary.reordered == 0
        assert 50.0 <= summary.delay_ms_min and summary.delay_ms_median < 51.0


@pytest.mark.lab
@lab
async def test_loss_is_the_models_and_close_to_the_profile() -> None:
    profile = Profile(
        "loss", "", LinkConfig(delay_ms=5, loss_pct=10, seed=1), LinkConfig(delay_ms=5)
    )
    async with LinkLab(profile) as lab_:
        up = await one_way(lab_, "client", count=4000, rate_kbps=2000, size=250, idle_s=0.5)
        down = await one_way(lab_, "server", count=1000, rate_kbps=2000, size=250, idle_s=0.5)
        stats = lab_.stats()
    # The emulator loses exactly what the model decided, nothing more ...
    assert up.sent - up.received == stats.up.dropped_loss
    assert down.received == down.sent == 1000
    # ... and the model's loss is the profile's, within sampling error (sigma 0.47 points).
    assert abs(up.loss_pct - 10.0) < 4 * math.sqrt(0.1 * 0.9 / 4000) * 100


@pytest.mark.lab
@lab
async def test_rate_limit_and_queue() -> None:
    up = LinkConfig(delay_ms=10, rate_kbps=2000, queue_packets=40)
    down = LinkConfig(delay_ms=10, rate_kbps=1000, queue_packets=20)
    async with LinkLab(Profile("rate", "", up, down)) as lab_:
        sent_up, sent_down = await asyncio.gather(
            one_way(lab_, "client", count=900, rate_kbps=3000, size=1200, idle_s=0.5),
            one_way(lab_, "server", count=450, rate_kbps=1500, size=1200, idle_s=0.5),
        )
        stats = lab_.stats()
    assert sent_up.rate_kbps == pytest.approx(2000, rel=0.03)
    assert sent_down.rate_kbps == pytest.approx(1000, rel=0.03)
    assert stats.up.dropped_queue > 0 and stats.down.dropped_queue > 0
    # A full queue of 40 x 1200 bytes at 2 Mbit/s adds ~192 ms (bufferbloat). Most packets
    # arrive once it is full: the median says it, where the maximum would also count one late
    # wake-up of a busy machine (CI saw 218 ms once).
    assert 190 < sent_up.delay_ms_median - 10 < 215
    assert sent_up.delay_ms_max - 10 > 190


@pytest.mark.lab
@lab
async def test_phase_switch_mid_run() -> None:
    fast, slow = LinkConfig(delay_ms=10), LinkConfig(delay_ms=60)
    profile = Profile("phased", "", fast, fast, (Phase(1.5, slow, slow),))
    async with LinkLab(profile) as lab_:
        await asyncio.sleep(0.3)
        before = await round_trip(lab_, count=10)
        await asyncio.sleep(max(0.0, 1.6 - lab_.elapsed()))
        after = await round_trip(lab_, count=10)
    assert 20 <= statistics.median(before) < 21.5
    assert 120 <= statistics.median(after) < 121.5


@pytest.mark.lab
@lab
async def test_addresses_and_environment() -> None:
    async with LinkLab(symmetric("env", LinkConfig())) as lab_:
        process = await lab_.exec_client(
            sys.executable,
            "-c",
            "import os; print(os.environ['NETPROBE_LAB_SERVER_ADDR'], "
            "os.environ['NETPROBE_LAB_CLIENT_ADDR'])",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert out.split() == [lab_.server_addr.encode(), lab_.client_addr.encode()]
        assert {lab_.client_ns, lab_.server_ns} <= set(list_namespaces())


# -- cleanup ------------------------------------------------------------------------------------


@pytest.mark.lab
@lab
async def test_no_namespace_left_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with LinkLab(symmetric("raise", LinkConfig(delay_ms=1))) as lab_:
            names = {lab_.client_ns, lab_.server_ns}
            sleeper = await lab_.exec_server("sleep", "60")
            raise RuntimeError("boom")
    assert not names & set(list_namespaces())
    assert sleeper.returncode is not None


@pytest.mark.lab
@lab
async def test_no_namespace_left_when_cancelled() -> None:
    seen: list[str] = []
    up = asyncio.Event()

    async def body() -> None:
        async with LinkLab(symmetric("cancel", LinkConfig())) as lab_:
            seen.extend([lab_.client_ns, lab_.server_ns])
            up.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await asyncio.wait_for(up.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not set(seen) & set(list_namespaces())


@pytest.mark.lab
@lab
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_run_cleans_up_on_signal(sig: signal.Signals, status: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "netprobe.lab", "run", "-q", "--profile", "dsl",
         "--server-cmd", "sleep 61.4242", "--", "sleep", "62.4242"],
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    prefix = f"np-{process.pid}-"
    try:
        deadline = time.monotonic() + 10
        while not [n for n in list_namespaces() if n.startswith(prefix)]:
            assert time.monotonic() < deadline, "the lab did not come up"
            time.sleep(0.05)
        time.sleep(0.5)  # let the commands start
        process.send_signal(sig)
        assert process.wait(timeout=10) == status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not [n for n in list_namespaces() if n.startswith(prefix)]
    assert not running("^sleep 61.4242$") and not running("^sleep 62.4242$")


@pytest.mark.lab
@lab
def test_cli_run_returns_the_commands_status(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netprobe.lab", "run", "-q", "--profile", "clean", "--",
         "sh", "-c", 'test "$NETPROBE_LAB_SERVER_ADDR" = 198.18.0.2 && exit 7'],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr

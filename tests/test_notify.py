"""Desktop notices through the real library against a real notification server: a private
DBus session bus (`dbus-daemon`), a virtual display (`Xvfb`) and `dunst` on it, started here;
what dunst received is read back with `dunstctl`. And a computer without any of that: one
warning, no exception, the agent goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from agent_support import FakeSampler, agents, events, until

from netprobe.agent.notify import DesktopNotices, DesktopSender
from netprobe.agent.passive import PassiveState
from netprobe.config import Settings
from netprobe.core.notices import OPENING_S
from netprobe.webrtc.reflector import Reflector

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
"""A session bus with no service directories: nothing is started on demand."""
DUNSTRC = "[global]\n    stack_duplicates = false\n    notification_limit = 0\n"
"""Every notification counted apart (dunst would otherwise stack identical ones)."""


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            message = f"{program} is not installed (apt packages dbus, dunst, xvfb)"
            pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Desktop:
    env: dict[str, str]

    def dunstctl(self, *args: str) -> str:
        return subprocess.run(["dunstctl", *args], env=self.env, capture_output=True, text=True,
                              timeout=10, check=True).stdout

    def count(self) -> int:
        """Every notification dunst has had: waiting, shown and in its history."""
        return sum(int(self.dunstctl("count", kind).strip())
                   for kind in ("waiting", "displayed", "history"))

    def received(self) -> list[tuple[str, str, str]]:
        """(application, summary, body) of each notification, oldest first."""
        self.dunstctl("close-all")  # shown ones move to the history, which dunstctl prints
        deadline = time.monotonic() + 5
        while int(self.dunstctl("count", "displayed").strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        history = json.loads(self.dunstctl("history"))["data"][0]
        return [(n["appname"]["data"], n["summary"]["data"], n["body"]["data"])
                for n in sorted(history, key=lambda n: n["id"]["data"])]


def start_bus(tmp_path: Path, procs: list[subprocess.Popen[Any]]) -> str:
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG)
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork",
                            "--print-address=1"], stdout=subprocess.PIPE, text=True)
    procs.append(bus)
    assert bus.stdout is not None
    address = bus.stdout.readline().strip()
    assert address.startswith("unix:"), address
    return address


@pytest.fixture
def bus_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A session bus with no notification server on it; this process uses it."""
    need("dbus-daemon")
    procs: list[subprocess.Popen[Any]] = []
    try:
        address = start_bus(tmp_path, procs)
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield address
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture
def desktop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desktop]:
    """A session bus, a virtual display and dunst: a desktop's notification service."""
    need("dbus-daemon", "dbus-send", "Xvfb", "dunst", "dunstctl")
    procs: list[subprocess.Popen[Any]] = []
    try:
        address = start_bus(tmp_path, procs)
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-nolisten", "tcp", "-screen", "0",
                                 "640x480x24"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(xvfb)
        assert xvfb.stdout is not None
        display = ":" + xvfb.stdout.readline().strip()
        assert display != ":", "Xvfb did not report its display"
        env = {**os.environ, "DISPLAY": display, "DBUS_SESSION_BUS_ADDRESS": address,
               "HOME": str(tmp_path)}
        (tmp_path / "dunstrc").write_text(DUNSTRC)
        procs.append(subprocess.Popen(["dunst", "-config", str(tmp_path / "dunstrc")], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        d = Desktop(env)
        deadline = time.monotonic() + 10
        while True:
            try:
                d.dunstctl("count", "history")
                break
            except subprocess.CalledProcessError:
                assert procs[-1].poll() is None, "dunst exited"
                assert time.monotonic() < deadline, "dunst did not take the bus name"
                time.sleep(0.1)
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield d
    finally:
        for proc in reversed(procs):
            stop(proc)


class Source:
    """Stands in for the agent (not under test here): its settings and its status events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queues: list[asyncio.Queue[dict[str, Any]]] = []

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        self.queues.append(asyncio.Queue())
        return self.queues[-1]

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.queues.remove(queue)

    async def publish(self, recommendation: str, state: str = "monitoring",
                      **extra: Any) -> None:
        for queue in self.queues:
            queue.put_nowait({"type": "recommendation", "state": state,
                              "recommendation": recommendation, **extra})
        await until(lambda: all(q.empty() for q in self.queues), 5, "the event to be taken")
        await asyncio.sleep(0.05)  # (and acted on)


class Following:
    def __init__(self, settings: Settings, sender: DesktopSender | None = None) -> None:
        self.now = 0.0
        self.source = Source(settings)
        self.notices = DesktopNotices(self.source, sender or DesktopSender(),
                                      clock=lambda: self.now)

    async def __aenter__(self) -> Following:
        self.task = asyncio.get_running_loop().create_task(self.notices.follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert not self.task.done(), "the notices task ended by itself"
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        assert self.source.queues == []  # unsubscribed


FALLBACK = {"name": "Riverside Clinic", "phone": "+442079460000",
            "phone_national": "020 7946 0000", "phone_international": "+44 20 7946 0000"}


async def test_one_change_one_notification_and_a_wobble_none(
        desktop: Desktop, settings: Settings) -> None:
    async with Following(settings) as f:
        await f.source.publish("video")  # the session starts
        f.now = OPENING_S + 1
        await f.source.publish("audio_only")
        await until(lambda: desktop.count() == 1, 5, "dunst to get the notification")
        for rec in ["video", "audio_only", "video", "audio_only", "audio_only"]:
            f.now += 20
            await f.source.publish(rec)  # the link wobbles within the hold: nothing new
        await f.source.publish("unknown")
        f.now += 5
        await f.source.publish("phone", fallback=FALLBACK)
        await until(lambda: desktop.count() == 2, 5, "the phone notification")
        await asyncio.sleep(0.3)
        assert [n.verdict for n in f.notices.shown] == ["audio_only", "phone"]
    assert desktop.received() == [
        ("netprobe", "Your connection", "Your connection has become unsteady. Switching to "
         "audio only will keep your session going."),
        ("netprobe", "Your connection", "Your connection cannot carry the session right now. "
         "Please call Riverside Clinic on 020 7946 0000 to go on by phone.")]


async def test_nothing_when_nothing_changed_idle_or_switched_off(
        desktop: Desktop, settings: Settings) -> None:
    async with Following(settings) as f:
        for rec in ("video", "phone", "audio_only"):  # idle checks: never a notice
            f.now += 700
            await f.source.publish(rec, state="idle")
        await f.source.publish("video")
        f.now += OPENING_S + 1
        await f.source.publish("video")
    quiet = replace(settings, agent=replace(settings.agent, notify=False))
    async with Following(quiet) as f:
        await f.source.publish("video")
        f.now += OPENING_S + 1
        await f.source.publish("phone")
        assert f.notices.decisions.told == "phone" and not f.notices.shown
    await asyncio.sleep(0.3)
    assert desktop.count() == 0


@pytest.mark.parametrize("address", ["unix:path=/nonexistent/netprobe-test-bus", None])
async def test_without_a_session_bus_one_warning_and_the_agent_goes_on(
        settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        address: str | None) -> None:
    if address is None:  # nothing at all: no bus address, no display, no runtime directory
        for name in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
    caplog.set_level(logging.INFO)
    async with Following(settings) as f:
        await f.source.publish("video")
        f.now = OPENING_S + 1
        for rec in ("audio_only", "phone"):
            await f.source.publish(rec)
            f.now += 400
        await f.source.publish("video")
        assert f.notices.decisions.told == "video" and not f.notices.shown
    [warning] = events(caplog, "notify_unavailable")
    assert warning.levelno == logging.WARNING and warning.error == "no_session_bus"  # type: ignore
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r is not warning]
    assert not noisy, noisy  # the library's own traceback is not printed either
    assert "netprobe-test-bus" not in caplog.text


async def test_a_bus_without_a_notification_server_one_warning(
        bus_only: str, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with Following(settings) as f:
        await f.source.publish("video")
        f.now = OPENING_S + 1
        await f.source.publish("audio_only")
        await f.source.publish("phone")
    [warning] = events(caplog, "notify_unavailable")
    assert warning.error == "no_notification_server"  # type: ignore[attr-defined]


async def test_the_running_agent_tells_the_person_when_its_processor_saturates(
        desktop: Desktop, reflector: Reflector, settings: Settings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The whole way: a real agent, its session over a real probe stream, the recommendation
    stepping down, the runtime's notices task, the library, the bus, dunst."""
    sampler = FakeSampler(cpu=5.0)
    async with agents(settings, tmp_path, caplog) as start:
        r = await start(reflector.url, sampler=sampler, step_down_after=2)
        await r.until_status(lambda s: s["recommendation"] == "video", 15, "the first check")
        assert await r.post("/v1/session", {"action": "start"}) == (
            200, {"state": "monitoring", "changed": True})
        sampler.state = PassiveState(interface_up=True, cpu_percent=97.0)
        await r.until_status(lambda s: s["recommendation"] == "audio_only", 10, "audio only")
        assert desktop.count() == 0  # not before the opening check has had its time
        await until(lambda: desktop.count() == 1, OPENING_S + 10, "the notification")
        await asyncio.sleep(1.5)  # more windows, the same recommendation: nothing more
        assert desktop.count() == 1
        assert await r.post("/v1/session", {"action": "stop"}) == (
            200, {"state": "idle", "changed": True})
    assert desktop.received() == [
        ("netprobe", "Your connection", "Your connection has become unsteady. Switching to "
         "audio only will keep your session going.")]
    [shown] = events(caplog, "notice_shown")
    assert shown.verdict == "audio_only"  # type: ignore[attr-defined]

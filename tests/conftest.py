"""Shared fixtures: a real reflector on loopback, ICE restricted to loopback, and where the
mahimahi traces are."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aioice.ice
import pytest

from netprobe.config import ReflectorSettings, Settings, load_settings
from netprobe.webrtc.reflector import Reflector

#: The project root: the directory holding tests/ (not wherever netprobe is installed).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """The mahimahi traces: $NETPROBE_TRACES, else ../shared/traces from the project root. They
    are test data the suite needs: their absence fails the tests that use them, never skips."""
    override = os.environ.get("NETPROBE_TRACES")
    path = Path(override) if override else PROJECT_ROOT.parent / "shared" / "traces"
    if not (path / "Verizon-LTE-short.up").is_file():
        pytest.fail(f"the mahimahi traces are not in {path}: put a copy of shared/ beside the "
                    "project, or set NETPROBE_TRACES to the directory that holds them")
    return path


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice skips 127.0.0.1; give it the loopback address so peers meet on loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses",
                        lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def reflector_settings() -> ReflectorSettings:
    return ReflectorSettings(host="127.0.0.1", port=0)


@pytest.fixture
async def reflector(loopback_ice: None, reflector_settings: ReflectorSettings,
                    caplog: pytest.LogCaptureFixture) -> AsyncIterator[Reflector]:
    caplog.set_level(logging.WARNING)
    r = Reflector(replace(reflector_settings, port=0))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
    destroyed = [rec for rec in caplog.records if "Task was destroyed" in rec.getMessage()]
    assert not destroyed, "a task was left pending: " + destroyed[0].getMessage()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A UDP port that takes every datagram and answers none (no ICMP either)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()

"""The reflector hands freed heap memory back once idle (reflector_ops.MemoryTrimmer)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from netprobe.webrtc.reflector_ops import MemoryTrimmer, _libc_trim

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")


async def test_one_trim_after_the_reflector_stays_idle() -> None:
    calls: list[int] = []
    sessions: set[str] = set()
    trimmer = MemoryTrimmer(lambda: not sessions, after_s=0.05, trim=lambda: calls.append(1))
    trimmer.became_idle()
    trimmer.became_idle()  # a second end while one is pending: still one trim
    await asyncio.sleep(0.2)
    assert calls == [1]
    trimmer.became_idle()
    sessions.add("new")  # a session started before the trim was due: no trim
    await asyncio.sleep(0.2)
    assert calls == [1]
    sessions.clear()
    trimmer.became_idle()
    trimmer.cancel()  # stopping: nothing runs after
    await asyncio.sleep(0.2)
    assert calls == [1]


def test_the_real_trim_runs_on_this_machine() -> None:
    _libc_trim()  # glibc's malloc_trim through ctypes: must not raise

"""Run `netprobe` with a heap inspector: on SIGUSR1 the process writes one JSON line about its
memory to the file named by `NETPROBE_HEAPWATCH` (RSS, the C allocator's view, live Python
objects of the types that make up a session, asyncio tasks, and, with
`NETPROBE_HEAPWATCH_TRACE=1`, tracemalloc's top allocation sites). For the fuzz script: it tells
a leak (sessions that outlive their end) from memory the allocator keeps.

    NETPROBE_HEAPWATCH=/tmp/heap.jsonl python -m netprobe.bench.heapwatch serve ...

A snapshot first runs `gc.collect()`, and after measuring it runs glibc's `malloc_trim(0)` and
records the RSS again: the difference is free memory glibc held, not live data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

#: Types whose live count says whether sessions are freed once they end.
WATCHED = ("RTCPeerConnection", "ReflectorSession", "Responder", "Pacer", "PacketTrack",
           "RTCDtlsTransport", "RTCIceTransport", "RTCSctpTransport", "RTCRtpSender",
           "RTCRtpReceiver", "Connection", "StunProtocol", "Task", "Future", "Event",
           "SSLContext", "TimerHandle", "Handle")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


LIBC = _libc()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mapped_rss() -> dict[str, int]:
    """RSS by kind of mapping (/proc/self/smaps): the brk heap, anonymous mmaps (pymalloc
    arenas, other threads' malloc arenas, big blocks), and files (code, libraries)."""
    out: Counter[str] = Counter()
    kind = "anon"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                name = head[5] if len(head) > 5 else ""
                kind = ("heap" if name == "[heap]" else "stack" if name.startswith("[stack")
                        else "anon" if not name or name.startswith("[anon") else "file")
            elif line.startswith("Rss:"):
                out[kind] += int(line.split()[1]) * 1024
    return dict(out)


def mallinfo() -> dict[str, int]:
    """glibc's totals: `arena` (heap from brk), `hblkhd` (mmapped blocks), `uordblks` (in use),
    `fordblks` (free but kept); empty without glibc's mallinfo2."""
    if LIBC is None or not hasattr(LIBC, "mallinfo2"):
        return {}
    LIBC.mallinfo2.restype = _MallInfo2
    info = LIBC.mallinfo2()
    return {k: int(getattr(info, k)) for k in ("arena", "hblkhd", "uordblks", "fordblks")}


class Watch:
    def __init__(self, path: Path, trace: bool) -> None:
        self.path = path
        self.trace = trace
        self.first: tracemalloc.Snapshot | None = None
        if trace:
            tracemalloc.start(12)

    def snapshot(self, *_: object) -> None:
        started = time.monotonic()
        gc.collect()
        counts: Counter[str] = Counter(type(o).__name__ for o in gc.get_objects())
        loop = asyncio._get_running_loop()  # noqa: SLF001 - the handler runs inside the loop
        tasks = Counter(getattr(t.get_coro(), "__qualname__", "?")
                        for t in asyncio.all_tasks(loop)) if loop else Counter()
        doc: dict[str, Any] = {
            "rss": rss_bytes(), "malloc": mallinfo(), "objects": sum(counts.values()),
            "watched": {k: counts.get(k, 0) for k in WATCHED},
            "top_types": counts.most_common(12), "tasks": sum(tasks.values()),
            "task_kinds": tasks.most_common(8), "fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task")), "mapped": mapped_rss()}
        if self.trace:
            snap = tracemalloc.take_snapshot()
            doc["traced"] = tracemalloc.get_traced_memory()[0]
            if self.first is None:
                self.first = snap
            else:
                doc["grown_at"] = [
                    (str(s.traceback[0]), s.size_diff, s.count_diff)
                    for s in snap.compare_to(self.first, "lineno")[:15]]
        if LIBC is not None:
            LIBC.malloc_trim(0)
            doc["rss_after_trim"] = rss_bytes()
        doc["took_s"] = round(time.monotonic() - started, 3)
        with self.path.open("a") as out:
            out.write(json.dumps(doc) + "\n")


def main() -> int:
    path = os.environ.get("NETPROBE_HEAPWATCH")
    if path:
        watch = Watch(Path(path), os.environ.get("NETPROBE_HEAPWATCH_TRACE") == "1")
        signal.signal(signal.SIGUSR1, watch.snapshot)
    from netprobe.cli.main import main as netprobe_main

    return netprobe_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

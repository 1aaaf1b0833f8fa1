"""How two worker processes share new connections: each binding the port with SO_REUSEPORT
(what `netprobe serve` does) against one listening socket bound by the parent and inherited.

Linux only (fork, SO_REUSEPORT). For each way, with both workers idle and then with worker 0's
event loop blocked 40 ms of every 100 ms, it sends 600 HTTP requests (10 at a time, each on a
new connection) and prints how many each worker answered and the request p50/p95. The choice
is explained in docs/reflector.md, "Workers".

    python scripts/bench_accept_spread.py [--requests 600] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import statistics
import sys
import time

import aiohttp
from aiohttp import web


def _serve(mode: str, port: int, sock: socket.socket, busy: bool) -> None:
    async def main() -> None:
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            return web.Response(text=str(os.getpid()))

        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = (web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
                if mode == "reuseport" else web.SockSite(runner, sock))
        await site.start()
        while True:
            await asyncio.sleep(0.06)
            if busy:
                time.sleep(0.04)  # noqa: ASYNC251 - a blocked loop, as under a burst of sessions

    asyncio.run(main())


async def _load(port: int, requests: int) -> tuple[collections.Counter[str], list[float]]:
    counts: collections.Counter[str] = collections.Counter()
    took: list[float] = []
    gate = asyncio.Semaphore(10)

    async def one() -> None:
        async with gate:
            t = time.monotonic()
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s, \
                    s.get(f"http://127.0.0.1:{port}/") as r:
                counts[await r.text()] += 1
            took.append(time.monotonic() - t)

    await asyncio.gather(*(one() for _ in range(requests)))
    return counts, took


def run(mode: str, busy_first: bool, requests: int) -> None:
    hold = socket.socket()
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    hold.bind(("127.0.0.1", 0))
    port = hold.getsockname()[1]
    if mode == "shared":
        hold.listen(128)
    pids = []
    try:
        for i in range(2):
            pid = os.fork()
            if pid == 0:
                try:
                    _serve(mode, port, hold, busy_first and i == 0)
                finally:
                    os._exit(0)
            pids.append(pid)
        time.sleep(1.5)  # both listening
        counts, took = asyncio.run(_load(port, requests))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        hold.close()
    share = [counts.get(str(p), 0) for p in pids]
    took.sort()
    p95 = took[int(len(took) * 0.95)]
    print(f"{mode:9s} worker 0 busy: {'yes' if busy_first else 'no ':3s}  answered per worker "
          f"{share}  p50 {statistics.median(took) * 1000:.1f} ms  p95 {p95 * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if sys.platform != "linux":
        print("Linux only (SO_REUSEPORT spreads connections only there)", file=sys.stderr)
        return 2
    for _ in range(max(1, args.runs)):
        for busy in (False, True):
            for mode in ("reuseport", "shared"):
                run(mode, busy, max(10, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())

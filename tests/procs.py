"""netprobe as separate processes, as users run it: the command line, port helpers, and a
loopback server for an aiohttp app of a test's own (`served`)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

NETPROBE = [sys.executable, "-m", "netprobe"]
#: A child that leaves a coroutine unawaited fails, as the tests themselves do.
#: What the tests' child processes get: warnings as errors, and no locale, so that their
#: words are English (netprobe picks its language from the locale: tests/test_i18n.py).
CHILD_ENV = {**{k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG")},
             "PYTHONWARNINGS": "error::RuntimeWarning"}


async def served(app: web.Application, **runner: Any) -> tuple[web.AppRunner, str]:
    """`app` served on a free loopback port: its runner (`cleanup()` it) and its URL.
    `runner`: options for `web.AppRunner` (e.g. access_log=None)."""
    runner_ = web.AppRunner(app, **runner)
    await runner_.setup()
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner_, f"http://127.0.0.1:{port}"


def secret_file(path: Path, text: str) -> Path:
    """Write a secret file as the reflector requires one (readable by its owner only)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(port: int, *args: str) -> asyncio.subprocess.Process:
    """A reflector process (`netprobe serve`) on 127.0.0.1:`port`, once it listens: one
    process (`--workers 1`, exact caps) unless `args` names `--workers`."""
    workers = () if "--workers" in args else ("--workers", "1")
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "serve", "--host", "127.0.0.1", "--port", str(port), *workers, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 15)
    assert f"127.0.0.1:{port}" in line.decode(), line
    return proc


async def stop(proc: asyncio.subprocess.Process) -> bytes:
    """SIGTERM `proc`, wait for it, and return what it wrote to stderr since it started."""
    if proc.returncode is None:
        proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    return err

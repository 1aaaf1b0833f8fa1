"""The reflector on every core (docs/reflector.md, "Workers", "Drain"): a supervisor process
and N worker processes, each a full `Reflector` owning its own sessions.

Each worker binds the listening port itself with SO_REUSEPORT (aiohttp's
`TCPSite(reuse_port=True)`), so Linux spreads new connections over the workers by a hash of the
connection; the supervisor holds one more socket bound to the port (never listening: it takes
no connection) to resolve port 0, to report a port in use before any worker starts, and so the
port stays this reflector's while a worker restarts. Caps are split (`split_caps`); figures are
shared through a private run directory (`worker_share`). The supervisor restarts a worker that
dies (backing off while it keeps dying), forwards SIGTERM/SIGINT/SIGHUP, relays the workers'
JSON log lines to its own log, and exits 0 once they have all stopped.

`run_reflector` is what serves until a stop signal, in a worker and in `serve --workers 1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from netprobe.errors import CannotListen, ConfigError
from netprobe.settings import ReflectorSettings
from netprobe.signals import on_reload_signal, on_stop_signals, remove_stop_signals
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.reflector_http import listen_failure
from netprobe.webrtc.worker_share import WorkerShare, retire

logger = logging.getLogger("netprobe.webrtc.reflector")

READY_TIMEOUT_S = 30.0
"""Longest wait for every worker to listen at start."""
FAST_DEATH_S = 10.0
"""A worker that dies sooner than this after starting counts towards giving up."""
GIVE_UP_AFTER = 5
"""Consecutive fast deaths of one worker after which the supervisor stops (exit status 1)."""
MAX_BACKOFF_S = 30.0
STOP_SLACK_S = 10.0
"""After the drain timeout and grace, how long stopping workers get before SIGKILL."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def worker_count(requested: int) -> int:
    """The number of worker processes for `[reflector] workers` (0: one per usable core on
    Linux, one elsewhere). Raises ConfigError for several where SO_REUSEPORT cannot spread
    connections (macOS, Windows)."""
    if requested == 1:
        return 1
    if not sys.platform.startswith("linux"):
        if requested == 0:
            return 1
        raise ConfigError("--workers: worker processes need Linux (SO_REUSEPORT spreads "
                          "connections there only); use --workers 1 here")
    return requested or usable_cores()


def split_caps(r: ReflectorSettings, workers: int) -> ReflectorSettings:
    """One worker's share of the caps: each cap and burst divided by `workers`, rounded up;
    the offer rate divided. Per-source limits are split too, so one source can hold about as
    much of the whole reflector as it could of a single process."""
    def up(value: int) -> int:
        return math.ceil(value / workers)

    return replace(
        r, workers=1, log_file="", max_checks=up(r.max_checks),
        max_monitors=up(r.max_monitors),
        max_sessions=None if r.max_sessions is None else up(r.max_sessions),
        max_checks_per_source=up(r.max_checks_per_source),
        max_monitors_per_source=up(r.max_monitors_per_source),
        offers_per_minute=r.offers_per_minute / workers, offer_burst=up(r.offer_burst))


# ---------------------------------------------------------------------------------------------
# Serving until stopped (a worker, or the single process)


async def run_reflector(reflector: Reflector, *, watch_parent: int | None = None,
                        ready: Callable[[], None] | None = None) -> str:
    """Serve until SIGTERM/SIGINT, then drain (a second signal stops at once); SIGHUP reloads.
    `ready()` is called once the signal handlers are in place. `watch_parent`: also drain
    when that process is gone (a worker's supervisor). Returns why it stopped: `drained`,
    `drain_timeout`, `second_signal` or `parent_gone`."""
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    again = asyncio.Event()
    signals = 0

    def on_stop() -> None:
        nonlocal signals
        signals += 1
        (asked if signals == 1 else again).set()

    on_stop_signals(loop, on_stop)
    on_reload_signal(loop, reflector.reload)
    reason = "drained"
    try:
        if ready is not None:
            ready()
        while not asked.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asked.wait(), 1.0)
            if watch_parent is not None and os.getppid() != watch_parent:
                reason = "parent_gone"
                break
        logger.info("reflector stopping", extra={"event": "reflector_stopping",
                                                 "sessions": len(reflector.sessions)})
        drain = loop.create_task(reflector.drain())
        second = loop.create_task(again.wait())
        await asyncio.wait([drain, second], return_when=asyncio.FIRST_COMPLETED)
        second.cancel()
        if not drain.done():
            reason = "second_signal"
            drain.cancel()
        finished = (await asyncio.gather(drain, second, return_exceptions=True))[0]
        if finished is False and reason == "drained":
            reason = "drain_timeout"
    finally:
        remove_stop_signals(loop)
        if hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
        try:
            await reflector.stop()
        except Exception:  # noqa: BLE001 - a second stop after a cancelled drain
            logger.warning("error while stopping the reflector", exc_info=True)
    return reason


# ---------------------------------------------------------------------------------------------
# A worker process


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker (pickled on its standard input)."""

    settings: ReflectorSettings
    """The worker's share of the caps (`split_caps`), the port resolved."""
    whole: ReflectorSettings
    index: int
    workers: int
    run_dir: str
    log_addresses: bool
    parent: int


WORKER_CMD = [sys.executable, "-c",
              "import sys; from netprobe.webrtc.workers import worker_main; "
              "sys.exit(worker_main())"]


def worker_main() -> int:
    """A worker process: read its spec, log JSON lines to stderr, say `ready PORT` on stdout
    once it listens, serve until stopped."""
    from netprobe.logs import jsonlog
    from netprobe.webrtc.engine import restrict_to_loopback_if_local

    spec: WorkerSpec = pickle.load(sys.stdin.buffer)  # from our own supervisor's pipe
    logging.getLogger().handlers[:] = []
    jsonlog.setup_json_logging(None, log_addresses=spec.log_addresses)
    for noisy in ("aiortc", "aioice", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    async def serve() -> None:
        restrict_to_loopback_if_local(spec.settings.host)
        share = WorkerShare(spec.run_dir, spec.index, spec.workers, spec.whole)
        reflector = Reflector(spec.settings, log_addresses=spec.log_addresses, share=share)
        await reflector.start()
        await run_reflector(reflector, watch_parent=spec.parent,
                            ready=lambda: print(f"ready {reflector.port}", flush=True))

    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"netprobe: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    except CannotListen as exc:
        print(f"netprobe: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        jsonlog.flush_and_close()
    return 0


# ---------------------------------------------------------------------------------------------
# The supervisor


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening. Raises CannotListen."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {listen_failure(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {listen_failure(exc)}") from None
    return sock


class Supervisor:
    """Starts `workers` worker processes for `whole` and keeps them running until stopped.
    `relay(line)` writes a worker's JSON log line to the supervisor's log."""

    def __init__(self, whole: ReflectorSettings, workers: int, *, log_addresses: bool,
                 relay: Callable[[str], None]) -> None:
        self.whole = whole
        self.workers = workers
        self.log_addresses = log_addresses
        self.relay = relay
        self.port = whole.port
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._run_dir = ""
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, hold: socket.socket) -> None:
        """Start every worker and wait until each listens. Raises CannotListen/ConfigError
        with the first failing worker's message, `NetprobeError` if one cannot start."""
        self.port = hold.getsockname()[1]
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self._run_dir = tempfile.mkdtemp(prefix="netprobe-reflector-", dir=runtime)
        ready = await asyncio.gather(*(self._spawn(i) for i in range(self.workers)))
        failed = [code for code in ready if code is not None]
        if failed:
            await self.stop_all(signal.SIGTERM)
            await self.wait_all(10.0)
            raise WorkerFailed(failed[0])

    async def _spawn(self, index: int) -> int | None:
        """Start worker `index`; None once it listens, else its exit status."""
        spec = WorkerSpec(split_caps(replace(self.whole, port=self.port), self.workers),
                          self.whole, index, self.workers, self._run_dir, self.log_addresses,
                          os.getpid())
        proc = await asyncio.create_subprocess_exec(
            *WORKER_CMD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        assert proc.stdin and proc.stdout and proc.stderr
        self.procs[index] = proc
        self._own(self._relay_lines(proc.stderr))
        proc.stdin.write(pickle.dumps(spec))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            line = b""
        if not line.startswith(b"ready "):
            return await proc.wait() or 1
        self._own(self._discard(proc.stdout))
        return None

    def _own(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay_lines(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text.startswith("{"):
                self.relay(text)
            else:  # a worker's plain message (e.g. why it could not start)
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(4096):
            pass

    async def run(self, hold: socket.socket, ready: Callable[[], None]) -> int:
        """Start the workers (`start`), call `ready()`, keep them running; on SIGTERM/SIGINT
        forward it and wait for them all (a second signal is forwarded too: they stop at
        once). Returns the exit status; raises as `start` does."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop() -> None:
            self._stopping = True
            stop.set()
            self._forward(signal.SIGTERM)

        on_stop_signals(loop, on_stop)
        on_reload_signal(loop, lambda: self._forward(signal.SIGHUP))
        status = 0
        try:
            await self.start(hold)
            ready()
            watchers = {i: loop.create_task(self._watch(i)) for i in self.procs}
            await stop.wait()
            patience = self.whole.drain_timeout_s + 2.0 + STOP_SLACK_S
            if not await self.wait_all(patience):
                logger.warning("workers did not stop in time: killed")
                await self.stop_all(signal.SIGKILL)
                await self.wait_all(5.0)
            for task in watchers.values():
                task.cancel()
            results = await asyncio.gather(*watchers.values(), return_exceptions=True)
            status = next((r for r in results if isinstance(r, int) and r), 0)
        finally:
            remove_stop_signals(loop)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._run_dir:
                shutil.rmtree(self._run_dir, ignore_errors=True)
        return status

    def _forward(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _watch(self, index: int) -> int:
        """Restart worker `index` whenever it dies, backing off; returns 1 (and stops the
        reflector) if it keeps dying at once."""
        fast = 0
        while True:
            started = time.monotonic()
            code = await self.procs[index].wait()
            if self._stopping:
                return 0
            retire(self._run_dir, index)
            fast = fast + 1 if time.monotonic() - started < FAST_DEATH_S else 0
            delay = 0.0 if fast == 0 else min(MAX_BACKOFF_S, 0.5 * 2 ** (fast - 1))
            give_up = fast >= GIVE_UP_AFTER
            logger.warning("reflector worker %s exited (status %s)", index, code, extra={
                "event": "reflector_worker_exited", "worker": index, "exit_status": code,
                "restart_in_s": None if give_up else delay})
            if give_up:
                logger.error("reflector worker %s keeps failing: stopping the reflector", index)
                self._stopping = True
                os.kill(os.getpid(), signal.SIGTERM)  # the same path as a stop signal
                return 1
            await asyncio.sleep(delay)
            if self._stopping:
                return 0
            if await self._spawn(index) is not None:
                continue  # died before it listened: counted as a fast death above

    async def stop_all(self, sig: int) -> None:
        self._forward(sig)

    async def wait_all(self, timeout: float) -> bool:
        """Wait for every worker to exit, at most `timeout`; whether they all did."""
        waits = [p.wait() for p in self.procs.values() if p.returncode is None]
        if not waits:
            return True
        _, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits],
                                        timeout=timeout)
        for task in pending:
            task.cancel()
        return not pending


class WorkerFailed(Exception):
    """A worker exited before it listened; `status` is its exit status (its message has been
    relayed to standard error)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def relay_formatter(inner: logging.Formatter | None) -> logging.Formatter:
    """A formatter that writes a relayed line (a record's `netprobe_relayed`) as it is and
    formats every other record with `inner`."""
    class Relayed(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            line = getattr(record, "netprobe_relayed", None)
            if isinstance(line, str):
                return line
            return (inner or logging.Formatter()).format(record)

    return Relayed()


def relay_to(handler: logging.Handler) -> Callable[[str], None]:
    """`relay(line)` for `Supervisor`: hand a worker's JSON line to `handler` unchanged, at
    the level the line names."""
    handler.setFormatter(relay_formatter(handler.formatter))

    def relay(line: str) -> None:
        try:
            level = logging.getLevelName(json.loads(line).get("level", "INFO"))
        except (ValueError, AttributeError):
            level = logging.INFO
        record = logging.makeLogRecord({"netprobe_relayed": line, "msg": line,
                                        "levelno": level if isinstance(level, int) else 20})
        handler.handle(record)

    return relay


"""Checks and monitoring streams in a child process, for the agent.

The agent runs for weeks on a session machine. The WebRTC stack (aiortc, and PyAV with its
FFmpeg libraries) is about half of a Python process's memory, so the agent keeps it out of its
own process: each check, and each session's monitoring stream, runs in a child
(`python -m netprobe.agent.worker`) that exits when its job is done. Idle, the agent holds only its
API, its logs and psutil.

The child speaks over its stdin and stdout in frames: a 4-byte big-endian length, then a
pickle. Both ends are the same installed package and the agent starts the child itself, so
nothing untrusted is ever unpickled.

- agent to child: one request, `("check", urls, settings)` (a URL or a tuple of them, tried
  in that order) or
  `("monitor", url, settings, interval_s, connect_timeout_s)`, then for a monitoring child
  any number of `("interval", seconds)` (probe at that spacing from now on,
  `core.probe_rate`; outside `SPACING_S`, ignored); closing stdin asks the child to stop
  (so does the agent dying).
- child to agent: `("result", CheckResult, attempts)` (`core.failover.Attempt`s),
  `("connected",)`, `("echoes", [(Echo, now), ...])` (`now`, each echo's arrival, is
  `time.monotonic()`, one clock for every process on the machine; echoes are sent together
  `ECHO_BATCH_S` after the first of them) or `("error", exc)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from netprobe.config import Settings
from netprobe.core.failover import Attempt, server_list
from netprobe.core.result import CheckResult
from netprobe.errors import ConnectFailed, NetprobeError

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
#: Frames are small (a settings object, a result, an echo); anything larger is corrupt.
MAX_FRAME = 1 << 20
#: Time for a child to start and import the WebRTC stack, on top of the job's own limit.
SPAWN_ALLOWANCE_S = 10.0
#: How long a child may take to close its connection after being asked to stop.
STOP_GRACE_S = 5.0
#: stderr lines of a child kept to explain a failure.
STDERR_LINES = 20
#: How long a monitoring child holds echoes to send them to the agent in one frame (one
#: write, one wake-up of the agent for several; the agent's windows are seconds long and
#: every echo keeps its own arrival time).
ECHO_BATCH_S = 0.2
#: The probe spacings a monitoring child takes, seconds (`[agent] monitor_*_interval_ms`
#: are 10-5000 ms): anything else in an `interval` frame is ignored, and refused in a request.
SPACING_S = (0.01, 5.0)
#: What unpickling a frame that is not ours raises.
_UNREADABLE = (pickle.UnpicklingError, EOFError, AttributeError, ImportError)
#: How the child is started, after the interpreter.
_WORKER_ARGS = ("-m", "netprobe.agent.worker")


def encode_frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


# -- agent side -----------------------------------------------------------------------------


class _Child:
    """One worker process, from the agent's side."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.get_running_loop().create_task(self._drain_stderr())

    @classmethod
    async def start(cls, request: tuple[Any, ...]) -> _Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *_WORKER_ARGS,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise NetprobeError(f"cannot start a measuring process: {exc}") from None
        child = cls(proc)
        assert proc.stdin is not None
        try:
            proc.stdin.write(encode_frame(request))
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            pass  # it died at once; read() reports that with its stderr
        except BaseException:  # cancelled while handing over the request: stop it again
            await asyncio.shield(child.stop())
            raise
        return child

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        async for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    async def read(self) -> tuple[Any, ...] | None:
        """The next frame, or None once the child has closed its stdout."""
        assert self._proc.stdout is not None
        try:
            (size,) = _LENGTH.unpack(await self._proc.stdout.readexactly(_LENGTH.size))
            if size > MAX_FRAME:
                raise NetprobeError(f"the measuring process sent a {size}-byte frame")
            frame = pickle.loads(await self._proc.stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if not isinstance(frame, tuple) or not frame:
            raise NetprobeError("the measuring process sent something unexpected")
        return frame

    def send(self, frame: tuple[Any, ...]) -> None:
        """One more frame to the child (a small one: the pipe's buffer takes it at once)."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(encode_frame(frame))

    async def stop(self) -> None:
        """Ask the child to stop (close its stdin), then kill it if it has not."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            logger.warning("a measuring process did not stop; killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        finally:
            # wait() may have been cancelled: never leave the process or its pipes behind
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):  # reaped, even when cancelled
                    async with asyncio.timeout(STOP_GRACE_S):
                        await asyncio.shield(proc.wait())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._stderr_task)
            await self._discard_output()

    async def _discard_output(self) -> None:
        """Read what the child left in its stdout up to the end: a pipe transport that never
        sees its end stays open after the process exits (asyncio then warns, at loop close,
        of an unclosed transport)."""
        stdout = self._proc.stdout
        if stdout is None:
            return
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(STOP_GRACE_S):
                while await stdout.read(65536):
                    pass

    def failure(self, what: str) -> NetprobeError:
        """The error for a child that ended without `what`, with its last stderr lines."""
        detail = " | ".join(line for line in self._stderr if line)
        code = self._proc.returncode
        status = "" if code is None else f" (exit status {code})"
        return NetprobeError(f"the measuring process ended without {what}{status}"
                             + (f": {detail}" if detail else ""))


async def run_check_isolated(server_url: str | tuple[str, ...], settings: Settings
                             ) -> CheckResult:
    """`client.run_check` in a child process. Raises NetprobeError if the child fails."""
    return (await run_check_attempts_isolated(server_url, settings))[0]


async def run_check_attempts_isolated(servers: str | tuple[str, ...], settings: Settings
                                      ) -> tuple[CheckResult, tuple[Attempt, ...]]:
    """`client.run_check_attempts` in a child process: the result, and what became of each
    URL tried (in the order given). Raises NetprobeError if the child fails."""
    child = await _Child.start(("check", servers, settings))
    try:
        try:
            async with asyncio.timeout(settings.probe.max_duration_s + SPAWN_ALLOWANCE_S):
                frame = await child.read()
        except TimeoutError:
            frame = None
    finally:
        await child.stop()
    if frame is None:
        raise child.failure("a result")
    if frame[0] == "error" and isinstance(frame[1], BaseException):
        raise frame[1]
    if frame[0] != "result" or not isinstance(frame[1], CheckResult):
        raise NetprobeError(f"the measuring process answered {frame[0]!r}, not a result")
    attempts = frame[2] if len(frame) > 2 and isinstance(frame[2], tuple) else ()
    return frame[1], tuple(a for a in attempts if isinstance(a, Attempt))


class IsolatedMonitorLink:
    """`probe.MonitorLink` in a child process: the same gentle probe stream, every echo
    handed to `on_echo(echo, now)` in this process."""

    def __init__(self, server_url: str, settings: Settings, interval_s: float,
                 on_echo: Callable[[Any, float], None]) -> None:
        self._request = ("monitor", server_url, settings, interval_s)
        self._on_echo = on_echo
        self._child: _Child | None = None
        self._pump: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        """Set when the connection fails or closes (or the child dies)."""

    async def connect(self, timeout: float) -> None:
        """Connect, or raise ServerUnreachable/ServerBusy/ProtocolError/ConnectFailed/
        NetprobeError/TimeoutError (the child is stopped again on failure)."""
        self._child = child = await _Child.start((*self._request, timeout))
        try:
            async with asyncio.timeout(timeout + SPAWN_ALLOWANCE_S):
                frame = await child.read()
            if frame is None:
                raise child.failure("connecting")
            if frame[0] == "error" and isinstance(frame[1], BaseException):
                raise frame[1]
            if frame[0] != "connected":
                raise ConnectFailed(f"the measuring process answered {frame[0]!r}")
        except BaseException:
            await self.close()
            raise
        self._pump = asyncio.get_running_loop().create_task(self._forward(child))

    def set_interval(self, interval_s: float) -> None:
        """Probe every `interval_s` from now on (`core.probe_rate`)."""
        if self._child is not None:
            self._child.send(("interval", interval_s))

    async def _forward(self, child: _Child) -> None:
        try:
            while (frame := await child.read()) is not None:
                if frame[0] == "echoes":
                    for echo, now in frame[1]:
                        self._on_echo(echo, now)
                elif frame[0] == "error":
                    logger.warning("monitoring connection ended: %s", frame[1])
            # not asked to stop (close() cancels this task first): say what the child said
            logger.warning("%s", child.failure("being asked to stop"))
        except Exception as exc:  # a bad frame must end this stream, never the agent
            error = str(exc) if isinstance(exc, NetprobeError) else f"{type(exc).__name__}: {exc}"
            logger.error("monitoring stopped: %s", error, extra={
                "event": "error", "where": "monitor", "error": error})
        finally:
            self.failed.set()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._child is not None:
            await self._child.stop()
            self._child = None
        self.failed.set()


# -- child side -------------------------------------------------------------------------------


def _read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > MAX_FRAME:
        return None
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class _Output:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.broken = False

    def send(self, obj: object) -> None:
        if self.broken:
            return
        try:
            self._stream.write(encode_frame(obj))
            self._stream.flush()
        except (BrokenPipeError, OSError):
            self.broken = True  # the agent is gone; the stdin watcher stops us


class _EchoBatch:
    """Echoes sent to the agent together, `ECHO_BATCH_S` after the first of them."""

    def __init__(self, out: _Output) -> None:
        self._out = out
        self._echoes: list[tuple[Any, float]] = []
        self._flush_at: asyncio.TimerHandle | None = None

    def add(self, echo: Any, now: float) -> None:
        self._echoes.append((echo, now))
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(ECHO_BATCH_S, self.flush)

    def flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._echoes:
            self._out.send(("echoes", self._echoes))
            self._echoes = []


def _watch_stdin(stream: IO[bytes], loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
                 on_frame: Callable[[tuple[Any, ...]], None]) -> None:
    """Hand each frame the agent sends after its request to `on_frame` (in the loop); once
    stdin closes (the agent asked us to stop, or died) or carries garbage, set `stop`.

    A thread, not the event loop: Windows cannot read an inherited pipe asynchronously."""
    def wait() -> None:
        with contextlib.suppress(OSError, ValueError, RuntimeError, *_UNREADABLE):
            while isinstance(frame := _read_frame(stream), tuple) and frame:
                loop.call_soon_threadsafe(on_frame, frame)
        with contextlib.suppress(RuntimeError):  # the loop has already finished
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()


def _spacing(value: object) -> bool:
    """True for a probe spacing the child takes (`SPACING_S`)."""
    return isinstance(value, int | float) and SPACING_S[0] <= value <= SPACING_S[1]


async def _serve(request: tuple[Any, ...], out: _Output, stdin: IO[bytes]) -> None:
    from netprobe.webrtc.client import MonitorLink, run_check_attempts
    from netprobe.webrtc.engine import restrict_to_loopback_if_local

    kind, url, settings = request[0], request[1], request[2]
    for one in server_list(url):
        restrict_to_loopback_if_local(one)
    stop = asyncio.Event()
    link: MonitorLink | None = None

    def on_frame(frame: tuple[Any, ...]) -> None:
        if frame[0] == "interval" and len(frame) == 2 and _spacing(frame[1]) \
                and link is not None:
            link.set_interval(float(frame[1]))

    _watch_stdin(stdin, asyncio.get_running_loop(), stop, on_frame)
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    try:
        if kind == "check":
            check = asyncio.get_running_loop().create_task(run_check_attempts(url, settings))
            await asyncio.wait({check, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not check.done():
                check.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await check
                return
            out.send(("result", *check.result()))
        elif kind == "monitor":
            interval, timeout = request[3], request[4]
            if not _spacing(interval):
                raise NetprobeError(f"a probe spacing of {interval!r} s is out of range")
            batch = _EchoBatch(out)
            link = MonitorLink(url, settings, interval, batch.add)
            try:
                await link.connect(timeout)
                out.send(("connected",))
                failed = asyncio.get_running_loop().create_task(link.failed.wait())
                await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if failed.done():
                    out.send(("error", ConnectFailed(
                        f"the connection to the reflector {link.state}")))
                failed.cancel()
            finally:
                await link.close()
                batch.flush()
        else:
            out.send(("error", NetprobeError(f"unknown request {kind!r}")))
    except (NetprobeError, TimeoutError) as exc:
        out.send(("error", exc))
    finally:
        stopping.cancel()


def main() -> int:
    # The agent decides when this process ends (it closes stdin); a Ctrl-C in the agent's
    # terminal reaches the whole process group and must not cut a result short.
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    out = _Output(sys.stdout.buffer)
    sys.stdout = sys.stderr  # nothing else may write into the frame stream
    try:
        request = _read_frame(sys.stdin.buffer)
    except _UNREADABLE as exc:
        print(f"netprobe worker: unreadable request: {exc}", file=sys.stderr)
        return 2
    if not isinstance(request, tuple) or len(request) < 3:
        return 2 if request is not None else 0
    try:
        asyncio.run(_serve(request, out, sys.stdin.buffer))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # reported to the agent, which logs it; never a silent death
        out.send(("error", NetprobeError(f"the measuring process failed: "
                                         f"{type(exc).__name__}: {exc}")))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

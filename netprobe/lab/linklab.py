"""`LinkLab`: the emulated link as an async context manager, and a blocking entry for the CLI.

    async with LinkLab(load_profile("dsl")) as lab:
        server = await lab.exec_server("python", "-m", "http.server", "8000")
        client = await lab.exec_client("curl", f"http://{lab.server_addr}:8000/")
        await client.wait()

On leaving the block (normally, on an exception, on cancellation, on Ctrl-C through
``asyncio.run``, or on SIGTERM, which the lab turns into cancellation of the task that entered
it) every process it started is stopped, the forwarder is closed, and both namespaces are
deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from netprobe.lab.errors import LabError
from netprobe.lab.forwarder import Forwarder, LabStats
from netprobe.lab.netns import LabNetwork, netns_exec_argv
from netprobe.lab.profiles import PROJECT_ROOT, Profile

logger = logging.getLogger(__name__)

Side = Literal["client", "server"]

#: Environment variables set for every process started in the lab.
ENV_SERVER_ADDR = "NETPROBE_LAB_SERVER_ADDR"
ENV_CLIENT_ADDR = "NETPROBE_LAB_CLIENT_ADDR"


class LinkLab:
    """Two network namespaces joined by an emulated link that behaves as ``profile`` says.

    Needs root and /dev/net/tun: entering raises `LabUnavailable` (with the reason) otherwise.
    With ``handle_sigterm`` (the default, main thread only) SIGTERM cancels the task that
    entered the lab, so it takes the same shutdown path as Ctrl-C.
    """

    def __init__(self, profile: Profile, *, handle_sigterm: bool = True) -> None:
        self.profile = profile
        """The profile being emulated."""
        self._handle_sigterm = handle_sigterm
        self._net: LabNetwork | None = None
        self._forwarder: Forwarder | None = None
        self._processes: list[asyncio.subprocess.Process] = []
        self._sigterm_installed = False
        self._final_stats: LabStats | None = None
        self.stopped_by_signal: int | None = None
        """SIGTERM's number once the lab's SIGTERM handler has cancelled the entering task."""

    # -- context management -------------------------------------------------------------------

    async def __aenter__(self) -> LinkLab:
        if self._net is not None:
            raise LabError("this LinkLab is already running")
        try:
            self._net = LabNetwork.create()
            self._forwarder = Forwarder(self._net.client_fd, self._net.server_fd, self.profile)
            self._forwarder.start()
            self._install_sigterm()
        except BaseException:
            await self.aclose()
            raise
        logger.info(
            "link lab %r up: client %s (%s) <-> server %s (%s)",
            self.profile.name,
            self.client_addr,
            self.client_ns,
            self.server_addr,
            self.server_ns,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the lab's processes, the forwarder and delete the namespaces (idempotent)."""
        try:
            await self._stop_processes()
        finally:
            self._remove_sigterm()
            if self._forwarder is not None:
                self._final_stats = self._forwarder.stats()
                self._forwarder.close()
                self._forwarder = None
            if self._net is not None:
                self._net.close()
                self._net = None

    # -- what the lab offers ------------------------------------------------------------------

    @property
    def client_ns(self) -> str:
        """Name of the client's network namespace."""
        return self._running().client_ns

    @property
    def server_ns(self) -> str:
        """Name of the server's network namespace."""
        return self._running().server_ns

    @property
    def client_addr(self) -> str:
        """The client's address, as the server sees it."""
        return self._running().client_addr

    @property
    def server_addr(self) -> str:
        """The server's address, as the client reaches it."""
        return self._running().server_addr

    @property
    def epoch(self) -> float:
        """Monotonic time (``time.monotonic()``) of the lab's time zero (phases, outages)."""
        self._running()
        assert self._forwarder is not None
        return self._forwarder.epoch

    def elapsed(self) -> float:
        """Seconds since the lab started."""
        return time.monotonic() - self.epoch

    def stats(self) -> LabStats:
        """Packets forwarded and dropped so far, per direction (final counts once closed)."""
        if self._forwarder is None and self._final_stats is not None:
            return self._final_stats
        self._running()
        assert self._forwarder is not None
        return self._forwarder.stats()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment processes in the lab get: ours, the lab's addresses, ``extra``."""
        env = dict(os.environ)
        env[ENV_SERVER_ADDR] = self.server_addr
        env[ENV_CLIENT_ADDR] = self.client_addr
        # So `python -m netprobe...` works in the namespaces from a source checkout.
        paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.update(extra or {})
        return env

    def argv(self, side: Side, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in the ``side`` namespace (for your own spawn)."""
        return netns_exec_argv(self.client_ns if side == "client" else self.server_ns, argv)

    async def exec(
        self, side: Side, *argv: str, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` in the ``side`` namespace (``asyncio.create_subprocess_exec`` keyword
        arguments pass through). The lab stops it on close if it is still running."""
        if not argv:
            raise LabError("no command given")
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(side, argv), env=self.env(env), **kwargs
            )
        except OSError as exc:
            raise LabError(f"cannot start {argv[0]!r} in the {side} namespace: {exc}") from None
        self._processes.append(process)
        return process

    async def exec_client(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """`exec` in the client namespace."""
        return await self.exec("client", *argv, **kwargs)

    async def exec_server(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """`exec` in the server namespace."""
        return await self.exec("server", *argv, **kwargs)

    # -- internals ----------------------------------------------------------------------------

    def _running(self) -> LabNetwork:
        if self._net is None:
            raise LabError("the LinkLab is not running (use `async with LinkLab(...)`)")
        return self._net

    async def _stop_processes(self, grace_s: float = 2.0) -> None:
        processes, self._processes = self._processes, []
        running = [p for p in processes if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def _install_sigterm(self) -> None:
        if not self._handle_sigterm or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else handles SIGTERM; leave it to them
        task = asyncio.current_task()
        if task is None:
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm, task)
        self._sigterm_installed = True

    def _on_sigterm(self, task: asyncio.Task[Any]) -> None:
        logger.info("SIGTERM: shutting the link lab down")
        self.stopped_by_signal = signal.SIGTERM
        task.cancel()

    def _remove_sigterm(self) -> None:
        if self._sigterm_installed:
            self._sigterm_installed = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


def run_command(
    profile: Profile,
    argv: Sequence[str],
    *,
    server_argv: Sequence[str] | None = None,
    server_settle_s: float = 0.5,
    report: bool = True,
) -> int:
    """Run ``argv`` in the client namespace of a lab for ``profile``; return its exit status.

    ``server_argv``, if given, is started in the server namespace first and given
    ``server_settle_s`` seconds to start listening. Blocks; Ctrl-C and SIGTERM tear the lab
    down and return 130 and 143. With ``report``, a line per direction goes to stderr at the end.
    """
    try:
        return asyncio.run(_run_command(profile, list(argv), server_argv, server_settle_s, report))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


async def _run_command(
    profile: Profile,
    argv: list[str],
    server_argv: Sequence[str] | None,
    server_settle_s: float,
    report: bool,
) -> int:
    lab = LinkLab(profile)
    try:
        async with lab:
            if report:
                _say(
                    f"lab: profile {profile.name!r}: client {lab.client_addr} "
                    f"(netns {lab.client_ns}) <-> server {lab.server_addr} (netns {lab.server_ns})"
                )
            if server_argv:
                server = await lab.exec_server(*server_argv)
                await asyncio.sleep(server_settle_s)
                if server.returncode is not None:
                    _say(f"lab: the server command exited early with status {server.returncode}")
            client = await lab.exec_client(*argv)
            status = await client.wait()
            if report:
                _report(lab.stats())
            return status if status >= 0 else 128 - status
    except asyncio.CancelledError:
        # Ctrl-C (asyncio.run cancels us) or SIGTERM (the lab cancels us): already torn down.
        return 128 + (lab.stopped_by_signal or signal.SIGINT)


def _report(stats: LabStats) -> None:
    for name, s in (("up", stats.up), ("down", stats.down)):
        _say(
            f"lab: {name:>4}: {s.submitted} packets in, {s.delivered} delivered, "
            f"{s.dropped_loss} lost, {s.dropped_queue} dropped by the full queue, "
            f"{s.dropped_outage} in outages, {s.dropped_blocked} UDP blocked"
        )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

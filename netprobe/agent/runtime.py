"""`netprobe agent`'s runtime: the asyncio layer that performs what the agent's policy decides.

Idle, the agent runs a light check now and then (randomised interval) so a status is always
fresh. During a session (started and stopped through the local API) it keeps a gentle probe
stream to the reflector, reads the machine's own signals (psutil), and changes its
recommendation with hysteresis. Every one of those decisions is made by the pure state machine
`netprobe.core.policy.AgentPolicy`; this module feeds it events (the clock, check results,
echoes, passive samples, API requests) and performs its actions (start a check, open or close
the probe stream, log, publish an event), sleeping until the policy's next deadline.

Checks and the monitoring stream run in child processes (`worker.py`): this process never
loads the WebRTC stack, so an idle agent stays small.

Every task has an owner: `serve()` owns the clock loop and the passive sampler; the agent owns
the one check task and the one monitoring task, and `serve()` stops and awaits them all. A task
that crashes is logged with its traceback: a check or a probe stream counts as failed (the
policy backs off and tries again), and a crash of the policy itself ends the agent cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from netprobe import __version__, exitcodes
from netprobe.agent.calls import scan as scan_for_calls
from netprobe.agent.control import CheckAlreadyRunning
from netprobe.agent.passive import PassiveSampler, PassiveState
from netprobe.agent.worker import IsolatedMonitorLink, run_check_attempts_isolated
from netprobe.config import Settings, load_settings, server_url_problem
from netprobe.core import policy_events as ev
from netprobe.core.calls import CallDetector, Evidence, TrafficSample
from netprobe.core.certainty import with_certainty
from netprobe.core.policy import SILENCE_S, AgentPolicy, light_check_settings
from netprobe.core.result import CheckResult
from netprobe.core.wire import Echo
from netprobe.errors import ConfigError, NetprobeError
from netprobe.tokens import read_token_file

__all__ = ["SILENCE_S", "AgentRuntime", "MonitorLink", "Sampler"]

logger = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: How often the machine's own signals are read.
PASSIVE_EVERY_S = 1.0
#: The longest a probe stream may take to connect.
MONITOR_CONNECT_CAP_S = 10.0
#: What the agent's own probe stream puts on the interface at a 50 ms probe spacing, kbit/s
#: (up, down), RTP, RTCP and STUN consent included (scripts/bench_agent.py --only monitor):
#: subtracted before call detection judges the traffic.
OWN_MONITOR_KBPS = (20.0, 20.0)


def own_monitor_kbps(interval_s: float) -> tuple[float, float]:
    """What the probe stream puts on the interface each way at `interval_s`, kbit/s."""
    scale = 0.05 / interval_s
    return OWN_MONITOR_KBPS[0] * scale, OWN_MONITOR_KBPS[1] * scale


class Sampler(Protocol):
    """The passive signals' source (`passive.PassiveSampler`)."""

    @property
    def state(self) -> PassiveState: ...
    def sample(self) -> str | None: ...


class MonitorLink(Protocol):
    """A session's probe stream (`worker.IsolatedMonitorLink`)."""

    failed: asyncio.Event

    async def connect(self, timeout: float) -> None: ...
    def set_interval(self, interval_s: float) -> None: ...
    async def close(self) -> None: ...


MonitorLinkFactory = Callable[[str, Settings, float, Callable[[Echo, float], None]], MonitorLink]


class AgentRuntime:
    """The agent without its API (the composition root, `app.py`, adds that)."""

    def __init__(self, settings: Settings, config_path: Path | None = None,
                 overrides: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 thresholds_path: Path | None = None, *,
                 sampler: Sampler | None = None,
                 monitor_link: MonitorLinkFactory = IsolatedMonitorLink) -> None:
        """`sampler` and `monitor_link` replace the psutil adapter and the child process of a
        session's probe stream (tests); `clock` is the monotonic clock the policy runs on."""
        self.config_path = config_path
        self.thresholds_path = thresholds_path
        self.overrides = overrides or {}
        self.clock = clock
        self._wall_offset = time.time() - clock()
        applied = self._apply_overrides(settings)
        self._sampler: Sampler = sampler or PassiveSampler(applied.agent.interface)
        self._monitor_link = monitor_link
        self.policy = AgentPolicy(applied, self._sampler.state,
                                  jitter=lambda: random.uniform(-1.0, 1.0), rng=random.random)
        self._calls = CallDetector()
        self._evidence: Evidence | None = None  # a scan for the next reading
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._waiting_until: float | None = None
        """The deadline `_follow_the_clock` waits for (None: none, only an event)."""
        self._check: asyncio.Task[None] | None = None
        self._manual: asyncio.Future[CheckResult] | None = None
        self._monitor: tuple[int, asyncio.Task[None]] | None = None
        self._link: tuple[int, MonitorLink] | None = None  # the stream the task runs
        self._closing: set[asyncio.Task[None]] = set()
        self.exit_status = exitcodes.OK
        """FAILED once the agent ended because of a failure of its own."""

    # -- what the API and the tests read --------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.policy.settings

    @property
    def checks_total(self) -> dict[str, int]:
        return self.policy.checks_total

    @property
    def last_check(self) -> CheckResult | None:
        return self.policy.last_check

    def status(self) -> dict[str, Any]:
        from netprobe.clinic import with_fallback  # whom to call (issue 11)

        now = self.clock()
        doc = self.policy.status_document(now, self._wall_offset, __version__)
        doc = with_fallback(doc, self.settings.clinic, self.last_check, now + self._wall_offset)
        return with_certainty(doc, "recommendation")  # words' code beside the number

    def counters(self) -> tuple[dict[str, int], int]:
        return dict(self.policy.checks_total), self.policy.changes_total

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    # -- settings ---------------------------------------------------------------------------

    def _apply_overrides(self, settings: Settings) -> Settings:
        agent = replace(settings.agent, **{k: v for k, v in self.overrides.items()
                                           if v is not None})
        if not agent.servers:
            raise ConfigError("no reflector URL: give --server URL or [agent] server = ...")
        for url in agent.servers:  # each as [agent] server is checked (a flag overrides it)
            if (problem := server_url_problem(url)) is not None:
                raise ConfigError(f"--server: {problem}")
        token_path = agent.token_file or agent.reflector_token_file
        token = read_token_file(token_path) if token_path \
            else settings.access_token  # re-read on SIGHUP: a renewed token is picked up
        return replace(settings, agent=agent, access_token=token)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; on error keep running with the old settings."""
        try:
            new = self._apply_overrides(load_settings(self.config_path, self.thresholds_path))
        except ConfigError as exc:
            logger.error("config reload failed: %s", exc, extra={
                "event": "config_error", "path": str(self.config_path), "error": str(exc)})
            return
        self._feed(ev.SettingsChanged(self.clock(), new))

    # -- requests ---------------------------------------------------------------------------

    async def start_session(self) -> bool:
        was = self.policy.state
        self._feed(ev.SessionStartRequested(self.clock()))
        return was != self.policy.state

    async def stop_session(self, reason: str = "api") -> bool:
        """Stop monitoring. `reason`: `api` (the video app asked), `shutdown` (the agent is
        stopping). Returns once the probe stream is closed."""
        was = self.policy.state
        self._feed(ev.SessionStopRequested(self.clock(), reason))
        await self._settle()
        return was != self.policy.state

    async def check_now(self) -> CheckResult:
        """A full check now (`POST /v1/check`), its verdict taken."""
        if self.policy.check_running is not None:
            raise CheckAlreadyRunning("a check is already running")
        self._manual = waiter = asyncio.get_running_loop().create_future()
        # read the outcome even if the caller has gone (no "exception never retrieved")
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._feed(ev.CheckRequested(self.clock()))
        if self.policy.check_running != "manual":  # refused after all
            self._manual = None
            raise CheckAlreadyRunning("a check is already running")
        # the check is the agent's: a client that hangs up does not cut it short
        return await asyncio.shield(waiter)

    def request_stop(self) -> None:
        self._stop.set()

    # -- feeding the policy, performing its actions -----------------------------------------

    def _feed(self, event: ev.Event) -> None:
        if self.exit_status != exitcodes.OK:
            return  # the policy failed: the agent is stopping, nothing more is decided
        try:
            actions = self.policy.handle(event)
        except Exception:  # a bug in the decisions: end the agent cleanly, never limp on
            logger.error("the agent's policy failed on %s", type(event).__name__,
                         exc_info=True, extra={"event": "error", "where": "policy",
                                               "error": type(event).__name__})
            self.exit_status = exitcodes.FAILED
            self._stop.set()
            return
        for action in actions:
            self._perform(action)
        # the clock is woken only when the next deadline came nearer (or is due: a test's
        # clock may jump): most events, an echo 20 times a second, leave it where it was,
        # and a deadline that moved later is found when the clock wakes
        after = self.policy.next_deadline()
        if after is not None and (self._waiting_until is None or after < self._waiting_until
                                  or after <= self.clock()):
            self._wake.set()

    def _perform(self, action: ev.Action) -> None:
        match action:
            case ev.Log(level, event, message, fields):
                logger.log(_LEVELS[level], "%s", message,
                           extra={} if event is None else {"event": event, **fields})
            case ev.Publish(kind, fields):
                self._publish({"type": kind, **fields, **self.status()})
            case ev.StartCheck(purpose, light, servers):
                self._check = asyncio.get_running_loop().create_task(
                    self._run_check(purpose, light, servers), name=f"check ({purpose})")
            case ev.StartMonitor(link, settings, server):
                self._monitor = (link, asyncio.get_running_loop().create_task(
                    self._run_monitor(link, settings, server), name=f"probe stream {link}"))
            case ev.SetProbeInterval(link, interval_s):
                if self._link is not None and self._link[0] == link:
                    self._link[1].set_interval(interval_s)
            case ev.StopMonitor(link):
                if self._monitor is not None and self._monitor[0] == link:
                    task = self._monitor[1]
                    self._monitor = None
                    task.cancel()
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    def _publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def _settle(self) -> None:
        """Wait until every probe stream the policy stopped is closed."""
        if self._closing:  # (wait, not gather: a cancelled caller must not cancel them again)
            await asyncio.wait(set(self._closing))

    async def _run_check(self, purpose: ev.Purpose, light: bool,
                         servers: tuple[str, ...]) -> None:
        """One check, trying `servers` in that order (the policy's)."""
        settings = self.settings
        if light:
            settings = light_check_settings(settings)
        waiter = None
        if purpose == "manual":
            waiter, self._manual = self._manual, None
        try:
            result, attempts = await run_check_attempts_isolated(
                servers or settings.agent.servers, settings)
        except Exception as exc:
            if not isinstance(exc, NetprobeError):
                logger.error("a check crashed", exc_info=True, extra={
                    "event": "error", "where": "check", "error": type(exc).__name__})
                exc = NetprobeError(f"the check failed unexpectedly: {type(exc).__name__}")
            self._feed(ev.CheckFailed(self.clock(), purpose, str(exc)))
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        except asyncio.CancelledError:
            if waiter is not None and not waiter.done():
                waiter.set_exception(NetprobeError("the agent is stopping"))
            raise
        self._feed(ev.CheckFinished(self.clock(), purpose, result, attempts))
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    async def _run_monitor(self, link_id: int, settings: Settings, server: str) -> None:
        """One probe stream to `server`, until it ends by itself (fed back) or is cancelled
        (StopMonitor)."""
        a = settings.agent
        link = self._monitor_link(
            server or a.servers[0], settings, a.monitor_probe_interval_ms / 1000,
            lambda echo, now: self._feed(ev.EchoReceived(now, link_id, echo)))
        self._link = (link_id, link)
        ended = True
        try:
            try:
                await link.connect(min(MONITOR_CONNECT_CAP_S, settings.probe.connect_timeout_s))
            except (NetprobeError, TimeoutError) as exc:
                ended = False
                self._feed(ev.MonitorConnectFailed(self.clock(), link_id, type(exc).__name__,
                                                   getattr(exc, "retry_after_s", None)))
                return
            self._feed(ev.MonitorConnected(self.clock(), link_id))
            await link.failed.wait()
        except Exception as exc:  # a broken stream must end itself, never the agent
            logger.error("monitoring failed: %s", type(exc).__name__, exc_info=True, extra={
                "event": "error", "where": "monitor", "error": type(exc).__name__})
        finally:
            if self._link is not None and self._link[1] is link:
                self._link = None
            await link.close()
        if ended:
            self._feed(ev.MonitorEnded(self.clock(), link_id))

    # -- the loops ----------------------------------------------------------------------------

    async def _follow_the_clock(self) -> None:
        """Feed a Tick whenever the policy's next deadline comes (and only then)."""
        self._feed(ev.Started(self.clock()))
        while True:
            deadline = self.policy.next_deadline()
            self._waiting_until = deadline
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = deadline - self.clock()
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation
                # that comes as the wake-up does (and the stop path always wakes it)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            now = self.clock()
            self._feed(ev.Tick(now))
            after = self.policy.next_deadline()
            if after is not None and after <= now:  # never spin: a bug, and it must show
                raise RuntimeError(f"the policy's deadline did not move past {now}")

    async def _sample_passive(self) -> None:
        failing = False
        while True:
            try:
                change = self._sampler.sample()
            except Exception as exc:  # psutil on a strange system: log once, keep trying
                if not failing:
                    logger.error("reading the passive signals failed", exc_info=True, extra={
                        "event": "error", "where": "passive", "error": type(exc).__name__})
                failing = True
            else:
                failing = False
                self._feed(ev.PassiveSampled(self.clock(), self._sampler.state, change))
                await self._watch_for_calls()
            await asyncio.sleep(PASSIVE_EVERY_S)

    async def _watch_for_calls(self) -> None:
        """Call detection (`core.calls`) on the interface counters just read; the sockets and
        processes are scanned (in a thread) only when the traffic looks like a call."""
        state = self._sampler.state
        rx, tx = getattr(state, "rx_bytes", None), getattr(state, "tx_bytes", None)
        if self.settings.agent.detect_calls != "on" or rx is None or tx is None:
            return
        now, p = self.clock(), self.policy
        evidence, self._evidence = self._evidence, None
        change = self._calls.sample(TrafficSample(
            now, rx, tx, own_busy=p.check_running is not None, evidence=evidence,
            own_kbps=(0.0, 0.0) if p.probe_rate is None
            else own_monitor_kbps(p.probe_rate.interval_s)))
        if change is not None:
            self._feed(ev.CallStarted(now, change.kind, change.processes) if change.started
                       else ev.CallEnded(now))
        elif self._calls.wants_evidence(now):
            self._evidence = await asyncio.to_thread(scan_for_calls)

    async def serve(self) -> int:
        """Run until `request_stop()` (or a failure of the agent itself); then end the
        session, stop every task and await it. Returns the exit status."""
        loop = asyncio.get_running_loop()
        from netprobe.agent.notify import follow_notices  # desktop notices: their own task

        loops = [loop.create_task(self._follow_the_clock(), name="clock"),
                 loop.create_task(self._sample_passive(), name="passive"),
                 loop.create_task(follow_notices(self), name="notices")]
        stopping = loop.create_task(self._stop.wait())
        try:
            await asyncio.wait({stopping, *loops}, return_when=asyncio.FIRST_COMPLETED)
            for task in loops:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    logger.error("%s crashed; the agent stops", task.get_name(),
                                 exc_info=exc, extra={"event": "error", "where": task.get_name(),
                                                      "error": type(exc).__name__})
                    self.exit_status = exitcodes.FAILED
        finally:
            await self.stop_session("shutdown")
            owned = [stopping, *loops, *([self._check] if self._check else []),
                     *([self._monitor[1]] if self._monitor else []), *self._closing]
            for task in owned:
                task.cancel()
            for task in owned:
                try:
                    await task  # each ends quietly when cancelled: nothing is left behind
                except asyncio.CancelledError:
                    pass
                except Exception:
                    if task not in loops:  # (a loop's crash is logged above)
                        logger.error("%s failed while stopping", task.get_name(),
                                     exc_info=True, extra={"event": "error",
                                                           "where": task.get_name(),
                                                           "error": "stop"})
        return self.exit_status

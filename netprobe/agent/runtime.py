"""`netprobe agent`: the background service clinics install on session machines.

Idle, it runs a light check now and then (randomised interval) so a status is always fresh.
During a session (started and stopped through the local API) it keeps a gentle probe stream to
the reflector and reads the machine's own signals (psutil), feeds rolling windows to the same
classifier as `check`, and changes its recommendation with hysteresis (`monitor.py`). Changes
go to the local API (`agent_api.py`: status, server-sent events, Prometheus metrics) and to
the JSON log (`docs/log-format.md`).

Checks and the monitoring stream run in child processes (`worker.py`): this process never
loads the WebRTC stack, so an idle agent stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netprobe import __version__
from netprobe.agent.passive import PassiveSampler, PassiveState
from netprobe.agent.worker import IsolatedMonitorLink, run_check_isolated
from netprobe.config import Settings, load_settings
from netprobe.core.classify import UNKNOWN, Reason, Verdict
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.monitor import (
    Hysteresis,
    HysteresisSettings,
    ProbeWindow,
    own_traffic_note,
    passive_verdict,
    window_verdict,
)
from netprobe.core.result import CheckResult
from netprobe.errors import ConfigError, NetprobeError

logger = logging.getLogger(__name__)

#: The light check run while idle: enough rungs to tell video from audio, a shorter cap.
LIGHT_LADDER = (300, 800, 1600)
LIGHT_CAP_S = 10.0
#: The longer window that must agree before a session is sent to the phone (x window_s).
LONG_WINDOW_FACTOR = 3
#: No echo for this long during a session: the reflector is gone.
SILENCE_S = 5.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _reason_codes(v: Verdict) -> list[str]:
    return [r.code for r in v.reasons]


class Agent:
    def __init__(self, settings: Settings, config_path: Path | None = None,
                 overrides: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 thresholds_path: Path | None = None) -> None:
        self.config_path = config_path
        self.thresholds_path = thresholds_path
        self.overrides = overrides or {}
        self.settings = self._apply_overrides(settings)
        self.clock = clock
        self.state = "idle"
        self.recommendation = Verdict(UNKNOWN, 0.0, (Reason(
            "no_check_yet", "No check has run yet; the first one starts in a moment."),))
        self.metrics = LinkMetrics()
        self.updated_at: float | None = None
        self.updated_wall: float | None = None
        self.reflector = "unknown"
        self.session_started_wall: float | None = None
        self.last_check: CheckResult | None = None
        self.passive = PassiveState()
        self.checks_total: dict[str, int] = {}
        self.changes_total = 0
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stop = asyncio.Event()
        self._wake_idle = asyncio.Event()
        self._session_task: asyncio.Task[None] | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.Task[bool] | None = None
        self._check_lock = asyncio.Lock()
        self._backoff = self.settings.agent.backoff_min_s
        self.retry_in = self._backoff
        """Wait before the next attempt on an unreachable reflector (as logged)."""
        self._sampler = PassiveSampler()
        self._traffic: deque[tuple[float | None, float | None]] = deque(maxlen=60)
        """(tx, rx) kbit/s of the default interface, one per second, newest last."""
        self._window: ProbeWindow | None = None
        self._hysteresis: Hysteresis | None = None

    # -- settings ---------------------------------------------------------------------

    def _apply_overrides(self, settings: Settings) -> Settings:
        agent = replace(settings.agent, **{k: v for k, v in self.overrides.items()
                                           if v is not None})
        if not agent.server:
            raise ConfigError("no reflector URL: give --server URL or [agent] server = ...")
        if not agent.server.startswith(("http://", "https://")):
            raise ConfigError(f"--server: {agent.server!r} must be an http:// or https:// URL")
        return replace(settings, agent=agent)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; on error keep running with the old settings."""
        try:
            new = self._apply_overrides(load_settings(self.config_path, self.thresholds_path))
        except ConfigError as exc:
            logger.error("config reload failed: %s", exc, extra={
                "event": "config_error", "path": str(self.config_path), "error": str(exc)})
            return
        changed = _changed_keys(self.settings, new)
        if new.agent.api_port != self.settings.agent.api_port:
            logger.warning("api_port changes take effect after a restart")
        self.settings = new
        logger.info("config reloaded", extra={"event": "config_reloaded", "changed": changed})
        self._wake_idle.set()

    # -- status and events ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        age = None if self.updated_at is None else now - self.updated_at
        verdict = self.recommendation
        if age is not None and age > self.settings.agent.stale_after_s:
            verdict = Verdict(UNKNOWN, 0.0, (Reason(
                "status_stale", "The last measurement is too old to rely on; a new check is "
                "due. Until then, do not count on video."),))
        return {
            "schema": "netprobe.status/1",
            "state": self.state,
            "recommendation": verdict.verdict,
            "confidence": verdict.confidence,
            "reasons": [r.to_json() for r in verdict.reasons],
            "metrics": self.metrics.to_json(),
            "updated_at": _iso(self.updated_wall),
            "age_s": None if age is None else round(age, 1),
            "reflector": self.reflector,
            "session_started_at": _iso(self.session_started_wall),
            "check_running": self._check_lock.locked(),
            "passive": self.passive.to_json(),
            "version": __version__,
        }

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def _set(self, verdict: Verdict, metrics: LinkMetrics | None, trigger: str) -> None:
        """Record a new recommendation (and figures); log and publish a change."""
        old = self.recommendation.verdict
        self.recommendation = verdict
        if metrics is not None:
            self.metrics = metrics
        self.updated_at = self.clock()
        self.updated_wall = time.time()
        if verdict.verdict != old:
            self.changes_total += 1
            logger.info("recommendation changed from %s to %s", old, verdict.verdict, extra={
                "event": "recommendation_changed", "from": old, "to": verdict.verdict,
                "reasons": _reason_codes(verdict), "trigger": trigger})
            self._publish({"type": "recommendation", "from": old, **self.status()})

    # -- checks ---------------------------------------------------------------------------

    def _check_settings(self, light: bool) -> Settings:
        s = self.settings
        if not light:
            return s
        probe = replace(s.probe, ladder_kbps=LIGHT_LADDER,
                        max_duration_s=min(LIGHT_CAP_S, s.probe.max_duration_s),
                        connect_timeout_s=min(LIGHT_CAP_S - 2, s.probe.connect_timeout_s))
        return replace(s, probe=probe)

    async def check(self, kind: str, *, light: bool = False, apply: bool = True) -> CheckResult:
        """Run a check now (one at a time) and, with `apply`, take its verdict."""
        async with self._check_lock:
            logger.info("check started", extra={"event": "check_started", "kind": kind})
            result = await run_check_isolated(self.settings.agent.server,
                                              self._check_settings(light))
            v = result.verdict
            m = result.metrics
            if m.connected and m.up.kbps is not None and m.down.kbps is not None:
                self.last_check = result  # what the windows take the capacity from
            self.checks_total[v.verdict] = self.checks_total.get(v.verdict, 0) + 1
            doc = result.to_json()
            logger.info("check finished: %s", v.verdict, extra={
                "event": "check_finished", "kind": kind, "verdict": v.verdict,
                "confidence": v.confidence, "reasons": _reason_codes(v),
                "metrics": doc["metrics"], "duration_s": doc["duration_s"]})
            reachable = result.metrics.connected
            busy = not reachable and v.reasons[0].code == "server_busy"
            if not busy:  # a busy reflector answered: it is not "unreachable"
                self._reflector_state(reachable, None if reachable else v.reasons[0].code)
            # A check that could not reach the reflector says nothing new about a session
            # the windows are watching: it must not override them.
            if apply and (reachable or self.state != "monitoring"):
                verdict = passive_verdict(v, interface_up=self.passive.interface_up,
                                          cpu_percent=self.passive.cpu_percent,
                                          cpu_limit=self.settings.agent.cpu_limit_pct)
                self._set(verdict, result.metrics if reachable else LinkMetrics(), "check")
                # a full check during a session outranks the windows: start them afresh
                if self._hysteresis is not None:
                    self._hysteresis.reset(verdict)
                if self._window is not None:
                    self._window.clear()
            return result

    def _reflector_state(self, reachable: bool, error_code: str | None) -> None:
        if reachable:
            if self.reflector == "unreachable":
                logger.info("reflector reachable again", extra={"event": "reflector_recovered"})
            self.reflector = "ok"
            self._backoff = self.settings.agent.backoff_min_s
            return
        self.retry_in = self._backoff
        logger.warning("reflector unreachable; retrying in %.0f s", self.retry_in, extra={
            "event": "reflector_unreachable", "retry_in_s": self.retry_in,
            "error_code": error_code})
        self.reflector = "unreachable"
        self._backoff = min(self._backoff * 2, self.settings.agent.backoff_max_s)

    # -- loops ------------------------------------------------------------------------------

    async def _idle_loop(self) -> None:
        delay = 1.0
        while True:
            self._wake_idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_idle.wait(), delay)
            if self.state == "idle":
                try:
                    await self.check("idle", light=True)
                except NetprobeError as exc:
                    logger.error("check failed: %s", exc, extra={"event": "error",
                                                                  "where": "idle_check",
                                                                  "error": str(exc)})
            a = self.settings.agent
            if self.reflector == "unreachable":
                delay = self.retry_in
            else:
                delay = a.idle_interval_s * random.uniform(1 - a.idle_jitter, 1 + a.idle_jitter)

    async def _passive_loop(self) -> None:
        while True:
            change = self._sampler.sample()
            self.passive = self._sampler.state
            self._traffic.append((self.passive.tx_kbps, self.passive.rx_kbps))
            if change:
                logger.info("network changed: %s", change, extra={
                    "event": "network_changed", "change": change,
                    "interface": self.passive.interface_index})
                self._wake_idle.set()  # a new network deserves a fresh check
            await asyncio.sleep(1.0)

    # -- sessions -----------------------------------------------------------------------------

    async def start_session(self) -> bool:
        if self._session_task is not None:
            return False
        self.state = "monitoring"
        self.session_started_wall = time.time()
        logger.info("session started", extra={"event": "session_started"})
        loop = asyncio.get_running_loop()
        self._session_task = loop.create_task(self._monitor())
        limit = self.settings.agent.max_session_s
        if limit > 0:
            self._session_timer = loop.call_later(limit, self._session_expired)
        self._publish({"type": "state", **self.status()})
        return True

    def _session_expired(self) -> None:
        self._session_timer = None
        self._expiry = asyncio.get_running_loop().create_task(self.stop_session("max_duration"))

    async def stop_session(self, reason: str = "api") -> bool:
        """Stop monitoring. `reason`: `api` (the video app asked), `max_duration` (the
        session outlived `max_session_s`: forgotten), `shutdown` (the agent is stopping)."""
        task, self._session_task = self._session_task, None
        if task is None:
            return False
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._window = self._hysteresis = None
        duration = time.time() - (self.session_started_wall or time.time())
        self.state = "idle"
        self.session_started_wall = None
        log = logger.warning if reason == "max_duration" else logger.info
        log("session stopped (%s)", reason, extra={
            "event": "session_stopped", "duration_s": round(duration, 1), "reason": reason})
        self._publish({"type": "state", **self.status()})
        return True

    def _own_traffic(self, seconds: float) -> tuple[float | None, float | None]:
        """This computer's mean (tx, rx) kbit/s over the last `seconds` of samples."""
        recent = list(self._traffic)[-max(1, int(seconds)):]
        tx = [t for t, _ in recent if t is not None]
        rx = [r for _, r in recent if r is not None]
        return (sum(tx) / len(tx) if tx else None, sum(rx) / len(rx) if rx else None)

    def _capacity(self) -> tuple[DirectionMetrics, DirectionMetrics] | None:
        if self.last_check is None:
            return None
        m = self.last_check.metrics
        return m.up, m.down

    async def _monitor(self) -> None:
        a = self.settings.agent
        hysteresis = Hysteresis(HysteresisSettings(a.step_down_after, a.step_up_after_s))
        if self._capacity() is None or self.updated_at is None or \
                self.clock() - self.updated_at > 60 or self.reflector != "ok":
            await self.check("session")
        hysteresis.reset(self.recommendation)
        self._hysteresis = hysteresis
        while True:
            window = ProbeWindow(a.window_s * LONG_WINDOW_FACTOR)
            self._window = window
            link = IsolatedMonitorLink(a.server, self.settings,
                                       a.monitor_probe_interval_ms / 1000, window.on_echo)
            try:
                await link.connect(min(10.0, self.settings.probe.connect_timeout_s))
            except (NetprobeError, TimeoutError) as exc:
                self._reflector_state(False, type(exc).__name__)
                self._set(passive_verdict(_unreachable(), interface_up=self.passive.interface_up,
                                          cpu_percent=None), LinkMetrics(), "monitor")
                hysteresis.reset(self.recommendation)
                await asyncio.sleep(self.retry_in)
                continue
            self._reflector_state(True, None)
            started = self.clock()
            why = "monitor_closed"  # the connection, or its process, ended
            try:
                while not link.failed.is_set():
                    await asyncio.sleep(1.0)
                    now = self.clock()
                    if window.silent_for(now) > SILENCE_S and now - started > SILENCE_S:
                        why = "monitor_silent"
                        break
                    await self._monitor_tick(window, hysteresis, now)
            finally:
                await link.close()
            self._reflector_state(False, why)
            self._set(passive_verdict(_unreachable(), interface_up=self.passive.interface_up,
                                      cpu_percent=None), LinkMetrics(), "monitor")
            hysteresis.reset(self.recommendation)
            await asyncio.sleep(self.retry_in)

    async def _monitor_tick(self, window: ProbeWindow, hysteresis: Hysteresis,
                            now: float) -> None:
        a = self.settings.agent
        capacity = self._capacity()
        metrics = window.metrics(now, capacity, a.window_s)
        longer = window.metrics(now, capacity, sure=True)
        verdict = passive_verdict(window_verdict(metrics, self.settings.thresholds, longer),
                                  interface_up=self.passive.interface_up,
                                  cpu_percent=self.passive.cpu_percent,
                                  cpu_limit=a.cpu_limit_pct)
        if capacity is not None:
            tx, rx = self._own_traffic(a.window_s)
            verdict = own_traffic_note(verdict, tx_kbps=tx, rx_kbps=rx, up=capacity[0],
                                       down=capacity[1])
        changed, confirm = hysteresis.observe(verdict, now)
        if changed is not None:
            trigger = "passive" if changed.reasons and changed.reasons[0].code in (
                "network_down", "cpu_saturated") else "monitor"
            self._set(changed, metrics, trigger)
        elif metrics is not None:
            self.metrics = metrics
            self.updated_at, self.updated_wall = self.clock(), time.time()
        if confirm:
            # Conditions have been better for a while: measure capacity before stepping up
            # (the gentle probe stream cannot). The check's load would look like loss to the
            # window, so the window starts afresh afterwards.
            result = await self.check("session", light=True, apply=False)
            confirmed = passive_verdict(result.verdict, interface_up=self.passive.interface_up,
                                        cpu_percent=self.passive.cpu_percent,
                                        cpu_limit=a.cpu_limit_pct)
            stepped = hysteresis.confirm(confirmed, self.clock())
            if stepped is not None:
                self._set(stepped, result.metrics, "check")
            window.clear()

    # -- running ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        from netprobe.agent.api import AgentApi

        api = AgentApi(self)
        await api.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except NotImplementedError:  # Windows: no signal handlers on the event loop
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_stop))
        with contextlib.suppress(NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        logger.info("agent started", extra={"event": "agent_start", "version": __version__,
                                             "config_path": str(self.config_path or ""),
                                             "api_port": api.port})
        tasks = [loop.create_task(self._idle_loop()), loop.create_task(self._passive_loop())]
        try:
            await self._stop.wait()
        finally:
            await self.stop_session("shutdown")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api.stop()
            logger.info("agent stopped", extra={"event": "agent_stop", "reason": "signal"})
        return 0


def _unreachable() -> Verdict:
    return Verdict(UNKNOWN, 0.0, (Reason(
        "reflector_unreachable",
        "The test server cannot be reached right now, so the connection cannot be watched. "
        "If the call also struggles, switch to audio or call by phone."),))


def _changed_keys(old: Settings, new: Settings) -> list[str]:
    changed = []
    for section in ("probe", "reflector", "privacy", "agent", "thresholds"):
        a, b = getattr(old, section), getattr(new, section)
        if a != b:
            for key in vars(a):
                if getattr(a, key) != getattr(b, key):
                    changed.append(f"{section}.{key}")
    return changed

"""The agent's decisions, pure: when to check, how long to back off, when a session's figures
go stale or its probe stream silent, how often that stream probes (`core.probe_rate`), when to
step the recommendation down or (after a confirming check) up, when a forgotten session ends.

`AgentPolicy.handle(event)` takes one event (`netprobe.core.policy_events`, each with its
`now`) and returns the actions the runtime must perform; `next_deadline()` says when to feed
the next `Tick`. Like aioquic's connection, it does no I/O and reads no clock; the asyncio
agent (`netprobe.agent.runtime`) performs the actions and feeds the events back. Randomness
(the spread of the idle interval) comes in through the `jitter` argument.

A session goes through phases: `checking` (a full check first if the last result is not fresh;
never for a detected call, which would bear its load), `connecting`, `streaming` (a window
verdict once a second), `confirming` (a light check before a step up) and `waiting` (the
reflector was lost: reconnect after the backoff). There is always either a deadline or an
outstanding check/connection, so a session is never "monitoring" with nothing going on. A
stream whose reflector drains or dies moves at once to another (`core.failover.StreamRoute`);
only when every one has failed does it wait for the backoff.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from netprobe.config import Settings
from netprobe.core import policy_events as ev
from netprobe.core.classify import UNKNOWN, Verdict
from netprobe.core.failover import (
    ReflectorPool,
    StreamRoute,
    no_check_verdict,
    stale_verdict,
    unreachable_verdict,
)
from netprobe.core.metrics import LinkMetrics
from netprobe.core.monitor import (
    Hysteresis,
    HysteresisSettings,
    ProbeWindow,
    own_traffic_note,
    passive_verdict,
    window_verdict,
)
from netprobe.core.policy_events import Action, Event, PassiveReadings, Purpose
from netprobe.core.policy_status import changed_keys as changed_keys  # (re-exported)
from netprobe.core.policy_status import light_check_settings as light_check_settings
from netprobe.core.policy_status import status_document
from netprobe.core.probe_rate import ProbeRate
from netprobe.core.result import CheckResult

#: The longer window that must agree before a session is sent to the phone (x window_s).
LONG_WINDOW_FACTOR = 3
#: No echo for this long during a session: the reflector is gone.
SILENCE_S = 5.0
#: A session starts with a full check unless the last result is at most this old.
FRESH_FOR_SESSION_S = 60.0
#: The first idle check, after the agent starts.
FIRST_CHECK_AFTER_S = 1.0
#: One window verdict per this many seconds during a session.
TICK_S = 1.0

Phase = Literal["checking", "connecting", "streaming", "confirming", "waiting"]


class AgentPolicy:
    """The agent as a state machine. Read its public attributes; change it only through
    `handle`."""

    def __init__(self, settings: Settings, passive: PassiveReadings,
                 jitter: Callable[[], float], rng: Callable[[], float] | None = None) -> None:
        """`passive`: the readings until the first sample; `jitter()`: uniform in [-1, 1],
        drawn for each idle interval; `rng()`: uniform in [0, 1), shuffles reflectors."""
        self.settings = settings
        self._jitter = jitter
        self._rng = rng or (lambda: min(0.999999, (max(-1.0, min(1.0, jitter())) + 1) / 2))
        self.route = StreamRoute(ReflectorPool(settings.agent.servers))
        self.pool = self.route.pool
        self.state: Literal["idle", "monitoring"] = "idle"
        self.recommendation = no_check_verdict()
        self.metrics = LinkMetrics()
        self.updated_at: float | None = None
        self.reflector: Literal["unknown", "ok", "unreachable"] = "unknown"
        self.passive = passive
        self.last_check: CheckResult | None = None
        """The last check that measured both directions: what windows take capacity from."""
        self.checks_total: dict[str, int] = {}
        self.changes_total = 0
        self.backoff_s = settings.agent.backoff_min_s
        """The wait before the next retry if the reflector is unreachable again."""
        self.retry_in_s = self.backoff_s
        self.check_running: Purpose | None = None
        self.idle_check_at: float | None = None
        self._recheck = False  # something changed while a check ran: check again after it
        self._traffic: deque[tuple[float | None, float | None]] = deque(maxlen=60)
        # the session
        self.session_started_at: float | None = None
        self.session_source: Literal["api", "detected"] | None = None
        """Who started the session: the video app (`api`) or call detection (`detected`)."""
        self._call_since: float | None = None
        self.phase: Phase | None = None
        self.link = 0
        """The number of the current (or last) probe stream."""
        self.link_open = False
        self._session: Settings = settings
        self._session_ends_at: float | None = None
        self._stream_started_at = 0.0
        self._next_window_at: float | None = None
        self._reconnect_at: float | None = None
        self._window: ProbeWindow | None = None
        self._hysteresis: Hysteresis | None = None
        self.probe_rate: ProbeRate | None = None  # the open stream's spacing (None: no stream)
        self._out: list[Action] = []

    # -- the interface ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When to feed the next Tick (None: only when another event comes)."""
        times = [self._session_ends_at]
        if self.check_running is None or self.state == "monitoring":
            times.append(self.idle_check_at)  # (an idle check waits for the running one)
        if self.phase == "streaming":
            times.append(self._next_window_at)
        elif self.phase == "waiting":
            times.append(self._reconnect_at)
        return min((t for t in times if t is not None), default=None)

    def handle(self, event: Event) -> list[Action]:
        self._out = []
        match event:
            case ev.Started(now):
                self.idle_check_at = now + FIRST_CHECK_AFTER_S
            case ev.Tick(now):
                self._tick(now)
            case ev.PassiveSampled(now, readings, change):
                self._passive(now, readings, change)
            case ev.SettingsChanged(now, settings):
                self._reload(now, settings)
            case ev.SessionStartRequested(now):
                self._start_session(now, "api")
            case ev.CallStarted(now, kind, processes):
                self._call_started(now, kind, processes)
            case ev.CallEnded(now):
                self._call_ended(now)
            case ev.SessionStopRequested(now, reason):
                self._stop_session(now, reason)
            case ev.CheckRequested(now):
                if self.check_running is None:
                    self._start_check(now, "manual", light=False)
            case ev.CheckFinished(now, purpose, result, attempts) if purpose == self.check_running:
                self.pool.learn(attempts, now)
                self._check_finished(now, purpose, result)
            case ev.CheckFailed(now, purpose, error) if purpose == self.check_running:
                self._check_failed(now, purpose, error)
            case ev.MonitorConnected(now, link) if self._current(link, "connecting"):
                self._reflector_state(True, None)
                self.route.connected()
                self.phase = "streaming"
                self._stream_started_at = now
                self._next_window_at = now + TICK_S
            case ev.MonitorConnectFailed(now, link, code, retry_after) if self._current(
                    link, "connecting"):
                self.link_open = False
                self._lost(now, code, None if code != "RateLimited" else  # up: wants a pause
                           retry_after or self.settings.agent.backoff_min_s)
            case ev.MonitorEnded(now, link) if self._current(link, "connecting", "streaming",
                                                          "confirming"):
                self.link_open = False
                self._lost(now, "monitor_closed")
            case ev.EchoReceived(now, link, echo) if self._current(link, "connecting", "streaming",
                                                               "confirming"):
                assert self._window is not None
                self._window.on_echo(echo, now)
                if echo.draining:  # the reflector is shutting down: go elsewhere now
                    self._lost(now, "draining")
        return self._out

    def status_document(self, now: float, wall_offset: float, version: str) -> dict[str, Any]:
        """The status, schema `netprobe.status/1` (docs/agent-api.md). `wall_offset`: add it
        to a `now` to get the wall-clock time (Unix seconds)."""
        age = None if self.updated_at is None else now - self.updated_at
        verdict = self.recommendation
        if age is not None and age > self.settings.agent.stale_after_s:
            verdict = stale_verdict()
        return status_document(self, verdict, age, wall_offset, version)

    # -- helpers ----------------------------------------------------------------------------

    def _log(self, level: Literal["info", "warning", "error"], event: str | None, message: str,
             **fields: Any) -> None:
        self._out.append(ev.Log(level, event, message, fields))

    def _current(self, link: int, *phases: Phase) -> bool:
        return self.state == "monitoring" and link == self.link and self.phase in phases

    def _idle_interval(self) -> float:
        a = self.settings.agent
        if self.reflector == "unreachable":
            return self.retry_in_s
        return a.idle_interval_s * (1 + a.idle_jitter * max(-1.0, min(1.0, self._jitter())))

    def _set(self, verdict: Verdict, metrics: LinkMetrics | None, trigger: str,
             now: float) -> None:
        """Take a new recommendation (and figures); log and publish a change."""
        old = self.recommendation.verdict
        self.recommendation = verdict
        if metrics is not None:
            self.metrics = metrics
        self.updated_at = now
        if verdict.verdict != old:
            self.changes_total += 1
            self._log("info", "recommendation_changed",
                      f"recommendation changed from {old} to {verdict.verdict}",
                      **{"from": old, "to": verdict.verdict,
                         "reasons": [r.code for r in verdict.reasons], "trigger": trigger})
            self._out.append(ev.Publish("recommendation", {"from": old}))

    def _with_passive(self, verdict: Verdict) -> Verdict:
        return passive_verdict(verdict, interface_up=self.passive.interface_up,
                               cpu_percent=self.passive.cpu_percent,
                               cpu_limit=self.settings.agent.cpu_limit_pct)

    def _reflector_state(self, reachable: bool, error_code: str | None) -> None:
        if reachable:
            if self.reflector == "unreachable":
                self._log("info", "reflector_recovered", "reflector reachable again")
            self.reflector = "ok"
            self.backoff_s = self.settings.agent.backoff_min_s
            return
        self.retry_in_s = self.backoff_s
        self._log("warning", "reflector_unreachable",
                  f"reflector unreachable; retrying in {self.retry_in_s:.0f} s",
                  retry_in_s=self.retry_in_s, error_code=error_code)
        self.reflector = "unreachable"
        self.backoff_s = min(self.backoff_s * 2, self.settings.agent.backoff_max_s)

    # -- checks -----------------------------------------------------------------------------

    def _start_check(self, now: float, purpose: Purpose, *, light: bool) -> None:
        self.check_running = purpose
        kind = "session" if purpose == "confirm" else purpose
        self._log("info", "check_started", "check started", kind=kind)
        self._out.append(ev.StartCheck(purpose, light, self.pool.order(now, self._rng)))

    def _check_finished(self, now: float, purpose: Purpose, result: CheckResult) -> None:
        self.check_running = None
        v, m = result.verdict, result.metrics
        if m.connected and m.up.kbps is not None and m.down.kbps is not None:
            self.last_check = result
        self.checks_total[v.verdict] = self.checks_total.get(v.verdict, 0) + 1
        doc = result.to_json()
        self._log("info", "check_finished", f"check finished: {v.verdict}",
                  kind="session" if purpose == "confirm" else purpose, verdict=v.verdict,
                  confidence=v.confidence, reasons=[r.code for r in v.reasons],
                  metrics=doc["metrics"], duration_s=doc["duration_s"])
        reachable = m.connected
        busy = not reachable and bool(v.reasons) and v.reasons[0].code in (
            "server_busy", "rate_limited")
        if not busy:  # a busy or rate-limiting reflector answered: it is not "unreachable"
            self._reflector_state(reachable, None if reachable or not v.reasons
                                  else v.reasons[0].code)
        if purpose == "confirm":
            self._confirmed(now, result)
        # A check that could not reach the reflector says nothing new about a session the
        # windows are watching: it must not override them.
        elif reachable or self.state != "monitoring":
            verdict = self._with_passive(v)
            self._set(verdict, m if reachable else LinkMetrics(), "check", now)
            # a full check during a session outranks the windows: start them afresh
            if self._hysteresis is not None:
                self._hysteresis.reset(verdict)
            if self._window is not None:
                self._window.clear()
        self._after_check(now)

    def _check_failed(self, now: float, purpose: Purpose, error: str) -> None:
        self.check_running = None
        where = {"idle": "idle_check", "manual": "check"}.get(purpose, "session_check")
        self._log("error", "error", f"check failed: {error}", where=where, error=error)
        if purpose == "confirm":
            self._confirmed(now, None)
        self._after_check(now)

    def _confirmed(self, now: float, result: CheckResult | None) -> None:
        """The end of a confirmation check: step up if it confirms a better verdict."""
        if self.phase != "confirming" or self._hysteresis is None or self._window is None:
            return
        verdict = Verdict(UNKNOWN, 0.0, ()) if result is None else \
            self._with_passive(result.verdict)
        stepped = self._hysteresis.confirm(verdict, now)
        if stepped is not None and result is not None:
            self._set(stepped, result.metrics, "check", now)
        # the check's own load looked like loss to the window: start it afresh
        self._window.clear()
        self.phase = "streaming"
        self._next_window_at = now + TICK_S

    def _after_check(self, now: float) -> None:
        """Whatever waited for the check that just ended."""
        if self.state == "idle":
            self.idle_check_at = now if self._recheck else now + self._idle_interval()
            # every reflector asked for a pause (Retry-After): not before the first is over
            self.idle_check_at = max(self.idle_check_at, self.pool.all_held_until(now) or now)
            self._recheck = False
        elif self.phase == "checking":
            self._begin_stream(now)

    # -- the clock ------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if self._session_ends_at is not None and now >= self._session_ends_at:
            self._stop_session(now, "max_duration")
        if self.idle_check_at is not None and now >= self.idle_check_at:
            if self.state == "monitoring":  # no idle checks during a session
                self.idle_check_at = now + self._idle_interval()
            elif self.check_running is None:
                self.idle_check_at = None
                self._start_check(now, "idle", light=True)
        if self.phase == "waiting" and self._reconnect_at is not None and \
                now >= self._reconnect_at:
            self._begin_stream(now)
        if self.phase == "streaming" and self._next_window_at is not None and \
                now >= self._next_window_at:
            self._next_window_at = now + TICK_S
            self._judge_window(now)

    def _passive(self, now: float, readings: PassiveReadings, change: str | None) -> None:
        self.passive = readings
        self._traffic.append((readings.tx_kbps, readings.rx_kbps))
        if change:
            self._log("info", "network_changed", f"network changed: {change}", change=change,
                      interface=readings.interface_index)
            self._wake_idle_check(now)  # a new network deserves a fresh check

    def _reload(self, now: float, settings: Settings) -> None:
        changed = changed_keys(self.settings, settings)
        if settings.agent.api_port != self.settings.agent.api_port:
            self._log("warning", None, "api_port changes take effect after a restart")
        self.settings = settings
        self.pool.update(settings.agent.servers)
        self._log("info", "config_reloaded", "config reloaded", changed=changed)
        if settings.agent.detect_calls == "off" and self.session_source == "detected":
            self._stop_session(now, "detect_calls_off")
        self._wake_idle_check(now)

    def _wake_idle_check(self, now: float) -> None:
        if self.state != "idle":
            return
        if self.check_running is None:
            self.idle_check_at = now
        else:
            self._recheck = True

    # -- sessions -----------------------------------------------------------------------------

    def _call_started(self, now: float, kind: str, processes: tuple[str, ...]) -> None:
        self._call_since = now
        self._log("info", "call_detected", f"a call was noticed ({kind})", kind=kind,
                  processes=list(processes) if self.settings.privacy.log_process_names else [])
        if self.settings.agent.detect_calls == "on":
            self._start_session(now, "detected")

    def _call_ended(self, now: float) -> None:
        since, self._call_since = self._call_since, None
        self._log("info", "call_ended", "the call has ended",
                  duration_s=None if since is None else round(now - since, 1))
        if self.session_source == "detected":  # (an API session is the app's to end)
            self._stop_session(now, "call_ended")

    def _start_session(self, now: float, source: Literal["api", "detected"]) -> None:
        if self.state == "monitoring":
            if source == "api" and self.session_source == "detected":  # the app takes over
                self.session_source = "api"
                self._log("info", "session_started", "session taken over by the API",
                          session_source="api")
                self._out.append(ev.Publish("state"))
            return
        self.state = "monitoring"
        self.session_started_at = now
        self.session_source = source
        self._session = s = self.settings
        a = s.agent
        self._session_ends_at = now + a.max_session_s if a.max_session_s > 0 else None
        self._hysteresis = Hysteresis(HysteresisSettings(a.step_down_after, a.step_up_after_s))
        self._log("info", "session_started", "session started", session_source=source)
        self._out.append(ev.Publish("state"))
        self._recheck = False
        fresh = self.last_check is not None and self.updated_at is not None and \
            now - self.updated_at <= FRESH_FOR_SESSION_S and self.reflector == "ok"
        self.route.reset()
        if fresh or (source == "detected" and self.check_running is None):
            self._begin_stream(now)
        else:
            self.phase = "checking"
            if self.check_running is None:
                self._start_check(now, "session", light=False)
            # else: the running check's end starts the stream (`_after_check`)

    def _begin_stream(self, now: float, server: str | None = None) -> None:
        assert self._hysteresis is not None
        self._hysteresis.reset(self.recommendation)
        url = self.route.start(now, self._rng, server)
        self.link += 1
        self.link_open = True
        self.phase = "connecting"
        a = self._session.agent
        self._window = ProbeWindow(a.window_s * LONG_WINDOW_FACTOR)
        self.probe_rate = ProbeRate(a.monitor_probe_interval_ms / 1e3,
                                    a.monitor_calm_interval_ms / 1e3)
        self._reconnect_at = self._next_window_at = None
        self._out.append(ev.StartMonitor(self.link, self._session, url))

    def _lost(self, now: float, why: str, hold_s: float | None = None) -> None:
        """The probe stream is gone (`why`): move to a reflector not yet tried since the last
        stream that connected, keeping the recommendation; if none is left, unknown, and
        reconnect after the backoff (or a Retry-After)."""
        if self.link_open:
            self._out.append(ev.StopMonitor(self.link))
            self.link_open = False
        old = self.route.server
        target = self.route.lost(now, self._rng, why, hold_s)
        if target is not None:
            self._log("info", "monitor_moved", f"monitoring moved to another reflector ({why})",
                      reason=why, from_reflector=self.pool.position(old) if old else None,
                      to_reflector=self.pool.position(target))
            self._begin_stream(now, target)
            return
        self._reflector_state(False, why)
        self._set(passive_verdict(unreachable_verdict(), interface_up=self.passive.interface_up,
                                  cpu_percent=None), LinkMetrics(), "monitor", now)
        assert self._hysteresis is not None
        self._hysteresis.reset(self.recommendation)
        self.phase = "waiting"
        self._next_window_at = self.probe_rate = None  # (no stream: no spacing)
        self._reconnect_at = max(now + self.retry_in_s, self.pool.all_held_until(now) or now)

    def _stop_session(self, now: float, reason: str) -> None:
        if self.state != "monitoring":
            return
        if self.link_open:
            self._out.append(ev.StopMonitor(self.link))
            self.link_open = False
        duration = now - (self.session_started_at or now)
        source, self.session_source = self.session_source, None
        self.state = "idle"
        self.phase = None
        self.session_started_at = self._session_ends_at = None
        self._reconnect_at = self._next_window_at = None
        self._window = self._hysteresis = self.probe_rate = None
        if self.idle_check_at is None and self.check_running is None:
            self.idle_check_at = now + self._idle_interval()
        self._log("warning" if reason == "max_duration" else "info", "session_stopped",
                  f"session stopped ({reason})", duration_s=round(duration, 1), reason=reason,
                  session_source=source)
        self._out.append(ev.Publish("state"))

    def _own_traffic(self, seconds: float) -> tuple[float | None, float | None]:
        """This computer's mean (tx, rx) kbit/s over the last `seconds` of samples."""
        recent = list(self._traffic)[-max(1, int(seconds)):]
        tx = [t for t, _ in recent if t is not None]
        rx = [r for _, r in recent if r is not None]
        return (sum(tx) / len(tx) if tx else None, sum(rx) / len(rx) if rx else None)

    def _judge_window(self, now: float) -> None:
        """Once a second during a session: the window's verdict through the hysteresis."""
        window, hysteresis, rate = self._window, self._hysteresis, self.probe_rate
        assert window is not None and hysteresis is not None and rate is not None
        if window.silent_for(now) > SILENCE_S and now - self._stream_started_at > SILENCE_S:
            self._lost(now, "monitor_silent")
            return
        span = self._session.agent.window_s
        last = self.last_check
        capacity = None if last is None else (last.metrics.up, last.metrics.down)
        metrics = window.metrics(now, capacity, span)
        longer = window.metrics(now, capacity, sure=True)
        verdict = self._with_passive(window_verdict(metrics, self.settings.thresholds, longer))
        if capacity is not None:
            tx, rx = self._own_traffic(span)
            verdict = own_traffic_note(verdict, tx_kbps=tx, rx_kbps=rx, up=capacity[0],
                                       down=capacity[1])
        changed, confirm = hysteresis.observe(verdict, now)
        if (spacing := rate.observe(now, verdict, metrics, hysteresis.current.verdict,
                                    self.settings.thresholds)) is not None:
            self._out.append(ev.SetProbeInterval(self.link, spacing))  # core.probe_rate
        if changed is not None:
            trigger = "passive" if changed.reasons and changed.reasons[0].code in (
                "network_down", "cpu_saturated") else "monitor"
            self._set(changed, metrics, trigger, now)
        elif metrics is not None:
            self.metrics = metrics
            self.updated_at = now
        if confirm and self.check_running is None:
            # Conditions have been better for a while: measure capacity before stepping up
            # (the gentle probe stream cannot). Windows pause until the check is done.
            self.phase = "confirming"
            self._next_window_at = None
            self._start_check(now, "confirm", light=True)

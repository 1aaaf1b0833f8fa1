"""What goes into the agent's policy (events, each with the `now` it happened at) and what
comes out of it (actions for the runtime to perform). Plain frozen dataclasses, no behaviour:
the machine itself is `netprobe.core.policy`.

`now` is the agent's monotonic clock in seconds; echoes carry the clock of the process that
received them (`time.monotonic()`, one clock for every process on the machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from netprobe.config import Settings
from netprobe.core.failover import Attempt
from netprobe.core.result import CheckResult
from netprobe.core.wire import Echo

#: Why a check runs. `confirm` is the light check that must confirm a step up during a
#: session (logged with kind `session`, as docs/log-format.md says).
Purpose = Literal["idle", "session", "confirm", "manual"]
Level = Literal["info", "warning", "error"]


class PassiveReadings(Protocol):
    """The machine's own signals (the psutil adapter's `PassiveState` is one)."""

    @property
    def interface_up(self) -> bool: ...
    @property
    def interface_index(self) -> int | None: ...
    @property
    def cpu_percent(self) -> float | None: ...
    @property
    def rx_kbps(self) -> float | None: ...
    @property
    def tx_kbps(self) -> float | None: ...
    def to_json(self) -> dict[str, Any]: ...


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The agent's loops are running."""
    now: float


@dataclass(frozen=True)
class Tick:
    """The deadline the policy asked for (`next_deadline()`) has come."""
    now: float


@dataclass(frozen=True)
class PassiveSampled:
    """A reading of the machine's own signals (about once a second)."""
    now: float
    readings: PassiveReadings
    change: str | None = None
    """`interface_down`, `interface_up`, `default_route_changed`, or None."""


@dataclass(frozen=True)
class SettingsChanged:
    """The config file was read again (SIGHUP) and is valid."""
    now: float
    settings: Settings


@dataclass(frozen=True)
class SessionStartRequested:
    now: float


@dataclass(frozen=True)
class SessionStopRequested:
    now: float
    reason: str = "api"
    """`api`, `max_duration` (only the policy decides that one) or `shutdown` (and, decided
    by the policy: `call_ended`, `detect_calls_off`)."""


@dataclass(frozen=True)
class CallStarted:
    """Call detection (`core.calls`) noticed a call on this computer."""
    now: float
    kind: str = "traffic"
    """What it was recognised by: `udp`, `conferencing` or `traffic` (`core.calls.Kind`)."""
    processes: tuple[str, ...] = ()
    """Conferencing programs seen (logged only with `[privacy] log_process_names`)."""


@dataclass(frozen=True)
class CallEnded:
    """The call noticed has ended (its traffic fell away)."""
    now: float


@dataclass(frozen=True)
class CheckRequested:
    """Someone (`POST /v1/check`) asks for a full check now."""
    now: float


@dataclass(frozen=True)
class CheckFinished:
    now: float
    purpose: Purpose
    result: CheckResult
    attempts: tuple[Attempt, ...] = ()
    """What became of each reflector URL tried, in order (a Retry-After puts one on hold)."""


@dataclass(frozen=True)
class CheckFailed:
    """The check could not run at all (its measuring process failed)."""
    now: float
    purpose: Purpose
    error: str


@dataclass(frozen=True)
class MonitorConnected:
    now: float
    link: int


@dataclass(frozen=True)
class MonitorConnectFailed:
    now: float
    link: int
    error_code: str
    """The exception's name: `ServerUnreachable`, `ServerBusy`, `TimeoutError`, ..."""
    retry_after_s: float | None = None
    """`RateLimited`: the reflector's Retry-After (bounded by the policy), if it gave one."""


@dataclass(frozen=True)
class MonitorEnded:
    """The probe stream ended without being asked to (connection, process, or a crash)."""
    now: float
    link: int


@dataclass(frozen=True)
class EchoReceived:
    now: float
    link: int
    echo: Echo


Event = (Started | Tick | PassiveSampled | SettingsChanged | SessionStartRequested
         | SessionStopRequested | CallStarted | CallEnded | CheckRequested | CheckFinished
         | CheckFailed | MonitorConnected | MonitorConnectFailed | MonitorEnded | EchoReceived)


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartCheck:
    """Run one check (never while another runs) and feed back CheckFinished/CheckFailed."""
    purpose: Purpose
    light: bool
    """The idle-sized check (`light_check_settings`), not the full ladder."""
    servers: tuple[str, ...] = ()
    """The reflector URLs to try, in this order (`core.failover`)."""


@dataclass(frozen=True)
class StartMonitor:
    """Open the session's probe stream; feed back MonitorConnected or MonitorConnectFailed,
    then every echo and, if it ends by itself, MonitorEnded. Events name the `link`."""
    link: int
    settings: Settings
    server: str = ""
    """The reflector URL to stream to."""


@dataclass(frozen=True)
class StopMonitor:
    """Close the probe stream `link` (nothing more is fed back about it)."""
    link: int


@dataclass(frozen=True)
class SetProbeInterval:
    """Probe the stream `link` every `interval_s` from now on (`core.probe_rate`)."""
    link: int
    interval_s: float


@dataclass(frozen=True)
class Log:
    """One line of the JSON log (docs/log-format.md): `event` and its `fields` (no `event`:
    a plain message)."""
    level: Level
    event: str | None
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Publish:
    """A server-sent event: the current status with `type` = `kind` and `fields`."""
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = StartCheck | StartMonitor | StopMonitor | SetProbeInterval | Log | Publish

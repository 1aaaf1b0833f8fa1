"""netprobe: can this connection hold a video call right now?

Public API (everything else is internal and may change):

- checks: `run_check(server_url, settings)` → `CheckResult` (`.to_json()`: `netprobe.check/1`);
- the reflector: `Reflector(ReflectorSettings(...))`, `await .start()` / `await .stop()`;
- the background agent: `Agent(settings, ...)`, `await .run()`;
- the classifier, pure: `classify(LinkMetrics, Thresholds)` → `Verdict` (`verdict`,
  `confidence`, `reasons`: `Reason(code, message)`), with `LinkMetrics`/`DirectionMetrics`;
- the audio quality estimate, pure: `estimate_audio_quality(...)` (ITU-T G.107 E-model);
- settings: `load_settings(path)` → `Settings`, made of `ProbeSettings`, `ReflectorSettings`,
  `PrivacySettings`, `AgentSettings` and `Thresholds`;
- errors: `NetprobeError` and its subclasses `ConfigError`, `ServerUnreachable`, `ServerBusy`,
  `ProtocolError`, `ConnectFailed`;
- verdict names: `VIDEO`, `AUDIO_ONLY`, `PHONE`, `UNKNOWN`.

Names are loaded on first use, so `import netprobe` stays light: a process that never touches
`run_check` or `Reflector` never loads the WebRTC stack (the agent relies on that).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_check": "webrtc.client",
    "CheckResult": "core.result",
    "Reflector": "webrtc.reflector",
    "Agent": "agent.app",
    "classify": "core.classify",
    "Verdict": "core.classify",
    "Reason": "core.classify",
    "Thresholds": "core.classify",
    "VIDEO": "core.classify",
    "AUDIO_ONLY": "core.classify",
    "PHONE": "core.classify",
    "UNKNOWN": "core.classify",
    "LinkMetrics": "core.metrics",
    "DirectionMetrics": "core.metrics",
    "estimate_audio_quality": "core.emodel",
    "Settings": "settings",
    "ProbeSettings": "settings",
    "ReflectorSettings": "settings",
    "AgentSettings": "settings",
    "PrivacySettings": "settings",
    "load_settings": "config",
    "NetprobeError": "errors",
    "ConfigError": "errors",
    "ServerUnreachable": "errors",
    "ServerBusy": "errors",
    "ProtocolError": "errors",
    "ConnectFailed": "errors",
}

__all__ = [
    "__version__",
    "AUDIO_ONLY",
    "Agent",
    "AgentSettings",
    "CheckResult",
    "ConfigError",
    "ConnectFailed",
    "DirectionMetrics",
    "LinkMetrics",
    "NetprobeError",
    "PHONE",
    "PrivacySettings",
    "ProbeSettings",
    "ProtocolError",
    "Reason",
    "Reflector",
    "ReflectorSettings",
    "ServerBusy",
    "ServerUnreachable",
    "Settings",
    "Thresholds",
    "UNKNOWN",
    "VIDEO",
    "Verdict",
    "classify",
    "estimate_audio_quality",
    "load_settings",
    "run_check",
]

if TYPE_CHECKING:  # pragma: no cover
    from netprobe.agent.app import Agent
    from netprobe.config import load_settings
    from netprobe.core.classify import (
        AUDIO_ONLY,
        PHONE,
        UNKNOWN,
        VIDEO,
        Reason,
        Thresholds,
        Verdict,
        classify,
    )
    from netprobe.core.emodel import estimate_audio_quality
    from netprobe.core.metrics import DirectionMetrics, LinkMetrics
    from netprobe.core.result import CheckResult
    from netprobe.errors import (
        ConfigError,
        ConnectFailed,
        NetprobeError,
        ProtocolError,
        ServerBusy,
        ServerUnreachable,
    )
    from netprobe.settings import (
        AgentSettings,
        PrivacySettings,
        ProbeSettings,
        ReflectorSettings,
        Settings,
    )
    from netprobe.webrtc.client import run_check
    from netprobe.webrtc.reflector import Reflector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

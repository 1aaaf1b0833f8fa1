"""Configuration: typed settings loaded from TOML files, with errors that name file and key.

Two files, both documented by comments in `config/`:

- `netprobe.toml`: probe, reflector and ICE settings (`Settings`).
- `thresholds.toml`: the classifier's thresholds (`classify.Thresholds`).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .classify import AudioThresholds, Thresholds, VideoThresholds
from .errors import ConfigError


@dataclass(frozen=True)
class IceServer:
    urls: str
    """A `stun:`, `turn:` or `turns:` URL."""
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class ProbeSettings:
    max_duration_s: float = 15.0
    """Hard cap on a whole check, connection set-up included."""
    connect_timeout_s: float = 10.0
    """Longest wait for signalling and the WebRTC connection (within the hard cap)."""
    warmup_s: float = 0.5
    """Probes only, before the first ladder rung: the unloaded RTT and loss."""
    min_probe_s: float = 1.5
    """Least time probes run before a verdict may be called certain."""
    probe_interval_ms: float = 20.0
    """Probe spacing (50 per second by default: ~45 kbit/s with overhead)."""
    probe_size: int = 60
    """Probe payload size in bytes."""
    ladder_kbps: tuple[int, ...] = (300, 800, 1600, 3200)
    """Load rates tried in turn, each direction, kbit/s of wire bytes."""
    rung_duration_s: float = 0.6
    """How long each rung is sent."""
    rung_pps: float = 200.0
    """Target packets per second of a rung (sets the packet size, within 100-1200 bytes)."""
    pass_ratio: float = 0.85
    """A rung passes if it delivered at least this share of its rate (after random loss)."""
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers; empty means host candidates only (no outside host is contacted)."""


@dataclass(frozen=True)
class ReflectorSettings:
    host: str = "127.0.0.1"
    """Address to listen on; a clinic's public reflector sets 0.0.0.0 explicitly."""
    port: int = 8765
    max_sessions: int = 4
    """Concurrent probe sessions; more offers get 503."""
    session_timeout_s: float = 30.0
    """Hard time limit of one probe session."""
    max_body_bytes: int = 65536
    """Largest accepted signalling request body."""
    ice_servers: tuple[IceServer, ...] = ()


@dataclass(frozen=True)
class PrivacySettings:
    log_addresses: bool = False
    """Include IP addresses and host names in logs and reports (off: patients' privacy)."""


@dataclass(frozen=True)
class Settings:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    reflector: ReflectorSettings = field(default_factory=ReflectorSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    thresholds: Thresholds = field(default_factory=Thresholds)


def config_dir() -> Path:
    """The shipped config directory: inside the wheel, or `config/` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_config", here.parent / "config"):
        if candidate.is_dir():
            return candidate
    return here.parent / "config"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover


def _build(cls: Any, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    obj = cls(**kwargs)
    _validate(obj, where)
    return obj


def _validate(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{where}.{f.name}: must not be negative, got {value}")
    if isinstance(obj, ProbeSettings):
        if not obj.ladder_kbps or sorted(obj.ladder_kbps) != list(obj.ladder_kbps):
            raise ConfigError(f"{where}.ladder_kbps: give at least one rate, in rising order")
        if obj.max_duration_s < 2:
            raise ConfigError(f"{where}.max_duration_s: must be at least 2 seconds")
        if obj.probe_interval_ms < 5:
            raise ConfigError(f"{where}.probe_interval_ms: must be at least 5")
    if isinstance(obj, ReflectorSettings):
        if not 0 < obj.port < 65536:
            raise ConfigError(f"{where}.port: must be 1-65535, got {obj.port}")
        if obj.max_sessions < 1:
            raise ConfigError(f"{where}.max_sessions: must be at least 1")
    if isinstance(obj, VideoThresholds) and obj.good_kbps < obj.min_kbps:
        raise ConfigError(f"{where}.good_kbps: must not be below min_kbps")


def load_thresholds(path: Path | None = None) -> Thresholds:
    path = path or config_dir() / "thresholds.toml"
    data = _read_toml(path)
    unknown = sorted(set(data) - {"video", "audio"})
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}] (known: [video], [audio])")
    return Thresholds(
        video=_build(VideoThresholds, data.get("video", {}), f"{path}: video"),
        audio=_build(AudioThresholds, data.get("audio", {}), f"{path}: audio"),
    )


def load_settings(path: Path | None = None, thresholds: Path | None = None) -> Settings:
    """Load settings from `path` (defaults if None) and the thresholds file."""
    data: dict[str, Any] = {} if path is None else _read_toml(path)
    where = str(path)
    unknown = sorted(set(data) - {"probe", "reflector", "privacy"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{unknown[0]}] (known: [probe], [reflector], [privacy])")
    return Settings(
        probe=_build(ProbeSettings, data.get("probe", {}), f"{where}: probe"),
        reflector=_build(ReflectorSettings, data.get("reflector", {}), f"{where}: reflector"),
        privacy=_build(PrivacySettings, data.get("privacy", {}), f"{where}: privacy"),
        thresholds=load_thresholds(thresholds),
    )

"""Configuration: typed settings loaded from TOML files, with errors that name file and key.

Two files, both documented by comments in `config/`:

- `netprobe.toml`: probe, reflector and ICE settings (`Settings`).
- `thresholds.toml`: the classifier's thresholds (`classify.Thresholds`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from netprobe.core.admission import network_problem
from netprobe.core.classify import AudioThresholds, Thresholds, VideoThresholds
from netprobe.errors import ConfigError


@dataclass(frozen=True)
class IceServer:
    urls: str
    """A `stun:`, `turn:` or `turns:` URL: `scheme:host[:port][?transport=udp|tcp]` (checked at
    load, as aioice parses it: no `//`, no IPv6 literal, `turns:` is TCP only)."""
    username: str | None = None
    """TURN only (required there)."""
    credential: str | None = None
    """TURN only (required there)."""


@dataclass(frozen=True)
class ProbeSettings:
    max_duration_s: float = 15.0
    """Hard cap on a whole check, connection set-up included."""
    connect_timeout_s: float = 12.0
    """Longest wait for signalling and the WebRTC connection (within the hard cap)."""
    warmup_s: float = 0.5
    """Probes only, before the first ladder rung: the unloaded RTT and loss."""
    min_probe_s: float = 1.5
    """Least time probes run before a verdict may be called certain."""
    probe_interval_ms: float = 20.0
    """Probe spacing (50 per second by default: ~45 kbit/s with overhead)."""
    probe_size: int = 40
    """Probe payload size in bytes (at least the 30 bytes of a probe's fields)."""
    ladder_kbps: tuple[int, ...] = (300, 800, 1600, 3200)
    """Load rates tried in turn, each direction, kbit/s of wire bytes."""
    rung_duration_s: float = 0.6
    """How long each rung is sent."""
    rung_pps: float = 300.0
    """Target packets per second of a rung (sets the packet size, within 60-1200 bytes)."""
    pass_ratio: float = 0.85
    """A rung passes if it delivered at least this share of its rate (after random loss)."""
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers; empty means host candidates only (no outside host is contacted)."""


@dataclass(frozen=True)
class ReflectorSettings:
    host: str = "127.0.0.1"
    """Address to listen on; a clinic's public reflector sets 0.0.0.0 explicitly."""
    port: int = 8765
    max_sessions: int | None = None
    """Deprecated (use max_checks, max_monitors): when set, also caps both kinds together."""
    max_checks: int = 8
    """Concurrent pre-session checks; more get 503 `busy` (0: monitoring streams only)."""
    max_monitors: int = 200
    """Concurrent monitoring streams, counted apart from checks (0: checks only)."""
    max_checks_per_source: int = 4
    """Concurrent checks from one address (an IPv6 /64); more get 429 `too_many_sessions`."""
    max_monitors_per_source: int = 50
    """Concurrent monitoring streams from one address (a clinic's office behind its NAT)."""
    offers_per_minute: float = 60.0
    """Sustained offers per minute from one address; more get 429 `rate_limited` (0: off)."""
    offer_burst: int = 20
    """Offers one address may make at once before offers_per_minute applies."""
    connect_timeout_s: float = 10.0
    """An answered offer not connected by then is closed and its slot freed."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses/networks of reverse proxies whose X-Forwarded-For names the client."""
    metrics_from: tuple[str, ...] = ("127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12",
                                     "192.168.0.0/16", "fc00::/7")
    """Addresses/networks allowed to read `GET /metrics` (others get 403)."""
    log_file: str = ""
    """`serve`'s JSON-lines log file; empty: JSON lines on standard error."""
    log_key_file: str = ""
    """File with the key for the client-address hash in logs; empty: a random key per process."""
    session_timeout_s: float = 30.0
    """Hard time limit of one probe session."""
    max_body_bytes: int = 65536
    """Largest accepted signalling request body."""
    token_secret_file: str = ""
    """File of `kid = secret` lines (mode 0600, secrets of 32+ bytes; the first signs, all
    verify): when set, offers need `Authorization: Bearer TOKEN` (docs/reflector.md)."""
    open: bool = False
    """Checks need no token (monitoring does); required beyond loopback without a secret."""
    monitor_timeout_s: float = 14400.0
    """Hard time limit of a monitoring session (an agent watching a therapy session)."""
    max_down_kbps: int = 3200
    """Fastest downlink rung a client may ask for (kbit/s); faster requests get this rate.
    Default: the default ladder's top rung. Also sets a session's downlink byte budget (10 s
    at this rate); the other media caps are constants (netprobe/core/responder.py)."""
    ice_servers: tuple[IceServer, ...] = ()


@dataclass(frozen=True)
class PrivacySettings:
    log_addresses: bool = False
    """Include IP addresses and host names in logs and reports (off: patients' privacy)."""


@dataclass(frozen=True)
class AgentSettings:
    server: str = ""
    """Reflector URL the agent checks against (required to run the agent)."""
    api_host: str = "127.0.0.1"
    """The local API's address: loopback only (a non-loopback address is refused)."""
    api_port: int = 8766
    idle_interval_s: float = 600.0
    """Mean time between light checks while no session runs."""
    idle_jitter: float = 0.2
    """Each interval is drawn uniformly within ±this share, so machines do not probe in step."""
    monitor_probe_interval_ms: float = 50.0
    """Probe spacing while monitoring a session (20/s: ~16 kbit/s up, ~25 kbit/s down)."""
    window_s: float = 5.0
    """Rolling window the monitoring verdict is taken over."""
    step_down_after: int = 3
    """Consecutive worse windows (one a second) before the recommendation steps down."""
    step_up_after_s: float = 20.0
    """Sustained better windows before a step up is tried (then confirmed by a check)."""
    cpu_limit_pct: float = 90.0
    """Processor use at which video is no longer recommended."""
    max_session_s: float = 14400.0
    """A session not stopped after this long was forgotten: monitoring stops (0: never)."""
    backoff_min_s: float = 5.0
    """First wait before retrying an unreachable reflector; doubles up to backoff_max_s."""
    backoff_max_s: float = 300.0
    stale_after_s: float = 1800.0
    """A status older than this is reported as `unknown`, never as a stale `video`."""
    log_file: str = ""
    """JSON-lines log path; empty: the platform's default log directory."""
    log_max_bytes: int = 5_000_000
    log_backups: int = 5
    token_file: str = ""
    """Where the API token is kept (mode 0600); empty: the platform's state directory."""
    reflector_token_file: str = ""
    """File with the access token (scope `monitor`) the agent sends the reflector; empty: none."""
    cors_origins: tuple[str, ...] = ()
    """Web origins (e.g. "https://video.clinic.example") allowed to call the API."""


@dataclass(frozen=True)
class Settings:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    reflector: ReflectorSettings = field(default_factory=ReflectorSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    access_token: str = field(default="", repr=False)
    """The reflector access token to send (`check --token/--link`, NETPROBE_TOKEN, `[agent]
    reflector_token_file`; never from the settings file itself); empty: none. Not in repr."""


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
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None


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


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def _validate(obj: Any, where: str) -> None:
    problem = _problem(obj)
    if problem is not None:
        key, message = problem
        raise ConfigError(f"{where}.{key}: {message}")


def server_url_problem(url: str) -> str | None:
    """Why `url` is not a reflector URL (http:// or https://, a host, a port 1-65535), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if not 0-65535
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return (f"{url!r} must be an http:// or https:// URL, "
                "e.g. http://reflector.example:8765")
    return None


def readable_file_problem(path: str) -> str | None:
    """Why `path` is not a readable regular file, or None (a secret file named in settings)."""
    where = Path(path)
    if not where.is_file():
        return f"{path}: {'not a regular file' if where.exists() else 'no such file'}"
    return None if os.access(where, os.R_OK) else f"{path}: not readable (permission denied)"


def override(section: Any, flag: str, **changes: Any) -> Any:
    """`section` (a settings dataclass) with `changes` from command-line `flag`, checked as a
    file's values are; a bad value raises `ConfigError` naming the flag."""
    changed = dataclasses.replace(section, **changes)
    problem = _problem(changed)
    if problem is not None:
        raise ConfigError(f"{flag}: {problem[1]}")
    return changed


_ICE_HOST = re.compile(r"[A-Za-z0-9._-]+")


def ice_url_problem(url: str) -> str | None:
    """Why aioice would reject or silently ignore the ICE server `url`, or None if it is good."""
    scheme, colon, rest = url.partition(":")
    if scheme == "stuns":
        return f"{url!r}: stuns: is not supported (aioice has no STUN over TLS); use stun:"
    if not colon or scheme not in ("stun", "turn", "turns"):
        return f"{url!r} must start with stun:, turn: or turns:"
    if rest.startswith("//"):
        return f"{url!r}: write {scheme}:host[:port], without //"
    hostport, question, query = rest.partition("?")
    if hostport.startswith("["):
        return f"{url!r}: an IPv6 address is not supported here (aioice); use a host name"
    host, colon, port = hostport.partition(":")
    if not _ICE_HOST.fullmatch(host):
        return f"{url!r}: give a host name or IPv4 address after {scheme}:"
    if colon and not (port.isdigit() and 0 < int(port) < 65536):
        return f"{url!r}: the port must be 1-65535"
    if question:
        if scheme == "stun":
            return f"{url!r}: a stun: URL takes no ?transport="
        allowed = ("tcp",) if scheme == "turns" else ("udp", "tcp")
        if query not in {f"transport={t}" for t in allowed}:
            return f"{url!r}: the only option is ?transport={' or '.join(allowed)}"
    return None


def _problem(obj: Any) -> tuple[str, str] | None:
    """The first bad value of settings dataclass `obj`: (key, reason), or None."""
    for f in dataclasses.fields(obj):
        for value in _numbers(getattr(obj, f.name)):
            if not math.isfinite(value):
                return f.name, f"must be a finite number, got {value}"
            if value < 0:
                return f.name, f"must not be negative, got {value}"
    checks: list[tuple[bool, str, str]] = []
    for key in ("token_secret_file", "reflector_token_file"):  # secret files: readable
        if path := getattr(obj, key, ""):
            checks.append((readable_file_problem(path) is None, key,
                           readable_file_problem(path) or ""))
    if isinstance(obj, ProbeSettings | ReflectorSettings):
        kinds = [s.urls.partition(":")[0].rstrip("s") for s in obj.ice_servers]
        checks.append((kinds.count("stun") <= 1 and kinds.count("turn") <= 1, "ice_servers",
                       "give at most one stun: and one turn:/turns: server (aioice uses only "
                       "the first of each)"))
    if isinstance(obj, IceServer):
        url_problem = ice_url_problem(obj.urls)
        turn = obj.urls.startswith("turn")
        checks += [
            (url_problem is None, "urls", url_problem or ""),
            (not turn or bool(obj.username), "username", "a turn: or turns: server needs one"),
            (not turn or bool(obj.credential), "credential",
             "a turn: or turns: server needs one"),
        ]
    if isinstance(obj, ProbeSettings):
        rates = list(obj.ladder_kbps)
        checks += [
            (bool(rates) and all(r > 0 for r in rates)
             and all(a < b for a, b in zip(rates, rates[1:], strict=False)),
             "ladder_kbps", "give at least one rate above 0, each higher than the last"),
            (obj.max_duration_s >= 2, "max_duration_s", "must be at least 2 seconds"),
            (obj.connect_timeout_s > 0, "connect_timeout_s", "must be above 0"),
            (obj.probe_interval_ms >= 5, "probe_interval_ms", "must be at least 5"),
            (0.1 <= obj.rung_duration_s <= 30, "rung_duration_s", "must be 0.1-30 seconds"),
            (obj.rung_pps > 0, "rung_pps", "must be above 0"),
            (0 < obj.pass_ratio <= 1, "pass_ratio", "must be above 0 and at most 1"),
            (obj.probe_size <= 1000, "probe_size", "must be at most 1000 bytes"),
        ]
    if isinstance(obj, ReflectorSettings):
        checks += [
            (bool(obj.host.strip()), "host",
             "give an address to listen on (127.0.0.1, or 0.0.0.0 for every interface)"),
            (0 < obj.port < 65536, "port", f"must be 1-65535, got {obj.port}"),
            (obj.max_sessions is None or obj.max_sessions >= 1, "max_sessions",
             "must be at least 1"),
            (obj.max_checks + obj.max_monitors >= 1, "max_checks", "max_checks and "
             "max_monitors cannot both be 0"),
            (obj.max_checks_per_source >= 1, "max_checks_per_source", "must be at least 1"),
            (obj.max_monitors_per_source >= 1, "max_monitors_per_source", "must be at least 1"),
            (obj.offer_burst >= 1, "offer_burst", "must be at least 1"),
            (obj.connect_timeout_s > 0, "connect_timeout_s", "must be above 0"),
            (obj.session_timeout_s > 0, "session_timeout_s", "must be above 0"),
            (obj.max_body_bytes >= 4096, "max_body_bytes", "must be at least 4096"),
            (obj.monitor_timeout_s > 0, "monitor_timeout_s", "must be above 0"),
            (100 <= obj.max_down_kbps <= 1_000_000, "max_down_kbps", "must be 100-1000000"),
        ]
        checks += [(network_problem(n) is None, key, network_problem(n) or "")
                   for key in ("trusted_proxies", "metrics_from") for n in getattr(obj, key)]
    if isinstance(obj, AgentSettings):
        checks += [
            (0 < obj.api_port < 65536, "api_port", f"must be 1-65535, got {obj.api_port}"),
            (obj.api_host in ("127.0.0.1", "::1", "localhost"), "api_host",
             "the local API binds to loopback only (127.0.0.1, ::1 or localhost)"),
            (obj.idle_interval_s >= 10, "idle_interval_s", "must be at least 10 seconds"),
            (0 <= obj.idle_jitter < 1, "idle_jitter", "must be at least 0 and below 1"),
            (10 <= obj.monitor_probe_interval_ms <= 5000, "monitor_probe_interval_ms",
             "must be 10-5000 (a reflector closes a stream silent for 10 s)"),
            (obj.window_s >= 1, "window_s", "must be at least 1 second"),
            (obj.step_down_after >= 1, "step_down_after", "must be at least 1"),
            (obj.backoff_min_s > 0, "backoff_min_s", "must be above 0"),
            (obj.backoff_max_s >= obj.backoff_min_s, "backoff_max_s",
             "must be at least backoff_min_s"),
            (0 < obj.cpu_limit_pct <= 100, "cpu_limit_pct", "must be 1-100"),
            (obj.max_session_s == 0 or obj.max_session_s >= 60, "max_session_s",
             "must be 0 (no limit) or at least 60 seconds"),
        ]
        checks += [(origin.startswith(("http://", "https://")) and origin.count("/") == 2,
                    "cors_origins", f"{origin!r} is not an origin like https://host[:port]")
                   for origin in obj.cors_origins]
        if obj.server:
            problem = server_url_problem(obj.server)
            checks.append((problem is None, "server", problem or ""))
    if isinstance(obj, VideoThresholds):
        checks += [
            (obj.good_kbps >= obj.min_kbps, "good_kbps", "must not be below min_kbps"),
            (obj.good_loss_pct <= obj.max_loss_pct, "good_loss_pct",
             "must not be above max_loss_pct"),
            (obj.max_loss_pct <= 100, "max_loss_pct", "must be a percentage (0-100)"),
            (obj.good_rtt_ms <= obj.max_rtt_ms, "good_rtt_ms", "must not be above max_rtt_ms"),
            (obj.good_jitter_ms <= obj.max_jitter_ms, "good_jitter_ms",
             "must not be above max_jitter_ms"),
        ]
    if isinstance(obj, AudioThresholds):
        checks += [
            (obj.good_kbps >= obj.min_kbps, "good_kbps", "must not be below min_kbps"),
            (1 <= obj.min_mos < 4.5, "min_mos", "must be at least 1 and below 4.5"),
            (obj.min_mos <= obj.good_mos <= 4.5, "good_mos", "must be min_mos-4.5"),
        ]
    return next(((key, message) for ok, key, message in checks if not ok), None)


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
    sections = {"probe": ProbeSettings, "reflector": ReflectorSettings,
                "privacy": PrivacySettings, "agent": AgentSettings}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: {_line_note(path, unknown[0], None)}unknown section "
                          f"[{unknown[0]}] (known: {', '.join(f'[{s}]' for s in sections)})")
    built = {}
    for name, cls in sections.items():
        try:
            built[name] = _build(cls, data.get(name, {}), f"{where}: {name}")
        except ConfigError as exc:
            found = re.search(rf": {name}\.(\w+)", str(exc)) or re.search(
                r"unknown setting '(\w+)'", str(exc))
            key = found.group(1) if found else None
            raise ConfigError(_with_line(str(exc), path, name, key)) from None
    return Settings(thresholds=load_thresholds(thresholds), **built)


def _locate(path: Path | None, section: str, key: str | None) -> int | None:
    """Line number (from 1) of `key` in `[section]` of the TOML file, or of the section."""
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current, header_line = None, None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[] ").split(".")[0]
            if current == section and header_line is None:
                header_line = number
            continue
        if current == section and key and line.split("=", 1)[0].strip() == key:
            return number
    return header_line


def _line_note(path: Path | None, section: str, key: str | None) -> str:
    line = _locate(path, section, key)
    return f"line {line}: " if line else ""


def _with_line(message: str, path: Path | None, section: str, key: str | None) -> str:
    note = _line_note(path, section, key)
    if not note or path is None:
        return message
    prefix = f"{path}: "
    return prefix + note + message[len(prefix):] if message.startswith(prefix) else message

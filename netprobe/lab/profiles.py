"""Link-lab profiles: typed, loaded from ``config/lab-profiles.toml``.

A profile names the conditions of both directions of the link (``up`` is client to server,
``down`` server to client), optionally a list of phases that change them mid-run, and what a
sound pre-session check should conclude on it (``expect``). The file's format is documented in
``docs/lab.md`` and by the comments in the starter file.

Errors are `ConfigError` naming the file, the profile and the key. A trace file that is not
there (or cannot be read) is a `TraceUnavailable`, and fails only the profiles that use it: the
traces live outside the repository (``../shared/traces`` from the project root, or wherever
``$NETPROBE_TRACES`` points).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netprobe.errors import ConfigError
from netprobe.lab.bucket import TokenBucket
from netprobe.lab.link import GilbertElliott, LinkConfig

#: The project root when running from the source tree (``netprobe/lab/profiles.py`` → root).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Environment variable naming the directory that holds the mahimahi traces.
TRACES_ENV = "NETPROBE_TRACES"
_TRACES_HINT = f" (set {TRACES_ENV} to the directory that holds the traces)"

#: Verdicts a pre-session check can give (``unknown`` when it could not measure at all).
VERDICTS = ("video", "audio_only", "phone", "unknown")
#: Paths a check's media can take (the result's ``path``): direct, or through the TURN relay.
PATHS = ("direct", "relay_udp", "relay_tcp", "relay_tls")

_LINK_KEYS = {f.name for f in dataclasses.fields(LinkConfig)} - {"trace_name"}
_GILBERT_KEYS = {f.name for f in dataclasses.fields(GilbertElliott)}
_BUCKET_KEYS = {f.name for f in dataclasses.fields(TokenBucket)}


class TraceUnavailable(ConfigError):
    """A profile's trace file is missing or unreadable: that profile cannot be loaded, the
    others can. The message names the profile, the trace and every place looked in."""


def traces_dir() -> Path:
    """Where the mahimahi traces are: ``$NETPROBE_TRACES`` if set, else ``../shared/traces``
    from the project root (the copy of ``shared/`` beside the checkout)."""
    override = os.environ.get(TRACES_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return (PROJECT_ROOT.parent / "shared" / "traces").resolve()


@dataclass(frozen=True)
class Phase:
    """From ``start_s`` seconds after the lab starts, the link behaves as ``up``/``down``."""

    start_s: float
    """Seconds from the lab's start at which this phase begins."""
    up: LinkConfig
    """Client-to-server direction during the phase."""
    down: LinkConfig
    """Server-to-client direction during the phase."""


@dataclass(frozen=True)
class Expectation:
    """What a sound pre-session check must conclude on a profile, and the true values."""

    verdicts: tuple[str, ...]
    """Acceptable verdicts ("video", "audio_only", "phone", "unknown")."""
    rtt_ms: float | None = None
    """True round-trip time in ms (propagation only; queueing comes on top under load)."""
    jitter_ms: float | None = None
    """Half-width of the configured jitter per direction, in ms (0 for none)."""
    loss_up_pct: float | None = None
    """True long-run loss client to server, in percent."""
    loss_down_pct: float | None = None
    """True long-run loss server to client, in percent."""
    rate_up_kbps: float | None = None
    """Bottleneck capacity client to server in kbit/s (mean for a trace; None: unlimited)."""
    rate_down_kbps: float | None = None
    """Bottleneck capacity server to client in kbit/s (mean for a trace; None: unlimited)."""
    reasons: tuple[str, ...] = ()
    """Reason codes that must all appear in the result's ``reasons`` (others may too)."""
    path: str | None = None
    """The ``path`` the result must report (one of `PATHS`); None: not judged."""


@dataclass(frozen=True)
class Profile:
    """Named conditions for both directions of the emulated link."""

    name: str
    """Short name used on the command line."""
    description: str
    """One line for people: what real connection this stands for."""
    up: LinkConfig
    """Client-to-server direction (from the start, until the first phase)."""
    down: LinkConfig
    """Server-to-client direction (from the start, until the first phase)."""
    phases: tuple[Phase, ...] = ()
    """Changes mid-run, in increasing ``start_s`` order."""
    expect: Expectation | None = None
    """What a pre-session check should conclude; None if not stated."""
    relay: bool = False
    """A TURN server (coturn) runs beside the reflector in the server namespace, with UDP,
    TCP and TLS listeners, and the reflector hands out its credentials."""

    def __post_init__(self) -> None:
        starts = [p.start_s for p in self.phases]
        if any(s <= 0 for s in starts) or starts != sorted(set(starts)):
            raise ConfigError(
                f"profile {self.name!r}: phase start times must be > 0 and strictly increasing"
            )

    def links_at(self, t: float) -> tuple[LinkConfig, LinkConfig]:
        """The ``(up, down)`` configs in force ``t`` seconds after the lab started."""
        up, down = self.up, self.down
        for phase in self.phases:
            if phase.start_s <= t:
                up, down = phase.up, phase.down
        return up, down


def default_profiles_path() -> Path:
    """``config/lab-profiles.toml`` in the source tree, else the copy inside the package."""
    in_tree = PROJECT_ROOT / "config" / "lab-profiles.toml"
    if in_tree.exists():
        return in_tree
    return Path(__file__).resolve().parents[1] / "_config" / "lab-profiles.toml"


class ProfileSet(Mapping[str, Profile]):
    """The profiles of one file, by name, in file order. Looking up a profile whose trace
    file is unavailable raises its `TraceUnavailable`; every other profile loads normally."""

    def __init__(self, profiles: dict[str, Profile],
                 unavailable: dict[str, TraceUnavailable], order: list[str]) -> None:
        self._profiles = profiles
        self.unavailable = unavailable
        """Profiles that cannot be loaded because of their trace, with the reason."""
        self._order = order

    def __getitem__(self, name: str) -> Profile:
        if name in self.unavailable:
            raise self.unavailable[name]
        return self._profiles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def available(self) -> dict[str, Profile]:
        """The profiles that loaded, in file order."""
        return {name: self._profiles[name] for name in self._order if name in self._profiles}


def load_profiles(path: Path | None = None) -> ProfileSet:
    """Every profile in the file, traces loaded. A problem in the file itself raises
    `ConfigError` at once; a missing or unreadable trace fails only the profiles using it
    (they raise `TraceUnavailable` when looked up)."""
    path = path or default_profiles_path()
    table = _profiles_table(path)
    profiles: dict[str, Profile] = {}
    unavailable: dict[str, TraceUnavailable] = {}
    for name in table:
        try:
            profiles[name] = _build(path, table, name)
        except TraceUnavailable as exc:
            unavailable[name] = exc
    return ProfileSet(profiles, unavailable, list(table))


def load_profile(name: str, path: Path | None = None) -> Profile:
    """One profile by name (only its own traces are read)."""
    path = path or default_profiles_path()
    table = _profiles_table(path)
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(f"{path}: no profile named {name!r} (known: {known})")
    return _build(path, table, name)


def describe_profiles(path: Path | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of each profile, without reading any trace."""
    path = path or default_profiles_path()
    return [
        (name, str(body.get("description", "")) if isinstance(body, dict) else "")
        for name, body in _profiles_table(path).items()
    ]


def load_trace(path: Path) -> tuple[int, ...]:
    """Read a mahimahi trace: one integer (ms) per line; blank lines are skipped."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TraceUnavailable(f"trace file not found: {path}{_TRACES_HINT}") from None
    except OSError as exc:
        raise TraceUnavailable(f"trace file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace file {path} is not a mahimahi trace: {exc}") from None
    values: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            values.append(int(line))
        except ValueError:
            raise ConfigError(
                f"{path}:{number}: expected a whole number of ms, got {line!r}"
            ) from None
    return tuple(values)


# -- parsing ----------------------------------------------------------------------------------


def _profiles_table(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such profiles file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: expected a [profiles.NAME] table for each profile")
    return profiles


def _build(path: Path, table: dict[str, Any], name: str) -> Profile:
    where = f"{path}: [profiles.{name}]"
    body = table[name]
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(
        where, body, {"description", "up", "down", "links_from", "phases", "expect", "relay"}
    )
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.description: expected a string")
    relay = body.get("relay", False)
    if not isinstance(relay, bool):
        raise ConfigError(f"{where}.relay: expected true or false, got {relay!r}")
    up, down = _links(path, table, name, body, where)
    phases = []
    raw_phases = body.get("phases", [])
    if not isinstance(raw_phases, list):
        raise ConfigError(
            f"{where}.phases: expected an array of tables ([[profiles.{name}.phases]])"
        )
    for i, raw in enumerate(raw_phases):
        pwhere = f"{where}.phases[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{pwhere}: expected a table")
        _check_keys(pwhere, raw, {"at_s", "up", "down", "links_from"})
        start = _number(pwhere + ".at_s", raw.get("at_s"))
        phase_up, phase_down = _links(path, table, name, raw, pwhere)
        phases.append(Phase(start_s=start, up=phase_up, down=phase_down))
    expect = _expectation(where + ".expect", body["expect"]) if "expect" in body else None
    try:
        return Profile(name, description, up, down, tuple(phases), expect, relay)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _links(
    path: Path, table: dict[str, Any], name: str, body: dict[str, Any], where: str
) -> tuple[LinkConfig, LinkConfig]:
    source = body.get("links_from")
    if source is not None:
        if "up" in body or "down" in body:
            raise ConfigError(f"{where}: give either links_from or up/down, not both")
        other = table.get(source) if isinstance(source, str) else None
        if not isinstance(other, dict) or "links_from" in other:
            raise ConfigError(
                f"{where}.links_from: {source!r} must name a profile that defines up and down "
                "itself"
            )
        return _links(path, table, source, other, f"{path}: [profiles.{source}]")
    for side in ("up", "down"):
        if side not in body:
            raise ConfigError(f'{where}: missing [{side}] table (or links_from = "PROFILE")')
    return (
        _link_config(path, where + ".up", body["up"]),
        _link_config(path, where + ".down", body["down"]),
    )


def _link_config(path: Path, where: str, raw: Any) -> LinkConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(where, raw, _LINK_KEYS)
    kwargs: dict[str, Any] = {}
    for key in ("delay_ms", "jitter_ms", "jitter_hold_ms", "loss_pct", "rate_kbps"):
        if key in raw:
            kwargs[key] = _number(f"{where}.{key}", raw[key])
    for key in ("queue_packets", "queue_bytes", "seed"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected a whole number, got {value!r}")
            kwargs[key] = value
    for key in ("reorder", "block_udp"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {raw[key]!r}")
            kwargs[key] = raw[key]
    if "gilbert" in raw:
        ge = raw["gilbert"]
        if not isinstance(ge, dict):
            raise ConfigError(f"{where}.gilbert: expected a table")
        _check_keys(where + ".gilbert", ge, _GILBERT_KEYS)
        try:
            kwargs["gilbert"] = GilbertElliott(
                **{k: _number(f"{where}.gilbert.{k}", v) for k, v in ge.items()}
            )
        except TypeError:
            raise ConfigError(f"{where}.gilbert: needs p_good_to_bad and p_bad_to_good") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}.gilbert: {exc}") from None
    for key in ("policer", "shaper"):
        if key in raw:
            kwargs[key] = _bucket(f"{where}.{key}", raw[key])
    if "outages" in raw:
        kwargs["outages"] = _outages(where + ".outages", raw["outages"])
    if "trace" in raw:
        if not isinstance(raw["trace"], str):
            raise ConfigError(f"{where}.trace: expected a path (string)")
        trace_path = _resolve_trace(path, raw["trace"], where + ".trace")
        try:
            kwargs["trace"] = load_trace(trace_path)
        except ConfigError as exc:
            raise type(exc)(f"{where}.trace: {exc}") from None
        kwargs["trace_name"] = raw["trace"]
    try:
        return LinkConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resolve_trace(toml_path: Path, text: str, where: str) -> Path:
    candidate = Path(text)
    # $NETPROBE_TRACES, when set, wins (by file name); then the path as written: absolute, or
    # relative to the project root (the profiles file's config/.., then the source tree's
    # root); then by file name in ../shared/traces from the project root.
    tried = [traces_dir() / candidate.name] if os.environ.get(TRACES_ENV) else []
    if candidate.is_absolute():
        tried.append(candidate)
    else:
        tried += [(base / candidate).resolve()
                  for base in (toml_path.resolve().parent.parent, PROJECT_ROOT)]
    tried.append((PROJECT_ROOT.parent / "shared" / "traces" / candidate.name).resolve())
    for path in tried:
        if path.is_file():
            return path
    looked = ", ".join(map(str, dict.fromkeys(tried)))
    raise TraceUnavailable(
        f"{where}: trace file {text!r} not found (looked for {looked}){_TRACES_HINT}"
    )


def _bucket(where: str, raw: Any) -> TokenBucket:
    """A ``policer``/``shaper`` table: ``{ rate_kbps = SUSTAINED, burst_bytes = DEPTH }``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table {{ rate_kbps = ..., burst_bytes = ... }}")
    _check_keys(where, raw, _BUCKET_KEYS)
    missing = sorted(_BUCKET_KEYS - set(raw))
    if missing:
        raise ConfigError(f"{where}: needs rate_kbps and burst_bytes (missing {missing[0]})")
    rate = _number(f"{where}.rate_kbps", raw["rate_kbps"])
    burst = raw["burst_bytes"]
    if not isinstance(burst, int) or isinstance(burst, bool):
        raise ConfigError(f"{where}.burst_bytes: expected a whole number, got {burst!r}")
    try:
        return TokenBucket(rate_kbps=rate, burst_bytes=burst)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _outages(where: str, raw: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of [start_s, end_s] pairs")
    windows = []
    for i, item in enumerate(raw):
        if not isinstance(item, list) or len(item) != 2:
            raise ConfigError(f"{where}[{i}]: expected [start_s, end_s], got {item!r}")
        windows.append((_number(f"{where}[{i}]", item[0]), _number(f"{where}[{i}]", item[1])))
    return tuple(windows)


def _expectation(where: str, raw: Any) -> Expectation:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    fields = {f.name for f in dataclasses.fields(Expectation)}
    _check_keys(where, raw, fields)
    verdicts = raw.get("verdicts")
    if not isinstance(verdicts, list) or not verdicts or any(v not in VERDICTS for v in verdicts):
        raise ConfigError(
            f"{where}.verdicts: expected a non-empty list drawn from {list(VERDICTS)}"
        )
    reasons = raw.get("reasons", [])
    if not isinstance(reasons, list) or any(not isinstance(r, str) or not r for r in reasons):
        raise ConfigError(f"{where}.reasons: expected a list of reason codes (strings)")
    path = raw.get("path")
    if path is not None and path not in PATHS:
        raise ConfigError(f"{where}.path: expected one of {list(PATHS)}, got {path!r}")
    values = {
        key: _number(f"{where}.{key}", raw[key])
        for key in fields - {"verdicts", "reasons", "path"} if key in raw
    }
    return Expectation(verdicts=tuple(verdicts), reasons=tuple(reasons), path=path, **values)


def _check_keys(where: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(allowed))})"
        )


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)

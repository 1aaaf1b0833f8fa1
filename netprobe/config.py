"""Configuration: typed settings loaded from TOML files, with errors that name file and key.

Two files, both documented by comments in `config/`:

- `netprobe.toml`: probe, reflector and ICE settings (`Settings`, defined in
  `netprobe.settings`; the rules for their values are in `netprobe.config_checks`).
- `thresholds.toml`: the classifier's thresholds (`classify.Thresholds`).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from netprobe.config_checks import (
    ice_url_problem,
    problem,
    readable_file_problem,
    server_url_problem,
)
from netprobe.core.classify import AudioThresholds, Thresholds, VideoThresholds
from netprobe.errors import ConfigError
from netprobe.settings import (
    AgentSettings,
    ClinicSettings,
    IceServer,
    PrivacySettings,
    ProbeSettings,
    ReflectorSettings,
    Settings,
)

__all__ = [
    "AgentSettings", "ClinicSettings", "IceServer", "PrivacySettings", "ProbeSettings",
    "ReflectorSettings", "Settings", "config_dir", "ice_url_problem", "load_settings",
    "load_thresholds", "override", "readable_file_problem", "server_url_problem",
]


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
        # a string-or-list setting (`[agent] server`): a list takes the tuple member
        listed = [a for a in inner if typing.get_origin(a) is tuple]
        if isinstance(value, list) and listed:
            return _coerce(value, listed[0], where)
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
    found = problem(obj)
    if found is not None:
        key, message = found
        raise ConfigError(f"{where}.{key}: {message}")


def override(section: Any, flag: str, **changes: Any) -> Any:
    """`section` (a settings dataclass) with `changes` from command-line `flag`, checked as a
    file's values are; a bad value raises `ConfigError` naming the flag."""
    changed = dataclasses.replace(section, **changes)
    found = problem(changed)
    if found is not None:
        raise ConfigError(f"{flag}: {found[1]}")
    return changed


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
                "privacy": PrivacySettings, "agent": AgentSettings, "clinic": ClinicSettings}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: {_line_note(path, unknown[0], None)}unknown section "
                          f"[{unknown[0]}] (known: {', '.join(f'[{s}]' for s in sections)})")
    if isinstance(data.get("reflector"), dict) and "clinic" in data["reflector"]:
        raise ConfigError(f"{where}: {_line_note(path, 'reflector', 'clinic')}reflector.clinic: "
                          "not a [reflector] key: the clinic's contact is expected in its own "
                          "[clinic] section")
    built = {}
    for name, cls in sections.items():
        try:
            built[name] = _build(cls, data.get(name, {}), f"{where}: {name}")
        except ConfigError as exc:
            found = re.search(rf": {name}\.(\w+)", str(exc)) or re.search(
                r"unknown setting '(\w+)'", str(exc))
            key = found.group(1) if found else None
            raise ConfigError(_with_line(str(exc), path, name, key)) from None
    if built["clinic"] != ClinicSettings():  # the contact a reflector hands out
        built["reflector"] = dataclasses.replace(built["reflector"], clinic=built["clinic"])
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

"""What makes a setting's value wrong: one rule set for the settings file and for command-line
flags (`netprobe.config.override`), each answer a (key, reason) a person can act on."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from netprobe.core.admission import network_problem
from netprobe.core.classify import AudioThresholds, VideoThresholds
from netprobe.core.failover import MAX_SERVERS
from netprobe.settings import (
    AgentSettings,
    ClinicSettings,
    IceServer,
    ProbeSettings,
    ReflectorSettings,
)
from netprobe.webrtc.candidates import parse_public_address


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


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


MAX_TURN_URLS = 8
"""TURN URLs a reflector may hand out (a client tries them one after another)."""


def turn_url_problem(url: str) -> str | None:
    """Why `url` is not a TURN relay URL a client can use (`turn:`/`turns:`, checked as an
    ICE server's URL is), or None."""
    if not isinstance(url, str) or not url.startswith(("turn:", "turns:")):
        return f"{url!r} must start with turn: or turns: (e.g. turn:turn.clinic.example:3478)"
    return ice_url_problem(url)


def _public_address_problem(text: str) -> str | None:
    try:
        parse_public_address(text)
    except ValueError as exc:
        return str(exc)
    return None


def problem(obj: Any) -> tuple[str, str] | None:
    """The first bad value of settings dataclass `obj`: (key, reason), or None."""
    for f in dataclasses.fields(obj):
        for value in _numbers(getattr(obj, f.name)):
            if not math.isfinite(value):
                return f.name, f"must be a finite number, got {value}"
            if value < 0:
                return f.name, f"must not be negative, got {value}"
    checks: list[tuple[bool, str, str]] = []
    secret_files = ("token_secret_file", "token_file", "reflector_token_file",
                    "tls_cert_file", "tls_key_file", "turn_secret_file")
    for key in secret_files:  # secret files named in settings: readable
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
            (obj.workers <= 256, "workers", "must be 0 (one per core) to 256"),
            (obj.drain_timeout_s <= 3600, "drain_timeout_s", "must be 0-3600 seconds"),
            (bool(obj.tls_cert_file) == bool(obj.tls_key_file),
             "tls_key_file" if obj.tls_cert_file else "tls_cert_file",
             "give both tls_cert_file and tls_key_file (--tls-cert and --tls-key), or neither"),
        ]
        checks += [(network_problem(n) is None, key, network_problem(n) or "")
                   for key in ("trusted_proxies", "metrics_from") for n in getattr(obj, key)]
        checks += [
            (len(obj.turn_urls) <= MAX_TURN_URLS, "turn_urls",
             f"give at most {MAX_TURN_URLS} TURN URLs"),
            *((turn_url_problem(u) is None, "turn_urls", turn_url_problem(u) or "")
              for u in obj.turn_urls),
            (bool(obj.turn_urls) == bool(obj.turn_secret_file),
             "turn_secret_file" if obj.turn_urls else "turn_urls",
             "give both turn_urls and turn_secret_file (--turn-url and --turn-secret-file), "
             "or neither"),
            (60 <= obj.turn_ttl_s <= 86400, "turn_ttl_s", "must be 60-86400 seconds"),
        ]
        if obj.public_address:
            checks.append((_public_address_problem(obj.public_address) is None,
                           "public_address", _public_address_problem(obj.public_address) or ""))
    if isinstance(obj, AgentSettings):
        checks += [
            (0 < obj.api_port < 65536, "api_port", f"must be 1-65535, got {obj.api_port}"),
            (obj.api_host in ("127.0.0.1", "::1", "localhost"), "api_host",
             "the local API binds to loopback only (127.0.0.1, ::1 or localhost)"),
            (obj.idle_interval_s >= 10, "idle_interval_s", "must be at least 10 seconds"),
            (0 <= obj.idle_jitter < 1, "idle_jitter", "must be at least 0 and below 1"),
            (10 <= obj.monitor_probe_interval_ms <= 5000, "monitor_probe_interval_ms",
             "must be 10-5000 (a reflector closes a stream silent for 10 s)"),
            (10 <= obj.monitor_calm_interval_ms <= 5000, "monitor_calm_interval_ms",
             "must be 10-5000 (a reflector closes a stream silent for 10 s)"),
            (obj.window_s >= 1, "window_s", "must be at least 1 second"),
            (obj.step_down_after >= 1, "step_down_after", "must be at least 1"),
            (obj.backoff_min_s > 0, "backoff_min_s", "must be above 0"),
            (obj.backoff_max_s >= obj.backoff_min_s, "backoff_max_s",
             "must be at least backoff_min_s"),
            (0 < obj.cpu_limit_pct <= 100, "cpu_limit_pct", "must be 1-100"),
            (obj.max_session_s == 0 or obj.max_session_s >= 60, "max_session_s",
             "must be 0 (no limit) or at least 60 seconds"),
            (obj.detect_calls in ("off", "on"), "detect_calls",
             f'must be "off" or "on", got {obj.detect_calls!r}'),
        ]
        checks += [(origin.startswith(("http://", "https://")) and origin.count("/") == 2,
                    "cors_origins", f"{origin!r} is not an origin like https://host[:port]")
                   for origin in obj.cors_origins]
        checks.append((len(obj.servers) <= MAX_SERVERS, "server",
                       f"give at most {MAX_SERVERS} reflector URLs"))
        for url in obj.servers:  # every URL of the list, as a single one is
            problem = server_url_problem(url)
            checks.append((problem is None, "server", problem or ""))
    if isinstance(obj, ClinicSettings):  # phonenumbers and zoneinfo: loaded only for it
        from netprobe.clinic import settings_problem

        if (found := settings_problem(obj)) is not None:
            return found
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

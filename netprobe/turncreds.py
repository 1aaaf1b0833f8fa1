"""TURN credentials the reflector hands out: the TURN REST API scheme that coturn checks with
`use-auth-secret` (docs/reflector.md, "TURN relay").

username = `"<expiry, Unix seconds>:<opaque>"`, password = `base64(HMAC-SHA1(secret,
username))`, where `secret` is coturn's `static-auth-secret`. The opaque part is a random id:
never the client's address or anything else that identifies a person. coturn refuses a
username whose expiry has passed, on the Allocate and on every Refresh of the allocation, so a
credential must outlive the session it relays.

Pure apart from `load_turn_secret` (reads the secret file): time comes in as `now`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

from netprobe.errors import ConfigError
from netprobe.tokens import read_secret_file

MIN_TURN_SECRET_CHARS = 16
"""Shortest `static-auth-secret` accepted (anyone who guesses it can use the relay)."""
MONITOR_MARGIN_S = 300.0
"""Added to `monitor_timeout_s` for a monitoring stream's credentials (clocks, reconnects)."""
MAX_USERNAME_TTL_S = 400 * 86400
"""Longest lifetime `credential` writes (a monitor_timeout_s misconfigured to years is cut)."""


@dataclass(frozen=True)
class TurnSecret:
    """coturn's shared secret (never printed)."""

    value: bytes

    def __repr__(self) -> str:
        return "TurnSecret(...)"


def parse_turn_secret(text: str, where: str) -> TurnSecret:
    """The secret in a secret file's `text`: one line, the secret alone (surrounding blanks
    ignored). Raises ConfigError naming `where` and the reason."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{where}: the file is empty (write coturn's static-auth-secret in "
                          "it, e.g. the output of `openssl rand -hex 32`)")
    if len(lines) > 1:
        raise ConfigError(f"{where}: expected one line (coturn's static-auth-secret), found "
                          f"{len(lines)}")
    secret = lines[0]
    if secret.startswith("static-auth-secret"):
        raise ConfigError(f"{where}: write the secret alone, not `static-auth-secret=...`")
    if any(c.isspace() for c in secret):
        raise ConfigError(f"{where}: the secret must not contain blanks")
    if len(secret) < MIN_TURN_SECRET_CHARS:
        raise ConfigError(f"{where}: the secret is {len(secret)} characters; it must be at "
                          f"least {MIN_TURN_SECRET_CHARS} (e.g. `openssl rand -hex 32`)")
    return TurnSecret(secret.encode())


def load_turn_secret(path: Path | str) -> TurnSecret:
    """Read and check the secret file (`tokens.read_secret_file`), holding one good secret.
    Raises ConfigError naming the file."""
    return parse_turn_secret(read_secret_file(path, "TURN secret"), str(path))


def password_for(secret: TurnSecret, username: str) -> str:
    """`base64(HMAC-SHA1(secret, username))`, as coturn computes it."""
    digest = hmac.new(secret.value, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def credential(secret: TurnSecret, now: float, ttl_s: float,
               opaque: str | None = None) -> tuple[str, str]:
    """(username, password) good from `now` (Unix seconds) for `ttl_s` seconds. `opaque`:
    the username's part after the colon (default: 16 random hex digits)."""
    if not (math.isfinite(now) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"a TURN credential needs a time and a lifetime, got {now}, {ttl_s}")
    expiry = int(now) + math.ceil(min(ttl_s, MAX_USERNAME_TTL_S))
    name = opaque if opaque is not None else secrets.token_hex(8)
    if not name or ":" in name:
        raise ValueError("the opaque part of a TURN username must be non-empty, without ':'")
    username = f"{expiry}:{name}"
    return username, password_for(secret, username)


def lifetime_s(kind: str, turn_ttl_s: float, monitor_timeout_s: float) -> float:
    """How long a credential for a session of `kind` (`check`, `monitor`) must last: a
    monitoring stream's whole time limit plus a margin (coturn checks the expiry again on
    every Refresh), a check's `turn_ttl_s`."""
    if kind == "monitor":
        return max(turn_ttl_s, monitor_timeout_s + MONITOR_MARGIN_S)
    return turn_ttl_s


def ice_servers(urls: tuple[str, ...], secret: TurnSecret, now: float,
                ttl_s: float) -> list[dict[str, str]]:
    """One `{"urls", "username", "credential"}` entry per URL, in order (one credential for
    them all: coturn's listeners share the secret)."""
    if not urls:
        return []
    username, password = credential(secret, now, ttl_s)
    return [{"urls": url, "username": username, "credential": password} for url in urls]

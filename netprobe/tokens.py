"""Access tokens for the reflector: signed, expiring, scoped (docs/reflector.md, "Access tokens").

A token is a JWT (RFC 7519) signed with HMAC-SHA256 (`HS256`) by PyJWT, with a `kid` header
naming the key that signed it, so keys can be rotated: the secret file holds one or more
`kid = secret` lines, the first signs, every one verifies. Claims: `scope` (`check`: one
pre-session check; `monitor`: monitoring streams and checks), `iat`, `exp` (Unix seconds) and a
random `jti`. A `check` token is good for one check: at most `CHECK_OFFERS` offers within
`CHECK_RETRY_S` of its first (a client whose direct path fails re-offers over a TURN relay);
its `jti` is remembered until it expires (`ReplayCache`, bounded).

Pure apart from `load_keys` (reads the secret file): time comes in as `now` (Unix seconds);
PyJWT does the cryptography, never the clock (its own expiry checks are turned off and done
here against `now`). `Gate` is the reflector's decision: which offer needs which token.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import jwt

from netprobe.errors import ConfigError, NetprobeError

ALGORITHM = "HS256"
SCOPES = ("check", "monitor")
MIN_SECRET_BYTES = 32
"""Shortest secret accepted (HS256's key should be at least the hash's 32 bytes)."""
DEFAULT_TTL_S = {"check": 86400, "monitor": 30 * 86400}
"""`netprobe token issue` without `--ttl`: a check token lasts a day, a monitor token 30."""
MAX_TTL_S = 400 * 86400
"""Longest lifetime `issue` writes and `verify` accepts (exp - now)."""
MAX_CHECK_TTL_S = 31 * 86400
"""Longest lifetime of a check token: its jti is remembered that long at most."""
LEEWAY_S = 30.0
"""Clock difference allowed between the issuing system and the reflector."""
MAX_TOKEN_CHARS = 4096
CHECK_OFFERS = 3
"""Offers one check token allows (the first, and retries over a relay when it fails)."""
CHECK_RETRY_S = 30.0
"""How long after a check token's first offer its retries are allowed."""
MAX_REPLAY_ENTRIES = 100_000
"""Check tokens remembered at once (about 10 MB at worst); more unexpired ones get 503."""

_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JTI = re.compile(r"[A-Za-z0-9._~-]{8,128}")


class AccessRefused(NetprobeError):
    """An offer without the token it needs: HTTP `status` with error `code` (the message says
    why in words; it never repeats the token)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return str(self.args[2])


def _unauthorized(message: str) -> AccessRefused:
    return AccessRefused(401, "unauthorized", message)


def _forbidden(message: str) -> AccessRefused:
    return AccessRefused(403, "forbidden", message)


@dataclass(frozen=True)
class Keyring:
    """The keys of a secret file, in order: the first signs, all verify."""

    keys: tuple[tuple[str, bytes], ...]
    """(kid, secret) pairs; kids are unique."""

    @property
    def signing(self) -> tuple[str, bytes]:
        return self.keys[0]

    def secret(self, kid: str) -> bytes | None:
        return next((s for k, s in self.keys if k == kid), None)

    def __repr__(self) -> str:  # never print a secret
        return f"Keyring(kids={[k for k, _ in self.keys]!r})"


def parse_keys(text: str, where: str) -> Keyring:
    """The keys in a secret file's `text`: `kid = secret` lines (`#` comments and blank lines
    ignored; the secret may be in double quotes, so the file may be written as TOML).
    Raises ConfigError naming `where`, the line and the reason."""
    keys: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kid, eq, secret = (part.strip() for part in line.partition("="))
        if not eq:
            raise ConfigError(f"{where}: line {number}: expected `kid = secret`")
        if len(secret) >= 2 and secret[0] == secret[-1] == '"':
            secret = secret[1:-1]
        if not _KID.fullmatch(kid):
            raise ConfigError(f"{where}: line {number}: the key id must be 1-64 of A-Z a-z "
                              "0-9 . _ -")
        if any(k == kid for k, _ in keys):
            raise ConfigError(f"{where}: line {number}: key id {kid!r} appears twice")
        value = secret.encode()
        if len(value) < MIN_SECRET_BYTES:
            raise ConfigError(f"{where}: line {number}: the secret of key {kid!r} is "
                              f"{len(value)} bytes; it must be at least {MIN_SECRET_BYTES} "
                              "(e.g. `openssl rand -hex 32`)")
        keys.append((kid, value))
    if not keys:
        raise ConfigError(f"{where}: no key in the file (write `kid = secret`, e.g. "
                          "`k1 = <output of openssl rand -hex 32>`)")
    return Keyring(tuple(keys))


def read_secret_file(path: Path | str, what: str) -> str:
    """The text of a secret file, checked: a regular file, readable, not readable or writable
    by group or others (POSIX). Raises ConfigError naming the file (`what`: "token secret")."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise ConfigError(f"{path}: others can read the {what} (mode "
                              f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def load_keys(path: Path | str) -> Keyring:
    """Read and check the secret file (`read_secret_file`), holding good keys. Raises
    ConfigError naming the file."""
    return parse_keys(read_secret_file(path, "token secret"), str(path))


def issue(keyring: Keyring, scope: str, now: float, ttl_s: float | None = None,
          jti: str | None = None) -> str:
    """A token of `scope` signed with the keyring's first key, valid from `now` (Unix seconds)
    for `ttl_s` (default `DEFAULT_TTL_S[scope]`)."""
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    ttl = DEFAULT_TTL_S[scope] if ttl_s is None else ttl_s
    longest = MAX_CHECK_TTL_S if scope == "check" else MAX_TTL_S
    if not (math.isfinite(ttl) and 0 < ttl <= longest):
        raise ConfigError(f"--ttl: a {scope} token lasts 1-{longest} seconds, got {ttl}")
    kid, secret = keyring.signing
    iat = int(now)
    claims = {"scope": scope, "iat": iat, "exp": iat + math.ceil(ttl),
              "jti": jti or secrets.token_urlsafe(16)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    scope: str
    """`check` or `monitor`."""
    jti: str
    """The token's unique id (a check token allows `CHECK_OFFERS` offers)."""
    exp: float
    """Expiry, Unix seconds."""
    kid: str
    """The key that signed it."""

    def permits(self, mode: str) -> bool:
        """A monitor token opens monitoring streams and checks; a check token only checks."""
        return self.scope == "monitor" or mode == "check"


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not -2**53 < value < 2**53 or not math.isfinite(value):
        raise _unauthorized(f"the token's {name!r} claim is not a time")
    return float(value)


def verify(keyring: Keyring, token: str, now: float) -> Grant:
    """Check `token`'s signature, key id, claims and lifetime at `now` (Unix seconds).
    Raises AccessRefused (401 `unauthorized`) saying what is wrong with it."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise _unauthorized("the token is not a signed netprobe token (a JWT)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("the token is not a signed netprobe token (a JWT)") from None
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM:
        raise _unauthorized(f"the token must be signed with {ALGORITHM}")
    if not isinstance(kid, str):
        raise _unauthorized("the token names no key (kid)")
    secret = keyring.secret(kid)
    if secret is None:
        raise _unauthorized("the token was signed with a key this reflector does not have "
                            "(unknown kid; retired or mistyped?)")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={
            "verify_signature": True, "verify_exp": False, "verify_iat": False,
            "verify_nbf": False, "verify_aud": False, "verify_iss": False,
            "verify_jti": False, "verify_sub": False})  # checked below, against `now`
    except jwt.InvalidSignatureError:
        raise _unauthorized("the token's signature is wrong") from None
    except jwt.PyJWTError:
        raise _unauthorized("the token is not a signed netprobe token (a JWT)") from None
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    scope, jti = claims.get("scope"), claims.get("jti")
    if scope not in SCOPES:
        raise _unauthorized("the token's scope must be \"check\" or \"monitor\"")
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise _unauthorized("the token's 'jti' claim must be 8-128 URL-safe characters")
    if exp <= now - LEEWAY_S:
        raise _unauthorized("the token has expired; ask the clinic for a new one")
    if iat > now + LEEWAY_S:
        raise _unauthorized("the token was issued in the future (is a clock wrong?)")
    longest = MAX_CHECK_TTL_S if scope == "check" else MAX_TTL_S
    if exp - now > longest:
        raise _unauthorized(f"the token lasts longer than a {scope} token may "
                            f"({longest} seconds)")
    return Grant(scope=scope, jti=jti, exp=exp, kid=kid)


class ReplayCache:
    """The jtis of check tokens already used, each with its first offer's time and its count
    of offers, kept until its token expires; at most `capacity` at once (a full cache refuses
    new check tokens rather than forget one)."""

    def __init__(self, capacity: int = MAX_REPLAY_ENTRIES) -> None:
        self.capacity = capacity
        self._seen: dict[str, tuple[float, float, int]] = {}
        """jti -> (expiry, first offer's time, offers taken)."""
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now - LEEWAY_S:
            _, jti = heapq.heappop(self._heap)
            self._seen.pop(jti, None)

    def used(self, jti: str, now: float) -> bool:
        """Whether `jti` allows no further offer: `CHECK_OFFERS` taken, or its first was
        more than `CHECK_RETRY_S` ago."""
        self._purge(now)
        entry = self._seen.get(jti)
        return entry is not None and (entry[2] >= CHECK_OFFERS
                                      or now - entry[1] > CHECK_RETRY_S)

    def use(self, jti: str, exp: float, now: float) -> bool:
        """Take one offer of `jti` (remembered until `exp`); False if it allows no more."""
        if self.used(jti, now):
            return False
        entry = self._seen.get(jti)
        if entry is None:
            if len(self._seen) >= self.capacity:
                raise AccessRefused(503, "busy", "the reflector holds too many unexpired check "
                                    "tokens; try again later")
            self._seen[jti] = (exp, now, 1)
            heapq.heappush(self._heap, (exp, jti))
        else:
            self._seen[jti] = (entry[0], entry[1], entry[2] + 1)
        return True

    def exhaust(self, jti: str) -> None:
        """Allow `jti` no further offer (another worker has taken the last one)."""
        entry = self._seen.get(jti)
        if entry is not None:
            self._seen[jti] = (entry[0], entry[1], CHECK_OFFERS)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


ALREADY_USED = ("this check token was already used; a check link is good for one check: "
                f"at most {CHECK_OFFERS} tries within {CHECK_RETRY_S:.0f} s")


class Gate:
    """Which offers the reflector accepts, by its settings:

    - a secret (`token_secret_file`): every offer needs a token, a monitoring stream one of
      scope `monitor`; with `open`, checks need none (a token sent with one is ignored);
    - no secret and `open`: checks need no token; monitoring streams are refused;
    - no secret on a loopback address: everything is accepted (tests, `check --local`);
    - no secret on any other address: `refusal` says why the reflector must not start.
    """

    def __init__(self, keyring: Keyring | None, open_: bool, host: str,
                 replay: ReplayCache | None = None) -> None:
        self.keyring = keyring
        self.open = open_
        self.local = keyring is None and not open_ and is_loopback(host)
        self.replay = replay or ReplayCache()
        self.refusal: str | None = None
        if keyring is None and not open_ and not self.local:
            self.refusal = (
                f"the reflector would listen on {host}, beyond this machine, with no access "
                "tokens: set [reflector] token_secret_file (or --token-secret-file PATH), or "
                "pass --open ([reflector] open = true) to let anyone run checks")

    @property
    def always_needs_token(self) -> bool:
        """Every offer needs a token whatever its mode (checked before the body is read)."""
        return self.keyring is not None and not self.open

    def authenticate(self, authorization: str | None, now: float) -> Grant:
        """The grant of an `Authorization: Bearer TOKEN` header, or AccessRefused (401)."""
        if self.keyring is None:
            raise _unauthorized("this reflector has no token secret, so it accepts no "
                                "monitoring stream (set [reflector] token_secret_file)")
        if not authorization:
            raise _unauthorized("this reflector needs an access token: send "
                                "Authorization: Bearer TOKEN (netprobe check --token or --link)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send the token as Authorization: Bearer TOKEN")
        return verify(self.keyring, token.strip(), now)

    def admit(self, authorization: str | None, mode: str, now: float,
              grant: Grant | None = None) -> Grant | None:
        """May an offer of `mode` (`check`/`monitor`) with this header go ahead? Returns the
        grant to `consume` once the session is taken on (None: no token needed), or raises
        AccessRefused. `grant`: the header's, if already authenticated."""
        grant = self.allows(authorization, mode, now, grant)
        if grant is not None and grant.scope == "check" and self.replay.used(grant.jti, now):
            raise _forbidden(ALREADY_USED)
        return grant

    def allows(self, authorization: str | None, mode: str, now: float,
               grant: Grant | None = None) -> Grant | None:
        """`admit` without the spent-token check: what a request beside an offer needs
        (`GET /v1/ice`: a check token its offer has spent still gets relay credentials)."""
        if self.refusal is not None:
            raise AccessRefused(503, "not_configured", self.refusal)
        if self.local or (mode == "check" and self.open):
            return None
        grant = grant or self.authenticate(authorization, now)
        if not grant.permits(mode):
            raise _forbidden("a check token cannot open a monitoring stream; it needs a token "
                             "of scope \"monitor\"")
        return grant

    def consume(self, grant: Grant | None, now: float) -> None:
        """Spend a check token (raises AccessRefused 403 if it was spent meanwhile)."""
        if grant is not None and grant.scope == "check" and \
                not self.replay.use(grant.jti, grant.exp, now):
            raise _forbidden(ALREADY_USED)


def read_token_file(path: Path | str) -> str:
    """The access token kept in `path` (a client's, e.g. the agent's `[agent]
    token_file`): its one line, stripped. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    if not text or len(text) > MAX_TOKEN_CHARS or text.count(".") != 2 or any(
            c.isspace() for c in text):
        raise ConfigError(f"{path}: does not hold one access token (a JWT from "
                          "`netprobe token issue --scope monitor`)")
    return text


LINK_PATH = "/check"


def check_link(server_url: str, token: str) -> str:
    """The check link a clinic sends a client: `SERVER/check#t=TOKEN` (the token in the
    fragment, which browsers and proxies never send on)."""
    return f"{server_url.rstrip('/')}{LINK_PATH}#t={token}"


def parse_check_link(link: str) -> tuple[str, str]:
    """(server URL, token) of a check link `http(s)://host[:port][/prefix]/check#t=TOKEN`.
    Raises ConfigError naming `--link` (never quoting the token)."""
    try:
        parts = urlsplit(link.strip())
    except ValueError:
        raise ConfigError("--link: not a URL (a check link looks like "
                          "https://reflector.example:8765/check#t=TOKEN)") from None
    fields = parse_qs(parts.fragment, keep_blank_values=True)
    tokens = fields.get("t", [])
    if len(tokens) != 1 or not tokens[0] or tokens[0].count(".") != 2:
        raise ConfigError("--link: the link has no token: a check link looks like "
                          "https://reflector.example:8765/check#t=TOKEN")
    path = parts.path.rstrip("/")
    if path.endswith(LINK_PATH):
        path = path[:-len(LINK_PATH)]
    server = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError("--link: a check link starts with https:// (or http://), then the "
                          "reflector's host[:port], e.g. https://reflector.example:8765/check#t=…")
    return server, tokens[0]


def gate_for(token_secret_file: str, open_: bool, host: str) -> Gate:
    """The gate for a reflector's settings (reads and checks the secret file)."""
    keyring = load_keys(token_secret_file) if token_secret_file else None
    return Gate(keyring, open_, host)

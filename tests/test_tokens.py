"""Access tokens, pure: the secret file, issue and verify with real PyJWT tokens, the replay
cache, the gate's decisions, check links, and `netprobe token issue` as a user runs it."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from procs import CHILD_ENV, NETPROBE

from netprobe.config import AgentSettings, ReflectorSettings, load_settings, override
from netprobe.errors import ConfigError
from netprobe.tokens import (
    ALREADY_USED,
    CHECK_OFFERS,
    MIN_SECRET_BYTES,
    AccessRefused,
    Gate,
    Keyring,
    ReplayCache,
    check_link,
    is_loopback,
    issue,
    load_keys,
    parse_check_link,
    parse_keys,
    read_token_file,
    verify,
)

NOW = 1_800_000_000.0
S1 = "a" * 32
S2 = "b" * 48
KEYS = parse_keys(f"# the clinic's keys\nnew = {S1}\n\nold = \"{S2}\"\n", "secret")


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token-secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def refused(exc: pytest.ExceptionInfo[AccessRefused]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


# ------------------------------------------------------------------------ the secret file


def test_the_first_key_signs_and_every_key_verifies() -> None:
    assert [k for k, _ in KEYS.keys] == ["new", "old"]
    token = issue(KEYS, "check", NOW, 600)
    assert jwt.get_unverified_header(token)["kid"] == "new"
    claims = jwt.decode(token, S1, algorithms=["HS256"],
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["scope"] == "check" and claims["exp"] - claims["iat"] == 600
    assert len(claims["jti"]) >= 16
    old_only = Keyring((("old", S2.encode()),))
    rotated = verify(KEYS, issue(old_only, "monitor", NOW), NOW + 5)  # signed before rotation
    assert rotated.kid == "old" and rotated.scope == "monitor"
    assert "aaaa" not in repr(KEYS) and "bbbb" not in repr(KEYS)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "no key"),
    ("# only a comment\n", "no key"),
    ("k1 " + S1, "line 1: expected `kid = secret`"),
    (f"k1 = {'x' * (MIN_SECRET_BYTES - 1)}", "at least 32"),
    ("k1 = \"\"", "is 0 bytes"),
    (f"k1 = {S1}\nk1 = {S2}", "line 2: key id 'k1' appears twice"),
    (f"bad kid = {S1}", "key id must be"),
])
def test_a_bad_secret_file_is_refused_naming_line_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_keys(text, "secret")


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, f"k1 = {S1}\n", 0o644)
    with pytest.raises(ConfigError, match=f"{path}: others can read.*chmod 600"):
        load_keys(path)
    path.chmod(0o600)
    assert load_keys(path).signing[0] == "k1"
    with pytest.raises(ConfigError, match="no such file"):
        load_keys(tmp_path / "missing")


def test_the_secret_file_setting_is_checked_at_load(tmp_path: Path) -> None:
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(f'[reflector]\ntoken_secret_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError, match=r"line 2: reflector.token_secret_file: .*no such"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="--token-secret-file: .*no such file"):
        override(ReflectorSettings(), "--token-secret-file", token_secret_file="/nope/x")
    cfg.write_text(f'[agent]\nreflector_token_file = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="agent.reflector_token_file: .*not a regular file"):
        load_settings(cfg)
    good = secret_file(tmp_path, f"k = {S1}\n")
    cfg.write_text(f'[reflector]\ntoken_secret_file = "{good}"\nopen = true\n')
    loaded = load_settings(cfg).reflector
    assert loaded.token_secret_file == str(good) and loaded.open is True
    assert AgentSettings().reflector_token_file == ""


# ------------------------------------------------------------------------ verify


def forged(claims: dict[str, object], key: str = S1, kid: str | None = "new") -> str:
    return jwt.encode(claims, key, algorithm="HS256",
                      headers={"kid": kid} if kid is not None else None)


GOOD = {"scope": "check", "iat": int(NOW), "exp": int(NOW) + 600, "jti": "0123456789abcdef"}


@pytest.mark.parametrize(("token", "reason"), [
    (issue(KEYS, "check", NOW - 700, 600), "expired"),
    (forged(GOOD, key="c" * 32), "signature is wrong"),
    (forged(GOOD, kid="retired"), "unknown kid"),
    (forged(GOOD, kid=None), "names no key"),
    (forged({**GOOD, "scope": "admin"}), "scope"),
    (forged({k: v for k, v in GOOD.items() if k != "exp"}), "'exp'"),
    (forged({**GOOD, "exp": True}), "'exp'"),
    (forged({**GOOD, "exp": "soon"}), "'exp'"),
    (forged({**GOOD, "exp": 10**400}), "'exp'"),
    (forged({**GOOD, "jti": 7}), "'jti'"),
    (forged({**GOOD, "jti": "short"}), "'jti'"),
    (forged({**GOOD, "iat": int(NOW) + 3600}), "in the future"),
    (forged({**GOOD, "exp": int(NOW) + 10**9}), "lasts longer"),
    (jwt.encode(GOOD, "z" * 64, algorithm="HS512", headers={"kid": "new"}), "HS256"),
    ("not-a-token", "not a signed"),
    ("a.b.c", "not a signed"),
    ("x" * 5000, "not a signed"),
])
def test_a_bad_token_is_unauthorized_saying_why(token: str, reason: str) -> None:
    with pytest.raises(AccessRefused, match=reason) as exc:
        verify(KEYS, token, NOW)
    assert refused(exc) == (401, "unauthorized")


def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"new"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(GOOD).encode()).rstrip(b"=").decode()
    with pytest.raises(AccessRefused, match="HS256"):
        verify(KEYS, f"{header}.{body}.", NOW)


def test_expiry_allows_a_little_clock_difference() -> None:
    token = issue(KEYS, "check", NOW, 60)
    assert verify(KEYS, token, NOW + 60 + 10).scope == "check"  # within LEEWAY_S
    with pytest.raises(AccessRefused, match="expired"):
        verify(KEYS, token, NOW + 60 + 31)


def test_issue_refuses_a_bad_scope_or_lifetime() -> None:
    with pytest.raises(ConfigError, match="scope"):
        issue(KEYS, "admin", NOW)
    for ttl in (0, -5, float("nan"), 10**9):
        with pytest.raises(ConfigError, match="--ttl"):
            issue(KEYS, "check", NOW, ttl)


# ------------------------------------------------------------------------ replay cache and gate


def test_the_replay_cache_forgets_expired_jtis_and_is_bounded() -> None:
    cache = ReplayCache(capacity=3)
    assert all(cache.use("j1", NOW + 10, NOW) for _ in range(CHECK_OFFERS))
    assert not cache.use("j1", NOW + 10, NOW)
    assert cache.use("j2", NOW + 100, NOW) and cache.use("j3", NOW + 100, NOW)
    with pytest.raises(AccessRefused) as exc:
        cache.use("j4", NOW + 100, NOW)
    assert refused(exc) == (503, "busy")
    assert cache.used("j1", NOW + 20)  # expired, but within the leeway: still refused
    assert not cache.used("j1", NOW + 50) and len(cache) == 2
    assert cache.use("j4", NOW + 100, NOW + 50)


def test_a_gate_with_a_secret_needs_a_token_of_the_right_scope() -> None:
    gate = Gate(KEYS, False, "0.0.0.0")
    assert gate.refusal is None and gate.always_needs_token
    with pytest.raises(AccessRefused, match="Authorization: Bearer") as exc:
        gate.admit(None, "check", NOW)
    assert refused(exc) == (401, "unauthorized")
    with pytest.raises(AccessRefused, match="Bearer"):
        gate.admit("Basic dXNlcjpwdw==", "check", NOW)
    check = f"Bearer {issue(KEYS, 'check', NOW)}"
    with pytest.raises(AccessRefused, match="monitoring stream") as exc:
        gate.admit(check, "monitor", NOW)
    assert refused(exc) == (403, "forbidden")
    for offer in range(CHECK_OFFERS):  # the first, and retries over a relay
        grant = gate.admit(check, "check", NOW + offer)
        gate.consume(grant, NOW + offer)
    with pytest.raises(AccessRefused, match=ALREADY_USED) as exc:
        gate.admit(check, "check", NOW + 3)
    assert refused(exc) == (403, "forbidden")
    with pytest.raises(AccessRefused, match=ALREADY_USED):
        gate.consume(grant, NOW + 3)  # offers racing with one token: only three win
    monitor = f"bearer {issue(KEYS, 'monitor', NOW)}"
    for _ in range(3):  # a monitor token is reused (reconnects) and also permits checks
        for mode in ("monitor", "check"):
            gate.consume(gate.admit(monitor, mode, NOW), NOW)


def test_an_open_gate_lets_checks_in_and_monitoring_only_with_a_token() -> None:
    assert Gate(None, True, "0.0.0.0").admit(None, "check", NOW) is None
    with pytest.raises(AccessRefused, match="accepts no monitoring stream") as exc:
        Gate(None, True, "0.0.0.0").admit(None, "monitor", NOW)
    assert refused(exc) == (401, "unauthorized")
    with_secret = Gate(KEYS, True, "0.0.0.0")
    assert not with_secret.always_needs_token
    assert with_secret.admit("Bearer expired.or.bad", "check", NOW) is None
    with pytest.raises(AccessRefused):
        with_secret.admit(None, "monitor", NOW)
    assert with_secret.admit(f"Bearer {issue(KEYS, 'monitor', NOW)}", "monitor", NOW)


def test_without_a_secret_only_loopback_may_run_unopened() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        gate = Gate(None, False, host)
        assert gate.refusal is None and is_loopback(host)
        assert gate.admit(None, "monitor", NOW) is None  # tests, `check --local`
    for host in ("0.0.0.0", "::", "192.0.2.1", "reflector.example"):
        gate = Gate(None, False, host)
        assert gate.refusal is not None and "--open" in gate.refusal, host
        with pytest.raises(AccessRefused):
            gate.admit(None, "check", NOW)


# ------------------------------------------------------------------------ links and token files


def test_a_check_link_carries_server_and_token() -> None:
    token = issue(KEYS, "check", NOW)
    link = check_link("https://reflector.example:8765/", token)
    assert link == f"https://reflector.example:8765/check#t={token}"
    assert parse_check_link(link) == ("https://reflector.example:8765", token)
    assert parse_check_link(f"https://clinic.example/netprobe/check/#t={token}") == (
        "https://clinic.example/netprobe", token)


@pytest.mark.parametrize("link", [
    "https://reflector.example:8765/check",
    "https://reflector.example:8765/check#t=",
    "ftp://reflector.example/check#t=a.b.c",
    "https://reflector.example:0/check#t=a.b.c",
    "https://[::1/check#t=a.b.c",
])
def test_a_bad_check_link_is_a_usage_error_that_never_shows_the_token(link: str) -> None:
    with pytest.raises(ConfigError, match="--link") as exc:
        parse_check_link(link)
    assert "a.b.c" not in str(exc.value)


def test_a_token_file_holds_one_token(tmp_path: Path) -> None:
    path = tmp_path / "reflector-token"
    token = issue(KEYS, "monitor", NOW)
    path.write_text(token + "\n")
    assert read_token_file(path) == token
    for bad in ("", "two words.x.y", "not-a-jwt"):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="does not hold one access token"):
            read_token_file(path)


# ------------------------------------------------------------------------ `netprobe token issue`


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=60,
                          env=CHILD_ENV)


def test_token_issue_prints_a_token_pyjwt_verifies(tmp_path: Path) -> None:
    path = secret_file(tmp_path, f"k2 = {S2}\nk1 = {S1}\n")
    proc = run("token", "issue", "--secret-file", str(path), "--scope", "monitor",
               "--ttl", "120")
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert proc.stdout == token + "\n" and proc.stderr == ""
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "k2", "typ": "JWT"}
    claims = jwt.decode(token, S2, algorithms=["HS256"])  # PyJWT's own exp/iat checks
    assert claims["scope"] == "monitor" and claims["exp"] - claims["iat"] == 120
    proc = run("token", "issue", "--secret-file", str(path), "--scope", "check",
               "--link", "https://reflector.example:8765")
    server, token = parse_check_link(proc.stdout.strip())
    assert server == "https://reflector.example:8765"
    assert jwt.decode(token, S2, algorithms=["HS256"])["scope"] == "check"


@pytest.mark.parametrize(("args", "message"), [
    (("--scope", "check", "--ttl", "0"), "--ttl"),
    (("--scope", "check", "--link", "reflector.example"), "--link"),
])
def test_token_issue_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...],
                                         message: str) -> None:
    path = secret_file(tmp_path, f"k1 = {S1}\n")
    proc = run("token", "issue", "--secret-file", str(path), *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_token_issue_refuses_a_readable_or_short_secret(tmp_path: Path) -> None:
    path = secret_file(tmp_path, f"k1 = {S1}\n", 0o640)
    proc = run("token", "issue", "--secret-file", str(path), "--scope", "check")
    assert proc.returncode == 2 and "chmod 600" in proc.stderr and proc.stdout == ""
    os.chmod(path, 0o600)
    path.write_text("k1 = short\n")
    proc = run("token", "issue", "--secret-file", str(path), "--scope", "check")
    assert proc.returncode == 2 and "at least 32" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------ the documented examples


def doc_example(language: str) -> str:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reflector.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", doc, flags=re.S)
    return next(b for b in blocks if "HS256" in b)


@pytest.mark.parametrize(("language", "command"), [("sh", ["sh", "-c"]),
                                                   ("js", ["node", "-e"])])
def test_the_documented_examples_make_tokens_the_reflector_accepts(
        language: str, command: list[str]) -> None:
    if shutil.which(command[0]) is None or (language == "sh" and not shutil.which("openssl")):
        pytest.skip(f"{command[0]} is not installed")
    secret = "e" * 64  # as `openssl rand -hex 32` writes one: used as text
    out = subprocess.run([*command, doc_example(language)], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "NETPROBE_SECRET": secret}, check=True)
    keys = parse_keys(f"k1 = {secret}\n", "secret")
    grant = verify(keys, out.stdout.strip(), time.time())
    assert grant.scope == "check" and grant.kid == "k1"

"""A check token allows a fallback (docs/reflector.md, "Access tokens"): up to `CHECK_OFFERS`
offers within `CHECK_RETRY_S` of its first, counted across a reflector's workers (their shared
record of spent tokens), and over a real reflector's signalling with real aiortc offers."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from offers import offer_sdp
from procs import secret_file

from netprobe.config import ReflectorSettings
from netprobe.tokens import (
    ALREADY_USED,
    CHECK_OFFERS,
    CHECK_RETRY_S,
    AccessRefused,
    Gate,
    ReplayCache,
    issue,
    load_keys,
)
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.worker_share import SharedReplayCache

NOW = 1_800_000_000.0
EXP = NOW + 3600


def test_three_offers_within_thirty_seconds_then_no_more() -> None:
    assert (CHECK_OFFERS, CHECK_RETRY_S) == (3, 30.0)
    cache = ReplayCache()
    assert cache.use("a" * 16, EXP, NOW) and cache.use("a" * 16, EXP, NOW + 10)
    assert not cache.used("a" * 16, NOW + 29)
    assert cache.use("a" * 16, EXP, NOW + 29)
    assert cache.used("a" * 16, NOW + 29) and not cache.use("a" * 16, EXP, NOW + 29)
    late = "b" * 16
    assert cache.use(late, EXP, NOW)
    assert not cache.used(late, NOW + CHECK_RETRY_S)  # exactly 30 s: still allowed
    assert cache.used(late, NOW + CHECK_RETRY_S + 0.5)
    assert not cache.use(late, EXP, NOW + 31)  # a second offer 31 s after the first


def test_the_workers_count_one_tokens_offers_together(tmp_path: Path) -> None:
    one, two = SharedReplayCache(tmp_path / "spent"), SharedReplayCache(tmp_path / "spent")
    jti = "c" * 16
    assert one.use(jti, EXP, NOW)
    assert not two.used(jti, NOW + 5)
    assert two.use(jti, EXP, NOW + 5) and one.use(jti, EXP, NOW + 6)
    assert two.used(jti, NOW + 7) and one.used(jti, NOW + 7)
    assert not two.use(jti, EXP, NOW + 7) and not one.use(jti, EXP, NOW + 7)
    # the first offer's time is the first worker's, whichever worker sees the retry
    late = "d" * 16
    assert one.use(late, EXP, NOW)
    assert two.used(late, NOW + 31) and not two.use(late, EXP, NOW + 31)
    assert sorted(p.name[-2:] for p in (tmp_path / "spent").iterdir() if "." in p.name) \
        == [".2", ".3"]


def test_offers_racing_in_two_workers_take_at_most_three(tmp_path: Path) -> None:
    caches = [SharedReplayCache(tmp_path / "spent") for _ in range(4)]
    jti = "e" * 16
    taken = [c.use(jti, EXP, NOW + i * 0.1) for i, c in enumerate(caches * 2)]
    assert taken.count(True) == CHECK_OFFERS


def test_a_gate_allows_the_retries_and_refuses_the_fourth(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "tokens", "k1 = " + "k" * 40 + "\n")
    keys = load_keys(path)
    gate = Gate(keys, False, "0.0.0.0")
    bearer = f"Bearer {issue(keys, 'check', NOW)}"
    for offer in range(CHECK_OFFERS):
        gate.consume(gate.admit(bearer, "check", NOW + offer), NOW + offer)
    with pytest.raises(AccessRefused, match=ALREADY_USED) as exc:
        gate.admit(bearer, "check", NOW + 4)
    assert exc.value.status == 403
    assert gate.allows(bearer, "check", NOW + 4) is not None  # /v1/ice still answers


async def test_a_reflector_takes_a_check_tokens_retries_then_refuses(
        loopback_ice: None, tmp_path: Path) -> None:
    path = secret_file(tmp_path / "tokens", "k1 = " + "k" * 40 + "\n")
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, token_secret_file=str(path)))
    await r.start()
    token = issue(load_keys(path), "check", time.time())
    statuses = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(CHECK_OFFERS + 1):
                async with http.post(r.url + "/v1/offer",
                                     headers={"Authorization": f"Bearer {token}"},
                                     json={"sdp": await offer_sdp(), "type": "offer"}) as resp:
                    body = await resp.json()
                    statuses.append((resp.status, body.get("error", {}).get("code")))
    finally:
        await r.stop()
    assert statuses == [(200, None)] * CHECK_OFFERS + [(403, "forbidden")]

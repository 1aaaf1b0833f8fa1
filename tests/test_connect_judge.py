"""core.connect: judging a connection attempt from its STUN evidence (pure)."""

from __future__ import annotations

import random

import pytest

from netprobe.core.classify import AudioThresholds
from netprobe.core.connect import (
    DIRECT_WINDOW_S,
    MIN_BLOCKED_SENT,
    ConnectEvidence,
    audio_loss_limit_pct,
    combined,
    judge_direct,
    judge_final,
    judge_signalling,
    judge_signalling_final,
    relayed_reason,
    too_lossy_confidence,
    too_lossy_verdict,
    udp_blocked_reason,
)
from netprobe.core.emodel import estimate_audio_quality

T = AudioThresholds()


def simulate(loss_pct: float, seconds: float, rng: random.Random, per_s: int = 20,
             rtt_ms: float = 20.0) -> ConnectEvidence:
    """Evidence after `seconds` of probes over a link losing `loss_pct` each way."""
    sent = int(seconds * per_s)
    settled = max(0, sent - per_s)  # the last second's requests are not settled yet
    keep = 1 - loss_pct / 100
    answered = sum(1 for _ in range(settled) if rng.random() < keep and rng.random() < keep)
    # the reflector's own checks: a few per second, each arriving with probability `keep`
    inbound = answered + sum(1 for _ in range(int(seconds * 2)) if rng.random() < keep)
    return ConnectEvidence(since_s=seconds, sent=sent, settled=settled, answered=answered,
                           inbound=inbound, rtt_ms=rtt_ms if answered else None)


def test_nothing_back_after_the_window_is_udp_blocked() -> None:
    early = ConnectEvidence(since_s=DIRECT_WINDOW_S - 0.1, sent=40, settled=20, answered=0,
                            inbound=0)
    assert judge_direct(early, T) == "wait"
    late = ConnectEvidence(since_s=DIRECT_WINDOW_S, sent=40, settled=20, answered=0, inbound=0)
    assert judge_direct(late, T) == "udp_blocked"
    few = ConnectEvidence(since_s=5.0, sent=MIN_BLOCKED_SENT - 1, settled=20, answered=0,
                          inbound=0)
    assert judge_direct(few, T) == "wait"
    assert judge_final(few, T) == "timeout"


def test_any_udp_back_is_not_blocked() -> None:
    e = ConnectEvidence(since_s=5.0, sent=100, settled=80, answered=0, inbound=1)
    assert judge_direct(e, T) != "udp_blocked"
    assert judge_final(e, T) != "udp_blocked"


@pytest.mark.parametrize("loss", [30, 35, 40, 45])
def test_heavy_loss_is_too_lossy_within_seconds_every_time(loss: int) -> None:
    rng = random.Random(loss)
    for _ in range(200):
        seconds = 1.0
        while (judgement := judge_direct(simulate(loss, seconds, rng), T)) == "wait":
            seconds += 0.1
            assert seconds < 8.0, "no judgement within 8 s"
        assert judgement == "too_lossy"


@pytest.mark.parametrize("loss", [0, 1, 3, 8])
def test_moderate_loss_is_never_called_too_lossy_or_blocked(loss: int) -> None:
    rng = random.Random(100 + loss)
    for _ in range(300):
        for seconds in (1.0, 2.0, 3.0, 5.0, 11.0):
            assert judge_direct(simulate(loss, seconds, rng), T) == "wait"


def test_the_loss_limit_is_where_the_e_model_crosses_min_mos() -> None:
    limit = audio_loss_limit_pct(T, 20.0)
    assert 5 < limit < 30
    assert estimate_audio_quality(20.0, limit - 0.5).mos >= T.min_mos
    assert estimate_audio_quality(20.0, limit + 0.5).mos < T.min_mos
    # a longer round trip leaves less room for loss
    assert audio_loss_limit_pct(T, 600.0) < limit
    assert audio_loss_limit_pct(AudioThresholds(min_mos=4.6), 20.0) == 0.0


def test_confidence_grows_with_evidence() -> None:
    small = ConnectEvidence(since_s=3, sent=20, settled=20, answered=9, inbound=12)
    large = ConnectEvidence(since_s=9, sent=200, settled=200, answered=90, inbound=120)
    assert too_lossy_confidence(small, T) < too_lossy_confidence(large, T)
    assert too_lossy_confidence(large, T) > 0.99
    clean = ConnectEvidence(since_s=3, sent=60, settled=60, answered=60, inbound=80)
    assert too_lossy_confidence(clean, T) < 0.01


def test_final_judgement_on_a_lossy_unconnected_link_is_too_lossy() -> None:
    e = ConnectEvidence(since_s=11, sent=220, settled=200, answered=70, inbound=90,
                        rtt_ms=30)
    assert judge_final(e, T) == "too_lossy"
    verdict = too_lossy_verdict(e, T)
    assert verdict.verdict == "phone"
    assert verdict.reasons[0].code == "too_lossy_to_connect"
    assert "in 10" in verdict.reasons[0].message and 0.5 < verdict.confidence <= 0.99
    assert e.to_json()["stun_answered"] == 70 and e.to_json()["loss_pct"] == pytest.approx(
        40.8, abs=0.1)


def test_the_words() -> None:
    with_speed = udp_blocked_reason({"down_kbps": 12000, "up_kbps": 3100})
    assert with_speed.code == "udp_blocked" and "12 Mbit/s down" in with_speed.message
    assert "3.1 Mbit/s up" in with_speed.message and "phone" in with_speed.message
    without = udp_blocked_reason({"error": {"code": "ProtocolError", "message": "x"}})
    assert "Mbit/s" not in without.message and "reached the clinic" in without.message
    assert relayed_reason("direct") is None
    assert relayed_reason("relay_tcp").code == "udp_blocked"  # type: ignore[union-attr]
    assert relayed_reason("relay_tls").code == "udp_blocked"  # type: ignore[union-attr]
    assert relayed_reason("relay_udp").code == "relayed"  # type: ignore[union-attr]


def test_tcp_handshakes_judge_a_lossy_link_but_never_a_dead_server() -> None:
    dead = ConnectEvidence(since_s=8, sent=70, settled=70, answered=0, inbound=0)
    assert judge_signalling(dead, T) == "wait"
    assert not judge_signalling_final(dead, T)
    lossy = ConnectEvidence(since_s=4, sent=40, settled=34, answered=11, inbound=25)
    assert judge_signalling(lossy, T) == "too_lossy"
    fine = ConnectEvidence(since_s=4, sent=40, settled=34, answered=33, inbound=34)
    assert judge_signalling(fine, T) == "wait" and not judge_signalling_final(fine, T)
    # STUN evidence and TCP evidence add up; UDP blocked is judged on STUN alone
    stun = ConnectEvidence(since_s=1.5, sent=30, settled=10, answered=4, inbound=5)
    assert judge_direct(stun, T) == "wait"
    assert judge_direct(stun, T, before=lossy) == "too_lossy"
    silent = ConnectEvidence(since_s=2.5, sent=50, settled=30, answered=0, inbound=0)
    assert judge_direct(silent, T, before=fine) == "udp_blocked"
    assert combined(None, None).sent == 0 and combined(stun, None) is stun


def test_a_slow_answer_widens_the_udp_window() -> None:
    slow = ConnectEvidence(since_s=2.5, sent=50, settled=30, answered=0, inbound=0,
                           answer_s=3.2)
    assert slow.window_s == pytest.approx(4.2)
    assert judge_direct(slow, T) == "wait"
    later = ConnectEvidence(since_s=4.3, sent=86, settled=66, answered=0, inbound=0,
                            answer_s=3.2)
    assert judge_direct(later, T) == "udp_blocked"

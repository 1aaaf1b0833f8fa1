"""Tests for netprobe.core.emodel (ITU-T G.107 E-model).

Expected values are worked by hand from the G.107 formulas; the working is in comments.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netprobe.core import emodel
from netprobe.core.emodel import (
    AudioQuality,
    EModelParams,
    estimate_audio_quality,
    idd,
    ie_eff,
    mos_from_r,
    r_factor,
)
from netprobe.core.sampling import audio_fields, audio_mos

# --------------------------------------------------------------------------- defaults (7.7)


def test_default_parameters_give_r_93_2() -> None:
    # Ro (7.2), all Table 1 defaults:
    #   OLR = SLR + RLR = 10
    #   Nos = Ps - SLR - Ds - 100 + 0.004(Ps - OLR - Ds - 14)^2 = -76 + 0.004*8^2 = -75.744
    #   Pre = Pr + 10lg(1 + 10^((10 - LSTR)/10)) = 35 + 10lg(1.15849) = 35.639
    #   Nor = RLR - 121 + Pre + 0.008(Pre - 35)^2 = -83.358
    #   Nfo = Nfor + RLR = -62
    #   No  = 10lg(10^-7 + 10^-7.5744 + 10^-8.3358 + 10^-6.2) = 10lg(7.622e-7) = -61.179
    #   Ro  = 15 - 1.5(SLR + No) = 15 + 1.5*53.179 = 94.769
    # Is (7.3) = Iolr + Ist + Iq:
    #   Xolr = OLR + 0.2(64 + No - RLR) = 10.164;  Iolr = 20[(1 + 1.2705^8)^(1/8) - 1.2705] = 0.440
    #   STMRo = -10lg(10^-1.5 + e^0 * 10^-6.5) = 15.000
    #   Ist = 12.000 - 28.001 - 13.000 + 29 = -0.001
    #   Q = 37, G = 1.07 + 0.258*37 + 0.0602*37^2 = 93.030
    #   Y = (Ro - 100)/15 + 46/8.4 - G/9 = -5.209;  Z = 46/30 - G/40 = -0.792
    #   Iq = 15lg(1 + 10^-5.209 + 10^-0.792) = 0.974
    #   Is = 0.440 - 0.001 + 0.974 = 1.414   (the brief said ~1.43; the formulas give 1.41)
    # Id (7.4): T = 0 so Idte = 0 (factor 1 - e^0); Ta = 0 so Idd = 0;
    #   Rle = 10.5(WEPL + 7)(Tr + 1)^-0.25 = 1228.5
    #   Idle = (Ro - Rle)/2 + sqrt((Ro - Rle)^2/4 + 169) = -566.87 + 567.02 = 0.149
    # R = 94.769 - 1.414 - 0.149 - 0 + 0 = 93.206  (G.107: "R = 93.2")
    terms = emodel._terms(EModelParams())
    assert terms.ro == pytest.approx(94.77, abs=0.01)
    assert terms.is_ == pytest.approx(1.414, abs=0.01)
    assert terms.id_ == pytest.approx(0.149, abs=0.01)
    assert terms.ie_eff == 0.0
    assert r_factor(EModelParams()) == pytest.approx(93.2, abs=0.05)


def test_defaults_match_g107_table_1() -> None:
    p = EModelParams()
    expected = dict(SLR=8, RLR=2, STMR=15, LSTR=18, Ds=3, Dr=3, TELR=65, WEPL=110, T=0, Tr=0,
                    Ta=0, qdu=1, Ie=0, Bpl=4.3, Ppl=0, BurstR=1, Nc=-70, Nfor=-64, Ps=35,
                    Pr=35, A=0, mT=100, sT=1)  # fmt: skip
    assert {f.name: getattr(p, f.name) for f in dataclasses.fields(p)} == expected


def test_params_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EModelParams().Ppl = 1.0  # type: ignore[misc]


def test_advantage_factor_adds_to_r() -> None:
    assert r_factor(EModelParams(A=10)) - r_factor(EModelParams()) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(Ppl=-1), dict(Ppl=100.5), dict(T=-1), dict(Tr=-0.1), dict(Ta=-5), dict(Bpl=0),
     dict(BurstR=0), dict(qdu=0), dict(mT=0), dict(sT=-1), dict(SLR=math.nan),
     dict(Nc=math.inf)],
)  # fmt: skip
def test_params_reject_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EModelParams(**kwargs)


def test_sidetone_special_cases() -> None:
    # STMR > 20: Idte is replaced by Idtes = sqrt(Idte^2 + Ist^2). With T = 0, Idte = 0,
    # so Id = |Ist| + Idle. Ist for STMR = 25 (STMRo = -10lg(10^-2.5 + 10^-6.5) = 25.000),
    # written out independently of the module:
    stmro = -10 * math.log10(10**-2.5 + 10**-6.5)
    ist = (12 * (1 + ((stmro - 13) / 6) ** 8) ** (1 / 8)
           - 28 * (1 + ((stmro + 1) / 19.4) ** 35) ** (1 / 35)
           - 13 * (1 + ((stmro - 3) / 33) ** 13) ** (1 / 13) + 29)  # fmt: skip
    high = emodel._terms(EModelParams(STMR=25))
    mid = emodel._terms(EModelParams(STMR=15))
    # Idle depends only on Ro, WEPL, Tr: unchanged by STMR.
    assert high.id_ == pytest.approx(abs(ist) + mid.id_, abs=1e-9)
    assert abs(ist) > 1  # the branch matters
    # STMR < 9: TERVs = TERV + Ist/2 -- only visible once T > 0 (Idte has factor 1 - e^-T).
    low = EModelParams(STMR=5, T=200)
    assert r_factor(low) != pytest.approx(r_factor(dataclasses.replace(low, STMR=9)), abs=0.1)


# --------------------------------------------------------------------------- Annex B


@pytest.mark.parametrize(
    ("r", "mos"),
    [
        (-10.0, 1.0),  # R < 0 -> 1
        (0.0, 1.0),  # 1 + 0 + 0
        (50.0, 2.575),  # 1 + 1.75 + 50*(-10)*50*7e-6 = 2.75 - 0.175
        (60.0, 3.1),  # 1 + 2.1 + 0
        (80.0, 4.024),  # 1 + 2.8 + 80*20*20*7e-6 = 3.8 + 0.224
        (93.2, 4.409),  # 1 + 3.262 + 93.2*33.2*6.8*7e-6 = 4.262 + 0.147
        (100.0, 4.5),  # 1 + 3.5 + 0
        (130.0, 4.5),  # R > 100 -> 4.5
    ],
)
def test_mos_from_r(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=0.001)


def test_mos_floor_where_annex_b_polynomial_dips_below_1() -> None:
    # Raw polynomial at R = 3: 1 + 0.105 + 3*(-57)*97*7e-6 = 1.105 - 0.116 = 0.989 < 1.
    assert mos_from_r(3.0) == 1.0


@given(st.floats(-50, 150), st.floats(0, 50))
def test_mos_from_r_monotonic_and_bounded(r: float, dr: float) -> None:
    assert 1.0 <= mos_from_r(r) <= 4.5
    assert mos_from_r(r + dr) >= mos_from_r(r)


# --------------------------------------------------------------------------- Idd


@pytest.mark.parametrize(
    ("ta", "expected"),
    [
        (0.0, 0.0),
        (99.9, 0.0),
        (100.0, 0.0),  # Ta <= mT -> 0
        # X = log2(2) = 1: 25[2^(1/6) - 3(1 + 3^-6)^(1/6) + 2]
        #                = 25[1.122462 - 3.000686 + 2] = 25*0.121777 = 3.044
        (200.0, 3.044),
        # X = 2: 25[65^(1/6) - 3(1 + (2/3)^6)^(1/6) + 2] = 25[2.005175 - 3.042373 + 2] = 24.070
        (400.0, 24.070),
        # X = 3: 25[730^(1/6) - 3*2^(1/6) + 2] = 25[3.000685 - 3.367386 + 2] = 40.832
        (800.0, 40.832),
    ],
)
def test_idd(ta: float, expected: float) -> None:
    assert idd(ta) == pytest.approx(expected, abs=0.001)


def test_idd_threshold_and_sensitivity_parameters() -> None:
    assert idd(150, m_t=150) == 0.0
    assert idd(400, m_t=200) == pytest.approx(idd(200))  # only Ta/mT matters
    # Larger sT sharpens the knee: less impairment just above mT (sT 2 at X = 1:
    # 25[2^(1/12) - 3(1 + 3^-12)^(1/12) + 2] = 1.487 < 3.044).
    assert idd(200, s_t=2) < idd(200)
    with pytest.raises(ValueError):
        idd(-1)


@given(st.floats(0, 1e6), st.floats(0, 1e6))
def test_idd_monotonic_and_bounded(ta: float, extra: float) -> None:
    assert 0.0 <= idd(ta) <= idd(ta + extra) + 1e-9
    assert idd(ta + extra) < 50.0  # tends to 25*2 = 50 as X -> infinity


# --------------------------------------------------------------------------- Ie,eff (7.5)


def test_ie_eff_zero_loss_is_ie() -> None:
    assert ie_eff(11, 19, 0.0) == 11.0


def test_ie_eff_g711_plc_8_percent() -> None:
    # 0 + 95 * 8 / (8/1 + 25.1) = 760 / 33.1 = 22.961
    assert ie_eff(0, 25.1, 8.0) == pytest.approx(22.961, abs=0.001)


def test_ie_eff_burst_ratio_increases_impairment() -> None:
    # BurstR 2: 95 * 8 / (4 + 25.1) = 26.117 > 22.961
    assert ie_eff(0, 25.1, 8.0, burst_r=2.0) == pytest.approx(26.117, abs=0.001)
    assert ie_eff(0, 25.1, 8.0, burst_r=2.0) > ie_eff(0, 25.1, 8.0)


@pytest.mark.parametrize("ppl", [-0.1, 100.1, math.nan, math.inf])
def test_ie_eff_rejects_loss_outside_percent_range(ppl: float) -> None:
    with pytest.raises(ValueError):
        ie_eff(0, 25.1, ppl)


# --------------------------------------------------------------------------- estimate_audio_quality


def test_one_way_delay_mapping() -> None:
    # opus: rtt/2 + max(2*jitter, 20) + 20 ms frame + 6.5 ms lookahead
    assert estimate_audio_quality(100, 0).one_way_delay_ms == pytest.approx(50 + 20 + 26.5)
    assert estimate_audio_quality(40, 0, 60).one_way_delay_ms == pytest.approx(20 + 120 + 26.5)
    # g711: no lookahead
    assert estimate_audio_quality(100, 0, codec="g711").one_way_delay_ms == pytest.approx(90.0)
    # small jitter still gets the 20 ms minimum buffer
    assert estimate_audio_quality(100, 0, 5).one_way_delay_ms == pytest.approx(96.5)


def test_result_fields() -> None:
    q = estimate_audio_quality(100, 3, codec="G711")
    assert isinstance(q, AudioQuality)
    assert (q.loss_pct, q.codec) == (3, "g711")
    assert q.mos == mos_from_r(q.r)


def test_loss_is_in_percent() -> None:
    # Loss terms are independent of delay, so at a fixed delay R drops by exactly Ie,eff:
    # 1 %: 95 * 1 / (1 + 25.1) = 3.640.  A 0.01-style misuse would give 95*0.01/25.11 = 0.038.
    clean = estimate_audio_quality(100, 0.0).r
    one_pct = estimate_audio_quality(100, 1.0).r
    misuse = estimate_audio_quality(100, 0.01).r
    assert clean - one_pct == pytest.approx(95 / 26.1, abs=1e-9)
    assert clean - misuse == pytest.approx(0.038, abs=0.001)
    assert (clean - one_pct) > 50 * (clean - misuse)


@pytest.mark.parametrize(
    "kwargs",
    [dict(rtt_ms=-1, loss_pct=0), dict(rtt_ms=10, loss_pct=-0.5), dict(rtt_ms=10, loss_pct=101),
     dict(rtt_ms=10, loss_pct=0, jitter_ms=-1), dict(rtt_ms=math.nan, loss_pct=0),
     dict(rtt_ms=10, loss_pct=math.inf), dict(rtt_ms=10, loss_pct=0, codec="g729"),
     dict(rtt_ms=10, loss_pct=0, burst_ratio=0)],
)  # fmt: skip
def test_estimate_rejects_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        estimate_audio_quality(**kwargs)  # type: ignore[arg-type]


_rtt = st.floats(0, 5000)
_loss = st.floats(0, 100)
_jitter = st.floats(0, 1000)
_more = st.floats(0, 1000)


@given(_rtt, _loss, _jitter, _more, st.sampled_from(["opus", "g711"]))
def test_more_rtt_loss_or_jitter_never_raises_mos(
    rtt: float, loss: float, jitter: float, more: float, codec: str
) -> None:
    base = estimate_audio_quality(rtt, loss, jitter, codec=codec)
    worse = [
        estimate_audio_quality(rtt + more, loss, jitter, codec=codec),
        estimate_audio_quality(rtt, min(100.0, loss + more / 10), jitter, codec=codec),
        estimate_audio_quality(rtt, loss, jitter + more, codec=codec),
        estimate_audio_quality(rtt, loss, jitter, codec=codec, burst_ratio=1 + more / 100),
    ]
    for q in [base, *worse]:
        assert 1.0 <= q.mos <= 4.5
    for q in worse:
        assert q.r <= base.r + 1e-9
        assert q.mos <= base.mos + 1e-12


# Sanity anchors. Working (opus, T = Ta = one-way delay, Tr = 2T, TELR 65, other defaults):
#   R = Ro - Is - Idte - Idle - Idd - Ie,eff = 94.769 - 1.414 - Idte - Idle - Idd - Ie,eff
#   Idte = [(Roe-Re)/2 + sqrt((Roe-Re)^2/4 + 100) - 1](1 - e^-T), Roe = -1.5(No - RLR) = 94.77,
#   Re = 80 + 2.5(TERV - 14), TERV = 65 - 40lg((1 + T/10)/(1 + T/150)) + 6e^(-0.3T^2)
#   Idle = (Ro-Rle)/2 + sqrt((Ro-Rle)^2/4 + 169), Rle = 10.5*117*(2T + 1)^-0.25
#   rtt   20 -> T  56.5: TERV 37.64, Idte 1.15, Rle 376.0, Idle 0.60, Idd  0     -> R 91.60
#   rtt  100 -> T  96.5: TERV 32.54, Idte 1.90, Rle 329.2, Idle 0.72, Idd  0     -> R 90.74
#   rtt  600 -> T 346.5: TERV 23.71, Idte 5.32, Rle 239.4, Idle 1.16, Idd 19.48  -> R 67.39
#   rtt 1500 -> T 796.5: TERV 20.74, Idte 8.02, Rle 194.4, Idle 1.67, Idd 40.76  -> R 42.91
#   rtt 1600 -> T 846.5: TERV 20.59, Idte 8.19, Rle 191.5, Idle 1.72, Idd 41.69  -> R 41.76
#   rtt 40, jitter 60 -> T 20 + 120 + 26.5 = 166.5: Idte 3.07, Idle 0.87, Idd 0.62 -> R 88.79
#   8 % loss at rtt 100: R = 90.74 - 22.96 = 67.77
#     -> MOS = 1 + 0.035*67.77 + 67.77*7.77*32.23*7e-6 = 1 + 2.372 + 0.119 = 3.491
@pytest.mark.parametrize(
    ("rtt", "loss", "jitter", "r", "mos"),
    [
        (20, 0, 0, 91.60, 4.376),  # clean link: MOS > 4.2
        (100, 3, 0, 80.59, 4.046),  # Ie,eff = 95*3/28.1 = 10.14
        (100, 8, 0, 67.77, 3.491),  # brief expected 3.5-3.8; formulas give 3.49
        (100, 30, 0, 39.01, 2.016),  # Ie,eff = 95*30/55.1 = 51.72: MOS < 2.6
        (600, 0, 0, 67.39, 3.472),  # satellite: MOS >= 3.1 with no loss
        (1500, 0, 0, 42.91, 2.209),  # MOS < 3.1
        (1600, 0, 0, 41.76, 2.151),
        (40, 0, 60, 88.79, 4.308),  # 2 x 60 ms jitter buffer
    ],
)
def test_anchor_values(rtt: float, loss: float, jitter: float, r: float, mos: float) -> None:
    q = estimate_audio_quality(rtt, loss, jitter)
    assert q.r == pytest.approx(r, abs=0.01)
    assert q.mos == pytest.approx(mos, abs=0.001)


def test_anchor_bands() -> None:
    assert estimate_audio_quality(20, 0).mos > 4.2
    assert 3.4 < estimate_audio_quality(100, 8).mos < 3.6
    assert 3.4 < estimate_audio_quality(20, 8).mos < 3.6
    assert estimate_audio_quality(100, 30).mos < 2.6
    assert estimate_audio_quality(1500, 0).mos < 3.1
    assert estimate_audio_quality(600, 0).mos >= 3.1


# --------------------------------------------------------------------------- bursty loss, Opus


def test_bursty_loss_rates_lower_than_random_loss_at_the_same_ppl() -> None:
    # rtt 100 (R 90.74 with no loss, anchors above), 8 % loss:
    #   random:    Ie,eff = 95*8/(8 + 25.1)   = 22.961 -> R 67.77
    #   BurstR 2:  Ie,eff = 95*8/(4 + 25.1)   = 26.117 -> R 64.62
    #   BurstR 8:  Ie,eff = 95*8/(1 + 25.1)   = 29.119 -> R 61.62
    random_q = estimate_audio_quality(100, 8)
    assert random_q.r == pytest.approx(67.77, abs=0.01)
    assert estimate_audio_quality(100, 8, burst_ratio=2).r == pytest.approx(64.62, abs=0.01)
    bursty = estimate_audio_quality(100, 8, burst_ratio=8)
    assert bursty.r == pytest.approx(61.62, abs=0.01)
    assert bursty.mos < random_q.mos
    # no loss: burstiness of nothing changes nothing
    assert estimate_audio_quality(100, 0, burst_ratio=8).r == estimate_audio_quality(100, 0).r


def test_burst_ratio_is_passed_through_for_the_direction_that_rates_worse() -> None:
    # up 3 % random: Ie,eff = 95*3/28.1 = 10.14; down 2.8 % at BurstR 8:
    # 95*2.8/(0.35 + 25.1) = 10.45. Down loses less but rates worse: its BurstR is reported.
    fields = audio_fields(100, [3.0, 2.8], [0.0, 0.0], [1.0, 8.0])
    down = estimate_audio_quality(100, 2.8, burst_ratio=8).mos
    assert fields["burst_ratio"] == 8.0 and fields["mos_audio"] == down
    assert down < estimate_audio_quality(100, 3.0).mos
    # Without burst ratios: the worst loss, as before (BurstR 1)
    assert audio_mos(100, [3.0, 2.8], [0.0, 0.0]) == estimate_audio_quality(100, 3.0).mos
    # A burst ratio outside [1, 8] is clamped, a missing one is 1; no loss measured: None
    assert audio_fields(100, [2.0, None], [None, None], [50.0])["burst_ratio"] == 8.0
    assert audio_fields(100, [None, None], [None, None], [3.0]) == {
        "mos_audio": estimate_audio_quality(100, 0).mos, "burst_ratio": None}
    assert audio_fields(None, [1.0, 1.0], [0.0, 0.0], [2.0, 2.0]) == {
        "mos_audio": None, "burst_ratio": None}


@given(_rtt, _loss, _loss, st.floats(1, 8), st.floats(1, 8))
def test_burst_ratios_never_raise_the_mos(rtt: float, up: float, down: float, bu: float,
                                          bd: float) -> None:
    with_bursts = audio_fields(rtt, [up, down], [0.0, 0.0], [bu, bd])
    bursty, plain = with_bursts["mos_audio"], audio_mos(rtt, [up, down], [0.0, 0.0])
    assert bursty is not None and plain is not None and bursty <= plain + 1e-12
    assert with_bursts["burst_ratio"] in (bu, bd)


def test_opus_is_rated_like_g711_with_plc_by_assumption() -> None:
    # Documented in emodel._CODECS and config/thresholds.toml: no published Opus value on
    # the narrowband scale at a call's bitrate. Changing this changes what min_mos means.
    opus, g711 = emodel._CODECS["opus"], emodel._CODECS["g711"]
    assert (opus.ie, opus.bpl) == (g711.ie, g711.bpl) == (0.0, 25.1)
    assert opus.lookahead_ms == 6.5 and g711.lookahead_ms == 0.0

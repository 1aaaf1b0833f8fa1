"""ITU-T G.107 E-model: transmission rating R and estimated MOS for a voice call.

Pure maths, no I/O. Follows Recommendation ITU-T G.107 (06/2015), clause 7:

    R = Ro - Is - Id - Ie,eff + A                                      (7.1)

Ro (7.2) is the basic signal-to-noise ratio, Is (7.3) the impairments simultaneous
with speech, Id (7.4) the delay impairments, Ie,eff (7.5) the equipment and
packet-loss impairment and A (7.6) the advantage factor. With every input at its
G.107 Table 1 default (7.7), R = 93.2. Annex B maps R to an estimated MOS.

Units are explicit and checked: delays in milliseconds, packet loss in PERCENT
(1 % loss is ``Ppl=1``, not ``0.01``), levels in dB / dBm0p / dB(A).

Bursty loss enters through BurstR (7.5), measured from the probes' loss runs
(`netprobe.core.lossruns`). Codecs: G.711 with PLC from G.113 Appendix I; Opus has no
value on this (narrowband) scale at a voice call's bitrate and is ASSUMED to rate like
G.711 with PLC: see `_CODECS` for the values that were found and why they are not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

__all__ = [
    "AudioQuality",
    "EModelParams",
    "estimate_audio_quality",
    "idd",
    "ie_eff",
    "mos_from_r",
    "r_factor",
]


def _require(
    name: str, value: float, low: float = -math.inf, high: float = math.inf, *, above: bool = False
) -> None:
    """Raise ValueError unless value is finite and in [low, high] (in (low, high] if above)."""
    if not (math.isfinite(value) and (low < value if above else low <= value) and value <= high):
        bound = f"> {low}" if above else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class EModelParams:
    """Every input of the G.107 E-model, defaulting to G.107 Table 1 (R = 93.2).

    Names are G.107's own symbols. G.107 Table 1 also gives permitted ranges (e.g.
    Ppl 0-20 %, T and Ta 0-500 ms, Tr 0-1000 ms); values outside them are accepted
    here but are extrapolation beyond what the model was validated for.
    """

    SLR: float = 8.0
    """Send loudness rating, dB."""
    RLR: float = 2.0
    """Receive loudness rating, dB."""
    STMR: float = 15.0
    """Sidetone masking rating, dB."""
    LSTR: float = 18.0
    """Listener sidetone rating, dB (G.107: LSTR = STMR + Dr)."""
    Ds: float = 3.0
    """D-value of the telephone, send side (dimensionless)."""
    Dr: float = 3.0
    """D-value of the telephone, receive side (dimensionless; enters only via LSTR)."""
    TELR: float = 65.0
    """Talker echo loudness rating, dB."""
    WEPL: float = 110.0
    """Weighted echo path loss, dB."""
    T: float = 0.0
    """Mean one-way delay of the echo path, ms."""
    Tr: float = 0.0
    """Round-trip delay in a 4-wire loop (listener echo), ms."""
    Ta: float = 0.0
    """Absolute one-way (mouth-to-ear) delay in echo-free connections, ms."""
    qdu: float = 1.0
    """Number of quantizing distortion units (dimensionless, > 0)."""
    Ie: float = 0.0
    """Equipment impairment factor of the codec at zero loss (dimensionless)."""
    Bpl: float = 4.3
    """Packet-loss robustness factor of the codec (dimensionless, > 0)."""
    Ppl: float = 0.0
    """Random packet-loss probability in PERCENT, 0-100 (1 % loss -> 1.0)."""
    BurstR: float = 1.0
    """Burst ratio (dimensionless, > 0): 1 for random loss, > 1 for bursty loss."""
    Nc: float = -70.0
    """Circuit noise referred to the 0 dBr point, dBm0p."""
    Nfor: float = -64.0
    """Noise floor at the receive side, dBmp."""
    Ps: float = 35.0
    """Room noise at the send side, dB(A)."""
    Pr: float = 35.0
    """Room noise at the receive side, dB(A)."""
    A: float = 0.0
    """Advantage (expectation) factor (dimensionless, 0 for wired telephony)."""
    mT: float = 100.0
    """Delay in ms below which Idd is 0 (the 'minimum perceivable delay', > 0)."""
    sT: float = 1.0
    """Sensitivity of Idd to delay (dimensionless, > 0)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _require(f.name, getattr(self, f.name))
        for name in ("T", "Tr", "Ta"):
            _require(name, getattr(self, name), 0.0)
        for name in ("qdu", "Bpl", "BurstR", "mT", "sT"):
            _require(name, getattr(self, name), 0.0, above=True)
        _require("Ppl", self.Ppl, 0.0, 100.0)


class _Terms(NamedTuple):  # the terms of R = Ro - Is - Id - Ie,eff + A
    ro: float
    is_: float
    id_: float
    ie_eff: float


def _half_plus_root(x: float, c: float) -> float:
    """x/2 + sqrt(x²/4 + c), in a form with no cancellation when x is very negative."""
    root = math.sqrt(x * x / 4 + c)
    return x / 2 + root if x >= 0 else c / (root - x / 2)


def _terms(p: EModelParams) -> _Terms:
    # 7.2 Basic signal-to-noise ratio.
    olr = p.SLR + p.RLR
    nos = p.Ps - p.SLR - p.Ds - 100 + 0.004 * (p.Ps - olr - p.Ds - 14) ** 2
    pre = p.Pr + 10 * math.log10(1 + 10 ** ((10 - p.LSTR) / 10))
    nor = p.RLR - 121 + pre + 0.008 * (pre - 35) ** 2
    nfo = p.Nfor + p.RLR
    no = 10 * math.log10(sum(10 ** (n / 10) for n in (p.Nc, nos, nor, nfo)))
    ro = 15 - 1.5 * (p.SLR + no)

    # 7.3 Simultaneous impairment factor Is = Iolr + Ist + Iq.
    xolr = olr + 0.2 * (64 + no - p.RLR)
    iolr = 20 * ((1 + (xolr / 8) ** 8) ** (1 / 8) - xolr / 8)
    stmro = -10 * math.log10(10 ** (-p.STMR / 10) + math.exp(-p.T / 4) * 10 ** (-p.TELR / 10))
    ist = (
        12 * (1 + ((stmro - 13) / 6) ** 8) ** (1 / 8)
        - 28 * (1 + ((stmro + 1) / 19.4) ** 35) ** (1 / 35)
        - 13 * (1 + ((stmro - 3) / 33) ** 13) ** (1 / 13)
        + 29
    )
    q = 37 - 15 * math.log10(p.qdu)
    g = 1.07 + 0.258 * q + 0.0602 * q * q
    y = (ro - 100) / 15 + 46 / 8.4 - g / 9
    z = 46 / 30 - g / 40
    iq = 15 * math.log10(1 + 10**y + 10**z)
    is_ = iolr + ist + iq

    # 7.4 Delay impairment factor Id = Idte + Idle + Idd.
    roe = -1.5 * (no - p.RLR)
    terv = p.TELR - 40 * math.log10((1 + p.T / 10) / (1 + p.T / 150)) + 6 * math.exp(-0.3 * p.T**2)
    if p.STMR < 9:  # low sidetone masks less: TERVs = TERV + Ist/2
        terv += ist / 2
    re = 80 + 2.5 * (terv - 14)
    idte = (_half_plus_root(roe - re, 100) - 1) * (1 - math.exp(-p.T))
    if p.STMR > 20:  # high STMR: Idtes = sqrt(Idte² + Ist²) replaces Idte
        idte = math.sqrt(idte * idte + ist * ist)
    rle = 10.5 * (p.WEPL + 7) * (p.Tr + 1) ** -0.25
    idle = _half_plus_root(ro - rle, 169)
    id_ = idte + idle + idd(p.Ta, p.mT, p.sT)

    # 7.5 Effective equipment impairment factor.
    return _Terms(ro, is_, id_, ie_eff(p.Ie, p.Bpl, p.Ppl, p.BurstR))


def r_factor(p: EModelParams) -> float:
    """Transmission rating factor R = Ro - Is - Id - Ie,eff + A (G.107 clause 7.1).

    ``r_factor(EModelParams())`` is 93.2, the G.107 default connection.
    """
    t = _terms(p)
    return t.ro - t.is_ - t.id_ - t.ie_eff + p.A


def mos_from_r(r: float) -> float:
    """Estimated conversational MOS (MOS_CQE) from R, G.107 Annex B.

    1 for R < 0; 4.5 for R > 100; otherwise 1 + 0.035R + R(R-60)(100-R)·7e-6.
    Deviation, by design: that polynomial dips to ~0.99 for 0 < R < ~6.5; the result
    is floored at 1.0 so MOS stays in [1, 4.5] and never rises as R falls.
    """
    _require("r", r)
    if r < 0:
        return 1.0
    if r > 100:
        return 4.5
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)


def ie_eff(ie: float, bpl: float, ppl_pct: float, burst_r: float = 1.0) -> float:
    """Effective equipment impairment Ie,eff (G.107 clause 7.5).

    Ie,eff = Ie + (95 - Ie) · Ppl / (Ppl/BurstR + Bpl), with ``ppl_pct`` the packet
    loss in PERCENT (0-100): 1 % loss is 1.0. Raises ValueError outside that range.
    """
    _require("ie", ie)
    _require("ppl_pct", ppl_pct, 0.0, 100.0)
    _require("bpl", bpl, 0.0, above=True)
    _require("burst_r", burst_r, 0.0, above=True)
    return ie + (95 - ie) * ppl_pct / (ppl_pct / burst_r + bpl)


def idd(ta_ms: float, m_t: float = 100.0, s_t: float = 1.0) -> float:
    """Impairment from absolute one-way delay Ta in ms (G.107 clause 7.4).

    0 for Ta <= mT; else 25{(1+X^6sT)^(1/6sT) - 3(1+(X/3)^6sT)^(1/6sT) + 2} with
    X = log2(Ta/mT). Rises monotonically towards 50 as Ta grows.
    """
    _require("ta_ms", ta_ms, 0.0)
    _require("m_t", m_t, 0.0, above=True)
    _require("s_t", s_t, 0.0, above=True)
    if ta_ms <= m_t:
        return 0.0
    x = math.log2(ta_ms / m_t)
    k = 6 * s_t
    return 25 * (math.pow(1 + x**k, 1 / k) - 3 * math.pow(1 + (x / 3) ** k, 1 / k) + 2)


class _Codec(NamedTuple):
    ie: float
    bpl: float
    frame_ms: float
    lookahead_ms: float


# ITU-T G.113 Appendix I: G.711 has Ie 0, and Bpl 25.1 with packet-loss concealment
# under random loss. Opus: ASSUMPTION, rated like G.711 with PLC (Ie 0, Bpl 25.1).
# Searched for published values (G.113 and its appendices, E-model studies of Opus):
# - The stored copies of G.113 (2001 contents, 11/2007) predate Opus (RFC 6716, 2012);
#   later editions' wideband (Appendix IV, Ie,wb) and fullband (Appendix V, Ie,FB)
#   tables were not found in a stored copy.
# - Alahmadi, Pocta & Melvin, "An Adaptive Bitrate Switching Algorithm for Speech
#   Applications in Context of WebRTC", ACM TOMM 17(4):133, 2021 (doi 10.1145/3458751),
#   with the first author's table (github.com/mohaoahmadi/Opus_Codec_Quality_Evaluation),
#   give Ie and Bpl per Opus bitrate, but on the narrowband scale only for narrowband Opus
#   at 6-11 kbit/s (e.g. 11 kbit/s CBR: Ie 2.0, Bpl 16.0 random loss). At a WebRTC voice
#   call's 24-40 kbit/s they give super-wideband values only (40 kbit/s VBR: Ie 10.7,
#   Bpl 9.8; 31 kbit/s: Ie 16.8, Bpl 10.4), on the scale of the G.107.2 super-wideband /
#   fullband E-model, which this narrowband model does not implement; its mapping to the
#   narrowband MOS that min_mos / good_mos use was not found in a stored copy. What was
#   read does not say whether Opus in-band FEC (which browsers offer) was on.
# - "Derivation of Equipment Impairment Factors from ITU-T P.863 for Fullband Speech
#   Codecs" (conference abstract, cms.memyc.org, undated): "the Opus codec in fullband
#   mode, for which currently no Ie,FB values are available".
# So G.711 with PLC stays. CAUTION: every published Opus Bpl found is below 25.1 (more
# sensitive to loss), so under loss this may rate Opus too well; bursty loss is allowed
# for separately, by BurstR. Lookahead: Opus 6.5 ms (its 26.5 ms algorithmic delay at
# 20 ms frames, RFC 6716); G.711 none. Both are sent as 20 ms frames.
_CODECS: dict[str, _Codec] = {
    "g711": _Codec(ie=0.0, bpl=25.1, frame_ms=20.0, lookahead_ms=0.0),
    "opus": _Codec(ie=0.0, bpl=25.1, frame_ms=20.0, lookahead_ms=6.5),
}

MIN_JITTER_BUFFER_MS = 20.0
"""Smallest de-jitter buffer assumed, ms; otherwise the buffer holds 2 x jitter."""


@dataclass(frozen=True)
class AudioQuality:
    """E-model estimate of audio call quality for measured network figures."""

    r: float
    """Transmission rating factor R (G.107); 93.2 is a perfect narrowband call."""
    mos: float
    """Estimated conversational MOS, 1 (bad) to 4.5 (best narrowband), G.107 Annex B."""
    one_way_delay_ms: float
    """Mouth-to-ear one-way delay used as T and Ta, ms (Tr = 2 x this)."""
    loss_pct: float
    """Packet loss used as Ppl, in percent (0-100)."""
    codec: str
    """Codec whose Ie/Bpl and frame delay were used ("g711" or "opus")."""


def estimate_audio_quality(
    rtt_ms: float,
    loss_pct: float,
    jitter_ms: float = 0.0,
    *,
    codec: str = "opus",
    burst_ratio: float = 1.0,
) -> AudioQuality:
    """Estimate R and MOS of a voice call from network round-trip time, loss and jitter.

    One-way delay T = Ta = rtt_ms/2 + max(2·jitter_ms, 20 ms) de-jitter buffer + codec
    frame + lookahead; Tr = 2T. Echo is assumed well controlled (TELR 65 dB, the G.107
    default); all other inputs keep G.107 defaults. ``loss_pct`` is in PERCENT (0-100),
    ``burst_ratio`` the G.107 BurstR (1 = random loss, `core.lossruns`). Codecs: "g711"
    (G.113: Ie 0, Bpl 25.1 with PLC) and "opus", for which no narrowband value at a call's
    bitrate was found: ASSUMED to be like G.711 with PLC (Ie 0, Bpl 25.1; `_CODECS`).
    Raises ValueError on negative or non-finite delays, loss outside 0-100 %,
    burst_ratio <= 0 or an unknown codec.
    """
    _require("rtt_ms", rtt_ms, 0.0)
    _require("jitter_ms", jitter_ms, 0.0)
    _require("loss_pct", loss_pct, 0.0, 100.0)
    _require("burst_ratio", burst_ratio, 0.0, above=True)
    name = codec.lower()
    if name not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(sorted(_CODECS))}")
    c = _CODECS[name]
    one_way = rtt_ms / 2 + max(2 * jitter_ms, MIN_JITTER_BUFFER_MS) + c.frame_ms + c.lookahead_ms
    p = EModelParams(
        T=one_way, Tr=2 * one_way, Ta=one_way, Ie=c.ie, Bpl=c.bpl, Ppl=loss_pct, BurstR=burst_ratio
    )
    r = r_factor(p)
    return AudioQuality(r, mos_from_r(r), one_way, loss_pct, name)

"""How a connection attempt stands, judged from what it measured: pure, `now` passed in.

While the direct path connects, the client sends its own STUN Binding requests to the
reflector's candidates (a few per second, beside ICE's own checks) and counts how many are
answered, and every STUN packet that comes back at all. That is the evidence for two answers a
check could not give before (docs/check-format.md, "Paths"):

- **UDP blocked**: signalling reached the reflector, but not one UDP packet came back within
  `DIRECT_WINDOW_S` of the answer, although `MIN_BLOCKED_SENT` requests went out. On a link that
  is merely terrible (45 % loss each way, 70 % of round trips lost) the chance that 30 requests
  all go unanswered is 0.7^30, about 2 in 100 000, and the reflector's own checks come back too.
- **Too lossy to connect**: requests are answered, but so few that the link's loss alone puts
  a voice call below the audio limit, with `LOSSY_CONFIDENCE` or more, while ICE or DTLS has
  still not finished. A link that cannot set up a test stream cannot hold a call: `phone`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from netprobe.core.classify import PHONE, AudioThresholds, Reason, Verdict, format_mbps
from netprobe.core.emodel import estimate_audio_quality
from netprobe.core.words import N_, Phrase

DIRECT_WINDOW_S = 2.0
"""How long after the answer the direct path gets before a check that has had no UDP packet
back at all calls UDP blocked (and moves to a relay, when the reflector offers one); longer
when the offer's own HTTP exchange took longer than 1 s (`ConnectEvidence.window_s`)."""
RELAY_WINDOW_S = 1.2
"""The same window once a relay has allocated: calling UDP blocked wrongly then costs only a
check measured over the relay (still right for the link), not a wrong `unknown`."""
MIN_BLOCKED_SENT_RELAY = 20
"""STUN requests that must have gone unanswered before moving to a relay that is ready."""
RELAY_PREPARE_AFTER_S = 0.5
"""With nothing back this long after the answer, the client starts allocating on the relays
(in parallel, without offering yet), so that a relay is ready when the window ends."""
MIN_BLOCKED_SENT = 30
"""STUN requests that must have gone unanswered before UDP is called blocked."""
SETTLE_S = 1.0
"""A request counts as lost only once it is this old (or 3 round trips, if longer)."""
MIN_LOSSY_S = 3.0
"""Evidence of heavy loss is weighed only after this long since the answer."""
MIN_LOSSY_SETTLED = 30
"""...and once this many requests have settled (answered, or old enough to count as lost)."""
LOSSY_CONFIDENCE = 0.99
"""How sure the evidence must be that the loss puts audio below its limit."""

Judgement = Literal["wait", "udp_blocked", "too_lossy"]


@dataclass(frozen=True)
class ConnectEvidence:
    """What the direct connection attempt measured so far."""

    since_s: float
    """Seconds since the reflector's answer was applied (when probing began)."""
    sent: int
    """STUN Binding requests the client sent (its own probes)."""
    settled: int
    """Of them, those answered or old enough to count as lost."""
    answered: int
    """Of them, those answered."""
    inbound: int
    """STUN packets of any kind that came back from the reflector (its own ICE checks too)."""
    rtt_ms: float | None = None
    """Median round trip of the answered requests."""
    answer_s: float = 0.0
    """How long the offer's HTTP exchange took (at least a round trip or two): on a link
    slower than that, the window for UDP to come back grows with it (`window_s`)."""
    relay_ready: bool = False
    """A relay has allocated and could take the check at once."""

    @property
    def window_s(self) -> float:
        """How long UDP gets to come back before it is called blocked."""
        return max(RELAY_WINDOW_S if self.relay_ready else DIRECT_WINDOW_S,
                   self.answer_s + 1.0)

    @property
    def round_trip_success(self) -> float | None:
        """The share of settled requests that were answered."""
        return self.answered / self.settled if self.settled else None

    @property
    def loss_pct(self) -> float | None:
        """One-way loss, percent, if both directions lose alike: 1 - sqrt(success)."""
        s = self.round_trip_success
        return None if s is None else 100 * (1 - math.sqrt(s))

    def to_json(self) -> dict[str, object]:
        loss = self.loss_pct
        return {"stun_sent": self.sent, "stun_settled": self.settled,
                "stun_answered": self.answered, "udp_from_server": self.inbound,
                "probed_s": round(self.since_s, 2),
                "loss_pct": None if loss is None else round(loss, 1),
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1)}

    def tcp_json(self) -> dict[str, object]:
        """The same figures for TCP handshakes (`answered`: completed at the first try)."""
        loss = self.loss_pct
        return {"sent": self.sent, "settled": self.settled, "first_try": self.answered,
                "completed": self.inbound, "probed_s": round(self.since_s, 2),
                "loss_pct": None if loss is None else round(loss, 1)}


def audio_loss_limit_pct(t: AudioThresholds, rtt_ms: float | None) -> float:
    """The one-way random loss, percent, at which the E-model puts a voice call at `rtt_ms`
    exactly at the audio limit (`min_mos`); 0 if even no loss is below it."""
    rtt = 0.0 if rtt_ms is None or not math.isfinite(rtt_ms) else max(0.0, rtt_ms)
    if estimate_audio_quality(rtt, 0.0).mos < t.min_mos:
        return 0.0
    lo, hi = 0.0, 100.0
    for _ in range(40):  # MOS falls as loss grows: bisect
        mid = (lo + hi) / 2
        if estimate_audio_quality(rtt, mid).mos >= t.min_mos:
            lo = mid
        else:
            hi = mid
    return lo


def too_lossy_confidence(e: ConnectEvidence, t: AudioThresholds) -> float:
    """How sure the evidence is that the link's loss alone puts audio below its limit: the
    normal approximation of P(round-trip success < the success at the loss limit)."""
    s = e.round_trip_success
    if s is None:
        return 0.0
    limit = audio_loss_limit_pct(t, e.rtt_ms) / 100
    s_limit = (1 - limit) ** 2
    n = e.settled
    spread = math.sqrt(max(s * (1 - s), 1 / n) / n)  # never 0: all or none answered
    z = (s_limit - s) / spread
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def combined(stun: ConnectEvidence | None, tcp: ConnectEvidence | None) -> ConnectEvidence:
    """Both kinds of round trips as one sample of the link's loss (a TCP handshake, like a
    STUN check, is a small packet each way): the counts added, the longer time span, the
    STUN figures' round trip (the TCP one includes the reflector's accept)."""
    if stun is None or tcp is None:
        found = stun or tcp
        return found if found is not None else ConnectEvidence(0.0, 0, 0, 0, 0)
    return ConnectEvidence(since_s=max(stun.since_s, tcp.since_s), sent=stun.sent + tcp.sent,
                           settled=stun.settled + tcp.settled,
                           answered=stun.answered + tcp.answered,
                           inbound=stun.inbound + tcp.inbound,
                           rtt_ms=stun.rtt_ms if stun.rtt_ms is not None else tcp.rtt_ms,
                           answer_s=stun.answer_s, relay_ready=stun.relay_ready)


def _too_lossy(e: ConnectEvidence, t: AudioThresholds) -> bool:
    return e.since_s >= MIN_LOSSY_S and e.settled >= MIN_LOSSY_SETTLED \
        and too_lossy_confidence(e, t) >= LOSSY_CONFIDENCE


def judge_signalling(tcp: ConnectEvidence, t: AudioThresholds) -> Judgement:
    """While the offer waits for its answer: `too_lossy` when the client's TCP handshakes
    with the reflector (`webrtc/tcpprobe.py`) show loss too heavy for a call, else `wait`.
    Nothing back at all says nothing here: the reflector may be down."""
    if tcp.answered == 0:
        return "wait"
    return "too_lossy" if _too_lossy(tcp, t) else "wait"


def judge_direct(e: ConnectEvidence, t: AudioThresholds,
                 before: ConnectEvidence | None = None) -> Judgement:
    """What the direct attempt's evidence says now: keep waiting, UDP is blocked, or the link
    loses too much to hold a call. `before`: the TCP handshakes' evidence from signalling,
    which counts towards the loss (never towards UDP being blocked)."""
    if e.inbound == 0 and e.answered == 0:
        if e.since_s >= e.window_s and e.sent >= (
                MIN_BLOCKED_SENT_RELAY if e.relay_ready else MIN_BLOCKED_SENT):
            return "udp_blocked"
        return "wait"
    return "too_lossy" if _too_lossy(combined(e, before), t) else "wait"


def judge_final(e: ConnectEvidence, t: AudioThresholds,
                before: ConnectEvidence | None = None) -> Judgement | Literal["timeout"]:
    """The verdict on a direct attempt whose time ran out without a connection."""
    if e.inbound == 0 and e.answered == 0:
        return "udp_blocked" if e.sent >= MIN_BLOCKED_SENT else "timeout"
    return "too_lossy" if _lossy_estimate(combined(e, before), t) else "timeout"


def judge_signalling_final(tcp: ConnectEvidence, t: AudioThresholds) -> bool:
    """At the connect timeout with no answer yet: True if the TCP handshakes that did
    complete show, by their estimate alone, loss too heavy for a call."""
    return tcp.answered > 0 and tcp.settled >= MIN_LOSSY_SETTLED // 2 \
        and _lossy_estimate(tcp, t)


def _lossy_estimate(e: ConnectEvidence, t: AudioThresholds) -> bool:
    loss = e.loss_pct
    return loss is not None and loss >= audio_loss_limit_pct(t, e.rtt_ms)


# -- the words ---------------------------------------------------------------------------------

RELAY_PATHS = ("relay_udp", "relay_tcp", "relay_tls")
PATHS = ("direct", *RELAY_PATHS)


def _speed_words(tcp: dict[str, object] | None) -> Phrase | None:
    """The sentence on what the TCP test measured ("Your internet works: about 12 Mbit/s down
    and at least 3.1 Mbit/s up over an ordinary web connection."), or None. The quick test's
    upload reads low (a new connection for each short upload: docs/reflector.md, "TCP speed
    test"), hence "at least" for it."""
    if not tcp:
        return None
    rates = {}
    for key in ("down_kbps", "up_kbps"):
        value = tcp.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            rates[key[:-5]] = format_mbps(float(value))
    quick = tcp.get("mode") == "quick"
    if "down" in rates and "up" in rates:
        return Phrase.of(_BOTH_QUICK if quick else _BOTH, **rates)
    if "down" in rates:
        return Phrase.of(_DOWN_ONLY, **rates)
    if "up" in rates:
        return Phrase.of(_UP_ONLY_QUICK if quick else _UP_ONLY, **rates)
    return None


_BOTH = N_("Your internet works: about {down} Mbit/s down and {up} Mbit/s up over an "
           "ordinary web connection.")
_BOTH_QUICK = N_("Your internet works: about {down} Mbit/s down and at least {up} Mbit/s up "
                 "over an ordinary web connection.")
_DOWN_ONLY = N_("Your internet works: about {down} Mbit/s down over an ordinary web "
                "connection.")
_UP_ONLY = N_("Your internet works: about {up} Mbit/s up over an ordinary web connection.")
_UP_ONLY_QUICK = N_("Your internet works: at least {up} Mbit/s up over an ordinary web "
                    "connection.")


def udp_blocked_reason(tcp: dict[str, object] | None) -> Reason:
    """`udp_blocked` when no relay got through either: the check has no figures."""
    works = _speed_words(tcp) or Phrase.of(
        N_("Your connection reached the clinic's test server."))
    return Reason.of(
        "udp_blocked",
        N_("{works} But the network you are on blocks the kind of connection video calls "
           "use, so the test could not run. Your video app may still connect through a relay, "
           "often with a less steady picture. If it does not connect, try another network "
           "(for example your phone's mobile data), or call your therapist by phone."),
        works=works)


def relayed_reason(path: str) -> Reason | None:
    """The note for a check that went through the clinic's relay (None for `direct`)."""
    if path in ("relay_tcp", "relay_tls"):
        return Reason.of(
            "udp_blocked",
            N_("Your network blocks the usual path for video calls, so netprobe reached the "
               "clinic through a relay over an ordinary web connection, and measured that "
               "way. Your video app can work like this too if it can use a relay (most can), "
               "but calls through a relay stutter more easily; if yours struggles, switch to "
               "audio or try another network."))
    if path == "relay_udp":
        return Reason.of(
            "relayed",
            N_("Your network does not let the test reach the clinic directly, so it went "
               "through the clinic's relay. Video apps usually do the same on such a network, "
               "so the result still applies."))
    return None


def too_lossy_verdict(e: ConnectEvidence, t: AudioThresholds) -> Verdict:
    """`phone`: the link lost so much that the test stream could not be set up."""
    loss = e.loss_pct
    tail = N_("Please call your therapist by phone. Moving closer to your Wi-Fi router, or "
              "another network, may help later.")
    if loss is None:
        reason = Reason.of("too_lossy_to_connect", N_(
            "Your connection is losing so much that even a short test stream could not be set "
            "up, so it cannot hold a video or voice call now. {then}"), then=Phrase.of(tail))
    else:
        reason = Reason.of("too_lossy_to_connect", N_(
            "Your connection is losing so much (about {n} in 10 of the test signals were lost "
            "each way) that even a short test stream could not be set up, so it cannot hold a "
            "video or voice call now. {then}"), n=max(1, round(loss / 10)),
            then=Phrase.of(tail))
    return Verdict(PHONE, round(min(0.99, too_lossy_confidence(e, t)), 2), (reason,))

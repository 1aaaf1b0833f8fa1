"""Loss runs of a packet stream and the E-model's burst ratio BurstR (pure, incremental).

`LossRuns` is fed each packet's fate (received or lost) in sequence order and fits the
2-state Markov model behind the burst ratio BurstR of ITU-T G.107 (clause 7.5, Ie,eff):
a "found" and a "loss" state, with

    p = P(packet lost | previous packet received)
    q = P(packet received | previous packet lost)
    BurstR = 1 / (p + q)

estimated from the transitions counted (p = found->loss / transitions out of "found",
q = loss->found / transitions out of "loss"). It is 1 for random (Bernoulli) loss, where
q = 1 - p, and above 1 when losses cluster: 1/q is the mean length of a loss run.

BurstR is the mean length of the loss runs observed divided by the mean length expected
under random loss at the same loss rate, 1 / (1 - loss); for a 2-state Markov model that
is 1/(p + q). Sources: McGowan, "Burst Ratio: a measure of bursty loss on
packet-based networks" (patent application, 2005; patentalert.com copy), which gives both
forms; Chydzinski & Samociuk, "Burst ratio in a single-server queue", Telecommunication
Systems 70 (2019): B = G(1 - L), G the mean observed loss-run length. That G.107 clause 7.5
states the same was not verified: its text was not found in a stored copy.

Small samples: with no loss seen BurstR is 1; when no transition out of one of the states
was seen (p or q unknown: every packet lost, or only losses before the first packet
received) the definition above (mean run length x share received) is used. Every result
is clamped to [1, `MAX_BURST_RATIO`]: loss that is *less* clustered than random
(BurstR < 1) is rated as random, never better; one long outage in a short stream cannot
push the E-model past the range it was validated for.

Reordering: callers feed fates in sequence order once settled. The check and the agent's
windows do it from echoes sorted by sequence number (an overtaken echo takes its own place
when it arrives: the figures are recomputed), and for the uplink from the reflector's
settled counters, which count a probe lost only after `REORDER_WINDOW` later ones arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BURST_RATIO", "LossRuns"]

#: Largest burst ratio reported: the upper end of the range G.107 Table 1 permits for BurstR
#: (1-8; not verified in a stored copy of the Recommendation).
MAX_BURST_RATIO = 8.0


@dataclass
class LossRuns:
    """Counts of the fates of a stream's packets and of their transitions, in order."""

    received: int = 0
    """Packets received."""
    lost: int = 0
    """Packets lost."""
    loss_runs: int = 0
    """Runs of consecutive losses begun (a run cut by `pause` counts as two)."""
    found_to_found: int = 0
    found_to_loss: int = 0
    loss_to_found: int = 0
    loss_to_loss: int = 0
    _last: bool | None = None  # fate of the latest packet (True = received), None = no link

    def add(self, received: bool, count: int = 1) -> None:
        """Record `count` consecutive packets that all had the same fate (O(1) whatever the
        count, lesson 11: a sequence number jump can stand for a huge run)."""
        if count <= 0:
            return
        if received:
            self.received += count
            self.found_to_found += count - 1
        else:
            self.lost += count
            self.loss_to_loss += count - 1
        if self._last is None or self._last != received:
            if not received:
                self.loss_runs += 1
            if self._last is not None:
                if received:
                    self.loss_to_found += 1
                else:
                    self.found_to_loss += 1
        elif received:
            self.found_to_found += 1
        else:
            self.loss_to_loss += 1
        self._last = received

    def add_stretch(self, total: int, lost: int) -> None:
        """Record a stretch of `total` packets of which `lost` were lost, positions unknown:
        taken as the losses first, then the rest received (a stretch between two of the
        reflector's settled counters is one or two probes: the order hardly matters)."""
        total = max(0, total)
        lost = min(max(0, lost), total)
        self.add(False, lost)
        self.add(True, total - lost)

    def pause(self) -> None:
        """The next packet does not follow the latest one: a stretch that is not counted (a
        loaded period) lies between, so no transition is counted across it."""
        self._last = None

    @property
    def p(self) -> float | None:
        """P(lost | previous received); None before any transition out of "received"."""
        n = self.found_to_found + self.found_to_loss
        return self.found_to_loss / n if n else None

    @property
    def q(self) -> float | None:
        """P(received | previous lost); None before any transition out of "lost"."""
        n = self.loss_to_found + self.loss_to_loss
        return self.loss_to_found / n if n else None

    @property
    def burst_ratio(self) -> float:
        """G.107 BurstR of what was recorded, in [1, `MAX_BURST_RATIO`]; 1 with no loss."""
        if self.lost == 0:
            return 1.0
        p, q = self.p, self.q
        if p is not None and q is not None and p + q > 0:
            value = 1.0 / (p + q)
        else:  # the definition: mean loss-run length / its expectation under random loss
            value = self.lost / self.loss_runs * self.received / (self.received + self.lost)
        return min(MAX_BURST_RATIO, max(1.0, value))


"""Token buckets for the link model: the policers and shapers of ISPs and mobile plans.

Pure, like `netprobe.lab.link`: every method that depends on time takes ``now``. A bucket
holds up to ``burst_bytes`` tokens (bytes) and refills at ``rate_kbps``; a packet of ``size``
IP bytes needs ``size`` tokens. What happens to a packet that finds too few tokens is the
link's business (`Link` in ``link.py``): a **policer** drops it, a **shaper** holds it in its
queue until the tokens are there. Either way a full bucket lets a burst of ``burst_bytes``
through at the line rate, and a link offered more than ``rate_kbps`` delivers ``rate_kbps`` in
the long run: the conditions that Flach et al. measured on about 7 % of lossy flows worldwide
("An Internet-Wide Analysis of Traffic Policing", SIGCOMM 2016), and that mobile plans apply
after a data quota.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from netprobe.errors import ConfigError

#: The smallest bucket: one full-size IP packet (a smaller one could never pass such a packet).
MIN_BURST_BYTES = 1500


@dataclass(frozen=True)
class TokenBucket:
    """A token bucket's settings: the sustained rate and the depth of the bucket."""

    rate_kbps: float
    """Sustained rate: tokens refill at this many kbit/s (1000 bit/s) of IP bytes."""
    burst_bytes: int
    """Depth of the bucket in bytes: the burst that passes at the line rate after idle."""

    def __post_init__(self) -> None:
        if isinstance(self.rate_kbps, bool) or not isinstance(self.rate_kbps, int | float) or \
                not (self.rate_kbps > 0 and math.isfinite(self.rate_kbps)):
            raise ConfigError(f"rate_kbps must be a finite number > 0, got {self.rate_kbps!r}")
        if isinstance(self.burst_bytes, bool) or not isinstance(self.burst_bytes, int) or \
                self.burst_bytes < MIN_BURST_BYTES:
            raise ConfigError(
                f"burst_bytes must be a whole number >= {MIN_BURST_BYTES} (one full-size "
                f"packet), got {self.burst_bytes!r}"
            )

    @property
    def bytes_per_s(self) -> float:
        """The refill rate in bytes per second."""
        return self.rate_kbps * 1000.0 / 8.0

    def cost(self, size: int) -> int:
        """Tokens a packet of ``size`` IP bytes takes: its size, at most a full bucket (so a
        packet larger than the bucket waits for a full one instead of for ever)."""
        return min(size, self.burst_bytes)


class BucketFill:
    """How many tokens a bucket holds, over time. Starts full at ``now``.

    The fill is kept as ``(tokens, at)``: the level at time ``at``, refilling linearly from
    there up to the depth. Times before ``at`` are treated as ``at`` (the fill never runs
    backwards), so the caller may ask about any time without breaking the invariant.
    """

    def __init__(self, bucket: TokenBucket, now: float) -> None:
        self._bucket = bucket
        self._tokens = float(bucket.burst_bytes)
        self._at = now

    @property
    def bucket(self) -> TokenBucket:
        """The settings in force."""
        return self._bucket

    def level(self, now: float) -> float:
        """Tokens (bytes) in the bucket at ``now``."""
        refill = max(0.0, now - self._at) * self._bucket.bytes_per_s
        return min(float(self._bucket.burst_bytes), self._tokens + refill)

    def take(self, size: int, now: float) -> bool:
        """Policer: take ``size`` tokens at ``now`` if the bucket holds them (True), else take
        nothing (False: the packet is dropped)."""
        level = self.level(now)
        self._at = max(self._at, now)
        if level >= size:
            self._tokens = level - size
            return True
        self._tokens = level
        return False

    def ready_at(self, size: int) -> float:
        """Shaper: the earliest time at which the bucket holds the tokens for ``size`` bytes
        (``cost(size)``), if nothing else takes any. At or after the last update."""
        deficit = self._bucket.cost(size) - self._tokens
        if deficit <= 0:
            return self._at
        return self._at + deficit / self._bucket.bytes_per_s

    def spend(self, size: int, now: float) -> None:
        """Shaper: take ``cost(size)`` tokens at ``now`` (>= `ready_at`). The level may end a
        rounding error below zero; it is not clipped, so rounding never creates tokens."""
        level = self.level(now)
        self._at = max(self._at, now)
        self._tokens = level - self._bucket.cost(size)

    def reconfigure(self, bucket: TokenBucket, now: float) -> None:
        """Switch to ``bucket`` at ``now``, keeping the fill: the tokens held at ``now`` under
        the old settings stay, capped at the new depth, and refill at the new rate."""
        self._tokens = min(self.level(now), float(bucket.burst_bytes))
        self._at = max(self._at, now)
        self._bucket = bucket


@dataclass(frozen=True)
class BucketFit:
    """What a stream offered above a bucket's rate says about the bucket."""

    sustained_kbps: float
    """Delivery rate over the tail of the stream (kbit/s of IP bytes)."""
    burst_bytes: float
    """Bytes delivered beyond the sustained rate since the first arrival: the intercept of
    delivered bytes over time, i.e. the bucket's depth."""


def fit_bucket(arrivals: list[tuple[float, int]], tail_from: float = 0.5) -> BucketFit:
    """Fit a bucket to ``(arrival time, IP bytes)`` of a stream offered above its sustained
    rate for long enough to empty it. The sustained rate is the delivery rate over the arrivals
    after ``tail_from`` of their span; the burst is what was delivered beyond that rate, since
    the first arrival. Raises ValueError with fewer than two arrivals in the tail."""
    ordered = sorted(arrivals)
    if len(ordered) < 4:
        raise ValueError("too few arrivals to fit a bucket")
    t0, t_end = ordered[0][0], ordered[-1][0]
    tail = [a for a in ordered if a[0] >= t0 + tail_from * (t_end - t0)]
    span = tail[-1][0] - tail[0][0]
    if len(tail) < 2 or span <= 0:
        raise ValueError("too few arrivals in the tail to fit a bucket")
    rate = sum(size for _, size in tail[1:]) / span  # bytes per second
    total = sum(size for _, size in ordered)
    return BucketFit(sustained_kbps=rate * 8 / 1000, burst_bytes=total - rate * (t_end - t0))

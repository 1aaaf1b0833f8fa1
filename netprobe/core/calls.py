"""Noticing a call without the video app's help, pure: fed the default interface's byte
counters about once a second (and, when it asks, what the sockets and processes say), it
decides when a call has started and when it has ended. No I/O, no clock: `now` comes in.

What counts as a call (docs/agent-api.md, "Calls noticed by themselves"):

- **Two-way traffic**: at least `START_KBPS` each way at once, for `START_AFTER_S` seconds in a
  row. Opus voice is ~30-60 kbit/s with its packet overhead, so a voice-only call does not
  start a session by itself; 1:1 video is 150-600 kbit/s or more each way (WebRTC's lowest
  useful camera layer is ~150 kbit/s), which does.
- **Both directions alike**: the smaller direction at least `MIN_BALANCE` of the larger. A
  download (or a video being watched) has its TCP acknowledgements going the other way, but
  they are 1-3 % of it (one 40-70 byte ACK per two 1448-byte segments), so even a
  20 Mbit/s download, whose ACKs pass 150 kbit/s, is not a call.
- **Not netprobe's own**: while a check of the agent's runs (and `OWN_MARGIN_S` after), the
  counters are not read at all; the monitoring stream's own rate is subtracted.
- **Corroborated if that can be seen**: when the sockets say another process holds UDP
  sockets (WebRTC media is UDP) or a known conferencing program runs, `START_AFTER_S` of
  traffic is enough. When they can be seen and say neither, the traffic must last
  `UNCORROBORATED_AFTER_S`: a TCP-only call (TURN over TCP/TLS, Teams on 443) is still noticed,
  a little later. When they cannot be seen (no permission, macOS), traffic alone decides.

A call goes on while both directions stay above `STAY_KBPS` (a call that falls back to voice,
as the agent may advise, is still a call) with the same balance, and ends after `END_AFTER_S`
seconds in a row below it. Targets: monitoring within 15 s of the start, idle again within 60 s
of the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Each way, to start: under the low end of 1:1 video (150-600 kbit/s), with room for the
#: counters' second-to-second noise so that a 150 kbit/s call is noticed every time; voice
#: (30-60) stays well below.
START_KBPS = 120.0
#: Each way, to go on: above a voice call's Opus stream with its overhead (~30-60 kbit/s)
#: once the agent's own stream is subtracted, so a call moved to audio stays a call.
STAY_KBPS = 24.0
#: The smaller direction must be at least this share of the larger (TCP ACKs: 1-3 %).
MIN_BALANCE = 0.1
#: Seconds in a row above START_KBPS, corroborated (or unseeable), before a call starts.
START_AFTER_S = 4.0
#: The same when the sockets can be seen and show neither UDP nor a conferencing program.
UNCORROBORATED_AFTER_S = 10.0
#: Seconds in a row below STAY_KBPS before a call has ended.
END_AFTER_S = 20.0
#: Samples are not used until this long after the agent's own check ended (its tail).
OWN_MARGIN_S = 2.0
#: A gap between samples longer than this (a suspended machine) starts counting afresh.
MAX_GAP_S = 5.0
#: Evidence older than this is asked for again while the traffic looks like a call.
EVIDENCE_FOR_S = 30.0

Kind = Literal["udp", "conferencing", "traffic"]
"""What a call was recognised by: another process's UDP sockets, a conferencing program, or
the traffic alone (the sockets showed neither, or could not be seen)."""


@dataclass(frozen=True)
class Evidence:
    """What the sockets and processes say (the psutil adapter's scan)."""
    visible: bool
    """The other processes' sockets could be read (False: no permission, or macOS)."""
    udp: bool = False
    """A process other than netprobe holds a UDP socket to a remote or unbound address."""
    conferencing: tuple[str, ...] = ()
    """Names of known conferencing programs running (logged only if the privacy switch
    allows it)."""


@dataclass(frozen=True)
class TrafficSample:
    """One reading, about once a second."""
    now: float
    rx_bytes: int
    """Bytes received on the default interface so far (the operating system's counter)."""
    tx_bytes: int
    """Bytes sent on it so far."""
    own_busy: bool = False
    """A check of the agent's own is running: these bytes are netprobe's."""
    own_kbps: tuple[float, float] = (0.0, 0.0)
    """(up, down) kbit/s of netprobe's own monitoring stream, if one runs: subtracted."""
    evidence: Evidence | None = None
    """A fresh scan of sockets and processes, if one was made for this sample."""


@dataclass(frozen=True)
class CallChange:
    """A call started (`started` True) or ended."""
    started: bool
    kind: Kind
    processes: tuple[str, ...] = ()
    """Known conferencing programs seen (names; for the log only with permission)."""


class CallDetector:
    """Feed `sample()` each reading; it returns a `CallChange` when a call starts or ends.
    `wants_evidence(now)` says the traffic looks like a call and a scan would help."""

    def __init__(self) -> None:
        self.in_call = False
        self.kind: Kind = "traffic"
        self.up_kbps: float | None = None
        self.down_kbps: float | None = None
        self._last: tuple[float, int, int] | None = None
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._blind_until = -1e18
        self._evidence: Evidence | None = None
        self._evidence_at = -1e18
        self._looks_like_call = False

    def wants_evidence(self, now: float) -> bool:
        """The traffic looked like a call at the last sample and no scan is fresh: scan the
        sockets and processes and pass the result with the next sample."""
        return not self.in_call and self._looks_like_call and self.evidence_stale(now)

    def evidence_stale(self, now: float) -> bool:
        return now - self._evidence_at > EVIDENCE_FOR_S

    def sample(self, s: TrafficSample) -> CallChange | None:
        last, self._last = self._last, (s.now, s.rx_bytes, s.tx_bytes)
        if s.evidence is not None:
            self._evidence, self._evidence_at = s.evidence, s.now
        if s.own_busy:
            self._blind_until = s.now + OWN_MARGIN_S
        if last is None or s.now - last[0] > MAX_GAP_S or s.now <= last[0] \
                or s.rx_bytes < last[1] or s.tx_bytes < last[2]:
            self._above_since = None  # no rate yet, a gap, or counters reset: count afresh
            return None
        span = s.now - last[0]
        up = max(0.0, (s.tx_bytes - last[2]) * 8 / span / 1000 - s.own_kbps[0])
        down = max(0.0, (s.rx_bytes - last[1]) * 8 / span / 1000 - s.own_kbps[1])
        self.up_kbps, self.down_kbps = up, down
        if s.now < self._blind_until:  # netprobe's own check: neither start nor end
            self._above_since = None
            self._looks_like_call = False
            return None
        return self._judge(s.now, up, down)

    def _judge(self, now: float, up: float, down: float) -> CallChange | None:
        balanced = min(up, down) >= MIN_BALANCE * max(up, down)
        if self.in_call:
            if min(up, down) >= STAY_KBPS and balanced:
                self._below_since = None
                return None
            if self._below_since is None:
                self._below_since = now
            if now - self._below_since >= END_AFTER_S:
                self.in_call = False
                self._below_since = None
                return CallChange(False, self.kind)
            return None
        self._looks_like_call = min(up, down) >= START_KBPS and balanced
        if not self._looks_like_call:
            self._above_since = None
            return None
        if self._above_since is None:
            self._above_since = now
        ev = self._evidence if not self.evidence_stale(now) else None
        corroborated = ev is None or not ev.visible or ev.udp or bool(ev.conferencing)
        need = START_AFTER_S if corroborated else UNCORROBORATED_AFTER_S
        # a sample covers the second before it: the first one above counts as one second
        if now - self._above_since + 1.0 < need:
            return None
        self.in_call = True
        self._above_since = None
        self._looks_like_call = False
        self.kind = "conferencing" if ev is not None and ev.conferencing else \
            "udp" if ev is not None and ev.udp else "traffic"
        return CallChange(True, self.kind, ev.conferencing if ev is not None else ())

"""The probe protocol's packet formats (pure: bytes in, dataclasses out).

Three packet types travel inside RTP payloads of the test streams (see docs/protocol.md):

- `Probe`  client -> reflector on the audio stream, ~50 per second. Carries a sequence number
  and send time for RTT, jitter and loss, and the client's request for the downlink load.
- `Echo`   reflector -> client on the audio stream, one per probe received. Echoes the probe's
  sequence number and time, has its own downlink sequence number and time, and reports what the
  reflector measured on the uplink (probe loss and jitter, load delivered per rung).
- `Load`   either direction on the video stream: the bitrate ladder's filler packets, each
  tagged with its rung and a per-stream sequence number.

All times are seconds on the *sender's* monotonic clock; only differences taken on one side,
or transit differences for jitter, are ever used, so the two clocks need not agree.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

from netprobe.errors import ProtocolError

MAGIC = b"NP"
VERSION = 2

TYPE_PROBE = 1
TYPE_ECHO = 2
TYPE_LOAD = 3

_HEADER = struct.Struct("!2sBB")
_PROBE = struct.Struct("!IdhIHH")
_ECHO = struct.Struct("!IdIdfIIfB")
_RUNG_REPORT = struct.Struct("!hIIddII")
_DOWN_SENT = struct.Struct("!hIB")
_LOAD = struct.Struct("!hId")

NO_RUNG = -1
#: Bit of the echo's optional trailing flags byte: the reflector is draining.
ECHO_FLAG_DRAINING = 0x01
#: Bit of the flags byte, obsolete: reflectors of netprobe 0.x before the tail rates sent
#: packet counts here, which this decoder ignores (docs/protocol.md, "Packet formats").
ECHO_FLAG_TAIL_COUNTS = 0x02
#: Bit of the flags byte: after it, each uplink rung report's tail rates (`_TAIL`), in order.
ECHO_FLAG_TAILS = 0x04
_TAIL = struct.Struct("!ff")
#: Largest tail rate an echo may report (kbit/s: 10 Gbit/s).
MAX_TAIL_KBPS = 1e7

#: Smallest probe packet: header plus fields.
PROBE_MIN_SIZE = _HEADER.size + _PROBE.size
#: Smallest load packet: header plus fields.
LOAD_MIN_SIZE = _HEADER.size + _LOAD.size
#: Largest payload we put in one RTP packet (fits aiortc's VP8 packetiser, 1300 bytes, with
#: its 4-byte descriptor, and a 1500-byte path MTU with RTP/SRTP/UDP/IP overhead).
LOAD_MAX_SIZE = 1200

# What a decoder accepts (lesson 11: every number from the network is hostile). A packet with
# a value outside these is refused with `ProtocolError`, whatever its layout says; numbers
# inside them still bound nothing on their own: their consumers cap them (core/responder.py).
#: Largest magnitude of a time (seconds on the sender's monotonic clock: about 30 years).
MAX_TIME_S = 1e9
#: Largest hold or jitter an echo may report (seconds); neither may be negative.
MAX_DELAY_S = 3600.0
#: Most rung reports, and most downlink counts, in one echo (a responder sends 1 and 2).
MAX_ECHO_ENTRIES = 8


@dataclass(frozen=True)
class Probe:
    seq: int
    """Probe sequence number, from 0, one per probe sent."""
    sent_at: float
    """Client monotonic clock when the probe was sent, in seconds."""
    down_rung: int = NO_RUNG
    """The downlink ladder rung the client asks for, or `NO_RUNG` for none."""
    down_rate_kbps: int = 0
    """Rate of the requested downlink rung in kbit/s (counting IP packet bytes)."""
    down_size: int = 0
    """Payload size of the requested downlink load packets, in bytes."""
    down_duration_ms: int = 0
    """How long the reflector sends the requested rung, from when it first sees the request."""


@dataclass(frozen=True)
class RungReport:
    """What the receiver of a load stream saw of one rung."""

    rung: int
    """Rung index."""
    packets: int
    """Distinct packets received (duplicates are not counted)."""
    payload_bytes: int
    """Payload bytes of the distinct packets received."""
    first_at: float
    """Receiver clock at the first packet's arrival, seconds."""
    last_at: float
    """Receiver clock at the latest packet's arrival, seconds."""
    lowest_seq: int
    """Lowest load sequence number seen in the rung."""
    highest_seq: int
    """Highest load sequence number seen in the rung."""
    tail_kbps: float = 0.0
    """The rate the link delivered the rung's last third at (`measure.window_rate_kbps`),
    kbit/s of wire bytes; 0 when unknown, or from a reflector that does not report it
    (docs/protocol.md, "Packet formats")."""
    end_kbps: float = 0.0
    """The same over the rung's last sixth."""


@dataclass(frozen=True)
class Echo:
    seq: int
    """Echo (downlink) sequence number, from 0, one per echo sent."""
    sent_at: float
    """Reflector monotonic clock when the echo was sent, in seconds."""
    probe_seq: int
    """Sequence number of the probe this echo answers."""
    probe_sent_at: float
    """The probe's `sent_at`, copied back."""
    hold: float
    """Seconds the reflector held the probe before echoing it (subtracted from the RTT)."""
    up_probes_received: int
    """Distinct probes the reflector has received numbered 0..`up_probes_highest`."""
    up_probes_highest: int
    """The highest probe number whose fate is settled: the highest received minus a reorder
    window (a probe missing below it counts as lost, not merely overtaken); -1 before."""
    up_jitter: float
    """RFC 3550 interarrival jitter of the probes on the uplink, in seconds."""
    up_rungs: tuple[RungReport, ...] = ()
    """Uplink load received, for the most recent rungs (at most 3)."""
    down_sent: tuple[tuple[int, int, bool], ...] = ()
    """(rung, packets sent, finished) of the reflector's downlink load, most recent rungs.
    `finished` means the rung's last packet left before this echo, so (both travelling the
    same path) every packet of the rung that will arrive has arrived before the echo."""
    draining: bool = False
    """The reflector is shutting down and takes no new sessions: a monitoring client should
    reconnect, to another reflector if it has one (docs/protocol.md, "Drain")."""


@dataclass(frozen=True)
class Load:
    rung: int
    """Ladder rung this packet belongs to."""
    seq: int
    """Per-stream sequence number, from 0, increasing across rungs."""
    sent_at: float
    """Sender monotonic clock at send time, seconds."""


def _is_time(t: float) -> bool:
    return math.isfinite(t) and abs(t) <= MAX_TIME_S


def _is_delay(d: float) -> bool:
    return math.isfinite(d) and 0.0 <= d <= MAX_DELAY_S


def _check_header(data: bytes) -> int:
    if len(data) < _HEADER.size:
        raise ProtocolError("probe packet too short")
    magic, version, kind = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("not a netprobe packet (bad magic or version)")
    return int(kind)


def packet_type(data: bytes) -> int:
    """Return the type of a probe-protocol packet, raising `ProtocolError` if it is not one."""
    return _check_header(data)


def encode_probe(p: Probe, size: int = 0) -> bytes:
    body = _HEADER.pack(MAGIC, VERSION, TYPE_PROBE) + _PROBE.pack(
        p.seq, p.sent_at, p.down_rung, p.down_rate_kbps, p.down_size, p.down_duration_ms
    )
    return body.ljust(size, b"\0")


def decode_probe(data: bytes) -> Probe:
    if _check_header(data) != TYPE_PROBE or len(data) < PROBE_MIN_SIZE:
        raise ProtocolError("malformed probe packet")
    seq, sent_at, rung, rate, size, duration = _PROBE.unpack_from(data, _HEADER.size)
    if not _is_time(sent_at) or rung < NO_RUNG:
        raise ProtocolError("malformed probe packet (a time or rung out of range)")
    return Probe(seq, sent_at, rung, rate, size, duration)


def encode_echo(e: Echo) -> bytes:
    parts = [
        _HEADER.pack(MAGIC, VERSION, TYPE_ECHO),
        _ECHO.pack(
            e.seq,
            e.sent_at,
            e.probe_seq,
            e.probe_sent_at,
            e.hold,
            e.up_probes_received,
            e.up_probes_highest & 0xFFFFFFFF,
            e.up_jitter,
            len(e.up_rungs),
        ),
    ]
    for r in e.up_rungs:
        parts.append(
            _RUNG_REPORT.pack(
                r.rung, r.packets, r.payload_bytes, r.first_at, r.last_at, r.lowest_seq,
                r.highest_seq,
            )
        )
    parts.append(bytes([len(e.down_sent)]))
    for rung, sent, finished in e.down_sent:
        parts.append(_DOWN_SENT.pack(rung, sent, 1 if finished else 0))
    # An optional flags byte, then what its bits announce: older decoders ignore it all.
    flags = (ECHO_FLAG_DRAINING if e.draining else 0) | (ECHO_FLAG_TAILS if has_tails(e) else 0)
    if flags:
        parts.append(bytes([flags]))
    if flags & ECHO_FLAG_TAILS:
        parts += [_TAIL.pack(r.tail_kbps, r.end_kbps) for r in e.up_rungs]
    return b"".join(parts)


def has_tails(e: Echo) -> bool:
    """Whether `e`'s rung reports carry any tail: all-zero tails are left out of the packet
    (they read as zero anyway), so an echo decoded without a trailer encodes as it came."""
    return any(r.tail_kbps or r.end_kbps for r in e.up_rungs)


def decode_echo(data: bytes) -> Echo:
    if _check_header(data) != TYPE_ECHO:
        raise ProtocolError("not an echo packet")
    try:
        offset = _HEADER.size
        (seq, sent_at, probe_seq, probe_sent_at, hold, received, highest, jitter,
         n_rungs) = _ECHO.unpack_from(data, offset)
        offset += _ECHO.size
        if n_rungs > MAX_ECHO_ENTRIES:
            raise ProtocolError("malformed echo packet (too many rung reports)")
        rungs = []
        for _ in range(n_rungs):
            rungs.append(RungReport(*_RUNG_REPORT.unpack_from(data, offset)))
            offset += _RUNG_REPORT.size
        n_down = data[offset]
        offset += 1
        if n_down > MAX_ECHO_ENTRIES:
            raise ProtocolError("malformed echo packet (too many downlink counts)")
        down = []
        for _ in range(n_down):
            down.append(_DOWN_SENT.unpack_from(data, offset))
            offset += _DOWN_SENT.size
        flags = data[offset] if len(data) > offset else 0
        offset += 1
        if flags & ECHO_FLAG_TAILS:
            tails = [_TAIL.unpack_from(data, offset + k * _TAIL.size) for k in range(n_rungs)]
            if not all(0 <= x <= MAX_TAIL_KBPS for t in tails for x in t):  # NaN fails too
                raise ProtocolError("malformed echo packet (a tail rate out of range)")
            rungs = [replace(r, tail_kbps=t, end_kbps=e)
                     for r, (t, e) in zip(rungs, tails, strict=True)]
    except (struct.error, IndexError) as exc:
        raise ProtocolError("malformed echo packet") from exc
    if not (_is_time(sent_at) and _is_time(probe_sent_at) and _is_delay(hold)
            and _is_delay(jitter)
            and all(r.rung >= 0 and _is_time(r.first_at) and _is_time(r.last_at) for r in rungs)
            and all(r >= 0 for r, _, _ in down)):
        raise ProtocolError("malformed echo packet (a time, delay or rung out of range)")
    if highest == 0xFFFFFFFF:
        highest = -1
    return Echo(
        seq, sent_at, probe_seq, probe_sent_at, hold, received, highest, jitter,
        tuple(rungs), tuple((int(r), int(s), bool(f)) for r, s, f in down),
        draining=bool(flags & ECHO_FLAG_DRAINING),
    )


def encode_load(p: Load, size: int) -> bytes:
    body = _HEADER.pack(MAGIC, VERSION, TYPE_LOAD) + _LOAD.pack(p.rung, p.seq, p.sent_at)
    return body.ljust(max(size, LOAD_MIN_SIZE), b"\0")


def decode_load(data: bytes) -> Load:
    if _check_header(data) != TYPE_LOAD or len(data) < LOAD_MIN_SIZE:
        raise ProtocolError("malformed load packet")
    rung, seq, sent_at = _LOAD.unpack_from(data, _HEADER.size)
    if rung < 0 or not _is_time(sent_at):
        raise ProtocolError("malformed load packet (a time or rung out of range)")
    return Load(rung, seq, sent_at)

"""Tests for netprobe.core.wire: probe-protocol packets round-trip, and bad bytes only ever raise
`ProtocolError`."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config import ProbeSettings, load_settings
from netprobe.core import wire
from netprobe.core.classify import Thresholds
from netprobe.core.responder import Responder
from netprobe.core.session import ClientSession
from netprobe.core.wire import (
    LOAD_MAX_SIZE,
    LOAD_MIN_SIZE,
    NO_RUNG,
    TYPE_ECHO,
    TYPE_LOAD,
    TYPE_PROBE,
    Echo,
    Load,
    Probe,
    RungReport,
    decode_echo,
    decode_load,
    decode_probe,
    encode_echo,
    encode_load,
    encode_probe,
    has_tails,
    packet_type,
)
from netprobe.errors import ConfigError, NetprobeError, ProtocolError

U32 = st.integers(0, 2**32 - 1)
RUNG = st.integers(0, 2**15 - 1)  # a rung number is never negative (docs/protocol.md)
U16 = st.integers(0, 2**16 - 1)
# Times and delays within what a decoder accepts (docs/protocol.md, "Values a decoder accepts")
F64 = st.floats(-wire.MAX_TIME_S, wire.MAX_TIME_S)
F32 = st.floats(0.0, wire.MAX_DELAY_S, width=32)  # hold and jitter travel as 4-byte floats

probes = st.builds(Probe, seq=U32, sent_at=F64, down_rung=st.integers(NO_RUNG, 2**15 - 1),
                   down_rate_kbps=U32, down_size=U16, down_duration_ms=U16)
TAIL = st.one_of(st.just(0.0), st.floats(0.0, wire.MAX_TAIL_KBPS, width=32))
rung_reports = st.builds(
    RungReport, rung=RUNG, packets=U32, payload_bytes=U32, first_at=F64, last_at=F64,
    lowest_seq=U32, highest_seq=U32, tail_kbps=TAIL, end_kbps=TAIL,
)
echoes = st.builds(
    Echo,
    seq=U32, sent_at=F64, probe_seq=U32, probe_sent_at=F64, hold=F32,
    up_probes_received=U32,
    up_probes_highest=st.integers(-1, 2**32 - 2),  # 2**32 - 1 is the wire form of -1
    up_jitter=F32,
    up_rungs=st.lists(rung_reports, max_size=5).map(tuple),
    down_sent=st.lists(st.tuples(RUNG, U32, st.booleans()), max_size=5).map(tuple),
)
loads = st.builds(Load, rung=RUNG, seq=U32, sent_at=F64)

Decoder = Callable[[bytes], object]
DECODERS: list[Decoder] = [decode_probe, decode_echo, decode_load, packet_type]


def _echo_example() -> Echo:
    return Echo(
        seq=7, sent_at=12.5, probe_seq=9, probe_sent_at=3.25, hold=2**-10, up_probes_received=9,
        up_probes_highest=9, up_jitter=2**-8,  # exact in float32
        up_rungs=(RungReport(0, 100, 12_100, 1.0, 1.6, 0, 99),
                  RungReport(1, 50, 40_000, 1.6, 2.2, 100, 149)),
        down_sent=((0, 120, True), (1, 118, False)),
    )


# ------------------------------------------------------------------------ round trips


@given(probes, st.integers(0, 300))
def test_probe_round_trip(p: Probe, size: int) -> None:
    data = encode_probe(p, size)
    assert len(data) == max(size, 4 + 22)  # header 4 + !IdhIHH 4+8+2+4+2+2 = 22
    assert packet_type(data) == TYPE_PROBE
    assert decode_probe(data) == p


@given(echoes)
def test_echo_round_trip(e: Echo) -> None:
    data = encode_echo(e)
    # header 4 + !IdIdfIIfB 41 + 34 per rung report + count byte + 7 per down entry (!hIB),
    # then (with tails or draining) a flags byte, and with tails 8 bytes per rung report
    tails = has_tails(e)  # all-zero tails are left out
    flags = 1 if tails or e.draining else 0
    assert len(data) == 4 + 41 + 34 * len(e.up_rungs) + 1 + 7 * len(e.down_sent) + flags \
        + (8 * len(e.up_rungs) if tails else 0)
    assert packet_type(data) == TYPE_ECHO
    assert decode_echo(data) == e


@given(loads, st.integers(0, LOAD_MAX_SIZE))
def test_load_round_trip(p: Load, size: int) -> None:
    data = encode_load(p, size)
    assert len(data) == max(size, LOAD_MIN_SIZE)
    assert packet_type(data) == TYPE_LOAD
    assert decode_load(data) == p


def test_probe_defaults_round_trip() -> None:
    p = Probe(seq=0, sent_at=0.0)
    q = decode_probe(encode_probe(p))
    assert q.down_rung == NO_RUNG
    assert q == p


def test_probe_duration_field_layout_and_range() -> None:
    # down_duration_ms is a u16 after down_size: bytes 24-25 of the packet
    p = Probe(seq=1, sent_at=2.0, down_rung=3, down_rate_kbps=800, down_size=434,
              down_duration_ms=600)
    data = encode_probe(p)
    assert data[22:24] == (434).to_bytes(2, "big")
    assert data[24:26] == (600).to_bytes(2, "big")
    assert decode_probe(data).down_duration_ms == 600
    for ms in (0, 1, 65_535):
        q = Probe(9, 1.0, 0, 300, 60, down_duration_ms=ms)
        assert decode_probe(encode_probe(q, 60)) == q
    assert Probe(0, 0.0).down_duration_ms == 0  # no rung asked for: no duration


def test_session_probe_carries_the_rung_duration_to_the_responder() -> None:
    # The client's request, through the wire, sets how long the reflector sends the rung.
    settings = ProbeSettings()
    session = ClientSession(settings, Thresholds(), 0.0)
    idle = decode_probe(encode_probe(session.next_probe(0.0), settings.probe_size))
    assert (idle.down_rung, idle.down_duration_ms) == (NO_RUNG, 0)
    session.down.start(0.0)
    probe = decode_probe(encode_probe(session.next_probe(0.1), settings.probe_size))
    assert probe.down_rung == 0
    assert probe.down_duration_ms == round(settings.rung_duration_s * 1000)
    responder = Responder()
    responder.on_probe(probe, 10.0)
    request = responder.down_request(10.0)
    assert request is not None and request.rung == 0
    assert request.duration_s == pytest.approx(settings.rung_duration_s)
    assert responder.down_request(10.0 + settings.rung_duration_s - 0.01) == request
    assert responder.down_request(10.0 + settings.rung_duration_s + 0.001) is None  # up
    echo = decode_echo(encode_echo(responder.echo(probe, 10.7, 10.7)))
    assert echo.down_sent == ((0, 0, True),)  # finished (nothing was sent in this test)


def test_echo_down_sent_finished_flags() -> None:
    e = _echo_example()
    data = encode_echo(e)
    # the down entries close the packet's core: count byte, then !hIB per entry (then the
    # flags byte and a tail per rung report)
    core = len(data) - (1 + 8 * len(e.up_rungs)) if has_tails(e) else len(data)
    tail = data[core - (1 + 2 * 7):core]
    assert tail[0] == 2
    assert tail[1:8] == struct.pack("!hIB", 0, 120, 1)
    assert tail[8:15] == struct.pack("!hIB", 1, 118, 0)
    got = decode_echo(data).down_sent
    assert got == ((0, 120, True), (1, 118, False))
    assert [type(f) for _, _, f in got] == [bool, bool]  # a flag, not a byte value


def test_probe_in_the_previous_layout_is_rejected() -> None:
    # version 1 probe, as a previous client sends it: no duration, padded to probe_size
    old = (b"NP" + bytes([1, TYPE_PROBE])
           + struct.pack("!IdhIH", 5, 1.0, 2, 1600, 600)).ljust(60, b"\0")
    with pytest.raises(ProtocolError):
        decode_probe(old)


def test_a_rung_duration_too_long_for_a_probe_is_rejected_up_front(tmp_path: Path) -> None:
    # 70 s would not fit the probe's u16 of milliseconds (65.535 s): the settings refuse it.
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text("[probe]\nrung_duration_s = 70.0\n")
    with pytest.raises(ConfigError, match="rung_duration_s"):
        load_settings(cfg)


@settings(max_examples=30)
@given(st.floats(0.1, 30.0))
def test_every_accepted_rung_duration_fits_in_a_probe(seconds: float) -> None:
    # The longest accepted duration is 30 s (see the test above for what is refused).
    probe = ProbeSettings(rung_duration_s=seconds)
    session = ClientSession(probe, Thresholds(), 0.0)
    session.down.start(0.0)
    data = encode_probe(session.next_probe(0.0), probe.probe_size)
    assert decode_probe(data).down_duration_ms == int(seconds * 1000)


def test_the_longest_accepted_rung_duration_loads_and_fits(tmp_path: Path) -> None:
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text("[probe]\nrung_duration_s = 30.0\n")
    probe = load_settings(cfg).probe
    session = ClientSession(probe, Thresholds(), 0.0)
    session.down.start(0.0)
    data = encode_probe(session.next_probe(0.0), probe.probe_size)
    assert decode_probe(data).down_duration_ms == 30_000


def test_echo_before_first_probe_has_highest_minus_one() -> None:
    e = Echo(0, 1.0, 0, 0.0, 0.0, 0, -1, 0.0)
    assert decode_echo(encode_echo(e)).up_probes_highest == -1


def test_echo_float32_fields_lose_only_float32_precision() -> None:
    e = Echo(1, 1.0, 1, 1.0, hold=0.0123456789, up_probes_received=1, up_probes_highest=1,
             up_jitter=0.00345678901)
    got = decode_echo(encode_echo(e))
    assert got.hold == pytest.approx(0.0123456789, rel=1e-7)
    assert got.up_jitter == pytest.approx(0.00345678901, rel=1e-7)


def test_load_min_size_is_header_plus_fields() -> None:
    assert LOAD_MIN_SIZE == 4 + 14  # header + !hId (2 + 4 + 8)
    assert len(encode_load(Load(0, 0, 0.0), 0)) == LOAD_MIN_SIZE


def test_header_bytes() -> None:
    data = encode_probe(Probe(1, 2.0))
    assert data[:4] == b"NP" + bytes([wire.VERSION, TYPE_PROBE])


# ------------------------------------------------------------------------ bad input

# What a well-formed packet is, written out from docs/protocol.md independently of the decoders:
# the 4-byte header (magic "NP", version, type), then the type's fixed fields; an echo also
# needs every rung report and down entry its two count bytes announce. Longer is fine (probes
# and loads are padded). Its values must be within the documented ranges. The decoders must
# accept exactly these and raise `ProtocolError` for everything else.
_FIXED = {TYPE_PROBE: 4 + 22, TYPE_ECHO: 4 + 41, TYPE_LOAD: 4 + 14}


def _echo_length(data: bytes) -> int | None:
    """Bytes an echo needs, from its count bytes, or None if the counts are cut off."""
    if len(data) < _FIXED[TYPE_ECHO]:
        return None
    n_rungs = data[_FIXED[TYPE_ECHO] - 1]
    down_count_at = _FIXED[TYPE_ECHO] + 34 * n_rungs
    if len(data) <= down_count_at:
        return None
    core = down_count_at + 1 + 7 * data[down_count_at]
    # an optional flags byte; with ECHO_FLAG_TAILS, the tail rates (!ff) of each rung report
    # follow (the obsolete ECHO_FLAG_TAIL_COUNTS announces nothing this decoder reads)
    if len(data) > core and data[core] & wire.ECHO_FLAG_TAILS:
        return core + 1 + 8 * n_rungs
    return core


def _time_ok(t: float) -> bool:
    return math.isfinite(t) and abs(t) <= 1e9


def _delay_ok(d: float) -> bool:
    return math.isfinite(d) and 0 <= d <= 3600


def _values_ok(data: bytes, kind: int) -> bool:
    """The value rules of docs/protocol.md ("Values a decoder accepts") for a packet whose
    layout is complete."""
    if kind == TYPE_PROBE:
        return _time_ok(struct.unpack_from("!d", data, 8)[0]) and \
            struct.unpack_from("!h", data, 16)[0] >= -1
    if kind == TYPE_LOAD:
        return struct.unpack_from("!h", data, 4)[0] >= 0 and \
            _time_ok(struct.unpack_from("!d", data, 10)[0])
    n_rungs = data[44]
    down_at = 45 + 34 * n_rungs
    n_down = data[down_at]
    if n_rungs > 8 or n_down > 8:
        return False
    times = [struct.unpack_from("!d", data, 8)[0], struct.unpack_from("!d", data, 20)[0]]
    delays = [struct.unpack_from("!f", data, 28)[0], struct.unpack_from("!f", data, 40)[0]]
    rungs = []
    for k in range(n_rungs):
        at = 45 + 34 * k
        rungs.append(struct.unpack_from("!h", data, at)[0])
        times += list(struct.unpack_from("!dd", data, at + 10))
    rungs += [struct.unpack_from("!h", data, down_at + 1 + 7 * k)[0] for k in range(n_down)]
    core = down_at + 1 + 7 * n_down
    tails: list[float] = []
    if len(data) > core and data[core] & wire.ECHO_FLAG_TAILS:
        tails = list(struct.unpack_from(f"!{2 * n_rungs}f", data, core + 1))
    return all(map(_time_ok, times)) and all(map(_delay_ok, delays)) and \
        all(r >= 0 for r in rungs) and all(0 <= x <= wire.MAX_TAIL_KBPS for x in tails)


def _well_formed(data: bytes, kind: int | None) -> bool:
    """Whether `data` is a packet of type `kind` (any type, for None) by the rules above."""
    if len(data) < 4 or data[:2] != b"NP" or data[2] != wire.VERSION:
        return False
    if kind is None:
        return True
    if data[3] != kind:
        return False
    if kind == TYPE_ECHO:
        needed = _echo_length(data)
        if needed is None or len(data) < needed:
            return False
    elif len(data) < _FIXED[kind]:
        return False
    return _values_ok(data, kind)


_ENCODERS: dict[int, Callable[[Any], bytes]] = {
    TYPE_PROBE: encode_probe, TYPE_ECHO: encode_echo, TYPE_LOAD: lambda p: encode_load(p, 0),
}
_TYPES: dict[int, type] = {TYPE_PROBE: Probe, TYPE_ECHO: Echo, TYPE_LOAD: Load}
_KINDS: dict[Decoder, int | None] = {
    decode_probe: TYPE_PROBE, decode_echo: TYPE_ECHO, decode_load: TYPE_LOAD, packet_type: None,
}


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, tuple):
        return any(_has_nan(x) for x in value)
    if dataclasses.is_dataclass(value):
        return any(_has_nan(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def _check_decoder(decode: Decoder, data: bytes) -> None:
    """A malformed packet raises `ProtocolError`; a well-formed one decodes to the values its
    bytes hold (re-encoding gives those bytes back)."""
    kind = _KINDS[decode]
    if not _well_formed(data, kind):
        with pytest.raises(ProtocolError):
            decode(data)
        return
    got: Any = decode(data)
    if kind is None:
        assert got == data[3]
        return
    assert type(got) is _TYPES[kind]
    # NaN payloads need not survive a float round trip: compare those packets no further.
    if not _has_nan(got):
        encoded = _ENCODERS[kind](got)
        assert encoded[:_FIXED[kind]] == data[:_FIXED[kind]]
        if kind == TYPE_ECHO:
            # a down entry's last byte is a flag: any non-zero byte reads as "finished"
            expected = bytearray(data[:len(encoded)])
            for k in range(len(got.down_sent)):
                flag_at = len(encoded) - 1 - 7 * k
                expected[flag_at] = min(1, expected[flag_at])
            assert encoded == expected


@pytest.mark.parametrize("decode", DECODERS)
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_protocol_error_unless_well_formed(
    decode: Decoder, data: bytes
) -> None:
    _check_decoder(decode, data)


@st.composite
def _headed_garbage(draw: st.DrawFn) -> bytes:
    """Valid header of a random type followed by random bytes: gets past the header check."""
    kind = draw(st.sampled_from([TYPE_PROBE, TYPE_ECHO, TYPE_LOAD, 0, 9]))
    return b"NP" + bytes([wire.VERSION, kind]) + draw(st.binary(max_size=400))


@st.composite
def _small_count_echo(draw: st.DrawFn) -> bytes:
    """A valid header and echo fields with small random counts and a random amount of body:
    reaches the well-formed case as often as the malformed one."""
    n_rungs, n_down = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    head = b"NP" + bytes([wire.VERSION, TYPE_ECHO]) + draw(st.binary(min_size=40, max_size=40))
    body = draw(st.binary(min_size=34 * n_rungs, max_size=34 * n_rungs))
    down = draw(st.binary(min_size=7 * n_down, max_size=7 * n_down))
    packet = head + bytes([n_rungs]) + body + bytes([n_down]) + down
    return packet[:draw(st.integers(0, len(packet) + 5))] + draw(st.binary(max_size=5))


@pytest.mark.parametrize("decode", DECODERS)
@given(data=st.one_of(_headed_garbage(), _small_count_echo()))
def test_garbage_after_valid_header_raises_protocol_error_unless_well_formed(
    decode: Decoder, data: bytes
) -> None:
    _check_decoder(decode, data)


def test_the_well_formed_rule_matches_the_encoders() -> None:
    # The oracle above is only as good as its agreement with what the encoders produce.
    for data, kind in ((encode_probe(Probe(1, 2.0)), TYPE_PROBE),
                       (encode_echo(_echo_example()), TYPE_ECHO),
                       (encode_load(Load(0, 1, 2.0), 0), TYPE_LOAD)):
        assert _well_formed(data, kind) and _well_formed(data, None)
        assert not _well_formed(data[:-1], kind)
        assert all(not _well_formed(data, other) for other in _FIXED if other != kind)
    assert _echo_length(encode_echo(_echo_example())) == len(encode_echo(_echo_example()))


@given(echoes, st.data())
def test_echo_with_corrupt_counts_raises_protocol_error(e: Echo, data: st.DataObject) -> None:
    # Overwrite the rung-count byte (last byte of the fixed part) with a count too big for
    # the bytes that follow: the decoder must run out of bytes and say so as a ProtocolError.
    raw = bytearray(encode_echo(e))
    count_at = 4 + 41 - 1
    after = len(raw) - count_at - 1  # rung reports, down count byte and down entries
    raw[count_at] = data.draw(st.integers(after // 34 + 1, 255))  # 34 * count > after
    with pytest.raises(ProtocolError, match="malformed echo packet"):
        decode_echo(bytes(raw))
    # and the down-entry count the same way
    raw = bytearray(encode_echo(e))
    down_at = count_at + 1 + 34 * len(e.up_rungs)
    # (more entries than every byte after it could hold: the optional trailer too)
    raw[down_at] = data.draw(st.integers((len(raw) - down_at - 1) // 7 + 1, 255))
    with pytest.raises(ProtocolError, match="malformed echo packet"):
        decode_echo(bytes(raw))


@pytest.mark.parametrize("data", [b"", b"N", b"NP\x01"])
def test_packet_type_too_short(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="too short"):
        packet_type(data)


@pytest.mark.parametrize(
    "data", [b"XP\x02\x01" + bytes(20), b"NQ\x02\x01" + bytes(20), b"NP\x01\x01" + bytes(20),
             b"NP\x03\x01" + bytes(20)]
)
def test_bad_magic_or_version(data: bytes) -> None:
    for decode in DECODERS:
        with pytest.raises(ProtocolError):
            decode(data)


def test_each_decoder_rejects_the_other_types() -> None:
    probe = encode_probe(Probe(1, 1.0), 200)  # long enough to pass any length check
    echo = encode_echo(_echo_example())
    load = encode_load(Load(0, 1, 1.0), 200)
    for data in (echo, load):
        with pytest.raises(ProtocolError):
            decode_probe(data)
    for data in (probe, load):
        with pytest.raises(ProtocolError):
            decode_echo(data)
    for data in (probe, echo):
        with pytest.raises(ProtocolError):
            decode_load(data)


def test_protocol_error_is_a_netprobe_error() -> None:
    assert issubclass(ProtocolError, NetprobeError)
    # what the decoders raise is that, not the struct.error underneath: callers catching
    # NetprobeError must not miss anything
    with pytest.raises(NetprobeError) as info:
        decode_echo(encode_echo(_echo_example())[:-1])
    assert type(info.value) is ProtocolError


def test_the_drain_flag_round_trips_and_old_echoes_read_as_not_draining() -> None:
    plain = wire.Echo(1, 2.0, 3, 4.0, 0.5, 5, 6, 0.25, (), ((0, 3, True),))
    draining = dataclasses.replace(plain, draining=True)
    assert wire.decode_echo(wire.encode_echo(draining)).draining is True
    assert wire.decode_echo(wire.encode_echo(plain)).draining is False
    assert len(wire.encode_echo(draining)) == len(wire.encode_echo(plain)) + 1
    responder = Responder()
    responder.draining = True
    echo = responder.echo(wire.Probe(0, 1.0), 1.0, 1.001)
    assert wire.decode_echo(wire.encode_echo(echo)).draining is True

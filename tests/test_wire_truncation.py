"""Truncated packets: every cut is a ProtocolError, except a cut of the echo's optional
trailer as a whole (an echo as an older reflector sends it)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from test_wire import _echo_example, echoes

from netprobe.core.wire import (
    Echo,
    Load,
    Probe,
    decode_echo,
    decode_load,
    decode_probe,
    encode_echo,
    encode_load,
    encode_probe,
    has_tails,
)
from netprobe.errors import ProtocolError


def test_truncated_probe_raises() -> None:
    data = encode_probe(Probe(3, 1.5, 2, 800, 500))
    for k in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_probe(data[:k])


def test_truncated_load_raises() -> None:
    data = encode_load(Load(1, 99, 2.5), 0)
    for k in range(len(data)):
        with pytest.raises(ProtocolError):
            decode_load(data[:k])


def test_truncated_echo_raises_at_every_length() -> None:
    e = _echo_example()
    e = replace(e, up_rungs=tuple(replace(r, tail_kbps=412.5, end_kbps=380.0)
                                  for r in e.up_rungs))
    assert e.up_rungs and has_tails(e)
    data = encode_echo(e)
    assert decode_echo(data) == e
    core = len(data) - (1 + 8 * len(e.up_rungs)) if has_tails(e) else len(data)
    for k in range(len(data)):
        if k == core:  # an echo without the optional trailer: as an older reflector sends
            old = decode_echo(data[:k])
            assert old.up_rungs == tuple(replace(r, tail_kbps=0.0, end_kbps=0.0)
                                         for r in e.up_rungs)
            continue
        with pytest.raises(ProtocolError):
            decode_echo(data[:k])


@given(echoes)
def test_truncated_echo_property(e: Echo) -> None:
    data = encode_echo(e)
    core = len(data) - (1 + 8 * len(e.up_rungs)) if has_tails(e) else len(data)
    if e.draining and not has_tails(e):
        core -= 1
    for k in range(0, len(data), 3):
        if k == core:
            continue  # the optional trailer cut off whole: a valid older echo
        with pytest.raises(ProtocolError):
            decode_echo(data[:k])

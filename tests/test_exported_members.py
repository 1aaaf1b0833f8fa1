"""The curated public API of `netprobe` (its docstring lists it): every name resolves, and
`import netprobe` alone stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import netprobe
from netprobe.errors import NetprobeError


def test_every_exported_name_resolves_to_an_object_of_its_own_name() -> None:
    for name in netprobe.__all__:
        value = getattr(netprobe, name)
        if isinstance(value, type) or callable(value):
            assert value.__name__ == name, name
    assert issubclass(netprobe.ServerBusy, netprobe.ServerUnreachable)
    for name in ("ConfigError", "ServerUnreachable", "ProtocolError", "ConnectFailed"):
        assert issubclass(getattr(netprobe, name), NetprobeError)
    assert {netprobe.VIDEO, netprobe.AUDIO_ONLY, netprobe.PHONE, netprobe.UNKNOWN} == {
        "video", "audio_only", "phone", "unknown"}


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert set(netprobe.__all__) == {"__version__", *netprobe._EXPORTS}


def test_the_docstring_names_every_export() -> None:
    doc = netprobe.__doc__ or ""
    missing = [n for n in netprobe.__all__ if n != "__version__" and n not in doc]
    assert not missing


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        netprobe.no_such_thing  # noqa: B018


def test_import_netprobe_loads_no_webrtc_stack() -> None:
    code = ("import sys, netprobe; netprobe.core.classify; netprobe.load_settings; netprobe.Agent; "
            "print(sorted(m for m in ('aiortc', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"

"""The curated public API of `netprobe` (its docstring lists it): every name resolves, and
`import netprobe` alone stays light."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import netprobe
from netprobe.errors import NetprobeError


def test_every_export_is_the_object_its_module_defines() -> None:
    for name, module in netprobe._EXPORTS.items():
        home = importlib.import_module(f"netprobe.{module}")
        assert getattr(netprobe, name) is getattr(home, name), name
        assert name in dir(netprobe), name


def test_every_exported_name_resolves_to_an_object_of_its_own_name() -> None:
    for name in netprobe.__all__:
        value = getattr(netprobe, name)
        if isinstance(value, type) or callable(value):
            assert value.__name__ == name, name
            assert value.__module__ == f"netprobe.{netprobe._EXPORTS[name]}", name
    assert issubclass(netprobe.ServerBusy, netprobe.ServerUnreachable)
    for name in ("ConfigError", "ServerUnreachable", "ProtocolError", "ConnectFailed"):
        assert issubclass(getattr(netprobe, name), NetprobeError)
    assert {netprobe.VIDEO, netprobe.AUDIO_ONLY, netprobe.PHONE, netprobe.UNKNOWN} == {
        "video", "audio_only", "phone", "unknown"}


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert set(netprobe.__all__) == {"__version__", *netprobe._EXPORTS}


def _names_in_code_spans(doc: str) -> tuple[set[str], set[str]]:
    """Every identifier inside a `code span` of the docstring, and the first of each span."""
    spans = re.findall(r"`([^`]+)`", doc)
    every = {word for span in spans for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}
    first = {m.group(0) for span in spans if (m := re.match(r"[A-Za-z_][A-Za-z0-9_]*", span))}
    return every, first


def test_the_docstring_names_every_export_and_nothing_else_public() -> None:
    every, first = _names_in_code_spans(netprobe.__doc__ or "")
    exports = set(netprobe.__all__) - {"__version__"}
    # whole names in code spans: `ProbeSettings` does not count as naming `Settings`
    assert sorted(exports - every) == []
    # a class, constant or function a span starts with is an export (a removed or renamed
    # one must leave the docstring too); lower-case attribute words like `verdict` aside
    named = {n for n in first if n[0].isupper() or n in netprobe._EXPORTS}
    assert sorted(named - exports) == []


def test_the_type_checking_imports_match_the_lazy_table() -> None:
    # The TYPE_CHECKING block (what type checkers and editors see) must import each name from
    # the module the lazy table loads it from.
    tree = ast.parse(Path(netprobe.__file__).read_text())
    guard = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in guard.body
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported == {name: f"netprobe.{module}" for name, module in netprobe._EXPORTS.items()}


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        netprobe.no_such_thing  # noqa: B018


def test_import_netprobe_loads_no_webrtc_stack() -> None:
    code = ("import sys, netprobe; netprobe.classify; netprobe.load_settings; netprobe.Agent; "
            "print(sorted(m for m in ('aiortc', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"

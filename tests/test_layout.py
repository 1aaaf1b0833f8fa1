"""The layout keeps its promises: `netprobe.core` is pure (no I/O modules, no clock), every
module stays readable in size, and each room holds what the README says it holds."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import netprobe.core

ROOT = Path(__file__).resolve().parent.parent
CORE = Path(netprobe.core.__file__).parent

# What the pure core must never load, directly or through anything it imports.
FORBIDDEN_MODULES = ("asyncio", "aiortc", "aioice", "aiohttp", "av", "psutil", "socket",
                     "selectors", "subprocess", "threading")
# Calls that read the clock or the environment: time comes in as `now`.
CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"),
               ("time", "time_ns"), ("time", "monotonic_ns"), ("time", "sleep"),
               ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
               ("date", "today")}
FORBIDDEN_IMPORTS = {"time", "os", "random", "secrets", "socket", "asyncio", "subprocess",
                     "threading", "psutil", "aiohttp", "aiortc", "aioice", "logging"}
MAX_LINES = 500


def core_modules() -> list[str]:
    return sorted(f"netprobe.core.{m.name}" for m in pkgutil.iter_modules([str(CORE)]))


def test_the_core_has_the_pure_modules() -> None:
    names = {m.rsplit(".", 1)[1] for m in core_modules()}
    assert {"wire", "measure", "emodel", "ladder", "session", "responder", "classify",
            "metrics", "result", "monitor", "policy"} <= names


def test_importing_the_core_loads_no_io_module() -> None:
    code = ("import importlib, json, sys\n"
            f"for m in {core_modules()!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in {FORBIDDEN_MODULES!r} if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out) == []


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_IMPORTS:
                    found.append(f"{path.name}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_IMPORTS:
                found.append(f"{path.name}:{node.lineno} from {node.module}")
            if node.module.startswith("netprobe.") and not (
                    node.module.startswith("netprobe.core") or node.module in
                    ("netprobe.errors", "netprobe.config")):
                found.append(f"{path.name}:{node.lineno} from {node.module} (an adapter)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else (
                owner.attr if isinstance(owner, ast.Attribute) else None)
            if (name, node.func.attr) in CLOCK_CALLS:
                found.append(f"{path.name}:{node.lineno} {name}.{node.func.attr}()")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("open", "input", "print"):
            found.append(f"{path.name}:{node.lineno} {node.func.id}()")
    return found


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_does_no_io_and_reads_no_clock(path: Path) -> None:
    assert _violations(path) == []


def test_the_purity_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom netprobe.webrtc import engine\n"
                   "from datetime import datetime\n"
                   "def f():\n    return time.monotonic(), datetime.now(), open('x')\n")
    found = _violations(bad)
    assert len(found) == 5, found


def _python_files() -> list[Path]:
    return sorted(p for d in ("netprobe", "tests", "scripts") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_too_long_to_read(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_readme_names_every_room() -> None:
    readme = (ROOT / "README.md").read_text()
    rooms = sorted(p.name for p in (ROOT / "netprobe").iterdir()
                   if p.is_dir() and (p / "__init__.py").exists())
    assert rooms, "no subpackages"
    for room in rooms:
        assert f"netprobe/{room}/" in readme, f"README's layout section does not name {room}/"

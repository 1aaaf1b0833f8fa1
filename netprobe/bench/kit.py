"""What the benchmark scripts (`scripts/bench_*.py`) share: argument conventions, the
precondition check, which code is measured, figures printed as a table, and one run path on
which SIGTERM and Ctrl-C stop the measuring and still print the figures taken so far.

    def main() -> int:
        parser = benchkit.parser(__doc__)       # --help is the script's docstring
        benchkit.add_only(parser, PARTS)
        args = parser.parse_args()
        only = benchkit.parse_only(parser, args.only, PARTS)
        summary = benchkit.Summary()

        async def measure() -> None: ...      # measures, prints lines, fills `summary`
        def report() -> int: ...              # prints `summary.lines()`, returns the status

        return benchkit.run("bench_x", measure, report, needs_lab=True)

`run` checks the preconditions before anything starts (flent's runners do the same), so a
machine that cannot run the lab gets one plain line and exit status 3, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from netprobe import exitcodes
from netprobe.errors import NetprobeError
from netprobe.lab.netns import check_lab_available
from netprobe.lab.profiles import PROJECT_ROOT
from netprobe.signals import on_stop_signals, remove_stop_signals

NETPROBE = (sys.executable, "-m", "netprobe")
"""How a benchmark starts netprobe: this interpreter, the package it imports."""


# -- arguments ---------------------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring (title, usage, what it prints)."""
    text = (doc or "").strip()
    return argparse.ArgumentParser(description=text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_only(parser: argparse.ArgumentParser, parts: Iterable[str]) -> None:
    """`--only PART`: repeat it or comma-separate; default every part."""
    parser.add_argument("--only", action="append", default=[], metavar="PART",
                        help=f"{', '.join(parts)} (repeat or comma-separate; default: all)")


def parse_only(parser: argparse.ArgumentParser, values: list[str],
               parts: Iterable[str]) -> set[str]:
    """The parts `--only` names (every part if none); a usage error for an unknown one."""
    known = set(parts)
    only = {p.strip() for v in values for p in v.split(",") if p.strip()} or known
    if only - known:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(only - known))}")
    return only


# -- which code is measured --------------------------------------------------------------------


def code_version() -> str:
    """The last commit that changed the netprobe package (`+dirty` with uncommitted changes
    in netprobe/): each process a benchmark starts imports the code as it is then."""
    git = ["git", "-C", str(PROJECT_ROOT)]
    try:
        head = subprocess.run([*git, "log", "-1", "--format=%h", "--", "netprobe"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "netprobe"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


# -- figures -----------------------------------------------------------------------------------


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 20.0) -> None:
    """SIGTERM `proc` and wait for it; SIGKILL it if it has not ended within `grace_s`."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def verdict(ok: bool | None) -> str:
    """How a figure compares with its target: "ok", "MISSED", or "" (information only)."""
    return "" if ok is None else ("ok" if ok else "MISSED")


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure with `digits` decimals; "-" for none or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class Figure:
    what: str
    """What was measured, in words."""
    got: str
    """The figure, with its unit."""
    target: str
    """What it should be ("<= 5 ms"), or "(information)"."""
    ok: bool | None
    """Whether the target is met; None for a figure without a target."""


@dataclass
class Summary:
    """The figures of a run, printed together at its end (also after an interruption)."""

    figures: list[Figure] = field(default_factory=list)

    def add(self, what: str, got: str, target: str, ok: bool | None) -> None:
        self.figures.append(Figure(what, got, target, ok))

    def lines(self) -> list[str]:
        width = max((len(f.what) for f in self.figures), default=0)
        return [f"  {f.what:<{width}}  {f.got:<34} target {f.target:<16} {verdict(f.ok)}"
                for f in self.figures]

    @property
    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.ok is False]


# -- running -----------------------------------------------------------------------------------


def lab_unavailable(name: str) -> int | None:
    """None if this machine can run the link lab; otherwise say why (one line on stderr) and
    return the exit status for it."""
    reason = check_lab_available()
    if reason is None:
        return None
    print(f"{name}: cannot run here: {reason}", file=sys.stderr)
    return exitcodes.UNAVAILABLE


def run(name: str, measure: Callable[[], Awaitable[None]], report: Callable[[], int], *,
        needs_lab: bool = False) -> int:
    """Check the preconditions, then `measure()`, then `report()` (its return is the exit
    status). SIGTERM or Ctrl-C cancel the measuring (a lab it is in is torn down on the way
    out), and the report of what was measured so far still follows: exit status 130. A
    foreseeable failure (a `NetprobeError`: the lab, the rig, a process that did not do its
    part) is one line on stderr, then the same report: exit status 1."""
    if needs_lab and (status := lab_unavailable(name)) is not None:
        return status
    return asyncio.run(_run(name, measure, report))


async def _run(name: str, measure: Callable[[], Awaitable[None]],
               report: Callable[[], int]) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # Installed before any lab starts: a LinkLab then leaves SIGTERM to us.
    on_stop_signals(loop, task.cancel)
    status: int | None = None
    try:
        await measure()
    except asyncio.CancelledError:
        task.uncancel()
        status = exitcodes.INTERRUPTED
        print(f"\n{name}: interrupted; the figures so far follow", flush=True)
    except NetprobeError as exc:  # the lab, the rig or a measured process did not do its part
        status = exitcodes.FAILED
        print(f"\n{name}: {exc}", file=sys.stderr, flush=True)
    finally:
        remove_stop_signals(loop)
    reported = report()
    return reported if status is None else status

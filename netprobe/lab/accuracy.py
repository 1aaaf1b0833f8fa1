"""Accuracy of `netprobe check` on emulated links: run it, compare with the truth.

`check_on_profile` runs `netprobe serve` in the lab's server namespace and `netprobe check
--json` in its client namespace, over the profile's emulated link, as two real processes.
`judge` (pure) compares the result with the profile's expectation: the verdict, and the
measured RTT, loss and throughput against the link's true values within the tolerances of
issue 3 (RTT ±10 % or ±5 ms, random loss ±1.5 points up to 10 %, throughput −30 %/+10 % of a
rate below the probe's ceiling, never `video` on a link that cannot hold it), and the
expected reason codes and media path (issue 9). On a profile with ``relay``, coturn runs
beside the reflector (`netprobe.lab.coturn`), the reflector hands out its credentials and the
client trusts its TLS certificate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netprobe.config import ProbeSettings
from netprobe.core import pacing
from netprobe.core.pacing import probe_wire_bytes, serialisation_ms
from netprobe.lab.coturn import start_coturn
from netprobe.lab.errors import LabError
from netprobe.lab.linklab import LinkLab
from netprobe.lab.profiles import Profile

PORT = 8765
NETPROBE = (sys.executable, "-m", "netprobe")
#: Probe and echo packet sizes on the wire (IP bytes), for the serialisation part of the RTT:
#: the check's own figures (`netprobe.core.pacing`), for the default probe size.
PROBE_WIRE_BYTES = probe_wire_bytes(ProbeSettings().probe_size)
ECHO_WIRE_BYTES = pacing.ECHO_WIRE_BYTES
#: The probe's top rung (kbit/s): rates at or above it are reported as "at least".
CEILING_KBPS = 3200

RTT_REL, RTT_ABS_MS = 0.10, 5.0
LOSS_PTS, LOSS_MAX_JUDGED = 1.5, 10.0
RATE_LOW, RATE_HIGH = 0.80, 1.10


@dataclass(frozen=True)
class AccuracyRow:
    profile: str
    expected: tuple[str, ...]
    verdict: str
    wall_s: float
    """Time to verdict: from starting the `netprobe check` process to its exit."""
    result: dict[str, Any]
    """The check's JSON output (empty if it printed none)."""
    true_rtt_ms: float | None
    true_loss: tuple[float | None, float | None]
    true_rate: tuple[float | None, float | None]
    trace: bool
    """Capacity follows a trace: the mean rate is not judged against a few seconds."""
    exit_code: int
    stderr: str = ""
    problems: list[str] = field(default_factory=list)
    expected_reasons: tuple[str, ...] = ()
    """Reason codes the result must carry (all of them)."""
    expected_path: str | None = None
    """The media path the result must report; None: not judged."""
    link_bytes: int = 0
    """IP bytes the check put on the emulated link, both directions (signalling included)."""

    @property
    def verdict_ok(self) -> bool:
        return self.verdict in self.expected

    @property
    def ok(self) -> bool:
        return not self.problems


def true_rtt_ms(profile: Profile) -> float | None:
    """The RTT a probe should see on an idle link: propagation plus the time the bottleneck
    takes to serialise one probe (uplink) and one echo (downlink)."""
    if profile.expect is None or profile.expect.rtt_ms is None:
        return None
    return (profile.expect.rtt_ms + serialisation_ms(PROBE_WIRE_BYTES, profile.up.rate_kbps)
            + serialisation_ms(ECHO_WIRE_BYTES, profile.down.rate_kbps))


def judge(row: AccuracyRow) -> list[str]:
    """What is out of tolerance in `row` (pure)."""
    problems = []
    if not row.verdict_ok:
        problems.append(f"verdict {row.verdict}, expected {'/'.join(row.expected)}")
    if row.verdict == "video" and "video" not in row.expected:
        problems.append("VIDEO on a link that cannot hold video")
    got_reasons = _reason_codes(row.result.get("reasons"))
    missing = [code for code in row.expected_reasons if code not in got_reasons]
    if missing:
        problems.append(f"reasons {sorted(got_reasons) or '[]'} lack {', '.join(missing)}")
    if row.expected_path is not None and row.result.get("path") != row.expected_path:
        problems.append(f"path {row.result.get('path')}, expected {row.expected_path}")
    m = row.result.get("metrics") or {}
    rtt = m.get("rtt_ms")
    # On a trace the bottleneck delivers only at the trace's opportunities, so the idle RTT
    # is propagation plus a wait that depends on the trace: not judged.
    if row.true_rtt_ms is not None and rtt is not None and row.verdict != "unknown" and \
            not row.trace:
        if abs(rtt - row.true_rtt_ms) > max(RTT_REL * row.true_rtt_ms, RTT_ABS_MS):
            problems.append(f"rtt {rtt:.0f} ms vs true {row.true_rtt_ms:.0f}")
    for name, truth_loss, truth_rate in (("up", row.true_loss[0], row.true_rate[0]),
                                         ("down", row.true_loss[1], row.true_rate[1])):
        d = m.get(name) or {}
        loss, kbps, at_least = d.get("loss_pct"), d.get("kbps"), d.get("kbps_at_least")
        if truth_loss is not None and truth_loss <= LOSS_MAX_JUDGED and loss is not None:
            # A check that stopped once its verdict was certain reports a coarser loss
            # figure with its 95 % interval (docs/protocol.md, "Stopping"): the truth must
            # then lie in the interval.
            interval = d.get("loss_interval_pct")
            coarse = isinstance(interval, list) and len(interval) == 2 and \
                (interval[1] - interval[0]) / 2 > LOSS_PTS
            if coarse and not interval[0] <= truth_loss <= interval[1]:
                problems.append(f"{name} loss {loss:.1f} % [{interval[0]:.1f}, "
                                f"{interval[1]:.1f}] misses true {truth_loss:g}")
            elif not coarse and abs(loss - truth_loss) > LOSS_PTS:
                problems.append(f"{name} loss {loss:.1f} % vs true {truth_loss:g}")
        if truth_rate is None or kbps is None or row.trace:
            continue
        if kbps > RATE_HIGH * truth_rate:
            problems.append(f"{name} {kbps:.0f} kbit/s OVERSTATES true {truth_rate:g}")
        elif truth_rate < CEILING_KBPS and not at_least and kbps < RATE_LOW * truth_rate:
            problems.append(f"{name} {kbps:.0f} kbit/s vs true {truth_rate:g} (< -20 %)")
    return problems


def _reason_codes(reasons: Any) -> set[str]:
    """The codes of a result's ``reasons``: a list of codes, or of objects with a ``code``."""
    if not isinstance(reasons, list):
        return set()
    codes = set()
    for reason in reasons:
        code = reason.get("code") if isinstance(reason, dict) else reason
        if isinstance(code, str):
            codes.add(code)
    return codes


async def start_reflector(lab: LinkLab, port: int = PORT, timeout: float = 20.0,
                          args: Sequence[str] = ("--open",)) -> asyncio.subprocess.Process:
    """`netprobe serve` on the lab's server address, once it says it is listening. Its
    stderr stays a pipe for the caller to read on; the lab stops it on exit. `args`: access
    (`--open`: checks without tokens; a monitoring stream needs `--token-secret-file`).
    One process (`--workers 1`): the lab measures the link, and on a small machine idle
    worker processes would only add CPU noise beside the emulator."""
    server = await lab.exec_server(
        *NETPROBE, "serve", "--host", lab.server_addr, "--port", str(port), "--workers", "1",
        *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert server.stderr is not None
    line = await asyncio.wait_for(server.stderr.readline(), timeout)
    if b"listening" not in line:
        raise LabError(f"the reflector did not start: {line.decode(errors='replace')}")
    return server


async def check_on_profile(
    profile: Profile, *, check_args: Sequence[str] = (), timeout: float = 45.0,
) -> AccuracyRow:
    """Run `netprobe serve` and `netprobe check --json` over `profile`'s emulated link (with
    coturn beside the reflector if the profile has ``relay``)."""
    expect = profile.expect
    with tempfile.TemporaryDirectory(prefix="netprobe-lab-") as scratch:
        async with LinkLab(profile) as lab:
            reflector_args: list[str] = ["--open"]
            client_env: dict[str, str] = {}
            if profile.relay:
                turn = await start_coturn(lab, Path(scratch) / "coturn")
                reflector_args += turn.reflector_args()
                client_env.update(turn.client_env())
            await start_reflector(lab, PORT, args=reflector_args)
            t0 = time.monotonic()
            client = await lab.exec_client(
                *NETPROBE, "check", "--server", f"http://{lab.server_addr}:{PORT}", "--json",
                *check_args, env=client_env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(client.communicate(), timeout)
            wall = time.monotonic() - t0
            stats = lab.stats()
            link_bytes = stats.up.delivered_bytes + stats.down.delivered_bytes
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    row = AccuracyRow(
        profile=profile.name,
        expected=tuple(expect.verdicts) if expect else (),
        verdict=str(result.get("verdict", "none")),
        wall_s=wall,
        result=result,
        true_rtt_ms=true_rtt_ms(profile),
        true_loss=(expect.loss_up_pct, expect.loss_down_pct) if expect else (None, None),
        true_rate=(expect.rate_up_kbps, expect.rate_down_kbps) if expect else (None, None),
        trace=profile.up.trace is not None or profile.down.trace is not None,
        exit_code=client.returncode if client.returncode is not None else -1,
        stderr=err.decode(errors="replace")[-2000:],
        expected_reasons=expect.reasons if expect else (),
        expected_path=expect.path if expect else None,
        link_bytes=link_bytes,
    )
    row.problems.extend(judge(row))
    return row


def judged_profiles(profiles: dict[str, Profile]) -> list[Profile]:
    """Profiles a pre-session check is judged on: those with an expectation and no phases
    (a link that changes mid-run is for the background agent)."""
    return [p for p in profiles.values() if p.expect is not None and not p.phases]


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def format_row(row: AccuracyRow) -> str:
    m = row.result.get("metrics") or {}
    up, down = m.get("up") or {}, m.get("down") or {}

    def rate(d: dict[str, Any], truth: float | None) -> str:
        got = _fmt(d.get("kbps")) + ("+" if d.get("kbps_at_least") else "")
        return f"{got}/{_fmt(truth)}"

    def loss(d: dict[str, Any], truth: float | None) -> str:
        return f"{_fmt(d.get('loss_pct'), 1)}/{_fmt(truth, 0)}"

    return (f"{row.profile:<18} {'/'.join(row.expected):<17} {row.verdict:<10} "
            f"{'ok ' if row.verdict_ok else 'BAD'} {row.wall_s:5.1f}  "
            f"{_fmt(m.get('rtt_ms')):>5}/{_fmt(row.true_rtt_ms):<5} "
            f"{loss(up, row.true_loss[0]):>9} {loss(down, row.true_loss[1]):>9} "
            f"{rate(up, row.true_rate[0]):>12} {rate(down, row.true_rate[1]):>13}"
            + (" (trace)" if row.trace else "")
            + ("  <- " + "; ".join(row.problems) if row.problems else ""))


HEADER = (f"{'profile':<18} {'expected':<17} {'got':<10} {'   '} {'time':>5}  "
          f"{'rtt/true':<11} {'loss up':>9} {'loss down':>9} {'up kbit/s':>12} "
          f"{'down kbit/s':>13}")

#!/usr/bin/env python3
"""Performance benchmark of the background agent (`netprobe agent`), on the link lab.

    sudo /work/venv/bin/python scripts/bench_agent.py [--only idle,monitor,reaction,status]
        [--idle-minutes 10] [--runs 10] [--monitor-seconds 60] [--status-requests 500]

Everything runs as real processes over the link lab (docs/lab.md): `netprobe serve` in the
server namespace, `netprobe agent` (its own process, a temporary config: reflector URL, API
port, token file and JSON log in a temporary directory) in the client namespace, and a small
HTTP helper in the client namespace too (the agent's API listens on the client namespace's
127.0.0.1, so nothing outside that namespace can reach it). The figures of issue 4:

1. idle: CPU (% of one core, process and children, psutil) averaged over `--idle-minutes`
   with the default idle interval, and the agent process's peak RSS (checks run in a short-
   lived child process, `netprobe/worker.py`; the agent with that child is printed too, RSS
   and PSS, with the seconds a child was alive). The window starts when the API answers,
   so the agent's start-up check (1 s after start) and any scheduled light check that falls in
   the window are *included* in the average; the CPU spent in checks and between them, and the
   long-run average they imply at the configured mean interval, are printed too.
2. monitor: agent CPU and the traffic on the emulated link each way (the lab's per-direction
   byte counters: everything the agent sends and receives, RTP, RTCP, STUN consent and DTLS
   included) while a session is monitored, over `--monitor-seconds`, starting after the
   session's monitoring link is up (no check runs in the window; the log is checked for that).
3. reaction: on profile `agent-degrade` (clean, then 200 kbit/s with 8 % loss, then clean),
   time from the degradation to `audio_only` and from the recovery to `video`, and every
   recommendation change during the session, over `--runs` runs. Changes are read from the
   agent's server-sent events (`GET /v1/events`, stamped on arrival with the monotonic clock,
   which the namespaces share with the lab) and cross-checked with the JSON log's
   `recommendation_changed` lines.
4. status: median and p95 of `GET /v1/status` (one keep-alive connection, one request every
   20 ms) while a session is monitored, over `--status-requests` requests; plus the same with
   a new TCP connection per request.

The figures are printed, not asserted (exit status 0; 3 if the lab cannot run here).
Needs root and /dev/net/tun. Every namespace is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from netprobe.lab import LinkLab, Profile, check_lab_available, load_profile  # noqa: E402
from netprobe.lab.accuracy import start_reflector  # noqa: E402

NETPROBE = (sys.executable, "-m", "netprobe")
REFLECTOR_PORT = 8765
API_PORT = 8766
REACTION_PROFILE = "agent-degrade"
#: The idle interval the agent uses by default (AgentSettings.idle_interval_s).
DEFAULT_IDLE_INTERVAL_S = 600.0

TARGETS = {
    "idle_cpu_pct": 0.5,
    "idle_rss_mb": 80.0,
    "monitor_cpu_pct": 3.0,
    "monitor_kbps": 64.0,
    "down_s": 10.0,
    "up_s": 60.0,
    "status_median_ms": 5.0,
}
RANK = {"video": 0, "audio_only": 1, "phone": 2, "unknown": 3}

# -- the HTTP helper that runs in the client namespace ------------------------------------------
#
# Standard library only, so its own start-up is quick and it never shares the agent's event
# loop. `events PORT`: one JSON line per server-sent event, stamped with time.monotonic() on
# arrival. `repl PORT`: reads commands (JSON lines) on stdin, answers one JSON line each.

HELPER = r'''
import http.client, json, socket, sys, time

def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def events(port):
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    sock.settimeout(None)
    sock.sendall(("GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n"
                  "Accept: text/event-stream\r\n\r\n" % port).encode())
    f = sock.makefile("rb")
    kind = None
    for raw in f:
        line = raw.decode().rstrip("\r\n")
        t = time.monotonic()
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            try:
                data = json.loads(line[5:])
            except ValueError:
                continue
            out({"t": t, "wall": time.time(), "kind": kind, "type": data.get("type"),
                 "from": data.get("from"), "recommendation": data.get("recommendation"),
                 "state": data.get("state"), "check_running": data.get("check_running"),
                 "reasons": [r.get("code") for r in data.get("reasons") or []],
                 "metrics": data.get("metrics")})
    out({"t": time.monotonic(), "kind": "closed"})

def request(conn, method, path, body=None, token=None):
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data

def repl(port):
    conn = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op in ("get", "post"):
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status, data = request(conn, op.upper(), cmd["path"], cmd.get("body"),
                                       cmd.get("token"))
                out({"status": status, "body": json.loads(data) if data else None})
            elif op == "wait":
                deadline = time.monotonic() + cmd["timeout"]
                while True:
                    try:
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                        status, data = request(c, "GET", "/v1/status")
                        c.close()
                        out({"status": status, "body": json.loads(data), "t": time.monotonic()})
                        break
                    except OSError as exc:
                        if time.monotonic() > deadline:
                            out({"status": None, "error": str(exc)})
                            break
                        time.sleep(0.05)
            elif op == "latency":
                n, gap, fresh = cmd["n"], cmd["gap_s"], cmd.get("fresh", False)
                times, bad = [], 0
                c = None if fresh else http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                for i in range(n + cmd.get("warmup", 0)):
                    t0 = time.perf_counter()
                    if fresh:
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    status, data = request(c, "GET", "/v1/status")
                    dt = time.perf_counter() - t0
                    if fresh:
                        c.close()
                    if status != 200 or b'"monitoring"' not in data:
                        bad += 1
                    if i >= cmd.get("warmup", 0):
                        times.append(dt * 1000)
                    rest = gap - (time.perf_counter() - t0)
                    if rest > 0:
                        time.sleep(rest)
                if c is not None:
                    c.close()
                out({"times_ms": times, "bad": bad})
            else:
                out({"error": "unknown op " + op})
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn = None
            out({"status": None, "error": type(exc).__name__ + ": " + str(exc)})

if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    events(port) if mode == "events" else repl(port)
'''


# -- which code is measured -------------------------------------------------------------------


def code_version() -> str:
    """The last commit that changed the netprobe package (`+dirty` with uncommitted changes
    in netprobe/): each agent process imports the code as it is when the process starts."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h", "--",
                               "netprobe"], capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "netprobe"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# -- measuring a process -----------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process, its live children, and reaped children."""
    total = 0.0
    for i, p in enumerate(_tree(pid)):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
            if i == 0:
                total += t.children_user + t.children_system
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 1e6


def own_rss_mb(pid: int) -> float:
    """RSS of the process alone (its measuring children not included), MB."""
    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.NoSuchProcess:
        return math.nan


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of the process and its children (shared pages counted once
    across them), MB."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total / 1e6


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of the process's RSS (VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def _parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# -- the rig: reflector + agent + helper in a lab ----------------------------------------------


class Rig:
    """`netprobe serve` in the server namespace, `netprobe agent` and an HTTP helper in the
    client namespace of a `LinkLab` for `profile`."""

    def __init__(self, lab: LinkLab, workdir: Path) -> None:
        self.lab = lab
        self.dir = workdir
        self.log_path = workdir / "agent.log"
        self.token_path = workdir / "api-token"
        self.config_path = workdir / "agent.toml"
        self.agent: asyncio.subprocess.Process | None = None
        self.helper: asyncio.subprocess.Process | None = None
        self.events_proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.token = ""
        self.api_up_at: float | None = None
        self.agent_started_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.reflector_err: list[str] = []
        self.exit_code: int | None = None
        """The agent's exit status after SIGTERM (set when the rig closes)."""
        self.stderr_text = ""
        """What the agent wrote to stderr (set when the rig closes)."""
        self.version = code_version()
        """The netprobe code the agent was started from."""

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.pid

    async def start(self, extra_agent_config: str = "") -> None:
        lab = self.lab
        server = await start_reflector(lab, REFLECTOR_PORT, timeout=30)
        assert server.stderr is not None
        self._tasks.append(asyncio.create_task(self._drain(server.stderr, self.reflector_err)))
        self.config_path.write_text(
            "[agent]\n"
            f'server = "http://{lab.server_addr}:{REFLECTOR_PORT}"\n'
            f"api_port = {API_PORT}\n"
            f'token_file = "{self.token_path}"\n'
            f'log_file = "{self.log_path}"\n' + extra_agent_config)
        self.agent_err = (self.dir / "agent.stderr").open("wb")  # noqa: ASYNC230, SIM115
        self.agent_started_at = time.monotonic()
        self.agent = await lab.exec_client(
            *NETPROBE, "--config", str(self.config_path), "agent",
            stdout=asyncio.subprocess.DEVNULL, stderr=self.agent_err)
        self.helper = await lab.exec_client(
            sys.executable, "-c", HELPER, "repl", str(API_PORT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        reply = await self.call({"op": "wait", "timeout": 30}, timeout=40)
        if reply.get("status") != 200:
            raise RuntimeError(f"the agent's API did not answer: {reply}; agent stderr: "
                               f"{self.agent_stderr()[-2000:]}")
        self.api_up_at = time.monotonic()
        self.token = self.token_path.read_text().strip()
        name = psutil.Process(self.pid).cmdline()
        if "agent" not in name:
            raise RuntimeError(f"pid {self.pid} is not the agent: {name}")

    async def start_events(self) -> None:
        self.events_proc = await self.lab.exec_client(
            sys.executable, "-c", HELPER, "events", str(API_PORT),
            stdout=asyncio.subprocess.PIPE)
        assert self.events_proc.stdout is not None
        self._tasks.append(asyncio.create_task(self._read_events(self.events_proc.stdout)))
        deadline = time.monotonic() + 10
        while not self.events and time.monotonic() < deadline:  # noqa: ASYNC110 (a pipe)
            await asyncio.sleep(0.05)

    async def _read_events(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode(errors="replace"))

    async def call(self, cmd: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        assert self.helper is not None and self.helper.stdin and self.helper.stdout
        self.helper.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.helper.stdin.drain()
        line = await asyncio.wait_for(self.helper.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the HTTP helper exited")
        return json.loads(line)

    async def status(self) -> dict[str, Any]:
        reply = await self.call({"op": "get", "path": "/v1/status"})
        if reply.get("status") != 200:
            raise RuntimeError(f"GET /v1/status failed: {reply}")
        return reply["body"]

    async def session(self, action: str) -> dict[str, Any]:
        reply = await self.call({"op": "post", "path": "/v1/session",
                                 "body": {"action": action}, "token": self.token})
        if reply.get("status") != 200:
            raise RuntimeError(f"POST /v1/session {action} failed: {reply}")
        return reply["body"]

    async def wait_first_check(self, timeout: float = 40) -> None:
        """Until the start-up check has finished (read from the log: no API traffic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == "check_finished" for e in self.log()):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the agent's first check did not finish in time")

    def log(self) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def agent_stderr(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "agent.stderr").read_text(errors="replace")
        return ""

    async def stop(self) -> int | None:
        """Stop the agent with SIGTERM (as a service manager would) and the helpers."""
        code = None
        if self.agent is not None and self.agent.returncode is None:
            self.agent.terminate()
            try:
                code = await asyncio.wait_for(self.agent.wait(), 10)
            except TimeoutError:
                self.agent.kill()
                await self.agent.wait()
        for proc in (self.helper, self.events_proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            self.agent_err.close()
        return code


@contextlib.asynccontextmanager
async def rig(profile: Profile, extra_agent_config: str = "") -> AsyncIterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        async with LinkLab(profile) as lab:
            r = Rig(lab, Path(tmp))
            try:
                await r.start(extra_agent_config)
                yield r
            finally:
                r.exit_code = await r.stop()
                r.stderr_text = r.agent_stderr()


# -- 1. idle -----------------------------------------------------------------------------------


@dataclass
class IdleResult:
    seconds: float
    cpu_s: float
    cpu_pct: float
    rss_max_mb: float
    """The agent process alone, sampled each second."""
    rss_peak_mb: float | None
    """The agent process's VmHWM: its RSS high-water mark, between samples too."""
    tree_rss_max_mb: float
    """The agent and its measuring children (alive only during a check), summed RSS."""
    tree_pss_max_mb: float
    """The same as PSS: shared library pages counted once."""
    child_seconds: float
    """Seconds of the window with a measuring child alive."""
    checks: list[tuple[float, float, str]]
    """(start, end, verdict) of each check in the window, seconds from the window's start."""
    check_cpu_s: float
    between_cpu_pct: float
    projected_pct: float
    uss_mb: float | None = None
    """Unique set size at the end (memory only this process holds), MB."""


async def bench_idle(minutes: float, *, say: Any = print) -> IdleResult:
    profile = load_profile("clean")
    async with rig(profile) as r:
        pid = r.pid
        t0, c0, wall0 = time.monotonic(), cpu_seconds(pid), time.time()
        end = t0 + minutes * 60
        samples: list[tuple[float, float, float]] = [(t0, wall0, c0)]
        rss_max = own_rss_mb(pid)
        tree_rss = tree_pss = child_s = 0.0
        next_say = t0 + 60
        while (now := time.monotonic()) < end:
            step = min(1.0, end - now)
            await asyncio.sleep(step)
            samples.append((time.monotonic(), time.time(), cpu_seconds(pid)))
            rss_max = max(rss_max, own_rss_mb(pid))
            tree_rss = max(tree_rss, rss_mb(pid))
            tree_pss = max(tree_pss, tree_pss_mb(pid))
            if len(_tree(pid)) > 1:
                child_s += step
            if time.monotonic() >= next_say:
                t, _, c = samples[-1]
                say(f"  idle: {(t - t0) / 60:4.1f} min, CPU so far "
                    f"{100 * (c - c0) / (t - t0):.3f} % of a core, agent RSS "
                    f"{own_rss_mb(pid):.1f} MB")
                next_say += 60
        t1, _, c1 = samples[-1]
        peak = peak_rss_mb(pid)
        uss = None
        with contextlib.suppress(psutil.Error):
            uss = psutil.Process(pid).memory_full_info().uss / 1e6
        log = r.log()
    # checks from the JSON log, as wall-clock spans
    checks, started = [], None
    for e in log:
        if e.get("event") == "check_started":
            started = _parse_ts(e["ts"])
        elif e.get("event") == "check_finished" and started is not None:
            checks.append((started, _parse_ts(e["ts"]), str(e.get("verdict"))))
            started = None
    # CPU in 1 s samples that overlap a check (±1 s) vs the rest
    in_check = between = 0.0
    between_t = 0.0
    for (ta, wa, ca), (tb, wb, cb) in zip(samples, samples[1:], strict=False):
        busy = any(wa < e + 1.0 and wb > s - 1.0 for s, e, _ in checks)
        if busy:
            in_check += cb - ca
        else:
            between += cb - ca
            between_t += tb - ta
    n_checks = len(checks)
    per_check = in_check / n_checks if n_checks else 0.0
    between_pct = 100 * between / between_t if between_t > 0 else math.nan
    projected = between_pct + 100 * per_check / DEFAULT_IDLE_INTERVAL_S
    return IdleResult(
        seconds=t1 - t0, cpu_s=c1 - c0, cpu_pct=100 * (c1 - c0) / (t1 - t0),
        rss_max_mb=rss_max, rss_peak_mb=peak, tree_rss_max_mb=tree_rss,
        tree_pss_max_mb=tree_pss, child_seconds=child_s,
        checks=[(s - wall0, e - wall0, v) for s, e, v in checks],
        check_cpu_s=per_check, between_cpu_pct=between_pct, projected_pct=projected, uss_mb=uss)


# -- 2. monitoring and 4. status latency -------------------------------------------------------


@dataclass
class MonitorResult:
    seconds: float = 0.0
    cpu_pct: float = math.nan
    up_kbps: float = math.nan
    down_kbps: float = math.nan
    up_pps: float = math.nan
    down_pps: float = math.nan
    checks_in_window: int = 0
    recommendation: str = ""
    rss_mb: float = math.nan


@dataclass
class StatusResult:
    n: int = 0
    median_ms: float = math.nan
    p95_ms: float = math.nan
    max_ms: float = math.nan
    bad: int = 0
    fresh_median_ms: float = math.nan
    fresh_p95_ms: float = math.nan


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def _start_monitoring(r: Rig, settle_s: float = 5.0) -> None:
    await r.wait_first_check()
    body = await r.session("start")
    if body.get("state") != "monitoring":
        raise RuntimeError(f"the session did not start: {body}")
    # a session check runs only if the last one is older than 60 s; wait it out if so
    deadline = time.monotonic() + 30
    while (await r.status()).get("check_running") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    await asyncio.sleep(settle_s)  # the monitoring link's ICE/DTLS set-up


async def bench_monitor(seconds: float, status_requests: int, *, do_monitor: bool = True,
                        do_status: bool = True) -> tuple[MonitorResult, StatusResult]:
    mon, st = MonitorResult(), StatusResult()
    async with rig(load_profile("clean")) as r:
        await _start_monitoring(r)
        if do_monitor:
            lab, pid = r.lab, r.pid
            s0, c0, t0, w0 = lab.stats(), cpu_seconds(pid), time.monotonic(), time.time()
            await asyncio.sleep(seconds)
            s1, c1, t1, w1 = lab.stats(), cpu_seconds(pid), time.monotonic(), time.time()
            dt = t1 - t0
            mon.seconds = dt
            mon.cpu_pct = 100 * (c1 - c0) / dt
            mon.up_kbps = (s1.up.delivered_bytes - s0.up.delivered_bytes) * 8 / dt / 1000
            mon.down_kbps = (s1.down.delivered_bytes - s0.down.delivered_bytes) * 8 / dt / 1000
            mon.up_pps = (s1.up.delivered - s0.up.delivered) / dt
            mon.down_pps = (s1.down.delivered - s0.down.delivered) / dt
            mon.checks_in_window = sum(
                1 for e in r.log() if e.get("event") == "check_started"
                and w0 <= _parse_ts(e["ts"]) <= w1)
            mon.rss_mb = rss_mb(pid)
            status = await r.status()
            mon.recommendation = f"{status['state']}/{status['recommendation']}"
        if do_status:
            warm = 20
            reply = await r.call({"op": "latency", "n": status_requests, "gap_s": 0.02,
                                  "warmup": warm}, timeout=status_requests * 0.5 + 60)
            times = reply["times_ms"]
            st.n, st.bad = len(times), reply["bad"]
            st.median_ms, st.p95_ms, st.max_ms = (statistics.median(times), _pct(times, 95),
                                                  max(times))
            reply = await r.call({"op": "latency", "n": 100, "gap_s": 0.02, "fresh": True,
                                  "warmup": 5}, timeout=120)
            fresh = reply["times_ms"]
            st.fresh_median_ms, st.fresh_p95_ms = statistics.median(fresh), _pct(fresh, 95)
            st.bad += reply["bad"]
    return mon, st


# -- 3. reaction -------------------------------------------------------------------------------


@dataclass
class Change:
    at: float
    """Seconds from the lab's start (monotonic arrival of the SSE event)."""
    old: str
    new: str
    reasons: list[str] = field(default_factory=list)
    metrics: str = ""
    """The figures the agent published with the change (window or check)."""

    @property
    def down(self) -> bool:
        return RANK.get(self.new, 9) > RANK.get(self.old, 9)

    def __str__(self) -> str:
        return (f"{self.at:6.1f} s {self.old}->{self.new} ({','.join(self.reasons)})"
                + (f" [{self.metrics}]" if self.metrics else ""))


def _brief_metrics(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    up, down = m.get("up") or {}, m.get("down") or {}
    return (f"rtt {_fmt(m.get('rtt_ms'), 0)} ms, mos {_fmt(m.get('mos_audio'), 2)}, loss up/down "
            f"{_fmt(up.get('loss_pct'))}/{_fmt(down.get('loss_pct'))} %, jitter up/down "
            f"{_fmt(up.get('jitter_ms'))}/{_fmt(down.get('jitter_ms'))} ms, kbit/s up/down "
            f"{_fmt(up.get('kbps'), 0)}/{_fmt(down.get('kbps'), 0)}, packets up/down "
            f"{up.get('packets')}/{down.get('packets')}")


@dataclass
class ReactionResult:
    degrade_at: float
    recover_at: float
    session_at: float
    changes: list[Change]
    log_changes: list[tuple[str, str]]
    """(from, to) of the JSON log's recommendation_changed lines after session_started."""
    down_s: float | None = None
    up_s: float | None = None
    n_down: int = 0
    n_up: int = 0
    problems: list[str] = field(default_factory=list)
    checks: list[tuple[str, float, float, str]] = field(default_factory=list)
    """Checks from the agent's log (kind, start, end in lab seconds, verdict)."""
    agent_exit: int | None = None
    """The agent's exit status after SIGTERM."""
    agent_stderr: str = ""
    version: str = ""
    """The netprobe code the agent ran (`code_version`)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        """`line()`, then every change and every check of the run, one a line."""
        lines = [self.line()]
        lines += [f"        change {c}" for c in self.changes]
        lines += [f"        check  {s:6.1f}-{e:5.1f} s {kind:<7} -> {v}"
                  for kind, s, e, v in self.checks]
        return "\n".join(lines)

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "  -  " if v is None else f"{v:5.1f}"
        return (f"[{self.version}] session at {self.session_at:5.1f} s; audio_only after "
                f"{f(self.down_s)} s, "
                f"video after {f(self.up_s)} s; changes down {self.n_down}, up {self.n_up}"
                + ("" if self.ok else "  <- " + "; ".join(self.problems)))


#: Where the agent's log of a reaction run that went wrong is kept.
KEEP_DIR = Path(tempfile.gettempdir()) / "netprobe-bench-agent"


def phase_times(profile: Profile) -> tuple[float, float]:
    """(degradation, recovery) seconds of a clean -> degraded -> clean profile."""
    phases = sorted(profile.phases, key=lambda p: p.start_s)
    if len(phases) < 2:
        raise ValueError(f"profile {profile.name!r} needs two phases (degrade, recover)")
    return phases[0].start_s, phases[1].start_s


async def reaction_run(profile_name: str = REACTION_PROFILE, *, tail_s: float = 62.0,
                       min_lead_s: float = 10.0) -> ReactionResult:
    """One run: start a session on the clean link, let the profile degrade and recover it,
    collect the recommendation changes until `tail_s` after the recovery."""
    profile = load_profile(profile_name)
    degrade, recover = phase_times(profile)
    async with rig(profile) as r:
        lab = r.lab
        await r.start_events()
        await r.wait_first_check()
        if lab.elapsed() > degrade - min_lead_s:
            raise RuntimeError(f"the agent's first check ended only at {lab.elapsed():.1f} s "
                               f"of the lab, too close to the degradation at {degrade} s")
        await r.session("start")
        session_at = lab.elapsed()
        end = recover + tail_s
        await asyncio.sleep(max(0.0, end - lab.elapsed()))
        await r.session("stop")
        await asyncio.sleep(0.3)
        epoch, log = lab.epoch, r.log()
        events = list(r.events)
        wall_minus_mono = time.time() - time.monotonic()
    changes = [Change(e["t"] - epoch, str(e["from"]), str(e["recommendation"]), e["reasons"],
                      _brief_metrics(e.get("metrics")))
               for e in events if e.get("type") == "recommendation"]
    session_changes = [c for c in changes if c.at >= session_at]
    session_log = log[next((i for i, e in enumerate(log)
                            if e.get("event") == "session_started"), len(log)):]
    log_changes = [(str(e.get("from")), str(e.get("to"))) for e in session_log
                   if e.get("event") == "recommendation_changed"]
    checks, started = [], None
    for e in log:
        if e.get("event") == "check_started":
            started = (e.get("kind"), _parse_ts(e["ts"]) - wall_minus_mono - epoch)
        elif e.get("event") == "check_finished" and started is not None:
            checks.append((str(started[0]), started[1],
                           _parse_ts(e["ts"]) - wall_minus_mono - epoch, str(e.get("verdict"))))
            started = None
    res = ReactionResult(degrade, recover, session_at, session_changes, log_changes,
                         checks=checks, agent_exit=r.exit_code, agent_stderr=r.stderr_text,
                         version=r.version)
    res.n_down = sum(1 for c in session_changes if c.down)
    res.n_up = sum(1 for c in session_changes if not c.down)
    first_down = next((c for c in session_changes if c.at >= degrade), None)
    if first_down is not None and first_down.new == "audio_only" and first_down.at < recover:
        res.down_s = first_down.at - degrade
    first_up = next((c for c in session_changes if c.at >= recover and c.new == "video"), None)
    if first_up is not None:
        res.up_s = first_up.at - recover
    before = [c for c in session_changes if c.at < degrade]
    if before:
        res.problems.append(f"{len(before)} change(s) before the degradation")
    if res.down_s is None:
        res.problems.append("no step down to audio_only during the degradation"
                            + (f" (first change: {first_down})" if first_down else ""))
    elif res.down_s > TARGETS["down_s"]:
        res.problems.append(f"audio_only only after {res.down_s:.1f} s")
    if res.up_s is None:
        res.problems.append("no step back up to video after the recovery")
    elif res.up_s > TARGETS["up_s"]:
        res.problems.append(f"video only after {res.up_s:.1f} s")
    if (res.n_down, res.n_up) != (1, 1):
        res.problems.append(f"{res.n_down} change(s) down and {res.n_up} up, not 1 and 1: "
                            + "; ".join(str(c) for c in session_changes))
    sse_pairs = [(c.old, c.new) for c in session_changes]
    if sse_pairs != log_changes:
        res.problems.append(f"events {sse_pairs} differ from the log {log_changes}")
    if res.problems:  # keep the evidence: the agent's log (times from the lab's start)
        KEEP_DIR.mkdir(parents=True, exist_ok=True)
        kept = KEEP_DIR / f"reaction-{time.strftime('%H%M%S')}.jsonl"
        with kept.open("w") as f:
            for e in log:
                t = _parse_ts(e["ts"]) - wall_minus_mono - epoch if "ts" in e else None
                f.write(json.dumps({"lab_s": None if t is None else round(t, 2), **e}) + "\n")
            f.write(json.dumps({"agent_stderr": r.stderr_text}) + "\n")
        res.problems.append(f"agent log kept in {kept}")
    return res


# -- main --------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--only", action="append", metavar="PART",
                        help="idle, monitor, reaction or status (repeat or comma-separate; "
                             "default: all)")
    parser.add_argument("--idle-minutes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=10, help="reaction runs (default 10)")
    parser.add_argument("--monitor-seconds", type=float, default=60.0)
    parser.add_argument("--status-requests", type=int, default=500)
    parser.add_argument("--profile", default=REACTION_PROFILE,
                        help=f"reaction profile (default {REACTION_PROFILE})")
    args = parser.parse_args(argv)
    parts = {"idle", "monitor", "reaction", "status"}
    only = {p.strip() for o in (args.only or []) for p in o.split(",") if p.strip()} or parts
    if only - parts:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(only - parts))}")
    reason = check_lab_available()
    if reason:
        print(f"bench_agent: {reason}", file=sys.stderr)
        return 3
    summary: list[tuple[str, str, str, bool | None]] = []
    started_version = code_version()
    print(f"netprobe code measured: {started_version} (each section names the code its agent "
          f"started from)", flush=True)

    async def sections() -> None:
        if "reaction" in only:
            profile = load_profile(args.profile)
            degrade, recover = phase_times(profile)
            print(f"== reaction: profile {profile.name!r} (degraded {degrade:g}-{recover:g} s of "
                  f"the lab), {args.runs} run(s)", flush=True)
            results: list[ReactionResult] = []
            for i in range(args.runs):
                try:
                    res = await reaction_run(args.profile)
                except RuntimeError as exc:
                    print(f"  run {i + 1}: FAILED TO RUN: {exc}", flush=True)
                    continue
                results.append(res)
                print(f"  run {i + 1}: {res.report()}", flush=True)
            downs = [r.down_s for r in results if r.down_s is not None]
            ups = [r.up_s for r in results if r.up_s is not None]

            def spread(xs: list[float]) -> str:
                if not xs:
                    return "-"
                return f"{max(xs):.1f} s ({statistics.median(xs):.1f} s)"

            exact = sum(1 for r in results if (r.n_down, r.n_up) == (1, 1))
            n = len(results)
            summary.extend([
                ("reaction: to audio_only after degradation, max (median)",
                 f"{spread(downs)}, {len(downs)}/{args.runs} runs", "<= 10 s",
                 bool(downs) and len(downs) == args.runs and max(downs) <= TARGETS["down_s"]),
                ("reaction: back to video after recovery, max (median)",
                 f"{spread(ups)}, {len(ups)}/{args.runs} runs", "<= 60 s",
                 bool(ups) and len(ups) == args.runs and max(ups) <= TARGETS["up_s"]),
                ("reaction: runs with exactly one change each way",
                 f"{exact}/{args.runs} (changes down/up per run: "
                 f"{' '.join(f'{r.n_down}/{r.n_up}' for r in results)})", "all",
                 exact == args.runs and n == args.runs),
            ])

        if only & {"monitor", "status"}:
            what = [f"{args.monitor_seconds:g} s measured"] if "monitor" in only else []
            what += [f"{args.status_requests} status reads"] if "status" in only else []
            print(f"== monitoring a session (clean link): {', '.join(what)} [{code_version()}]",
                  flush=True)
            mon, st = await bench_monitor(args.monitor_seconds, args.status_requests,
                                          do_monitor="monitor" in only, do_status="status" in only)
            if "monitor" in only:
                print(f"  {mon.seconds:.0f} s monitored ({mon.recommendation}): agent CPU "
                      f"{mon.cpu_pct:.2f} % of a core, RSS {mon.rss_mb:.1f} MB; link up "
                      f"{mon.up_kbps:.1f} kbit/s ({mon.up_pps:.1f} packets/s), down "
                      f"{mon.down_kbps:.1f} kbit/s ({mon.down_pps:.1f} packets/s); checks in the "
                      f"window: {mon.checks_in_window}", flush=True)
                summary.extend([
                    ("monitoring: agent CPU, % of one core", f"{mon.cpu_pct:.2f} %", "<= 3 %",
                     mon.cpu_pct <= TARGETS["monitor_cpu_pct"]),
                    ("monitoring: traffic up (client -> reflector), IP bytes",
                     f"{mon.up_kbps:.1f} kbit/s", "<= 64 kbit/s",
                     mon.up_kbps <= TARGETS["monitor_kbps"]),
                    ("monitoring: traffic down (reflector -> client), IP bytes",
                     f"{mon.down_kbps:.1f} kbit/s", "<= 64 kbit/s",
                     mon.down_kbps <= TARGETS["monitor_kbps"]),
                ])
            if "status" in only:
                print(f"  GET /v1/status x{st.n} (keep-alive, every 20 ms, while monitoring): "
                      f"median {st.median_ms:.2f} ms, p95 {st.p95_ms:.2f} ms, max "
                      f"{st.max_ms:.2f} ms; new connection each: median {st.fresh_median_ms:.2f} "
                      f"ms, p95 {st.fresh_p95_ms:.2f} ms; bad answers {st.bad}", flush=True)
                summary.extend([
                    ("status read while monitoring: median (p95)",
                     f"{st.median_ms:.2f} ms ({st.p95_ms:.2f} ms)", "<= 5 ms median",
                     st.median_ms <= TARGETS["status_median_ms"] and st.bad == 0),
                ])

        if "idle" in only:
            print(f"== idle: {args.idle_minutes:g} min, default idle interval "
                  f"({DEFAULT_IDLE_INTERVAL_S:g} s ±20 %) [{code_version()}]", flush=True)
            idle = await bench_idle(args.idle_minutes)
            checks = ", ".join(f"{s:.0f}-{e:.0f} s ({v})" for s, e, v in idle.checks) or "none"
            print(f"  {idle.seconds:.0f} s: {idle.cpu_s:.2f} CPU-s = {idle.cpu_pct:.3f} % of a "
                  f"core (checks in the window: {checks}); {idle.check_cpu_s:.2f} CPU-s per light "
                  f"check, {idle.between_cpu_pct:.3f} % between checks; long-run average at one "
                  f"check per {DEFAULT_IDLE_INTERVAL_S:g} s: {idle.projected_pct:.3f} %",
                  flush=True)
            print(f"  memory: agent process RSS max {idle.rss_max_mb:.1f} MB (sampled each "
                  f"second), VmHWM {_fmt(idle.rss_peak_mb)} MB, USS at the end "
                  f"{_fmt(idle.uss_mb)} MB; with its measuring child (alive "
                  f"{idle.child_seconds:.0f} s of {idle.seconds:.0f} s, during checks): RSS "
                  f"summed max {idle.tree_rss_max_mb:.1f} MB, PSS max "
                  f"{idle.tree_pss_max_mb:.1f} MB", flush=True)
            summary.extend([
                (f"idle: CPU over {args.idle_minutes:g} min (start-up check included)",
                 f"{idle.cpu_pct:.3f} %", "<= 0.5 %", idle.cpu_pct <= TARGETS["idle_cpu_pct"]),
                ("idle: CPU between checks / long-run with one check per 600 s",
                 f"{idle.between_cpu_pct:.3f} % / {idle.projected_pct:.3f} %", "<= 0.5 %",
                 idle.projected_pct <= TARGETS["idle_cpu_pct"]),
                ("idle: agent max RSS (peak VmHWM)",
                 f"{idle.rss_max_mb:.1f} MB ({_fmt(idle.rss_peak_mb)} MB)", "<= 80 MB",
                 max(idle.rss_max_mb, idle.rss_peak_mb or 0) <= TARGETS["idle_rss_mb"]),
                (f"idle: + measuring child during checks ({idle.child_seconds:.0f} s), RSS/PSS",
                 f"{idle.tree_rss_max_mb:.1f}/{idle.tree_pss_max_mb:.1f} MB", "(information)",
                 None),
            ])

    interrupted = False
    try:
        await sections()
    except asyncio.CancelledError:  # SIGTERM (the lab turns it into cancellation) or Ctrl-C
        interrupted = True
        print("\nbench_agent: interrupted; the figures so far follow", flush=True)

    ended_version = code_version()
    print(f"\n== summary (issue 4, figures to reach), netprobe {started_version}"
          + (f" -> {ended_version}: THE CODE CHANGED DURING THE RUN"
             if ended_version != started_version else ""))
    width = max(len(s[0]) for s in summary) if summary else 0
    for what, got, target, ok in summary:
        print(f"  {what:<{width}}  {got:<34} target {target:<16} {_verdict(ok)}")
    return 143 if interrupted else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)

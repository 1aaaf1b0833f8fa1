"""A small UDP sender, receiver, echo and ping to check the lab against its profile.

Run inside the lab's namespaces (``python -m netprobe.lab.udpmeter recv|send|echo|ping``); the
async helpers `one_way` and `round_trip` do that from a `LinkLab` and return the summaries.
Each packet carries its sequence number and its send time on the monotonic clock, which
network namespaces share, so the receiver measures the true one-way delay of each direction.
Packet sizes and rates count whole IP packets (UDP payload + 28 bytes), as the link does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netprobe.lab.errors import LabError

if TYPE_CHECKING:
    from netprobe.lab.linklab import LinkLab, Side

_HEADER = struct.Struct("!Id")  # sequence number, send time (monotonic seconds)
IP_UDP_OVERHEAD = 28
"""Bytes of IPv4 and UDP headers on top of a UDP payload."""
PORT = 47000


@dataclass(frozen=True)
class OneWaySummary:
    """What one direction delivered of a paced stream."""

    sent: int
    """Packets the sender handed to its socket."""
    received: int
    """Distinct packets that arrived."""
    loss_pct: float
    """100 * (sent - received) / sent."""
    reordered: int
    """Packets that arrived after one with a higher sequence number."""
    delay_ms_min: float
    """Smallest one-way delay."""
    delay_ms_median: float
    """Median one-way delay."""
    delay_ms_mean: float
    """Mean one-way delay."""
    delay_ms_max: float
    """Largest one-way delay."""
    rate_kbps: float
    """IP bytes received per second between the first and the last arrival, in kbit/s."""
    first_arrival: float
    """Monotonic time of the first arrival."""
    last_arrival: float
    """Monotonic time of the last arrival."""


def summarize(sent: int, arrivals: Sequence[tuple[int, float, float, int]]) -> OneWaySummary:
    """Pure: ``arrivals`` are ``(seq, sent_at, arrived_at, ip_bytes)`` in arrival order."""
    seen: set[int] = set()
    delays: list[float] = []
    reordered = 0
    highest = -1
    unique: list[tuple[int, float, float, int]] = []
    for seq, sent_at, arrived_at, size in arrivals:
        if seq in seen:
            continue
        seen.add(seq)
        unique.append((seq, sent_at, arrived_at, size))
        delays.append((arrived_at - sent_at) * 1000.0)
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    nan = math.nan
    rate = nan
    if len(unique) >= 2:
        span = unique[-1][2] - unique[0][2]
        if span > 0:
            rate = sum(u[3] for u in unique[1:]) * 8 / span / 1000.0
    return OneWaySummary(
        sent=sent,
        received=len(unique),
        loss_pct=100.0 * (sent - len(unique)) / sent if sent else nan,
        reordered=reordered,
        delay_ms_min=min(delays, default=nan),
        delay_ms_median=statistics.median(delays) if delays else nan,
        delay_ms_mean=statistics.fmean(delays) if delays else nan,
        delay_ms_max=max(delays, default=nan),
        rate_kbps=rate,
        first_arrival=unique[0][2] if unique else nan,
        last_arrival=unique[-1][2] if unique else nan,
    )


# -- the programs run inside the namespaces ----------------------------------------------------


def _recv(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((args.bind, args.port))
    print("ready", flush=True)
    arrivals: list[tuple[int, float, float, int]] = []
    sock.settimeout(args.timeout)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        now = time.monotonic()
        if len(data) >= _HEADER.size:
            seq, sent_at = _HEADER.unpack_from(data)
            arrivals.append((seq, sent_at, now, len(data) + IP_UDP_OVERHEAD))
        sock.settimeout(args.idle)
    print(json.dumps({"arrivals": arrivals}), flush=True)


def _send(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    payload = bytearray(max(args.size - IP_UDP_OVERHEAD, _HEADER.size))
    interval = (len(payload) + IP_UDP_OVERHEAD) * 8 / (args.rate_kbps * 1000.0)
    start = time.monotonic() + 0.01
    sent = errors = 0
    for seq in range(args.count):
        target = start + seq * interval
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _HEADER.pack_into(payload, 0, seq, time.monotonic())
        try:
            sock.sendto(payload, (args.to, args.port))
            sent += 1
        except OSError:
            errors += 1
    print(json.dumps({"sent": sent, "errors": errors, "start": start}), flush=True)


def _echo(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    print("ready", flush=True)
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(data, addr)


def _ping(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(args.timeout)
    rtts: list[float] = []
    payload = bytearray(max(args.size - IP_UDP_OVERHEAD, _HEADER.size))
    for seq in range(args.count):
        sent_at = time.monotonic()
        _HEADER.pack_into(payload, 0, seq, sent_at)
        sock.sendto(payload, (args.to, args.port))
        try:
            while True:
                data = sock.recv(65535)
                if _HEADER.unpack_from(data)[0] == seq:
                    rtts.append((time.monotonic() - sent_at) * 1000.0)
                    break
        except TimeoutError:
            pass
        time.sleep(max(0.0, args.interval - (time.monotonic() - sent_at)))
    print(json.dumps({"sent": args.count, "rtt_ms": rtts}), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netprobe.lab.udpmeter")
    sub = parser.add_subparsers(dest="command", required=True)
    recv = sub.add_parser("recv", help="receive a stream, print the arrivals as JSON")
    recv.add_argument("--bind", default="0.0.0.0")
    recv.add_argument("--port", type=int, default=PORT)
    recv.add_argument("--timeout", type=float, default=60.0, help="longest run, seconds")
    recv.add_argument(
        "--idle", type=float, default=2.0, help="stop this long after the last packet"
    )
    recv.set_defaults(func=_recv)
    send = sub.add_parser("send", help="send a paced stream")
    send.add_argument("--to", required=True)
    send.add_argument("--port", type=int, default=PORT)
    send.add_argument("--count", type=int, default=1000)
    send.add_argument("--size", type=int, default=1200, help="IP packet size, bytes")
    send.add_argument("--rate-kbps", type=float, default=1000.0, help="offered IP rate")
    send.set_defaults(func=_send)
    echo = sub.add_parser("echo", help="echo datagrams back")
    echo.add_argument("--bind", default="0.0.0.0")
    echo.add_argument("--port", type=int, default=PORT + 1)
    echo.set_defaults(func=_echo)
    ping = sub.add_parser("ping", help="UDP ping an echo, print the RTTs as JSON")
    ping.add_argument("--to", required=True)
    ping.add_argument("--port", type=int, default=PORT + 1)
    ping.add_argument("--count", type=int, default=50)
    ping.add_argument("--interval", type=float, default=0.02)
    ping.add_argument("--size", type=int, default=100)
    ping.add_argument("--timeout", type=float, default=3.0)
    ping.set_defaults(func=_ping)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        pass


# -- helpers driving the programs from a LinkLab -----------------------------------------------


def _module_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "netprobe.lab.udpmeter", *args]


async def _wait_ready(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 10.0)
    if line.strip() != b"ready":
        raise LabError(f"udpmeter did not start: {line!r}")


async def _json_output(process: asyncio.subprocess.Process) -> Any:
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise LabError(f"udpmeter failed with status {process.returncode}")
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def one_way(
    lab: LinkLab,
    sender: Side,
    *,
    count: int,
    rate_kbps: float,
    size: int = 1200,
    port: int = PORT,
    idle_s: float = 2.0,
) -> OneWaySummary:
    """Send ``count`` packets of ``size`` IP bytes at ``rate_kbps`` from ``sender`` to the
    other side and summarise what arrived."""
    receiver: Side = "server" if sender == "client" else "client"
    to = lab.server_addr if sender == "client" else lab.client_addr
    pipe = asyncio.subprocess.PIPE
    recv = await lab.exec(
        receiver, *_module_argv("recv", "--port", str(port), "--idle", str(idle_s)), stdout=pipe
    )
    await _wait_ready(recv)
    send = await lab.exec(
        sender,
        *_module_argv(
            "send",
            "--to",
            to,
            "--port",
            str(port),
            "--count",
            str(count),
            "--size",
            str(size),
            "--rate-kbps",
            str(rate_kbps),
        ),
        stdout=pipe,
    )
    sent = await _json_output(send)
    arrivals = (await _json_output(recv))["arrivals"]
    return summarize(sent["sent"], [tuple(a) for a in arrivals])


async def round_trip(lab: LinkLab, *, count: int = 50, interval_s: float = 0.02) -> list[float]:
    """UDP-ping an echo in the server namespace from the client one; the RTTs in ms."""
    pipe = asyncio.subprocess.PIPE
    echo = await lab.exec_server(*_module_argv("echo"), stdout=pipe)
    await _wait_ready(echo)
    ping = await lab.exec_client(
        *_module_argv(
            "ping", "--to", lab.server_addr, "--count", str(count), "--interval", str(interval_s)
        ),
        stdout=pipe,
    )
    result = await _json_output(ping)
    echo.terminate()
    await echo.wait()
    return list(result["rtt_ms"])


if __name__ == "__main__":
    main()

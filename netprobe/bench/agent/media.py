"""A stand-in for a call's media, run as its own process in the lab (standard library only):

    python -m netprobe.bench.agent.media echo PORT          # server namespace: UDP echo
    python -m netprobe.bench.agent.media call HOST PORT KBPS  # client namespace: the "call"

`call` sends 1000-byte UDP datagrams to the echo at KBPS kbit/s (paced, like RTP) and reads
the echoes, so the link carries KBPS each way, from a process that is not netprobe, until it is
terminated. It prints `ready` once its socket is open.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

SIZE = 1000


def echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def call(host: str, port: int, kbps: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    gap = SIZE * 8 / (kbps * 1000)
    payload = b"m" * SIZE
    print("ready", flush=True)
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_at:
            try:
                sock.send(payload)
            except OSError:
                pass  # (a full buffer or no route for a moment: media goes on)
            next_at += gap
        try:
            while sock.recv(2048):
                pass
        except OSError:
            pass
        time.sleep(max(0.0, min(0.005, next_at - time.monotonic())))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if argv[:1] == ["echo"] and len(argv) == 2:
            echo(int(argv[1]))
        elif argv[:1] == ["call"] and len(argv) == 4:
            call(argv[1], int(argv[2]), float(argv[3]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The agent benchmark's HTTP helper, run in the lab's client namespace (the agent's API
listens on that namespace's 127.0.0.1, so nothing outside it can reach the API):

    python -m netprobe.bench.agent.helper events PORT
    python -m netprobe.bench.agent.helper repl PORT

`events`: one JSON line per server-sent event of `GET /v1/events`, stamped with
`time.monotonic()` on arrival (the namespaces share the lab's monotonic clock).
`repl`: reads commands (JSON lines) on stdin and answers one JSON line each:

- ``{"op": "get"|"post", "path": ..., "body": ..., "token": ...}`` -> ``{"status", "body"}``
  (one keep-alive connection);
- ``{"op": "wait", "timeout": s}``: until `GET /v1/status` answers -> ``{"status", "body", "t"}``;
- ``{"op": "latency", "n", "gap_s", "fresh", "warmup"}``: `n` timed `GET /v1/status`, one
  every `gap_s` (a new connection each with `fresh`) -> ``{"times_ms", "bad"}``.

Standard library only, so its own start-up is quick, and a process of its own, so it never
shares the agent's event loop.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import Any

HOST = "127.0.0.1"


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def events(port: int) -> None:
    """Print each event of the agent's event stream until it closes."""
    while True:
        try:
            sock = socket.create_connection((HOST, port), timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    sock.settimeout(None)
    sock.sendall((f"GET /v1/events HTTP/1.0\r\nHost: {HOST}:{port}\r\n"
                  "Accept: text/event-stream\r\n\r\n").encode())
    kind = None
    for raw in sock.makefile("rb"):
        line = raw.decode().rstrip("\r\n")
        arrived = time.monotonic()
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            try:
                data = json.loads(line[5:])
            except ValueError:
                continue
            out({"t": arrived, "wall": time.time(), "kind": kind, "type": data.get("type"),
                 "from": data.get("from"), "recommendation": data.get("recommendation"),
                 "state": data.get("state"), "check_running": data.get("check_running"),
                 "reasons": [r.get("code") for r in data.get("reasons") or []],
                 "metrics": data.get("metrics")})
    out({"t": time.monotonic(), "kind": "closed"})


def request(conn: http.client.HTTPConnection, method: str, path: str,
            body: Any = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def wait_for_api(port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            status, data = request(conn, "GET", "/v1/status")
            conn.close()
            return {"status": status, "body": json.loads(data), "t": time.monotonic()}
        except OSError as exc:
            if time.monotonic() > deadline:
                return {"status": None, "error": str(exc)}
            time.sleep(0.05)


def latency(port: int, n: int, gap_s: float, fresh: bool, warmup: int) -> dict[str, Any]:
    times: list[float] = []
    bad = 0
    conn = None if fresh else http.client.HTTPConnection(HOST, port, timeout=5)
    for i in range(n + warmup):
        t0 = time.perf_counter()
        if fresh:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
        assert conn is not None
        status, data = request(conn, "GET", "/v1/status")
        dt = time.perf_counter() - t0
        if fresh:
            conn.close()
        if status != 200 or b'"monitoring"' not in data:
            bad += 1
        if i >= warmup:
            times.append(dt * 1000)
        rest = gap_s - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    if conn is not None:
        conn.close()
    return {"times_ms": times, "bad": bad}


def repl(port: int) -> None:
    """Answer each command line on stdin with one JSON line, until stdin closes."""
    conn = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op in ("get", "post"):
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
                status, data = request(conn, op.upper(), cmd["path"], cmd.get("body"),
                                       cmd.get("token"))
                out({"status": status, "body": json.loads(data) if data else None})
            elif op == "wait":
                out(wait_for_api(port, cmd["timeout"]))
            elif op == "latency":
                out(latency(port, cmd["n"], cmd["gap_s"], cmd.get("fresh", False),
                            cmd.get("warmup", 0)))
            else:
                out({"error": "unknown op " + op})
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn = None
            out({"status": None, "error": type(exc).__name__ + ": " + str(exc)})


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("events", "repl") or not argv[1].isdigit():
        print("usage: python -m netprobe.bench.agent.helper events|repl PORT",
              file=sys.stderr)
        return 2
    port = int(argv[1])
    if argv[0] == "events":
        events(port)
    else:
        repl(port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

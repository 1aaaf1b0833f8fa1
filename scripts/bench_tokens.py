#!/usr/bin/env python3
"""What an access token costs an offer (issue 8: at most 1 ms). Prints, asserts nothing.

    python scripts/bench_tokens.py [--runs N]

1. The gate alone (`netprobe.tokens`): authenticate + admit + consume of a real PyJWT token,
   per offer, median and p99 over N (check tokens, each new, so the replay cache grows).
2. Over HTTP: `POST /v1/offer` to an in-process reflector on loopback, with a token secret and
   a token, against the same reflector without one; median and p99 of each and the difference
   of the medians. The offer's SDP is refused right after the gate (400 `bad_sdp`), so the
   figure is signalling plus the gate, without the WebRTC set-up both would share.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from netprobe.config import ReflectorSettings  # noqa: E402
from netprobe.tokens import Gate, issue, parse_keys  # noqa: E402
from netprobe.webrtc.reflector import Reflector  # noqa: E402

FAKE_SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def gate_alone(runs: int) -> None:
    keys = parse_keys(f"k2 = {'n' * 32}\nk1 = {'o' * 32}\n", "bench")
    gate = Gate(keys, False, "0.0.0.0")
    now = time.time()
    tokens = [f"Bearer {issue(keys, 'check', now)}" for _ in range(runs)]
    took = []
    for header in tokens:
        t0 = time.perf_counter()
        grant = gate.authenticate(header, now)
        gate.consume(gate.admit(header, "check", now, grant), now)
        took.append((time.perf_counter() - t0) * 1000)
    median, p99 = quantiles(took)
    print(f"gate alone (verify + replay check + consume), {runs} check tokens: "
          f"median {median * 1000:.0f} µs, p99 {p99 * 1000:.0f} µs")


async def offers(url: str, header: dict[str, str], runs: int) -> list[float]:
    took = []
    body = {"sdp": FAKE_SDP, "type": "offer", "mode": "monitor"}
    async with aiohttp.ClientSession() as http:
        for _ in range(runs):
            t0 = time.perf_counter()
            async with http.post(url + "/v1/offer", json=body, headers=header) as resp:
                await resp.read()
                assert resp.status == 400, resp.status  # past the gate, refused at the SDP
            took.append((time.perf_counter() - t0) * 1000)
    return took


async def over_http(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret"
        secret.write_text(f"k1 = {'s' * 40}\n")
        secret.chmod(0o600)
        token = issue(parse_keys(secret.read_text(), "bench"), "monitor", time.time())
        figures = {}
        for name, settings, header in (
                ("no secret", ReflectorSettings(port=0), {}),
                ("token", ReflectorSettings(port=0, token_secret_file=str(secret)),
                 {"Authorization": f"Bearer {token}"})):
            r = Reflector(settings)
            await r.start()
            try:
                await offers(r.url, header, 20)  # warm up
                figures[name] = quantiles(await offers(r.url, header, runs))
            finally:
                await r.stop()
    for name, (median, p99) in figures.items():
        print(f"POST /v1/offer, {name:9}: median {median:.3f} ms, p99 {p99:.3f} ms")
    added = figures["token"][0] - figures["no secret"][0]
    print(f"a token check adds {added:.3f} ms to an offer (median; target ≤ 1 ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    gate_alone(args.runs)
    asyncio.run(over_http(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

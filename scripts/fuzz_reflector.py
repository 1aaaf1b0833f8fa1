"""Fuzz/soak a reflector process with hostile signalling and media (issue 8, item 6).

Starts `netprobe serve --workers 1` on loopback (one process: a worker process is the same
`Reflector`; a random port, access tokens on, per-source limits loose enough for one fuzzing
machine) under `netprobe.bench.heapwatch` (a heap snapshot on SIGUSR1),
runs one real check (the warm-up), then `--rounds` identical attacks (default 2), each at once:

- hostile HTTP requests (`--http`, default 10,000): bad and huge JSON, wrong types and
  content types, SDP with hundreds of m-lines, wrong methods and paths, wrong, expired,
  wrong-scope and replayed access tokens, floods from one (forwarded) source, slow bodies;
- malformed media payloads over real aiortc peer connections (`--media`, default 100,000):
  random bytes, truncated packets, wrong versions, non-finite and absurd times, sequence
  numbers near 2^32, absurd downlink requests, loads for hundreds of rungs;
- a legitimate `netprobe check` while that goes on;

then, once the reflector holds no session, a heap snapshot; after the rounds a final check,
SIGTERM and how long the process took to stop. Prints requests sent, answers by status,
payloads sent, CPU, the stop time, the verdicts, and memory after each round: RSS, growth over
the round, the live Python objects and sessions, and what glibc's allocator holds in use and
free. Loopback only, bounded in count and time (`--max-seconds` per round).

Memory is judged as a leak would show: the first attack raises RSS once (the allocator keeps
the heap the peak of concurrent peer connections needed); a leak grows again in every later
identical round, a high-water mark does not. Exit status 1 if a bound was broken: RSS grew
> 10 MB over the last round (the steady state; with `--rounds 1`, over the only one), live
objects grew from round to round, a request got no documented answer, the final check was not
`video`, SIGTERM took > 10 s.

    python scripts/fuzz_reflector.py [--http N] [--media N] [--rounds N] [--max-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from netprobe.bench.hostile import Fuzzer, proc_figures, run_check, tokens
from netprobe.webrtc.engine import restrict_host_candidates, sample_offer_sdp

HEAPWATCH = [sys.executable, "-m", "netprobe.bench.heapwatch"]
SECRET = "k1 = " + "f" * 64 + "\n"
RSS_BOUND = 10e6
OBJECT_SLACK = 2000  # live objects a round may add (caches of bounded size) without a leak


class Heap:
    """Heap snapshots of the reflector (`netprobe.bench.heapwatch`), one per `take()`."""

    def __init__(self, pid: int, path: Path) -> None:
        self.pid, self.path, self.taken = pid, path, 0

    async def take(self) -> dict[str, Any]:
        os.kill(self.pid, signal.SIGUSR1)
        self.taken += 1
        async with asyncio.timeout(30):
            while True:
                await asyncio.sleep(0.1)
                lines = self.path.read_text().splitlines() if self.path.exists() else []
                if len(lines) >= self.taken:
                    return dict(json.loads(lines[-1]))


async def sessions_left(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
        return int((await resp.json()).get("sessions", 0))


async def settle(url: str, limit_s: float = 60.0) -> float:
    """Wait until the reflector holds no session (at most `limit_s`); the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and await sessions_left(url):  # noqa: ASYNC110
        await asyncio.sleep(0.5)  # the reflector signals nothing when its last session ends
    return time.monotonic() - t0


def heap_line(label: str, doc: dict[str, Any], base: dict[str, Any],
              prev: dict[str, Any]) -> str:
    m = doc.get("malloc", {})
    w = doc["watched"]
    grown, since = (doc["rss"] - prev["rss"]) / 1e6, (doc["rss"] - base["rss"]) / 1e6
    return (f"  {label:<22} RSS {doc['rss'] / 1e6:6.1f} MB ({grown:+5.1f} over it, "
            f"{since:+5.1f} since the warm-up)  "
            f"objects {doc['objects']} ({doc['objects'] - prev['objects']:+d})  sessions "
            f"{w['ReflectorSession']}, peer connections {w['RTCPeerConnection']}, tasks "
            f"{doc['tasks']}, threads {doc['threads']}, fds {doc['fds']}  glibc in use "
            f"{m.get('uordblks', 0) / 1e6:.1f} MB, free kept {m.get('fordblks', 0) / 1e6:.1f} MB"
            f"; RSS after malloc_trim {doc['rss_after_trim'] / 1e6:.1f} MB")


async def attack(fuzz: Fuzzer, args: argparse.Namespace, url: str, env: dict[str, str]
                 ) -> tuple[float, str]:
    """One round: HTTP, media and slow bodies at once, a check 5 s in; (seconds, verdict)."""
    t0 = time.monotonic()
    during = asyncio.ensure_future(asyncio.sleep(0))
    try:
        async with asyncio.timeout(args.max_seconds):
            async def check_later() -> str:
                await asyncio.sleep(5)
                return await run_check(url, fuzz.token(), env)
            during = asyncio.ensure_future(check_later())
            await asyncio.gather(fuzz.http(args.http), fuzz.media(args.media),
                                 fuzz.slow_bodies())
            verdict = await during
    except TimeoutError:
        verdict = "(cut off by --max-seconds)"
        during.cancel()
    return time.monotonic() - t0, verdict


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http", type=int, default=10_000)
    ap.add_argument("--media", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2, help="identical attacks (1-10, default 2)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="per round")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--benign", action="store_true",
                    help="control run: the same peer connections with well-formed payloads "
                         "(tells per-connection memory from growth caused by hostile input)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 10:
        ap.error("--rounds must be 1-10")
    restrict_host_candidates(["127.0.0.1"])
    work = Path(tempfile.mkdtemp(prefix="netprobe-fuzz-"))
    secret = work / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    keyring = tokens.load_keys(secret) if tokens is not None else None
    config = work / "netprobe.toml"
    config.write_text(
        "[reflector]\nmax_checks = 32\nmax_checks_per_source = 32\noffers_per_minute = 600\n"
        "offer_burst = 200\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_timeout_s = 5.0\n"
        + (f'token_secret_file = "{secret}"\n' if keyring else ""))
    port = random.Random().randrange(20_000, 60_000)
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    with (work / "reflector.stderr").open("wb") as stderr:  # an unread pipe would fill up
        proc = await asyncio.create_subprocess_exec(
            *HEAPWATCH, "--config", str(config), "serve", "--host", "127.0.0.1", "--port",
            str(port), "--log-file", str(work / "reflector.log"), "--workers", "1", stderr=stderr,
            stdout=asyncio.subprocess.DEVNULL,
            env={**env, "NETPROBE_HEAPWATCH": str(work / "heap.jsonl")})
    url = f"http://127.0.0.1:{port}"
    async with asyncio.timeout(15):
        while True:
            try:
                async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    heap = Heap(proc.pid, work / "heap.jsonl")
    cold = await heap.take()
    fuzz = Fuzzer(url, keyring, random.Random(args.seed))
    fuzz.benign = args.benign
    # The warm-up: one check. Its lazy imports and first-use caches (aiortc, PyAV, crypto) are
    # the server's working set, not growth.
    verdict_before = await run_check(url, fuzz.token(), env)
    await settle(url)
    warm = await heap.take()
    _, cpu0 = proc_figures(proc.pid)
    fuzz.offer_sdp = await sample_offer_sdp()
    rounds: list[tuple[float, str, float, dict[str, Any]]] = []
    for _ in range(args.rounds):
        elapsed, verdict = await attack(fuzz, args, url, env)
        settled = await settle(url)
        rounds.append((elapsed, verdict, settled, await heap.take()))
    _, cpu1 = proc_figures(proc.pid)
    verdict_after = await run_check(url, fuzz.token(), env)
    t_term = time.monotonic()
    proc.terminate()
    try:
        async with asyncio.timeout(20):
            await proc.wait()
        stop_s = time.monotonic() - t_term
    except TimeoutError:
        proc.kill()
        stop_s = float("inf")

    fuzzing = sum(r[0] for r in rounds)
    print(f"{args.rounds} round(s) of fuzzing took {fuzzing:.1f} s (reflector pid {proc.pid}, "
          f"logs in {work})")
    print(f"HTTP requests sent: {fuzz.requests}")
    print("  answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(
        fuzz.statuses.items())))
    print("  error codes: " + ", ".join(f"{k}: {v}" for k, v in fuzz.codes.most_common()))
    print(f"  requests without a documented answer: {fuzz.undocumented}")
    print(f"media payloads sent: {fuzz.payloads} over {fuzz.sessions} peer connections"
          + (f" (failed sessions: {dict(fuzz.session_failures)})" if fuzz.session_failures
             else ""))
    print(f"reflector CPU: {cpu1 - cpu0:.1f} s over {fuzzing:.1f} s of fuzzing and its checks "
          f"({(cpu1 - cpu0) / fuzzing:.0%} of a core)")
    print("reflector memory (each snapshot after gc.collect(), once no session is left):")
    print(heap_line("at start", cold, cold, cold))
    print(heap_line("after the warm-up check", warm, warm, cold))
    prev = warm
    for i, (_elapsed, _verdict, settled, doc) in enumerate(rounds, 1):
        print(heap_line(f"after attack {i}", doc, warm, prev)
              + f"  (sessions ended {settled:.0f} s after it)")
        prev = doc
    last = rounds[-1][3]
    before_last = rounds[-2][3] if len(rounds) > 1 else warm
    steady = last["rss"] - before_last["rss"]
    objects = [r[3]["objects"] for r in rounds]
    objects_grew = any(b - a > OBJECT_SLACK for a, b in zip(objects, objects[1:], strict=False))
    leftover = last["watched"]["ReflectorSession"] or last["watched"]["RTCPeerConnection"]
    first = rounds[0][3]["rss"] - warm["rss"]
    print(f"RSS growth over the first attack (from the warm-up): {first / 1e6:+.1f} MB, the "
          "allocator's high-water mark for the peak of concurrent peer connections")
    if len(rounds) > 1:
        print(f"RSS growth over the last attack (steady state): {steady / 1e6:+.1f} MB "
              f"(bound {RSS_BOUND / 1e6:g} MB); live objects growing round to round: "
              f"{'yes' if objects_grew else 'no'}; sessions left over: {leftover}")
    print(f"SIGTERM to exit: {stop_s:.2f} s (exit status {proc.returncode})")
    print(f"check before the fuzzing: {verdict_before}")
    for i, (_e, verdict, _s, _d) in enumerate(rounds, 1):
        print(f"check during attack {i}: {verdict}")
    print(f"check afterwards: {verdict_after}")
    ok = (steady <= RSS_BOUND and not objects_grew and not leftover and fuzz.undocumented == 0
          and verdict_after.startswith("video") and stop_s <= 10)
    print("PASS" if ok else "FAIL: a bound was broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

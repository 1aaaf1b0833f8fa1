"""The hostile client of `scripts/fuzz_reflector.py` (issue 8, item 6): hostile HTTP requests
(bad and huge JSON, wrong types, SDP with hundreds of m-lines, wrong/expired/wrong-scope/replayed
tokens, floods, slow bodies) and malformed media payloads over real aiortc peer connections, with
counts of what was sent and how each was answered; and a real `netprobe check` run beside it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiortc import RTCSessionDescription

from netprobe.core import wire
from netprobe.core.wire import Echo, Load, Probe, encode_echo, encode_load, encode_probe
from netprobe.tokens import CHECK_OFFERS
from netprobe.webrtc.engine import PacketTrack, create_peer_connection, prefer_test_codecs

try:  # the access-token feature (netprobe/tokens.py); without it, the token cases are skipped
    from netprobe import tokens
except ImportError:  # pragma: no cover - the hook for a build without tokens
    tokens = None  # type: ignore[assignment]

NETPROBE = [sys.executable, "-m", "netprobe"]
PER_SESSION = 900  # media payloads per peer connection: under the reflector's refusal cap
MAX_RETRIES = 1000  # peer connections that sent nothing, per `media()` call


async def until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - aiortc signals no event for these states
            await asyncio.sleep(0.02)


def proc_figures(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds user+system) of process `pid`, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


class Fuzzer:
    def __init__(self, url: str, keyring: object | None, rng: random.Random) -> None:
        self.url = url
        self.keyring = keyring
        self.rng = rng
        self.statuses: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.undocumented = 0
        self.requests = 0
        self.payloads = 0
        self.sessions = 0
        self.session_failures: Counter[str] = Counter()
        self.offer_sdp = ""
        self.benign = False

    def token(self, scope: str = "check", ttl: float | None = None, now: float | None = None
              ) -> str:
        if tokens is None or self.keyring is None:
            return ""
        return tokens.issue(self.keyring, scope, time.time() if now is None else now, ttl)

    # -- signalling --------------------------------------------------------------------------

    def _m_lines(self, n: int) -> str:
        lines = "".join(f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\n"
                        "a=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n" for i in range(n))
        return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + lines

    def request(self) -> tuple[str, str, dict[str, str], bytes]:
        """One hostile request: (method, path, headers, body)."""
        rng, sdp = self.rng, self.offer_sdp
        js = {"Content-Type": "application/json"}
        auth = {"Authorization": f"Bearer {self.token()}"} if self.keyring else {}
        case = rng.randrange(16)
        if case == 0:
            return "POST", "/v1/offer", js, rng.randbytes(rng.randint(0, 2000))
        if case == 1:
            return "POST", "/v1/offer", js, b'{"sdp": "' + b"v" * 70_000 + b'"}'
        if case == 2:
            return "POST", "/v1/offer", js, b"[" * 5000 + b"]" * 5000
        if case == 3:
            body = rng.choice([[1, 2], {"sdp": 5, "type": "offer"}, {"type": "offer"},
                               {"sdp": sdp, "type": "answer"}, {"sdp": sdp, "type": "offer",
                                                                 "mode": "x" * 100}, "offer",
                               {"sdp": "hello", "type": "offer"}, None, 1e308])
            return "POST", "/v1/offer", {**js, **auth}, json.dumps(body).encode()
        if case == 4:
            return "POST", "/v1/offer", {"Content-Type": rng.choice(
                ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])}, \
                b"sdp=1"
        if case in (5, 6):  # SDP with hundreds of m-lines, alone or after a real offer
            extra = self._m_lines(rng.randint(100, 300))
            text = extra if case == 5 else sdp + extra.split("t=0 0\r\n", 1)[1]
            return "POST", "/v1/offer", {**js, **auth}, json.dumps(
                {"sdp": text[:32_000], "type": "offer"}).encode()
        if case == 7:
            return rng.choice(["GET", "PUT", "DELETE"]), "/v1/offer", {}, b""
        if case == 8:
            path = rng.choice(["/", "/v1", "/v1/offer/x", "/admin", "/%00", "/" + "a" * 3000])
            return "GET", path, {}, b""
        if case == 9:  # garbage and wrong tokens
            bad = rng.choice(["", "Bearer", "Bearer x", "Basic YTpi", "Bearer " + "e" * 5000,
                              "Bearer eyJhbGciOiJub25lIn0.eyJzY29wZSI6ImNoZWNrIn0."])
            return "POST", "/v1/offer", {**js, "Authorization": bad}, json.dumps(
                {"sdp": sdp, "type": "offer"}).encode()
        if case == 10 and self.keyring:  # expired
            old = self.token(now=time.time() - 7200, ttl=60)
            return "POST", "/v1/offer", {**js, "Authorization": f"Bearer {old}"}, json.dumps(
                {"sdp": sdp, "type": "offer"}).encode()
        if case == 11 and self.keyring:  # a check token for a monitoring stream
            return "POST", "/v1/offer", {**js, **auth}, json.dumps(
                {"sdp": sdp, "type": "offer", "mode": "monitor"}).encode()
        if case == 12:  # a flood from one forwarded source: rate limited
            return "POST", "/v1/offer", {**js, "X-Forwarded-For": "203.0.113.7"}, b"{"
        if case == 13:  # many sources: the rate limiter's table must stay bounded
            src = f"198.51.{rng.randrange(256)}.{rng.randrange(256)}"
            return "POST", "/v1/offer", {**js, "X-Forwarded-For": src}, b"{}"
        if case == 14:
            return "GET", rng.choice(["/healthz", "/metrics"]), {}, b""
        return "POST", "/v1/offer", js, json.dumps({"sdp": "v=0\r\n" + rng.choice(
            ["m=\r\n" * 500, "a=" + "x" * 20_000, "\x00" * 1000]), "type": "offer"}).encode()

    async def http(self, n: int, concurrency: int = 16) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            async def one() -> None:
                method, path, headers, body = self.request()
                try:
                    async with http.request(method, self.url + path, headers=headers,
                                            data=body) as resp:
                        self.statuses[str(resp.status)] += 1
                        text = await resp.read()
                        if resp.status >= 400:
                            self._documented(text)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.statuses[type(exc).__name__] += 1
                    self.undocumented += 1
                self.requests += 1

            queue = list(range(n))
            async def worker() -> None:
                while queue:
                    queue.pop()
                    await one()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await self.replays(http)

    def _documented(self, body: bytes) -> None:
        try:
            error = json.loads(body)["error"]
            self.codes[error["code"]] += 1
            assert isinstance(error["message"], str)
        except Exception:  # noqa: BLE001 - an answer that is not a documented JSON error
            self.undocumented += 1
            self.codes["<not a JSON error>"] += 1

    async def replays(self, http: aiohttp.ClientSession, n: int = 10) -> None:
        """A check token used `CHECK_OFFERS` + 1 times: the last use is refused (403 already
        used; a check may re-offer over a relay, docs/reflector.md "Access tokens")."""
        if not self.keyring:
            return
        for _ in range(n):
            token = self.token()
            for _use in range(CHECK_OFFERS + 1):
                headers = {"Authorization": f"Bearer {token}"}
                async with http.post(self.url + "/v1/offer", headers=headers,
                                     json={"sdp": self.offer_sdp, "type": "offer"}) as resp:
                    self.statuses[str(resp.status)] += 1
                    self.requests += 1
                    if resp.status >= 400:
                        self._documented(await resp.read())

    async def slow_bodies(self, n: int = 20, seconds: float = 6.0) -> None:
        """Connections that announce a body and trickle it: what happens to each."""
        host, port = self.url.split("//")[1].split(":")

        async def one() -> None:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                self.statuses["slow:refused"] += 1
                return
            writer.write(b"POST /v1/offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 4000\r\n\r\n")
            outcome = "slow:still waiting at our cap"
            try:
                async with asyncio.timeout(seconds):
                    while True:
                        writer.write(b" ")
                        await writer.drain()
                        try:
                            async with asyncio.timeout(0.3):
                                line = await reader.readline()
                        except TimeoutError:
                            continue
                        outcome = "slow:" + (line.decode(errors="replace").split(" ")[1]
                                             if line else "closed by the server")
                        break
            except (TimeoutError, OSError):
                pass
            finally:
                writer.close()
            self.statuses[outcome] += 1
            self.requests += 1

        await asyncio.gather(*(one() for _ in range(n)))

    # -- media -------------------------------------------------------------------------------

    def payloads_for(self, audio: PacketTrack, video: PacketTrack, n: int
                     ) -> list[tuple[PacketTrack, bytes]]:
        rng, big = self.rng, 2**32 - 1
        if self.benign:  # the control run: sane probes and loads, paced like the rest
            return [(audio, encode_probe(Probe(k, k / 500), 40)) if k % 2 else
                    (video, encode_load(Load(0, k, k / 500), 1000)) for k in range(n)]
        makers: list[Callable[[], tuple[PacketTrack, bytes]]] = [
            lambda: (audio, rng.randbytes(rng.randint(0, 300))),
            lambda: (video, rng.randbytes(rng.randint(0, 1200))),
            lambda: (audio, encode_probe(Probe(rng.randint(0, big), 1.0))[:rng.randint(0, 25)]),
            lambda: (video, encode_load(Load(1, 1, 1.0), 100)[:rng.randint(0, 17)]),
            lambda: (audio, b"NP" + bytes([rng.choice([0, 1, 3, 255]), 1]) + rng.randbytes(30)),
            lambda: (audio, b"NP" + bytes([wire.VERSION, 1]) + struct.pack(
                "!IdhIHH", rng.randint(0, big), rng.choice([float("nan"), float("inf"), 1e300]),
                0, 3200, 1200, 600)),
            lambda: (audio, encode_probe(Probe(big - rng.randint(0, 3), 1.0))),
            lambda: (audio, encode_probe(Probe(rng.randint(0, big), rng.uniform(-1e9, 1e9),
                                               rng.randint(-1, 2**15 - 1), big, 65_535,
                                               65_535))),
            lambda: (video, encode_load(Load(rng.randint(0, 2**15 - 1), rng.randint(0, big),
                                             rng.uniform(-1e9, 1e9)), rng.randint(0, 1200))),
            lambda: (audio, encode_echo(Echo(1, 1.0, 1, 1.0, 0.0, 1, 1, 0.0))),
        ]
        return [rng.choice(makers)() for _ in range(n)]

    async def media_session(self, n: int) -> None:
        pc = create_peer_connection()
        audio, video = PacketTrack("audio"), PacketTrack("video")
        pc.addTransceiver(audio, direction="sendrecv")
        pc.addTransceiver(video, direction="sendrecv")
        prefer_test_codecs(pc)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Authorization": f"Bearer {self.token()}"} if self.keyring else {}
            # each peer connection from its own (forwarded) source: the HTTP flood from this
            # machine spends 127.0.0.1's offer budget, and media is what these sessions test
            headers["X-Forwarded-For"] = f"192.0.2.{self.rng.randrange(1, 255)}"
            async with aiohttp.ClientSession() as http:
                async with http.post(self.url + "/v1/offer", headers=headers, json={
                        "sdp": pc.localDescription.sdp, "type": "offer"}) as resp:
                    if resp.status != 200:
                        self.session_failures[f"offer {resp.status}"] += 1
                        return
                    answer = await resp.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await until(lambda: pc.connectionState == "connected", 10)
            self.sessions += 1
            for k, (track, data) in enumerate(self.payloads_for(audio, video, n)):
                track.push(lambda data=data: data)
                if k % 20 == 0:
                    await asyncio.sleep(0.01)
            await until(lambda: not (audio.backlog or video.backlog)
                        or pc.connectionState != "connected", 20)
            self.payloads += audio.sent_packets + video.sent_packets
        except TimeoutError:
            self.session_failures["connect or send timeout"] += 1
        finally:
            await pc.close()

    async def media(self, total: int, parallel: int = 3) -> None:
        """At least `total` payloads sent: a refused or failed peer connection (busy, rate
        limited under the HTTP flood) is tried again after a pause, at most `MAX_RETRIES`."""
        goal = self.payloads + total
        retries = [0]

        async def worker() -> None:
            while self.payloads < goal and retries[0] <= MAX_RETRIES:
                before = self.payloads
                await self.media_session(min(PER_SESSION, goal - self.payloads))
                if self.payloads == before:
                    retries[0] += 1
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(worker() for _ in range(parallel)))


async def run_check(url: str, token: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "check", "--server", url, "--json", env={**env, "NETPROBE_TOKEN": token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    try:
        doc = json.loads(out)
        reasons = [r["code"] for r in doc.get("reasons", [])]
        return f"{doc['verdict']} {reasons} in {doc['duration_s']:.1f} s"
    except Exception:  # noqa: BLE001 - report what came out
        return f"no result (exit {proc.returncode})"

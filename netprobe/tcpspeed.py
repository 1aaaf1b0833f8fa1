"""A TCP speed test against the reflector's Speedtest Mini endpoints, with speedtest-cli as a
library (docs/reflector.md, "TCP speed test").

`await tcp_speed(reflector_url, token=...)` measures latency, then download, then upload, in a
worker thread (speedtest-cli blocks and starts threads of its own), and returns a `TcpSpeed`
or raises a `NetprobeError` saying why not: `ServerUnreachable` (no answer), `AccessDenied`
(401/403), `RateLimited` (429), `ServerBusy` (503) or `ProtocolError` (the endpoint answers,
but not as a Speedtest Mini). It never contacts speedtest.net: `MiniSpeedtest.get_config()`
fills speedtest-cli's configuration by hand, and every request goes to `reflector_url`.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import speedtest

from netprobe.errors import (
    AccessDenied,
    ConfigError,
    NetprobeError,
    ProtocolError,
    RateLimited,
    ServerBusy,
    ServerUnreachable,
)
from netprobe.webrtc.speedtest_mini import IMAGE_BYTES

DOWNLOAD_SIZES = (350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
"""`random{N}x{N}.jpg` fetched, in order (each once per thread count's worth; see config)."""
UPLOAD_SIZES = (131072, 262144, 524288, 1048576, 7340032)
"""Upload bodies: speedtest-cli's own sizes but 32768 and 65536 (for 65536 its body is 7 bytes
shorter than the Content-Length it sends, so every such upload waits for its timeout)."""


@dataclass(frozen=True)
class TcpSpeed:
    """What the TCP speed test measured against one reflector."""

    down_mbps: float
    """Download throughput, Mbit/s (bytes read over the download phase's wall time)."""
    up_mbps: float
    """Upload throughput, Mbit/s (bytes handed to the socket over the upload phase's time)."""
    latency_ms: float
    """Half the mean round trip of three `latency.txt` requests, each on a new TCP connection
    (so it includes the connection set-up), as speedtest-cli reports it."""
    bytes_down: int
    """Bytes downloaded."""
    bytes_up: int
    """Bytes uploaded."""
    duration_s: float
    """Wall time of the whole test."""


@contextmanager
def quiet_speedtest_warnings() -> Iterator[None]:
    """speedtest-cli (unmaintained) calls `datetime.utcnow()` and `Event.isSet()`, deprecated
    on Python 3.12+: ignore DeprecationWarnings raised from its module only, for this block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"speedtest\Z")
        yield


class _Shutdown(threading.Event):
    """speedtest-cli's shutdown event; it calls the deprecated `isSet`."""

    def isSet(self) -> bool:  # noqa: N802 - the name speedtest-cli calls
        return self.is_set()


class _CheckingOpener:
    """speedtest-cli's urllib opener, checking each answer: its threads swallow errors (a
    failed upload even counts as bytes sent), so what is wrong is recorded in `problems`."""

    def __init__(self, opener: Any, problems: list[str]) -> None:
        self._opener = opener
        self.problems = problems

    def open(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        url = request if isinstance(request, str) else request.get_full_url()
        path = urlsplit(url).path
        try:
            response = self._opener.open(request, *args, **kwargs)
        except HTTPError as exc:
            self.problems.append(f"HTTP {exc.code}")
            exc.close()  # speedtest-cli keeps only the message
            raise
        expected = _expected_bytes(path)
        if expected is not None:
            length = response.headers.get("Content-Length")
            if length != str(expected):
                self.problems.append(f"{path.rsplit('/', 1)[-1]} is not {expected} bytes")
        elif path.endswith("/upload.php"):
            body = response.read(64)
            response.close()
            if not re.fullmatch(rb"size=[0-9]{1,12}\s*", body):
                self.problems.append("upload.php did not answer size=N")
            return _Answer(body)
        return response


class _Answer(BytesIO):
    code = 200


def _expected_bytes(path: str) -> int | None:
    match = re.search(r"/random([0-9]{3,4})x\1\.jpg$", path)
    return IMAGE_BYTES.get(int(match.group(1)), 0) if match else None


class MiniSpeedtest(speedtest.Speedtest):
    """speedtest-cli's `Speedtest` for a self-hosted Mini: no configuration from speedtest.net,
    a bounded latency test, and every answer checked."""

    def __init__(self, length_s: float = 3.0, threads: int = 4, timeout_s: float = 3.0,
                 shutdown: threading.Event | None = None) -> None:
        self._length_s = length_s
        self._threads = threads
        self.problems: list[str] = []
        super().__init__(timeout=timeout_s, shutdown_event=shutdown or _Shutdown())
        self._opener = _CheckingOpener(self._opener, self.problems)

    def get_config(self) -> dict[str, Any]:
        """The configuration speedtest.net would send, filled by hand (never fetched)."""
        counts = 2
        self.config.update({
            "client": {"ip": "", "isp": "", "lat": "0", "lon": "0", "country": ""},
            "ignore_servers": [],
            "sizes": {"upload": list(UPLOAD_SIZES), "download": list(DOWNLOAD_SIZES)},
            "counts": {"upload": counts, "download": 1},
            "threads": {"upload": self._threads, "download": self._threads},
            "length": {"upload": self._length_s, "download": self._length_s},
            "upload_max": counts * len(UPLOAD_SIZES),
        })
        self.lat_lon = (0.0, 0.0)
        return self.config

    def get_best_server(self, servers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """speedtest-cli's latency test (three `latency.txt` requests, each on a new
        connection; half the mean round trip), with this test's timeout instead of its fixed
        10 s, and an endpoint that does not answer `test=test` reported, not counted as 1 h."""
        server = (servers or self.servers)[0]
        parts = urlsplit(server["url"].rsplit("/", 1)[0] + "/latency.txt")
        rtts = []
        for i in range(3):
            if parts.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    parts.netloc, timeout=self._timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=self._timeout)
            try:
                start = time.perf_counter()
                conn.request("GET", f"{parts.path}?x={int(time.time() * 1000)}.{i}",
                             headers={"User-Agent": speedtest.build_user_agent()})
                response = conn.getresponse()
                rtts.append(time.perf_counter() - start)
                body = response.read(9)
            finally:
                conn.close()
            if response.status != 200 or body != b"test=test":
                self.problems.append(f"HTTP {response.status}" if response.status != 200
                                     else "latency.txt did not answer test=test")
                break
        latency = round(sum(rtts) / len(rtts) / 2 * 1000.0, 3) if rtts else 0.0
        best = dict(server, latency=latency)
        self.results.ping = latency
        self.results.server = best
        self._best.update(best)
        return best

    def check(self) -> None:
        """Raise for the first problem an answer showed (see `_CheckingOpener`)."""
        if self.problems:
            raise _problem_error(self.problems[0])


def _problem_error(problem: str) -> NetprobeError:
    status = int(problem[5:]) if problem.startswith("HTTP ") else 0
    if status in (401, 403):
        return AccessDenied("the reflector refused the TCP speed test's access token "
                            f"(HTTP {status})", "unauthorized" if status == 401 else "forbidden")
    if status == 429:
        return RateLimited("the reflector limits this address's TCP speed tests (HTTP 429)")
    if status == 503:
        return ServerBusy("the reflector is busy or shutting down (HTTP 503)")
    return ProtocolError(f"the TCP speed test endpoint does not answer as a Speedtest Mini: "
                         f"{problem}")


def mini_url(reflector_url: str, token: str | None = None) -> str:
    """The Mini's base URL on a reflector: `URL/`, or `URL/t/TOKEN/` with a token."""
    parts = urlsplit(reflector_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"the reflector URL must start with http:// or https://, got "
                          f"{reflector_url!r}")
    base = reflector_url.rstrip("/")
    return f"{base}/t/{token}/" if token else f"{base}/"


def run_blocking(reflector_url: str, token: str | None = None, *, length_s: float = 3.0,
                 threads: int = 4, timeout_s: float = 3.0,
                 shutdown: threading.Event | None = None) -> TcpSpeed:
    """The whole test, blocking (see `tcp_speed`)."""
    url = mini_url(reflector_url, token)
    started = time.perf_counter()
    with quiet_speedtest_warnings():
        try:
            st = MiniSpeedtest(length_s, threads, timeout_s, shutdown)
            try:
                st.set_mini_server(url)
            except speedtest.SpeedtestMiniConnectFailure:
                st.check()  # an HTTP error status says more
                raise
            st.get_best_server()
            st.check()
            st.download(threads=threads)
            st.check()
            st.upload(pre_allocate=False, threads=threads)
            st.check()
        except speedtest.SpeedtestMiniConnectFailure:
            raise ServerUnreachable("the reflector's TCP speed test did not answer "
                                    "(connection refused or timed out)") from None
        except speedtest.InvalidSpeedtestMiniServer:
            raise ProtocolError("the reflector's page is not a Speedtest Mini page (no "
                                "upload_extension)") from None
        except (OSError, http.client.HTTPException) as exc:  # the latency test's own requests
            reason = exc.reason if isinstance(exc, URLError) else exc
            raise ServerUnreachable(f"the TCP speed test failed: {reason}") from None
        except speedtest.SpeedtestException as exc:
            raise ProtocolError(f"the TCP speed test failed: {exc}") from None
    results = st.results
    return TcpSpeed(down_mbps=round(results.download / 1e6, 3),
                    up_mbps=round(results.upload / 1e6, 3),
                    latency_ms=results.ping, bytes_down=int(results.bytes_received),
                    bytes_up=int(results.bytes_sent),
                    duration_s=round(time.perf_counter() - started, 3))


async def tcp_speed(reflector_url: str, token: str | None = None, *, length_s: float = 3.0,
                    threads: int = 4, timeout_s: float = 3.0) -> TcpSpeed:
    """Measure TCP throughput each way and latency against the reflector at `reflector_url`
    (with `token` where it needs one), off the event loop. Each direction runs for about
    `length_s`; a request waits at most `timeout_s`; so about 2 x length + 3 x timeout at
    worst (10-15 s with the defaults). Cancelling it stops speedtest-cli's threads."""
    shutdown = _Shutdown()
    try:
        return await asyncio.to_thread(run_blocking, reflector_url, token, length_s=length_s,
                                       threads=threads, timeout_s=timeout_s, shutdown=shutdown)
    finally:
        shutdown.set()

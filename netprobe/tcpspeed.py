"""A TCP speed test against the reflector's Speedtest Mini endpoints, with speedtest-cli as a
library (docs/reflector.md, "TCP speed test").

`await tcp_speed(reflector_url, token=...)` measures latency, then download, then upload, in a
worker thread (speedtest-cli blocks and starts threads of its own), and returns a `TcpSpeed`
or raises a `NetprobeError` saying why not: `ServerUnreachable` (no answer), `AccessDenied`
(401/403), `RateLimited` (429), `ServerBusy` (503) or `ProtocolError` (the endpoint answers,
but not as a Speedtest Mini). It never contacts speedtest.net: `MiniSpeedtest.get_config()`
fills speedtest-cli's configuration by hand, and every request goes to `reflector_url`.

Two modes: `length_s` (each direction runs about that long: `--thorough` uses 5 s), or
`budget_s` (the whole test, latency included, ends within the budget plus one request
timeout; a direction it could not measure in time is None). `netprobe.tcpreport` turns
either into a check's JSON `tcp` object, and runs the public speedtest.net test.

Upload is measured from the server's `size=N` answers (bytes that arrived, over the time until
they arrived), not, as speedtest-cli does, from bytes handed to the socket: the kernel's send
buffer and the link's queue would make a slow uplink look fast.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar
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

T = TypeVar("T")

DOWNLOAD_SIZES = (350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
"""`random{N}x{N}.jpg` fetched, in order (each once)."""
FIRST_UPLOAD_BYTES = 16389
"""Each upload thread's first body; each later one is sized to fill its share of the time
left (at the rate confirmed so far), at most 16x the one before. Sizes are 36k + 9 bytes:
speedtest-cli's body generator makes others a few bytes shorter than their Content-Length
(the upload then waits for its timeout)."""
UPLOADS_PER_THREAD = 5
"""Bodies one upload thread posts at most (the reflector limits each source's requests: a
whole test makes about 35)."""
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
"""The largest upload body (the reflector takes up to 64 MiB)."""
THOROUGH_LENGTH_S = 5.0
"""`--thorough`: how long each direction runs."""
QUICK_BUDGET_S = 2.5
"""The quick test's default budget (the client uses it when UDP is blocked)."""


@dataclass(frozen=True)
class TcpSpeed:
    """What the TCP speed test measured against one reflector."""

    down_mbps: float | None
    """Download throughput, Mbit/s (bytes read over the download phase's wall time); None
    when the budget ran out before any byte came."""
    up_mbps: float | None
    """Upload throughput, Mbit/s: bytes the server confirmed (`size=N`) over the time from the
    phase's start to the last confirmation; None when none was confirmed in time."""
    latency_ms: float | None
    """Half the mean round trip of three `latency.txt` requests, each on a new TCP connection
    (so it includes the connection set-up), as speedtest-cli reports it."""
    bytes_down: int
    """Bytes downloaded."""
    bytes_up: int
    """Bytes uploaded and confirmed by the server."""
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
    failed upload even counts as bytes sent), so what is wrong is recorded in `problems`, and
    each upload's `size=N` answer in `confirmed` as `(arrival time, N)`."""

    def __init__(self, opener: Any, problems: list[str], check_images: bool = True) -> None:
        self._opener = opener
        self.problems = problems
        self.confirmed: list[tuple[float, int]] = []
        self.reads: list[tuple[float, int]] = []
        """Each download read: (time, bytes)."""
        self._check_images = check_images

    def open(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        url = request if isinstance(request, str) else request.get_full_url()
        path = urlsplit(url).path
        try:
            response = self._opener.open(request, *args, **kwargs)
        except HTTPError as exc:
            self.problems.append(f"HTTP {exc.code}")
            exc.close()  # speedtest-cli keeps only the message
            raise
        expected = _expected_bytes(path) if self._check_images else None
        if expected is not None:
            length = response.headers.get("Content-Length")
            if length != str(expected):
                self.problems.append(f"{path.rsplit('/', 1)[-1]} is not {expected} bytes")
        if _expected_bytes(path) is not None:
            return _Counted(response, self.reads)
        elif path.endswith("/upload.php"):
            body = response.read(64)
            response.close()
            match = re.fullmatch(rb"size=([0-9]{1,12})\s*", body)
            if match is None:
                self.problems.append("upload.php did not answer size=N")
            else:
                self.confirmed.append((time.perf_counter(), int(match.group(1))))
            return _Answer(body)
        return response


class _Answer(BytesIO):
    code = 200


class _Counted:
    """A download's response, recording when each read's bytes came."""

    def __init__(self, response: Any, reads: list[tuple[float, int]]) -> None:
        self._response = response
        self._reads = reads

    def read(self, n: int = -1) -> bytes:
        data = self._response.read(n)
        if data:
            self._reads.append((time.perf_counter(), len(data)))
        return bytes(data)

    def close(self) -> None:
        self._response.close()


def _window_bps(events: list[tuple[float, int]]) -> float:
    """Bytes per second between the first and the last of `events` (time, bytes), the first
    event's own bytes not counted: the rate once data flows, without connection set-up."""
    if len(events) < 2:
        return 0.0
    events = sorted(events)
    span = events[-1][0] - events[0][0]
    return sum(n for _, n in events[1:]) / span if span > 0 else 0.0


def _expected_bytes(path: str) -> int | None:
    match = re.search(r"/random([0-9]{3,4})x\1\.jpg$", path)
    return IMAGE_BYTES.get(int(match.group(1)), 0) if match else None


class MiniSpeedtest(speedtest.Speedtest):
    """speedtest-cli's `Speedtest` for a self-hosted Mini: no configuration from speedtest.net,
    a bounded latency test, every answer checked, and uploads counted as they arrive."""

    def __init__(self, length_s: float = 3.0, threads: int = 4, timeout_s: float = 3.0,
                 shutdown: threading.Event | None = None, check_images: bool = True) -> None:
        self._length_s = length_s
        self._threads = threads
        self.problems: list[str] = []
        super().__init__(timeout=timeout_s, shutdown_event=shutdown or _Shutdown())
        self._opener = _CheckingOpener(self._opener, self.problems, check_images)
        self.upload_bytes = 0
        """Bytes the server confirmed in the last `upload()`."""

    def get_config(self) -> dict[str, Any]:
        """The configuration speedtest.net would send, filled by hand (never fetched)."""
        self.config.update({
            "client": {"ip": "", "isp": "", "lat": "0", "lon": "0", "country": ""},
            "ignore_servers": [],
            "sizes": {"upload": [FIRST_UPLOAD_BYTES], "download": list(DOWNLOAD_SIZES)},
            "counts": {"upload": 1, "download": 1},
            "threads": {"upload": self._threads, "download": self._threads},
            "length": {"upload": self._length_s, "download": self._length_s},
            "upload_max": 1,
        })
        self.lat_lon = (0.0, 0.0)
        return self.config

    def set_length(self, length_s: float) -> None:
        """How long the next download or upload phase runs."""
        self.config["length"].update(upload=length_s, download=length_s)

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

    def download(self, callback: Any = speedtest.do_nothing,
                 threads: int | None = None) -> float:
        """speedtest-cli's download (its threads, sizes and length), its rate taken from the
        first byte to the last rather than over the whole phase (connection set-up and the
        threads' start and join are not the link's rate). Returns bit/s."""
        reads = self._opener.reads
        first = len(reads)
        super().download(callback, threads)
        done = reads[first:]
        self.results.bytes_received = sum(n for _, n in done)
        self.results.download = _window_bps(done) * 8.0
        return float(self.results.download)

    def upload(self, callback: Any = None, pre_allocate: bool = False,
               threads: int | None = None, abort_at: float | None = None) -> float:
        """Upload from `threads` threads for about the configured length: each posts bodies
        of growing size (speedtest-cli's request and body classes), starts none after the
        length, and lets the last finish until `abort_at` (perf_counter; default length x
        1.5 + 1 s). Returns bit/s: confirmed bytes over the time to the last confirmation."""
        length = float(self.config["length"]["upload"])
        count = threads or self._threads
        start = time.perf_counter()
        stop_at, abort_at = start + length, abort_at or start + 1.5 * length + 1.0
        confirmed = self._opener.confirmed
        first = len(confirmed)

        # a body's bytes start to flow one round trip after its request (TCP's handshake:
        # urllib opens a connection per request), and its `size=N` comes half a one later
        rtt = min(max(0.0, float(self.results.ping) / 1000.0), length / 4)

        def rate_bps() -> float:
            done = confirmed[first:]
            span = done[-1][0] - start - 1.5 * rtt if done else 0.0
            return sum(n for _, n in done) / max(1e-3, span) if done else 0.0

        def worker() -> None:
            size = FIRST_UPLOAD_BYTES
            for sent in range(1, UPLOADS_PER_THREAD + 1):
                if self._shutdown_event.is_set() or time.perf_counter() >= stop_at:
                    return
                data = speedtest.HTTPUploaderData(size, start, abort_at - start,
                                                  self._shutdown_event)
                request = speedtest.build_request(self.best["url"], data, secure=self._secure,
                                                  headers={"Content-length": size})
                try:
                    self._opener.open(request).close()
                except (OSError, http.client.HTTPException, speedtest.SpeedtestUploadTimeout):
                    return  # HTTP errors are in `problems`; a cut-off body counts nothing
                left = stop_at - time.perf_counter()
                if left <= 0.05 * length or sent == UPLOADS_PER_THREAD:
                    return
                # what this thread can send in the time left (half, with bodies to spare)
                share = rate_bps() / count * max(0.0, left - 2 * rtt) / \
                    (2 if sent < UPLOADS_PER_THREAD - 1 and left > 1.0 else 1)
                size = _body_size(min(16 * size, max(FIRST_UPLOAD_BYTES, share)))

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(count)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done = confirmed[first:]
        self.upload_bytes = sum(n for _, n in done)
        self.results.bytes_sent = self.upload_bytes
        self.results.upload = rate_bps() * 8.0
        return float(self.results.upload)

    def check(self) -> None:
        """Raise for the first problem an answer showed (see `_CheckingOpener`)."""
        if self.problems:
            raise _problem_error(self.problems[0])


def _body_size(n: float) -> int:
    """A body size speedtest-cli generates exactly (36k + 9), at most MAX_UPLOAD_BYTES."""
    return int(min(n, MAX_UPLOAD_BYTES) - 9) // 36 * 36 + 9


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


class _Partial:
    """What the blocking test has measured so far (read by `tcp_speed` at its deadline)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.latency_ms: float | None = None
        self.down_mbps: float | None = None
        self.up_mbps: float | None = None
        self.bytes_down = 0
        self.bytes_up = 0

    def result(self) -> TcpSpeed:
        return TcpSpeed(self.down_mbps, self.up_mbps, self.latency_ms, self.bytes_down,
                        self.bytes_up, round(time.perf_counter() - self.started, 3))


def run_blocking(reflector_url: str, token: str | None = None, *, length_s: float = 3.0,
                 threads: int = 4, timeout_s: float = 3.0, budget_s: float | None = None,
                 shutdown: threading.Event | None = None,
                 partial: _Partial | None = None) -> TcpSpeed:
    """The whole test, blocking (see `tcp_speed`)."""
    url = mini_url(reflector_url, token)
    got = partial or _Partial()
    end = got.started + budget_s if budget_s is not None else None
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
            got.latency_ms = st.results.ping
            if end is not None:  # the rest of the budget: 45 % down, the rest up
                st.set_length(max(0.0, (end - time.perf_counter()) * 0.45 - timeout_s / 4))
            st.download(threads=threads)
            st.check()
            if st.results.bytes_received:
                got.down_mbps = round(st.results.download / 1e6, 3)
                got.bytes_down = int(st.results.bytes_received)
            if end is not None:
                st.set_length(max(0.0, (end - time.perf_counter()) * 0.75))
            st.upload(threads=threads, abort_at=end)
            st.check()
            if st.upload_bytes:
                got.up_mbps = round(st.results.upload / 1e6, 3)
                got.bytes_up = st.upload_bytes
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
    return got.result()


async def _in_thread(fn: Callable[[], T], shutdown: threading.Event,
                     deadline_s: float | None = None) -> T | None:
    """`fn()` in a daemon thread of its own (a thread stuck in a DNS look-up must not hold up
    the process's exit, as the loop's executor would); None if `deadline_s` passes first.
    Cancelling, or the deadline, sets `shutdown`, which stops speedtest-cli's threads."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, error = None, exc
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, outcome, error)

    threading.Thread(target=run, name="netprobe-tcpspeed", daemon=True).start()
    try:
        async with asyncio.timeout(deadline_s):
            return await asyncio.shield(future)
    except TimeoutError:
        return None
    finally:
        shutdown.set()
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: never "exception was never retrieved"


async def tcp_speed(reflector_url: str, token: str | None = None, *, length_s: float = 3.0,
                    threads: int = 4, timeout_s: float = 3.0,
                    budget_s: float | None = None) -> TcpSpeed:
    """Measure TCP throughput each way and latency against the reflector at `reflector_url`
    (with `token` where it needs one), off the event loop.

    Without `budget_s`, each direction runs for about `length_s` and a request waits at most
    `timeout_s`: about 2 x length + 3 x timeout at worst. With `budget_s` (a caller with a
    deadline), the test returns within the budget plus a small margin (its request timeout
    becomes at most a quarter of the budget), whatever the server does; the directions it
    could not measure in time are None. A short test says less: on a slow link one second
    carries a few hundred kilobytes, and connection set-up and TCP's slow start weigh more
    (docs/reflector.md, "TCP speed test"). Raises a `NetprobeError` if the test failed (see
    the module doc); cancelling it stops speedtest-cli's threads."""
    if budget_s is not None:
        if not budget_s > 0:
            raise ConfigError(f"the TCP speed test's budget must be positive, got {budget_s}")
        timeout_s = min(timeout_s, max(0.25, budget_s / 4))
        threads = min(threads, 2)  # each thread's slow start costs more than it brings
    shutdown, partial = _Shutdown(), _Partial()

    def body() -> TcpSpeed:
        return run_blocking(reflector_url, token, length_s=length_s, threads=threads,
                            timeout_s=timeout_s, budget_s=budget_s, shutdown=shutdown,
                            partial=partial)

    deadline = None if budget_s is None else budget_s + 0.2
    result = await _in_thread(body, shutdown, deadline)
    if result is None:  # the budget ran out: what was measured by then
        if partial.latency_ms is None:
            raise ServerUnreachable(f"the TCP speed test got no answer within {budget_s:g} s")
        return partial.result()
    return result

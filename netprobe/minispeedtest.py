"""speedtest-cli's `Speedtest` for the reflector's Speedtest Mini (netprobe.tcpspeed runs it):
no configuration from speedtest.net, every answer checked, downloads timed as their bytes come,
and uploads on kept-alive connections, timed from each body's start to its `size=N` answer
(docs/reflector.md, "TCP speed test")."""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit

import speedtest

from netprobe.core.tcprate import busy_rate, sliced_rate
from netprobe.errors import AccessDenied, NetprobeError, ProtocolError, RateLimited, ServerBusy
from netprobe.webrtc.speedtest_mini import IMAGE_BYTES

DOWNLOAD_SIZES = (350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
"""`random{N}x{N}.jpg` fetched, in order (each once)."""
FIRST_UPLOAD_BYTES = 16389
"""Each upload thread's first body; each later one is sized to fill its share of the time
left (at the rate confirmed so far), at most 16x the one before. Sizes are 36k + 9 bytes:
speedtest-cli's body generator makes others a few bytes shorter than their Content-Length
(the upload then waits for its timeout)."""
UPLOADS_PER_THREAD = 5
"""Bodies one upload thread posts at most (the reflector limits each source's requests: a
whole test makes at most 24)."""
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
"""The largest upload body (the reflector takes up to 64 MiB)."""
THREADS = 2
"""Connections each way: more overflow a slow link's small queue (4 at 2 Mbit/s with a 200 ms
queue lost packets in bursts, with timeouts, and read 7-18 % low, once 75 %)."""


class _Shutdown(threading.Event):
    """speedtest-cli's shutdown event; it calls the deprecated `isSet`."""

    def isSet(self) -> bool:  # noqa: N802 - the name speedtest-cli calls
        return self.is_set()


class _CheckingOpener:
    """speedtest-cli's urllib opener, checking each answer: its threads swallow errors (a
    failed upload even counts as bytes sent), so what is wrong is recorded in `problems`;
    downloads are timed as their bytes come (`reads`)."""

    def __init__(self, opener: Any, problems: list[str], check_images: bool = True) -> None:
        self._opener = opener
        self.problems = problems
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
        return response

    def answered(self, status: int, body: bytes) -> int | None:
        """The bytes upload.php's answer confirms, or None (the problem noted) if it is not
        `size=N`."""
        match = re.fullmatch(rb"size=([0-9]{1,12})\s*", body)
        if status != 200 or match is None:
            self.problems.append(f"HTTP {status}" if status != 200
                                 else "upload.php did not answer size=N")
            return None
        return int(match.group(1))


class _TimedUploadData(speedtest.HTTPUploaderData):
    """speedtest-cli's upload body, noting when it was first read: when the connection was
    open and the body began to flow."""

    first_read: float | None = None

    def read(self, n: int = 10240) -> bytes:
        if self.first_read is None:
            self.first_read = time.perf_counter()
        return bytes(super().read(n))


class _Counted:
    """A download's response, recording when its bytes came. speedtest-cli reads 10 KiB at
    a time (40 ms of a 2 Mbit/s link); this returns what the socket has as soon as it has
    some (`read1`), so reads are timed finely and the phase ends on time on a slow link
    (speedtest-cli checks the time between reads)."""

    def __init__(self, response: Any, reads: list[tuple[float, int]]) -> None:
        self._response = response
        self._reads = reads

    def read(self, n: int = -1) -> bytes:
        read = self._response.read1 if n > 0 and hasattr(self._response, "read1") else \
            self._response.read
        data = bytes(read(n))
        if data:
            self._reads.append((time.perf_counter(), len(data)))
        return data

    def close(self) -> None:
        self._response.close()


def _expected_bytes(path: str) -> int | None:
    match = re.search(r"/random([0-9]{3,4})x\1\.jpg$", path)
    return IMAGE_BYTES.get(int(match.group(1)), 0) if match else None


class MiniSpeedtest(speedtest.Speedtest):
    """speedtest-cli's `Speedtest` for a self-hosted Mini: no configuration from speedtest.net,
    a bounded latency test, every answer checked, and uploads counted as they arrive."""

    def __init__(self, length_s: float = 3.0, threads: int = THREADS, timeout_s: float = 3.0,
                 shutdown: threading.Event | None = None, check_images: bool = True) -> None:
        self._length_s = length_s
        self._threads = threads
        self.problems: list[str] = []
        super().__init__(timeout=timeout_s, shutdown_event=shutdown or _Shutdown())
        self._opener = _CheckingOpener(self._opener, self.problems, check_images)
        self.upload_bytes = 0
        """Bytes the server confirmed in the last `upload()`."""
        self.upload_bodies: list[tuple[float, float, int]] = []
        """The last `upload()`'s confirmed bodies: (when it began to flow, when its `size=N`
        came, bytes), perf_counter times."""

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
            conn = _connection(parts.geturl(), self._timeout)
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
        first byte to the last rather than over the whole phase, in slices (`sliced_rate`):
        connection set-up, slow start and the threads' start and join are not the link's
        rate. Returns bit/s."""
        reads = self._opener.reads
        first = len(reads)
        super().download(callback, threads)
        done = reads[first:]
        self.results.bytes_received = sum(n for _, n in done)
        self.results.download = sliced_rate(done).bps * 8.0
        return float(self.results.download)

    def upload(self, callback: Any = None, pre_allocate: bool = False,
               threads: int | None = None, abort_at: float | None = None) -> float:
        """Upload from `threads` threads for about the configured length: each posts bodies
        of growing size (speedtest-cli's request and body classes), starts none after the
        length, and lets the last finish until `abort_at` (perf_counter; default length x
        1.5 + 1 s). Returns bit/s: confirmed bytes over the time they were crossing the link
        (`busy_rate`, each body from its connection's opening to its `size=N` less a round
        trip: the handshake and the wait for the answer are not the link's rate)."""
        length = float(self.config["length"]["upload"])
        count = threads or self._threads
        start = time.perf_counter()
        stop_at, abort_at = start + length, abort_at or start + 1.5 * length + 1.0
        bodies: list[tuple[float, float, int]] = []
        self.upload_bodies = bodies
        handshakes: list[float] = []
        """Each connection's time from its first request to its opening: a round trip."""
        guess = min(max(0.0, float(self.results.ping) / 1000.0), length / 4)

        def rate() -> tuple[float, float]:
            """(bytes/s so far, the round trip: the shortest handshake seen). The first body
            is left out once there are others: it went alone, in TCP's slow start."""
            rtt = min(handshakes, default=guess)
            return busy_rate(bodies[1:] or bodies, rtt).bps, rtt

        first_answer = threading.Event()

        def worker(k: int) -> None:
            conn = _connection(self.best["url"], self._timeout)
            try:
                if k > 0:  # the others start once the first body is across: the first
                    # bursts of all the connections at once would overflow a slow link's queue
                    first_answer.wait(max(0.0, stop_at - time.perf_counter()))
                posts(conn)
            except (OSError, http.client.HTTPException, speedtest.SpeedtestUploadTimeout):
                pass  # a cut-off body counts nothing
            finally:
                first_answer.set()
                conn.close()

        def posts(conn: http.client.HTTPConnection) -> None:
            """This thread's bodies, on one kept-alive connection: its congestion window
            stays open from one body to the next."""
            size = FIRST_UPLOAD_BYTES
            for sent in range(1, UPLOADS_PER_THREAD + 1):
                if self._shutdown_event.is_set() or time.perf_counter() >= stop_at:
                    return
                data = _TimedUploadData(size, start, abort_at - start, self._shutdown_event)
                request = speedtest.build_request(self.best["url"], data, secure=self._secure,
                                                  headers={"Content-length": size})
                fresh, asked = conn.sock is None, time.perf_counter()
                conn.request("POST", request.selector, data, dict(request.header_items()))
                # the body is in the socket's buffer now, not yet across the link: its
                # answer may take until the abort
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.05, abort_at - time.perf_counter()))
                response = conn.getresponse()
                at = time.perf_counter()
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeout)
                confirmed = self._opener.answered(response.status, response.read(64))
                if confirmed is None or data.first_read is None:
                    return  # the problem is in `problems`
                if fresh:
                    handshakes.append(data.first_read - asked)
                if confirmed > 0:  # a server cannot confirm more than it was sent
                    bodies.append((data.first_read, at, min(confirmed, size)))
                first_answer.set()
                left = stop_at - time.perf_counter()
                if left <= 0.05 * length or sent == UPLOADS_PER_THREAD:
                    return
                # what this thread can send in the time left (half, with bodies to spare)
                bps, rtt = rate()
                share = bps / count * max(0.0, left - 2 * rtt) / \
                    (2 if sent < UPLOADS_PER_THREAD - 1 and left > 1.0 else 1)
                size = _body_size(min(16 * size, max(FIRST_UPLOAD_BYTES, share)))

        workers = [threading.Thread(target=worker, args=(k,), daemon=True)
                   for k in range(count)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        self.upload_bytes = sum(n for _, _, n in bodies)
        self.results.bytes_sent = self.upload_bytes
        self.results.upload = rate()[0] * 8.0
        return float(self.results.upload)

    def check(self) -> None:
        """Raise for the first problem an answer showed (see `_CheckingOpener`)."""
        if self.problems:
            raise _problem_error(self.problems[0])


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to `url`'s host (opened by its first request)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout_s,
                                           context=ssl.create_default_context())
    return http.client.HTTPConnection(parts.netloc, timeout=timeout_s)


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

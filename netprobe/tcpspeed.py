"""A TCP speed test against the reflector's Speedtest Mini endpoints, with speedtest-cli as a
library (docs/reflector.md, "TCP speed test").

`await tcp_speed(reflector_url, token=...)` measures latency, then upload, then download, in a
worker thread (speedtest-cli blocks and starts threads of its own), and returns a `TcpSpeed`
or raises a `NetprobeError` saying why not: `ServerUnreachable` (no answer), `AccessDenied`
(401/403), `RateLimited` (429), `ServerBusy` (503) or `ProtocolError` (the endpoint answers,
but not as a Speedtest Mini). It never contacts speedtest.net: `MiniSpeedtest.get_config()`
(netprobe.minispeedtest) fills speedtest-cli's configuration by hand, and every request goes
to `reflector_url`.

Two modes: `length_s` (each direction runs about that long: `--thorough` uses 5 s), or
`budget_s` (the whole test, latency included, ends within the budget plus one request
timeout; a direction it could not measure in time is None). `netprobe.tcpreport` turns
either into a check's JSON `tcp` object, and runs the public speedtest.net test.

Upload is measured from the server's `size=N` answers (bytes that arrived, over the time they
were crossing the link), not, as speedtest-cli does, from bytes handed to the socket: the
kernel's send buffer and the link's queue would make a slow uplink look fast. Both directions
leave out what is not the link's rate: connection set-up, waits for answers, slow start
(netprobe.core.tcprate).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.error import URLError
from urllib.parse import urlsplit

import speedtest

from netprobe.errors import ConfigError, ProtocolError, ServerUnreachable
from netprobe.minispeedtest import THREADS, MiniSpeedtest, _Shutdown

T = TypeVar("T")

THOROUGH_LENGTH_S = 5.0
"""`--thorough`: how long each direction runs."""
UPLOAD_SHARE = (0.45, 0.6)
"""The quick test: of the budget left after the latency test, the share by which uploads
start and by which they end; the download takes the rest."""
QUICK_BUDGET_S = 2.5
"""The quick test's default budget (the client uses it when UDP is blocked)."""


@dataclass(frozen=True)
class TcpSpeed:
    """What the TCP speed test measured against one reflector."""

    down_mbps: float | None
    """Download throughput, Mbit/s: bytes read over the time they took, in slices, the
    slowest and fastest left out (`sliced_rate`); None when the budget ran out before any came."""
    up_mbps: float | None
    """Upload throughput, Mbit/s: bytes the server confirmed (`size=N`) over the time at least
    one body was crossing the link (`busy_rate`); None when none was confirmed in time."""
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
                 threads: int = THREADS, timeout_s: float = 3.0,
                 budget_s: float | None = None, shutdown: threading.Event | None = None,
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
            # upload first: an upload ends when its bodies have arrived, a download leaves
            # the link's queue full (it would delay the upload's handshakes and answers)
            abort_at = None
            if end is not None:  # the rest of the budget: uploads start in the first 45 %
                left = end - time.perf_counter()  # and end by 60 %, the rest downloads
                st.set_length(max(0.0, left * UPLOAD_SHARE[0]))
                abort_at = end - left * (1 - UPLOAD_SHARE[1])
            st.upload(threads=threads, abort_at=abort_at)
            st.check()
            if st.upload_bytes:
                got.up_mbps = round(st.results.upload / 1e6, 3)
                got.bytes_up = st.upload_bytes
            if end is not None:
                st.set_length(max(0.0, end - time.perf_counter() - timeout_s / 4))
            st.download(threads=threads)
            st.check()
            if st.results.bytes_received:
                got.down_mbps = round(st.results.download / 1e6, 3)
                got.bytes_down = int(st.results.bytes_received)
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
                    threads: int = THREADS, timeout_s: float = 3.0,
                    budget_s: float | None = None) -> TcpSpeed:
    """Measure TCP throughput each way and latency against the reflector at `reflector_url`
    (with `token` where it needs one), off the event loop.

    Without `budget_s`, each direction runs for about `length_s` and a request waits at most
    `timeout_s`: about 2 x length + 3 x timeout at worst. With `budget_s` (a caller with a
    deadline), the test returns within the budget plus a small margin (its request timeout
    becomes at most a quarter of the budget), whatever the server does; the directions it
    could not measure in time are None (accuracy of both: docs/reflector.md, "TCP speed
    test"). `threads` connections each way. Raises a `NetprobeError` if the test failed (see
    the module doc); cancelling it stops speedtest-cli's threads."""
    if budget_s is not None:
        if not budget_s > 0:
            raise ConfigError(f"the TCP speed test's budget must be positive, got {budget_s}")
        timeout_s = min(timeout_s, max(0.25, budget_s / 4))
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

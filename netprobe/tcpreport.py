"""The TCP speed test as a check reports it: the JSON `tcp` object (docs/check-format.md,
"tcp") from a test against the reflector (`netprobe.tcpspeed`), or, with `--public-speedtest`,
speedtest-cli's own public path (speedtest.net's configuration and nearest server, which then
see this machine's address). `tcp_report` never raises: what stopped a test is in `error`."""

from __future__ import annotations

import http.client
import time
from typing import Any

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
from netprobe.tcpspeed import (
    THOROUGH_LENGTH_S,
    TcpSpeed,
    _in_thread,
    _Shutdown,
    quiet_speedtest_warnings,
    tcp_speed,
)


def _public_blocking(length_s: float, timeout_s: float, shutdown: _Shutdown) -> TcpSpeed:
    """speedtest-cli's public path: speedtest.net's configuration, its nearest server."""
    started = time.perf_counter()
    with quiet_speedtest_warnings():
        try:
            st = speedtest.Speedtest(timeout=timeout_s, secure=True, shutdown_event=shutdown)
            st.get_servers()
            st.get_best_server()
            st.download()
            st.upload(pre_allocate=False)
        except speedtest.ConfigRetrievalError:
            raise ServerUnreachable("speedtest.net could not be reached (no configuration "
                                    "came back)") from None
        except (speedtest.SpeedtestException, OSError, http.client.HTTPException) as exc:
            raise ServerUnreachable(f"the public speed test failed: {exc}"[:300]) from None
    r = st.results
    return TcpSpeed(round(r.download / 1e6, 3), round(r.upload / 1e6, 3), r.ping,
                    int(r.bytes_received), int(r.bytes_sent),
                    round(time.perf_counter() - started, 3))


async def public_speed(*, length_s: float = 10.0, timeout_s: float = 5.0,
                       deadline_s: float = 45.0) -> TcpSpeed:
    """speedtest-cli against speedtest.net's servers (`--public-speedtest`: they see this
    machine's address). Its figures are speedtest-cli's own (upload counts bytes handed to
    the socket). Raises `ServerUnreachable`, also when `deadline_s` passes first."""
    shutdown = _Shutdown()
    result = await _in_thread(lambda: _public_blocking(length_s, timeout_s, shutdown),
                              shutdown, deadline_s)
    if result is None:
        raise ServerUnreachable(f"the public speed test did not finish within {deadline_s:g} s")
    return result


ERROR_CODES = ((AccessDenied, "denied"), (RateLimited, "rate_limited"), (ServerBusy, "busy"),
               (ServerUnreachable, "unreachable"), (ProtocolError, "bad_answer"),
               (ConfigError, "bad_config"))
"""`tcp.error.code` by exception class (first match; docs/check-format.md, "tcp")."""


async def tcp_report(reflector_url: str | None, token: str | None = None, *,
                     public: bool = False, budget_s: float | None = None,
                     length_s: float = THOROUGH_LENGTH_S) -> dict[str, Any]:
    """The JSON `tcp` object of a check: the test against `reflector_url` (or speedtest.net
    with `public`), or what stopped it in `error`. Never raises a `NetprobeError`."""
    started = time.perf_counter()
    against = "speedtest.net" if public else "reflector"
    mode = "quick" if budget_s is not None else "sustained"
    speed: TcpSpeed | None = None
    error: dict[str, str] | None = None
    try:
        if public:
            speed = await public_speed()
        elif reflector_url is None:
            raise ServerUnreachable("no reflector took the check, so there was none to test "
                                    "against")
        else:
            speed = await tcp_speed(reflector_url, token, length_s=length_s, budget_s=budget_s)
    except NetprobeError as exc:
        code = next((c for cls, c in ERROR_CODES if isinstance(exc, cls)), "failed")
        error = {"code": code, "message": str(exc)[:300]}

    def kbps(mbps: float | None) -> float | None:
        return None if mbps is None else round(mbps * 1000.0, 1)

    return {
        "against": against,
        "mode": mode,
        "down_kbps": kbps(speed.down_mbps) if speed else None,
        "up_kbps": kbps(speed.up_mbps) if speed else None,
        "latency_ms": speed.latency_ms if speed else None,
        "bytes_down": speed.bytes_down if speed else 0,
        "bytes_up": speed.bytes_up if speed else 0,
        "duration_s": round(speed.duration_s if speed else time.perf_counter() - started, 2),
        "error": error,
    }

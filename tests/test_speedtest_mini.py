"""The TCP speed test: the reflector's Speedtest Mini endpoints (netprobe.webrtc.speedtest_mini)
and the real speedtest-cli library driven against them (netprobe.tcpspeed), over loopback."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import procs
import pytest
from aiohttp import web
from procs import secret_file

from netprobe.config import ReflectorSettings
from netprobe.errors import AccessDenied, ProtocolError, ServerUnreachable
from netprobe.minispeedtest import UPLOADS_PER_THREAD
from netprobe.tcpspeed import MiniSpeedtest, quiet_speedtest_warnings, tcp_speed
from netprobe.tokens import Gate, issue, load_keys
from netprobe.webrtc.reflector import Reflector
from netprobe.webrtc.speedtest_mini import IMAGE_BYTES, MINI_PAGE, MiniLimits, add_speedtest_routes

SECRET = "speedtest-" + "y" * 40
MiB = 1024 * 1024

_connects: list[Any] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)  # records connections only while a test sets `_connects`


async def served(app: web.Application) -> tuple[web.AppRunner, str]:
    return await procs.served(app, access_log=None)


@pytest.fixture
def secret_path(tmp_path: Path) -> Path:
    return secret_file(tmp_path / "token-secret", f"k1 = {SECRET}\n")


@pytest.fixture
async def secured(loopback_ice: None, secret_path: Path) -> AsyncIterator[Reflector]:
    r = Reflector(ReflectorSettings(host="127.0.0.1", port=0,
                                    token_secret_file=str(secret_path)))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_speedtest_cli_measures_the_reflector_and_nothing_else(reflector: Reflector
                                                                      ) -> None:
    global _connects
    _connects = []
    try:
        result = await tcp_speed(reflector.url)
    finally:
        connects, _connects = _connects, None
    assert result.down_mbps > 10 and result.up_mbps > 10, result  # loopback: far above
    assert 0 < result.latency_ms < 1000, result
    assert result.bytes_down > IMAGE_BYTES[350] and result.bytes_up > 0, result
    assert result.duration_s < 10, result
    assert connects, "speedtest-cli made no connection at all"
    assert {tuple(a[:2]) for a in connects} == {("127.0.0.1", reflector.port)}, connects


async def test_uploads_keep_their_connections_and_time_each_body(reflector: Reflector
                                                                  ) -> None:
    """Each upload thread posts all its bodies on one kept-alive connection (so its
    congestion window stays open), and each body's start and answer are recorded."""
    global _connects
    st = MiniSpeedtest(length_s=1.0, threads=2)

    def run() -> float:
        st.set_mini_server(reflector.url + "/")
        st.get_best_server()
        return st.upload(threads=2)

    _connects = []
    try:
        bps = await asyncio.to_thread(run)
    finally:
        connects, _connects = _connects, None
    st.check()
    bodies = st.upload_bodies
    assert bps > 10e6 and st.upload_bytes == sum(n for _, _, n in bodies) > 0
    assert len(bodies) > 2, bodies
    assert all(start < answered for start, answered, _ in bodies)
    assert len(connects) == 1 + 3 + 2, connects  # the page, latency.txt x 3, two uploaders


def test_get_config_contacts_nobody() -> None:
    global _connects
    _connects = []
    try:
        st = MiniSpeedtest()
    finally:
        connects, _connects = _connects, None
    assert connects == []
    assert st.config["sizes"]["download"] and st.config["length"]["upload"] == 3.0


async def test_endpoints_answer_as_speedtest_cli_expects(reflector: Reflector) -> None:
    base = reflector.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as r:
            assert r.status == 200 and 'upload_extension: "php"' in await r.text()
        async with http.get(f"{base}/speedtest/latency.txt?x=1.0") as r:
            assert r.status == 200 and await r.text() == "test=test"
        for n in (350, 4000):
            async with http.get(f"{base}/speedtest/random{n}x{n}.jpg?x=2.0") as r:
                assert r.status == 200 and r.content_length == IMAGE_BYTES[n]
                assert len(await r.read()) == IMAGE_BYTES[n]
        async with http.get(f"{base}/speedtest/random351x351.jpg") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with http.post(f"{base}/speedtest/upload.php?x=3.0", data=b"c" * 300000) as r:
            assert r.status == 200 and await r.text() == "size=300000"
        async with http.post(f"{base}/speedtest/upload.php", data=_chunks(65 * MiB)) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == "body_too_large"
        reader, writer = await asyncio.open_connection("127.0.0.1", reflector.port)
        writer.write(f"POST /speedtest/upload.php HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {65 * MiB}\r\n\r\n".encode())
        head = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 413"), head  # refused before any body is sent
        reflector.draining = True
        async with http.get(f"{base}/speedtest/latency.txt") as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "draining"


async def _chunks(total: int) -> AsyncIterator[bytes]:
    chunk = b"u" * (256 * 1024)
    for _ in range(total // len(chunk)):
        yield chunk


async def test_large_transfers_are_streamed_not_held(reflector: Reflector) -> None:
    """A 48 MiB upload and a 30 MiB download: the process's traced memory peak stays far
    below either size (request.read() or a whole generated file would not)."""
    async with aiohttp.ClientSession() as http:
        tracemalloc.start()
        try:
            async with http.post(f"{reflector.url}/speedtest/upload.php",
                                 data=_chunks(48 * MiB)) as r:
                text = await r.text()
            _, up_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = 0
            async with http.get(f"{reflector.url}/speedtest/random4000x4000.jpg") as r:
                async for block in r.content.iter_chunked(256 * 1024):
                    got += len(block)
            _, down_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert text == f"size={48 * MiB}"
    assert got == IMAGE_BYTES[4000]
    assert up_peak < 8 * MiB and down_peak < 8 * MiB, (up_peak, down_peak)


def mini_app(broken: str) -> web.Application:
    """A Speedtest Mini that answers garbage at `broken` (one of page, latency, image, upload)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>" if broken == "page" else MINI_PAGE,
                            content_type="text/html")

    async def latency(request: web.Request) -> web.Response:
        return web.Response(text="nope" if broken == "latency" else "test=test")

    async def image(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(body=b"<h1>oops</h1>" if broken == "image" else
                            b"\0" * IMAGE_BYTES.get(n, 0))

    async def upload(request: web.Request) -> web.Response:
        await request.content.read()
        return web.Response(text="<error/>" if broken == "upload" else
                            "size=999999999999" if broken == "liar" else "size=1")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/speedtest/latency.txt", latency)
    app.router.add_get(r"/speedtest/random{n:\d+}x{m:\d+}.jpg", image)
    app.router.add_post("/speedtest/upload.php", upload)
    return app


@pytest.mark.parametrize("broken", ["page", "latency", "image", "upload"])
async def test_a_garbage_endpoint_gives_a_clear_reason(broken: str) -> None:
    runner, url = await served(mini_app(broken))
    try:
        with pytest.raises(ProtocolError, match="Speedtest Mini"):
            await tcp_speed(url, length_s=1.0)
    finally:
        await runner.cleanup()


async def test_the_garbage_free_mini_app_passes() -> None:
    """The control for the test above: the same app, nothing broken, gives figures."""
    runner, url = await served(mini_app("nothing"))
    try:
        result = await tcp_speed(url, length_s=1.0)
    finally:
        await runner.cleanup()
    assert result.down_mbps > 0 and result.up_mbps > 0


async def test_an_upload_cannot_be_confirmed_beyond_what_was_sent() -> None:
    """A server that confirms 10^12 bytes for each body: the bytes counted are those sent."""
    runner, url = await served(mini_app("liar"))
    try:
        result = await tcp_speed(url, length_s=0.5)
    finally:
        await runner.cleanup()
    assert 0 < result.bytes_up <= 2 * UPLOADS_PER_THREAD * 8 * MiB, result


async def test_an_unreachable_endpoint_is_said_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="did not answer"):
        await tcp_speed(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


async def test_the_token_gate(secured: Reflector, secret_path: Path) -> None:
    token = issue(load_keys(secret_path), "check", time.time())
    base = secured.url
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/speedtest/latency.txt", "/speedtest/random350x350.jpg"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
                assert (await r.json())["error"]["code"] == "unauthorized"
        async with http.post(f"{base}/speedtest/upload.php", data=b"x" * 10) as r:
            assert r.status == 401
        async with http.get(f"{base}/t/not.a.token/speedtest/latency.txt") as r:
            assert r.status == 401
        async with http.get(f"{base}/speedtest/latency.txt",
                            headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200 and await r.text() == "test=test"
        async with http.get(f"{base}/t/{token}/speedtest/latency.txt") as r:
            assert r.status == 200
    with pytest.raises(AccessDenied):
        await tcp_speed(base)
    result = await tcp_speed(base, token, length_s=1.0)
    assert result.down_mbps > 0 and result.up_mbps > 0


async def test_transfers_are_capped_and_requests_rate_limited() -> None:
    limits = MiniLimits(max_transfers=2, max_transfers_per_source=1, requests_per_minute=6,
                        request_burst=4, max_transfer_s=5.0)
    app = web.Application()
    mini = add_speedtest_routes(app, Gate(None, False, "127.0.0.1"), limits=limits)
    runner, url = await served(app)
    try:
        async with aiohttp.ClientSession() as http:
            held = await http.get(f"{url}/speedtest/random4000x4000.jpg")  # not read: held
            assert held.status == 200
            async with http.get(f"{url}/speedtest/random350x350.jpg") as r:
                assert r.status == 429
                assert (await r.json())["error"]["code"] == "too_many_transfers"
            statuses = []
            for _ in range(4):
                async with http.get(f"{url}/speedtest/latency.txt") as r:
                    statuses.append(r.status)
                    retry = r.headers.get("Retry-After")
            # a burst of 4: the two downloads took 2 (the refused one too), these the rest
            assert statuses == [200, 200, 429, 429], statuses
            assert retry is not None and int(retry) >= 1
            held.close()
    finally:
        await runner.cleanup()
    assert mini.admission.count("check") == 0  # every slot given back


async def test_shutdown_ends_a_stalled_transfer() -> None:
    app = web.Application()
    add_speedtest_routes(app, Gate(None, False, "127.0.0.1"))
    runner, url = await served(app)
    async with aiohttp.ClientSession() as http:
        held = await http.get(f"{url}/speedtest/random4000x4000.jpg")  # never read
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 5
        held.close()


def test_speedtest_deprecations_are_quieted_for_its_module_only() -> None:
    def warn(module: str) -> Callable[[], None]:
        return lambda: warnings.warn_explicit("old", DeprecationWarning, f"{module}.py", 1,
                                              module=module)

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with quiet_speedtest_warnings():
            warn("speedtest")()  # ignored
            with pytest.raises(DeprecationWarning):
                warn("netprobe.other")()
            with pytest.raises(DeprecationWarning):
                warn("speedtest_other")()
        with pytest.raises(DeprecationWarning):  # not silenced beyond the block
            warn("speedtest")()


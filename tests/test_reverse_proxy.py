"""docs/examples/nginx-reflector.conf, run: a real nginx (TLS with a certificate from a test CA
made here) in front of a real `netprobe serve --workers 1` on loopback, and a real
`netprobe check` through it that says `video` (the client trusts the CA via SSL_CERT_FILE).

The example is used as written; only its ports, names and certificate paths are changed, and
one line is added: ``proxy_bind 127.0.0.3``, so that nginx reaches the reflector from another
address than the client's (on one machine both would be 127.0.0.1, and the test could not
tell whose address the reflector took). Then the logged source hash shows that the reflector
took the client's address from X-Forwarded-For when, and only when, the proxy is trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procs import CHILD_ENV, NETPROBE, free_port

from netprobe.lab.certs import ThrowawayCA

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "nginx-reflector.conf"
PROXY_ADDR = "127.0.0.3"
"""The address nginx connects to the reflector from (proxy_bind)."""
CLIENT_ADDR = "127.0.0.1"


@dataclass
class Proxy:
    https: int
    http: int
    upstream: int
    ca: Path
    dir: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https}"


def _cert(dir: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for 127.0.0.1 (its SAN) signed by it: (ca, cert, key)
    (`netprobe.lab.certs.ThrowawayCA`)."""
    ca = ThrowawayCA(dir)
    cert, key = dir / "fullchain.pem", dir / "privkey.pem"
    ca.issue(cert, key, "127.0.0.1")
    return ca.file, cert, key


def _templated(https: int, http: int, upstream: int, cert: Path, key: Path) -> str:
    text = EXAMPLE.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http};"),
        ("listen [::]:80;", ""),
        ("server 127.0.0.1:8765;", f"server 127.0.0.1:{upstream};"),
        ("/etc/letsencrypt/live/reflector.clinic.example/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/reflector.clinic.example/privkey.pem", str(key)),
        ("proxy_http_version 1.1;", f"proxy_http_version 1.1;\n    proxy_bind {PROXY_ADDR};"),
    ):
        assert text.count(old) >= 1, f"the example no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def _need_nginx() -> str:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    if nginx is None:
        msg = "nginx is not installed (Debian package nginx)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("the nginx test runs nginx as root (its own prefix, pid and temp paths)")
    return nginx


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 15.0
               ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    nginx = _need_nginx()
    dir = tmp_path_factory.mktemp("nginx")
    ca, cert, key = _cert(dir)
    https, http, upstream = free_port(), free_port(), free_port()
    (dir / "site.conf").write_text(_templated(https, http, upstream, cert, key))
    temp = {name: dir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    (dir / "nginx.conf").write_text(f"""\
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {dir}/site.conf;
}}
""")
    argv = [nginx, "-p", f"{dir}/", "-c", str(dir / "nginx.conf"), "-g", "daemon off;"]
    test = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(https, proc, "nginx")
        yield Proxy(https=https, http=http, upstream=upstream, ca=ca, dir=dir)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


StartReflector = Callable[[list[str]], "ReflectorRun"]


@pytest.fixture
def reflector(proxy: Proxy, tmp_path: Path) -> Iterator[StartReflector]:
    """Starts `netprobe serve` behind the proxy with the given trusted_proxies."""
    runs: list[ReflectorRun] = []

    def start(trusted: list[str]) -> ReflectorRun:
        run = ReflectorRun.start(proxy, tmp_path / f"run{len(runs)}", trusted)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()


@dataclass
class ReflectorRun:
    proc: subprocess.Popen[str]
    log: Path
    key: bytes

    @classmethod
    def start(cls, proxy: Proxy, dir: Path, trusted: list[str]) -> ReflectorRun:
        dir.mkdir()
        key = os.urandom(16).hex().encode()
        (dir / "log-key").write_bytes(key)
        config = dir / "reflector.toml"
        config.write_text(f'[reflector]\nhost = "127.0.0.1"\nport = {proxy.upstream}\n'
                          f"trusted_proxies = {json.dumps(trusted)}\n"
                          f'log_file = "{dir / "reflector.log"}"\n'
                          f'log_key_file = "{dir / "log-key"}"\n')
        proc = subprocess.Popen([*NETPROBE, "serve", "--config", str(config), "--workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=CHILD_ENV)
        _wait_port(proxy.upstream, proc, "netprobe serve")
        return cls(proc, dir / "reflector.log", key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def source_hash(self, address: str) -> str:
        """What docs/reflector.md says the log carries for a client at `address` (IPv4)."""
        return hmac.new(self.key, address.encode(), hashlib.sha256).hexdigest()[:16]

    def logged_sources(self, event: str = "probe_session_started") -> list[str]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [e["source"] for e in lines if e.get("event") == event]


def _check(proxy: Proxy) -> dict[str, object]:
    proc = subprocess.run([*NETPROBE, "check", "--server", proxy.url, "--json"],
                          capture_output=True, text=True, timeout=60,
                          env={**CHILD_ENV, "SSL_CERT_FILE": str(proxy.ca)})
    try:
        result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    result["_stderr"] = proc.stderr[-2000:]
    return result


def test_a_check_through_nginx_says_video_and_the_client_address_is_believed_only_from_a_trusted_proxy(  # noqa: E501
        proxy: Proxy, reflector: StartReflector) -> None:
    for trusted, client in (([f"{PROXY_ADDR}/32"], CLIENT_ADDR),  # the proxy: X-F-F believed
                            ([], PROXY_ADDR),                      # no proxy trusted
                            ([f"{CLIENT_ADDR}/32"], PROXY_ADDR)):  # another address trusted
        run = reflector(trusted)
        result = _check(proxy)
        assert result.get("verdict") == "video", (trusted, result)
        run.stop()
        assert run.logged_sources() == [run.source_hash(client)], (trusted, client)
        assert run.source_hash(CLIENT_ADDR) != run.source_hash(PROXY_ADDR)


def _get(url: str, proxy: Proxy, data: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    context = ssl.create_default_context(cafile=str(proxy.ca))

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kw: object) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         NoRedirect())
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json"} if data is not None else {})
    try:
        with opener.open(request, timeout=15) as resp:
            return resp.status, resp.read().decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers)


def test_what_nginx_serves_and_refuses(proxy: Proxy, reflector: StartReflector) -> None:
    reflector([f"{PROXY_ADDR}/32"])
    status, body, _ = _get(proxy.url + "/healthz", proxy)
    assert status == 200 and json.loads(body)["status"] == "ok", body
    # /metrics is served to loopback by the reflector itself (metrics_from) but never
    # through the public side
    status, body, _ = _get(proxy.url + "/metrics", proxy)
    assert status == 404 and "netprobe_reflector" not in body
    # an oversized offer is refused by nginx before it reaches the reflector
    status, body, _ = _get(proxy.url + "/v1/offer", proxy, data=b"{" + b" " * 100_000 + b"}")
    assert status == 413, body
    # a malformed offer reaches the reflector: its own JSON error
    status, body, _ = _get(proxy.url + "/v1/offer", proxy, data=b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_json", body
    status, _, headers = _get(f"http://127.0.0.1:{proxy.http}/v1/offer", proxy)
    assert status == 308 and headers["Location"].startswith("https://"), headers


def test_the_tcp_speed_test_and_turn_credentials_pass_through_nginx(
        proxy: Proxy, reflector: StartReflector) -> None:
    reflector([f"{PROXY_ADDR}/32"])
    proc = subprocess.run([*NETPROBE, "check", "--server", proxy.url, "--json", "--thorough"],
                          capture_output=True, text=True, timeout=90,
                          env={**CHILD_ENV, "SSL_CERT_FILE": str(proxy.ca)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tcp = result["tcp"]
    assert tcp["error"] is None, tcp
    assert tcp["down_kbps"] and tcp["up_kbps"] and tcp["bytes_up"] > 1_000_000, tcp
    # /v1/ice reaches the reflector (no TURN configured there: an empty list)
    status, body, _ = _get(proxy.url + "/v1/ice", proxy)
    assert status == 200 and json.loads(body)["ice_servers"] == [], body

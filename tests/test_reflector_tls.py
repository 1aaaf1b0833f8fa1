"""`netprobe serve --tls-cert/--tls-key`: a real check over https with the test CA trusted
(SSL_CERT_FILE for the `netprobe check` process), SIGHUP swapping the served certificate (the
peer certificate's fingerprint), a bad replacement keeping the old one, and a bad pair at start
a clear error; SIGHUP reloading the token secret file the same way. Certificates come from
`netprobe.lab.certs.ThrowawayCA` (`cryptography`, installed with aiortc)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import until
from offers import offer_sdp
from procs import CHILD_ENV, NETPROBE, free_port, serve, stop

from netprobe.lab.certs import ThrowawayCA
from netprobe.tokens import Keyring, issue

pytestmark = pytest.mark.timeout(90)


def served_fingerprint(port: int, ca: Path) -> str:
    """SHA-256 of the certificate the server presents (verified against `ca`)."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def test_a_check_over_https_and_sighup_swaps_the_certificate(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = ca.issue(cert, key)
    port = free_port()
    proc = await serve(port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        url = f"https://127.0.0.1:{port}"
        check = await asyncio.create_subprocess_exec(
            *NETPROBE, "check", "--server", url, "--json", stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**CHILD_ENV, "SSL_CERT_FILE": str(ca.file)})
        out, err = await asyncio.wait_for(check.communicate(), 40)
        assert json.loads(out)["verdict"] == "video", (out, err)
        # not trusted without the CA: the check cannot even signal
        check = await asyncio.create_subprocess_exec(
            *NETPROBE, "check", "--server", url, "--json", "--max-duration", "5",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**CHILD_ENV, "SSL_CERT_FILE": str(tmp_path / "none.pem")})
        out, _ = await asyncio.wait_for(check.communicate(), 40)
        assert json.loads(out)["verdict"] == "unknown"
        assert served_fingerprint(port, ca.file) == first

        second = ca.issue(cert, key)  # renewed in place, as certbot does
        proc.send_signal(1)  # SIGHUP
        await until(lambda: served_fingerprint(port, ca.file) == second, 10, "the new certificate")

        spare_cert, spare_key = tmp_path / "spare.pem", tmp_path / "spare.key"
        ca.issue(spare_cert, spare_key)
        shutil.copy(spare_cert, cert)  # a certificate whose key was not renewed with it
        proc.send_signal(1)
        await asyncio.sleep(1.5)
        assert served_fingerprint(port, ca.file) == second  # the old pair kept
    finally:
        err_text = (await stop(proc)).decode()
    assert proc.returncode == 0, err_text
    lines = [json.loads(x) for x in err_text.splitlines() if x.startswith("{")]
    assert [x["what"] for x in lines if x["event"] == "reflector_reloaded"] == ["tls"]
    failed = [x for x in lines if x["event"] == "reflector_reload_failed"]
    assert len(failed) == 1 and "does not belong" in failed[0]["error"], failed


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_the_certificate_in_every_worker(tmp_path: Path,
                                                              workers: str) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.issue(cert, key)
    port = free_port()
    proc = await serve(port, "--workers", workers, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        second = ca.issue(cert, key)
        proc.send_signal(1)
        await asyncio.sleep(1.0)
        for _ in range(12):  # new connections are spread over the workers: every one renewed
            assert served_fingerprint(port, ca.file) == second
    finally:
        await stop(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize("problem", ["mismatch", "missing", "one_only", "not_pem"])
def test_a_bad_pair_at_start_is_a_clear_error(tmp_path: Path, problem: str) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.issue(cert, key)
    ca.issue(tmp_path / "other.pem", tmp_path / "other.key")
    args = {"mismatch": ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "other.key")],
            "missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)],
            "one_only": ["--tls-cert", str(cert)],
            "not_pem": ["--tls-cert", str(ca.file.with_name("junk")), "--tls-key", str(key)]}
    (tmp_path / "junk").write_text("not a certificate\n")
    proc = subprocess.run([*NETPROBE, "serve", "--port", str(free_port()), *args[problem]],
                          capture_output=True, text=True, timeout=30, env=CHILD_ENV)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = {"mismatch": "does not belong", "missing": "no such file",
                "one_only": "--tls-key", "not_pem": "not a PEM"}[problem]
    assert expected in proc.stderr, proc.stderr


async def test_sighup_reloads_the_token_secret_file_and_keeps_it_if_bad(tmp_path: Path) -> None:
    old, new = ("k1", b"a" * 40), ("k2", b"b" * 40)
    secret = tmp_path / "secret"
    secret.write_text("k1 = " + "a" * 40 + "\n")
    secret.chmod(0o600)
    port = free_port()
    proc = await serve(port, "--token-secret-file", str(secret))
    url = f"http://127.0.0.1:{port}"

    async def offer(key: tuple[str, bytes]) -> int:
        token = issue(Keyring((key,)), "monitor", time.time(), 600)
        body = {"sdp": await offer_sdp(), "type": "offer", "mode": "monitor"}
        async with aiohttp.ClientSession() as http, http.post(
                url + "/v1/offer", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    try:
        assert (await offer(old), await offer(new)) == (200, 401)
        secret.write_text("k2 = " + "b" * 40 + "\n")  # a new key, the old one retired
        proc.send_signal(1)
        await until(lambda: _accepts(offer, new), 10, "the new key")
        assert await offer(old) == 401
        secret.write_text("k3 = short\n")  # a bad file: the keys in use stay
        proc.send_signal(1)
        await asyncio.sleep(1.0)
        assert await offer(new) == 200
    finally:
        err = (await stop(proc)).decode()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert [x["what"] for x in lines if x["event"] == "reflector_reloaded"] == ["tokens"]
    assert [x["what"] for x in lines if x["event"] == "reflector_reload_failed"] == ["tokens"]


async def _accepts(offer: Any, key: tuple[str, bytes]) -> bool:
    return bool(await offer(key) == 200)

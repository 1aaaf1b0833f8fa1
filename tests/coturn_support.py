"""A real coturn (`turnserver`) on loopback for the TURN tests: TURN REST API credentials
(`--use-auth-secret`), UDP and TCP on one free port, relay ports in a small random range, its
log in a file of the test's. CI installs coturn: there its absence fails the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from procs import free_port

from netprobe.lab.certs import ThrowawayCA


def need_turnserver() -> str:
    path = shutil.which("turnserver")
    if path is None:
        message = "turnserver (coturn) is not installed: apt-get install coturn"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Coturn:
    port: int
    log: Path
    tls_ports: tuple[int, ...] = ()
    ca: Path | None = None
    """The test CA that signed its certificate (for `SSL_CERT_FILE`), when it serves TLS."""

    def url(self, transport: str = "udp") -> str:
        if transport == "tls":
            return f"turns:127.0.0.1:{self.tls_ports[0]}"
        return f"turn:127.0.0.1:{self.port}" + ("" if transport == "udp" else "?transport=tcp")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


async def _listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(100):
        if proc.returncode is not None:
            pytest.fail(f"turnserver exited ({proc.returncode}): {_tail(log)}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await asyncio.sleep(0.2)  # the UDP listener starts with the TCP one
        return
    pytest.fail(f"turnserver did not listen on {port}: {_tail(log)}")


def test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for 127.0.0.1 (its SAN) signed by it: (ca, cert, key)
    (`netprobe.lab.certs.ThrowawayCA`)."""
    ca = ThrowawayCA(directory)
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    ca.issue(cert, key, "127.0.0.1")
    return ca.file, cert, key


EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "turnserver.conf"


def example_config(tmp_path: Path, secret: str, port: int, tls: int, low: int,
                   cert: Path, key: Path, log: Path) -> str:
    """docs/examples/turnserver.conf with this test's addresses, ports, secret and files
    (every other line as shipped)."""
    values = {"listening-ip": "127.0.0.1", "relay-ip": "127.0.0.1", "listening-port": port,
              "tls-listening-port": tls,
              "min-port": low, "max-port": low + 49, "static-auth-secret": secret,
              "cert": cert, "pkey": key, "log-file": log}
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values and "=" in line else line)
    assert {x.partition("=")[0] for x in lines} >= set(values), "the example changed"
    return "\n".join([*lines, f"pidfile={tmp_path / f'turnserver-{port}.pid'}",
                      f"userdb={tmp_path / 'turndb'}", ""])


@contextlib.asynccontextmanager
async def coturn(tmp_path: Path, secret: str, example: bool = False
                 ) -> AsyncIterator[Coturn]:
    """coturn in the foreground with `secret` as its static-auth-secret; stopped at the end.
    `example`: configured by docs/examples/turnserver.conf (UDP, TCP and TLS), else by flags
    (UDP and TCP)."""
    binary = need_turnserver()
    port = free_port()
    low = random.randrange(50000, 60000, 50)
    log = tmp_path / f"turnserver-{port}.log"
    tls_ports: tuple[int, ...] = ()
    ca = None
    if example:
        ca, cert, key = test_ca(tmp_path)
        tls_ports = (free_port(),)
        conf = tmp_path / "turnserver.conf"
        conf.write_text(example_config(tmp_path, secret, port, tls_ports[0], low, cert, key,
                                       log))
        args = ["-c", str(conf)]
    else:
        args = ["-n", f"--log-file={log}", "--simple-log", "--no-cli",
                "--allow-loopback-peers", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                f"--listening-port={port}", "--no-tls", "--no-dtls", f"--min-port={low}",
                f"--max-port={low + 49}", "--fingerprint", "--realm=netprobe.test",
                "--use-auth-secret", f"--static-auth-secret={secret}",
                f"--pidfile={tmp_path / f'turnserver-{port}.pid'}",
                f"--db={tmp_path / 'turndb'}"]
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for listening in (port, *tls_ports):
            await _listening(listening, proc, log)
        yield Coturn(port, log, tls_ports, ca)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

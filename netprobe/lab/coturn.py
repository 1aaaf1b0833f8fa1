"""A TURN relay (coturn's ``turnserver``) beside the reflector, in the lab's server namespace.

`start_coturn` runs ``turnserver`` in the foreground in the server namespace of a running
`LinkLab`, the way a clinic would run it beside its reflector: TURN REST API credentials
(``--use-auth-secret``: username ``expiry:name``, password ``base64(HMAC-SHA1(secret,
username))``), listening and relaying on the server's lab address, UDP and TCP on 3478 and
TLS on 5349 with a certificate for that address from a throwaway CA. It returns once both TCP
listeners accept connections, with what the reflector and the client need: the
``--turn-url`` list, the secret file (``--turn-secret-file``) and the CA file (the client's
``SSL_CERT_FILE``, for ``turns:``). The lab stops the process with its others on close.

    async with LinkLab(profile) as lab:
        turn = await start_coturn(lab, tmp_dir)
        await start_reflector(lab, args=("--open", *turn.reflector_args()))
        client = await lab.exec_client(..., env=turn.client_env())
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netprobe.lab.certs import ThrowawayCA
from netprobe.lab.errors import LabError

if TYPE_CHECKING:
    from netprobe.lab.linklab import LinkLab

TURNSERVER = "turnserver"
"""coturn's server program (Debian package ``coturn``)."""
PORT = 3478
"""TURN over UDP and TCP."""
TLS_PORT = 5349
"""TURN over TLS (``turns:``)."""
MIN_RELAY_PORT, MAX_RELAY_PORT = 61000, 61999
"""Relay ports: above Linux's default ephemeral range (32768-60999), so coturn's relay
sockets never collide with the reflector's own (aioice binds ephemeral ports)."""
REALM = "netprobe.test"

# Run in the server namespace: wait until every port accepts a TCP connection.
_WAIT_SCRIPT = """
import socket, sys, time
host, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
for port in map(int, sys.argv[3:]):
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"port {port} is not listening")
            time.sleep(0.05)
"""


@dataclass(frozen=True)
class TurnServer:
    """A running coturn in the lab, and what its users need to know."""

    address: str
    """The address it listens and relays on (the server's lab address)."""
    urls: tuple[str, ...]
    """TURN URLs in the order a client tries them: UDP, TCP, TLS (``--turn-url`` each)."""
    secret: str
    """coturn's ``static-auth-secret`` (TURN REST API shared secret)."""
    secret_file: Path
    """File holding `secret` (the reflector's ``--turn-secret-file``)."""
    ca_file: Path
    """The CA that signed the TLS listener's certificate (the client's ``SSL_CERT_FILE``)."""
    log_file: Path
    """coturn's log."""
    realm: str = REALM
    """coturn's realm."""

    def reflector_args(self) -> list[str]:
        """``netprobe serve`` flags that hand out this server's credentials."""
        args: list[str] = []
        for url in self.urls:
            args += ["--turn-url", url]
        return [*args, "--turn-secret-file", str(self.secret_file)]

    def client_env(self) -> dict[str, str]:
        """Environment for a client that must trust the TLS listener."""
        return {"SSL_CERT_FILE": str(self.ca_file)}

    def credentials(self, name: str, expiry: int) -> tuple[str, str]:
        """TURN REST credentials valid until ``expiry`` (Unix time)."""
        return rest_credentials(self.secret, name, expiry)

    def log_tail(self, lines: int = 20) -> str:
        """The end of coturn's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def rest_credentials(secret: str, name: str, expiry: int) -> tuple[str, str]:
    """The TURN REST API's ``(username, password)``: ``expiry:name`` and
    ``base64(HMAC-SHA1(secret, username))`` (coturn's ``use-auth-secret``)."""
    username = f"{expiry}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turnserver_argv(address: str, directory: Path, secret: str, cert: Path, key: Path,
                    log_file: Path) -> list[str]:
    """The ``turnserver`` command line (foreground, no config file, no CLI)."""
    return [
        TURNSERVER, "-n", "--no-cli", "--allow-loopback-peers",
        f"--listening-ip={address}", f"--relay-ip={address}",
        f"--listening-port={PORT}", f"--tls-listening-port={TLS_PORT}",
        f"--cert={cert}", f"--pkey={key}", "--no-dtls", "--no-tlsv1", "--no-tlsv1_1",
        f"--min-port={MIN_RELAY_PORT}", f"--max-port={MAX_RELAY_PORT}",
        "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={REALM}",
        "--fingerprint", f"--pidfile={directory / 'turnserver.pid'}",
        f"--userdb={directory / 'turndb'}",
        f"--log-file={log_file}", "--simple-log", "--no-stdout-log",
    ]


def prepare_files(address: str, directory: Path) -> tuple[TurnServer, Path, Path]:
    """Write coturn's secret, CA, certificate and key for ``address`` into ``directory``;
    returns the server's description and the certificate and key paths."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    secret_file = directory / "turn-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    ca = ThrowawayCA(directory)
    cert, key = directory / "turn-cert.pem", directory / "turn-key.pem"
    ca.issue(cert, key, host=address)
    log_file = directory / "turnserver.log"
    server = TurnServer(
        address=address,
        urls=(f"turn:{address}:{PORT}?transport=udp", f"turn:{address}:{PORT}?transport=tcp",
              f"turns:{address}:{TLS_PORT}?transport=tcp"),
        secret=secret, secret_file=secret_file, ca_file=ca.file, log_file=log_file,
    )
    return server, cert, key


async def start_coturn(lab: LinkLab, directory: Path, *, timeout: float = 10.0) -> TurnServer:
    """Start coturn in ``lab``'s server namespace, its files in ``directory``; return once its
    TCP and TLS listeners accept connections. `LabError` if ``turnserver`` is not installed,
    exits, or does not listen within ``timeout`` seconds."""
    if shutil.which(TURNSERVER) is None:
        raise LabError(
            f"{TURNSERVER!r} (coturn) is not installed: apt-get install coturn"
        )
    server, cert, key = prepare_files(lab.server_addr, directory)
    address = server.address
    process = await lab.exec_server(
        *turnserver_argv(address, directory, server.secret, cert, key, server.log_file),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    waiter = await lab.exec_server(
        sys.executable, "-c", _WAIT_SCRIPT, address, str(timeout), str(PORT), str(TLS_PORT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    waiting = asyncio.ensure_future(waiter.communicate())
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        waiting.cancel()
        raise
    finally:
        exited.cancel()
    if process.returncode is not None:
        with contextlib.suppress(ProcessLookupError):
            waiter.kill()
        await waiting
        raise LabError(f"turnserver exited with status {process.returncode}:\n"
                       f"{server.log_tail()}")
    _, err = await waiting
    if waiter.returncode != 0:
        raise LabError(f"turnserver did not start listening within {timeout:g} s "
                       f"({err.decode(errors='replace').strip()}):\n{server.log_tail()}")
    return server

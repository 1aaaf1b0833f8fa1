"""Network namespaces and TUN devices of the link lab: set-up, checks and sure teardown.

Two namespaces, client and server, each hold one TUN device named ``lab0``:

    client ns: lab0 198.18.0.1 <-fd-> forwarder <-fd-> server ns: lab0 198.18.0.2

The TUN devices are created in the calling process's namespace (TUNSETIFF ioctl; Python 3.11
has no ``os.setns``) and then moved with ``ip link set dev X netns NS``; their file descriptors
keep working after the move. Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking), which
never routes anywhere outside the lab. IPv6 is left out: the devices get no link-local address
(``addrgenmode none``) and the forwarder ignores anything that is not IPv4.

Names are unique per run, ``np-<pid>-<6 hex>-c`` and ``-s``, so parallel labs never collide and
`remove_stale_namespaces` can recognise the leftovers of a process that was killed with SIGKILL.
Set-up and teardown run with SIGINT and SIGTERM held back (they take a few tens of
milliseconds), so a Ctrl-C can never leave half a lab behind; it is acted on right after.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from netprobe.lab.errors import LabError, LabUnavailable

logger = logging.getLogger(__name__)

CLIENT_ADDR = "198.18.0.1"
"""Address of the client side (inside the client namespace)."""
SERVER_ADDR = "198.18.0.2"
"""Address of the server side (inside the server namespace)."""
IFACE = "lab0"
"""Name of the TUN device inside each namespace."""
MTU = 1500

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_NAME_RE = re.compile(r"^np-(\d+)-[0-9a-f]{6}-[cs]$")


def check_lab_available() -> str | None:
    """Why the link lab cannot run here, in plain words, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "the link lab needs Linux (network namespaces and TUN devices)"
    if os.geteuid() != 0:
        return "the link lab needs root: it creates network namespaces and TUN devices"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: load the tun kernel module (or pass the device in)"
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        return f"/dev/net/tun cannot be opened: {exc.strerror}"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: install iproute2"
    return None


def netns_exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def remove_stale_namespaces() -> list[str]:
    """Remove lab namespaces whose creating process is gone (e.g. killed with SIGKILL)."""
    removed = []
    for name in list_namespaces():
        match = _NAME_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _remove_namespace(name)
            removed.append(name)
    return removed


@dataclass
class LabNetwork:
    """The two namespaces and the TUN file descriptors that join them. Close it exactly once
    (`close` is idempotent); `create` cleans up after itself if it fails half-way."""

    client_ns: str
    """Name of the client namespace."""
    server_ns: str
    """Name of the server namespace."""
    client_fd: int = -1
    """Non-blocking fd of the client namespace's TUN device (packets the client sends)."""
    server_fd: int = -1
    """Non-blocking fd of the server namespace's TUN device (packets the server sends)."""
    client_addr: str = CLIENT_ADDR
    """Address of the client side."""
    server_addr: str = SERVER_ADDR
    """Address of the server side."""
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls) -> LabNetwork:
        """Create both namespaces and TUN devices, or raise `LabError` leaving nothing behind."""
        reason = check_lab_available()
        if reason is not None:
            raise LabUnavailable(reason)
        token = secrets.token_hex(3)
        base = f"np-{os.getpid()}-{token}"
        net = cls(client_ns=f"{base}-c", server_ns=f"{base}-s")
        with deferred_signals():
            try:
                for ns in (net.client_ns, net.server_ns):
                    _ip("netns", "add", ns)
                net.client_fd = _attach_tun(f"np{token}c", net.client_ns, CLIENT_ADDR, SERVER_ADDR)
                net.server_fd = _attach_tun(f"np{token}s", net.server_ns, SERVER_ADDR, CLIENT_ADDR)
            except BaseException:
                net._teardown()
                raise
        logger.debug("lab network up: %s, %s", net.client_ns, net.server_ns)
        return net

    def close(self) -> None:
        """Kill what still runs in the namespaces, close the TUN devices, delete the namespaces."""
        if self._closed:
            return
        with deferred_signals():
            self._teardown()

    def _teardown(self) -> None:
        self._closed = True
        for fd in (self.client_fd, self.server_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.client_fd = self.server_fd = -1
        for ns in (self.client_ns, self.server_ns):
            _remove_namespace(ns)
        logger.debug("lab network down: %s, %s", self.client_ns, self.server_ns)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration (main thread only; no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -- helpers ----------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> None:
    # Run while SIGINT/SIGTERM may be blocked: `ip` inherits the mask, harmless for a
    # command that lasts milliseconds.
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabError(
            f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}"
        )


def _attach_tun(name: str, namespace: str, addr: str, peer: str) -> int:
    """Create TUN ``name`` here, move it into ``namespace`` as ``lab0``, configure it."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifreq)
        _ip("link", "set", "dev", name, "netns", namespace)
        _ip("-n", namespace, "link", "set", "dev", name, "name", IFACE)
        _ip("-n", namespace, "link", "set", "dev", IFACE, "mtu", str(MTU), "txqueuelen", "1000")
        _ip("-n", namespace, "link", "set", "dev", IFACE, "addrgenmode", "none", check=False)
        _ip("-n", namespace, "addr", "add", addr, "peer", peer, "dev", IFACE)
        _ip("-n", namespace, "link", "set", "dev", IFACE, "up")
        _ip("-n", namespace, "link", "set", "dev", "lo", "up")
    except OSError as exc:
        os.close(fd)
        raise LabError(f"cannot create TUN device {name}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _namespace_pids(namespace: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    return [int(tok) for tok in out.stdout.split() if tok.isdigit()]


def _remove_namespace(namespace: str, grace_s: float = 1.0) -> None:
    """Stop every process left in ``namespace`` (TERM, then KILL), then delete it."""
    pids = _namespace_pids(namespace)
    if pids:
        logger.info("stopping %d process(es) left in %s", len(pids), namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = _namespace_pids(namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if namespace in list_namespaces():
        _ip("netns", "del", namespace, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Privacy redaction for netprobe's logs: addresses, this machine's names, the home folder.

`Redactor.redact` replaces every IPv4/IPv6 address with ``<ip>``, this machine's host names
with ``<host>``, the user's names with ``<user>`` and their home directory with ``~``
(`redact_addresses` does the addresses alone). The rule is spelled out in docs/log-format.md,
"Privacy"; `netprobe.logs.jsonlog` applies it to every string of a log line.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["HOST_TOKEN", "IP_TOKEN", "USER_TOKEN", "MachineNames", "Redactor", "read_machine_names",
           "redact_addresses"]

IP_TOKEN: Final = "<ip>"
HOST_TOKEN: Final = "<host>"
USER_TOKEN: Final = "<user>"

_ADDR_RUN = re.compile(r"[0-9A-Fa-f:.]+")
"""A run of the characters an address is written with."""
_ZONE = re.compile(r"%[\w.\-]++(?!:)")
"""An IPv6 zone after an address (`%eth0`, `%25en0`); not one that runs into another address."""
_V6_COMPRESSED = re.compile(r"[0-9A-Fa-f]::|::[0-9A-Fa-f]")
_V6_FULL = re.compile(r"[0-9A-Fa-f]:(?:[0-9A-Fa-f]{1,4}:){6}[0-9A-Fa-f]")
_V6_V4_TAIL = re.compile(r"[0-9A-Fa-f]:(?:[0-9A-Fa-f]{1,4}:){5}[0-9]+(?:\.[0-9]+){3}")
_V4 = re.compile(r"(?<![0-9])[0-9]++(?:\.[0-9]++){3,}")

_GENERIC_USERS: Final = frozenset({
    "root", "admin", "administrator", "user", "guest", "system", "nobody", "daemon",
    "localservice", "local service", "networkservice", "network service", "netprobe", "_netprobe",
    "ip", "host",  # the words inside the tokens
})
_GENERIC_HOSTS: Final = frozenset({
    "localhost", "localhost.localdomain", "localdomain", "ip6-localhost", "ip6-loopback",
    "ip", "user",
})
_HOSTNAME_RECHECK_S: Final = 60.0


def _is_kept_address(text: str) -> bool:
    """Loopback and unspecified addresses identify nobody and stay readable."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return False
    return addr.is_loopback or addr.is_unspecified


def _redact_v4(m: re.Match[str]) -> str:
    return m.group() if _is_kept_address(m.group()) else IP_TOKEN


def _is_ipv6_run(run: str) -> bool:
    return bool(_V6_COMPRESSED.search(run) or _V6_FULL.search(run) or _V6_V4_TAIL.search(run))


def redact_addresses(text: str) -> str:
    """Replace every IPv4/IPv6 address in `text` with ``<ip>`` (loopback and unspecified stay)."""
    if ":" not in text and "." not in text:
        return text
    out: list[str] = []
    pos = 0
    while (m := _ADDR_RUN.search(text, pos)) is not None:
        out.append(text[pos:m.start()])
        run, pos = m.group(), m.end()
        body = run.rstrip(".")  # a sentence's full stop is not part of the address
        if ":" in body and _is_ipv6_run(body):
            zone = _ZONE.match(text, pos) if body == run else None
            if _is_kept_address(body):
                out.append(run)
            else:
                out.append(IP_TOKEN + run[len(body):])
                if zone is not None:
                    pos = zone.end()
        elif "." in run:
            out.append(_V4.sub(_redact_v4, run))
        else:
            out.append(run)
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class MachineNames:
    """The names of this machine and its user that a log line must not show."""

    hostnames: tuple[str, ...]
    """``socket.gethostname()`` and ``socket.getfqdn()``, those that could be learnt."""
    usernames: tuple[str, ...]
    """The login name and, on POSIX, the full name from the passwd entry."""
    home: str | None
    """The user's home directory; None if it cannot be found."""


def read_machine_names() -> MachineNames:
    """Look up this machine's host names, its user's names and home directory now (getfqdn()
    may wait for DNS: `Redactor.for_this_machine` does it once per process)."""
    hosts: list[str] = []
    for lookup in (socket.gethostname, socket.getfqdn):
        try:
            hosts.append(lookup())
        except Exception:  # noqa: BLE001 - a name we cannot learn is one we need not hide
            pass
    users: list[str] = []
    try:
        import getpass

        users.append(getpass.getuser())
    except Exception:  # noqa: BLE001
        pass
    try:
        import pwd

        gecos = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0].strip()
        users.append(gecos)  # the full name, e.g. "Jane Doe"
    except Exception:  # noqa: BLE001 - not POSIX, or no passwd entry
        pass
    try:
        home: str | None = str(Path.home())
    except Exception:  # noqa: BLE001
        home = None
    return MachineNames(hostnames=tuple(hosts), usernames=tuple(users), home=home)


@functools.lru_cache(maxsize=1)
def _names_read_once() -> MachineNames:
    return read_machine_names()


class Redactor:
    """Hides IP addresses, this machine's host names, the user's name and home directory.

    Immutable apart from one thing: when built by `for_this_machine`, it re-reads
    ``socket.gethostname()`` at most once a minute, because laptops rename themselves from
    DHCP. Safe to share between threads.
    """

    def __init__(self, *, hostnames: Iterable[str] = (), usernames: Iterable[str] = (),
                 home: str | None = None, watch_hostname: bool = False) -> None:
        self._hosts: set[str] = set()
        self._users: set[str] = set()
        self._names: tuple[re.Pattern[str], dict[str, str]] | None = None
        self._home = self._home_pattern(home)
        self._watch_hostname = watch_hostname
        self._next_hostname_check = 0.0
        self._add_names(hostnames, usernames)

    @classmethod
    def for_this_machine(cls, names: MachineNames | None = None) -> Redactor:
        """A redactor for `names` (None: this machine's, read once per process) that also
        watches for a new host name."""
        names = names or _names_read_once()
        return cls(hostnames=names.hostnames, usernames=names.usernames, home=names.home,
                   watch_hostname=True)

    @staticmethod
    def _home_pattern(home: str | None) -> re.Pattern[str] | None:
        if not home or len(home.strip("/\\")) < 2:
            return None  # "/" or "C:\" as home would turn every path into "~"
        variants = {home, home.replace("\\", "/")}
        alternation = "|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True))
        return re.compile(f"(?:{alternation})(?!\\w)", re.IGNORECASE)

    def _add_names(self, hostnames: Iterable[str], usernames: Iterable[str]) -> None:
        for host in hostnames:
            host = host.strip().rstrip(".")
            for name in (host, host.split(".")[0]):
                if (len(name) >= 2 and name.lower() not in _GENERIC_HOSTS
                        and not name.isdigit() and not _is_ip_literal(name)):
                    self._hosts.add(name.lower())
        for user in usernames:
            user = user.strip()
            if len(user) >= 2 and user.lower() not in _GENERIC_USERS:
                self._users.add(user.lower())
        tokens = {name: USER_TOKEN for name in self._users}
        tokens.update({name: HOST_TOKEN for name in self._hosts})  # a name in both: host
        if not tokens:
            self._names = None
            return
        alternation = "|".join(re.escape(n) for n in sorted(tokens, key=len, reverse=True))
        pattern = re.compile(f"(?<!\\w)(?:{alternation})(?!\\w)", re.IGNORECASE)
        self._names = (pattern, tokens)  # one assignment: readers see old or new, never half

    def _recheck_hostname(self) -> None:
        now = time.monotonic()
        if now < self._next_hostname_check:
            return
        self._next_hostname_check = now + _HOSTNAME_RECHECK_S
        try:
            host = socket.gethostname()
        except OSError:
            return
        if host and host.lower() not in self._hosts:
            self._add_names([host], [])

    def redact(self, text: str) -> str:
        if self._watch_hostname:
            self._recheck_hostname()
        if self._home is not None:
            text = self._home.sub("~", text)
        text = self._redact_names(text)  # first: a name may contain something like an address
        text = redact_addresses(text)
        return self._redact_names(text)  # again: a name glued to an address is a word now

    def _redact_names(self, text: str) -> str:
        names = self._names
        if names is None:
            return text
        pattern, tokens = names
        return pattern.sub(lambda m: tokens.get(m.group().lower(), HOST_TOKEN), text)


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return False
    return True

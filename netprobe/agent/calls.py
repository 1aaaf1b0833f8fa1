"""Calls noticed by themselves, the psutil side: what the sockets and processes say, read only
when the traffic already looks like a call (`core.calls.CallDetector.wants_evidence`), at most
every 30 s. The interface counters themselves come from the passive sampler (`passive.py`),
which reads them once a second anyway, so watching for calls costs nothing more while idle.

What is looked at: UDP sockets held by a process other than the agent and its children (WebRTC
media is UDP), leaving out the ones every machine has (DNS, mDNS, SSDP, LLMNR, NTP, DHCP,
WS-Discovery: ports below 1024 and a few well-known ones), and whether a known conferencing
program runs (or a browser holds such a UDP socket). A user who is not root sees other users'
sockets without their process (Linux): they still count as "another process". Where the
socket table cannot be read at all (macOS without root: `AccessDenied`), only the program
names are used and the traffic decides (`Evidence.visible` False).
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from netprobe.core.calls import Evidence

#: Programs that hold calls (lower-case process names, or their start, as the OS reports them).
CONFERENCING = ("zoom", "teams", "ms-teams", "msteams", "webex", "ciscowebex", "atmgr",
                "skype", "skypeforlinux", "slack", "discord", "facetime", "gotomeeting",
                "jitsi", "whereby", "signal", "whatsapp", "bluejeans")
#: Browsers: a call in a web page (Doxy.me, Meet, Teams on the web) counts only when the
#: browser holds a UDP socket.
BROWSERS = ("chrome", "chromium", "firefox", "msedge", "microsoft edge", "safari", "brave",
            "opera", "vivaldi", "webkit")
#: Local UDP ports every machine has open that are not media.
SERVICE_PORTS = frozenset({1900, 3702, 5353, 5355})
#: Remote UDP ports of short lookups (DNS, NTP), not media.
LOOKUP_PORTS = frozenset({53, 123})


def _named(name: str, known: tuple[str, ...]) -> bool:
    low = name.lower()
    return any(low.startswith(k) for k in known)


def own_pids() -> set[int]:
    """The agent and its children (its checks and monitoring stream): never a call."""
    me = psutil.Process(os.getpid())
    try:
        return {me.pid, *(c.pid for c in me.children(recursive=True))}
    except psutil.Error:
        return {me.pid}


def _media_socket(conn: Any) -> bool:
    port = conn.laddr.port if conn.laddr else 0
    if port < 1024 or port in SERVICE_PORTS:
        return False
    return not (conn.raddr and conn.raddr.port in LOOKUP_PORTS)


def scan() -> Evidence:
    """One look at the sockets and processes (a few milliseconds; never while idle unless the
    traffic looks like a call). Nothing readable: `Evidence(visible=False)`."""
    try:
        return _scan()
    except (psutil.Error, OSError):
        return Evidence(visible=False)


def _scan() -> Evidence:
    mine = own_pids()
    visible, udp = True, False
    holders: set[int] = set()
    try:
        for conn in psutil.net_connections(kind="udp"):
            if conn.pid in mine or not _media_socket(conn):
                continue
            udp = True
            if conn.pid is not None:
                holders.add(conn.pid)
    except (psutil.AccessDenied, PermissionError, NotImplementedError):
        visible = False
    found: set[str] = set()
    for proc in psutil.process_iter(["name"]):
        name = proc.info.get("name") or ""
        if proc.pid in mine or not name:
            continue
        if _named(name, CONFERENCING) or (proc.pid in holders and _named(name, BROWSERS)):
            found.add(name)
    return Evidence(visible=visible, udp=udp, conferencing=tuple(sorted(found)))

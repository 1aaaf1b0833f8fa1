"""The sandbox settings both netprobe units share (the agent's, netprobe/service/systemd.py,
and the reflector's, netprobe/service/reflector_unit.py). Pure: lists of (key, value)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

#: Seccomp-based settings: they work in user managers too.
SECCOMP_SANDBOX: tuple[tuple[str, str], ...] = (
    ("NoNewPrivileges", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("SystemCallErrorNumber", "EPERM"),  # a blocked call fails, it does not kill the service
)


def under_home(path: str) -> bool:
    """Whether `path` is where ``ProtectHome=yes`` would hide it."""
    return path.startswith(("/home/", "/root/", "/run/user/")) or path == "/root"


def namespace_sandbox(paths: Iterable[PurePath | str | None],
                      version: int) -> list[tuple[str, str]]:
    """Namespace-based settings, for system units only (a user manager would need
    unprivileged user namespaces). `paths`: what the service runs or reads (the home
    directories stay readable if one is under them); `version`: the target's systemd (0:
    unknown), ``ProtectProc`` from 247."""
    needs_home = any(under_home(str(p)) for p in paths if p is not None)
    settings = [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only" if needs_home else "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("PrivateMounts", "yes"),
        ("RemoveIPC", "yes"),
    ]
    if version >= 247:
        settings.append(("ProtectProc", "invisible"))
    return settings

"""The edge: what `netprobe service` needs to know about this machine, gathered once into a
`Host` value that the backends read (they do not look at the OS themselves)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from netprobe.service.base import Host, Platform

_ENVIRON_KEYS = ("XDG_CONFIG_HOME", "ProgramData", "PROGRAMDATA", "LOCALAPPDATA", "USER",
                 "LOGNAME", "SUDO_USER", "USERNAME", "USERDOMAIN")
_TOOLS = ("systemctl", "launchctl", "schtasks")


def platform_of(os_name: str) -> Platform | None:
    """The service platform of a ``sys.platform`` value; None: none that netprobe supports."""
    if os_name.startswith("linux"):
        return "linux"
    if os_name == "darwin":
        return "darwin"
    if os_name in ("win32", "cygwin"):
        return "windows"
    return None


def this_host(environ: Mapping[str, str] | None = None) -> Host:
    """This machine, as the backends need to know it (`environ`: default ``os.environ``)."""
    env = os.environ if environ is None else environ
    try:
        home: Path | None = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    search_path = env.get("PATH", os.defpath)
    tools = {name: found for name in _TOOLS
             if (found := shutil.which(name, path=search_path)) is not None}
    return Host(platform=platform_of(sys.platform), local=True, os_name=sys.platform,
                home=home, root=Path("/"),
                environ={k: env[k] for k in _ENVIRON_KEYS if k in env},
                uid=os.getuid() if hasattr(os, "getuid") else None, admin=_is_admin(),
                executable=sys.executable, tools=tools,
                systemd_booted=Path("/run/systemd/system").is_dir())


def _is_admin() -> bool:
    if sys.platform == "win32":
        import ctypes

        try:
            return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined,unused-ignore]
        except (AttributeError, OSError):
            return False
    return os.geteuid() == 0  # type: ignore[attr-defined,unused-ignore]

"""What a service plan is made of (`Step`s: write this file, run this command) and what the
operations return (`InstallResult`, `UninstallResult`, `ServiceStatus`). Data only."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from netprobe import exitcodes

if TYPE_CHECKING:
    from netprobe.service.base import Platform, Scope, ServiceSpec

__all__ = ["Command", "InstallResult", "MakeDirs", "RemoveFile", "ServiceStatus", "Step",
           "UninstallResult", "WriteFile"]


@dataclass(frozen=True)
class Command:
    """A command the plan runs."""

    argv: tuple[str, ...]
    may_fail: bool = False
    """Failure is expected in some states (stopping what is not running) and is ignored."""

    def __str__(self) -> str:
        if self.argv[0] == "schtasks":
            return subprocess.list2cmdline(self.argv)
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WriteFile:
    path: PurePath
    data: bytes
    mode: int = 0o644

    def __str__(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True)
class MakeDirs:
    path: PurePath
    owner: str | None = None
    """Account that gets to own the directory (the service's user), None: leave as created."""

    def __str__(self) -> str:
        return f"create directory {self.path}" + (f" (owner {self.owner})" if self.owner else "")


@dataclass(frozen=True)
class RemoveFile:
    path: PurePath

    def __str__(self) -> str:
        return f"remove {self.path}"


Step = Command | WriteFile | MakeDirs | RemoveFile


@dataclass(frozen=True)
class InstallResult:
    """What `install` did, or with ``dry_run`` would do."""

    platform: Platform
    spec: ServiceSpec
    path: PurePath
    """The unit file, plist or task XML."""
    data: bytes
    """Its exact bytes."""
    text: str
    """Its text, for a person to read."""
    steps: tuple[Step, ...]
    """In order: directories, the file (unless it is already up to date), commands."""
    dry_run: bool
    replaced: bool = False
    """An installation with different settings was replaced (--force)."""
    up_to_date: bool = False
    """The same file was already installed: the service was only (re)enabled and started."""
    warnings: tuple[str, ...] = ()

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(s for s in self.steps if isinstance(s, Command))


@dataclass(frozen=True)
class UninstallResult:
    """What `uninstall` did, or with ``dry_run`` would do."""

    platform: Platform
    spec: ServiceSpec
    path: PurePath
    steps: tuple[Step, ...]
    dry_run: bool
    was_installed: bool | None
    """None: not looked at (a dry run for another machine)."""

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(s for s in self.steps if isinstance(s, Command))


@dataclass(frozen=True)
class ServiceStatus:
    """The service's state as its manager reports it."""

    platform: Platform
    name: str
    scope: Scope
    path: PurePath
    installed: bool
    running: bool | None
    """None: could not be found out (the message in `detail` says why)."""
    state: str
    """The manager's own word: ``active``/``failed`` (systemd), ``running``/``not loaded``
    (launchd), ``Running``/``Ready`` (Task Scheduler); ``not installed``; ``unknown``."""
    pid: int | None = None
    detail: str = ""
    logs: str = ""
    """How to read the agent's logs."""

    @property
    def exit_status(self) -> int:
        """``netprobe service status``'s exit status: 0 running, 3 not running (or unknown),
        4 not installed."""
        if not self.installed:
            return exitcodes.NOT_INSTALLED
        return exitcodes.OK if self.running else exitcodes.UNAVAILABLE

    def to_json(self) -> dict[str, Any]:
        return {"schema": "netprobe.service.manager-status/1", "platform": self.platform,
                "name": self.name, "scope": self.scope, "path": str(self.path),
                "installed": self.installed, "running": self.running, "state": self.state,
                "pid": self.pid, "detail": self.detail, "logs": self.logs}

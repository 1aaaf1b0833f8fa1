"""Run the netprobe agent as a background service: systemd, launchd or Windows Task Scheduler.

    netprobe service install --config /etc/netprobe/agent.toml        # system service (root)
    netprobe service install --user --config ~/netprobe/agent.toml    # starts at your login
    netprobe service status
    netprobe service uninstall
    netprobe service install --platform windows --python 'C:\\Python311\\pythonw.exe' \\
        --config 'C:\\ProgramData\\netprobe\\agent.toml' --output task.xml   # for another OS

The service is built in layers:

- `netprobe.service.base`: `ServiceSpec` (what to run), `Host` (the machine it is for, a
  value) and the `Backend` interface; `netprobe.service.plan`: the `Step`s and results;
- one backend per platform: `systemd`, `launchd`, `windows`, each with a pure half (render
  the file, its path, the plan) and an I/O half (install, uninstall, status);
- `netprobe.service.host.this_host`: this machine's facts, gathered once at the edge;
- here: `backend_for` and `install` / `uninstall` / `status` for a platform (default: this
  machine's); `netprobe.service.cli`: the ``netprobe service`` command.
"""

from __future__ import annotations

from netprobe.errors import ConfigError, NetprobeError
from netprobe.service import launchd, systemd, windows
from netprobe.service.base import PLATFORMS, Backend, Host, Platform, ServiceSpec
from netprobe.service.host import this_host
from netprobe.service.plan import InstallResult, ServiceStatus, UninstallResult

__all__ = ["backend_for", "install", "status", "target_host", "uninstall"]

_BACKENDS: dict[Platform, Backend] = {
    "linux": systemd.BACKEND, "darwin": launchd.BACKEND, "windows": windows.BACKEND,
}


def backend_for(platform: str) -> Backend:
    """The backend of `platform` (``linux``, ``darwin`` or ``windows``)."""
    if platform not in _BACKENDS:
        raise ConfigError(f"unknown platform {platform!r}; one of {', '.join(PLATFORMS)}")
    return _BACKENDS[platform]  # type: ignore[index]


def target_host(platform: str | None, here: Host | None = None) -> Host:
    """The machine a command is for: `here` (default: this one) if `platform` is None or its
    own, else another machine of that platform."""
    here = here if here is not None else this_host()
    target = platform or here.platform
    if target is None:
        raise NetprobeError(f"netprobe cannot install a service on {here.os_name}: use "
                            f"--platform to generate files for another OS")
    backend_for(target)  # a known platform
    return here if target == here.platform else Host.elsewhere(target)  # type: ignore[arg-type]


def install(spec: ServiceSpec, platform: str | None = None, dry_run: bool = False, *,
            force: bool = False, host: Host | None = None) -> InstallResult:
    """Install and start the service (see `Backend.install`)."""
    target = target_host(platform, host)
    return backend_for(target.platform or "").install(spec, target, dry_run=dry_run,
                                                      force=force)


def uninstall(spec: ServiceSpec, platform: str | None = None, dry_run: bool = False, *,
              host: Host | None = None) -> UninstallResult:
    """Stop and remove the service (see `Backend.uninstall`)."""
    target = target_host(platform, host)
    return backend_for(target.platform or "").uninstall(spec, target, dry_run=dry_run)


def status(spec: ServiceSpec, platform: str | None = None, *,
           host: Host | None = None) -> ServiceStatus:
    """Whether the service is installed and running (see `Backend.status`)."""
    target = target_host(platform, host)
    return backend_for(target.platform or "").status(spec, target)

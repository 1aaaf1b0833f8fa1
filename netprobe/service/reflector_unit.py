"""The reflector's systemd unit (``netprobe service install --reflector``): `netprobe serve` as a
hardened system service for a clinic's server. Pure: a `ServiceSpec` in, the unit's text out.

What it is for, setting by setting (docs/reflector.md, "As a systemd service"):

- a user of its own (``DynamicUser=yes``, or ``--run-as``), no capabilities at all (the
  default port 8765 needs none; ``--bind-low-port`` grants CAP_NET_BIND_SERVICE alone), no new
  privileges, a read-only system (``ProtectSystem=strict``), a private /tmp; it may write
  only its ``StateDirectory``, ``LogsDirectory`` and ``RuntimeDirectory``;
- the token secret handed over as a systemd credential (``LoadCredential``): systemd copies
  root's mode-0600 file to a place only the service's user can read, and the reflector is
  told where (``--token-secret-file ${CREDENTIALS_DIRECTORY}/token-secret``);
- stopping: SIGTERM, to the main process only (``KillMode=mixed``: it forwards the signal to
  its worker processes), starts the reflector's drain (checks finish within 15 s, monitoring
  clients are told to reconnect), so ``TimeoutStopSec`` (30 s) is well above it;
  ``systemctl reload`` sends SIGHUP (the reflector reloads its TLS certificate);
- ``LimitNOFILE=65536``: each session holds a UDP socket, its signalling a TCP one; hundreds
  of sessions need more than the usual soft limit of 1024;
- ``Restart=on-failure``, but not after exit status 2 (a bad configuration: a restart cannot
  fix the file).
"""

from __future__ import annotations

from netprobe.service.base import AGENT_CONFIG_EXIT, ServiceSpec
from netprobe.service.systemd_sandbox import SECCOMP_SANDBOX, namespace_sandbox
from netprobe.service.systemd_syntax import systemd_exec_line, systemd_word

__all__ = ["DRAIN_S", "LIMIT_NOFILE", "TIMEOUT_STOP_S", "TOKEN_CREDENTIAL",
           "render_reflector_unit"]

DRAIN_S = 15
"""How long the reflector lets running checks finish after SIGTERM."""
TIMEOUT_STOP_S = 30
"""systemd's wait for the reflector to stop before SIGKILL: above `DRAIN_S`."""
LIMIT_NOFILE = 65536
TOKEN_CREDENTIAL = "token-secret"
"""The credential's name: the reflector reads ``$CREDENTIALS_DIRECTORY/token-secret``."""


def render_reflector_unit(spec: ServiceSpec, *, systemd_version: int | None = None) -> str:
    """The unit file that runs `spec` (a checked ``role="reflector"`` spec) as a system
    service. `systemd_version` of the target enables the restart back-off (254) and
    ``ProtectProc`` (247); older versions warn about and ignore settings they do not know."""
    version = systemd_version or 0
    exec_start = systemd_exec_line(spec.command)
    if spec.token_secret is not None:
        # ${CREDENTIALS_DIRECTORY} is for systemd to expand: written as is, not escaped.
        exec_start += f" --token-secret-file ${{CREDENTIALS_DIRECTORY}}/{TOKEN_CREDENTIAL}"
    unit = [("Description", spec.description.replace("%", "%%")),
            ("Wants", "network-online.target"), ("After", "network-online.target"),
            ("StartLimitIntervalSec", "0")]
    service: list[tuple[str, str]] = [
        ("Type", "simple"),
        ("ExecStart", exec_start),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        # SIGTERM to the main process only: it drains and forwards it to its workers (a
        # second SIGTERM would stop a worker at once). What is left at the timeout: SIGKILL.
        ("KillMode", "mixed"),
        ("TimeoutStopSec", f"{TIMEOUT_STOP_S}s"),
        ("Restart", "on-failure"),
    ]
    if version >= 254:
        service += [("RestartSec", "2s"), ("RestartSteps", "5"), ("RestartMaxDelaySec", "1min")]
    else:
        service.append(("RestartSec", "5s"))
    service += [("RestartPreventExitStatus", str(AGENT_CONFIG_EXIT)),
                ("SyslogIdentifier", spec.name),
                ("LimitNOFILE", str(LIMIT_NOFILE))]
    env = {"PYTHONUNBUFFERED": "1", **dict(spec.environment)}
    service += [("Environment", systemd_word(f"{k}={v}", expand_env=False))
                for k, v in env.items()]
    if spec.working_dir is not None:
        service.append(("WorkingDirectory", str(spec.working_dir).replace("%", "%%")))
    service.append(("User", spec.user) if spec.user else ("DynamicUser", "yes"))
    if spec.token_secret is not None:
        service.append(("LoadCredential",
                        f"{TOKEN_CREDENTIAL}:{str(spec.token_secret).replace('%', '%%')}"))
    caps = "CAP_NET_BIND_SERVICE" if spec.bind_low_port else ""
    service += [
        ("StateDirectory", spec.name), ("StateDirectoryMode", "0750"),
        ("LogsDirectory", spec.name), ("LogsDirectoryMode", "0750"),
        ("RuntimeDirectory", spec.name), ("RuntimeDirectoryMode", "0750"),
        ("UMask", "0027"),
        ("CapabilityBoundingSet", caps),
        ("AmbientCapabilities", caps),
        *SECCOMP_SANDBOX,
        *namespace_sandbox((spec.command[0], spec.config, spec.working_dir), version),
    ]
    lines = [
        f"# {spec.name}: generated by `netprobe service install --reflector`; to change it,",
        "# edit the options and run the install again with --force (edits here are lost).",
    ]
    for section, items in (("Unit", unit), ("Service", service),
                           ("Install", [("WantedBy", "multi-user.target")])):
        lines += ["", f"[{section}]", *(f"{key}={value}" for key, value in items)]
    return "\n".join(lines) + "\n"

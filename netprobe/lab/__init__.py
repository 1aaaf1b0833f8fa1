"""The link lab: a userspace link emulator between two network namespaces.

The kernel here has no netem, so one asyncio process forwards packets between two TUN
devices, one in a client namespace and one in a server namespace, through a pure model of each
direction (delay, jitter, random and bursty loss, a rate-limited drop-tail bottleneck or a
mahimahi trace, outages, and phases that change all that mid-run). See ``docs/lab.md``.

Public API:

- `LinkLab`: ``async with LinkLab(profile) as lab`` sets the lab up and always tears it down;
- `run_command`: the blocking entry used by ``netprobe lab run``;
- `Profile`, `Phase`, `Expectation`, `load_profile`, `load_profiles`, `describe_profiles`;
- `LinkConfig`, `GilbertElliott`, `Link`, `LinkStats`, `LabStats`: the model and its counters;
- `check_lab_available`: why this machine cannot run the lab, or None;
- `LabError`, `LabUnavailable`.
"""

from netprobe.lab.errors import LabError, LabUnavailable
from netprobe.lab.forwarder import LabStats
from netprobe.lab.link import GilbertElliott, Link, LinkConfig, LinkStats
from netprobe.lab.linklab import ENV_CLIENT_ADDR, ENV_SERVER_ADDR, LinkLab, run_command
from netprobe.lab.netns import (
    CLIENT_ADDR,
    SERVER_ADDR,
    check_lab_available,
    remove_stale_namespaces,
)
from netprobe.lab.profiles import (
    Expectation,
    Phase,
    Profile,
    default_profiles_path,
    describe_profiles,
    load_profile,
    load_profiles,
)

__all__ = [
    "CLIENT_ADDR",
    "ENV_CLIENT_ADDR",
    "ENV_SERVER_ADDR",
    "SERVER_ADDR",
    "Expectation",
    "GilbertElliott",
    "LabError",
    "LabStats",
    "LabUnavailable",
    "Link",
    "LinkConfig",
    "LinkLab",
    "LinkStats",
    "Phase",
    "Profile",
    "check_lab_available",
    "default_profiles_path",
    "describe_profiles",
    "load_profile",
    "load_profiles",
    "remove_stale_namespaces",
    "run_command",
]

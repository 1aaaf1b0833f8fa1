"""Errors of the link lab, in netprobe's one exception tree."""

from netprobe.errors import NetprobeError


class LabError(NetprobeError):
    """The link lab could not be set up or run; the message says what failed."""


class LabUnavailable(LabError):
    """This machine cannot run the link lab (not root, no /dev/net/tun, no iproute2)."""

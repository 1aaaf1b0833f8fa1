"""One exception tree for netprobe.

Errors from aiortc, aiohttp and the operating system are translated into these at the
boundary (the adapters and the CLI), so a caller only ever has to catch `NetprobeError`.
"""


class NetprobeError(Exception):
    """Base class of every error netprobe raises on purpose."""


class ConfigError(NetprobeError):
    """A configuration file or option is invalid. The message names the file, key and reason."""


class ServerUnreachable(NetprobeError):
    """The reflector could not be reached or refused the probe (the message says which)."""


class ServerBusy(ServerUnreachable):
    """The reflector answered 503: it is at its limit of concurrent probe sessions."""


class ProtocolError(NetprobeError):
    """The peer sent something that does not follow the signalling or probe protocol."""


class ConnectFailed(NetprobeError):
    """The WebRTC connection to the reflector could not be established in time."""

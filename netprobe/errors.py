"""One exception tree for netprobe.

Errors from aiortc, aiohttp and the operating system are translated into these at the
boundary (the adapters and the CLI), so a caller only ever has to catch `NetprobeError`.
The link lab's errors (`netprobe.lab.errors.LabError`, `LabUnavailable`) are part of the tree.

    NetprobeError
    ├── ConfigError          a bad config file, option or flag (exit 2)
    ├── CannotListen         a server could not listen on its address
    ├── ServerUnreachable    the reflector could not be reached or refused the probe
    │   ├── ServerBusy       ... because it is at its limit of sessions (HTTP 503)
    │   ├── AccessDenied     ... because the access token is missing or wrong (HTTP 401/403)
    │   └── RateLimited      ... because this address made too many offers (HTTP 429)
    ├── ProtocolError        the peer broke the signalling or probe protocol
    ├── ConnectFailed        the WebRTC connection could not be established
    ├── AccessRefused        (netprobe.tokens) the reflector's side: an offer without the access
    │                        token it needs (carries the HTTP status and error code)
    └── LabError             (netprobe.lab.errors) the link lab could not be set up or run
        └── LabUnavailable   this machine cannot run the lab (exit 3)
"""


class NetprobeError(Exception):
    """Base class of every error netprobe raises on purpose."""


class ConfigError(NetprobeError):
    """A configuration file or option is invalid. The message names the file, key and reason."""


class CannotListen(NetprobeError):
    """A server (the reflector) could not listen on its address: the port is in use, the
    address is not this machine's, or the name does not resolve. The message says which."""


class ServerUnreachable(NetprobeError):
    """The reflector could not be reached or refused the probe (the message says which)."""


class ServerBusy(ServerUnreachable):
    """The reflector answered 503: it is at its limit of concurrent probe sessions."""


class AccessDenied(ServerUnreachable):
    """The reflector refused the offer's access token: `code` is `unauthorized` (HTTP 401: no
    token, or a bad, expired or unknown one) or `forbidden` (403: a token of the wrong scope,
    or a check token already used); the message is the reflector's reason."""

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(message, code)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


class RateLimited(ServerUnreachable):
    """The reflector answered 429: this address made too many offers, or holds too many
    sessions. `retry_after_s` is the reflector's Retry-After (bounded), or None."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message, retry_after_s)  # both in args: it crosses a process pickled
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return str(self.args[0])


class ProtocolError(NetprobeError):
    """The peer sent something that does not follow the signalling or probe protocol."""


class ConnectFailed(NetprobeError):
    """The WebRTC connection to the reflector could not be established in time."""

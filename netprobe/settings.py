"""The settings themselves: one frozen dataclass per section of `netprobe.toml` (documented in
`config/netprobe.toml`). Loading and checking them is `netprobe.config`'s job."""

from __future__ import annotations

from dataclasses import dataclass, field

from netprobe.core.classify import Thresholds
from netprobe.core.failover import server_list


@dataclass(frozen=True)
class IceServer:
    urls: str
    """A `stun:`, `turn:` or `turns:` URL: `scheme:host[:port][?transport=udp|tcp]` (checked at
    load, as aioice parses it: no `//`, no IPv6 literal, `turns:` is TCP only)."""
    username: str | None = None
    """TURN only (required there)."""
    credential: str | None = None
    """TURN only (required there)."""


@dataclass(frozen=True)
class ProbeSettings:
    max_duration_s: float = 15.0
    """Hard cap on a whole check, connection set-up included."""
    connect_timeout_s: float = 12.0
    """Longest wait for signalling and the WebRTC connection (within the hard cap)."""
    warmup_s: float = 0.5
    """Probes only, before the first ladder rung: the unloaded RTT and loss."""
    min_probe_s: float = 1.5
    """Least time probes run before a verdict may be called certain."""
    probe_interval_ms: float = 20.0
    """Probe spacing (50 per second by default: ~45 kbit/s with overhead)."""
    probe_size: int = 40
    """Probe payload size in bytes (at least the 30 bytes of a probe's fields)."""
    ladder_kbps: tuple[int, ...] = (300, 800, 1600, 3200)
    """Load rates tried in turn, each direction, kbit/s of wire bytes."""
    rung_duration_s: float = 0.6
    """How long each rung is sent."""
    rung_pps: float = 300.0
    """Target packets per second of a rung (sets the packet size, within 60-1200 bytes)."""
    pass_ratio: float = 0.85
    """A rung passes if it delivered at least this share of its rate (after random loss)."""
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers; empty means host candidates only (no outside host is contacted)."""


@dataclass(frozen=True)
class ReflectorSettings:
    host: str = "127.0.0.1"
    """Address to listen on; a clinic's public reflector sets 0.0.0.0 explicitly."""
    port: int = 8765
    max_sessions: int | None = None
    """Deprecated (use max_checks, max_monitors): when set, also caps both kinds together."""
    max_checks: int = 8
    """Concurrent pre-session checks; more get 503 `busy` (0: monitoring streams only)."""
    max_monitors: int = 200
    """Concurrent monitoring streams, counted apart from checks (0: checks only)."""
    max_checks_per_source: int = 4
    """Concurrent checks from one address (an IPv6 /64); more get 429 `too_many_sessions`."""
    max_monitors_per_source: int = 50
    """Concurrent monitoring streams from one address (a clinic's office behind its NAT)."""
    offers_per_minute: float = 60.0
    """Sustained offers per minute from one address; more get 429 `rate_limited` (0: off)."""
    offer_burst: int = 20
    """Offers one address may make at once before offers_per_minute applies."""
    connect_timeout_s: float = 10.0
    """An answered offer not connected by then is closed and its slot freed."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses/networks of reverse proxies whose X-Forwarded-For names the client."""
    public_address: str = ""
    """Behind a 1:1 NAT: the public IPv4/IPv6 address that answers name instead of this
    machine's own in their host candidates (ports kept); empty: no rewriting."""
    metrics_from: tuple[str, ...] = ("127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12",
                                     "192.168.0.0/16", "fc00::/7")
    """Addresses/networks allowed to read `GET /metrics` (others get 403)."""
    log_file: str = ""
    """`serve`'s JSON-lines log file; empty: JSON lines on standard error."""
    log_key_file: str = ""
    """File with the key for the client-address hash in logs; empty: a random key per process."""
    session_timeout_s: float = 30.0
    """Hard time limit of one probe session."""
    max_body_bytes: int = 65536
    """Largest accepted signalling request body."""
    token_secret_file: str = ""
    """File of `kid = secret` lines (mode 0600, secrets of 32+ bytes; the first signs, all
    verify): when set, offers need `Authorization: Bearer TOKEN` (docs/reflector.md)."""
    open: bool = False
    """Checks need no token (monitoring does); required beyond loopback without a secret."""
    monitor_timeout_s: float = 14400.0
    """Hard time limit of a monitoring session (an agent watching a therapy session)."""
    max_down_kbps: int = 3200
    """Fastest downlink rung a client may ask for (kbit/s); faster requests get this rate.
    Default: the default ladder's top rung. Also sets a session's downlink byte budget (10 s
    at this rate); the other media caps are constants (netprobe/core/responder.py)."""
    ice_servers: tuple[IceServer, ...] = ()
    workers: int = 0
    """Worker processes sharing the port (docs/reflector.md, "Workers"); 0: one per usable
    core (Linux; 1 elsewhere); 1: one process, no supervisor. Caps are split among them."""
    drain_timeout_s: float = 15.0
    """On SIGTERM, how long running checks may take to finish before everything is closed."""
    tls_cert_file: str = ""
    """PEM certificate chain to serve https directly (with tls_key_file; reloaded on SIGHUP)."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file; both or neither."""
    turn_urls: tuple[str, ...] = ()
    """TURN relays handed out to clients with a valid token, in the order they are tried:
    `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (TCP+TLS); with
    turn_secret_file, both or neither (docs/reflector.md, "TURN relay")."""
    turn_secret_file: str = ""
    """File holding coturn's `static-auth-secret` (one line, mode 0600): the reflector signs
    short-lived TURN REST API credentials with it (read at start and on SIGHUP)."""
    turn_ttl_s: float = 600.0
    """Lifetime of the TURN credentials handed out for a check (a monitoring stream's last
    monitor_timeout_s plus a margin)."""
    clinic: ClinicSettings | None = None
    """The `[clinic]` section (set by `load_settings`, never written under [reflector]): the
    contact handed to every client in the answer and at `GET /v1/clinic`."""


@dataclass(frozen=True)
class ClinicSettings:
    """The clinic's fallback contact (`[clinic]`): a reflector hands it to every client; a
    client's own `[clinic]` keys win over the reflector's, key by key (docs/check-format.md,
    "Fallback")."""

    name: str = ""
    """The clinic's name as a person knows it, e.g. "Riverside Clinic" (at most 80 characters)."""
    phone: str = ""
    """The number to call, e.g. "+44 20 7946 0000" (checked with `phonenumbers`); empty: none."""
    phone_region: str = ""
    """Country (ISO code, e.g. "GB") of a `phone` written without +country code."""
    hours: str = ""
    """Opening hours, e.g. "Mon-Fri 09:00-17:00, Sat 10:00-13:00" (days not named: closed)."""
    timezone: str = ""
    """IANA zone of `hours`, e.g. "Europe/London"; empty: this machine's local zone."""
    message: str = ""
    """A short note (at most 300 characters), e.g. where to get urgent help out of hours."""


@dataclass(frozen=True)
class PrivacySettings:
    log_addresses: bool = False
    """Include IP addresses and host names in logs and reports (off: patients' privacy)."""
    log_process_names: bool = False
    """Name the conferencing program in the `call_detected` log line (off: which programs a
    client uses is theirs)."""


@dataclass(frozen=True)
class AgentSettings:
    server: str | tuple[str, ...] = ""
    """Reflector URL(s) the agent checks against (required to run the agent): a string (URLs
    may be comma-separated) or a list of strings; several are tried in a shuffled order, and
    the monitoring stream moves between them (docs/reflector.md, "Failover and scale-out")."""
    api_host: str = "127.0.0.1"
    """The local API's address: loopback only (a non-loopback address is refused)."""
    api_port: int = 8766
    idle_interval_s: float = 600.0
    """Mean time between light checks while no session runs."""
    idle_jitter: float = 0.2
    """Each interval is drawn uniformly within ±this share, so machines do not probe in step."""
    monitor_probe_interval_ms: float = 50.0
    """Probe spacing while monitoring a session, near a line (20/s: ~20 kbit/s each way)."""
    monitor_calm_interval_ms: float = 100.0
    """Probe spacing while every window has been comfortable for 10 s (`core.probe_rate`);
    never faster than `monitor_probe_interval_ms` (equal: always at that rate)."""
    window_s: float = 5.0
    """Rolling window the monitoring verdict is taken over."""
    step_down_after: int = 3
    """Consecutive worse windows (one a second) before the recommendation steps down."""
    step_up_after_s: float = 20.0
    """Sustained better windows before a step up is tried (then confirmed by a check)."""
    cpu_limit_pct: float = 90.0
    """Processor use at which video is no longer recommended."""
    max_session_s: float = 14400.0
    """A session not stopped after this long was forgotten: monitoring stops (0: never)."""
    backoff_min_s: float = 5.0
    """First wait before retrying an unreachable reflector; doubles up to backoff_max_s."""
    backoff_max_s: float = 300.0
    stale_after_s: float = 1800.0
    """A status older than this is reported as `unknown`, never as a stale `video`."""
    log_file: str = ""
    """JSON-lines log path; empty: the platform's default log directory."""
    log_max_bytes: int = 5_000_000
    log_backups: int = 5
    api_token_file: str = ""
    """Where the local API's token is kept (mode 0600); empty: the platform's state directory."""
    token_file: str = ""
    """File with the access token (scope `monitor`) the agent sends the reflector; empty: none."""
    reflector_token_file: str = ""
    """Deprecated name of `token_file` (read when `token_file` is not set)."""
    cors_origins: tuple[str, ...] = ()
    """Web origins (e.g. "https://video.clinic.example") allowed to call the API."""
    notify: bool = True
    """A desktop notification when the recommendation changes during a session (false: none).
    docs/agent-api.md, "Desktop notices"."""
    detect_calls: str = "on"
    """`on`: notice a call by its traffic and monitor it as a session started through the API
    (`off`: only `POST /v1/session` starts one). docs/agent-api.md, "Calls noticed by
    themselves"."""
    interface: str = ""
    """The network interface watched (up or down, its traffic, calls); empty: the default
    route's."""

    @property
    def servers(self) -> tuple[str, ...]:
        """`server` as a list of URLs (split at commas, blanks and repeats dropped)."""
        return server_list(self.server)


@dataclass(frozen=True)
class Settings:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    reflector: ReflectorSettings = field(default_factory=ReflectorSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    clinic: ClinicSettings = field(default_factory=ClinicSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    access_token: str = field(default="", repr=False)
    """The reflector access token to send (`check --token/--link`, NETPROBE_TOKEN, `[agent]
    token_file`; never from the settings file itself); empty: none. Not in repr."""

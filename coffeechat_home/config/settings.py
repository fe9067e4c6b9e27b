"""The settings table: every setting, its type and its default.

Every setting has a default, so an empty file (or none) is a valid config;
the sections are dataclasses and ``Config`` holds one of each. A new
setting is a field here, its check (if any) in validation.py and its line
in the file ``init`` writes (template.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

class ConfigError(Exception):
    """A configuration problem, reported to the user as one line."""


# Listening on every address: no address another instance can reach.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def split_host_port(value: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address ->
    (host, port), port 0 when none is given. ValueError for anything else,
    and for a wildcard (0.0.0.0, ::), which no other instance can reach."""
    v = value.strip()
    if v.startswith("["):
        host, closed, rest = v[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("expected [address] or [address]:port")
        port_text = rest[1:]
    elif v.count(":") == 1:
        host, port_text = v.split(":")
    else:
        host, port_text = v, ""
    if not host or any(c.isspace() for c in host):
        raise ValueError("no host")
    if host in _WILDCARD_HOSTS:
        raise ValueError("a wildcard address: give one the other instances reach")
    if port_text and not (port_text.isdigit() and int(port_text) < 65536):
        raise ValueError(f"bad port {port_text!r}")
    return host, int(port_text or 0)


@dataclass
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 8008
    enabled: bool = True
    tls_certificate_path: str = ""
    tls_private_key_path: str = ""


@dataclass
class RegistrationConfig:
    # "open", "token" or "closed"
    mode: str = "closed"
    # Tokens accepted (any number of times) for m.login.registration_token
    # when mode = "token"; admins may also make tokens with limited uses and
    # an expiry through the admin API.
    tokens: list[str] = field(default_factory=list)


@dataclass
class DatabaseConfig:
    # Any PostgreSQL-wire URL (PostgreSQL or CockroachDB). Empty: use the
    # COCKROACH_* variables, or else an embedded PostgreSQL in data_dir.
    url: str = ""
    pool_min_size: int = 2
    pool_max_size: int = 20
    # Concurrent sends to different rooms share one transaction and commit
    # (storage/group_commit.py); false: one transaction per send.
    group_commit: bool = True
    # Transactions of sends open at once per instance: lone sends go side
    # by side; a shared one only with no other shared one open, and while
    # it is, later sends wait for the next one (storage/group_commit.py).
    group_commit_transactions: int = 2
    # CockroachDB CA certificate (verify-full) when the URL is built from
    # COCKROACH_* variables; kept here so `serve` can report it.
    ca_cert_path: str = ""


@dataclass
class LimitsConfig:
    max_request_body_bytes: int = 1_048_576
    # Token buckets per client address, for login and registration.
    login_per_second: float = 1.0
    login_burst: int = 10
    register_per_second: float = 0.5
    register_burst: int = 5


@dataclass
class SecurityConfig:
    # scrypt cost (N). 2**15 takes ~50 ms per hash on one core.
    password_scrypt_n: int = 32768
    # Password hashes computed at once (each takes 128 * N bytes, 32 MiB at
    # the default N); more wait in a queue. 0: one per CPU core.
    password_hash_concurrency: int = 0


@dataclass
class PresenceConfig:
    # Off: PUT /presence is accepted and ignored, everyone reads as offline.
    enabled: bool = True


@dataclass
class UserDirectoryConfig:
    # Search every local user, not only those sharing a room with the
    # searcher or joined to public rooms (Synapse's default is off too).
    search_all_users: bool = False


@dataclass
class MediaConfig:
    # Where file bodies live, by content hash; default <data_dir>/media.
    # Instances on several machines must share this folder (a network mount).
    store_path: str = ""
    # Largest upload accepted (also served as m.upload.size).
    max_upload_bytes: int = 50 * 1024 * 1024
    # Bytes one user may have stored in all; 0: no quota.
    user_quota_bytes: int = 0
    # The legacy unauthenticated /_matrix/media/v3/download|thumbnail serve
    # only media created before this time (ms since the epoch); 0: none.
    unauthenticated_cutoff_ts: int = 0
    # An mxc:// URI from /media/v1/create must be uploaded within this time.
    unused_expiry_ms: int = 24 * 3600 * 1000
    # Created-but-not-uploaded URIs a user may hold at once.
    max_pending_uploads: int = 10
    # Images with more pixels than this are never decoded (thumbnails).
    max_image_pixels: int = 32_000_000
    # Thumbnails generated at once (CPU-bound work off the event loop).
    thumbnail_concurrency: int = 2
    # Largest file fetched from another server; 0: max_upload_bytes.
    max_remote_bytes: int = 0
    # Longest one fetch of another server's file may take, in seconds.
    remote_fetch_timeout_s: float = 300.0


@dataclass
class MetricsConfig:
    # Prometheus metrics. Off by default. On the client listener at `path`
    # unless `separate_listener`, then on host:port (loopback by default).
    enabled: bool = False
    path: str = "/metrics"
    separate_listener: bool = False
    host: str = "127.0.0.1"
    port: int = 9092
    # Each /sync response carries X-Coffeechat-Timing: when the notifier
    # was poked, woke it, and the response was built (monotonic clock in
    # whole microseconds, for bench/bench_fanout.py's wake-up timeline).
    # Off by default.
    sync_timing: bool = False


@dataclass
class FederationConfig:
    # Outbound federation refuses private, loopback, link-local and other
    # non-public addresses unless listed here (CIDR ranges, e.g.
    # "127.0.0.0/8" for servers on one machine in tests).
    allow_private_addresses: list[str] = field(default_factory=list)
    # Verify other servers' TLS certificates (false only for tests with
    # self-signed certificates).
    verify_peer_certificates: bool = True
    # Notary servers asked for a server's keys when that server cannot be
    # reached itself (server names); empty: keys only from the server.
    trusted_key_servers: list[str] = field(default_factory=list)
    # What /.well-known/matrix/server delegates to ("host:port"); empty:
    # the server name's host and the federation listener's port.
    well_known_server: str = ""
    # One outbound request: total seconds, and the largest JSON answer read.
    request_timeout_s: float = 30.0
    max_response_bytes: int = 10 * 1024 * 1024
    # Outbound sender: after a failed send to a server, wait this long
    # (milliseconds), doubling on each failure up to the maximum.
    destination_min_retry_ms: int = 10_000
    destination_max_retry_ms: int = 3_600_000
    # Receiving: the most missing prev_events asked for with one
    # get_missing_events (a longer gap is closed with the state at it, and
    # /messages backfills the hole when paging reaches it).
    missing_events_limit: int = 20
    # Join remote rooms with a partial state (send_join omit_members,
    # MSC3706): /join answers once the join is stored; the full member list
    # is fetched afterwards. Off: the whole state comes with the join.
    partial_state_joins: bool = True
    # The partial-state resync: wait after a failed attempt (ms), doubling.
    partial_state_retry_ms: int = 5_000


@dataclass
class WebConfig:
    # The built-in web chat page at / (and /_coffeechat/) and the admins'
    # room DAG viewer, on the client listener. Off unless set; on by
    # default in dev mode (dev_mode = true or `--dev`).
    enabled: bool = False


# One default for every command (serve, register-user, migrate, init ...),
# dev mode or not, so that they all find the same database and key.
DEFAULT_DATA_DIR = "./coffeechat-data"


@dataclass
class Config:
    server_name: str = "localhost:8008"
    data_dir: str = DEFAULT_DATA_DIR
    signing_key_path: str = ""  # default: <data_dir>/signing.key
    public_baseurl: str = ""  # default: http://<client host>:<port>/
    dev_mode: bool = False
    log_level: str = "INFO"
    # "auto": readable lines on a terminal, JSON lines otherwise; or
    # "text" / "json".
    log_format: str = "auto"
    # Requests slower than this are logged at WARNING whatever their kind
    # (a long-poll /sync counts from the end of its timeout).
    slow_request_ms: int = 1000
    # Several instances may serve one homeserver from one database; each
    # needs its own name (a restart under the same name reclaims at once
    # what the previous process of that name held).
    instance_name: str = "main"
    # Where the other instances wake this one after their writes (UDP;
    # "host" or "host:port", port 0 or none: any free one). Empty: the
    # client listener's host, unless it listens on every address (then set
    # it to an address the other instances reach, or they are seen only by
    # the poll below).
    instance_address: str = ""
    # How often an instance reads the stream position in case another
    # instance wrote without waking it (a lost wake-up, no address).
    instance_poll_ms: int = 100
    client_listener: ListenerConfig = field(default_factory=ListenerConfig)
    federation_listener: ListenerConfig = field(
        default_factory=lambda: ListenerConfig(host="127.0.0.1", port=8448, enabled=False)
    )
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    web: WebConfig = field(default_factory=WebConfig)
    # Where the config came from, for messages.
    source: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def signing_key_file(self) -> Path:
        if self.signing_key_path:
            return Path(self.signing_key_path).expanduser()
        return self.data_path / "signing.key"

    @property
    def media_path(self) -> Path:
        if self.media.store_path:
            return Path(self.media.store_path).expanduser()
        return self.data_path / "media"

    @property
    def client_base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        host = self.client_listener.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.client_listener.port}/"

    @property
    def instance_wake_address(self) -> tuple[str, int] | None:
        """(host, port) this instance takes wake-ups from the others on
        (port 0: any), or None (a client listener on every address and no
        ``instance_address``)."""
        if self.instance_address:
            return split_host_port(self.instance_address)
        host = self.client_listener.host
        if host in _WILDCARD_HOSTS:
            return None
        return host, 0

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database.url

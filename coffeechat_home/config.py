"""Configuration: one TOML file plus environment overrides.

Every setting has a default, so an empty file (or none) is a valid config.
Environment variables override the file: ``COFFEECHAT_<KEY>`` for top-level
keys and ``COFFEECHAT_<SECTION>_<KEY>`` for keys in a section (for example
``COFFEECHAT_DATABASE_URL`` or ``COFFEECHAT_CLIENT_LISTENER_PORT``). The
CockroachDB seed variables (``COCKROACH_HOSTNAME`` ...) build the database
URL when ``database.url`` is not set.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .protocol.identifiers import InvalidIdentifier, validate_server_name


class ConfigError(Exception):
    """A configuration problem, reported to the user as one line."""


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
    def uses_embedded_database(self) -> bool:
        return not self.database.url


_SECTIONS = {name for name, value in vars(Config()).items() if dataclasses.is_dataclass(value)}


def _coerce(value: str, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if isinstance(current, int):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(current, list):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _apply_mapping(target: Any, values: Mapping[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known or key == "source":
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _apply_mapping(current, value, f"{where} [{key}]")
            continue
        expected = type(current)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: {key} must be {expected.__name__}, got {type(value).__name__}"
            )
        setattr(target, key, value)


# COFFEECHAT_ variables that are not settings: the config file's name, the
# password for `register-user`, and where the test suite finds ../shared.
# the test suite's and benchmarks' variables (README) are not settings either
NOT_SETTINGS = frozenset({
    "COFFEECHAT_CONFIG", "COFFEECHAT_NEW_PASSWORD", "COFFEECHAT_SHARED",
    "COFFEECHAT_SYNAPSE_VENV", "COFFEECHAT_TEST_DATABASE_URL", "COFFEECHAT_TEST_CRASH_POINT",
})


def _apply_env(config: Config, env: Mapping[str, str]) -> None:
    prefix = "COFFEECHAT_"
    for name, raw in env.items():
        if not name.startswith(prefix) or name in NOT_SETTINGS:
            continue
        rest = name[len(prefix):].lower()
        target: Any = config
        key = rest
        for section in sorted(_SECTIONS, key=len, reverse=True):
            if rest.startswith(section + "_"):
                target = getattr(config, section)
                key = rest[len(section) + 1:]
                break
        if not hasattr(target, key) or key == "source" or dataclasses.is_dataclass(getattr(target, key)):
            raise ConfigError(f"environment: {name} is not a known setting")
        setattr(target, key, _coerce(raw, getattr(target, key), name))


COCKROACH_VARIABLES = (
    "COCKROACH_USERNAME",
    "COCKROACH_PASSWORD",
    "COCKROACH_HOSTNAME",
    "COCKROACH_DATABASE",
    "COCKROACH_PORT",
    "COCKROACH_CA_CERT_PATH",
    "COCKROACH_CLIENT_CERT_PATH",
    "COCKROACH_CLIENT_KEY_PATH",
    "COCKROACH_CLUSTER",
)


def cockroach_url_from_env(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Build a database URL from the CockroachDB seed variables.

    ``COCKROACH_HOSTNAME`` may list several nodes, comma-separated, each
    optionally with its own port (``crdb1,crdb2:26258,[::1]``); they are
    tried in order when a connection is opened, so an instance survives the
    loss of any node but the last it lists. ``COCKROACH_CLIENT_CERT_PATH``
    and ``COCKROACH_CLIENT_KEY_PATH`` log in with a client certificate.

    Returns (url, ca_cert_path) or None when none of them is set.
    """
    if not any(env.get(k) for k in COCKROACH_VARIABLES):
        return None
    port_text = env.get("COCKROACH_PORT", "26257") or "26257"
    port = _port(port_text, "COCKROACH_PORT")
    hosts = [h.strip() for h in env.get("COCKROACH_HOSTNAME", "").split(",") if h.strip()]
    if not hosts:
        raise ConfigError("COCKROACH_* variables are set but COCKROACH_HOSTNAME is missing")
    netloc_hosts = ",".join(_host_port(h, port) for h in hosts)
    user = env.get("COCKROACH_USERNAME", "root") or "root"
    password = env.get("COCKROACH_PASSWORD", "")
    database = env.get("COCKROACH_DATABASE", "defaultdb") or "defaultdb"
    auth = urllib.parse.quote(user, safe="")
    if password:
        auth += ":" + urllib.parse.quote(password, safe="")
    query: dict[str, str] = {}
    ca = env.get("COCKROACH_CA_CERT_PATH", "")
    if ca:
        _require_file(ca, "COCKROACH_CA_CERT_PATH")
        query["sslmode"] = "verify-full"
        query["sslrootcert"] = ca
    cert = env.get("COCKROACH_CLIENT_CERT_PATH", "")
    key = env.get("COCKROACH_CLIENT_KEY_PATH", "")
    if bool(cert) != bool(key):
        raise ConfigError("COCKROACH_CLIENT_CERT_PATH and COCKROACH_CLIENT_KEY_PATH go together: set both or neither")
    if cert:
        _require_file(cert, "COCKROACH_CLIENT_CERT_PATH")
        _require_file(key, "COCKROACH_CLIENT_KEY_PATH")
        query.setdefault("sslmode", "require")
        query["sslcert"] = cert
        query["sslkey"] = key
    cluster = env.get("COCKROACH_CLUSTER", "")
    if cluster:
        query["options"] = f"--cluster={cluster}"
    url = f"postgresql://{auth}@{netloc_hosts}/{urllib.parse.quote(database, safe='')}"
    if query:
        url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return url, ca


def _port(text: str, name: str) -> int:
    try:
        port = int(text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {text!r}") from None
    return port


def _host_port(item: str, default_port: int) -> str:
    """'host', 'host:port', '[v6]', '[v6]:port' or a bare IPv6 address."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ConfigError(f"COCKROACH_HOSTNAME: cannot read {item!r}")
        port = _port(rest[1:], "COCKROACH_HOSTNAME port") if rest else default_port
        return f"[{host}]:{port}"
    if item.count(":") == 1:
        host, _, port_text = item.partition(":")
        if not host:
            raise ConfigError(f"COCKROACH_HOSTNAME: cannot read {item!r}")
        return f"{host}:{_port(port_text, 'COCKROACH_HOSTNAME port')}"
    if ":" in item:  # a bare IPv6 address
        return f"[{item}]:{default_port}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", item):
        raise ConfigError(f"COCKROACH_HOSTNAME: {item!r} is not a host name")
    return f"{item}:{default_port}"


def _require_file(path: str, name: str) -> None:
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{name}: no such file {path!r}")


def validate(config: Config) -> None:
    try:
        validate_server_name(config.server_name)
    except InvalidIdentifier as e:
        raise ConfigError(f"server_name {config.server_name!r} is invalid: {e}") from None
    if config.registration.mode not in ("open", "token", "closed"):
        raise ConfigError(
            f"registration.mode must be 'open', 'token' or 'closed', got {config.registration.mode!r}"
        )
    if config.log_format not in ("auto", "text", "json"):
        raise ConfigError(f"log_format must be 'auto', 'text' or 'json', got {config.log_format!r}")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}")
    if not 0 <= config.metrics.port < 65536:
        raise ConfigError(f"metrics.port must be a port number, got {config.metrics.port}")
    if not config.metrics.path.startswith("/") or config.metrics.path.startswith("/_matrix/"):
        raise ConfigError(f"metrics.path must start with '/' and not be under /_matrix/, got {config.metrics.path!r}")
    for name in ("client_listener", "federation_listener"):
        listener: ListenerConfig = getattr(config, name)
        if not 0 <= listener.port < 65536:
            raise ConfigError(f"{name}.port must be a port number, got {listener.port}")
    fed = config.federation_listener
    if fed.enabled and bool(fed.tls_certificate_path) != bool(fed.tls_private_key_path):
        raise ConfigError("federation_listener needs both tls_certificate_path and tls_private_key_path")
    if fed.enabled and not fed.tls_certificate_path and not config.dev_mode:
        raise ConfigError(
            "federation_listener needs tls_certificate_path and tls_private_key_path (other servers speak "
            "only HTTPS to it); with --dev a self-signed certificate is made in data_dir"
        )
    for cidr in config.federation.allow_private_addresses:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"federation.allow_private_addresses: {cidr!r} is not a CIDR range") from None
    for name in config.federation.trusted_key_servers:
        try:
            validate_server_name(name)
        except InvalidIdentifier:
            raise ConfigError(f"federation.trusted_key_servers: {name!r} is not a server name") from None
    if config.federation.request_timeout_s <= 0 or config.federation.max_response_bytes < 1024:
        raise ConfigError("federation.request_timeout_s must be positive and max_response_bytes at least 1024")
    if not 0 < config.federation.destination_min_retry_ms <= config.federation.destination_max_retry_ms:
        raise ConfigError("federation.destination_min_retry_ms must be positive and at most destination_max_retry_ms")
    if not 1 <= config.federation.missing_events_limit <= 100:
        raise ConfigError("federation.missing_events_limit must be between 1 and 100")
    if config.federation.partial_state_retry_ms <= 0:
        raise ConfigError("federation.partial_state_retry_ms must be positive")
    if config.database.url and not config.database.url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database.url must be a postgresql:// URL")
    if config.limits.max_request_body_bytes < 1024:
        raise ConfigError("limits.max_request_body_bytes must be at least 1024")
    if config.security.password_scrypt_n < 2 or config.security.password_scrypt_n & (
        config.security.password_scrypt_n - 1
    ):
        raise ConfigError("security.password_scrypt_n must be a power of two")
    if config.security.password_hash_concurrency < 0:
        raise ConfigError("security.password_hash_concurrency must be 0 (one per core) or more")
    media = config.media
    if media.max_upload_bytes < 1:
        raise ConfigError("media.max_upload_bytes must be at least 1")
    for name in ("user_quota_bytes", "unauthenticated_cutoff_ts", "max_pending_uploads", "max_remote_bytes"):
        if getattr(media, name) < 0:
            raise ConfigError(f"media.{name} must be 0 or more")
    for name in ("unused_expiry_ms", "max_image_pixels", "thumbnail_concurrency", "remote_fetch_timeout_s"):
        if getattr(media, name) < 1:
            raise ConfigError(f"media.{name} must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", config.instance_name):
        raise ConfigError(
            f"instance_name must be 1-64 letters, digits, '.', '_' or '-', got {config.instance_name!r}"
        )


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any), apply environment overrides, validate."""
    env = os.environ if env is None else env
    config = Config()
    web_enabled_in_file = False
    if path is None and env.get("COFFEECHAT_CONFIG"):
        path = env["COFFEECHAT_CONFIG"]
    if path is not None:
        p = Path(path).expanduser()
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} not found (create one with `coffeechat-home init`)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
        _apply_mapping(config, data, str(p))
        web_section = data.get("web")
        web_enabled_in_file = isinstance(web_section, Mapping) and "enabled" in web_section
        config.source = str(p)
        # Relative data_dir is relative to the config file's folder.
        if not Path(config.data_dir).expanduser().is_absolute():
            config.data_dir = str((p.parent / config.data_dir).resolve())
        store = config.media.store_path
        if store and not Path(store).expanduser().is_absolute():
            config.media.store_path = str((p.parent / store).resolve())
    _apply_env(config, env)
    if not config.database.url:
        built = cockroach_url_from_env(env)
        if built is not None:
            config.database.url, config.database.ca_cert_path = built
    if config.dev_mode and config.registration.mode == "closed" and "COFFEECHAT_REGISTRATION_MODE" not in env:
        config.registration.mode = "open"
    if config.dev_mode and not web_enabled_in_file and "COFFEECHAT_WEB_ENABLED" not in env:
        config.web.enabled = True
    validate(config)
    return config


CONFIG_TEMPLATE = """\
# coffeechat-home configuration. Every setting is optional; the values
# shown are the defaults. Environment variables override this file:
# COFFEECHAT_<KEY> or COFFEECHAT_<SECTION>_<KEY>, e.g. COFFEECHAT_DATABASE_URL.

# The name users and other servers know this homeserver by. It appears in
# every user id (@alice:{server_name}) and cannot change later.
server_name = "{server_name}"

# Where the embedded database, signing key and media live (relative paths
# are relative to this file). Without a config file every command uses
# ./coffeechat-data in the current folder.
data_dir = "{data_dir}"

# The server's ed25519 signing key; default <data_dir>/signing.key.
# signing_key_path = ""

# The URL clients reach this server at, served in /.well-known/matrix/client.
# public_baseurl = "https://matrix.example.org/"

# Development mode: opens registration unless registration.mode is set.
dev_mode = {dev_mode}

# Several instances may share one database and serve this homeserver; give
# each its own name (`serve --instance-name` sets it too).
instance_name = "main"

log_level = "INFO"
# "auto" (readable lines on a terminal, JSON lines otherwise), "text" or "json".
log_format = "auto"
# Requests slower than this (ms) are always logged, at WARNING.
slow_request_ms = 1000

[client_listener]
host = "127.0.0.1"
port = 8008

[federation_listener]
enabled = false
host = "127.0.0.1"
port = 8448
# Required when enabled (other servers speak only HTTPS); with --dev and
# none set, a self-signed certificate is made in data_dir once.
# tls_certificate_path = "/path/to/fullchain.pem"
# tls_private_key_path = "/path/to/privkey.pem"

[federation]
# Outbound federation never connects to private, loopback or link-local
# addresses unless their range is listed (tests on one machine: "127.0.0.0/8").
allow_private_addresses = []
# Verify other servers' TLS certificates (false only for tests).
verify_peer_certificates = true
# Servers asked for another server's keys when it cannot be reached itself.
trusted_key_servers = []
# What /.well-known/matrix/server names ("host:port"); empty: the server
# name's host with the federation listener's port.
well_known_server = ""
request_timeout_s = 30.0
max_response_bytes = 10485760
# Outbound sender: wait after a failed send (ms), doubling up to the maximum.
destination_min_retry_ms = 10000
destination_max_retry_ms = 3600000
# Receiving: most missing events asked for at once (get_missing_events).
missing_events_limit = 20
# Join remote rooms with a partial state (the member list comes afterwards).
partial_state_joins = true
partial_state_retry_ms = 5000

[registration]
# "open", "token" (one of `tokens`, or one made with the admin API) or "closed".
mode = "{registration_mode}"
# tokens = ["a-long-random-string"]

[database]
# Any PostgreSQL-wire URL: PostgreSQL or CockroachDB, e.g.
# url = "postgresql://user:pass@host:26257/coffeechat?sslmode=verify-full&sslrootcert=/ca.crt"
# Empty: use COCKROACH_HOSTNAME, COCKROACH_PORT, COCKROACH_USERNAME,
# COCKROACH_PASSWORD, COCKROACH_DATABASE, COCKROACH_CA_CERT_PATH,
# COCKROACH_CLIENT_CERT_PATH, COCKROACH_CLIENT_KEY_PATH and
# COCKROACH_CLUSTER if set, else an embedded PostgreSQL in data_dir.
# Several hosts: postgresql://user@crdb1:26257,crdb2:26257,crdb3:26257/db
# (tried in order), or COCKROACH_HOSTNAME=crdb1,crdb2,crdb3.
# A client certificate: ...&sslcert=/client.crt&sslkey=/client.key
url = ""
pool_min_size = 2
pool_max_size = 20
# concurrent sends to different rooms share one transaction and commit
group_commit = true

[limits]
max_request_body_bytes = 1048576
login_per_second = 1.0
login_burst = 10
register_per_second = 0.5
register_burst = 5

[security]
# scrypt cost for password hashes (a power of two).
password_scrypt_n = 32768
# Hashes computed at once (32 MiB each at the default cost); 0 = one per core.
password_hash_concurrency = 0

[presence]
# Off: presence updates are accepted and ignored; everyone appears offline.
enabled = true

[user_directory]
# Search all local users, not only those sharing a room with the searcher
# or joined to public rooms.
search_all_users = false

[media]
# File bodies by content hash; empty: <data_dir>/media. Instances on
# several machines must share this folder.
store_path = ""
# Largest upload (bytes); clients read it as m.upload.size.
max_upload_bytes = 52428800
# Bytes each user may store in all; 0 = no quota.
user_quota_bytes = 0
# Unauthenticated /_matrix/media/v3/download|thumbnail serve only media
# created before this time (ms since the epoch); 0 = none (the spec's freeze).
unauthenticated_cutoff_ts = 0
# /media/v1/create: time to upload (ms) and pending URIs per user.
unused_expiry_ms = 86400000
max_pending_uploads = 10
# Images larger than this many pixels are never decoded for thumbnails.
max_image_pixels = 32000000
thumbnail_concurrency = 2
# Other servers' files (fetched over federation, cached): largest size
# (bytes; 0 = max_upload_bytes) and the longest one fetch may take (s).
max_remote_bytes = 0
remote_fetch_timeout_s = 300.0

[metrics]
# Prometheus metrics (requests by route and status, latency, events
# persisted, sync wake-ups, database pool, password-hash queue). Off by
# default. Served at `path` on the client listener (public there!), or
# with separate_listener = true on host:port only.
enabled = false
path = "/metrics"
separate_listener = false
host = "127.0.0.1"
port = 9092
# X-Coffeechat-Timing on /sync responses (monotonic timestamps of the
# wake-up path, for the fan-out benchmark).
sync_timing = false

[web]
# The built-in web chat page at / and the admins' room DAG viewer at
# /_coffeechat/admin/rooms/<room id>/dag. Unset: on in dev mode, off
# otherwise.
# enabled = true
"""

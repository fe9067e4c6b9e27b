"""Checks on a loaded config: every problem is one ConfigError line."""

from __future__ import annotations

import ipaddress
import re

from ..protocol.identifiers import InvalidIdentifier, validate_server_name
from .settings import Config, ConfigError, ListenerConfig, split_host_port


def validate(config: Config) -> None:
    """The first problem found, as a ConfigError naming the setting."""
    _check_basics(config)
    _check_listeners(config)
    _check_federation(config)
    _check_storage(config)
    _check_media(config)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", config.instance_name):
        raise ConfigError(
            f"instance_name must be 1-64 letters, digits, '.', '_' or '-', got {config.instance_name!r}"
        )
    if not 10 <= config.instance_poll_ms <= 600_000:
        raise ConfigError(f"instance_poll_ms must be 10 to 600000, got {config.instance_poll_ms}")
    if config.instance_address:
        try:
            split_host_port(config.instance_address)
        except ValueError as e:
            raise ConfigError(f"instance_address {config.instance_address!r}: {e}") from None


def _check_basics(config: Config) -> None:
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


def _check_listeners(config: Config) -> None:
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


def _check_federation(config: Config) -> None:
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


def _check_storage(config: Config) -> None:
    """The database, request limits and password hashing."""
    if config.database.url and not config.database.url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database.url must be a postgresql:// URL")
    if not 1 <= config.database.group_commit_transactions <= 64:
        raise ConfigError("database.group_commit_transactions must be between 1 and 64")
    if config.limits.max_request_body_bytes < 1024:
        raise ConfigError("limits.max_request_body_bytes must be at least 1024")
    if config.security.password_scrypt_n < 2 or config.security.password_scrypt_n & (
        config.security.password_scrypt_n - 1
    ):
        raise ConfigError("security.password_scrypt_n must be a power of two")
    if config.security.password_hash_concurrency < 0:
        raise ConfigError("security.password_hash_concurrency must be 0 (one per core) or more")


def _check_media(config: Config) -> None:
    media = config.media
    if media.max_upload_bytes < 1:
        raise ConfigError("media.max_upload_bytes must be at least 1")
    for name in ("user_quota_bytes", "unauthenticated_cutoff_ts", "max_pending_uploads", "max_remote_bytes"):
        if getattr(media, name) < 0:
            raise ConfigError(f"media.{name} must be 0 or more")
    for name in ("unused_expiry_ms", "max_image_pixels", "thumbnail_concurrency", "remote_fetch_timeout_s"):
        if getattr(media, name) < 1:
            raise ConfigError(f"media.{name} must be at least 1")

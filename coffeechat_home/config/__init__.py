"""Configuration: one TOML file plus environment overrides.

Every setting has a default, so an empty file (or none) is a valid config.
Environment variables override the file: ``COFFEECHAT_<KEY>`` for top-level
keys and ``COFFEECHAT_<SECTION>_<KEY>`` for keys in a section (for example
``COFFEECHAT_DATABASE_URL`` or ``COFFEECHAT_CLIENT_LISTENER_PORT``). The
CockroachDB seed variables (``COCKROACH_HOSTNAME`` ...) build the database
URL when ``database.url`` is not set.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Mapping

from .parsing import COCKROACH_VARIABLES, NOT_SETTINGS, apply_env, apply_mapping, cockroach_url_from_env
from .settings import (
    DEFAULT_DATA_DIR, Config, ConfigError, DatabaseConfig, FederationConfig, LimitsConfig, ListenerConfig,
    MediaConfig, MetricsConfig, PresenceConfig, RegistrationConfig, SecurityConfig, UserDirectoryConfig, WebConfig,
)
from .template import CONFIG_TEMPLATE
from .validation import validate

__all__ = [
    "CONFIG_TEMPLATE", "COCKROACH_VARIABLES", "DEFAULT_DATA_DIR", "NOT_SETTINGS", "Config", "ConfigError",
    "DatabaseConfig", "FederationConfig", "LimitsConfig", "ListenerConfig", "MediaConfig", "MetricsConfig",
    "PresenceConfig", "RegistrationConfig", "SecurityConfig", "UserDirectoryConfig", "WebConfig",
    "cockroach_url_from_env", "load_config", "validate",
]


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
        apply_mapping(config, data, str(p))
        web_section = data.get("web")
        web_enabled_in_file = isinstance(web_section, Mapping) and "enabled" in web_section
        config.source = str(p)
        # Relative data_dir is relative to the config file's folder.
        if not Path(config.data_dir).expanduser().is_absolute():
            config.data_dir = str((p.parent / config.data_dir).resolve())
        store = config.media.store_path
        if store and not Path(store).expanduser().is_absolute():
            config.media.store_path = str((p.parent / store).resolve())
    apply_env(config, env)
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

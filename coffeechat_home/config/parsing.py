"""Reading settings: the config file's tables, the ``COFFEECHAT_*``
environment overrides, and the CockroachDB seed variables."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from .settings import Config, ConfigError

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


def apply_mapping(target: Any, values: Mapping[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known or key == "source":
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            apply_mapping(current, value, f"{where} [{key}]")
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


def apply_env(config: Config, env: Mapping[str, str]) -> None:
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

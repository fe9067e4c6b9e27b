"""Server discovery (spec, server-server API "Resolving server names"):
where to connect for a server name, and what to send as Host and SNI.

1. An IP literal, with or without a port: that address (port 8448 if none).
2. A host name with an explicit port: that host and port.
3. Otherwise ``https://<name>/.well-known/matrix/server`` (cached); its
   ``m.server`` delegates to another name, which is resolved by the same
   rules (IP literal, explicit port, then SRV and port 8448), without
   another ``.well-known`` step.
4. No delegation: the SRV record ``_matrix-fed._tcp.<name>``, when an SRV
   resolver (aiodns) is installed; then ``<name>:8448``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..protocol.identifiers import InvalidIdentifier, validate_server_name
from .addresses import is_ip_literal

log = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_TTL_S = 24 * 3600
WELL_KNOWN_MAX_TTL_S = 48 * 3600
WELL_KNOWN_FAILURE_TTL_S = 600
WELL_KNOWN_MAX_BYTES = 50 * 1024


@dataclass(frozen=True)
class Route:
    """Connect to ``host``:``port`` (the SRV target ``connect_host`` when
    set); TLS names ``host``; the Host header is ``host_header``."""

    host: str
    port: int
    host_header: str
    connect_host: str | None = None


def split_host_port(name: str) -> tuple[str, int | None]:
    """``host[:port]`` / ``[v6][:port]`` -> (host without brackets, port)."""
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return name, None


def _direct_route(name: str) -> Route | None:
    """Steps 1 and 2: a route without any lookup, or None."""
    host, port = split_host_port(name)
    if is_ip_literal(host):
        return Route(host, port or DEFAULT_PORT, name)
    if port is not None:
        return Route(host, port, name)
    return None


# (name) -> (status, body bytes or None, max-age seconds or None); raises OSError-like errors when unreachable
WellKnownFetcher = Callable[[str], Awaitable[tuple[int, bytes | None, int | None]]]
# (service name) -> [(priority, weight, port, target)]
SrvLookup = Callable[[str], Awaitable[list[tuple[int, int, int, str]]]]


def parse_well_known(body: bytes) -> str | None:
    """The ``m.server`` of a well-known document, if valid."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = doc.get("m.server") if isinstance(doc, dict) else None
    if not isinstance(value, str):
        return None
    try:
        validate_server_name(value)
    except InvalidIdentifier:
        return None
    return value


_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


def max_age(cache_control: str | None) -> int | None:
    m = _MAX_AGE.search(cache_control or "")
    return int(m.group(1)) if m else None


class ServerResolver:
    def __init__(self, fetch_well_known: WellKnownFetcher, srv_lookup: SrvLookup | None) -> None:
        self.fetch_well_known = fetch_well_known
        self.srv_lookup = srv_lookup
        self._well_known: dict[str, tuple[float, str | None]] = {}
        self._inflight: dict[str, asyncio.Future[str | None]] = {}

    async def resolve(self, server_name: str) -> Route:
        route = _direct_route(server_name)
        if route is not None:
            return route
        delegated = await self.well_known(server_name)
        if delegated is not None:
            route = _direct_route(delegated)
            if route is not None:
                return route
            return await self._srv_or_default(delegated)
        return await self._srv_or_default(server_name)

    async def _srv_or_default(self, host: str) -> Route:
        if self.srv_lookup is not None:
            try:
                records = await self.srv_lookup(f"_matrix-fed._tcp.{host}")
            except Exception as e:  # no record, NXDOMAIN, resolver trouble: fall through
                log.debug("SRV lookup for %s: %s", host, e)
                records = []
            if records:
                _prio, _weight, port, target = sorted(records, key=lambda r: (r[0], -r[1]))[0]
                target = target.rstrip(".")
                if target:
                    return Route(host, port, host, connect_host=target)
        return Route(host, DEFAULT_PORT, host)

    async def well_known(self, name: str) -> str | None:
        """The delegated name from ``.well-known/matrix/server`` (cached)."""
        cached = self._well_known.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[name] = fut
        try:
            result, ttl = await self._fetch(name)
            self._well_known[name] = (time.monotonic() + ttl, result)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[name]

    async def _fetch(self, name: str) -> tuple[str | None, float]:
        try:
            status, body, age = await self.fetch_well_known(name)
        except Exception as e:
            log.debug("no .well-known/matrix/server for %s: %s", name, e)
            return None, WELL_KNOWN_FAILURE_TTL_S
        if status != 200 or body is None:
            return None, WELL_KNOWN_FAILURE_TTL_S
        delegated = parse_well_known(body)
        if delegated is None:
            return None, WELL_KNOWN_FAILURE_TTL_S
        ttl = WELL_KNOWN_TTL_S if age is None else min(max(age, 60), WELL_KNOWN_MAX_TTL_S)
        return delegated, ttl

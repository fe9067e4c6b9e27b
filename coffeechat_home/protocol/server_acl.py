"""Server ACLs (``m.room.server_acl``): which servers may take part in a
room, judged on the requesting server's name without its port, in the
spec's order: no ACL allows; an IP literal is denied when
``allow_ip_literals`` is false; a ``deny`` match denies; an ``allow`` match
allows; anything else is denied. Patterns are case-insensitive globs
(``*`` any run of characters, ``?`` one character)."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any, Mapping


def host_of(server_name: str) -> str:
    """The server name without its port (``[::1]:8448`` -> ``[::1]``)."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    return server_name.rsplit(":", 1)[0] if ":" in server_name else server_name


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + r"\Z", re.IGNORECASE | re.DOTALL)


def _matches(patterns: Any, host: str) -> bool:
    if not isinstance(patterns, list):
        return False
    return any(isinstance(p, str) and _glob(p).match(host) is not None for p in patterns)


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether the ACL (the event's content; None: no ACL) lets the server in."""
    if acl_content is None:
        return True
    host = host_of(server_name)
    allow_ip = acl_content.get("allow_ip_literals", True)
    if allow_ip is False and is_ip_literal(host):
        return False
    if _matches(acl_content.get("deny"), host):
        return False
    return _matches(acl_content.get("allow"), host)

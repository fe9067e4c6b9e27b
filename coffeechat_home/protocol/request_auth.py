"""Server-server request authentication: the ``Authorization: X-Matrix``
header (spec, server-server API "Request Authentication").

The origin signs the JSON object ``{"method", "uri", "origin",
"destination"[, "content"]}`` and sends the signature in the header
``X-Matrix origin="o",destination="d",key="ed25519:k",sig="..."``.
Pure functions: building and parsing the header and the signed object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .signing import SigningKey, key_id_of, sign_json

__all__ = ["XMatrixAuth", "BadAuthHeader", "request_json", "sign_request", "format_header", "parse_header"]


class BadAuthHeader(ValueError):
    """The Authorization header is not a well-formed X-Matrix header."""


@dataclass(frozen=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key_id: str
    signature: str


def request_json(method: str, uri: str, origin: str, destination: str, content: Any = None) -> dict[str, Any]:
    """The object whose signature authenticates a request."""
    obj: dict[str, Any] = {"method": method.upper(), "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    method: str, uri: str, origin: str, destination: str, signing_key: SigningKey, content: Any = None
) -> str:
    """The Authorization header value for a request from ``origin``."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, signing_key)
    key_id = key_id_of(signing_key)
    return format_header(XMatrixAuth(origin, destination, key_id, signed["signatures"][origin][key_id]))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_header(auth: XMatrixAuth) -> str:
    parts = [f"origin={_quote(auth.origin)}"]
    if auth.destination is not None:
        parts.append(f"destination={_quote(auth.destination)}")
    parts += [f"key={_quote(auth.key_id)}", f"sig={_quote(auth.signature)}"]
    return "X-Matrix " + ",".join(parts)


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,"]*)\s*(?:,|$)')
_TOKEN_CHARS = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z:\[\]/=]+$")


def parse_header(value: str) -> XMatrixAuth:
    """Parse one ``X-Matrix ...`` header value (RFC 9110 auth-params:
    values quoted or bare, names case-insensitive)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise BadAuthHeader("not an X-Matrix authorization header")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise BadAuthHeader("malformed X-Matrix parameters")
        name, raw = m.group(1).lower(), m.group(2).strip()
        if raw.startswith('"'):
            text = re.sub(r"\\(.)", r"\1", raw[1:-1])
        else:
            if raw and not _TOKEN_CHARS.match(raw):
                raise BadAuthHeader(f"bad value for {name}")
            text = raw
        if name in params:
            raise BadAuthHeader(f"{name} given twice")
        params[name] = text
        pos = m.end()
    for name in ("origin", "key", "sig"):
        if not params.get(name):
            raise BadAuthHeader(f"X-Matrix header without {name}")
    destination = params.get("destination")
    return XMatrixAuth(params["origin"], destination or None, params["key"], params["sig"])

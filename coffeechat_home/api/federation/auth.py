"""Authentication of inbound federation requests (``Authorization: X-Matrix``).

    fed_auth = FederationAuth(key_store, server_name)
    router.add_get(path, fed_auth(handler))   # handler(request, origin)

The wrapper checks the header (origin, addressed to us) before reading
anything, reads the body up to the route's limit (``max_body_bytes``: the
one given to FederationAuth, or a route's own, e.g. ``PUT /send``; more is
413 ``M_TOO_LARGE`` and is not read), checks the signature with the origin's
key (fetched through the key store), and only then calls the handler with
the verified origin; the parsed JSON body is at ``request[FEDERATION_BODY]``.
A bad header or signature is 401 ``M_UNAUTHORIZED``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from ...errors import MatrixError
from ...protocol.errors import InvalidSigningKey, SignatureError
from ...protocol.identifiers import InvalidIdentifier, validate_server_name
from ...protocol.request_auth import BadAuthHeader, parse_header, request_json
from ...services.server_keys import KeyStore, KeyUnavailable, now_ms
from ..http import USER_ID

log = logging.getLogger(__name__)

FederationHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
FEDERATION_ORIGIN = web.RequestKey("federation_origin", str)
FEDERATION_BODY = web.RequestKey("federation_body", object)


def unauthorized(msg: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", msg)


DEFAULT_MAX_BODY_BYTES = 1_048_576


class FederationAuth:
    """``on_origin``, if given, hears of every authenticated request's origin
    (the outbound sender ends that server's backoff: it is up).
    ``max_body_bytes``: the body limit of the routes it wraps, unless a route
    gives its own."""

    def __init__(
        self, key_store: KeyStore, server_name: str, on_origin: Callable[[str], Awaitable[None]] | None = None,
        *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.key_store = key_store
        self.server_name = server_name
        self.on_origin = on_origin
        self.max_body_bytes = max_body_bytes

    def __call__(
        self, handler: FederationHandler, *, max_body_bytes: int | None = None
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        limit = max_body_bytes if max_body_bytes is not None else self.max_body_bytes

        async def wrapper(request: web.Request) -> web.StreamResponse:
            origin = await self.authenticate(request, limit)
            if self.on_origin is not None:
                await self.on_origin(origin)
            return await handler(request, origin)

        return wrapper

    async def authenticate(self, request: web.Request, max_body_bytes: int | None = None) -> str:
        headers = [h for h in request.headers.getall("Authorization", []) if h.lstrip()[:9].lower() == "x-matrix "]
        if not headers:
            raise unauthorized("Missing X-Matrix Authorization header")
        try:
            auth = parse_header(headers[0])
            validate_server_name(auth.origin)
        except (BadAuthHeader, InvalidIdentifier) as e:
            raise unauthorized(f"Malformed X-Matrix Authorization header: {e}") from None
        if auth.destination is None or auth.destination != self.server_name:
            raise unauthorized(f"The request is addressed to {auth.destination!r}, not to {self.server_name!r}")
        if auth.origin == self.server_name:
            raise unauthorized("The request claims to come from this server")
        body = await _read_body(request, self.max_body_bytes if max_body_bytes is None else max_body_bytes)
        signed = request_json(request.method, request.raw_path, auth.origin, self.server_name, body)
        signed["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
        try:
            await self.key_store.verify_json_signature(signed, auth.origin, auth.key_id, now_ms())
        except (KeyUnavailable, InvalidSigningKey) as e:
            raise unauthorized(f"Cannot check the request's signature: {e}") from None
        except SignatureError:
            raise unauthorized(f"Bad signature by {auth.origin} with key {auth.key_id}") from None
        request[FEDERATION_ORIGIN] = auth.origin
        request[FEDERATION_BODY] = body
        request[USER_ID] = auth.origin  # for the access log
        return auth.origin


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def too_large(limit: int) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", f"Request body too large (at most {limit} bytes here)")


async def _read_body(request: web.Request, limit: int) -> Any:
    """The JSON body or None when empty; 413/400 before any check. Read from
    the stream with this route's limit (not the app's client_max_size), and
    not at all when Content-Length announces more."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    buf = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    raw = bytes(buf)
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Request body is not valid JSON") from None

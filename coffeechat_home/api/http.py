"""Request parsing and response helpers shared by every route module."""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from multidict import CIMultiDict

from ..resources import spec_dir
from .body_schema import BodySchema
from ..errors import MatrixError, bad_json, invalid_param, missing_param

REQUEST_ID = web.RequestKey("request_id", str)
USER_ID = web.RequestKey("user_id", str)


# Every response carries them (the middleware adds them where missing).
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "ETag, Content-Disposition",
    "Access-Control-Max-Age": "86400",
}
# A JSON response's headers, copied (not parsed from a content type and
# merged with the CORS headers per response: a fan-out answers hundreds)
_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json", **CORS_HEADERS})


class SentOnce(web.Response):
    """A response that lets go of its body once written: aiohttp's
    connection loop keeps the last response of a keep-alive connection
    until the connection's next request, so every idle client held its
    last /sync answer (an initial sync of a hundred rooms: 0.6 MB each)."""

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self.body = None


def _json_headers(headers: Mapping[str, str] | None) -> CIMultiDict[str]:
    all_headers = _JSON_HEADERS.copy()
    if headers:
        all_headers.update(headers)
    return all_headers


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return SentOnce(body=orjson.dumps(data), status=status, headers=_json_headers(headers))


# A /sync answer with at least this many rooms is encoded room by room
# (rooms_json_response); a smaller one (a woken long-poll's) in one call.
ROOMS_IN_PIECES = 16
_CHUNK = 64 * 1024


class _Chunks(Payload):
    """A body of encoded chunks, each let go of once written."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks, content_type="application/json")
        self._size = sum(len(c) for c in chunks)
        chunks.reverse()  # (popped from the end, first chunk first)

    async def write(self, writer: AbstractStreamWriter) -> None:
        chunks: list[bytes] = self._value
        while chunks:
            await writer.write(chunks.pop())

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(reversed(self._value)).decode(encoding, errors)


def rooms_json_response(data: dict[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    """A /sync answer (``data``, consumed: its rooms are taken out as they
    are encoded) as ``json_response`` sends it, but encoded room by room:
    each room's part is let go of once encoded, so a big answer (an
    initial sync of a hundred rooms: 0.6 MB encoded, more as objects) is
    never held twice over, as objects and as the encoded body, while it
    is sent."""
    rooms = data.get("rooms")
    if not isinstance(rooms, dict) or sum(len(v) for v in rooms.values()) < ROOMS_IN_PIECES:
        return json_response(data, headers=headers)
    del data["rooms"]
    head = orjson.dumps(data)  # the other top-level fields
    chunks: list[bytes] = []
    parts = [head[:-1], b',"rooms":{' if len(head) > 2 else b'"rooms":{']
    size = 0

    def add(piece: bytes) -> None:
        nonlocal size
        parts.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            chunks.append(b"".join(parts))
            parts.clear()
            size = 0

    for i, (section, entries) in enumerate(list(rooms.items())):
        del rooms[section]
        add(b"%s%s:{" % (b"," if i else b"", orjson.dumps(section)))
        first = True
        while entries:
            room_id, room = entries.popitem()
            add(b"%s%s:%s" % (b"" if first else b",", orjson.dumps(room_id), orjson.dumps(room)))
            del room
            first = False
        add(b"}")
    add(b"}}")
    chunks.append(b"".join(parts))
    return SentOnce(body=_Chunks(chunks), headers=_json_headers(headers))


def raw_json_response(body: bytes, status: int = 200) -> web.Response:
    """For bodies assembled from stored JSON text without re-parsing."""
    return SentOnce(body=body, status=status, content_type="application/json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The request body as JSON: M_TOO_LARGE, M_NOT_JSON on failure."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise MatrixError(413, "M_TOO_LARGE", "Request body too large") from None
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty, expected JSON")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Request body is not valid JSON") from None


async def read_json_object(request: web.Request, schema: str | None = None, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await read_json(request, allow_empty=allow_empty)
    if not isinstance(body, dict):
        raise bad_json("Request body must be a JSON object")
    if schema is not None:
        validate_body(body, schema)
    return body


@functools.cache
def _validator(name: str) -> BodySchema:
    return BodySchema(json.loads((spec_dir() / "requests" / f"{name}.json").read_text(encoding="utf-8")))


def validate_body(body: Any, schema: str) -> None:
    """Validate against spec/requests/<schema>.json (api/body_schema.py);
    the error jsonschema's best_match would pick becomes M_MISSING_PARAM (a
    required key is absent) or M_BAD_JSON."""
    error = _validator(schema).best_error(body)
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "body"
    if error.keyword == "required":
        raise missing_param(f"{where}: {error.message}")
    raise bad_json(f"{where}: {error.message}")


def query_int(request: web.Request, name: str, default: int | None = None, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_param(f"{name} must be an integer") from None
    if value < minimum:
        raise invalid_param(f"{name} must be at least {minimum}")
    if maximum is not None:
        value = min(value, maximum)
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise invalid_param(f"{name} must be true or false")

"""Helpers for media tests: images made in memory with Pillow, a PNG whose
header claims gigapixels, and raw HTTP for bodies that are not JSON."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from PIL import Image

AUTHED = "/_matrix/client/v1/media"
UPLOAD = "/_matrix/media/v3/upload"


def image_bytes(width: int, height: int, fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    im = Image.new("RGB", (width, height), color)
    # a gradient, so crops and scales are not trivially equal
    for x in range(0, width, max(1, width // 16)):
        for y in range(height):
            im.putpixel((x, y), (x * 255 // max(1, width), 0, 255))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def gigapixel_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG of a few hundred bytes whose header claims ``width x
    height`` pixels (10 gigapixels by default): decoding it would need tens
    of gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 4) + comp.flush()  # a few rows; a decoder would want them all
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@dataclass
class Raw:
    status: int
    body: bytes
    headers: Any

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def raw(
    session: aiohttp.ClientSession, method: str, url: str, *, token: str | None = None,
    data: Any = None, headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
) -> Raw:
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if isinstance(data, bytes) and len(data) > 1024 * 1024:
        data = io.BytesIO(data)  # aiohttp warns about large raw bytes
    async with session.request(method, url, data=data, headers=hdrs, params=params) as resp:
        return Raw(resp.status, await resp.read(), resp.headers)


async def upload(
    session: aiohttp.ClientSession, base_url: str, token: str | None, data: Any,
    content_type: str = "application/octet-stream", filename: str | None = None,
) -> Raw:
    params = {"filename": filename} if filename is not None else None
    return await raw(
        session, "POST", base_url + UPLOAD, token=token, data=data,
        headers={"Content-Type": content_type}, params=params,
    )


def media_path(content_uri: str) -> str:
    assert content_uri.startswith("mxc://"), content_uri
    return content_uri[len("mxc://"):]


def assert_error(r: Raw, status: int, errcode: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("errcode") == errcode and isinstance(body.get("error"), str), body

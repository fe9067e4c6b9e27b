"""Thumbnails over real HTTP: crop and scale, the common sizes generated
once and cached, no upscaling, refusals (not an image, bad parameters) and
an image whose header claims 10 gigapixels."""

from __future__ import annotations

import io
import time

import psutil
from PIL import Image

from ..helpers import ApiClient
from .media_helpers import (
    AUTHED,
    assert_error,
    gigapixel_png,
    image_bytes,
    media_path,
    raw,
    upload,
)


async def _uploaded(api: ApiClient, data: bytes, ctype: str) -> str:
    r = await upload(api.session, api.base_url, api.token, data, ctype)
    assert r.status == 200, r.body
    return media_path(r.json()["content_uri"])


async def _thumb(api: ApiClient, path: str, **params: str) -> tuple[int, bytes, object]:
    r = await raw(api.session, "GET", f"{api.base_url}{AUTHED}/thumbnail/{path}", token=api.token, params=params)
    return r.status, r.body, r.headers


async def test_crop_and_scale(alice: ApiClient, server) -> None:  # type: ignore[no-untyped-def]
    path = await _uploaded(alice, image_bytes(1000, 500, "JPEG"), "image/jpeg")
    status, body, headers = await _thumb(alice, path, width="32", height="32", method="crop")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"  # type: ignore[index]
    assert headers["Content-Disposition"] == 'inline; filename="thumbnail.jpg"'  # type: ignore[index]
    assert headers["X-Content-Type-Options"] == "nosniff"  # type: ignore[index]
    assert Image.open(io.BytesIO(body)).size == (32, 32)
    # a size between the common ones: the next larger one (96x96 crop)
    status, body, _ = await _thumb(alice, path, width="50", height="60", method="crop")
    assert Image.open(io.BytesIO(body)).size == (96, 96)
    # scale keeps the aspect ratio inside the chosen box (320x240)
    status, body, _ = await _thumb(alice, path, width="300", height="200", method="scale")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (320, 160)
    # method defaults to scale; the largest size when asked for more
    status, body, _ = await _thumb(alice, path, width="5000", height="5000")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (800, 400)
    # cached: the same bytes again, one row per size
    again = await _thumb(alice, path, width="32", height="32", method="crop")
    first = await _thumb(alice, path, width="30", height="30", method="crop")
    assert again[1] == first[1]
    rows = await server.services.db.fetch("SELECT width, height, method FROM media_thumbnails ORDER BY width")
    assert [tuple(r) for r in rows] == [(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (800, 600, "scale")]


async def test_transparency_and_no_upscaling(alice: ApiClient) -> None:
    im = Image.new("RGBA", (10, 20), (0, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    path = await _uploaded(alice, buf.getvalue(), "image/png")
    status, body, headers = await _thumb(alice, path, width="96", height="96", method="crop")
    assert status == 200 and headers["Content-Type"] == "image/png"  # type: ignore[index]
    thumb = Image.open(io.BytesIO(body))
    assert thumb.size == (10, 10) and thumb.mode == "RGBA"  # square, never larger than the source
    status, body, _ = await _thumb(alice, path, width="640", height="480", method="scale")
    assert Image.open(io.BytesIO(body)).size == (10, 20)
    # GIF and WebP sources
    for fmt, ctype in (("GIF", "image/gif"), ("WEBP", "image/webp")):
        p = await _uploaded(alice, image_bytes(200, 100, fmt), ctype)
        status, body, _ = await _thumb(alice, p, width="96", height="96", method="crop")
        assert status == 200 and Image.open(io.BytesIO(body)).size == (96, 96), fmt


async def test_refusals(alice: ApiClient) -> None:
    text = await _uploaded(alice, b"just text", "text/plain")
    r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/thumbnail/{text}", token=alice.token,
                  params={"width": "32", "height": "32"})
    assert_error(r, 400, "M_UNKNOWN")
    # a PNG signature followed by garbage
    broken = await _uploaded(alice, b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "image/png")
    r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/thumbnail/{broken}", token=alice.token,
                  params={"width": "32", "height": "32"})
    assert_error(r, 400, "M_UNKNOWN")
    img = await _uploaded(alice, image_bytes(64, 64), "image/png")
    url = f"{alice.base_url}{AUTHED}/thumbnail/{img}"
    assert_error(await raw(alice.session, "GET", url, token=alice.token, params={"height": "32"}), 400, "M_MISSING_PARAM")
    for params in ({"width": "-1", "height": "32"}, {"width": "abc", "height": "32"},
                   {"width": "0", "height": "32"}, {"width": "32", "height": "32", "method": "stretch"},
                   {"width": "32", "height": "32", "timeout_ms": "soon"}):
        assert_error(await raw(alice.session, "GET", url, token=alice.token, params=params), 400, "M_INVALID_PARAM")


async def test_decompression_bomb_is_refused(alice: ApiClient) -> None:
    bomb = gigapixel_png()
    assert len(bomb) < 1000
    path = await _uploaded(alice, bomb, "image/png")
    rss_before = psutil.Process().memory_info().rss  # the server runs in this process
    started = time.monotonic()
    for method in ("crop", "scale"):
        r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/thumbnail/{path}", token=alice.token,
                      params={"width": "32", "height": "32", "method": method})
        assert_error(r, 413, "M_TOO_LARGE")
    assert time.monotonic() - started < 10  # refused from the header, nothing decoded
    assert psutil.Process().memory_info().rss - rss_before < 50 * 1024 * 1024
    # a smaller bomb that still exceeds media.max_image_pixels (32 M): 8000 x 8000
    path = await _uploaded(alice, gigapixel_png(8000, 8000), "image/png")
    r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/thumbnail/{path}", token=alice.token,
                  params={"width": "32", "height": "32"})
    assert_error(r, 413, "M_TOO_LARGE")
    # the original can still be downloaded as it was uploaded
    r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/download/{path}", token=alice.token)
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"

"""Federation media routes (Matrix 1.11): ``GET /_matrix/federation/v1/media/download/{mediaId}``
and ``/thumbnail/{mediaId}``, signed requests only, answering this
server's own media (never a cached copy of a third server's) as
``multipart/mixed``: an empty JSON metadata part, then the file, streamed
from disk a chunk at a time. Quarantined media answers 404 like unknown
media."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import BinaryIO

from aiohttp import web

from ...errors import not_found
from ...services.media import MediaService, Servable
from ...services.media.content import multipart_parts
from ..client.media import required_positive_int, timeout_ms_param
from .auth import FederationAuth

PREFIX = "/_matrix/federation/v1/media"
READ_CHUNK = 256 * 1024


class FederationMediaRoutes:
    def __init__(self, auth: FederationAuth, media: MediaService) -> None:
        self.auth = auth
        self.media = media

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"{PREFIX}/download/{{media_id}}", self.auth(self.download), allow_head=False)
        router.add_get(f"{PREFIX}/thumbnail/{{media_id}}", self.auth(self.thumbnail), allow_head=False)

    async def download(self, request: web.Request, origin: str) -> web.StreamResponse:
        servable = await self.media.download(
            self.media.server_name, request.match_info["media_id"], timeout_ms=timeout_ms_param(request),
            allow_remote=False,
        )
        return await _multipart(request, servable)

    async def thumbnail(self, request: web.Request, origin: str) -> web.StreamResponse:
        servable = await self.media.thumbnail(
            self.media.server_name, request.match_info["media_id"],
            width=required_positive_int(request, "width"), height=required_positive_int(request, "height"),
            method=request.query.get("method", "scale"), timeout_ms=timeout_ms_param(request), allow_remote=False,
        )
        return await _multipart(request, servable)


async def _multipart(request: web.Request, servable: Servable) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    try:
        f: BinaryIO = await loop.run_in_executor(None, open, servable.path, "rb")
    except FileNotFoundError:  # deleted meanwhile
        raise not_found("Media not found") from None
    try:
        size = await loop.run_in_executor(None, lambda: os.fstat(f.fileno()).st_size)
        boundary = secrets.token_hex(16)
        head, tail = multipart_parts(boundary, servable.content_type, servable.filename)
        resp = web.StreamResponse(headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Cache-Control": "private, max-age=86400",
        })
        resp.content_length = len(head) + size + len(tail)
        await resp.prepare(request)
        await resp.write(head)
        left = size
        while left > 0:
            chunk = await loop.run_in_executor(None, f.read, min(READ_CHUNK, left))
            if not chunk:  # cannot happen with content-addressed files; never send a short body silently
                raise ConnectionResetError("media file shrank while being sent")
            left -= len(chunk)
            await resp.write(chunk)
        await resp.write(tail)
        await resp.write_eof()
        return resp
    finally:
        await loop.run_in_executor(None, f.close)

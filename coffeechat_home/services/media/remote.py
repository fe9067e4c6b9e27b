"""Other servers' media, fetched over federation on first use and cached
like uploads (body on disk by SHA-256, a ``media`` row with the remote
server's name), so every instance serves it afterwards without asking
again.

Fetching asks the authenticated ``GET /_matrix/federation/v1/media/download``
(a ``multipart/mixed`` answer: JSON metadata, then the file or a
``Location`` to get it from) and, when the remote does not know that
endpoint (404/405 without a Matrix error, or ``M_UNRECOGNIZED``, as
Synapse decides), the legacy ``/_matrix/media/v3/download/...?allow_remote=false``.
The body is streamed to disk under ``media.max_remote_bytes``; nothing
half-written stays. Concurrent requests for one file share one fetch per
instance; across instances the first row recorded wins (the bodies are
content-addressed, a loser's different body is deleted).

Failures answer as Synapse does: unreachable or a bad answer 502
``M_UNKNOWN``, too large 502 ``M_TOO_LARGE``, unknown there 404
``M_NOT_FOUND``; a remote's 504 ``M_NOT_YET_UPLOADED`` is passed on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import aiohttp

from ...config import MediaConfig
from ...errors import MatrixError, not_found
from ...federation.client import BadResponse, FederationClient, FederationError, RemoteError, Unreachable
from ...storage.media import MediaRecord, MediaStore
from .content import effective_content_type, filename_from_disposition
from .files import BodyTooLarge, FileStore, StoredBody

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
MAX_METADATA_BYTES = 64 * 1024
MULTIPART_SLACK = 64 * 1024  # a multipart answer's bytes beyond its file: headers, boundaries, metadata


class _TooLarge(Exception):
    pass


def _unknown_endpoint(e: RemoteError) -> bool:
    """Whether an error answer means "no such endpoint" (Synapse's rule)."""
    if e.status in (404, 405):
        return not isinstance(e.body, dict) or e.errcode == "M_UNRECOGNIZED"
    return e.status == 400 and e.errcode == "M_UNRECOGNIZED"


def _failed(server: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", f"Failed to fetch remote media from {server}")


class RemoteMedia:
    def __init__(
        self,
        client: FederationClient,
        store: MediaStore,
        files: FileStore,
        config: MediaConfig,
        release_bodies: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.client = client
        self.store = store
        self.files = files
        self.config = config
        self.max_bytes = config.max_remote_bytes or config.max_upload_bytes
        self.release_bodies = release_bodies
        self._inflight: dict[tuple[str, str], asyncio.Future[MediaRecord]] = {}

    async def fetch(self, server_name: str, media_id: str, timeout_ms: int) -> MediaRecord:
        """The cached record of a remote file, fetching it first (one fetch
        per file at a time on this instance; a requester that goes away
        does not cancel it for the others)."""
        key = (server_name, media_id)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(server_name, media_id, timeout_ms))
            self._inflight[key] = task

            def done(t: asyncio.Future[MediaRecord]) -> None:
                if self._inflight.get(key) is t:
                    del self._inflight[key]
                if not t.cancelled():
                    t.exception()  # retrieved: nobody may be left to hear it

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _fetch(self, server: str, media_id: str, timeout_ms: int) -> MediaRecord:
        cached = await self.store.get(server, media_id)  # another instance may have fetched it meanwhile
        if cached is not None and cached.uploaded and self.files.exists(cached.sha256 or ""):
            return cached
        read_s = max(self.client.timeout_s, timeout_ms / 1000 + 5)
        total_s = self.config.remote_fetch_timeout_s
        started = time.monotonic()
        try:
            try:
                async with self.client.stream(
                    server, f"/_matrix/federation/v1/media/download/{quote(media_id, safe='')}",
                    query={"timeout_ms": str(timeout_ms)}, read_timeout_s=read_s, total_timeout_s=total_s,
                ) as resp:
                    body, declared, name = await self._read_multipart(server, resp, read_s, total_s)
            except RemoteError as e:
                if not _unknown_endpoint(e):
                    raise
                log.info("%s does not serve federation media downloads; using the legacy path", server)
                async with self.client.stream(
                    server, f"/_matrix/media/v3/download/{quote(server, safe=':[]')}/{quote(media_id, safe='')}",
                    query={"allow_remote": "false", "timeout_ms": str(timeout_ms)},
                    read_timeout_s=read_s, total_timeout_s=total_s,
                ) as resp:
                    body, declared, name = await self._read_plain(resp)
        except _TooLarge:
            log.warning("remote media %s/%s is larger than %d bytes", server, media_id, self.max_bytes)
            raise MatrixError(502, "M_TOO_LARGE", f"Requested file is too large > {self.max_bytes} bytes") from None
        except RemoteError as e:
            log.warning("fetching remote media %s/%s: %s", server, media_id, e)
            if e.status == 404:
                raise not_found("Media not found") from None
            if e.status == 504 and e.errcode == "M_NOT_YET_UPLOADED":
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded") from None
            if e.status == 502 and e.errcode == "M_TOO_LARGE":
                raise MatrixError(502, "M_TOO_LARGE", f"{server} refused: the file is too large to serve") from None
            raise _failed(server) from None
        except (Unreachable, BadResponse, FederationError) as e:
            log.warning("fetching remote media %s/%s: %s", server, media_id, e)
            raise _failed(server) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.warning("fetching remote media %s/%s failed after %.1f s: %s: %s", server, media_id,
                        time.monotonic() - started, type(e).__name__, e)
            raise _failed(server) from None
        ctype = effective_content_type(declared, body.head)
        record = await asyncio.shield(self._record(server, media_id, ctype, name, body))
        log.info("fetched remote media %s/%s (%d bytes, %s)", server, media_id, body.size, ctype)
        return record

    async def _record(self, server: str, media_id: str, ctype: str, name: str | None, body: StoredBody) -> MediaRecord:
        record = await self.store.insert_remote(
            server, media_id, ctype, name, body.size, body.sha256, int(time.time() * 1000)
        )
        if record.sha256 != body.sha256:  # another instance's copy was recorded first
            await self.release_bodies([body.sha256])
        return record

    async def _store(self, chunks: AsyncIterator[bytes]) -> StoredBody:
        try:
            return await self.files.store_stream(chunks, max_bytes=self.max_bytes)
        except BodyTooLarge:
            raise _TooLarge() from None

    async def _read_plain(self, resp: aiohttp.ClientResponse) -> tuple[StoredBody, str | None, str | None]:
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise _TooLarge()
        body = await self._store(resp.content.iter_chunked(READ_CHUNK))
        return body, resp.headers.get("Content-Type"), filename_from_disposition(resp.headers.get("Content-Disposition"))

    async def _read_multipart(
        self, server: str, resp: aiohttp.ClientResponse, read_s: float, total_s: float
    ) -> tuple[StoredBody, str | None, str | None]:
        if not resp.headers.get("Content-Type", "").lower().startswith("multipart/mixed"):
            raise BadResponse(f"{server} answered a media download with {resp.headers.get('Content-Type')!r}, "
                              "not multipart/mixed")
        if resp.content_length is not None and resp.content_length > self.max_bytes + MULTIPART_SLACK:
            raise _TooLarge()
        reader = aiohttp.MultipartReader(resp.headers, resp.content)
        meta = await reader.next()
        if not isinstance(meta, aiohttp.BodyPartReader):
            raise BadResponse(f"{server}: a media answer without its metadata part")
        size = 0
        while chunk := await meta.read_chunk(8192):
            size += len(chunk)
            if size > MAX_METADATA_BYTES:
                raise BadResponse(f"{server}: media metadata over {MAX_METADATA_BYTES} bytes")
        part = await reader.next()
        if not isinstance(part, aiohttp.BodyPartReader):
            raise BadResponse(f"{server}: a media answer without its file part")
        declared = part.headers.get("Content-Type")
        name = filename_from_disposition(part.headers.get("Content-Disposition"))
        location = part.headers.get("Location")
        if location:
            async with self.client.stream_url(location, read_timeout_s=read_s, total_timeout_s=total_s) as r2:
                if r2.content_length is not None and r2.content_length > self.max_bytes:
                    raise _TooLarge()
                body = await self._store(r2.content.iter_chunked(READ_CHUNK))
                return (body, r2.headers.get("Content-Type") or declared,
                        filename_from_disposition(r2.headers.get("Content-Disposition")) or name)

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await part.read_chunk(READ_CHUNK):
                yield chunk

        body = await self._store(chunks())
        return body, declared, name

"""The media repository's use cases: upload (direct or to a created URI),
download, thumbnails, the client-visible config, and admin actions.

Metadata goes through ``MediaStore`` (SQL), bodies through ``FileStore``
(disk), thumbnails through Pillow in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import MediaConfig
from ...errors import MatrixError, forbidden, invalid_param, limit_exceeded, not_found
from ...storage.media import (
    MediaRecord,
    MediaStore,
    QuotaExceeded,
    ThumbnailRecord,
    TooManyPending,
    UploadConflict,
)
from ...protocol.identifiers import InvalidIdentifier, validate_server_name
from .content import check_filename, check_media_id, effective_content_type
from .files import BodyIncomplete, BodyTooLarge, FileStore, StoredBody
from .remote import RemoteMedia
from .thumbnails import (
    THUMBNAILABLE,
    CannotThumbnail,
    TooManyPixels,
    choose_size,
    make_thumbnail,
    set_pixel_limit,
)

log = logging.getLogger(__name__)

MAX_WAIT_MS = 60_000  # the longest a download waits for a pending upload
WAIT_POLL_S = 0.25


def now_ms() -> int:
    return int(time.time() * 1000)


def new_media_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


def parse_mxc(uri: str) -> tuple[str, str]:
    """(server_name, media_id) of an mxc:// URI (M_INVALID_PARAM)."""
    if not uri.startswith("mxc://"):
        raise invalid_param("Not an mxc:// URI")
    server_name, _, media_id = uri[len("mxc://"):].partition("/")
    if not server_name or not media_id:
        raise invalid_param("An mxc:// URI is mxc://<server name>/<media id>")
    return server_name, media_id


@dataclass(frozen=True, slots=True)
class Servable:
    """A body to send: where it is and how to label it."""

    path: Path
    content_type: str
    filename: str | None


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload request: the body's chunks and what the client declared."""

    chunks: AsyncIterator[bytes]
    content_length: int | None
    content_type: str | None
    filename: str | None


class MediaService:
    def __init__(self, store: MediaStore, files: FileStore, server_name: str, config: MediaConfig) -> None:
        self.store = store
        self.files = files
        self.server_name = server_name
        self.config = config
        self._thumbnailing = asyncio.Semaphore(config.thumbnail_concurrency)
        set_pixel_limit(config.max_image_pixels)
        # other servers' media, fetched over federation (None: not federating)
        self.remote: RemoteMedia | None = None

    def client_config(self) -> dict[str, Any]:
        return {"m.upload.size": self.config.max_upload_bytes}

    # -- uploads ------------------------------------------------------------

    async def upload(self, user_id: str, upload: Upload) -> str:
        """POST /media/v3/upload: store the body, return its mxc:// URI."""
        filename = self._check_upload(upload)
        await self._check_quota_ahead(user_id, upload.content_length)
        body = await self._receive(upload)
        media_id = new_media_id()
        ctype = effective_content_type(upload.content_type, body.head)

        async def commit() -> None:
            try:
                await self.store.insert_upload(
                    self.server_name, media_id, user_id, ctype, filename, body.size, body.sha256,
                    now_ms(), self.config.user_quota_bytes,
                )
            except QuotaExceeded:
                await self.release_bodies([body.sha256])
                raise self._quota_error() from None

        await _run_to_end(commit())
        return f"mxc://{self.server_name}/{media_id}"

    async def create(self, user_id: str) -> dict[str, Any]:
        """POST /media/v1/create: reserve a URI for a later upload."""
        now = now_ms()
        expires = now + self.config.unused_expiry_ms
        media_id = new_media_id()
        await self.store.delete_expired_pending(now)
        try:
            await self.store.create_pending(
                self.server_name, media_id, user_id, now, expires, self.config.max_pending_uploads
            )
        except TooManyPending:
            raise limit_exceeded(60_000) from None
        return {"content_uri": f"mxc://{self.server_name}/{media_id}", "unused_expires_at": expires}

    async def upload_to(self, user_id: str, server_name: str, media_id: str, upload: Upload) -> None:
        """PUT /media/v3/upload/{serverName}/{mediaId}: fill a created URI."""
        check_media_id(media_id)
        if server_name != self.server_name:
            raise not_found("This server did not create that media id")
        filename = self._check_upload(upload)
        record = await self.store.get(server_name, media_id)
        self._check_pending(record, user_id)  # before receiving a body for nothing
        await self._check_quota_ahead(user_id, upload.content_length)
        body = await self._receive(upload)
        ctype = effective_content_type(upload.content_type, body.head)

        async def commit() -> None:
            try:
                await self.store.complete_pending(
                    server_name, media_id, user_id, ctype, filename, body.size, body.sha256,
                    now_ms(), self.config.user_quota_bytes,
                )
            except QuotaExceeded:
                await self.release_bodies([body.sha256])
                raise self._quota_error() from None
            except UploadConflict as e:
                await self.release_bodies([body.sha256])
                raise _conflict_error(e.reason) from None

        await _run_to_end(commit())

    def _check_pending(self, record: MediaRecord | None, user_id: str) -> None:
        if record is None:
            raise _conflict_error("missing")
        if record.user_id != user_id:
            raise _conflict_error("owner")
        if record.uploaded:
            raise _conflict_error("uploaded")
        if record.unused_expires_ts is not None and record.unused_expires_ts <= now_ms():
            raise _conflict_error("expired")

    def _check_upload(self, upload: Upload) -> str | None:
        if upload.content_length is not None and upload.content_length > self.config.max_upload_bytes:
            raise self._too_large()
        return check_filename(upload.filename) if upload.filename else None

    async def _check_quota_ahead(self, user_id: str, content_length: int | None) -> None:
        quota = self.config.user_quota_bytes
        if quota <= 0:
            return
        used = await self.store.used_bytes(user_id)
        if used >= quota or (content_length is not None and used + content_length > quota):
            raise self._quota_error()

    async def _receive(self, upload: Upload) -> StoredBody:
        try:
            return await self.files.store_stream(
                upload.chunks, max_bytes=self.config.max_upload_bytes, expected=upload.content_length
            )
        except BodyTooLarge:
            raise self._too_large() from None
        except BodyIncomplete:
            raise invalid_param("The body is shorter than its Content-Length") from None

    def _too_large(self) -> MatrixError:
        return MatrixError(413, "M_TOO_LARGE", f"Cannot upload files larger than {self.config.max_upload_bytes} bytes")

    def _quota_error(self) -> MatrixError:
        return forbidden(f"This upload would exceed your media quota of {self.config.user_quota_bytes} bytes")

    # -- downloads ----------------------------------------------------------

    async def download(
        self, server_name: str, media_id: str, *, timeout_ms: int, filename: str | None = None,
        legacy: bool = False, allow_remote: bool = True,
    ) -> Servable:
        """A file to serve: local, cached remote, or (``allow_remote``)
        fetched from its server now."""
        record = await self._servable_record(server_name, media_id, timeout_ms, legacy, allow_remote)
        if filename is not None:
            check_filename(filename)
        assert record.sha256 is not None
        path = self.files.path_of(record.sha256)
        if not path.is_file():
            log.error("media %s/%s: body %s is missing from %s", server_name, media_id, record.sha256, self.files.root)
            raise not_found("Media not found")
        return Servable(path, record.content_type, filename if filename is not None else record.upload_name)

    async def thumbnail(
        self, server_name: str, media_id: str, *, width: int, height: int, method: str, timeout_ms: int,
        legacy: bool = False, allow_remote: bool = True,
    ) -> Servable:
        """A thumbnail, generated here (for remote media too, from the
        fetched original, as Synapse does)."""
        if width < 1 or height < 1:
            raise invalid_param("width and height must be positive integers")
        if method not in ("crop", "scale"):
            raise invalid_param("method must be 'crop' or 'scale'")
        record = await self._servable_record(server_name, media_id, timeout_ms, legacy, allow_remote)
        if record.content_type not in THUMBNAILABLE:
            raise MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")
        size = choose_size(width, height, method)
        cached = await self.store.get_thumbnail(server_name, media_id, size.width, size.height, size.method)
        if cached is None or not self.files.exists(cached.sha256):
            cached = await self._generate(record, size.width, size.height, size.method)
        ext = "png" if cached.content_type == "image/png" else "jpg"
        return Servable(self.files.path_of(cached.sha256), cached.content_type, f"thumbnail.{ext}")

    async def _generate(self, record: MediaRecord, width: int, height: int, method: str) -> ThumbnailRecord:
        assert record.sha256 is not None
        source = self.files.path_of(record.sha256)
        size = choose_size(width, height, method)
        loop = asyncio.get_running_loop()
        async with self._thumbnailing:
            try:
                data, ctype = await loop.run_in_executor(
                    None, make_thumbnail, source, size, self.config.max_image_pixels
                )
            except TooManyPixels:
                raise MatrixError(413, "M_TOO_LARGE", "The image has too many pixels to thumbnail") from None
            except CannotThumbnail:
                raise MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content") from None
        sha = await self.files.store_bytes(data)
        mine = ThumbnailRecord(width, height, method, ctype, len(data), sha)
        stored = await self.store.insert_thumbnail(record.server_name, record.media_id, mine, now_ms())
        if stored.sha256 != sha:  # another instance stored its own first
            await self.release_bodies([sha])
        return stored

    async def _servable_record(
        self, server_name: str, media_id: str, timeout_ms: int, legacy: bool, allow_remote: bool = True
    ) -> MediaRecord:
        """The record of uploaded media, waiting up to ``timeout_ms`` for a
        pending upload (M_NOT_YET_UPLOADED); M_NOT_FOUND otherwise."""
        check_media_id(media_id)
        if server_name != self.server_name:
            return await self._remote_record(server_name, media_id, timeout_ms, legacy, allow_remote)
        deadline = time.monotonic() + min(max(timeout_ms, 0), MAX_WAIT_MS) / 1000
        while True:
            record = await self.store.get(server_name, media_id)
            if record is None or record.quarantined:
                raise not_found("Media not found")
            if legacy and record.created_ts >= self.config.unauthenticated_cutoff_ts:
                raise not_found("Media not found (use the authenticated /_matrix/client/v1/media endpoints)")
            if record.uploaded:
                return record
            if record.unused_expires_ts is not None and record.unused_expires_ts <= now_ms():
                raise not_found("Media not found")
            if time.monotonic() >= deadline:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    async def _remote_record(
        self, server_name: str, media_id: str, timeout_ms: int, legacy: bool, allow_remote: bool
    ) -> MediaRecord:
        """Cached remote media, or fetched now. The legacy paths follow the
        same cut-off (a copy made now counts as created now) and never fetch
        for a server that asked ``allow_remote=false``."""
        try:
            validate_server_name(server_name)
        except InvalidIdentifier:
            raise not_found("Media not found") from None
        record = await self.store.get(server_name, media_id)
        if record is not None and record.quarantined:
            raise not_found("Media not found")
        cutoff = self.config.unauthenticated_cutoff_ts
        if record is not None and record.uploaded and self.files.exists(record.sha256 or ""):
            if legacy and record.created_ts >= cutoff:
                raise not_found("Media not found (use the authenticated /_matrix/client/v1/media endpoints)")
            return record
        if legacy and (now_ms() >= cutoff or not allow_remote):
            raise not_found("Media not found (use the authenticated /_matrix/client/v1/media endpoints)")
        if self.remote is None or not allow_remote:
            raise not_found("Remote media is not available: this server does not federate")
        return await self.remote.fetch(server_name, media_id, min(max(timeout_ms, 0), MAX_WAIT_MS))

    # -- admin --------------------------------------------------------------

    async def list_user_media(self, user_id: str) -> list[MediaRecord]:
        return await self.store.list_by_user(user_id)

    async def quarantine(self, mxc: str, by: str | None) -> bool:
        """Quarantine (downloads answer 404) or release with by=None."""
        server_name, media_id = parse_mxc(mxc)
        return await self.store.set_quarantined(server_name, media_id, by, now_ms())

    async def delete(self, mxc: str) -> bool:
        server_name, media_id = parse_mxc(mxc)
        return await self._delete(server_name, media_id)

    async def purge_remote_before(self, before_ts: int) -> int:
        """Delete cached remote media created before a time; returns how many."""
        count = 0
        for server_name, media_id in await self.store.remote_before(self.server_name, before_ts):
            count += await self._delete(server_name, media_id)
        return count

    async def _delete(self, server_name: str, media_id: str) -> bool:
        hashes = await self.store.delete(server_name, media_id)
        if hashes is None:
            return False
        await self.release_bodies(hashes)
        return True

    async def release_bodies(self, hashes: list[str]) -> None:
        """Delete bodies no row names any more (also the remote fetcher's)."""
        for sha in set(hashes):
            if not await self.store.hash_in_use(sha):
                self.files.delete(sha)


async def _run_to_end(step: Coroutine[Any, Any, None]) -> None:
    """Record a body that is on disk even if the client hangs up meanwhile
    (handlers are cancelled then): a body is never left without its row,
    or a refused one left on disk."""
    task = asyncio.ensure_future(step)
    # a refusal nobody is left to hear must not be reported as unretrieved
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.shield(task)


def _conflict_error(reason: str) -> MatrixError:
    if reason == "uploaded":
        return MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
    if reason == "owner":
        return forbidden("Only the user who created this media id may upload to it")
    if reason == "expired":
        return not_found("This media id has expired")
    return not_found("Unknown media id")

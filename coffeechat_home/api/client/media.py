"""Content repository routes: the authenticated media API of Matrix 1.11
(``/_matrix/client/v1/media/...``), uploads under ``/_matrix/media/v3``
and the legacy unauthenticated download and thumbnail paths, which serve
only media older than ``media.unauthenticated_cutoff_ts``.

Upload bodies are read from the socket in chunks and streamed to disk, so
the app-wide ``limits.max_request_body_bytes`` (which applies to bodies
read whole) does not apply here: ``media.max_upload_bytes`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ...errors import MatrixError, invalid_param, missing_param, unrecognized
from ...services.accounts import Requester
from ...services.media import MediaService, Servable, Upload
from ...services.media.content import download_headers
from ..auth import TokenAuth, authed
from ..http import CORS_HEADERS, json_response, query_int

AUTHED = "/_matrix/client/v1/media"
LEGACY = ("/_matrix/media/v3", "/_matrix/media/r0")
READ_CHUNK = 256 * 1024
DEFAULT_TIMEOUT_MS = 20_000


class MediaRoutes:
    def __init__(self, media: MediaService, auth: TokenAuth) -> None:
        self.media = media
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        for prefix in LEGACY:
            router.add_route("POST", f"{prefix}/upload", authed(a, self.upload), expect_handler=self.expect_upload)
            router.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}", self.legacy_download)
            router.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}/{{file_name}}", self.legacy_download)
            router.add_get(f"{prefix}/thumbnail/{{server_name}}/{{media_id}}", self.legacy_thumbnail)
            router.add_get(f"{prefix}/config", authed(a, self.config))
            router.add_get(f"{prefix}/preview_url", authed(a, self.preview_url))
        router.add_route(
            "PUT", "/_matrix/media/v3/upload/{server_name}/{media_id}", authed(a, self.upload_to),
            expect_handler=self.expect_upload,
        )
        router.add_route("POST", "/_matrix/media/v1/create", authed(a, self.create))
        router.add_get(f"{AUTHED}/download/{{server_name}}/{{media_id}}", authed(a, self.download))
        router.add_get(f"{AUTHED}/download/{{server_name}}/{{media_id}}/{{file_name}}", authed(a, self.download))
        router.add_get(f"{AUTHED}/thumbnail/{{server_name}}/{{media_id}}", authed(a, self.thumbnail))
        router.add_get(f"{AUTHED}/config", authed(a, self.config))
        router.add_get(f"{AUTHED}/preview_url", authed(a, self.preview_url))

    def register_legacy_downloads(self, router: web.UrlDispatcher) -> None:
        """The unauthenticated legacy download and thumbnail paths alone: on
        the federation listener, where servers older than Matrix 1.11 fetch
        media (under the same cut-off; they send ``allow_remote=false``)."""
        for prefix in LEGACY:
            router.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}", self.legacy_download)
            router.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}/{{file_name}}", self.legacy_download)
            router.add_get(f"{prefix}/thumbnail/{{server_name}}/{{media_id}}", self.legacy_thumbnail)

    # -- uploads ------------------------------------------------------------

    async def expect_upload(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse an oversized body before it is sent."""
        length = request.content_length
        limit = self.media.config.max_upload_bytes
        if length is not None and length > limit:
            err = MatrixError(413, "M_TOO_LARGE", f"Cannot upload files larger than {limit} bytes")
            return json_response(err.to_json(), status=413, headers=CORS_HEADERS)
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def upload(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        uri = await self.media.upload(requester.user_id, _upload_of(request))
        return json_response({"content_uri": uri})

    async def create(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.media.create(requester.user_id))

    async def upload_to(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        info = request.match_info
        await self.media.upload_to(requester.user_id, info["server_name"], info["media_id"], _upload_of(request))
        return json_response({})

    # -- downloads ----------------------------------------------------------

    async def download(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return await self._download(request, legacy=False)

    async def legacy_download(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, legacy=True)

    async def thumbnail(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return await self._thumbnail(request, legacy=False)

    async def legacy_thumbnail(self, request: web.Request) -> web.StreamResponse:
        return await self._thumbnail(request, legacy=True)

    async def _download(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        info = request.match_info
        servable = await self.media.download(
            info["server_name"], info["media_id"], timeout_ms=timeout_ms_param(request),
            filename=info.get("file_name"), legacy=legacy, allow_remote=_allow_remote(request),
        )
        return _file_response(servable)

    async def _thumbnail(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        info = request.match_info
        servable = await self.media.thumbnail(
            info["server_name"], info["media_id"],
            width=required_positive_int(request, "width"), height=required_positive_int(request, "height"),
            method=request.query.get("method", "scale"), timeout_ms=timeout_ms_param(request), legacy=legacy,
            allow_remote=_allow_remote(request),
        )
        return _file_response(servable)

    async def config(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(self.media.client_config())

    async def preview_url(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        raise unrecognized("URL previews are not supported by this server")


def _upload_of(request: web.Request) -> Upload:
    return Upload(
        chunks=_body_chunks(request),
        content_length=request.content_length,
        content_type=request.headers.get("Content-Type"),
        filename=request.query.get("filename"),
    )


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body from the socket, a chunk at a time."""
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            yield chunk
    except (HttpProcessingError, ConnectionError) as e:
        raise invalid_param(f"The request body could not be read: {type(e).__name__}") from None


def _file_response(servable: Servable) -> web.StreamResponse:
    return web.FileResponse(servable.path, headers=download_headers(servable.content_type, servable.filename))


def _allow_remote(request: web.Request) -> bool:
    """The legacy paths' ``allow_remote`` (another server asking us sets it
    false, so that we never fetch on its behalf: no request loops)."""
    return request.query.get("allow_remote", "true").lower() not in ("false", "0")


def timeout_ms_param(request: web.Request) -> int:
    """The media routes' ``timeout_ms`` (also on the federation media routes)."""
    value = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS)
    return DEFAULT_TIMEOUT_MS if value is None else value


def required_positive_int(request: web.Request, name: str) -> int:
    if not request.query.get(name):
        raise missing_param(f"Missing query parameter {name!r}")
    value = query_int(request, name, minimum=1)
    assert value is not None
    return value

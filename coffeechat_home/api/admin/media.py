"""Media admin routes for server admins, in the shape of Synapse's admin
API (so tools written for it work): quarantine, delete, list a user's
media, purge cached remote media. The same actions exist as commands
(``coffeechat-home media-*``)."""

from __future__ import annotations

from typing import Any, Sequence

from aiohttp import web

from ...errors import missing_param, not_found
from ...services.accounts import Requester
from ...services.media import MediaService
from ...storage.media import MediaRecord
from ..auth import TokenAuth
from ..http import json_response, query_int
from . import V1 as PREFIX
from . import AdminRoutes, Route, paging


def _media_json(m: MediaRecord) -> dict[str, Any]:
    return {
        "media_id": m.media_id,
        "media_type": m.content_type,
        "media_length": m.size_bytes,
        "upload_name": m.upload_name,
        "created_ts": m.created_ts,
        "quarantined_by": "admin" if m.quarantined else None,
        "uploaded": m.uploaded,
    }


class MediaAdminRoutes(AdminRoutes):
    def __init__(self, media: MediaService, auth: TokenAuth) -> None:
        super().__init__(auth)
        self.media = media

    def routes(self) -> Sequence[Route]:
        return [
            ("POST", PREFIX + "/media/quarantine/{server_name}/{media_id}", self.quarantine),
            ("POST", PREFIX + "/media/unquarantine/{server_name}/{media_id}", self.release),
            ("DELETE", PREFIX + "/media/{server_name}/{media_id}", self.delete),
            ("GET", PREFIX + "/users/{user_id}/media", self.list_user),
            ("POST", PREFIX + "/purge_media_cache", self.purge_remote),
        ]

    async def quarantine(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        _found(await self.media.quarantine(_mxc(request), requester.user_id))
        return json_response({})

    async def release(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        _found(await self.media.quarantine(_mxc(request), None))
        return json_response({})

    async def delete(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        _found(await self.media.delete(_mxc(request)))
        return json_response({"deleted_media": [request.match_info["media_id"]], "total": 1})

    async def list_user(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        start, limit = paging(request, min_limit=0)
        media = await self.media.list_user_media(request.match_info["user_id"])
        page = media[start:start + limit]
        body: dict[str, Any] = {"media": [_media_json(m) for m in page], "total": len(media)}
        if start + limit < len(media):
            body["next_token"] = start + limit
        return json_response(body)

    async def purge_remote(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        before = query_int(request, "before_ts")
        if before is None:
            raise missing_param("before_ts is required")
        return json_response({"deleted": await self.media.purge_remote_before(before)})


def _found(found: bool) -> None:
    if not found:
        raise not_found("Media not found")


def _mxc(request: web.Request) -> str:
    return f"mxc://{request.match_info['server_name']}/{request.match_info['media_id']}"

"""Admin routes for rooms: list, details, members, delete (a background
job with a status) and purge history (likewise)."""

from __future__ import annotations

from typing import Any, Sequence

from aiohttp import web

from ...errors import MatrixError
from ...services.accounts import Requester
from ...services.admin.rooms import RoomAdminService
from ...storage.admin_jobs import Job
from ...storage.room_admin import RoomRow
from ..auth import TokenAuth
from ..http import json_response, read_json_object
from . import V1, V2, AdminRoutes, Route, optional, paging


def room_json(r: RoomRow) -> dict[str, Any]:
    s = r.state

    def field(event_type: str, key: str) -> Any:
        return s.get(event_type, {}).get(key)

    return {
        "room_id": r.room_id,
        "name": field("m.room.name", "name"),
        "topic": field("m.room.topic", "topic"),
        "avatar": field("m.room.avatar", "url"),
        "canonical_alias": field("m.room.canonical_alias", "alias"),
        "joined_members": r.joined_members,
        "joined_local_members": r.joined_members,  # no federation yet: every member is local
        "version": r.room_version,
        "creator": r.creator,
        "encryption": field("m.room.encryption", "algorithm"),
        "federatable": field("m.room.create", "m.federate") is not False,
        "public": r.is_public,
        "join_rules": field("m.room.join_rules", "join_rule"),
        "guest_access": field("m.room.guest_access", "guest_access"),
        "history_visibility": field("m.room.history_visibility", "history_visibility"),
        "state_events": r.state_events,
        "room_type": field("m.room.create", "type"),
    }


def delete_json(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "delete_id": job.job_id, "room_id": job.room_id, "status": job.status,
        "shutdown_room": {k: job.result.get(k, [] if k != "new_room_id" else None)
                          for k in ("kicked_users", "failed_to_kick_users", "local_aliases", "new_room_id")},
    }
    if job.error:
        body["error"] = job.error
    return body


class RoomAdminRoutes(AdminRoutes):
    def __init__(self, rooms: RoomAdminService, auth: TokenAuth) -> None:
        super().__init__(auth)
        self.rooms = rooms

    def routes(self) -> Sequence[Route]:
        return [
            ("GET", V1 + "/rooms", self.list_rooms),
            ("GET", V1 + "/rooms/{room_id}", self.room),
            ("GET", V1 + "/rooms/{room_id}/members", self.members),
            ("DELETE", V2 + "/rooms/{room_id}", self.delete),
            ("GET", V2 + "/rooms/{room_id}/delete_status", self.delete_statuses),
            ("GET", V2 + "/rooms/delete_status/{delete_id}", self.delete_status),
            ("POST", V1 + "/purge_history/{room_id}", self.purge_history),
            ("POST", V1 + "/purge_history/{room_id}/{event_id}", self.purge_history),
            ("GET", V1 + "/purge_history_status/{purge_id}", self.purge_status),
        ]

    async def list_rooms(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        offset, limit = paging(request)
        rows, total = await self.rooms.list_rooms(offset, limit, request.query.get("search_term") or None)
        body: dict[str, Any] = {"rooms": [room_json(r) for r in rows], "offset": offset, "total_rooms": total}
        if offset + len(rows) < total:
            body["next_batch"] = offset + len(rows)
        if offset > 0:
            body["prev_batch"] = max(0, offset - limit)
        return json_response(body)

    async def room(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(room_json(await self.rooms.room(request.match_info["room_id"])))

    async def members(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        members = await self.rooms.members(request.match_info["room_id"])
        return json_response({"members": members, "total": len(members)})

    async def delete(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, allow_empty=True)
        if optional(body, "new_room_user_id", str, "a user id") is not None:
            raise MatrixError(400, "M_UNRECOGNIZED", "new_room_user_id (a replacement room) is not supported yet")
        block = bool(optional(body, "block", bool, "a boolean"))
        purge = optional(body, "purge", bool, "a boolean")
        delete_id = await self.rooms.delete_room(
            requester, request.match_info["room_id"], block=block, purge=True if purge is None else purge
        )
        return json_response({"delete_id": delete_id})

    async def delete_statuses(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        jobs = await self.rooms.delete_statuses(request.match_info["room_id"])
        return json_response({"results": [delete_json(j) for j in jobs]})

    async def delete_status(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(delete_json(await self.rooms.delete_status(request.match_info["delete_id"])))

    async def purge_history(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, allow_empty=True)
        event_id = request.match_info.get("event_id") or optional(body, "purge_up_to_event_id", str, "an event id")
        purge_id = await self.rooms.purge_history(
            request.match_info["room_id"],
            event_id=event_id,
            before_ts=optional(body, "purge_up_to_ts", int, "a timestamp in ms"),
            delete_local_events=bool(optional(body, "delete_local_events", bool, "a boolean")),
        )
        return json_response({"purge_id": purge_id})

    async def purge_status(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        job = await self.rooms.purge_status(request.match_info["purge_id"])
        body: dict[str, Any] = {"status": job.status}
        if job.error:
            body["error"] = job.error
        return json_response(body)

"""Room routes: createRoom, membership, sending, state, reading history."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from ...errors import MatrixError, invalid_param, not_found
from ...services.accounts import Requester
from ...services.history import HistoryService
from ...services.history_tokens import parse_token, serve_event
from ...services.membership import MembershipService
from ...services.rooms import RoomService
from ...storage.rooms import RoomStore
from ..auth import TokenAuth, authed
from ..http import json_response, query_int, read_json_object
from ..routing import CLIENT_V3, add_client_route

# how long /members and /joined_members wait for a partial-state room's resync
MEMBERS_WAIT_S = 30.0


def parse_filter_param(request: web.Request) -> dict[str, Any] | None:
    raw = request.query.get("filter")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise invalid_param("filter must be a JSON RoomEventFilter") from None
    if not isinstance(value, dict):
        raise invalid_param("filter must be a JSON object")
    for key in ("types", "not_types", "senders", "not_senders"):
        v = value.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise invalid_param(f"filter.{key} must be a list of strings")
    return value


class RoomRoutes:
    def __init__(
        self,
        auth: TokenAuth,
        rooms: RoomService,
        membership: MembershipService,
        history: HistoryService,
        store: RoomStore,
    ) -> None:
        self.auth = auth
        self.rooms = rooms
        self.membership = membership
        self.history = history
        self.store = store
        # a room joined with a partial state: wait (bounded) for its members
        self.wait_for_members: Callable[[str, float], Awaitable[bool]] | None = None

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth

        def add(method: str, path: str, handler: Any, prefixes: Any = CLIENT_V3, write: bool = False) -> None:
            add_client_route(router, method, path, authed(a, handler, write=write), prefixes=prefixes)

        add("POST", "/createRoom", self.create_room)
        add("GET", "/joined_rooms", self.joined_rooms)
        add("POST", "/join/{room}", self.join_any)
        add("POST", "/knock/{room}", self.knock)
        add("POST", "/rooms/{room_id}/join", self.join_room)
        add("POST", "/rooms/{room_id}/leave", self.leave)
        add("POST", "/rooms/{room_id}/forget", self.forget)
        m = self.membership
        for name, action in (("invite", m.invite), ("kick", m.kick), ("ban", m.ban), ("unban", m.unban)):
            add("POST", "/rooms/{room_id}/" + name, self._on_target(action))
        # the send's write checks the token (RoomService.send passes its guard)
        add("PUT", "/rooms/{room_id}/send/{event_type}/{txn_id}", self.send, write=True)
        add("PUT", "/rooms/{room_id}/redact/{event_id}/{txn_id}", self.redact)
        add("POST", "/rooms/{room_id}/redact/{event_id}", self.redact)
        add("GET", "/rooms/{room_id}/state", self.get_state)
        add("GET", "/rooms/{room_id}/state/{event_type}", self.get_state_event)
        add("GET", "/rooms/{room_id}/state/{event_type}/{state_key:.*}", self.get_state_event)
        add("PUT", "/rooms/{room_id}/state/{event_type}", self.put_state)
        add("PUT", "/rooms/{room_id}/state/{event_type}/{state_key:.*}", self.put_state)
        add("GET", "/rooms/{room_id}/event/{event_id}", self.get_event)
        add("GET", "/rooms/{room_id}/context/{event_id}", self.context)
        add("GET", "/rooms/{room_id}/messages", self.messages)
        add("GET", "/rooms/{room_id}/members", self.members)
        add("GET", "/rooms/{room_id}/joined_members", self.joined_members)

    # -- create & membership -----------------------------------------------------
    async def create_room(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "create_room", allow_empty=True)
        room_id, alias = await self.rooms.create_room(requester, body)
        out: dict[str, Any] = {"room_id": room_id}
        if alias:
            out["room_alias"] = alias
        return json_response(out)

    async def joined_rooms(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"joined_rooms": await self.store.rooms_for_user(requester.user_id)})

    async def join_any(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "membership_self", allow_empty=True)
        via = [*request.query.getall("via", []), *request.query.getall("server_name", [])]
        room_id = await self.membership.join(requester, request.match_info["room"], body.get("reason"), via)
        return json_response({"room_id": room_id})

    async def join_room(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "membership_self", allow_empty=True)
        via = [*request.query.getall("via", []), *request.query.getall("server_name", [])]
        room_id = await self.membership.join(requester, request.match_info["room_id"], body.get("reason"), via)
        return json_response({"room_id": room_id})

    async def knock(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "membership_self", allow_empty=True)
        via = [*request.query.getall("via", []), *request.query.getall("server_name", [])]
        room_id = await self.membership.knock(requester, request.match_info["room"], body.get("reason"), via)
        return json_response({"room_id": room_id})

    async def leave(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "membership_self", allow_empty=True)
        await self.membership.leave(requester, request.match_info["room_id"], body.get("reason"))
        return json_response({})

    async def forget(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await read_json_object(request, allow_empty=True)
        await self.membership.forget(requester, request.match_info["room_id"])
        return json_response({})

    @staticmethod
    def _on_target(action: Any) -> Any:
        """A handler for invite/kick/ban/unban: ``action(requester, room,
        user_id, reason)`` with the body's ``user_id`` and ``reason``."""

        async def handler(request: web.Request, requester: Requester) -> web.StreamResponse:
            body = await read_json_object(request, "membership_target")
            await action(requester, request.match_info["room_id"], body["user_id"], body.get("reason"))
            return json_response({})

        return handler

    # -- sending -------------------------------------------------------------------
    async def send(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        content = await read_json_object(request)
        m = request.match_info
        event_type = m["event_type"]
        redacts = None
        if event_type == "m.room.redaction":
            # Spec 1.18: allowed here for every room version, the target in
            # content.redacts (moved to the top level before v11).
            redacts = content.get("redacts")
            if not isinstance(redacts, str) or not redacts.startswith("$"):
                raise MatrixError(400, "M_BAD_JSON", "m.room.redaction needs an event id in content.redacts")
        event_id = await self.rooms.send(
            requester, m["room_id"], event_type, content, txn_id=m["txn_id"], redacts=redacts
        )
        return json_response({"event_id": event_id})

    async def redact(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "redact", allow_empty=True)
        m = request.match_info
        content: dict[str, Any] = {}
        if "reason" in body:
            content["reason"] = body["reason"]
        event_id = await self.rooms.send(
            requester, m["room_id"], "m.room.redaction", content,
            txn_id=m.get("txn_id"), redacts=m["event_id"], endpoint="redact",
        )
        return json_response({"event_id": event_id})

    async def put_state(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        content = await read_json_object(request)
        m = request.match_info
        event_id = await self.rooms.send_state(
            requester, m["room_id"], m["event_type"], m.get("state_key", ""), content
        )
        return json_response({"event_id": event_id})

    # -- reading ---------------------------------------------------------------------
    async def get_state(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.history.state_events(requester, request.match_info["room_id"]))

    async def get_state_event(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        ids = await self.history.state_ids_visible(requester, m["room_id"])
        event_id = ids.get((m["event_type"], m.get("state_key", "")))
        if event_id is None:
            raise not_found("Event not found")
        row = await self.history.events.get_row(event_id)
        if row is None:
            raise not_found("Event not found")
        ev = json.loads(row.client)
        if request.query.get("format") == "event":
            return json_response(ev)
        return json_response(ev.get("content", {}))

    async def get_event(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        row = await self.history.visible_event(requester, m["room_id"], m["event_id"])
        return json_response(serve_event(row, requester))

    async def context(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        limit = query_int(request, "limit", 10, maximum=100) or 0
        body = await self.history.context(requester, m["room_id"], m["event_id"], limit, parse_filter_param(request))
        return json_response(body)

    async def messages(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        direction = request.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise invalid_param("dir must be 'b' or 'f'")
        room_filter = parse_filter_param(request)
        limit = query_int(request, "limit", 10, maximum=1000) or 0
        if room_filter and isinstance(room_filter.get("limit"), int) and room_filter["limit"] > 0:
            limit = min(limit, room_filter["limit"])
        body = await self.history.messages(
            requester, request.match_info["room_id"],
            from_token=request.query.get("from"), to_token=request.query.get("to"),
            backwards=direction == "b", limit=limit, room_filter=room_filter,
        )
        return json_response(body)

    async def _members_known(self, room_id: str) -> None:
        """A room joined with a partial state: its member list is being
        fetched; wait for it (bounded, as Synapse does), else answer what
        we know."""
        if self.wait_for_members is not None:
            await self.wait_for_members(room_id, MEMBERS_WAIT_S)

    async def members(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self._members_known(request.match_info["room_id"])
        q = request.query
        for name in ("membership", "not_membership"):
            if q.get(name) is not None and q[name] not in ("join", "invite", "knock", "leave", "ban"):
                raise invalid_param(f"{name} must be a membership")
        chunk = await self.history.members(
            requester, request.match_info["room_id"], parse_token(q.get("at"), "at"),
            q.get("membership"), q.get("not_membership"),
        )
        return json_response({"chunk": chunk})

    async def joined_members(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id = request.match_info["room_id"]
        if not await self.store.is_joined(room_id, requester.user_id):
            raise MatrixError(403, "M_FORBIDDEN", "You are not in this room")
        await self._members_known(room_id)
        ids = await self.store.current_state_ids(room_id)
        rows = await self.history.events.get_rows(v for (t, _), v in ids.items() if t == "m.room.member")
        joined: dict[str, Any] = {}
        for row in rows.values():
            if row.membership != "join" or row.state_key is None:
                continue
            content = json.loads(row.client).get("content", {})
            entry: dict[str, Any] = {}
            if isinstance(content.get("displayname"), str):
                entry["display_name"] = content["displayname"]
            if isinstance(content.get("avatar_url"), str):
                entry["avatar_url"] = content["avatar_url"]
            joined[row.state_key] = entry
        return json_response({"joined": joined})

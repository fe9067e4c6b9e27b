"""Room aliases and the public room directory."""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import orjson

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..protocol.power_levels import get_power_level, required_power_level
from ..protocol.identifiers import InvalidIdentifier, parse_room_alias
from ..storage.rooms import RoomStore
from .accounts import Requester
from .room_writer import RoomWriter

SUMMARY_TYPES = (
    "m.room.name", "m.room.topic", "m.room.canonical_alias", "m.room.avatar", "m.room.join_rules",
    "m.room.history_visibility", "m.room.guest_access", "m.room.create",
)
MAX_PUBLIC_ROOMS_PAGE = 500


# Asks another server what room an alias of its names: (alias, server) ->
# {"room_id", "servers"} (raises MatrixError on failure).
RemoteAliasLookup = Callable[[str, str], Awaitable[dict[str, Any]]]
# Asks another server for its public rooms: (server, limit, since, search
# term) -> the publicRooms answer (raises MatrixError on failure).
RemotePublicRooms = Callable[[str, int | None, str | None, str | None], Awaitable[dict[str, Any]]]


class DirectoryService:
    def __init__(self, store: RoomStore, writer: RoomWriter, server_name: str,
                 remote_alias_lookup: RemoteAliasLookup | None = None) -> None:
        self.store = store
        self.writer = writer
        self.server_name = server_name
        self.remote_alias_lookup = remote_alias_lookup
        self.remote_public_rooms: RemotePublicRooms | None = None

    def _local_alias(self, alias: str) -> str:
        try:
            parsed = parse_room_alias(alias)
        except InvalidIdentifier as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        if parsed.server_name != self.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "Alias must be on this server")
        return alias

    # -- aliases -------------------------------------------------------------------
    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        self._local_alias(alias)
        if await self.store.room_version(room_id) is None:
            raise not_found("Room not found")
        if not await self.store.is_joined(room_id, requester.user_id):
            raise forbidden("You must be in the room to give it an alias")
        if not await self.store.create_alias(alias, room_id, requester.user_id, int(time.time() * 1000)):
            raise MatrixError(409, "M_UNKNOWN", f"Room alias {alias} already exists")

    async def resolve_alias(self, alias: str) -> dict[str, Any]:
        try:
            server = parse_room_alias(alias).server_name
        except InvalidIdentifier as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        if server != self.server_name and self.remote_alias_lookup is not None:
            return await self.remote_alias_lookup(alias, server)
        room_id = await self.store.alias_room(alias)
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        return {"room_id": room_id, "servers": [self.server_name]}

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        self._local_alias(alias)
        room_id = await self.store.alias_room(alias)
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        creator = await self.store.alias_creator(alias)
        if creator != requester.user_id and not requester.is_admin:
            state = await self.writer.current_state(room_id) or {}
            rv = self.writer_room_version(state)
            level = get_power_level(requester.user_id, state, rv) if rv else 0
            needed = required_power_level("m.room.canonical_alias", "", state, rv) if rv else 1
            if level < needed:
                raise forbidden("You may not remove this alias")
        await self.store.delete_alias(alias)

    @staticmethod
    def writer_room_version(state: dict[Any, Any]) -> Any:
        return next(iter(state.values())).room_version if state else None

    async def room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        if await self.store.room_version(room_id) is None:
            raise forbidden("You are not in this room")
        if not await self.store.is_joined(room_id, requester.user_id):
            hv = await self.store.current_state_event(room_id, "m.room.history_visibility", "")
            if (hv or {}).get("content", {}).get("history_visibility") != "world_readable":
                raise forbidden("You are not in this room")
        return await self.store.aliases_for_room(room_id)

    # -- published rooms ---------------------------------------------------------------
    async def visibility(self, room_id: str) -> str:
        public = await self.store.is_public(room_id)
        if public is None:
            raise not_found("Room not found")
        return "public" if public else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        if await self.store.is_public(room_id) is None:
            raise not_found("Room not found")
        state = await self.writer.current_state(room_id) or {}
        rv = self.writer_room_version(state)
        if not requester.is_admin:
            if rv is None or not await self.store.is_joined(room_id, requester.user_id):
                raise forbidden("You are not in this room")
            # as Synapse: publishing needs the power to change the canonical alias
            if get_power_level(requester.user_id, state, rv) < required_power_level(
                "m.room.canonical_alias", "", state, rv
            ):
                raise forbidden("You may not change this room's directory visibility")
        await self.store.set_public(room_id, visibility == "public")

    async def public_rooms(self, *, limit: int | None, since: str | None, search: str | None,
                           server: str | None) -> dict[str, Any]:
        if server is not None and server != self.server_name:
            if self.remote_public_rooms is None:
                raise MatrixError(400, "M_UNRECOGNIZED", "Other servers' directories need federation, which is off")
            return await self.remote_public_rooms(server, limit, since, search)
        offset = 0
        if since:
            try:
                offset = int(since.lstrip("o"))
                if offset < 0:
                    raise ValueError
            except ValueError:
                raise invalid_param("Invalid since token") from None
        limit = MAX_PUBLIC_ROOMS_PAGE if limit is None or limit <= 0 else min(limit, MAX_PUBLIC_ROOMS_PAGE)
        rooms = await self._public_room_chunks()
        if search:
            term = search.casefold()
            rooms = [r for r in rooms if any(
                isinstance(r.get(k), str) and term in r[k].casefold()
                for k in ("name", "topic", "canonical_alias", "room_id")
            )]
        total = len(rooms)
        page = rooms[offset: offset + limit]
        out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": total}
        if offset + limit < total:
            out["next_batch"] = f"o{offset + limit}"
        if offset > 0:
            out["prev_batch"] = f"o{max(0, offset - limit)}"
        return out

    async def _public_room_chunks(self) -> list[dict[str, Any]]:
        rows = await self.store.public_room_state(SUMMARY_TYPES)
        counts = await self.store.public_room_member_counts()
        chunks: dict[str, dict[str, Any]] = {
            r["room_id"]: {"room_id": r["room_id"], "num_joined_members": r["n"], "world_readable": False,
                           "guest_can_join": False}
            for r in counts
        }
        for r in rows:
            chunk = chunks.get(r["room_id"])
            if chunk is None:
                continue
            content = orjson.loads(r["client"]).get("content", {})
            _apply_summary(chunk, r["type"], content)
        return sorted(chunks.values(), key=lambda c: (-c["num_joined_members"], c["room_id"]))


def _apply_summary(chunk: dict[str, Any], event_type: str, content: dict[str, Any]) -> None:
    def text(key: str) -> str | None:
        v = content.get(key)
        return v if isinstance(v, str) and v else None

    if event_type == "m.room.name" and text("name"):
        chunk["name"] = text("name")
    elif event_type == "m.room.topic" and text("topic"):
        chunk["topic"] = text("topic")
    elif event_type == "m.room.canonical_alias" and text("alias"):
        chunk["canonical_alias"] = text("alias")
    elif event_type == "m.room.avatar" and text("url"):
        chunk["avatar_url"] = text("url")
    elif event_type == "m.room.join_rules" and text("join_rule"):
        chunk["join_rule"] = text("join_rule")
    elif event_type == "m.room.history_visibility":
        chunk["world_readable"] = content.get("history_visibility") == "world_readable"
    elif event_type == "m.room.guest_access":
        chunk["guest_can_join"] = content.get("guest_access") == "can_join"
    elif event_type == "m.room.create" and text("type"):
        chunk["room_type"] = text("type")

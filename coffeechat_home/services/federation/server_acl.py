"""The rooms' server ACLs applied to requests from other servers
(protocol/server_acl.py has the matching): the resident routes, the PDUs
and room EDUs of /send, and invites to rooms we are in."""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import forbidden
from ...protocol.server_acl import server_allowed
from ...storage.rooms import RoomStore


class ServerAcls:
    def __init__(self, rooms: RoomStore) -> None:
        self.rooms = rooms

    async def acl(self, room_id: str) -> Mapping[str, Any] | None:
        event = await self.rooms.current_state_event(room_id, "m.room.server_acl", "")
        content = event.get("content") if event is not None else None
        return content if isinstance(content, Mapping) else None

    async def allows(self, room_id: str, server_name: str) -> bool:
        return server_allowed(await self.acl(room_id), server_name)

    async def check(self, room_id: str, server_name: str) -> None:
        """403 M_FORBIDDEN when the room's ACL denies the server."""
        if not await self.allows(room_id, server_name):
            raise forbidden(f"{server_name} is denied by the room's server ACL")

"""Room upgrades: POST /rooms/{roomId}/upgrade."""

from __future__ import annotations

import time
from typing import Any

from ..errors import MatrixError, forbidden
from ..protocol.power_levels import can_send
from ..protocol.room_versions import UnsupportedRoomVersion, get_room_version
from ..storage.rooms import RoomStore
from .accounts import Requester
from .rooms import RoomService

# State copied into the replacement room, as Synapse does.
COPIED_STATE = (
    "m.room.name", "m.room.topic", "m.room.avatar", "m.room.join_rules", "m.room.history_visibility",
    "m.room.guest_access", "m.room.encryption", "m.room.server_acl", "m.room.related_groups",
)


class UpgradeService:
    def __init__(self, rooms: RoomService, store: RoomStore) -> None:
        self.rooms = rooms
        self.store = store

    async def upgrade(self, requester: Requester, room_id: str, new_version: str,
                      additional_creators: list[str] | None = None) -> str:
        try:
            rv = get_room_version(new_version)
        except UnsupportedRoomVersion:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"Room version {new_version!r} is not supported") from None
        state = await self.rooms.require_state(room_id)
        old_rv = next(iter(state.values())).room_version
        if not can_send(requester.user_id, "m.room.tombstone", "", state, old_rv):
            raise forbidden("You may not upgrade this room")
        initial_state = [
            {"type": t, "state_key": "", "content": dict(state[(t, "")].content)}
            for t in COPIED_STATE if (t, "") in state
        ]
        pl_event = state.get(("m.room.power_levels", ""))
        old_power: dict[str, Any] = dict(pl_event.content) if pl_event is not None else {}
        power = dict(old_power)
        users = dict(power.get("users") or {})
        if rv.privileged_creators:
            # v12 creators have unbounded power and may not appear in `users`
            for u in [requester.user_id, *(additional_creators or [])]:
                users.pop(u, None)
        else:
            users[requester.user_id] = max(int(users.get(requester.user_id, 0)), 100)
        power["users"] = users
        last_event = (await self.rooms.writer.head(room_id)).extremities[-1]  # type: ignore[union-attr]
        creation: dict[str, Any] = {"predecessor": {"room_id": room_id, "event_id": last_event}}
        if additional_creators:
            if not rv.privileged_creators:
                raise MatrixError(400, "M_BAD_JSON", "additional_creators needs room version 12 or later")
            creation["additional_creators"] = additional_creators
        create = state.get(("m.room.create", ""))
        if create is not None and isinstance(create.content.get("type"), str):
            creation["type"] = create.content["type"]
        public = bool(await self.store.is_public(room_id))
        new_room_id, _ = await self.rooms.create_room(requester, {
            "room_version": rv.identifier,
            "creation_content": creation,
            "initial_state": initial_state,
            "power_level_content_override": power,
            "preset": "private_chat",
            "visibility": "public" if public else "private",
        })
        await self.rooms.send(
            requester, room_id, "m.room.tombstone",
            {"body": "This room has been replaced", "replacement_room": new_room_id}, state_key="",
        )
        await self._move_aliases(requester, room_id, new_room_id, state)
        await self._restrict_old_room(requester, room_id, old_power)
        if public:
            await self.store.set_public(room_id, False)
        return new_room_id

    async def _move_aliases(self, requester: Requester, old: str, new: str, state: Any) -> None:
        canonical = state.get(("m.room.canonical_alias", ""))
        for alias in await self.store.aliases_for_room(old):
            creator = await self.store.alias_creator(alias) or requester.user_id
            await self.store.delete_alias(alias)
            await self.store.create_alias(alias, new, creator, int(time.time() * 1000))
        if canonical is not None and canonical.content:
            await self.rooms.send(requester, new, "m.room.canonical_alias", dict(canonical.content), state_key="")
            try:
                await self.rooms.send(requester, old, "m.room.canonical_alias", {}, state_key="")
            except MatrixError:
                pass  # the old room keeps its alias event if we may not change it

    async def _restrict_old_room(self, requester: Requester, room_id: str, power: dict[str, Any]) -> None:
        pl = dict(power)
        restricted = max(50, int(pl.get("users_default", 0)) + 1)
        pl["events_default"] = max(int(pl.get("events_default", 0)), restricted)
        pl["invite"] = max(int(pl.get("invite", 0)), restricted)
        try:
            await self.rooms.send(requester, room_id, "m.room.power_levels", pl, state_key="")
        except MatrixError:
            pass  # e.g. v12 old room where the upgrader is not allowed to edit levels

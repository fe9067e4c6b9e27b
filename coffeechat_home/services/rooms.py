"""Room use cases: create a room, send messages and state, redact, upgrade."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from ..errors import MatrixError, forbidden, not_found
from ..protocol.power_levels import check_redaction_allowed, get_named_level, get_power_level
from ..protocol.events import Event, StateKey
from ..protocol.identifiers import InvalidIdentifier, parse_room_alias, parse_user_id
from ..protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    RoomVersion,
    UnsupportedRoomVersion,
    get_room_version,
)
from ..storage.event_writes import DuplicateTransaction
from ..storage.events import EventStore
from ..storage.rooms import RoomStore
from .accounts import Requester
from .room_writer import EventCheck, NewRoom, RoomWriter

log = logging.getLogger(__name__)

ProfileLookup = Callable[[str], Awaitable[tuple[str | None, str | None]]]
UserLookup = Callable[[str], Awaitable[bool]]

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}


def default_power_levels(creator: str, rv: RoomVersion, preset: str, invitees: list[str]) -> dict[str, Any]:
    users: dict[str, int] = {} if rv.privileged_creators else {creator: 100}
    if preset == "trusted_private_chat" and not rv.privileged_creators:
        for u in invitees:
            users[u] = 100
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": {"room": 50},
    }


def now_ms() -> int:
    return int(time.time() * 1000)


class RoomService:
    def __init__(
        self,
        writer: RoomWriter,
        events: EventStore,
        rooms: RoomStore,
        server_name: str,
        profile_for: ProfileLookup,
        user_exists: UserLookup,
    ) -> None:
        self.writer = writer
        self.events = events
        # with federation on: sends an invite of a remote user to its
        # server before the event is persisted (services/federation/invites_out.py)
        self.remote_invites: EventCheck | None = None
        self.rooms = rooms
        self.server_name = server_name
        self.profile_for = profile_for
        self.user_exists = user_exists

    # -- helpers ---------------------------------------------------------------
    async def member_content(self, user_id: str, membership: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if membership in ("join", "invite", "knock"):
            displayname, avatar_url = await self.profile_for(user_id)
            if displayname is not None:
                content["displayname"] = displayname
            if avatar_url is not None:
                content["avatar_url"] = avatar_url
        if extra:
            content.update(extra)
        return content

    async def require_state(self, room_id: str) -> dict[StateKey, Event]:
        state = await self.writer.current_state(room_id)
        if state is None:
            raise not_found("Room not found")
        return state

    # -- createRoom ------------------------------------------------------------
    async def create_room(self, requester: Requester, body: Mapping[str, Any]) -> tuple[str, str | None]:
        """Returns (room id, alias or None)."""
        creator = requester.user_id
        version_id = body.get("room_version", DEFAULT_ROOM_VERSION.identifier)
        try:
            rv = get_room_version(version_id)
        except UnsupportedRoomVersion:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"Room version {version_id!r} is not supported") from None
        visibility = body.get("visibility", "private")
        preset = body.get("preset") or ("public_chat" if visibility == "public" else "private_chat")
        invitees = list(dict.fromkeys(body.get("invite") or []))
        for u in invitees:
            try:
                parse_user_id(u)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_PARAM", f"invite: {e}") from None
            if u.split(":", 1)[1] != self.server_name:
                if self.remote_invites is None:
                    raise MatrixError(400, "M_UNRECOGNIZED", "Inviting users on other servers needs federation, "
                                      "which is off on this server")
                continue
            # as /invite answers: checked before anything is created
            if not await self.user_exists(u):
                raise not_found(f"invite: user {u} not found")
        alias = None
        if body.get("room_alias_name") is not None:
            alias = f"#{body['room_alias_name']}:{self.server_name}"
            try:
                parse_room_alias(alias)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_PARAM", f"room_alias_name: {e}") from None
            if await self.rooms.alias_room(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        create_content: dict[str, Any] = dict(body.get("creation_content") or {})
        create_content["room_version"] = rv.identifier
        if not rv.implicit_room_creator:
            create_content["creator"] = creator
        else:
            create_content.pop("creator", None)
        if rv.privileged_creators and preset == "trusted_private_chat" and invitees:
            extra = list(create_content.get("additional_creators") or [])
            create_content["additional_creators"] = list(dict.fromkeys(extra + invitees))

        def state(t: str, content: Mapping[str, Any], key: str = "") -> dict[str, Any]:
            return {"type": t, "state_key": key, "sender": creator, "content": dict(content)}

        templates: list[dict[str, Any]] = [
            state("m.room.create", create_content),
            state("m.room.member", await self.member_content(creator, "join"), creator),
        ]
        pl = default_power_levels(creator, rv, preset, invitees)
        override = body.get("power_level_content_override")
        if override:
            pl.update(copy.deepcopy(dict(override)))
        templates.append(state("m.room.power_levels", pl))
        if alias:
            templates.append(state("m.room.canonical_alias", {"alias": alias}))
        p = PRESETS[preset]
        initial = {(e["type"], e.get("state_key", "")): e for e in body.get("initial_state") or []}
        for t, key, content in (
            ("m.room.join_rules", "", {"join_rule": p["join_rule"]}),
            ("m.room.history_visibility", "", {"history_visibility": p["history_visibility"]}),
            ("m.room.guest_access", "", {"guest_access": p["guest_access"]}),
        ):
            if (t, key) not in initial:
                templates.append(state(t, content, key))
        for (t, key), given in initial.items():
            if t in ("m.room.create", "m.room.power_levels", "m.room.member"):
                continue
            templates.append(state(t, given.get("content") or {}, key))
        if body.get("name") is not None:
            templates.append(state("m.room.name", {"name": body["name"]}))
        if body.get("topic") is not None:
            templates.append(
                state("m.room.topic", {"topic": body["topic"],
                                       "m.topic": {"m.text": [{"body": body["topic"], "mimetype": "text/plain"}]}})
            )
        is_direct = bool(body.get("is_direct"))
        direct: dict[str, Any] | None = {"is_direct": True} if is_direct else None
        remote = [u for u in invitees if u.split(":", 1)[1] != self.server_name]
        for u in invitees:
            if u not in remote:
                templates.append(state("m.room.member", await self.member_content(u, "invite", direct), u))
        result = await self.writer.send(
            None, templates, room_version=rv, new_room=NewRoom(creator, visibility == "public")
        )
        room_id = result.events[0].room_id
        for u in remote:  # each through the invitee's server; a refusal does not undo the room
            try:
                await self.send(requester, room_id, "m.room.member", await self.member_content(u, "invite", direct),
                                state_key=u, check=self.remote_invites)
            except MatrixError as e:
                log.info("createRoom %s: the invite of %s failed: %s", room_id, u, e)
        if alias:
            await self.rooms.create_alias(alias, room_id, creator, now_ms())
        return room_id, alias

    # -- sending ---------------------------------------------------------------
    async def send(
        self,
        requester: Requester,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
        redacts: str | None = None,
        endpoint: str = "send",
        check: EventCheck | None = None,
    ) -> str:
        # A repeated transaction id is caught by the persist transaction
        # (unique key), which saves a lookup on every send.
        template: dict[str, Any] = {"type": event_type, "sender": requester.user_id, "content": dict(content)}
        if state_key is not None:
            template["state_key"] = state_key
        if redacts is not None:
            template["redacts"] = redacts
            check = self._redaction_check
            head = await self.writer.head(room_id)
            if head is not None and not head.room_version.redacts_in_content:
                # before v11 `redacts` lives at the top level only
                template["content"].pop("redacts", None)
        txn = (requester.user_id, requester.device_id, txn_id, endpoint) if txn_id is not None else None
        try:
            result = await self.writer.send(room_id, [template], txn=txn, check=check, guard=requester.write_guard)
        except DuplicateTransaction:
            existing = await self.events.event_for_txn(
                requester.user_id, requester.device_id, txn_id or "", endpoint
            )
            if existing is None:
                raise
            return existing
        return result.events[0].event_id

    async def _redaction_check(self, event: Event, state: Mapping[StateKey, Event]) -> None:
        assert event.redacts is not None
        pdus = await self.events.get_pdus([event.redacts])
        row = await self.events.get_row(event.redacts)
        if row is None or row.room_id != event.room_id or event.redacts not in pdus:
            raise not_found("Event to redact not found")
        original = Event(pdus[event.redacts], event.redacts, event.room_version)
        if original.sender == event.sender:
            return
        # A client may redact others' events only with the redact level
        # (spec: PUT /redact). check_redaction_allowed's same-server branch
        # is the federation rule; every local user shares our server name.
        rv = event.room_version
        if get_power_level(event.sender, state, rv) < get_named_level("redact", state, rv):
            raise forbidden("You don't have permission to redact this event")
        if not check_redaction_allowed(event, original, state):
            raise forbidden("You don't have permission to redact this event")

    async def send_state(
        self, requester: Requester, room_id: str, event_type: str, state_key: str, content: Mapping[str, Any]
    ) -> str:
        if event_type == "m.room.member":
            # Membership goes through the membership rules (profile fields ...).
            raise MatrixError(400, "M_BAD_JSON", "Use the membership endpoints to change membership")
        if event_type == "m.room.create":
            raise forbidden("The create event cannot be replaced")
        state = await self.require_state(room_id)
        current = state.get((event_type, state_key))
        if current is not None and dict(current.content) == dict(content) and current.sender == requester.user_id:
            return current.event_id  # unchanged: no new event (as Synapse does)
        if event_type == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        return await self.send(requester, room_id, event_type, content, state_key=state_key)

    async def _check_canonical_alias(self, room_id: str, content: Mapping[str, Any]) -> None:
        aliases = []
        if content.get("alias") is not None:
            aliases.append(content["alias"])
        aliases.extend(content.get("alt_aliases") or [])
        for a in aliases:
            if not isinstance(a, str):
                raise MatrixError(400, "M_INVALID_PARAM", "Aliases must be strings")
            try:
                parse_room_alias(a)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
            if a.endswith(":" + self.server_name) and await self.rooms.alias_room(a) != room_id:
                raise MatrixError(400, "M_BAD_ALIAS", f"{a} does not point to this room")

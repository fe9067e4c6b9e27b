"""Invites of our users from other servers
(``PUT /_matrix/federation/v2/invite/{roomId}/{eventId}``).

The invite is checked (format, signatures of the inviting server, content
hash, our user invited, a room version we support), signed by us and
returned; when none of our users is in the room it is stored as an outlier
with a membership row (so the invitee's /sync shows it in ``invite``) and
the stripped room state the inviting server sent. Accepting joins through
the inviting server; rejecting leaves through it (remote_rooms.py).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from ...errors import MatrixError, forbidden
from ...protocol.errors import ProtocolError
from ...protocol.events import Event
from ...protocol.identifiers import InvalidIdentifier, parse_user_id
from ...protocol.pdu import check_pdu_format, check_received_pdu
from ...protocol.room_versions import UnsupportedRoomVersion, get_room_version
from ...protocol.signing import SigningKey, sign_event
from ...storage.events import EventStore
from ...storage.federation_inbound import FederationInboundStore
from ..notifier import Notifier
from ..persister import EventContext, NewEvent, NewRoom, Persister
from ..server_keys import KeyStore, KeyUnavailable
from .server_acl import ServerAcls

MAX_STRIPPED_STATE = 50


class InviteReceiver:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        events: EventStore,
        persister: Persister,
        key_store: KeyStore,
        store: FederationInboundStore,
        notifier: Notifier,
        user_exists: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.events = events
        self.persister = persister
        self.key_store = key_store
        self.store = store
        self.notifier = notifier
        self.user_exists = user_exists
        self.acls: ServerAcls | None = None

    async def on_invite(self, origin: str, room_id: str, event_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping) or not isinstance(body.get("event"), Mapping):
            raise MatrixError(400, "M_BAD_JSON", "The body must hold the invite event")
        try:
            rv = get_room_version(str(body.get("room_version")))
        except UnsupportedRoomVersion:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "This server does not support the room's version",
                              room_version=body.get("room_version")) from None
        pdu = body["event"]
        try:
            check_pdu_format(pdu, rv)
            received = check_received_pdu(pdu, rv, await self.key_store.key_lookup_for_pdu(pdu, rv))
        except ProtocolError as e:
            raise forbidden(f"The invite event was refused: {e}") from None
        except KeyUnavailable as e:
            raise forbidden(f"The invite's signature cannot be checked: {e}") from None
        ev = received.event
        if ev.event_id != event_id or ev.room_id != room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "The event id or room id does not match the path")
        if ev.type != "m.room.member" or ev.membership != "invite" or not isinstance(ev.state_key, str):
            raise MatrixError(400, "M_INVALID_PARAM", "The event is not an invite")
        try:
            invitee_server = parse_user_id(ev.state_key).server_name
            sender_server = parse_user_id(ev.sender).server_name
        except InvalidIdentifier as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        if invitee_server != self.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "The invitee is not a user of this server")
        if sender_server != origin:
            raise forbidden("The invite's sender is not on the requesting server")
        if self.acls is not None:  # a room we are in: its server ACL
            await self.acls.check(room_id, origin)
        if not await self.user_exists(ev.state_key):
            raise MatrixError(404, "M_NOT_FOUND", "No such user")
        signed = sign_event(dict(ev.pdu), self.server_name, self.signing_key, rv)
        event = Event(signed, ev.event_id, rv)
        if not await self.store.has_joined_member_of(room_id, self.server_name):
            stripped = body.get("invite_room_state")
            state = [e for e in stripped if isinstance(e, Mapping)][:MAX_STRIPPED_STATE] \
                if isinstance(stripped, list) else []
            creator = next((e.get("sender") for e in state if e.get("type") == "m.room.create"), ev.sender)
            known = await self.events.room_version(room_id)
            new_room = None if known is not None else NewRoom(creator=str(creator), is_public=False)
            result = await self.persister.persist(
                room_id, [NewEvent(event, EventContext(outlier=True))], room_version=rv, new_room=new_room
            )
            if result.stored[0]:
                await self.store.record_outlier_membership(event, state)
                self.notifier.poke()
        return {"event": signed}

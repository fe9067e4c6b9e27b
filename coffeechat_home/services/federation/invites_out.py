"""Inviting a user of another server to one of our rooms: the invite event
we built goes to the invitee's server (``PUT /_matrix/federation/v2/invite``
with stripped room state); it answers the event with its own signature,
which we check and keep before the event is persisted (and then sent to
the room's other servers by the sender)."""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from ...errors import MatrixError, forbidden
from ...federation.client import FederationClient, RemoteError, Unreachable, FederationError
from ...protocol.errors import InvalidSigningKey, ProtocolError, SignatureError
from ...protocol.events import Event, StateKey
from ...protocol.hashing import compute_event_id
from ..server_keys import KeyStore, KeyUnavailable
from .resident import server_of

STRIPPED_TYPES = (
    "m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.canonical_alias",
    "m.room.encryption", "m.room.topic",
)


def stripped_state(state: Mapping[StateKey, Event], sender: str) -> list[dict[str, Any]]:
    out = []
    for key in [(t, "") for t in STRIPPED_TYPES] + [("m.room.member", sender)]:
        e = state.get(key)
        if e is not None:
            out.append({"type": e.type, "state_key": e.state_key, "content": dict(e.content), "sender": e.sender})
    return out


class OutboundInvites:
    def __init__(self, client: FederationClient, key_store: KeyStore, server_name: str) -> None:
        self.client = client
        self.key_store = key_store
        self.server_name = server_name

    async def __call__(self, event: Event, state: Mapping[StateKey, Event]) -> None:
        """An EventCheck for the room writer: run on a built invite of a
        remote user, before it is persisted."""
        if event.type != "m.room.member" or event.membership != "invite" or event.state_key is None:
            return
        destination = server_of(event.state_key)
        if destination == self.server_name:
            return
        rv = event.room_version
        pdu = {k: v for k, v in event.pdu.items() if k != "unsigned"}
        body = {"event": pdu, "room_version": rv.identifier, "invite_room_state": stripped_state(state, event.sender)}
        path = f"/_matrix/federation/v2/invite/{quote(event.room_id, safe='')}/{quote(event.event_id, safe='')}"
        try:
            answer = await self.client.put_json(destination, path, body)
        except RemoteError as e:
            if e.status in (400, 403):
                raise forbidden(f"{destination} refused the invite: {e}") from None
            raise MatrixError(502, "M_UNKNOWN", f"{destination} could not take the invite: {e}") from None
        except (Unreachable, FederationError) as e:
            raise MatrixError(502, "M_UNKNOWN", f"Cannot reach {destination}: {e}") from None
        signed = answer.get("event") if isinstance(answer, Mapping) else None
        if not isinstance(signed, Mapping):
            raise MatrixError(502, "M_UNKNOWN", f"{destination} answered the invite without the event")
        try:
            if compute_event_id(signed, rv) != event.event_id:
                raise MatrixError(502, "M_UNKNOWN", f"{destination} changed the invite event")
            await self.key_store.verify_event_signature(signed, destination, rv, event.origin_server_ts)
        except (SignatureError, KeyUnavailable, InvalidSigningKey, ProtocolError) as e:
            raise MatrixError(502, "M_UNKNOWN", f"{destination}'s signature on the invite: {e}") from None
        theirs = signed["signatures"][destination]
        sigs = event.pdu["signatures"]
        assert isinstance(sigs, dict)
        sigs[destination] = dict(theirs)

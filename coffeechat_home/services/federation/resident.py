"""The resident server's side of a room: remote servers join, knock on and
leave our rooms (make_join / send_join, make_knock / send_knock, make_leave /
send_leave) and read its events
(event, state, state_ids, event_auth, backfill, get_missing_events).

Reads are answered only to servers with a joined member in the room now,
or for rooms whose history is ``world_readable``; the events a server could
not see by the room's history visibility (visibility.py) are served in their
redacted form.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import orjson

from ...errors import MatrixError, forbidden, not_found
from ...protocol.errors import ProtocolError
from ...protocol.events import Event, StateKey, auth_types_for_event
from ...protocol.identifiers import InvalidIdentifier, parse_user_id
from ...protocol.pdu import check_pdu_format
from ...protocol.restricted import AUTHORISING_USER, allowed_room_ids, is_restricted, local_authorisers
from ...protocol.room_versions import RoomVersion, get_room_version
from ...protocol.signing import SigningKey, sign_event
from ...storage.events import EventStore
from ...storage.federation_queue import FederationQueueStore
from ...storage.rooms import RoomStore
from ..persister import EventContext, NewEvent, Persister
from ..room_writer import RoomWriter
from ..server_keys import KeyStore
from .server_acl import ServerAcls
from .events_in import bad_json, check_auth_against, check_pdu, state_before
from .visibility import filter_for_server

MAX_BACKFILL = 100
HEROES = 5  # m.heroes of a room summary (services/sync_rooms.py)
MAX_MISSING = 50


def server_of(user_id: str) -> str:
    try:
        return parse_user_id(user_id).server_name
    except InvalidIdentifier as e:
        raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user id: {e}") from None


class ResidentService:
    def __init__(
        self,
        events: EventStore,
        persister: Persister,
        writer: RoomWriter,
        queue: FederationQueueStore,
        key_store: KeyStore,
        server_name: str,
        signing_key: SigningKey,
    ) -> None:
        self.signing_key = signing_key  # countersigns restricted joins we authorise
        self.events = events
        self.persister = persister
        self.writer = writer
        self.queue = queue
        self.key_store = key_store
        self.server_name = server_name
        self.acls: ServerAcls | None = None  # the rooms' server ACLs, when set

    async def check_acl(self, origin: str, room_id: str) -> None:
        if self.acls is not None:
            await self.acls.check(room_id, origin)

    async def room_version(self, room_id: str) -> RoomVersion:
        version = await self.events.room_version(room_id)
        if version is None:
            raise not_found(f"Unknown room {room_id}")
        return get_room_version(version)

    # -- joins and leaves ---------------------------------------------------------------
    async def make_membership(
        self, origin: str, room_id: str, user_id: str, membership: str, versions: list[str]
    ) -> dict[str, Any]:
        if server_of(user_id) != origin:
            raise forbidden("The user is not on the requesting server")
        rv = await self.room_version(room_id)
        await self.check_acl(origin, room_id)
        if membership in ("join", "knock") and rv.identifier not in versions:
            raise MatrixError(
                400, "M_INCOMPATIBLE_ROOM_VERSION",
                f"The room has version {rv.identifier}, which the server does not support",
                room_version=rv.identifier,
            )
        head = await self.writer.head(room_id)
        if head is None:
            raise not_found(f"Unknown room {room_id}")
        state = await self.writer.current_state(room_id) or {}
        member = state.get(("m.room.member", user_id))
        current = member.membership if member is not None else None
        if current == "ban":
            raise forbidden("The user is banned from the room")
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            rules = state.get(("m.room.join_rules", ""))
            rule = rules.content.get("join_rule") if rules is not None else "invite"
            if rule != "public" and current not in ("invite", "join"):
                if not is_restricted(state, rv):
                    raise forbidden(f"The room's join rule is {rule!r} and the user is not invited")
                content[AUTHORISING_USER] = await self.restricted_authoriser(state, rv, user_id)
        elif membership == "knock":
            rules = state.get(("m.room.join_rules", ""))
            rule = rules.content.get("join_rule") if rules is not None else "invite"
            if not ((rule == "knock" and rv.knock_join_rule)
                    or (rule == "knock_restricted" and rv.knock_restricted_join_rule)):
                raise forbidden(f"The room's join rule is {rule!r}: knocking is not allowed")
            if current in ("invite", "join"):
                raise forbidden(f"The user's membership is already {current!r}")
        elif current not in ("invite", "join", "knock"):
            raise forbidden("The user is not in the room")
        head = await self.writer.head(room_id)
        assert head is not None
        keys = auth_types_for_event(rv, "m.room.member", user_id, user_id, content)
        ids = {k: e.event_id for k, e in state.items()}
        event = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "origin": origin,
            "origin_server_ts": int(time.time() * 1000),
            "depth": head.depth + 1,
            "prev_events": head.extremities[-10:],
            "auth_events": [ids[k] for k in keys if k in ids],
        }
        return {"event": event, "room_version": rv.identifier}

    async def restricted_authoriser(self, state: Mapping[StateKey, Event], rv: RoomVersion, user_id: str) -> str:
        """The user of ours who authorises ``user_id``'s join to a
        restricted room: 403 when the user is in none of the allowed rooms
        (by our current state), 400 M_UNABLE_TO_AUTHORISE_JOIN when we are
        not in every allowed room ourselves (another server may know the
        user there), 400 M_UNABLE_TO_GRANT_JOIN when no user of ours may
        invite (the joining server tries another resident)."""
        allowed = allowed_room_ids(state)
        user_in, host_in = await self.queue.joined_in_rooms(allowed, user_id)
        if not user_in:
            if any(r not in host_in for r in allowed):
                raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN",
                                  "This server cannot tell whether the user is in the rooms that allow joining")
            raise forbidden("The user is not in any of the rooms that allow joining this room")
        authorisers = local_authorisers(state, self.server_name, rv)
        if not authorisers:
            raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN",
                              "No user of this server can invite to the room: try another server")
        return authorisers[0]

    async def _countersign(self, pdu: Mapping[str, Any], room_id: str, rv: RoomVersion) -> Mapping[str, Any]:
        """A join naming one of our users in ``join_authorised_via_users_server``:
        still allowed by our current state, then signed by us (the auth rules
        and every other server want our signature on it)."""
        content = pdu.get("content")
        if not (rv.restricted_join_rule and isinstance(content, Mapping) and AUTHORISING_USER in content
                and content.get("membership") == "join"):
            return pdu
        via, user_id = content.get(AUTHORISING_USER), pdu.get("state_key")
        if not isinstance(via, str) or not isinstance(user_id, str):
            raise bad_json(f"{AUTHORISING_USER} and state_key must be user ids")
        if server_of(via) != self.server_name:
            raise bad_json(f"{AUTHORISING_USER} is not a user of this server: ask its server")
        state = await self.writer.current_state(room_id) or {}
        member = state.get(("m.room.member", user_id))
        if (member is None or member.membership not in ("invite", "join")) and is_restricted(state, rv):
            await self.restricted_authoriser(state, rv, user_id)  # raises when no longer allowed
        try:
            check_pdu_format(pdu, rv)
            sigs = pdu.get("signatures")
            theirs = {k: v for k, v in sigs.items() if k != self.server_name} if isinstance(sigs, Mapping) else {}
            return sign_event({**pdu, "signatures": theirs}, self.server_name, self.signing_key, rv)
        except (ProtocolError, ValueError, TypeError, KeyError) as e:
            raise bad_json(f"Invalid event: {e}") from None

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str
    ) -> tuple[Event, dict[StateKey, str]]:
        """Check a join or leave signed by ``origin``, persist it and mark
        it for relay to the other servers in the room. A restricted join
        authorised by one of our users gets our signature first."""
        rv = await self.room_version(room_id)
        await self.check_acl(origin, room_id)
        if membership == "join" and isinstance(pdu, Mapping):
            pdu = await self._countersign(pdu, room_id, rv)
        event = await check_pdu(self.key_store, pdu, rv)
        if event.event_id != event_id:
            raise bad_json("The event id in the path is not the event's")
        if event.room_id != room_id:
            raise bad_json("The event is for another room")
        if event.type != "m.room.member" or event.membership != membership or event.state_key != event.sender:
            raise bad_json(f"Expected an m.room.member {membership} event of its sender")
        if server_of(event.sender) != origin:
            raise forbidden("The event's sender is not on the requesting server")
        before = await state_before(self.events, event)
        await check_auth_against(self.events, event, before)
        known = await self.events.stored_info([event.event_id])
        if event.event_id not in known or known[event.event_id].outlier:
            await self.queue.add_relay(event.event_id, room_id, int(time.time() * 1000))
            await self.persister.persist(room_id, [NewEvent(event, EventContext(state_before=before))])
        return event, before

    async def knock_answer(self, event: Event) -> dict[str, Any]:
        """Stripped state for the knocking user to identify the room by."""
        from .invites_out import stripped_state  # (it imports this module)

        state = await self.writer.current_state(event.room_id) or {}
        return {"knock_room_state": stripped_state(state, event.sender)}

    async def join_answer(
        self, event: Event, before: Mapping[StateKey, str], *, omit_members: bool = False
    ) -> dict[str, Any]:
        """The send_join answer: the state before the join and the auth
        chain of the join and of that state (the state events themselves
        only where another one's chain reaches them). ``omit_members`` (the
        joiner asked for it, send_join v2): the state without membership
        events except the joiner's own and, in a room with neither a name
        nor a canonical alias, those of the room's heroes; the auth chain
        without the events already in ``state``; the joiner gets the other
        members later (/state_ids, /state)."""
        rv = event.room_version
        if omit_members:
            state_ids = [i for k, i in before.items() if k[0] != "m.room.member"]
            keep = {event.sender, *await self._heroes(event, before)}
            state_ids += [before[("m.room.member", u)] for u in keep if ("m.room.member", u) in before]
        else:
            state_ids = list(before.values())
        chain, _ = await self.events.auth_chain_events(state_ids, rv, include_given=False)
        # the join's own auth events with their chains (e.g. a restricted
        # join's authorising member, a membership omitted from ``state``)
        chain.update((await self.events.auth_chain_events(event.auth_event_ids, rv))[0])
        if omit_members:
            for i in state_ids:
                chain.pop(i, None)
        state_pdus = await self.events.get_pdus(state_ids)
        return {
            "origin": self.server_name,
            "state": [_out(state_pdus[i]) for i in state_ids if i in state_pdus],
            "auth_chain": [_out(e.pdu) for e in chain.values()],
            "event": _out(event.pdu),
            "members_omitted": omit_members,
            "servers_in_room": await self.queue.allowed_servers_in_room(event.room_id),  # not those its ACL denies
        }

    async def _heroes(self, event: Event, before: Mapping[StateKey, str]) -> list[str]:
        """The room's heroes for the joiner (as /sync's summary names them)
        when the state before the join has neither a name nor a canonical
        alias; none otherwise."""
        if ("m.room.name", "") in before or ("m.room.canonical_alias", "") in before:
            return []
        summary = (await RoomStore(self.events.db).member_summaries([event.room_id], HEROES + 1)).get(event.room_id)
        if summary is None:
            return []
        _, _, joined, invited = summary
        heroes = [u for u in joined if u != event.state_key][:HEROES]
        heroes += [u for u in invited if u != event.state_key][:HEROES - len(heroes)]
        return heroes

    # -- reads ---------------------------------------------------------------------
    async def check_may_read(self, origin: str, room_id: str) -> RoomVersion:
        rv = await self.room_version(room_id)
        await self.check_acl(origin, room_id)
        if await self.queue.server_in_room(room_id, origin):
            return rv
        state = await self.writer.current_state(room_id) or {}
        vis = state.get(("m.room.history_visibility", ""))
        if vis is not None and vis.content.get("history_visibility") == "world_readable":
            return rv
        raise forbidden(f"{origin} has no member in the room")

    async def event_of_room(self, origin: str, event_id: str, room_id: str | None = None) -> Event:
        info = (await self.events.stored_info([event_id])).get(event_id)
        if info is None or (room_id is not None and info.room_id != room_id):
            raise not_found(f"Unknown event {event_id}")
        rv = await self.check_may_read(origin, info.room_id)
        pdus = await self.events.get_pdus([event_id])
        if event_id not in pdus:
            raise not_found(f"Unknown event {event_id}")
        return Event(pdus[event_id], event_id, rv)

    async def state_at(self, origin: str, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        """State ids before the event and the ids of their auth chain."""
        event = await self.event_of_room(origin, event_id, room_id)
        try:
            before = await state_before(self.events, event)
        except MatrixError:  # a prev event we only hold as an outlier (a gap we filled)
            before = await self._state_before_from_group(event)
        ids = list(before.values())
        chain, _ = await self.events.auth_chain_events(ids, event.room_version)
        return ids, list(chain)

    async def visible_pdus(self, origin: str, events: list[Event]) -> list[dict[str, Any]]:
        """``events`` as ``origin`` may see them (history visibility)."""
        return [_out(p) for p in await filter_for_server(self.events, origin, events)]

    async def _state_before_from_group(self, event: Event) -> dict[StateKey, str]:
        """The state before an event of the DAG from the state after it (its
        state group): the same, except for the event's own key, which held
        the state it replaced (``unsigned.replaces_state``) or nothing."""
        info = (await self.events.stored_info([event.event_id])).get(event.event_id)
        if info is None or info.outlier or info.state_group is None:
            raise not_found(f"No state is known at {event.event_id}")
        state = await self.events.state_ids_for_group(info.state_group)
        if event.is_state and not info.rejected:
            row = await self.events.get_row(event.event_id)
            unsigned = orjson.loads(row.client).get("unsigned") if row is not None else None
            replaced = unsigned.get("replaces_state") if isinstance(unsigned, dict) else None
            if isinstance(replaced, str):
                state[event.state_tuple] = replaced
            else:
                state.pop(event.state_tuple, None)
        return state

    async def pdus(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        found = await self.events.get_pdus(list(ids))
        return [_out(p) for p in found.values()]

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> list[dict[str, Any]]:
        event = await self.event_of_room(origin, event_id, room_id)
        chain, _ = await self.events.auth_chain_events(event.auth_event_ids, event.room_version)
        return [_out(e.pdu) for e in chain.values()]

    async def backfill(self, origin: str, room_id: str, starts: list[str], limit: int) -> list[dict[str, Any]]:
        """Events from ``starts`` backwards through prev_events, deepest
        first (DAG order), at most ``limit``."""
        rv = await self.check_may_read(origin, room_id)
        limit = max(0, min(limit, MAX_BACKFILL))
        found = await self._walk(room_id, rv, starts, set(), limit, include_starts=True)
        return await self.visible_pdus(origin, found)

    async def missing_events(
        self, origin: str, room_id: str, earliest: list[str], latest: list[str], limit: int, min_depth: int
    ) -> list[dict[str, Any]]:
        rv = await self.check_may_read(origin, room_id)
        limit = max(0, min(limit, MAX_MISSING))
        found = await self._walk(room_id, rv, latest, set(earliest), limit, include_starts=False,
                                 min_depth=min_depth)
        found.reverse()  # oldest first
        return await self.visible_pdus(origin, found)

    async def _walk(
        self, room_id: str, rv: RoomVersion, starts: list[str], stop: set[str], limit: int, *,
        include_starts: bool, min_depth: int = 0,
    ) -> list[Event]:
        seen: set[str] = set(stop)
        out: list[Event] = []
        if include_starts:
            ids = [s for s in starts if s not in seen]
        else:
            seen.update(starts)
            ids = []
            for eid, p in (await self.events.get_pdus(starts)).items():
                ids.extend(x for x in Event(p, eid, rv).prev_event_ids if x not in seen and x not in ids)
        seen.update(ids)
        frontier = {k: Event(p, k, rv) for k, p in (await self.events.get_pdus(ids)).items()}
        for _ in range(4 * limit + 10):
            if not frontier or len(out) >= limit:
                break
            # deepest first
            best = max(frontier.values(), key=lambda e: (e.depth, e.event_id))
            del frontier[best.event_id]
            if best.room_id != room_id or best.depth < min_depth:
                continue
            out.append(best)
            new = [p for p in best.prev_event_ids if p not in seen]
            seen.update(new)
            if new:
                for k, p in (await self.events.get_pdus(new)).items():
                    frontier[k] = Event(p, k, rv)
        return out


def _out(pdu: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pdu.items() if k not in ("unsigned", "event_id")}

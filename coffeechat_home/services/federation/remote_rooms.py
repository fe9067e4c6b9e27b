"""Our users in rooms that live on other servers: joining a remote room
through a resident server (``make_join`` then ``send_join/v2``); knocking
(``make_knock``, ``send_knock``) and leaving (``make_leave``, ``send_leave``)
likewise.

The answer of ``send_join`` is checked before anything counts: every PDU
with ``check_received_pdu`` (keys through the key store), the state and auth
chain with ``check_auth_chain``, and the join against that state. The state
and auth chain are persisted as outliers and the join on top of the state
through the persister, so the room shows in /sync with its state.

Partial-state joins (MSC3706, ``federation.partial_state_joins``): for a
room with no events of ours in the DAG yet, ``send_join`` is asked with
``omit_members=true``; when the resident omitted the members, the join is
persisted on the partial state it sent (checked as above; the join is
checked against that state plus its own auth events) and the room is
recorded as partial in the same transaction. /join answers then; the
resync worker (partial_state.py) completes the state afterwards.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import orjson

from ...errors import MatrixError, forbidden
from ...federation.client import FederationClient, FederationError, RemoteError
from ...protocol.auth import AuthError, auth_state_from_events, check_auth_rules
from ...protocol.auth_chain import check_auth_chain
from ...protocol.builder import build_event
from ...protocol.errors import ProtocolError
from ...protocol.events import Event, StateKey
from ...protocol.identifiers import InvalidIdentifier, parse_room_id
from ...protocol.pdu import check_pdu_format, check_received_pdu
from ...protocol.restricted import AUTHORISING_USER
from ...protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, UnsupportedRoomVersion, get_room_version
from ...protocol.signing import SigningKey
from ...storage.events import EventStore
from ...storage.federation_inbound import FederationInboundStore
from ...storage.partial_state import record_partial_room
from ..persister import EventContext, NewEvent, NewRoom, Persister
from ..server_keys import KeyStore, KeyUnavailable

log = logging.getLogger(__name__)

MAX_SERVERS_TRIED = 5
MAX_STRIPPED_STATE = 50
MAX_SERVERS_IN_ROOM = 1000  # of a send_join answer's servers_in_room, kept for a partial-state room
# make_join / send_join errors of a restricted room after which another
# resident server may succeed (server-server spec, make_join 400)
RESTRICTED_RETRY = ("M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN")


class RemoteRooms:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        events: EventStore,
        persister: Persister,
        key_store: KeyStore,
        client: FederationClient,
        inbound: FederationInboundStore,
    ) -> None:
        self.inbound = inbound
        self.server_name = server_name
        self.signing_key = signing_key
        self.events = events
        self.persister = persister
        self.key_store = key_store
        self.client = client
        # partial-state joins (config federation.partial_state_joins), and
        # what to call once such a join committed (the resync worker's kick)
        self.partial_state_joins = False
        self.partial_joined: list[Callable[[str], None]] = []
        self.partial_joins = 0  # joins persisted on a partial state, for tests and metrics

    @staticmethod
    def candidate_servers(room_id: str, via: Sequence[str], own: str) -> list[str]:
        """The servers to ask: ``via`` first, then the room id's server (room
        ids before v12 name one)."""
        out = [s for s in via if s != own]
        try:
            domain = parse_room_id(room_id).server_name
        except (InvalidIdentifier, AttributeError):
            domain = None
        if isinstance(domain, str) and domain and domain != own and domain not in out:
            out.append(domain)
        return out[:MAX_SERVERS_TRIED]

    async def join(self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]) -> str:
        if not servers:
            raise MatrixError(404, "M_NOT_FOUND", "No known servers for this room")
        errors: list[str] = []
        restricted: RemoteError | None = None  # a resident that could not let the user into a restricted room
        for server in servers:
            try:
                await self._join_via(server, user_id, room_id, content)
                return room_id
            except RemoteError as e:
                if e.status == 403:
                    raise forbidden(f"{server} refused the join: {e.error}") from None
                if e.errcode in RESTRICTED_RETRY:  # another resident may be able to: try the next one
                    restricted = e
                errors.append(f"{server}: {e}")
            except (FederationError, _BadAnswer) as e:
                errors.append(f"{server}: {e}")
        if restricted is not None and restricted.errcode is not None:  # passed through to the client (spec)
            raise MatrixError(400, restricted.errcode, "; ".join(errors)[:500])
        raise MatrixError(502, "M_UNKNOWN", "Could not join through any server: " + "; ".join(errors)[:500])

    async def _join_via(self, server: str, user_id: str, room_id: str, content: Mapping[str, Any]) -> None:
        vers = "&".join(f"ver={v}" for v in KNOWN_ROOM_VERSIONS)
        path = f"/_matrix/federation/v1/make_join/{quote(room_id, safe='')}/{quote(user_id, safe='')}?{vers}"
        t0 = time.perf_counter()
        answer = await self.client.get_json(server, path)
        t1 = time.perf_counter()
        if not isinstance(answer, Mapping) or not isinstance(answer.get("event"), Mapping):
            raise _BadAnswer("make_join answer without an event")
        try:
            rv = get_room_version(str(answer.get("room_version", "1")))
        except UnsupportedRoomVersion:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", "The room's version is not supported") from None
        tpl = answer["event"]
        prev, auth, depth = tpl.get("prev_events"), tpl.get("auth_events"), tpl.get("depth")
        if not isinstance(prev, list) or not isinstance(auth, list) or not isinstance(depth, int):
            raise _BadAnswer("make_join template without prev_events, auth_events or depth")
        if tpl.get("room_id") != room_id or tpl.get("state_key") != user_id or tpl.get("sender") != user_id:
            raise _BadAnswer("make_join template for another room or user")
        template = {
            "type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
            "content": {**(tpl.get("content") if isinstance(tpl.get("content"), Mapping) else {}), **content,
                        "membership": "join"},
        }
        try:
            join = build_event(rv, template=template, prev_events=prev, auth_events=auth, depth=depth,
                               origin_server_ts=int(time.time() * 1000), server_name=self.server_name,
                               signing_key=self.signing_key)
        except ProtocolError as e:
            raise _BadAnswer(f"cannot build the join: {e}") from None
        path = f"/_matrix/federation/v2/send_join/{quote(room_id, safe='')}/{quote(join.event_id, safe='')}"
        ask_partial = self.partial_state_joins and not await self._in_dag(room_id)
        if ask_partial:
            path += "?omit_members=true"
        t2 = time.perf_counter()
        sent = await self.client.put_json(server, path, dict(join.pdu))
        t3 = time.perf_counter()
        if not isinstance(sent, Mapping):
            raise _BadAnswer("send_join answer is not an object")
        signed = sent.get("event")
        if isinstance(signed, Mapping):  # restricted join: countersigned by the resident
            countersigned = await self._check_pdu(signed, rv)
            if countersigned.event_id != join.event_id or dict(countersigned.content) != dict(join.content):
                raise _BadAnswer("send_join answered another event than our join")
            join = countersigned
        elif AUTHORISING_USER in join.content:
            raise _BadAnswer("send_join answer without the join signed by the authorising server")
        given_state, given_chain = sent.get("state"), sent.get("auth_chain")
        if not isinstance(given_state, list) or not isinstance(given_chain, list):
            raise _BadAnswer("send_join answer without state or auth_chain")
        servers: list[str] | None = None  # partial state: the servers in the room
        if ask_partial and sent.get("members_omitted") is True:
            given_servers = sent.get("servers_in_room")
            if not isinstance(given_servers, list) or not all(isinstance(x, str) for x in given_servers):
                raise _BadAnswer("send_join answer with members omitted but no servers_in_room")
            servers = list(dict.fromkeys([server, *given_servers[:MAX_SERVERS_IN_ROOM]]))
        checked = await self._check_all([*given_state, *given_chain], rv)
        state = [e for e in checked[:len(given_state)] if e is not None]
        chain = [e for e in checked[len(given_state):] if e is not None]
        t4 = time.perf_counter()
        await self._persist(room_id, rv, join, state, chain, partial_servers=servers)
        t5 = time.perf_counter()
        if servers is not None:
            self.partial_joins += 1
            for cb in self.partial_joined:
                cb(room_id)
        # where a join's time goes (bench/bench_federation.py reads these)
        log.info("remote join timing", extra={
            "room_id": room_id, "via": server, "make_join_s": round(t1 - t0, 4), "build_s": round(t2 - t1, 4),
            "send_join_s": round(t3 - t2, 4), "check_s": round(t4 - t3, 4), "persist_s": round(t5 - t4, 4),
            "state_events": len(state), "auth_chain_events": len(chain), "partial_state": servers is not None,
        })

    async def _in_dag(self, room_id: str) -> bool:
        """Whether the room has events of ours in its DAG (a rejoin): then
        the join takes the whole state (a partial one would have to be
        merged with what we hold)."""
        row = await self.events.room_version_and_extremities(room_id)
        return row is not None and bool(row[1])

    async def _check_pdu(self, pdu: Any, rv: RoomVersion) -> Event:
        try:
            check_pdu_format(pdu, rv)
            lookup = await self.key_store.key_lookup_for_pdu(pdu, rv)
            return check_received_pdu(pdu, rv, lookup).event
        except (ProtocolError, KeyUnavailable) as e:
            raise _BadAnswer(f"a PDU of the answer was refused: {e}") from None

    async def _check_all(self, pdus: list[Any], rv: RoomVersion) -> list[Event | None]:
        """Each PDU checked (format, signatures, content hash), None for one
        refused (dropped; auth may still hold without it). A PDU given twice
        (in state and in auth_chain) is checked once and answered with the
        same Event; the keys are read once per (server, key id)."""
        distinct: dict[bytes, int] = {}
        mappings: list[Mapping[str, Any]] = []
        slots: list[int | None] = []
        for pdu in pdus:
            if not isinstance(pdu, Mapping):
                slots.append(None)
                continue
            try:
                raw = orjson.dumps(pdu, option=orjson.OPT_SORT_KEYS)
            except TypeError:
                slots.append(None)
                continue
            if raw not in distinct:
                distinct[raw] = len(mappings)
                mappings.append(pdu)
            slots.append(distinct[raw])
        lookups = await self.key_store.key_lookups_for_pdus(mappings, rv)
        events: list[Event | None] = []
        for pdu, lookup in zip(mappings, lookups):
            try:
                events.append(check_received_pdu(pdu, rv, lookup).event)
            except ProtocolError as e:
                log.info("send_join answer: a PDU was refused: %s", e)
                events.append(None)
        return [None if i is None else events[i] for i in slots]

    async def _persist(self, room_id: str, rv: RoomVersion, join: Event, state: list[Event],
                       chain: list[Event], *, partial_servers: list[str] | None = None) -> None:
        checked = check_auth_chain([*chain, *state])
        good_state = [ev for ev in state if ev.event_id in checked.accepted and ev.room_id == room_id]
        state_map: dict[StateKey, Event] = auth_state_from_events(good_state)
        create = state_map.get(("m.room.create", ""))
        if create is None:
            raise _BadAnswer("the room's state has no create event")
        auth_map = state_map
        if partial_servers is not None:
            # the members are omitted: the join's own auth events stand in
            # for those it needs (e.g. a restricted join's authorising member)
            own = {a for a in join.auth_event_ids}
            auth_map = {**auth_state_from_events(
                [ev for ev in chain if ev.event_id in own and ev.event_id in checked.accepted]), **state_map}
        try:
            check_auth_rules(join, auth_map)
        except AuthError as e:
            raise _BadAnswer(f"the state does not allow the join: {e}") from None
        outliers = [ev for ev in [*chain, *state] if ev.event_id in checked.accepted and ev.room_id == room_id]
        seen: set[str] = set()
        batch: list[NewEvent] = []
        for ev in sorted(outliers, key=lambda e: (e.depth, e.event_id)):
            if ev.event_id not in seen and ev.event_id != join.event_id:
                seen.add(ev.event_id)
                batch.append(NewEvent(ev, EventContext(outlier=True)))
        known = await self.events.room_version(room_id)
        new_room = None if known is not None else NewRoom(creator=create.sender, is_public=False)
        state_ids = {k: ev.event_id for k, ev in state_map.items()}
        # one transaction: the state and auth chain as outliers, the join on
        # top of that state (whose memberships the persister then reads from
        # the batch, not back from the database)
        batch.append(NewEvent(join, EventContext(state_before=state_ids)))
        also = None
        if partial_servers is not None:
            servers, join_id, now = partial_servers, join.event_id, int(time.time() * 1000)

            async def also(conn: Any) -> None:  # the room is partial from the join's commit on
                await record_partial_room(conn, room_id, join_id, servers, now)

        await self.persister.persist(room_id, batch, room_version=rv, new_room=new_room, also=also)


    async def reject_invite(self, user_id: str, room_id: str, servers: Sequence[str],
                            content: Mapping[str, Any]) -> None:
        """Reject an invite to a room we are not in: the leave goes through
        the inviting server and is kept as an outlier with a membership row."""
        await self.leave(user_id, room_id, servers, content, outlier=True)

    async def leave(self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any],
                    *, outlier: bool = False) -> None:
        """Leave through a resident server (make_leave, send_leave/v2), then
        persist the leave on our side. Raises FederationError or _BadAnswer
        when no server took it."""
        errors: list[str] = []
        for server in list(servers)[:MAX_SERVERS_TRIED]:
            try:
                await self._leave_via(server, user_id, room_id, content, outlier)
                return
            except (FederationError, _BadAnswer) as e:
                errors.append(f"{server}: {e}")
        raise MatrixError(502, "M_UNKNOWN", "Could not leave through any server: " + "; ".join(errors)[:500])

    async def _leave_via(self, server: str, user_id: str, room_id: str, content: Mapping[str, Any],
                         outlier: bool) -> None:
        leave, rv, _ = await self._membership_via(server, user_id, room_id, "leave", content)
        if outlier:
            result = await self.persister.persist(room_id, [NewEvent(leave, EventContext(outlier=True))],
                                                  room_version=rv)
            if result.stored[0]:
                await self.inbound.record_outlier_membership(leave, None)
                self.persister.notifier.poke()
            return
        state = await self.events.state.current_state_ids(room_id)
        await self.persister.persist(room_id, [NewEvent(leave, EventContext(state_before=state))], room_version=rv)

    async def knock(self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]) -> None:
        """Knock through a resident server (make_knock, send_knock); the knock
        is kept as an outlier with a membership row and the stripped state
        the server answered, so /sync shows the room under ``knock``."""
        if not servers:
            raise MatrixError(404, "M_NOT_FOUND", "No known servers for this room")
        errors: list[str] = []
        for server in list(servers)[:MAX_SERVERS_TRIED]:
            try:
                knock, rv, answer = await self._membership_via(server, user_id, room_id, "knock", content)
            except RemoteError as e:
                if e.status in (400, 403):
                    raise MatrixError(e.status, e.errcode or "M_FORBIDDEN", f"{server}: {e.error}") from None
                errors.append(f"{server}: {e}")
                continue
            except (FederationError, _BadAnswer) as e:
                errors.append(f"{server}: {e}")
                continue
            given = answer.get("knock_room_state") if isinstance(answer, Mapping) else None
            stripped = [e for e in given if isinstance(e, Mapping)][:MAX_STRIPPED_STATE] \
                if isinstance(given, list) else []
            creator = next((e.get("sender") for e in stripped if e.get("type") == "m.room.create"), None)
            known = await self.events.room_version(room_id)
            new_room = None if known is not None else NewRoom(creator=str(creator or knock.sender), is_public=False)
            result = await self.persister.persist(room_id, [NewEvent(knock, EventContext(outlier=True))],
                                                  room_version=rv, new_room=new_room)
            if result.stored[0]:
                await self.inbound.record_outlier_membership(knock, [dict(e) for e in stripped])
                self.persister.notifier.poke()
            return
        raise MatrixError(502, "M_UNKNOWN", "Could not knock through any server: " + "; ".join(errors)[:500])

    async def _membership_via(self, server: str, user_id: str, room_id: str, membership: str,
                              content: Mapping[str, Any]) -> tuple[Event, RoomVersion, Any]:
        """make_<membership>, build and sign our event on its template, then
        send_<membership> (v2 for leave, v1 for knock): the event, the room
        version and the server's answer."""
        r, u = quote(room_id, safe=""), quote(user_id, safe="")
        query = "?" + "&".join(f"ver={v}" for v in KNOWN_ROOM_VERSIONS) if membership == "knock" else ""
        answer = await self.client.get_json(server, f"/_matrix/federation/v1/make_{membership}/{r}/{u}{query}")
        if not isinstance(answer, Mapping) or not isinstance(answer.get("event"), Mapping):
            raise _BadAnswer(f"make_{membership} answer without an event")
        try:
            rv = get_room_version(str(answer.get("room_version", "1")))
        except UnsupportedRoomVersion:
            raise _BadAnswer(f"make_{membership} for a room version we do not support") from None
        tpl = answer["event"]
        prev, auth, depth = tpl.get("prev_events"), tpl.get("auth_events"), tpl.get("depth")
        if not isinstance(prev, list) or not isinstance(auth, list) or not isinstance(depth, int):
            raise _BadAnswer(f"make_{membership} template without prev_events, auth_events or depth")
        if tpl.get("room_id") != room_id or tpl.get("state_key") != user_id:
            raise _BadAnswer(f"make_{membership} template for another room or user")
        template = {"type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
                    "content": {**content, "membership": membership}}
        try:
            event = build_event(rv, template=template, prev_events=prev, auth_events=auth, depth=depth,
                                origin_server_ts=int(time.time() * 1000), server_name=self.server_name,
                                signing_key=self.signing_key)
        except ProtocolError as e:
            raise _BadAnswer(f"cannot build the {membership}: {e}") from None
        version = "v1" if membership == "knock" else "v2"
        path = f"/_matrix/federation/{version}/send_{membership}/{r}/{quote(event.event_id, safe='')}"
        sent = await self.client.put_json(server, path, dict(event.pdu))
        return event, rv, sent


class _BadAnswer(Exception):
    pass

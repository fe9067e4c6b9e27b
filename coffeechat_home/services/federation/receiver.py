"""The federation receiver: PDUs and EDUs that other servers push to us with
``PUT /_matrix/federation/v1/send/{txnId}`` (DESIGN.md section 2, "Inbound
PDU").

For each PDU, in the spec's order of "checks performed on receipt of a PDU":
the room must be known and have one of our users joined (else it is
ignored); format, signatures and content hash (``check_received_pdu``, keys
through the key store); missing ``prev_events`` are fetched from the origin
with ``get_missing_events`` (bounded in depth and count) and processed first;
a gap that remains is filled with the state at it (``gaps.EventFetcher``:
``state_ids`` and the events we lack, checked, stored as outliers), and auth
events we lack are fetched with ``event_auth``; then the auth checks against
the event's auth events (rejected), the state before it (rejected) and the
room's current state (soft-failed); the event goes to the persister with
that context. PDUs, typing and receipts for a room whose server ACL denies
the origin are refused (services/federation/server_acl.py).

Processing is serialized per room (a lock per room in this process; the
persister's compare-and-set covers other instances) and runs for different
rooms in parallel. A transaction's answer is stored per (origin, txn id), so
a retried transaction gets the same answer from any instance.

EDUs go through a small registry (``edu_handlers``): typing and receipts are
handled here; other types are ignored until a handler is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from ...errors import MatrixError
from ...federation.client import FederationClient, FederationError
from ...protocol.errors import ProtocolError
from ...protocol.events import Event, StateKey, create_event_id_for_room
from ...protocol.identifiers import InvalidIdentifier, parse_user_id
from ...protocol.pdu import check_pdu_format, check_received_pdu
from ...protocol.room_versions import RoomVersion, UnsupportedRoomVersion, get_room_version
from ...protocol.state_res import resolve_state
from ...storage.event_writes import RowInsert
from ...storage.events import EventStore
from ...storage.federation_inbound import FederationInboundStore
from ..persister import EventContext, NewEvent, Persister, UnknownRoom
from ..receipts import ReceiptService
from ..server_keys import KeyStore, KeyUnavailable
from ..typing import FEDERATION_TIMEOUT_MS, TypingService
from ..tasks import KeyedLocks
from .events_in import auth_ids_in, receipt_auth_checks
from .gaps import EventFetcher, FetchBudget, GapFetchError
from .room_batch import Outcome as _Outcome
from .room_batch import HeadCache, RoomBatch, lookup_ids
from .server_acl import ServerAcls

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
# EDUs stored before the transaction's PDUs: a to-device message carries the
# room key of a Megolm message sent after it, often in the same transaction,
# and clients decrypt an event when a sync brings it (matrix-nio never tries
# again), so no sync may show the message before the key. The others
# (receipts name events of the transaction) come after the PDUs.
EDUS_BEFORE_PDUS = frozenset({"m.direct_to_device"})
ROOM_VERSIONS_KEPT = 10_000
# get_missing_events: how many events we ask for, and how far below the
# room's current depth we look (the spec leaves both to the server).
MISSING_EVENTS_LIMIT = 20
MISSING_EVENTS_MIN_DEPTH_WINDOW = 100

EduHandler = Callable[[str, Any], Awaitable[None]]


class BadTransaction(Exception):
    """The transaction as a whole is malformed (400)."""


@dataclass
class FederationReceiver:
    def __init__(
        self,
        server_name: str,
        events: EventStore,
        persister: Persister,
        key_store: KeyStore,
        client: FederationClient,
        store: FederationInboundStore,
        typing: TypingService,
        receipts: ReceiptService,
    ) -> None:
        self.server_name = server_name
        self.events = events
        self.persister = persister
        self.key_store = key_store
        self.client = client
        self.store = store
        self.typing = typing
        self.receipts = receipts
        self._locks: KeyedLocks[str] = KeyedLocks()
        self._txn_locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
        self.edu_handlers: dict[str, EduHandler] = {
            "m.typing": self._typing_edu,
            "m.receipt": self._receipt_edu,
        }
        self.pdus_processed = 0
        self.fetcher = EventFetcher(events, persister, key_store, client)
        self.acls: ServerAcls | None = None  # the rooms' server ACLs, when set
        self.heads = HeadCache()  # rooms' heads as this process last persisted them
        self._room_versions: dict[str, RoomVersion] = {}  # (immutable) of rooms we received PDUs for
        self.missing_events_limit = MISSING_EVENTS_LIMIT  # federation.missing_events_limit

    async def _denied(self, room_id: Any, origin: str) -> bool:
        return self.acls is not None and isinstance(room_id, str) and not await self.acls.allows(room_id, origin)

    # -- the transaction -----------------------------------------------------------
    async def on_transaction(self, origin: str, txn_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise BadTransaction("The transaction must be a JSON object")
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise BadTransaction("pdus and edus must be arrays")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise BadTransaction(f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
        now_ms = int(time.time() * 1000)
        by_room: dict[str, list[Any]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, Mapping) else None
            if isinstance(room_id, str):  # else no room, no event id we could answer for
                by_room.setdefault(room_id, []).append(pdu)
        early: list[Any] = []
        late: list[Any] = []
        for edu in edus:
            (early if isinstance(edu, Mapping) and edu.get("edu_type") in EDUS_BEFORE_PDUS else late).append(edu)
        async with self._txn_locks.hold((origin, txn_id)):
            results: dict[str, Any] = {}
            if len(by_room) == 1:
                # one room (Synapse's usual 1-2 PDUs): the dedupe read goes with
                # the room's row, and without EDUs the answer is written in the
                # transaction that persists the events (so it commits exactly
                # when they do), not in a commit of its own
                ((room_id, items),) = by_room.items()
                async with self._room_lock(room_id):
                    rv = self._room_versions.get(room_id)
                    lookup = None
                    if rv is None:
                        done, row = await self.store.txn_response_and_room(origin, txn_id, room_id)
                    else:  # the batch's read ahead goes along too
                        batch_ids, info_ids, auths = lookup_ids(items, room_id, rv)
                        done, row, lookup = await self.store.txn_response_room_and_lookup(
                            origin, txn_id, room_id, rv, info_ids, auths, batch_ids)
                    if done is not None:
                        return done
                    await self._process_edus(origin, early)
                    if row is not None and (rv is None or rv.identifier != row[0]):
                        lookup = None
                        self._remember_version(room_id, row[0])

                    def respond(answers: dict[str, Any]) -> RowInsert:
                        return self.store.txn_response_row(origin, txn_id, {"pdus": answers}, now_ms)

                    batch = RoomBatch(self, origin, room_id, results)
                    await batch.run(items, row, None if edus else respond, lookup)
                failed, saved = batch.failed, batch.responded
            else:
                done = await self.store.txn_response(origin, txn_id)
                if done is not None:
                    return done
                await self._process_edus(origin, early)
                failed, saved = await self._process_pdus(origin, by_room, results), False
            response = {"pdus": results}
            await self._process_edus(origin, late)
            if not failed and not saved:  # failed: a retry processes the failed PDUs again
                await self.store.save_txn_response(origin, txn_id, response, now_ms)
            return response

    def _remember_version(self, room_id: str, version: str) -> None:
        """A room's version never changes: kept, so the first read of a
        transaction can hold the batch's read ahead, which needs it."""
        try:
            rv = get_room_version(version)
        except UnsupportedRoomVersion:
            return
        if len(self._room_versions) >= ROOM_VERSIONS_KEPT:
            self._room_versions.clear()
        self._room_versions[room_id] = rv

    async def _process_pdus(self, origin: str, by_room: dict[str, list[Any]], results: dict[str, Any]) -> bool:
        """Per-PDU results into ``results``, and whether one failed for a
        reason of ours (database, bug): such a PDU answers an error and the
        transaction's answer is not kept."""
        failed = False

        async def room(room_id: str, items: list[Any]) -> None:
            async with self._room_lock(room_id):
                batch = RoomBatch(self, origin, room_id, results)
                await batch.run(items)
                if batch.failed:
                    nonlocal failed
                    failed = True

        await asyncio.gather(*(room(r, items) for r, items in by_room.items()))
        return failed

    @contextlib.asynccontextmanager
    async def _room_lock(self, room_id: str) -> AsyncIterator[None]:
        async with self._locks.hold(room_id):
            yield

    # -- one PDU (the batch's slow path, room_batch.py) ------------------------------
    async def _check_pdu(self, pdu: Mapping[str, Any], rv: RoomVersion) -> Event:
        check_pdu_format(pdu, rv)  # before anything reads its fields
        lookup = await self.key_store.key_lookup_for_pdu(pdu, rv)
        received = check_received_pdu(pdu, rv, lookup, format_checked=True)
        if received.redacted:
            log.info("PDU %s failed its content hash: stored redacted", received.event.event_id)
        return received.event

    async def _fetch_missing_prevs(
        self, origin: str, room_id: str, rv: RoomVersion, ev: Event, budget: FetchBudget
    ) -> None:
        """Fetch prev_events we never saw with get_missing_events (one
        bounded request) and process them oldest first."""
        known = await self.events.stored_info(ev.prev_event_ids)
        missing = [p for p in ev.prev_event_ids if p not in known or known[p].outlier]
        if not missing:
            return
        extremities = await self.events.forward_extremities(room_id)
        ext_info = await self.events.stored_info(extremities)
        min_depth = max(0, max((i.depth for i in ext_info.values()), default=0) - MISSING_EVENTS_MIN_DEPTH_WINDOW)
        path = f"/_matrix/federation/v1/get_missing_events/{_quote(room_id)}"
        body = {
            "earliest_events": extremities,
            "latest_events": [ev.event_id],
            "limit": self.missing_events_limit,
            "min_depth": min_depth,
        }
        try:
            answer = await self.client.post_json(origin, path, body)
        except FederationError as e:
            log.info("get_missing_events for %s from %s failed: %s", ev.event_id, origin, e)
            return
        got = answer.get("events") if isinstance(answer, Mapping) else None
        if not isinstance(got, list):
            return
        fetched: list[Event] = []
        for pdu in got[:self.missing_events_limit]:
            if not isinstance(pdu, Mapping) or pdu.get("room_id") != room_id:
                continue
            try:
                fetched.append(await self._check_pdu(pdu, rv))
            except (ProtocolError, KeyUnavailable) as e:
                log.info("a missing event from %s was refused: %s", origin, e)
        for missing_ev in sorted(fetched, key=lambda e: (e.depth, e.event_id)):
            info = (await self.events.stored_info([missing_ev.event_id])).get(missing_ev.event_id)
            if info is not None and not info.outlier:
                continue
            outcome = await self._check_and_persist(room_id, rv, missing_ev, origin, budget)
            if outcome.error is not None:
                log.info("missing event %s: %s", missing_ev.event_id, outcome.error)

    async def _check_and_persist(
        self, room_id: str, rv: RoomVersion, ev: Event, origin: str, budget: FetchBudget
    ) -> _Outcome:
        if ev.room_id != room_id:
            return _Outcome("the event is in another room")
        wanted = list(ev.auth_event_ids)
        create_id = create_event_id_for_room(room_id, rv)  # v12: implied by the room id
        if create_id is not None:
            wanted.append(create_id)
        auth_events, auth_rejected = await self.events.auth_chain_events(wanted, rv)
        prevs = await self.events.stored_info(ev.prev_event_ids)
        gap = [p for p in ev.prev_event_ids if p not in prevs or prevs[p].outlier or prevs[p].state_group is None]
        filled: dict[str, dict[StateKey, str]] = {}
        try:
            if any(a not in auth_events for a in wanted):
                # auth events we lack, from the sender's server (checked, stored as outliers)
                await self.fetcher.fetch_auth_events(origin, room_id, rv, ev, budget)
                auth_events, auth_rejected = await self.events.auth_chain_events(wanted, rv)
                still = [a for a in wanted if a not in auth_events]
                if still:
                    return _Outcome(f"auth events not available: {', '.join(still[:3])}")
            if gap:
                # prev events still missing after get_missing_events: the state at the gap
                filled = await self.fetcher.states_after(origin, room_id, rv, gap, budget)
        except GapFetchError as e:
            log.info("event %s from %s not processed: %s", ev.event_id, origin, e)
            return _Outcome(f"missing events could not be fetched: {e}")
        state_before = await self._state_before(rv, ev, prevs, filled)

        async def current() -> Mapping[StateKey, str]:
            return await self.events.state.current_state_ids(room_id)

        rejected_reason, soft_failed = await receipt_auth_checks(
            ev, auth_events.get, auth_rejected.__contains__, state_before,
            lambda state: self._auth_state(rv, ev, state), current,
            partial_state=await self.events.is_partial_state(room_id),
        )
        context = EventContext(state_before=state_before, rejected_reason=rejected_reason, soft_failed=soft_failed)
        try:
            await self.persister.persist(room_id, [NewEvent(ev, context)])
        except UnknownRoom:
            return _Outcome("unknown room")
        self.pdus_processed += 1
        if rejected_reason is not None:
            return _Outcome(f"rejected: {rejected_reason}")
        return _Outcome(None)

    async def _state_before(
        self, rv: RoomVersion, ev: Event, prevs: Mapping[str, Any], filled: Mapping[str, dict[StateKey, str]]
    ) -> dict[StateKey, str]:
        """The resolved state after the prev events: their state groups,
        and for prev events at a gap the state fetched for them."""
        groups = {prevs[p].state_group for p in ev.prev_event_ids if p not in filled}
        sets = await self.events.state_ids_for_groups(g for g in groups if g is not None)
        states = list(sets.values())
        for state in filled.values():
            if state not in states:
                states.append(state)
        if len(states) == 1:
            return dict(states[0])
        ids = {eid for s in states for eid in s.values()}
        loaded, rejected = await self.events.auth_chain_events(ids, rv)
        return resolve_state(rv, states, loaded.get, is_rejected=rejected.__contains__)

    async def _auth_state(self, rv: RoomVersion, ev: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        wanted = auth_ids_in(ev, state)
        rows = await self.events.get_pdus(wanted.values())
        return {k: Event(rows[eid], eid, rv) for k, eid in wanted.items() if eid in rows}

    # -- EDUs ------------------------------------------------------------------
    async def _process_edus(self, origin: str, edus: list[Any]) -> None:
        for edu in edus:
            if not isinstance(edu, Mapping):
                continue
            handler = self.edu_handlers.get(edu.get("edu_type"))  # type: ignore[arg-type]
            if handler is None:
                continue
            try:
                await handler(origin, edu.get("content"))
            except MatrixError as e:
                log.info("EDU %s from %s ignored: %s", edu.get("edu_type"), origin, e)
            except Exception:
                log.exception("EDU %s from %s failed", edu.get("edu_type"), origin)

    def _from_origin(self, origin: str, user_id: Any) -> bool:
        if not isinstance(user_id, str):
            return False
        try:
            return parse_user_id(user_id).server_name == origin
        except InvalidIdentifier:
            return False

    async def _typing_edu(self, origin: str, content: Any) -> None:
        if not isinstance(content, Mapping):
            return
        room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
        if not isinstance(room_id, str) or not isinstance(typing, bool) or not isinstance(user_id, str):
            return
        if not self._from_origin(origin, user_id) or await self._denied(room_id, origin):
            return
        await self.typing.set_typing(user_id, room_id, typing, FEDERATION_TIMEOUT_MS, max_timeout_ms=FEDERATION_TIMEOUT_MS)

    async def _receipt_edu(self, origin: str, content: Any) -> None:
        if not isinstance(content, Mapping):
            return
        for room_id, by_type in content.items():
            if not isinstance(by_type, Mapping) or await self._denied(room_id, origin):
                continue
            for receipt_type, by_user in by_type.items():
                if receipt_type != "m.read" or not isinstance(by_user, Mapping):
                    continue
                for user_id, receipt in by_user.items():
                    if not self._from_origin(origin, user_id) or not isinstance(receipt, Mapping):
                        continue
                    event_ids = receipt.get("event_ids")
                    data = receipt.get("data")
                    thread_id = data.get("thread_id") if isinstance(data, Mapping) else None
                    if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[0], str):
                        continue
                    try:
                        await self.receipts.send_receipt(
                            user_id, room_id, receipt_type, event_ids[0],
                            thread_id if isinstance(thread_id, str) else None,
                        )
                    except MatrixError as e:
                        log.info("receipt from %s ignored: %s", origin, e)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


__all__ = ["BadTransaction", "FederationReceiver", "MAX_EDUS", "MAX_PDUS", "get_room_version"]

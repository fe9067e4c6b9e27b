"""What a received PDU refers to and we lack, fetched from the server that
sent it (spec: "checks performed on receipt of a PDU", and the server-server
API's "Retrieving events" section):

* **auth events** we never saw: the event's auth chain with
  ``GET /event_auth/{roomId}/{eventId}``;
* **the state at a gap**: when ``get_missing_events`` did not reach events we
  have, the state after each missing prev event, with
  ``GET /state_ids/{roomId}?event_id=`` and then the events we lack, each
  with ``GET /event/{eventId}`` (or one ``GET /state`` when many are
  missing).

Every fetched event is checked before it counts: format, signatures and
content hash (``protocol.pdu.check_received_pdu``; a hash mismatch keeps the
redacted form), then the auth rules against its own auth events in auth
order (``protocol.auth_chain.check_auth_chain``, with the events we stored
as known). Accepted events are stored as outliers through the persister;
refused ones are dropped (not stored), so a state built from an answer
never holds an event that failed a check.

Everything is bounded: the answers' sizes, the events fetched one by one,
the requests in flight, and the time (``GapFetchError`` when a bound is
reached or the other server fails; the caller then does not process the
PDU).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from ...federation.client import FederationClient, FederationError
from ...protocol.auth_chain import check_auth_chain
from ...protocol.errors import ProtocolError
from ...protocol.events import Event, StateKey, create_event_id_for_room
from ...protocol.hashing import compute_event_id
from ...protocol.pdu import check_pdu_format, check_received_pdu
from ...protocol.room_versions import RoomVersion
from ...storage.events import EventStore
from ..persister import EventContext, NewEvent, Persister
from ..server_keys import KeyStore

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
# most events in one answer (a /state answer or an auth chain)
MAX_ANSWER_EVENTS = 5000
# of a partial-state room's whole state (its members; the answer's size is
# bounded by federation.max_response_bytes as well)
MAX_WHOLE_STATE_EVENTS = 100_000
# most events fetched one by one with /event per state fill; above
# STATE_INSTEAD_ABOVE missing events, one /state request is made instead
MAX_SINGLE_FETCHES = 100
STATE_INSTEAD_ABOVE = 20
FETCH_CONCURRENCY = 8
# most missing prev events whose state is fetched for one event, and state
# fills per received PDU (its missing events included)
MAX_GAP_PREVS = 5
MAX_STATE_FILLS = 3
# time for everything fetched for one received PDU
GAP_DEADLINE_S = 60.0


class GapFetchError(Exception):
    """The missing events could not be fetched (or not within bounds)."""


@dataclass
class FetchBudget:
    """Bounds for the fetches made while processing one received PDU."""

    state_fills: int = MAX_STATE_FILLS
    deadline: float = field(default_factory=lambda: asyncio.get_running_loop().time() + GAP_DEADLINE_S)

    def remaining_s(self) -> float:
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise GapFetchError("out of time fetching missing events")
        return left


class EventFetcher:
    def __init__(self, events: EventStore, persister: Persister, key_store: KeyStore,
                 client: FederationClient) -> None:
        self.events = events
        self.persister = persister
        self.key_store = key_store
        self.client = client
        self.events_fetched = 0  # accepted and stored as outliers, for metrics

    # -- auth events -----------------------------------------------------------------
    async def fetch_auth_events(self, origin: str, room_id: str, rv: RoomVersion, ev: Event,
                                budget: FetchBudget) -> None:
        """Fetch the auth chain of ``ev`` from ``origin`` and store the
        events of it we lack (checked) as outliers."""
        path = f"{V1}/event_auth/{_q(room_id)}/{_q(ev.event_id)}"
        answer = await self._get(origin, path, budget)
        chain = answer.get("auth_chain") if isinstance(answer, Mapping) else None
        if not isinstance(chain, list):
            raise GapFetchError("event_auth answer without auth_chain")
        await self._check_and_store(room_id, rv, chain)

    # -- the state at a gap ---------------------------------------------------------
    async def states_after(self, origin: str, room_id: str, rv: RoomVersion, prev_ids: list[str],
                           budget: FetchBudget) -> dict[str, dict[StateKey, str]]:
        """For each of ``prev_ids`` (events we do not have in the DAG), the
        room state after it, fetched from ``origin``; the events we lacked
        are checked and stored as outliers."""
        if len(prev_ids) > MAX_GAP_PREVS:
            raise GapFetchError(f"{len(prev_ids)} missing prev events (at most {MAX_GAP_PREVS} are filled)")
        if budget.state_fills <= 0:
            raise GapFetchError("too many gaps for one received event")
        budget.state_fills -= 1
        out: dict[str, dict[StateKey, str]] = {}
        for prev_id in prev_ids:
            out[prev_id] = await self._state_after(origin, room_id, rv, prev_id, budget)
        return out

    async def state_after(self, origin: str, room_id: str, rv: RoomVersion, event_id: str,
                          budget: FetchBudget) -> dict[StateKey, str]:
        """The room state after ``event_id`` (which we may hold), fetched
        from ``origin``: the partial-state resync's full state at our join."""
        return await self._state_after(origin, room_id, rv, event_id, budget, whole=True)

    async def _state_after(self, origin: str, room_id: str, rv: RoomVersion, prev_id: str,
                           budget: FetchBudget, *, whole: bool = False) -> dict[StateKey, str]:
        """``whole``: most of the state is lacking (a partial-state room's
        members): one ``/state`` without asking ``/state_ids`` first."""
        if whole:
            answer = await self._get(origin, f"{V1}/state/{_q(room_id)}", budget, {"event_id": prev_id})
            given = _pdu_list(answer, "pdus", MAX_WHOLE_STATE_EVENTS)
            state_ids = [i for i in (_event_id_of(p, rv) for p in given) if i is not None]
            wanted = [*state_ids, prev_id]
            known = await self.events.stored_info([prev_id])
            pdus = given + _pdu_list(answer, "auth_chain", MAX_WHOLE_STATE_EVENTS)
            if prev_id not in known:
                pdus += await self._fetch_each(origin, [prev_id], rv, budget)
            await self._check_and_store(room_id, rv, pdus, MAX_WHOLE_STATE_EVENTS)
            return await self._listed_state(room_id, rv, prev_id, state_ids, wanted)
        answer = await self._get(origin, f"{V1}/state_ids/{_q(room_id)}", budget, {"event_id": prev_id})
        state_ids = _id_list(answer, "pdu_ids")
        chain_ids = _id_list(answer, "auth_chain_ids")
        wanted = list(dict.fromkeys([*state_ids, *chain_ids, prev_id]))
        known = await self.events.stored_info(wanted)
        lacking = [eid for eid in wanted if eid not in known]
        if len(lacking) > STATE_INSTEAD_ABOVE:
            answer = await self._get(origin, f"{V1}/state/{_q(room_id)}", budget, {"event_id": prev_id})
            pdus = _pdu_list(answer, "pdus") + _pdu_list(answer, "auth_chain")
            if prev_id not in known:
                pdus += await self._fetch_each(origin, [prev_id], rv, budget)
        else:
            pdus = await self._fetch_each(origin, lacking, rv, budget)
        await self._check_and_store(room_id, rv, pdus)
        return await self._listed_state(room_id, rv, prev_id, state_ids, wanted)

    async def _listed_state(self, room_id: str, rv: RoomVersion, prev_id: str, state_ids: list[str],
                            wanted: list[str]) -> dict[StateKey, str]:
        """The state after ``prev_id``: the listed events that are stored now
        and not rejected (a refused or missing event is left out), then the
        prev event itself."""
        info = await self.events.stored_info(wanted)
        listed = [eid for eid in state_ids if eid in info and not info[eid].rejected and info[eid].room_id == room_id]
        stored = await self.events.get_pdus([*listed, prev_id])
        state: dict[StateKey, str] = {}
        for eid in listed:
            ev = Event(stored[eid], eid, rv)
            if ev.state_key is None:
                raise GapFetchError(f"state_ids listed {eid}, which is not a state event")
            if ev.state_tuple in state:
                raise GapFetchError(f"state_ids listed two events for {ev.state_tuple}")
            state[ev.state_tuple] = eid
        prev_info = info.get(prev_id)
        if prev_id not in stored or prev_info is None or prev_info.room_id != room_id:
            raise GapFetchError(f"the missing prev event {prev_id} could not be fetched and checked")
        prev = Event(stored[prev_id], prev_id, rv)
        if prev.state_key is not None and not prev_info.rejected:
            state[prev.state_tuple] = prev_id
        return state

    # -- fetching and checking --------------------------------------------------------
    async def _get(self, origin: str, path: str, budget: FetchBudget,
                   query: Mapping[str, str] | None = None) -> Any:
        try:
            timeout = min(budget.remaining_s(), self.client.timeout_s)
            return await self.client.get_json(origin, path, query, timeout_s=timeout)
        except FederationError as e:
            raise GapFetchError(f"{origin}: {e}") from None

    async def _fetch_each(self, origin: str, ids: list[str], rv: RoomVersion, budget: FetchBudget) -> list[Any]:
        if len(ids) > MAX_SINGLE_FETCHES:
            raise GapFetchError(f"{len(ids)} events to fetch (at most {MAX_SINGLE_FETCHES})")
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(eid: str) -> Any:
            async with sem:
                try:
                    answer = await self._get(origin, f"{V1}/event/{_q(eid)}", budget)
                except GapFetchError as e:
                    log.info("event %s: %s", eid, e)
                    return None
            pdus = _pdu_list(answer, "pdus")
            if len(pdus) != 1 or not isinstance(pdus[0], Mapping):
                return None
            try:
                same = compute_event_id(pdus[0], rv) == eid  # not another event than the one asked for
            except (ProtocolError, KeyError, TypeError, ValueError):
                same = False
            return pdus[0] if same else None

        found = await asyncio.gather(*(one(eid) for eid in ids))
        return [p for p in found if p is not None]

    async def _check_and_store(self, room_id: str, rv: RoomVersion, pdus: list[Any],
                               limit: int = MAX_ANSWER_EVENTS) -> None:
        """Check ``pdus`` (signatures and hashes, then auth in auth order)
        and store the accepted ones we lack as outliers."""
        if len(pdus) > limit:
            raise GapFetchError(f"an answer of {len(pdus)} events (at most {limit})")
        by_id: dict[str, Mapping[str, Any]] = {}
        for pdu in pdus:
            if not isinstance(pdu, Mapping) or pdu.get("room_id", room_id) != room_id:
                continue
            try:
                by_id.setdefault(compute_event_id(pdu, rv), pdu)
            except (ProtocolError, KeyError, TypeError, ValueError):
                continue
        # only the events we lack are checked (a /state answer repeats many we hold)
        held = await self.events.stored_info(by_id)
        formatted: list[tuple[str, Mapping[str, Any]]] = []
        for eid, pdu in by_id.items():
            if eid in held:
                continue
            try:
                check_pdu_format(pdu, rv)
            except ProtocolError as e:
                log.info("a fetched event was refused: %s", e)
                continue
            formatted.append((eid, pdu))
        # the keys of the whole answer read (or fetched) once per (server, key id)
        lookups = await self.key_store.key_lookups_for_pdus([p for _, p in formatted], rv)
        checked: dict[str, Event] = {}
        for (eid, pdu), lookup in zip(formatted, lookups):
            try:
                ev = check_received_pdu(pdu, rv, lookup, format_checked=True).event
            except ProtocolError as e:
                log.info("a fetched event was refused: %s", e)
                continue
            if ev.room_id == room_id:
                checked[eid] = ev
        fresh = checked
        if not fresh:
            return
        outside = {a for ev in fresh.values() for a in _auth_refs(ev, room_id, rv) if a not in fresh}
        stored, stored_rejected = await self.events.auth_chain_events(outside, rv)
        result = check_auth_chain(fresh.values(), known=stored.get, known_rejected=stored_rejected.__contains__)
        for eid, why in result.rejected.items():
            log.info("a fetched event %s was refused by the auth rules: %s", eid, why)
        accepted = sorted(result.accepted.values(), key=lambda e: (e.depth, e.event_id))
        if accepted:
            await self.persister.persist(room_id, [NewEvent(ev, EventContext(outlier=True)) for ev in accepted])
            self.events_fetched += len(accepted)


def _auth_refs(ev: Event, room_id: str, rv: RoomVersion) -> Iterable[str]:
    yield from ev.auth_event_ids
    create_id = create_event_id_for_room(room_id, rv)
    if create_id is not None and ev.event_id != create_id:
        yield create_id


def _event_id_of(pdu: Any, rv: RoomVersion) -> str | None:
    if not isinstance(pdu, Mapping):
        return None
    try:
        return compute_event_id(pdu, rv)
    except (ProtocolError, KeyError, TypeError, ValueError):
        return None


def _id_list(answer: Any, name: str) -> list[str]:
    ids = answer.get(name) if isinstance(answer, Mapping) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GapFetchError(f"answer without a list of event ids in {name!r}")
    if len(ids) > MAX_ANSWER_EVENTS:
        raise GapFetchError(f"an answer of {len(ids)} event ids (at most {MAX_ANSWER_EVENTS})")
    return ids


def _pdu_list(answer: Any, name: str, limit: int = MAX_ANSWER_EVENTS) -> list[Any]:
    pdus = answer.get(name) if isinstance(answer, Mapping) else None
    if not isinstance(pdus, list):
        raise GapFetchError(f"answer without {name!r}")
    if len(pdus) > limit:
        raise GapFetchError(f"an answer of {len(pdus)} events (at most {limit})")
    return pdus


def _q(value: str) -> str:
    return quote(value, safe="")

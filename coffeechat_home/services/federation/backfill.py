"""Backfill: history of a room older than what we have, fetched from a
server in the room when ``/messages`` pages back past our oldest event
(``GET /_matrix/federation/v1/backfill/{roomId}``).

Where our history has a hole (timeline events whose prev_events we never
got, backward extremities: at its bottom, typically the join of one of our
users into a remote room; in its middle, a gap in live traffic closed with
the state at it, or a rejoin after our server was out of the room), the
missing prev_events are asked for. Every event of the
answer is checked like any received PDU (format, signatures, content hash;
``protocol.pdu.check_received_pdu``), kept only if it is reachable from what
we asked for through prev_events, and checked against its auth events and
against the state before it (rejected events are stored, never shown).
The state before an event whose prev_events we lack is the state after
them as the server has it, and auth events we lack are its auth chain, both
fetched, checked and stored as outliers by ``gaps.EventFetcher`` (as for a
gap in live traffic). The batch goes through the persister
as backfilled history: stream positions below zero, so it sorts by the DAG
in ``/messages`` but never shows in ``/sync`` or goes out to other servers.

Bounded: one request for the events (at most ``limit``), state fills for
at most ``MAX_STATE_FILLS`` events missing prev_events (the fetcher's own
bounds per fill), one auth chain, everything within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from ...federation.client import FederationClient, FederationError
from ...protocol.auth import AuthError, auth_state_from_auth_events, check_auth_rules
from ...protocol.errors import ProtocolError
from ...protocol.events import Event, StateKey, auth_types_for_event, create_event_id_for_room
from ...protocol.pdu import check_pdu_format, check_received_pdu
from ...protocol.room_versions import RoomVersion, get_room_version
from ...protocol.state_res import resolve_state
from ...storage.backfill import BackfillStore
from ...storage.events import EventStore
from ...storage.federation_queue import FederationQueueStore
from ..persister import EventContext, NewEvent, Persister
from ..server_keys import KeyStore, KeyUnavailable
from .gaps import EventFetcher, FetchBudget, GapFetchError

log = logging.getLogger(__name__)

MAX_BACKFILL = 100  # events asked for in one request
MAX_STARTS = 10  # missing prev_events named in one request
MAX_SERVERS_TRIED = 3
MAX_STATE_FILLS = 5  # events missing prev_events whose state is fetched, per backfill
# backward extremities no server gave anything for: not asked again for
# this long (in this process), so each /messages page that reaches one does
# not wait on other servers again
FRUITLESS_RETRY_S = 60.0
MAX_FRUITLESS = 10_000


class _BadAnswer(Exception):
    pass


def _q(value: str) -> str:
    return quote(value, safe="")


class Backfiller:
    def __init__(
        self,
        server_name: str,
        events: EventStore,
        store: BackfillStore,
        persister: Persister,
        fetcher: EventFetcher,
        key_store: KeyStore,
        client: FederationClient,
        queue: FederationQueueStore,
        *,
        timeout_s: float = 15.0,
    ) -> None:
        self.server_name = server_name
        self.events = events
        self.store = store
        self.persister = persister
        self.fetcher = fetcher
        self.key_store = key_store
        self.client = client
        self.queue = queue
        self.timeout_s = timeout_s
        self.events_backfilled = 0
        self._fruitless: dict[str, float] = {}  # backward extremity -> not before (monotonic)
        self._creators: dict[str, str] = {}  # room -> its creator

    async def backfill(
        self, room_id: str, max_depth: int | None, limit: int, *, min_depth: int | None = None,
        tried: set[str] | None = None,
    ) -> int:
        """Fetch up to ``limit`` events from the room's backward
        extremities at depths in [``min_depth``, ``max_depth``] (None:
        unbounded): the bottom of our history, or a hole in its middle.
        ``tried``: extremities already fetched from (by this /messages
        request), skipped, and those fetched from now are added. The number
        of events added to the timeline."""
        creator = self._creators.get(room_id)
        if creator is None:  # a room's creator never changes: read once per room
            creator = await self.store.room_creator(room_id)
            if creator is not None:
                if len(self._creators) >= MAX_FRUITLESS:
                    self._creators.clear()
                self._creators[room_id] = creator
        if creator is None or creator.endswith(":" + self.server_name):
            # a room made here has no holes: events from other servers are
            # taken only once their prev_events are known (receiver.py)
            return 0
        tried = set() if tried is None else tried
        now = time.monotonic()
        found = await self.store.missing_prevs(room_id, max_depth, MAX_STARTS + len(tried), min_depth=min_depth)
        starts = [s for s in found if s not in tried and self._fruitless.get(s, 0.0) <= now][:MAX_STARTS]
        if not starts:
            return 0
        tried.update(starts)
        version = await self.events.room_version(room_id)
        if version is None:
            return 0
        rv = get_room_version(version)
        servers = [s for s in await self.queue.allowed_servers_in_room(room_id) if s != self.server_name]
        added = 0
        for server in servers[:MAX_SERVERS_TRIED]:
            try:
                async with asyncio.timeout(self.timeout_s):
                    added = await self._from(server, room_id, rv, starts, max(1, min(limit, MAX_BACKFILL)))
                    break
            except (FederationError, GapFetchError, _BadAnswer, TimeoutError) as e:
                log.info("backfill of %s from %s failed: %s", room_id, server, e)
        if not added:  # not asked again for a while (each page reaching it would)
            if len(self._fruitless) >= MAX_FRUITLESS:
                self._fruitless = {k: v for k, v in self._fruitless.items() if v > now}
            if len(self._fruitless) < MAX_FRUITLESS:
                self._fruitless.update((s, now + FRUITLESS_RETRY_S) for s in starts)
        return added

    async def _from(self, server: str, room_id: str, rv: RoomVersion, starts: list[str], limit: int) -> int:
        path = (f"/_matrix/federation/v1/backfill/{_q(room_id)}?"
                + "&".join(f"v={_q(s)}" for s in starts) + f"&limit={limit}")
        answer = await self.client.get_json(server, path)
        pdus = answer.get("pdus") if isinstance(answer, Mapping) else None
        if not isinstance(pdus, list):
            raise _BadAnswer("backfill answer without pdus")
        checked: dict[str, Event] = {}
        for pdu in pdus[:limit]:
            ev = await self._check_pdu(pdu, room_id, rv)
            if ev is not None:
                checked.setdefault(ev.event_id, ev)
        # only what we asked for: the starts and their ancestors in the answer
        reachable: set[str] = set()
        todo_ids = [s for s in starts if s in checked]
        while todo_ids:
            eid = todo_ids.pop()
            if eid not in reachable:
                reachable.add(eid)
                todo_ids.extend(p for p in checked[eid].prev_event_ids if p in checked)
        known = await self.events.stored_info(reachable)
        fresh = {i: checked[i] for i in reachable if i not in known or known[i].outlier}
        order = _prevs_first(fresh)
        if not order:
            return 0
        batch = await self._contexts(server, room_id, rv, order)
        result = await self.persister.persist(room_id, batch, room_version=rv, backfilled=True)
        added = sum(1 for p in result.positions if p is not None)
        self.events_backfilled += added
        return added

    async def _check_pdu(self, pdu: Any, room_id: str, rv: RoomVersion) -> Event | None:
        """The checked event, None when refused or of another room (a v12
        create event names no room: its id implies it)."""
        if not isinstance(pdu, Mapping) or pdu.get("room_id", room_id) != room_id:
            return None
        try:
            check_pdu_format(pdu, rv)
            lookup = await self.key_store.key_lookup_for_pdu(pdu, rv)
            received = check_received_pdu(pdu, rv, lookup)
        except (ProtocolError, KeyUnavailable, KeyError, TypeError) as e:
            log.info("a backfilled PDU was refused: %s", e)
            return None
        return received.event if received.event.room_id == room_id else None

    # -- the state before each event and its auth checks ----------------------------
    async def _contexts(self, server: str, room_id: str, rv: RoomVersion, order: list[Event]) -> list[NewEvent]:
        in_batch = {e.event_id: e for e in order}
        create_id = create_event_id_for_room(room_id, rv)
        budget = FetchBudget(state_fills=MAX_STATE_FILLS,
                             deadline=asyncio.get_running_loop().time() + self.timeout_s)
        await self._ensure_auth_events(server, room_id, rv, order, in_batch, create_id, budget)
        outside = {p for e in order for p in e.prev_event_ids if p not in in_batch}
        prev_info = await self.events.stored_info(outside)
        groups = await self.events.state_ids_for_groups(
            i.state_group for i in prev_info.values() if i.state_group is not None and not i.outlier
        )
        cache = _EventCache(self.events, rv, in_batch)
        after: dict[str, dict[StateKey, str]] = {}
        rejected: set[str] = set()
        batch: list[NewEvent] = []
        for ev in order:
            sets: list[dict[StateKey, str]] = []
            missing: list[str] = []
            for p in ev.prev_event_ids:
                info = prev_info.get(p)
                if p in after:
                    sets.append(after[p])
                elif info is not None and not info.outlier and info.state_group in groups:
                    sets.append(dict(groups[info.state_group]))
                else:
                    missing.append(p)
            if missing:
                try:  # the state after the prev events we lack, as the server has it
                    sets += (await self.fetcher.states_after(server, room_id, rv, missing, budget)).values()
                except GapFetchError as e:
                    log.info("backfill of %s stops at %s: %s", room_id, ev.event_id, e)
                    break  # the rest waits for the next backfill
            if len(sets) == 1:
                before = sets[0]
            elif not sets:
                before = {}
            else:
                before = await self._resolve(rv, sets, in_batch, rejected)
            reason = await self._auth_check(ev, before, cache, rejected, create_id)
            if reason is not None:
                rejected.add(ev.event_id)
                log.info("backfilled event %s rejected: %s", ev.event_id, reason)
            state_after = dict(before)
            if ev.is_state and reason is None:
                state_after[ev.state_tuple] = ev.event_id
            after[ev.event_id] = state_after
            batch.append(NewEvent(ev, EventContext(state_before=before, rejected_reason=reason)))
        return batch

    async def _resolve(self, rv: RoomVersion, sets: list[dict[StateKey, str]], in_batch: Mapping[str, Event],
                       rejected: set[str]) -> dict[StateKey, str]:
        ids = {i for s in sets for i in s.values()}
        ids |= {a for i in ids if i in in_batch for a in in_batch[i].auth_event_ids}
        loaded, was_rejected = await self.events.auth_chain_events(ids, rv)
        return resolve_state(rv, sets, lambda i: loaded.get(i) or in_batch.get(i),
                             is_rejected=lambda i: i in was_rejected or i in rejected)

    async def _auth_check(self, ev: Event, before: Mapping[StateKey, str], cache: "_EventCache",
                          rejected: set[str], create_id: str | None) -> str | None:
        wanted = [*ev.auth_event_ids, *([create_id] if create_id else [])]
        await cache.load(wanted)
        try:
            auth_state = auth_state_from_auth_events(
                ev, cache.get, is_rejected=lambda i: i in rejected or i in cache.rejected
            )
            check_auth_rules(ev, auth_state)
        except AuthError as e:
            return f"auth events: {e}"
        keys = set(auth_types_for_event(ev.room_version, ev.type, ev.sender, ev.state_key, ev.content))
        keys.add(("m.room.create", ""))
        ids = {k: before[k] for k in keys if k in before}
        await cache.load(ids.values())
        state = {k: found for k, i in ids.items() if (found := cache.get(i)) is not None}
        try:
            check_auth_rules(ev, state)
        except AuthError as e:
            return f"state before the event: {e}"
        return None

    async def _ensure_auth_events(self, server: str, room_id: str, rv: RoomVersion, order: list[Event],
                                  in_batch: Mapping[str, Event], create_id: str | None,
                                  budget: FetchBudget) -> None:
        """Auth events neither in the batch nor stored: the auth chain of
        the (first) event naming them, from the server, stored as outliers."""
        wanted = {a for e in order for a in e.auth_event_ids if a not in in_batch}
        if create_id is not None and create_id not in in_batch:
            wanted.add(create_id)
        known = await self.events.stored_info(wanted)
        lacking = [e for e in order if any(a not in known and a not in in_batch for a in e.auth_event_ids)]
        if lacking:
            await self.fetcher.fetch_auth_events(server, room_id, rv, lacking[0], budget)


class _EventCache:
    """Events by id: the batch's, then stored ones loaded on demand."""

    def __init__(self, events: EventStore, rv: RoomVersion, in_batch: Mapping[str, Event]) -> None:
        self.events = events
        self.rv = rv
        self.in_batch = in_batch
        self.loaded: dict[str, Event] = {}
        self.rejected: set[str] = set()

    async def load(self, ids: Iterable[str]) -> None:
        want = [i for i in ids if i not in self.in_batch and i not in self.loaded]
        if not want:
            return
        info = await self.events.stored_info(want)
        self.rejected.update(i for i, x in info.items() if x.rejected)
        for eid, pdu in (await self.events.get_pdus(want)).items():
            self.loaded[eid] = Event(pdu, eid, self.rv)

    def get(self, event_id: str) -> Event | None:
        return self.in_batch.get(event_id) or self.loaded.get(event_id)


def _prevs_first(events: Mapping[str, Event]) -> list[Event]:
    """Topological order within ``events`` (prev_events first), depth then
    event id breaking ties; events in a prev_events cycle are dropped."""
    waiting = {i: {p for p in e.prev_event_ids if p in events} for i, e in events.items()}
    out: list[Event] = []
    ready = sorted((i for i, w in waiting.items() if not w), key=lambda i: (events[i].depth, i))
    done: set[str] = set()
    children: dict[str, list[str]] = {}
    for i, w in waiting.items():
        for p in w:
            children.setdefault(p, []).append(i)
    while ready:
        i = ready.pop(0)
        done.add(i)
        out.append(events[i])
        for c in children.get(i, []):
            waiting[c].discard(i)
            if not waiting[c] and c not in done:
                ready.append(c)
        ready.sort(key=lambda x: (events[x].depth, x))
    return out

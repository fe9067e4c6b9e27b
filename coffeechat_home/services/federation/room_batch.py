"""One transaction's PDUs for one room: checked one after the other, in the
order and with the outcome the spec's "checks performed on receipt of a PDU"
give them one at a time, and persisted together (issue #9).

Processing them one by one read the room's state, current state, auth
events and prev events back from the database for every PDU, and persisted
each in its own transaction. Here the batch keeps what it learns:

* the state after each event of the batch (the state before it, plus the
  event itself when it is an accepted state event: what the persister
  stores as its state group), so the state before the next event is known
  without a read;
* the events read (auth events, the state's events) and the batch's own,
  with which of them were rejected;
* the room's forward extremities and current state as persisting the
  pending events will leave them, while the DAG stays a line (an accepted
  event whose prev_events cover every extremity becomes the only one, and
  the current state is the state after it); a rejected or soft-failed event
  changes neither. When the DAG forks, the pending events are persisted
  first and the persister's answer (extremities and resolved state) is the
  current state from then on.

An event leaves this fast path, and goes through the receiver's
one-at-a-time path (``_fetch_missing_prevs`` and ``_check_and_persist``)
after the pending events are persisted, whenever that path would fetch or
resolve something: a prev event or auth event we lack, an outlier, prev
events with different states (state resolution), an event a stored event
already names as a prev event. A membership change of one of our users
persists the pending events at once and makes the next event ask again
whether this server is still in the room.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ...protocol.errors import EventFormatError, ProtocolError
from ...protocol.events import Event, StateKey, create_event_id_for_room
from ...protocol.hashing import compute_event_id
from ...protocol.power_levels import server_name_of
from ...protocol.room_versions import RoomVersion, UnsupportedRoomVersion, get_room_version
from ...storage.event_writes import RowInsert
from ...storage.events import BatchLookup, RoomRow, StoredEventInfo
from ..persister import EventContext, NewEvent, PersistResult, RoomBase, UnknownRoom
from ..server_keys import KeyUnavailable
from .events_in import auth_ids_in, receipt_auth_checks
from .gaps import FetchBudget

if TYPE_CHECKING:
    from .receiver import FederationReceiver

log = logging.getLogger(__name__)

SERVER_ACL: StateKey = ("m.room.server_acl", "")


@dataclass
class Outcome:
    error: str | None = None


def answer(outcome: Outcome) -> dict[str, Any]:
    return {} if outcome.error is None else {"error": outcome.error}


class _Unread:
    """RoomBatch.run's ``room`` when the caller did not read the room's row."""


UNREAD = _Unread()
# the transaction's answer (its PDUs' results) as a row to write with its
# events (None: saved apart)
Respond = Callable[[dict[str, Any]], "RowInsert | None"]


class _Slow(Exception):
    """The event needs the one-at-a-time path (a fetch or a resolution)."""


@dataclass
class KnownHead:
    """A room's head as this process last persisted it: its forward
    extremities, current state (the state after the only extremity when
    there is one), state group and chain length, and whether a user of ours
    was joined (None: not asked). Valid while the stored extremities are
    the same (the current state follows from them)."""

    base: RoomBase
    joined: bool | None


class HeadCache:
    """KnownHead per room, the most recently used ones (safe to lose)."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._heads: collections.OrderedDict[str, KnownHead] = collections.OrderedDict()

    def get(self, room_id: str, extremities: list[str]) -> KnownHead | None:
        head = self._heads.get(room_id)
        if head is None or head.base.extremities != extremities:
            return None
        self._heads.move_to_end(room_id)
        return head

    def put(self, room_id: str, head: KnownHead) -> None:
        self._heads[room_id] = head
        self._heads.move_to_end(room_id)
        while len(self._heads) > self.size:
            self._heads.popitem(last=False)

    def forget(self, room_id: str) -> None:
        self._heads.pop(room_id, None)


class RoomBatch:
    def __init__(self, rx: FederationReceiver, origin: str, room_id: str, results: dict[str, Any]) -> None:
        self.rx = rx
        self.origin = origin
        self.room_id = room_id
        self.denied = False
        self.results = results
        self.failed = False  # a PDU failed for a reason of ours (database, bug)
        self.joined: bool | None = None  # a user of ours is joined (None: ask)
        self.pending: list[tuple[NewEvent, str, Outcome]] = []
        # the batch's events in the DAG (pending or persisted): state after each, the events
        self.after: dict[str, Mapping[StateKey, str]] = {}
        self.mine: dict[str, Event] = {}
        self.mine_rejected: set[str] = set()
        # read from the database: events (and rejected ones), stored info, state groups
        self.loaded: dict[str, Event] = {}
        self.loaded_rejected: set[str] = set()
        self.asked: set[str] = set()
        self.info: dict[str, StoredEventInfo] = {}
        self.info_asked: set[str] = set()
        self.groups: dict[int, dict[StateKey, str]] = {}
        self.successors: set[str] | None = None
        self.batch_ids: list[str] = []
        # (forward extremities, current state) once the pending events are persisted
        self.head: tuple[list[str], Mapping[StateKey, str]] | None = None
        # the room's head the pending events extend as a line (None: unknown, or not a line)
        self.base: RoomBase | None = None
        self.rv: RoomVersion | None = None
        self.partial_state = False  # joined with members omitted, not resynced yet
        self.min_depth: int | None = None  # of the room's DAG here, read when needed
        self.responded = False  # the transaction's answer was written with the last events

    # -- the batch ---------------------------------------------------------------
    async def run(
        self, pdus: list[Any], room: RoomRow | None | _Unread = UNREAD, respond: Respond | None = None,
        lookup: BatchLookup | None = None,
    ) -> None:
        """``room``: the room's (version, extremities, partial) when the
        caller read them (under the room's lock). ``respond``: when the
        batch is the whole transaction, its answer as a row to write with
        the last events (when nothing failed before). ``lookup``: the read
        ahead (``lookup_ids``) when the caller made it, with the room's row."""
        row = await self.rx.events.room_for_receipt(self.room_id) if isinstance(room, _Unread) else room
        if row is None:
            return  # unknown room: nothing to answer for
        version, extremities, self.partial_state = row
        try:
            rv = get_room_version(version)
        except UnsupportedRoomVersion:
            return
        self.rv = rv
        known = self.rx.heads.get(self.room_id, extremities)
        if known is not None:
            self._known(known.base)
            self.joined = known.joined
        if known is None or SERVER_ACL in known.base.state:
            self.denied = await self.rx._denied(self.room_id, self.origin)
        # (else the room's current state has no server ACL: every server is allowed)
        ids = [_event_id(pdu, rv) for pdu in pdus]
        self.batch_ids = [i for i in ids if i is not None]
        try:
            await self._prefetch(pdus, rv, lookup)
        except Exception:  # the reads are asked again where needed
            log.exception("reading ahead for the PDUs from %s in %s failed", self.origin, self.room_id)
        for pdu, event_id in zip(pdus, ids):
            if event_id is None:
                continue  # malformed: no event id we could answer for
            try:
                outcome = await self._one(pdu, event_id, rv)
            except Exception:
                self.failed = True
                log.exception("PDU from %s in %s failed", self.origin, self.room_id)
                self._forget()
                continue
            if outcome is not None:
                self.results[event_id] = answer(outcome)
        await self.flush(respond)

    async def _behind_the_dag(self, ev: Event) -> bool:
        if self.min_depth is None:
            self.min_depth = await self.rx.events.min_dag_depth(self.room_id)
        return self.min_depth is not None and ev.depth < self.min_depth

    def _known(self, base: RoomBase) -> None:
        self.base = base
        self.head = (list(base.extremities), base.state)  # (state maps are shared, never changed)
        if len(base.extremities) == 1:
            self.after[base.extremities[0]] = base.state

    async def _prefetch(self, pdus: list[Any], rv: RoomVersion, lookup: BatchLookup | None = None) -> None:
        """What the batch will ask, in one query: whether its events are
        stored and are a stored event's prev event, their prev events, their
        auth events (``lookup``: that query's answer, read by the caller)."""
        _, info_ids, auths = lookup_ids(pdus, self.room_id, rv, self.batch_ids)
        info_ids -= self.info_asked
        auths -= self.asked
        if lookup is None:
            lookup = await self.rx.events.batch_lookup(info_ids, auths, self.batch_ids, rv)
        infos, events, rejected, successors = lookup
        self.info.update(infos)
        self.info_asked |= info_ids | auths
        self.loaded.update(events)
        self.loaded_rejected |= rejected
        self.asked |= auths
        self.successors = successors

    # -- one PDU -------------------------------------------------------------------
    async def _one(self, pdu: Mapping[str, Any], event_id: str, rv: RoomVersion) -> Outcome | None:
        """The PDU's outcome, or None when it is pending (answered when persisted)."""
        if self.denied:
            return Outcome(f"forbidden: {self.origin} is denied by the room's server ACL")
        if self.joined is None:
            self.joined = await self.rx.store.has_joined_member_of(self.room_id, self.rx.server_name)
        if not self.joined:
            return Outcome("this server is not in the room")
        try:
            ev = await self.rx._check_pdu(pdu, rv)
        except (EventFormatError, ProtocolError, KeyUnavailable) as e:
            return Outcome(f"refused: {e}")
        if ev.event_id in self.after:
            return Outcome(None)  # earlier in this batch
        info = (await self._infos([ev.event_id])).get(ev.event_id)
        if info is not None and not info.outlier:
            return Outcome(None)
        if info is not None and await self._behind_the_dag(ev):
            # known as an outlier (the state or auth chain of our join) and
            # older than all of the room's DAG here, e.g. our user's invite
            # delivered after the join: it stays an outlier, as Synapse's
            # min-depth rule keeps it, instead of fetching its ancestors and
            # giving them all stream positions after the join (an outlier
            # in a hole of the DAG still joins it when it comes)
            return Outcome(None)
        if info is None and ev.room_id == self.room_id and ev.event_id not in await self._successors():
            try:
                return await self._fast(ev, event_id, rv)
            except _Slow:
                pass
        await self.flush()
        budget = FetchBudget()
        try:
            await self.rx._fetch_missing_prevs(self.origin, self.room_id, rv, ev, budget)
            return await self.rx._check_and_persist(self.room_id, rv, ev, self.origin, budget)
        finally:
            self._forget()  # it may have stored events, changed the room's state

    async def _fast(self, ev: Event, event_id: str, rv: RoomVersion) -> Outcome | None:
        state_before = await self._state_before(ev)
        wanted = list(ev.auth_event_ids)
        create_id = create_event_id_for_room(self.room_id, rv)
        if create_id is not None:
            wanted.append(create_id)
        await self._load(wanted, rv)
        if any(self._get(a) is None for a in wanted):
            raise _Slow()  # auth events to fetch

        async def current() -> Mapping[StateKey, str]:
            return (await self._head())[1]

        rejected_reason, soft_failed = await receipt_auth_checks(
            ev, self._get, self._is_rejected, state_before, lambda state: self._auth_state(rv, ev, state), current,
            partial_state=self.partial_state,
        )
        context = EventContext(state_before=state_before, rejected_reason=rejected_reason, soft_failed=soft_failed)
        outcome = Outcome(None if rejected_reason is None else f"rejected: {rejected_reason}")
        self.pending.append((NewEvent(ev, context), event_id, outcome))
        self.mine[ev.event_id] = ev
        if rejected_reason is not None:
            self.mine_rejected.add(ev.event_id)
        after = state_before  # a message leaves the state as it was: the same map
        if ev.is_state and rejected_reason is None:
            after = {**state_before, ev.state_tuple: ev.event_id}
        self.after[ev.event_id] = after
        if context.in_timeline and self.head is not None:
            prevs = set(ev.prev_event_ids)
            if all(x in prevs for x in self.head[0]):
                self.head = ([ev.event_id], after)  # the line goes on
            else:
                self.head = None  # a fork: the persister resolves it
                self.base = None
        if ev.type == "m.room.member" and ev.state_key is not None \
                and server_name_of(ev.state_key) == self.rx.server_name:
            await self.flush()
            self.joined = None
        return None

    async def _state_before(self, ev: Event) -> Mapping[StateKey, str]:
        prevs = ev.prev_event_ids
        if not prevs:
            raise _Slow()
        infos = await self._infos([p for p in prevs if p not in self.after])
        groups: list[int] = []
        for p in prevs:
            if p in self.after:
                continue
            i = infos.get(p)
            if i is None or i.outlier or i.state_group is None:
                raise _Slow()  # missing events, or a gap: fetched there
            groups.append(i.state_group)
        lacking = {g for g in groups if g not in self.groups}
        if lacking:
            self.groups.update(await self.rx.events.state_ids_for_groups(lacking))
        states = [self.after[p] if p in self.after else self.groups.get(infos[p].state_group or 0) for p in prevs]
        first = states[0]
        if first is None or any(s != first for s in states[1:]):
            raise _Slow()  # to resolve
        return first

    async def _auth_state(self, rv: RoomVersion, ev: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        wanted = auth_ids_in(ev, state)
        await self._load(wanted.values(), rv)
        out: dict[StateKey, Event] = {}
        for k, eid in wanted.items():
            found = self._get(eid)
            if found is not None:
                out[k] = found
        return out

    # -- what the batch knows --------------------------------------------------------
    def _get(self, event_id: str) -> Event | None:
        return self.mine.get(event_id) or self.loaded.get(event_id)

    def _is_rejected(self, event_id: str) -> bool:
        return event_id in self.mine_rejected or event_id in self.loaded_rejected

    async def _load(self, ids: Iterable[str], rv: RoomVersion) -> None:
        todo = {i for i in ids if i not in self.mine and i not in self.asked}
        if todo:
            events, rejected = await self.rx.events.events_by_id(todo, rv)
            self.loaded.update(events)
            self.loaded_rejected |= rejected
            self.asked |= todo

    async def _infos(self, ids: Iterable[str]) -> dict[str, StoredEventInfo]:
        wanted = list(dict.fromkeys(ids))
        todo = [i for i in wanted if i not in self.info_asked]
        if todo:
            self.info.update(await self.rx.events.stored_info(todo))
            self.info_asked.update(todo)
        return {i: self.info[i] for i in wanted if i in self.info}

    async def _successors(self) -> set[str]:
        if self.successors is None:
            self.successors = await self.rx.events.with_successors(self.batch_ids)
        return self.successors

    async def _head(self) -> tuple[list[str], Mapping[StateKey, str]]:
        if self.head is None:
            await self.flush()
        if self.head is None:
            self.head = (await self.rx.events.forward_extremities(self.room_id),
                         await self.rx.events.state.current_state_ids(self.room_id))
        return self.head

    def _forget(self) -> None:
        """Drop what the database may have changed under us."""
        self.head = None
        self.base = None
        self.rx.heads.forget(self.room_id)
        self.joined = None
        self.successors = None
        self.info.clear()
        self.info_asked.clear()
        self.loaded.clear()
        self.loaded_rejected.clear()
        self.asked.clear()

    # -- persisting ---------------------------------------------------------------
    async def flush(self, respond: Respond | None = None) -> None:
        """Persist the pending events in one go and answer for them;
        ``respond``: see ``run``."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        predicted = self.head
        also = None
        if respond is not None and not self.failed:
            also = respond({**self.results, **{event_id: answer(o) for _, event_id, o in pending}})
        try:
            result = await self._persist([p[0] for p in pending], also)
        except UnknownRoom:
            self._drop(pending)
            for _, event_id, _ in pending:
                self.results[event_id] = answer(Outcome("unknown room"))
            return
        except Exception:
            self.failed = True
            log.exception("persisting %d PDUs from %s in %s failed", len(pending), self.origin, self.room_id)
            self._drop(pending)
            return
        self.rx.pdus_processed += len(pending)
        self.responded = also is not None
        for _, event_id, outcome in pending:
            self.results[event_id] = answer(outcome)
        if predicted is None or predicted[1] != result.current_state:
            # a resolution (or a write from elsewhere) may have changed our users' memberships
            self.joined = None
        base = RoomBase(list(result.forward_extremities), dict(result.current_state), result.state_group,
                        result.chain_length)
        self._known(base)
        self.rx.heads.put(self.room_id, KnownHead(base, self.joined))

    async def _persist(self, batch: list[NewEvent], also: RowInsert | None = None) -> PersistResult:
        """With the compare-and-set of the local sender when the events
        extend the known head as a line (few statements), else through the
        persister's general path."""
        base = self.base
        first = batch[0].context
        if base is not None and self.rv is not None and all(b.context.in_timeline for b in batch) \
                and (first.state_before is base.state or first.state_before == base.state):
            first.state_group_before = base.state_group  # holds exactly the state before it
            result = await self.rx.persister.persist_on_base(self.room_id, batch, base, room_version=self.rv,
                                                             also=also)
            if result is not None:
                return result
        return await self.rx.persister.persist(self.room_id, batch, also=also)

    def _drop(self, pending: list[tuple[NewEvent, str, Outcome]]) -> None:
        for new, _, _ in pending:
            self.after.pop(new.event.event_id, None)
            self.mine.pop(new.event.event_id, None)
            self.mine_rejected.discard(new.event.event_id)
        self._forget()


def lookup_ids(
    pdus: list[Any], room_id: str, rv: RoomVersion, batch_ids: list[str] | None = None
) -> tuple[list[str], set[str], set[str]]:
    """The batch's read ahead (``EventStore.batch_lookup``'s arguments):
    its event ids (the successors asked), the ids whose stored info it
    wants (its events, their prev events), the events it loads (their auth
    events, the room's create event)."""
    prevs: set[str] = set()
    auths: set[str] = set()
    for pdu in pdus:
        for name, into in (("prev_events", prevs), ("auth_events", auths)):
            value = pdu.get(name) if isinstance(pdu, Mapping) else None
            if isinstance(value, list):
                into.update(v for v in value[:20] if isinstance(v, str))
    create_id = create_event_id_for_room(room_id, rv)
    if create_id is not None:
        auths.add(create_id)
    if batch_ids is None:
        batch_ids = [i for i in (_event_id(pdu, rv) for pdu in pdus) if i is not None]
    return batch_ids, {*batch_ids, *prevs}, auths


def _event_id(pdu: Any, rv: RoomVersion) -> str | None:
    try:
        return compute_event_id(pdu, rv)
    except (ProtocolError, KeyError, TypeError, ValueError):
        return None

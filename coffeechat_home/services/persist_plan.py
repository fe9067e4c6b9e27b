"""The computed part of a persister write (services/persister.py): which
events become forward extremities, the state group after each event, the
room's current state (resolved with ``protocol.state_res`` when the DAG
forks), the client forms and redactions to write. It reads through the
store it is given (bound to the write's transaction) when events outside
the batch matter, and writes nothing itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson

from ..protocol.canonical import encode_canonical_json_trusted
from ..protocol.client_events import client_event, redacted_forms
from ..protocol.events import Event, StateKey
from ..protocol.power_levels import server_name_of
from ..protocol.room_versions import RoomVersion
from ..protocol.state_res import resolve_state
from ..storage.event_writes import StoredEvent
from ..storage.events import EventStore
from ..storage.room_state import SNAPSHOT_EVERY, CurrentStateChange, NewStateGroup

if TYPE_CHECKING:
    from .persister import NewEvent, RoomBase


def relation_of(event: Event) -> tuple[str, str, str | None] | None:
    relates = event.content.get("m.relates_to")
    if isinstance(relates, Mapping) and isinstance(relates.get("event_id"), str):
        rel_type = relates.get("rel_type")
        if isinstance(rel_type, str):
            return relates["event_id"], rel_type, relates["event_id"] if rel_type == "m.thread" else None
    return None


@dataclass
class _Group:
    id: int  # 0 until allocated (new groups get ids in assign_group_ids)
    chain_length: int
    state: Mapping[StateKey, str] | None  # known full state, when at hand
    new: NewStateGroup | None = None  # set for a group this write creates
    base: "_Group | None" = None  # the group a new delta group builds on


class WritePlan:
    """The pure-ish part of a write: extremities, state groups, current
    state (reads through ``store`` when events outside the batch matter)."""

    def __init__(
        self, store: EventStore, room_id: str, rv: RoomVersion, batch: Sequence[NewEvent], base: RoomBase | None
    ) -> None:
        self.store = store
        self.room_id = room_id
        self.rv = rv
        self.batch = batch
        self.base = base
        self.by_id = {b.event.event_id: b for b in batch}
        self.group_of: dict[str, _Group] = {}  # event id -> state group after it
        self.new_groups: list[NewStateGroup] = []
        self.new_group_count = 0
        self.extremities: list[str] = []
        self.current_state: dict[StateKey, str] = {}
        self.current: _Group | None = None
        self.events: dict[str, Event] = {b.event.event_id: b.event for b in batch}
        # sender of each membership event entering current state (current_state_change)
        self.member_senders: dict[str, str] = {}
        self._linear: dict[StateKey, str] | None = None

    @property
    def current_group(self) -> int:
        return self.current.id if self.current is not None else 0

    @property
    def current_chain(self) -> int:
        return self.current.chain_length if self.current is not None else 0

    # -- extremities and state ----------------------------------------------------
    async def build(self, old_extremities: list[str], old_state: Mapping[StateKey, str]) -> None:
        dag = [b for b in self.batch if not b.context.outlier]
        counting = [b for b in dag if b.context.in_timeline]
        referenced = {p for b in counting for p in b.event.prev_event_ids}
        candidates = [b.event.event_id for b in counting if b.event.event_id not in referenced]
        if self.base is None and candidates:
            candidates_set = set(candidates) - await self.store.with_successors(candidates)
            candidates = [c for c in candidates if c in candidates_set]
        self.extremities = [x for x in old_extremities if x not in referenced] + candidates
        await self._groups_for(dag)
        if self.extremities == old_extremities:
            self.current_state = dict(old_state)
            self.current = await self._room_group(old_state)
            return
        if len(self.extremities) == 1 and self.extremities[0] in self.by_id:
            only = self.extremities[0]
            self.current = self.group_of[only]
            if self.base is not None:
                # the local sender's batch is a chain of accepted events on
                # the base: its state events are the whole change
                self._linear = {b.event.state_tuple: b.event.event_id for b in self.batch if b.event.is_state}
                self.current_state = dict(old_state)
                self.current_state.update(self._linear)
            else:
                self.current_state = dict(self._state_after(self.by_id[only]))
            return
        await self._resolve()

    async def _room_group(self, state: Mapping[StateKey, str]) -> _Group | None:
        if self.base is not None:
            return _Group(self.base.state_group, self.base.chain_length, self.base.state)
        head = await self.store.state.room_head(self.room_id)
        return None if head is None else _Group(head[1], head[2], state)

    def _state_after(self, b: NewEvent) -> dict[StateKey, str]:
        state = dict(b.context.state_before)
        if b.event.is_state and b.context.rejected_reason is None:
            state[b.event.state_tuple] = b.event.event_id
        return state

    async def _groups_for(self, dag: list[NewEvent]) -> None:
        """A state group for the state after each (non-outlier) event:
        reused, a delta on the group before it, or a full snapshot."""
        given = [b.context.state_group_before for b in dag if b.context.state_group_before is not None]
        lengths: dict[int, int] = {}
        if self.base is not None:
            lengths[self.base.state_group] = self.base.chain_length
        missing = [g for g in given if g not in lengths]
        if missing:
            lengths.update(await self.store.state.chain_lengths(missing))
        prev_stored = {
            b.event.prev_event_ids[0] for b in dag
            if b.context.state_group_before is None and b.event.prev_event_ids
            and b.event.prev_event_ids[0] not in self.by_id
        }
        stored_groups: dict[str, _Group] = {}
        if prev_stored:
            info = await self.store.stored_info(prev_stored)
            gids = {i.state_group for i in info.values() if i.state_group is not None and not i.outlier}
            states = await self.store.state.state_ids_for_groups(gids)
            chains = await self.store.state.chain_lengths(gids)
            for eid, i in info.items():
                if i.state_group in states:
                    stored_groups[eid] = _Group(i.state_group, chains.get(i.state_group, 0), states[i.state_group])
        for b in dag:
            ctx = b.context
            base: _Group | None = None
            trusted = False
            if ctx.state_group_before is not None:
                base = _Group(ctx.state_group_before, lengths.get(ctx.state_group_before, 0), ctx.state_before)
                trusted = True
            elif b.event.prev_event_ids:
                first = b.event.prev_event_ids[0]
                base = self.group_of.get(first) or stored_groups.get(first)
            if base is not None and base.id == 0 and base.new is None:
                base = None  # the empty state of a new room
            if trusted and base is not None:
                # ``state_before`` is the given group's state: only the event itself changes it
                changed = (
                    {b.event.state_tuple: b.event.event_id}
                    if b.event.is_state and ctx.rejected_reason is None else {}
                )
                # (a message reuses the group: no copy of the state on the send path)
                self.group_of[b.event.event_id] = (
                    self._derive(base, changed, [], self._state_after(b)) if changed else base
                )
            else:
                self.group_of[b.event.event_id] = self._from_base(base, self._state_after(b))

    def _from_base(self, base: _Group | None, after: Mapping[StateKey, str]) -> _Group:
        if base is None or base.state is None:
            return self._derive(None, {}, [], after)
        changed = {k: v for k, v in after.items() if base.state.get(k) != v}
        removed = [k for k in base.state if k not in after]
        return self._derive(base, changed, removed, after)

    def _derive(
        self, base: _Group | None, changed: Mapping[StateKey, str], removed: list[StateKey],
        after: Mapping[StateKey, str],
    ) -> _Group:
        if base is not None and not changed and not removed:
            return base
        if base is None or removed or base.chain_length + 1 >= SNAPSHOT_EVERY:
            new = NewStateGroup(0, None, 0, dict(after))
            group = _Group(0, 0, dict(after), new)
        else:
            new = NewStateGroup(0, None, base.chain_length + 1, dict(changed))
            group = _Group(0, base.chain_length + 1, dict(after), new, base)  # prev_group set once ids are known
        self.new_groups.append(new)
        self.new_group_count += 1
        return group

    def assign_group_ids(self, ids: list[int]) -> None:
        groups = {id(g.new): g for g in self._all_groups() if g.new is not None}
        for new, gid in zip(self.new_groups, ids):
            new.id = gid
            groups[id(new)].id = gid
        for g in groups.values():
            if g.base is not None and g.new is not None:
                g.new.prev_group = g.base.id

    def _all_groups(self) -> list[_Group]:
        out = list(self.group_of.values())
        if self.current is not None:
            out.append(self.current)
        return out

    async def _resolve(self) -> None:
        """The room's state with several forward extremities."""
        sets: list[Mapping[StateKey, str]] = []
        stored = [x for x in self.extremities if x not in self.group_of]
        if stored:
            info = await self.store.stored_info(stored)
            gids = {i.state_group for i in info.values() if i.state_group is not None}
            states = await self.store.state.state_ids_for_groups(gids)
            for x in stored:
                i = info.get(x)
                if i is not None and i.state_group in states:
                    sets.append(states[i.state_group])
        for x in self.extremities:
            if x in self.by_id:
                sets.append(self._state_after(self.by_id[x]))
        if all(s == sets[0] for s in sets):
            resolved = dict(sets[0]) if sets else {}
        else:
            wanted = {eid for s in sets for eid in s.values()}
            loaded, rejected = await self.store.auth_chain_events(
                [w for w in wanted if w not in self.events], self.rv
            )
            self.events.update(loaded)
            rejected |= {b.event.event_id for b in self.batch if b.context.rejected_reason is not None}
            # auth events of batch events may themselves be in the batch
            missing = {a for e in self.events.values() for a in e.auth_event_ids if a not in self.events}
            if missing:
                more, more_rejected = await self.store.auth_chain_events(missing, self.rv)
                self.events.update(more)
                rejected |= more_rejected
            resolved = resolve_state(self.rv, sets, self.events.get, is_rejected=rejected.__contains__)
        self.current_state = resolved
        # the room's group: the last timeline event's group when it holds
        # the resolved state, else a new one on top of it
        last = next((b for b in reversed(self.batch) if b.context.in_timeline), None)
        base = self.group_of.get(last.event.event_id) if last is not None else None
        self.current = self._from_base(base, resolved)

    async def current_state_change(self, old_state: Mapping[StateKey, str]) -> CurrentStateChange:
        changed: dict[StateKey, tuple[str, str | None]] = {}
        if self._linear is not None:
            candidates: Mapping[StateKey, str] = self._linear
            removed: list[StateKey] = []
        else:
            candidates = self.current_state
            removed = [k for k in old_state if k not in self.current_state]
        new = {k: v for k, v in candidates.items() if old_state.get(k) != v}
        unknown = [v for k, v in new.items() if k[0] == "m.room.member" and v not in self.events]
        rows = await self.store.get_rows(unknown) if unknown else {}
        self.member_senders = {v: row.sender for v, row in rows.items()}
        self.member_senders.update((v, ev.sender) for k, v in new.items()
                                   if k[0] == "m.room.member" and (ev := self.events.get(v)) is not None)
        for k, v in new.items():
            ev = self.events.get(v)
            if k[0] != "m.room.member":
                membership = None
            elif ev is not None:
                membership = ev.membership
            else:
                row = rows.get(v)
                membership = row.membership if row is not None else None
            changed[k] = (v, membership)
        return CurrentStateChange(changed, removed)

    def stored_events(self, positions: list[int]) -> list[StoredEvent]:
        it = iter(positions)
        last_timeline = next((b.event.event_id for b in reversed(self.batch) if b.context.in_timeline), None)
        out: list[StoredEvent] = []
        for b in self.batch:
            ctx = b.context
            pos = next(it) if ctx.in_timeline else None
            group = None if ctx.outlier else self.group_of[b.event.event_id].id
            current = group
            if b.event.event_id == last_timeline:
                current = self.current_group or group
            out.append(
                StoredEvent(
                    event=b.event,
                    stream_pos=pos,
                    pdu_json=encode_canonical_json_trusted(b.event.pdu).decode(),
                    client_json=orjson.dumps(b.client if b.client is not None else client_event(b.event)).decode(),
                    state_group=group,
                    current_state_group=current if pos is not None else None,
                    outlier=ctx.outlier,
                    rejected_reason=ctx.rejected_reason,
                    soft_failed=ctx.soft_failed,
                    txn=b.txn,
                    relation=relation_of(b.event),
                )
            )
        return out

    async def fill_client_forms(self) -> None:
        """Client JSON (with unsigned.prev_content) for events given without."""
        need = [b for b in self.batch if b.client is None]
        replaced = {
            b.context.state_before.get(b.event.state_tuple) for b in need if b.event.is_state
        } - {None}
        pdus = await self.store.get_pdus([r for r in replaced if r is not None and r not in self.events])
        for b in need:
            prev_id = b.context.state_before.get(b.event.state_tuple) if b.event.is_state else None
            prev = self.events.get(prev_id) if prev_id else None
            if prev is None and prev_id in pdus:
                prev = Event(pdus[prev_id], prev_id, self.rv)
            b.client = client_event(b.event, prev)

    async def redactions(
        self, items: list[StoredEvent], targets: tuple[dict[str, Any], dict[str, Any]] | None
    ) -> list[tuple[str, str, str, str]]:
        wanted = [
            (it, self.by_id[it.event.event_id]) for it in items
            if it.stream_pos is not None and it.event.redacts is not None
        ]
        if not wanted:
            return []
        if targets is None:
            ids = [it.event.redacts for it, _ in wanted if it.event.redacts is not None]
            targets = (await self.store.get_pdus(ids), await self.store.get_rows(ids))
        pdus, rows = targets
        out = []
        for it, b in wanted:
            target_id = it.event.redacts
            assert target_id is not None
            pdu, row = pdus.get(target_id), rows.get(target_id)
            if pdu is None or row is None or row.room_id != it.event.room_id:
                continue
            original = Event(pdu, target_id, self.rv)
            if not b.redaction_checked and server_name_of(original.sender) != server_name_of(it.event.sender):
                continue  # a remote redaction across servers needs the redact level: the receiver decides
            rpdu, rclient = redacted_forms(pdu, orjson.loads(row.client), orjson.loads(it.client_json), original)
            out.append((target_id, encode_canonical_json_trusted(rpdu).decode(), orjson.dumps(rclient).decode(),
                        it.event.event_id))
        return out

"""Replaying a room's state from our partial join on, once its resync found
a state event that must be rejected (services/federation/partial_state.py).

While a room's state was partial, the events other servers sent were
checked against their auth events and the partial state; the resync checks
them again against the whole state. A state event that fails then had
already entered the room's state: the state groups of the events after it,
the room's current state, and any resolution of forks made with it (its
auth chain may even have brought members into the resolved state). So the
state is replayed, as Synapse recomputes the state of each event received
while partial: from the join (whose state the resync completed) through
every timeline event after it, in stream order (an event's prev events come
before it), the state before each event is the state after its prev events
(resolved when several), each event received while partial is checked
against it (one that fails is rejected and changes no state), and the
room's resolved state after each is that of the forward extremities at
that point. The state groups are then rewritten where they differ: in
place when only those events use them (and everything chained on them
follows), else by new groups for the events concerned; the current state
becomes the replay's. storage/partial_state.py ``rewrite_state`` writes it
all in one transaction.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ...errors import MatrixError
from ...protocol.events import Event, StateKey
from ...protocol.power_levels import server_name_of
from ...protocol.room_versions import RoomVersion
from ...protocol.state_res import resolve_state
from ...storage.events import EventStore
from ...storage.partial_state import GroupPatch, PartialStateWindow, StateRewrite, WindowEvent
from ...storage.room_state import SNAPSHOT_EVERY, CurrentStateChange, NewStateGroup
from .events_in import check_auth_against

State = dict[StateKey, str]


class Resolver:
    """State resolution over stored events, their auth chains loaded once."""

    def __init__(self, events: EventStore, rv: RoomVersion, rejected: set[str]) -> None:
        self.events = events
        self.rv = rv
        self.rejected = rejected  # grows as the replay rejects
        self.loaded: dict[str, Event] = {}
        self.stored_rejected: set[str] = set()

    async def resolve(self, sets: Sequence[Mapping[StateKey, str]]) -> State:
        if not sets:
            return {}
        if all(s == sets[0] for s in sets[1:]):
            return dict(sets[0])
        wanted = {eid for s in sets for eid in s.values() if eid not in self.loaded}
        if wanted:
            chain, rejected = await self.events.auth_chain_events(wanted, self.rv)
            self.loaded.update(chain)
            self.stored_rejected |= rejected
        return resolve_state(self.rv, sets, self.loaded.get,
                             is_rejected=lambda e: e in self.stored_rejected or e in self.rejected)


async def replay_state(
    events: EventStore, window_store: PartialStateWindow, room_id: str, rv: RoomVersion, join_event_id: str,
    resync_pos: int, server_name: str, reason: str, limit: int,
) -> StateRewrite | None:
    """The rewrite of the room's state from our join on (None when the
    window is over ``limit`` events or does not start at the join)."""
    extremities = await events.forward_extremities(room_id)  # read first: the write's guard
    window = await window_store.since_join(room_id, join_event_id, limit)
    if not window or window[0].event_id != join_event_id:
        return None
    evs = {w.event_id: Event(w.pdu, w.event_id, rv) for w in window}
    outside = {p for ev in evs.values() for p in ev.prev_event_ids if p not in evs}
    info = await events.stored_info(outside)
    prev_groups = {p: i.state_group for p, i in info.items() if i.state_group is not None}
    groups = {g for w in window for g in (w.state_group, w.current_state_group)}
    chains = await window_store.group_prevs(groups)
    parents = {g: p for g, (p, _) in chains.items()}
    states = await events.state_ids_for_groups(
        groups | set(prev_groups.values()) | {p for p in parents.values() if p is not None})

    rejected: set[str] = set()
    resolver = Resolver(events, rv, rejected)
    join = window[0]
    after: dict[str, State] = {join.event_id: states[join.state_group]}
    room_after: dict[str, State] = {join.event_id: states[join.current_state_group]}
    ext = [join.event_id]
    for w in window[1:]:
        ev = evs[w.event_id]
        sets = [after[p] if p in after else states[prev_groups[p]] for p in ev.prev_event_ids
                if p in after or p in prev_groups]
        before = await resolver.resolve(sets)
        accepted = True
        if w.stream_pos < resync_pos and server_name_of(ev.sender) != server_name:
            try:
                await check_auth_against(events, ev, before)
            except MatrixError:
                accepted = False
                rejected.add(w.event_id)
        state = dict(before)
        if accepted and ev.is_state:
            state[ev.state_tuple] = ev.event_id
        after[w.event_id] = state
        if accepted:
            ext = [x for x in ext if x not in ev.prev_event_ids] + [w.event_id]
        room_after[w.event_id] = await resolver.resolve([after[x] for x in ext])

    patches, new_groups, event_groups = await _group_rewrites(window_store, room_id, window, after, room_after,
                                                              states, chains)
    current = room_after[window[-1].event_id]
    stored_current = await events.state.current_state_ids(room_id)
    changed = {k: v for k, v in current.items() if stored_current.get(k) != v}
    removed = [k for k in stored_current if k not in current]
    rows = await events.get_rows(v for k, v in changed.items() if k[0] == "m.room.member")
    change = CurrentStateChange(
        {k: (v, rows[v].membership if k[0] == "m.room.member" and v in rows else None) for k, v in changed.items()},
        removed)
    return StateRewrite(
        extremities=extremities, rejected=[w.event_id for w in window if w.event_id in rejected], reason=reason,
        patches=patches, new_groups=new_groups, event_groups=event_groups, current=change,
        member_senders={v: r.sender for v, r in rows.items()},
    )


async def _group_rewrites(
    window_store: PartialStateWindow, room_id: str, window: list[WindowEvent], after: dict[str, State],
    room_after: dict[str, State], states: dict[int, State], chains: dict[int, tuple[int | None, int]],
) -> tuple[list[GroupPatch], list[NewStateGroup], dict[str, tuple[int, int]]]:
    """Which groups are rewritten in place (those only the window's events
    use, with one target state each, and whose every descendant can be
    rewritten too), and the new groups of the events whose group cannot be."""
    targets: dict[int, State] = {}
    conflicting: set[int] = set()
    for w in window:
        for g, t in ((w.state_group, after[w.event_id]), (w.current_state_group, room_after[w.event_id])):
            if g in targets and targets[g] != t:
                conflicting.add(g)
            targets.setdefault(g, t)
    changed = {g for g, t in targets.items() if t != states.get(g)}
    if not changed:
        return [], [], {}
    elsewhere = await window_store.groups_used_elsewhere(room_id, targets, [w.event_id for w in window])
    children: dict[int, list[int]] = {}
    for g, p in (await window_store.group_children(room_id, targets)).items():
        children.setdefault(p, []).append(g)
    eligible = {g for g in targets if g not in conflicting and g not in elsewhere}
    memo: dict[int, bool] = {}

    def clean(g: int, depth: int = 0) -> bool:  # g and every group chained on it can be rewritten
        if g not in memo:
            memo[g] = g in eligible and depth < SNAPSHOT_EVERY * 4 and all(
                clean(c, depth + 1) for c in children.get(g, ()))
        return memo[g]

    in_place: set[int] = set()
    patches: list[GroupPatch] = []
    for g in sorted(targets):
        parent = chains[g][0] if g in chains else None
        if not clean(g) or (g not in changed and parent not in in_place):
            continue
        in_place.add(g)
        target = targets[g]
        if parent is None:
            stored = states.get(g, {})
            patches.append(GroupPatch(g, {k: v for k, v in target.items() if stored.get(k) != v},
                                      [k for k in stored if k not in target], replace=False, snapshot=False))
            continue
        base = targets[parent] if parent in in_place else states.get(parent, {})
        if any(k not in target for k in base):
            patches.append(GroupPatch(g, dict(target), [], replace=True, snapshot=True))
        else:
            patches.append(GroupPatch(g, {k: v for k, v in target.items() if base.get(k) != v}, [],
                                      replace=True, snapshot=False))

    new_groups: list[NewStateGroup] = []
    made: list[tuple[int, State, int]] = []  # (old group, state, placeholder id)

    def group_for(old: int, target: State) -> int:
        if old in in_place or states.get(old) == target:
            return old
        for o, t, placeholder in made:
            if o == old and t == target:
                return placeholder
        placeholder = -(len(new_groups) + 1)
        stored = states.get(old, {})
        length = chains[old][1] + 1 if old in chains else SNAPSHOT_EVERY
        if any(k not in target for k in stored) or length >= SNAPSHOT_EVERY:
            new = NewStateGroup(placeholder, None, 0, dict(target))
        else:  # a delta on the old group (left as it is)
            new = NewStateGroup(placeholder, old, length, {k: v for k, v in target.items() if stored.get(k) != v})
        new_groups.append(new)
        made.append((old, target, placeholder))
        return placeholder

    event_groups: dict[str, tuple[int, int]] = {}
    for w in window:
        sg = group_for(w.state_group, after[w.event_id])
        csg = group_for(w.current_state_group, room_after[w.event_id])
        if (sg, csg) != (w.state_group, w.current_state_group):
            event_groups[w.event_id] = (sg, csg)
    return patches, new_groups, event_groups

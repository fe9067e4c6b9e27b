"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12).

One synchronous function, ``resolve_state``, gets events through a callable
and returns the resolved state map. The steps follow the spec:

1. split the state sets into the unconflicted state map and the conflicted
   state set;
2. full conflicted set = conflicted set + auth difference (+ for v2.1 the
   conflicted state subgraph: events on auth-event paths between two
   conflicted events);
3. power events of the full conflicted set, plus the events of their auth
   chains that are in the full conflicted set, in reverse topological power
   ordering (Kahn's algorithm, smallest of (-sender power, origin_server_ts,
   event_id) first);
4. iterative auth checks of those, starting from the unconflicted state (v2)
   or from an empty map (v2.1);
5. the other events in mainline ordering of the resolved power levels event,
   then iterative auth checks of them on top;
6. the unconflicted state applied over the result.

Events that ``get_event`` cannot supply are left out. Events the caller
marks rejected (``is_rejected``) are never admitted into the state nor used
as auth events. The spec wants events rejected only against the state
before them (soft-failed) to be re-checked like any other: pass
``is_rejected`` for events rejected against their own auth events to follow
it exactly; passing every rejected event gives Synapse's behaviour.

The result does not depend on the order of the state sets nor on the
iteration order of any mapping: every ordering ends in a total order whose
last key is the event id.

Two choices follow Synapse and ruma where the spec's words are looser, so
that servers converge: the full auth chain of a state set includes the
state's own events, and step 3 reaches auth-chain events only through events
of the full conflicted set. The create event counts as a power event (both
matter only if a create event is ever conflicted).
"""

from __future__ import annotations

import heapq
import math
from typing import Callable, Iterable, Mapping, Sequence

from .auth import AuthError, check_auth_rules
from .power_levels import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, POWER_LEVELS_KEY, PowerLevel, get_power_level
from .events import Event, StateKey, auth_types_for_event, create_event_id_for_room
from .room_versions import RoomVersion, StateResAlgorithm

GetEvent = Callable[[str], "Event | None"]
GetAuthChain = Callable[[Iterable[str]], "set[str]"]
IsRejected = Callable[[str], bool]

__all__ = [
    "resolve_state",
    "separate_state_sets",
    "is_power_event",
    "iterative_auth_checks",
]


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    get_auth_chain: GetAuthChain | None = None,
    *,
    is_rejected: IsRejected | None = None,
) -> dict[StateKey, str]:
    """Resolve several room states into one.

    ``get_event(event_id)`` returns an event of this room or None.
    ``get_auth_chain(event_ids)`` (optional, e.g. from an index in storage)
    returns the auth chain of those events: every event reachable through
    ``auth_events``; the given events themselves may be included or not.
    Without it, auth chains are walked through ``get_event``.
    ``is_rejected(event_id)`` marks events rejected on receipt.
    """
    if not state_sets:
        return {}
    unconflicted, conflicted = separate_state_sets(state_sets)
    if not conflicted:
        return unconflicted
    resolver = _Resolver(room_version, get_event, is_rejected)
    conflicted_ids: set[str] = set().union(*conflicted.values())
    full_conflicted = conflicted_ids | resolver.auth_difference(state_sets, unconflicted, get_auth_chain)
    if room_version.state_res is StateResAlgorithm.V2_1:
        full_conflicted |= resolver.conflicted_subgraph(conflicted_ids)
        base: dict[StateKey, str] = {}
    else:
        base = dict(unconflicted)
    full_conflicted = {eid for eid in full_conflicted if resolver.event(eid) is not None}
    resolved = resolver.resolve_full_conflicted_set(full_conflicted, base)
    resolved.update(unconflicted)
    return resolved


def separate_state_sets(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The unconflicted state map and the conflicted state set (by key).

    A key missing from some state set is conflicted.
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys: set[StateKey] = set()
    for state in state_sets:
        keys.update(state.keys())
    first, rest = state_sets[0], state_sets[1:]
    for key in keys:
        value = first.get(key)
        if value is not None and all(state.get(key) == value for state in rest):
            unconflicted[key] = value
            continue
        values = {state.get(key) for state in state_sets}
        values.discard(None)
        conflicted[key] = values  # type: ignore[assignment]
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """Power levels, join rules, and kicks/bans (leave/ban of another user).

    The create event counts too, as in Synapse and ruma; it only matters if
    a create event is ever in the full conflicted set.
    """
    if event.state_key == "" and event.type in (POWER_LEVELS, JOIN_RULES, CREATE):
        return True
    if event.type == MEMBER and event.state_key is not None:
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return False


def iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: Sequence[str],
    base_state: Mapping[StateKey, str],
    get_event: GetEvent,
    *,
    is_rejected: IsRejected | None = None,
) -> dict[StateKey, str]:
    """Apply ``event_ids`` in order to ``base_state``, keeping those that pass
    the authorization rules (the spec's *iterative auth checks*)."""
    resolver = _Resolver(room_version, get_event, is_rejected)
    state = dict(base_state)
    resolver.iterative_auth_checks(event_ids, state)
    return state


class _Resolver:
    """Caches (events, auth event ids, sender power, power-level parents)
    for one resolution."""

    def __init__(self, room_version: RoomVersion, get_event: GetEvent, is_rejected: IsRejected | None):
        self.room_version = room_version
        self._get_event = get_event
        self._is_rejected = is_rejected
        self._events: dict[str, Event | None] = {}
        self._auth_ids: dict[str, tuple[str, ...]] = {}
        self._pl_parent: dict[str, str | None] = {}
        self._implied_create = not room_version.create_event_in_auth_events

    # ---- event access ---------------------------------------------------

    def event(self, event_id: str) -> Event | None:
        try:
            return self._events[event_id]
        except KeyError:
            ev = self._get_event(event_id)
            self._events[event_id] = ev
            return ev

    def rejected(self, event_id: str) -> bool:
        return self._is_rejected is not None and self._is_rejected(event_id)

    def auth_ids(self, event_id: str) -> tuple[str, ...]:
        """An event's auth events; in v12 with the create event implied by
        its room id (as if listed)."""
        try:
            return self._auth_ids[event_id]
        except KeyError:
            pass
        ev = self.event(event_id)
        if ev is None:
            ids: tuple[str, ...] = ()
        else:
            ids = tuple(dict.fromkeys(ev.auth_event_ids))
            if self._implied_create and ev.type != CREATE and isinstance(ev.room_id, str):
                create_id = create_event_id_for_room(ev.room_id, self.room_version)
                if create_id is not None and create_id not in ids:
                    ids = ids + (create_id,)
        self._auth_ids[event_id] = ids
        return ids

    # ---- auth chains ----------------------------------------------------

    def auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(event_ids)
        while stack:
            for aid in self.auth_ids(stack.pop()):
                if aid not in seen:
                    seen.add(aid)
                    stack.append(aid)
        return seen

    def auth_difference(
        self,
        state_sets: Sequence[Mapping[StateKey, str]],
        unconflicted: Mapping[StateKey, str],
        get_auth_chain: GetAuthChain | None,
    ) -> set[str]:
        """Union minus intersection of the full auth chains of the state
        sets (each including the state's own events, as Synapse and ruma do).

        The unconflicted events are in every state set, so their auth chain
        is computed once and removed; only the per-set remainders differ.
        """
        chain = get_auth_chain or self.auth_chain
        common_roots = set(unconflicted.values())
        common = set(chain(common_roots)) | common_roots
        per_set: list[set[str]] = []
        for state in state_sets:
            roots = {eid for key, eid in state.items() if key not in unconflicted}
            per_set.append(set(chain(roots)) | roots)
        union = set().union(*per_set)
        intersection = set.intersection(*per_set)
        return union - intersection - common

    def conflicted_subgraph(self, conflicted_ids: set[str]) -> set[str]:
        """Events on some auth-event path from one conflicted event to
        another (endpoints included)."""
        below = set(conflicted_ids)
        stack = list(conflicted_ids)
        while stack:
            for aid in self.auth_ids(stack.pop()):
                if aid not in below:
                    below.add(aid)
                    stack.append(aid)
        children: dict[str, list[str]] = {}
        for eid in below:
            for aid in self.auth_ids(eid):
                children.setdefault(aid, []).append(eid)
        reaching = set(conflicted_ids)
        stack = list(conflicted_ids)
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in reaching:
                    reaching.add(child)
                    stack.append(child)
        return reaching & below

    # ---- orderings ------------------------------------------------------

    def sender_power(self, event_id: str) -> PowerLevel:
        """The sender's power level according to the event's auth events."""
        ev = self.event(event_id)
        assert ev is not None
        auth_state: dict[StateKey, Event] = {}
        for aid in self.auth_ids(event_id):
            ae = self.event(aid)
            if ae is not None and ae.state_key == "" and ae.type in (POWER_LEVELS, CREATE):
                auth_state[(ae.type, "")] = ae
        return get_power_level(ev.sender, auth_state, self.room_version)

    def reverse_topological_power_order(self, power_ids: Iterable[str], full_conflicted: set[str]) -> list[str]:
        """The power events and the events of their auth chains that are in
        the full conflicted set, earliest first."""
        auth_edges: dict[str, set[str]] = {}
        stack = list(power_ids)
        while stack:
            eid = stack.pop()
            if eid in auth_edges:
                continue
            edges = {aid for aid in self.auth_ids(eid) if aid in full_conflicted}
            auth_edges[eid] = edges
            stack.extend(aid for aid in edges if aid not in auth_edges)

        def key(eid: str) -> tuple[PowerLevel, int, str]:
            ev = self.event(eid)
            assert ev is not None
            return (-self.sender_power(eid), ev.origin_server_ts, eid)

        dependents: dict[str, list[str]] = {eid: [] for eid in auth_edges}
        remaining: dict[str, int] = {}
        ready: list[tuple[tuple[PowerLevel, int, str], str]] = []
        for eid, edges in auth_edges.items():
            remaining[eid] = len(edges)
            for aid in edges:
                dependents[aid].append(eid)
            if not edges:
                ready.append((key(eid), eid))
        heapq.heapify(ready)
        ordered: list[str] = []
        while ready:
            _, eid = heapq.heappop(ready)
            ordered.append(eid)
            for dep in dependents[eid]:
                remaining[dep] -= 1
                if remaining[dep] == 0:
                    heapq.heappush(ready, (key(dep), dep))
        return ordered

    def pl_parent(self, event_id: str) -> str | None:
        """The power levels event among an event's auth events."""
        try:
            return self._pl_parent[event_id]
        except KeyError:
            pass
        parent = None
        for aid in self.auth_ids(event_id):
            ae = self.event(aid)
            if ae is not None and ae.type == POWER_LEVELS and ae.state_key == "":
                parent = aid
                break
        self._pl_parent[event_id] = parent
        return parent

    def mainline_order(self, event_ids: Iterable[str], power_levels_id: str | None) -> list[str]:
        """Mainline ordering based on ``power_levels_id``: events whose
        power levels ancestry joins the mainline earlier come first."""
        mainline: dict[str, int] = {}
        pl = power_levels_id
        while pl is not None and pl not in mainline:
            mainline[pl] = len(mainline)
            pl = self.pl_parent(pl)
        positions: dict[str, float] = {}

        def position(first_pl: str | None) -> float:
            path: list[str] = []
            current = first_pl
            while current is not None and current not in mainline and current not in positions:
                if current in path:  # a cycle: cannot happen with hashed ids
                    break
                path.append(current)
                current = self.pl_parent(current)
            if current is None or current in path:
                value: float = math.inf
            elif current in mainline:
                value = mainline[current]
            else:
                value = positions[current]
            for p in path:
                positions[p] = value
            return value

        def key(eid: str) -> tuple[float, int, str]:
            ev = self.event(eid)
            assert ev is not None
            return (-position(self.pl_parent(eid)), ev.origin_server_ts, eid)

        return sorted(event_ids, key=key)

    # ---- iterative auth checks -------------------------------------------

    def auth_state_for(self, ev: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        """The event's (non-rejected) auth events, overridden by the entries
        of ``state`` for the keys the auth events selection would pick."""
        auth_state: dict[StateKey, Event] = {}
        for aid in self.auth_ids(ev.event_id):
            ae = self.event(aid)
            if ae is not None and ae.state_key is not None and not self.rejected(aid):
                auth_state[(ae.type, ae.state_key)] = ae
        for key in auth_types_for_event(self.room_version, ev.type, ev.sender, ev.state_key, ev.content):
            sid = state.get(key)
            if sid is not None and not self.rejected(sid):
                se = self.event(sid)
                if se is not None:
                    auth_state[key] = se
        return auth_state

    def iterative_auth_checks(self, event_ids: Iterable[str], state: dict[StateKey, str]) -> None:
        for eid in event_ids:
            ev = self.event(eid)
            if ev is None or ev.state_key is None or self.rejected(eid):
                continue
            try:
                check_auth_rules(ev, self.auth_state_for(ev, state))
            except AuthError:
                continue
            state[(ev.type, ev.state_key)] = eid

    def resolve_full_conflicted_set(self, full_conflicted: set[str], base: dict[StateKey, str]) -> dict[StateKey, str]:
        power_ids = [eid for eid in full_conflicted if is_power_event(self.event(eid))]  # type: ignore[arg-type]
        ordered_power = self.reverse_topological_power_order(power_ids, full_conflicted)
        state = base
        self.iterative_auth_checks(ordered_power, state)
        done = set(ordered_power)
        others = [eid for eid in full_conflicted if eid not in done]
        self.iterative_auth_checks(self.mainline_order(others, state.get(POWER_LEVELS_KEY)), state)
        return state


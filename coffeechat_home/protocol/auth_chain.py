"""Auth checks for a batch of events received together: the state and auth
chain of a ``send_join`` answer, a ``/state`` answer, missing auth events.

Each event is checked against its own ``auth_events`` (the spec's checks 4
and 5 on receipt of a PDU), in an order where every event comes after the
auth events it names, so that an event whose auth event was rejected is
rejected too. Events already known to the caller (``known``) are used as
auth events without being checked again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from .auth import AuthError, ServerSignatureCheck, auth_state_from_auth_events, check_auth_rules
from .events import Event


@dataclass
class AuthChainResult:
    accepted: dict[str, Event] = field(default_factory=dict)
    # event id -> why it was rejected
    rejected: dict[str, str] = field(default_factory=dict)


def check_auth_chain(
    events: Iterable[Event],
    *,
    known: Callable[[str], Event | None] = lambda _id: None,
    known_rejected: Callable[[str], bool] = lambda _id: False,
    is_signed_by_server: ServerSignatureCheck | None = None,
) -> AuthChainResult:
    """Check every event of ``events`` against its auth events (found among
    ``events`` or through ``known``). Events in an auth cycle, or whose auth
    events are missing or rejected, are rejected."""
    batch: dict[str, Event] = {}
    for ev in events:
        batch.setdefault(ev.event_id, ev)
    result = AuthChainResult()

    def get(event_id: str) -> Event | None:
        if event_id in result.accepted:
            return result.accepted[event_id]
        if event_id in result.rejected:
            return batch[event_id]  # found, then refused by is_rejected
        return None if event_id in batch else known(event_id)

    def is_rejected(event_id: str) -> bool:
        return event_id in result.rejected or (event_id not in batch and known_rejected(event_id))

    for ev in _auth_order(batch, result):
        try:
            auth_state = auth_state_from_auth_events(ev, get, is_rejected=is_rejected)
            check_auth_rules(ev, auth_state, is_signed_by_server=is_signed_by_server)
        except AuthError as e:
            result.rejected[ev.event_id] = str(e)
            continue
        result.accepted[ev.event_id] = ev
    return result


def _auth_order(batch: Mapping[str, Event], result: AuthChainResult) -> list[Event]:
    """The batch's events, each after the batch events among its auth events
    (and the v12 create event, which rooms imply rather than list). Events
    on an auth cycle are marked rejected and left out."""
    order: list[Event] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done
    for root in sorted(batch.values(), key=lambda e: (e.depth, e.event_id)):
        if root.event_id in state:
            continue
        # iterative depth-first walk (auth chains can be long)
        # (each event's batch auth events worked out once, when first met)
        stack: list[tuple[Event, list[str], int]] = [(root, _auth_deps(root, batch), 0)]
        state[root.event_id] = 1
        while stack:
            ev, deps, i = stack.pop()
            if i < len(deps):
                stack.append((ev, deps, i + 1))
                dep = batch[deps[i]]
                if state.get(dep.event_id) == 1:
                    for cyc, _, _ in stack:
                        result.rejected.setdefault(cyc.event_id, "auth_events: cycle")
                elif dep.event_id not in state:
                    state[dep.event_id] = 1
                    stack.append((dep, _auth_deps(dep, batch), 0))
                continue
            state[ev.event_id] = 2
            if ev.event_id not in result.rejected:
                order.append(ev)
    return order


def _auth_deps(ev: Event, batch: Mapping[str, Event]) -> list[str]:
    deps = [a for a in ev.auth_event_ids if a in batch and a != ev.event_id]
    create_id = _implied_create_id(ev)
    if create_id is not None and create_id in batch and create_id not in deps:
        deps.append(create_id)
    return deps


def _implied_create_id(ev: Event) -> str | None:
    if ev.type == "m.room.create" or ev.room_version.create_event_in_auth_events:
        return None
    return "$" + ev.room_id[1:] if isinstance(ev.room_id, str) else None

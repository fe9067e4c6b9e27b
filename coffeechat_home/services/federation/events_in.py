"""Checks of a single event that another server hands us through the
resident server's routes (send_join, send_leave) or as an answer (an
invite signed by the invitee's server): format, signatures, content hash
(protocol/pdu.py), then the auth rules against the state before it.

The general inbound pipeline (/send, missing events) lives in receiver.py
and room_batch.py; both end with ``receipt_auth_checks`` here (auth events,
state before, soft failure against the current state).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Mapping

from ...errors import MatrixError, forbidden
from ...protocol.auth import AuthError, auth_state_from_auth_events, check_auth_rules
from ...protocol.errors import EventFormatError, ProtocolError, SignatureError
from ...protocol.events import Event, StateKey, auth_types_for_event
from ...protocol.pdu import check_received_pdu
from ...protocol.room_versions import RoomVersion
from ...protocol.state_res import resolve_state
from ...storage.events import EventStore
from ..server_keys import KeyStore

log = logging.getLogger(__name__)

# the events of a state map that authorise an event (create, power levels, ...)
AuthStateFor = Callable[[Mapping[StateKey, str]], Awaitable[Mapping[StateKey, Event]]]


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


async def check_pdu(key_store: KeyStore, pdu: Any, room_version: RoomVersion) -> Event:
    """Format, signatures and content hash; a hash mismatch is refused here
    (the event is handed to us directly, so it must be intact)."""
    if not isinstance(pdu, Mapping):
        raise bad_json("The event must be a JSON object")
    try:
        lookup = await key_store.key_lookup_for_pdu(pdu, room_version)
        received = check_received_pdu(pdu, room_version, lookup)
    except SignatureError as e:
        raise forbidden(f"Bad signature: {e}") from None
    except (EventFormatError, ProtocolError, KeyError, TypeError) as e:
        raise bad_json(f"Invalid event: {e}") from None
    if received.redacted:
        raise bad_json("The event's content hash does not match")
    return received.event


async def state_before(events: EventStore, event: Event) -> dict[StateKey, str]:
    """The room state before ``event``: the state after its prev_events
    (resolved when there are several). Raises 400 when one is unknown."""
    if not event.prev_event_ids:
        return {}
    info = await events.stored_info(event.prev_event_ids)
    groups: list[int] = []
    for eid in event.prev_event_ids:
        i = info.get(eid)
        if i is None or i.room_id != event.room_id or i.state_group is None or i.rejected:
            raise bad_json(f"prev_event {eid} is not known here")
        groups.append(i.state_group)
    by_group = await events.state_ids_for_groups(set(groups))
    sets = [by_group.get(g, {}) for g in dict.fromkeys(groups)]
    if len(sets) == 1:
        return dict(sets[0])
    rv = event.room_version
    wanted: set[str] = set()
    for s in sets:
        wanted.update(s.values())
    chain, rejected = await events.auth_chain_events(wanted, rv)
    return resolve_state(rv, sets, chain.get, is_rejected=lambda e: e in rejected)


async def load_events(events: EventStore, ids: list[str], rv: RoomVersion) -> dict[str, Event]:
    pdus = await events.get_pdus(ids)
    return {eid: Event(p, eid, rv) for eid, p in pdus.items()}


def auth_ids_in(event: Event, state: Mapping[StateKey, str]) -> dict[StateKey, str]:
    """The ids, in ``state``, of the events the auth rules read for
    ``event`` (the create event always)."""
    keys = set(auth_types_for_event(event.room_version, event.type, event.sender, event.state_key, event.content))
    keys.add(("m.room.create", ""))
    return {k: state[k] for k in keys if k in state}


async def check_auth_against(events: EventStore, event: Event, state: Mapping[StateKey, str]) -> None:
    """The auth rules against ``state`` (the state before the event), and
    every auth event the event names must be known. AuthError -> 403."""
    wanted = auth_ids_in(event, state)
    loaded = await load_events(events, list(wanted.values()), event.room_version)
    auth_state = {k: loaded[eid] for k, eid in wanted.items() if eid in loaded}
    known = await events.stored_info(event.auth_event_ids)
    if any(a not in known for a in event.auth_event_ids):
        raise forbidden("The event names auth events that are not known here")
    try:
        check_auth_rules(event, auth_state)
    except AuthError as e:
        raise forbidden(e.message) from None


async def receipt_auth_checks(
    ev: Event,
    get_auth_event: Callable[[str], Event | None],
    is_rejected: Callable[[str], bool],
    state_before: Mapping[StateKey, str],
    auth_state_for: AuthStateFor,
    current_state: Callable[[], Awaitable[Mapping[StateKey, str]]],
    *,
    partial_state: bool = False,
) -> tuple[str | None, bool]:
    """The spec's auth checks on receipt of a PDU, in order: against its
    own auth events, against the state before it (either failing: the
    rejection reason), then against the room's current state (failing:
    soft-failed). Returns (rejected reason or None, soft-failed). The
    receiver's one-PDU path and a transaction's batch both use it.

    ``partial_state``: the room was joined with a partial state (its member
    list is being fetched, services/federation/partial_state.py): the state
    before the event lacks most members, but not the rest of the room's
    state (power levels, join rules, the members it names). So the event is
    checked against that state with the members it lacks taken from the
    event's own auth events (a power-levels change cited on old power
    levels still fails); the soft-fail check waits for the resync, which
    checks the events received meanwhile against the whole state."""
    try:
        own = auth_state_from_auth_events(ev, get_auth_event, is_rejected=is_rejected)
        check_auth_rules(ev, own)
    except AuthError as e:
        return f"auth events: {e}", False
    if partial_state:
        try:
            check_auth_rules(ev, {**own, **await auth_state_for(state_before)})
        except AuthError as e:
            return f"state before the event: {e}", False
        return None, False
    try:
        check_auth_rules(ev, await auth_state_for(state_before))
    except AuthError as e:
        return f"state before the event: {e}", False
    current = await current_state()
    if current is not state_before and current != state_before:
        try:
            check_auth_rules(ev, await auth_state_for(current))
        except AuthError as e:
            log.info("event %s soft-failed: %s", ev.event_id, e)
            return None, True
    return None, False

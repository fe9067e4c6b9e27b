"""What another server may see of our rooms' events: the spec's history
visibility applied to a server (as Synapse's ``filter_events_for_server``).

An event is visible to server S when the room's ``m.room.history_visibility``
at the event is ``world_readable`` or ``shared``, or is ``invited`` and one
of S's users was invited or joined at that point, or is ``joined`` and one
of them was joined. The state at an event is the state after it (so a user's
own invite or join is visible to their server); a history visibility change
is judged by the more permissive of the old and the new setting. Events
without state (outliers) count as visible. What S may not see is served in
its redacted form, so the DAG stays whole and nothing private leaks.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...protocol.events import Event, StateKey
from ...protocol.redaction import redact
from ...storage.events import EventStore

HV: StateKey = ("m.room.history_visibility", "")
_RANK = {"world_readable": 0, "shared": 1, "invited": 2, "joined": 3}


def _setting(pdu: Mapping[str, Any] | None) -> str:
    value = (pdu or {}).get("content", {}).get("history_visibility") if pdu else None
    return value if isinstance(value, str) and value in _RANK else "shared"


def _allows(setting: str, memberships: Sequence[str]) -> bool:
    if setting in ("world_readable", "shared"):
        return True
    if setting == "invited":
        return any(m in ("invite", "join") for m in memberships)
    return "join" in memberships


async def filter_for_server(events: EventStore, server_name: str, batch: Sequence[Event]) -> list[dict[str, Any]]:
    """The PDUs of ``batch`` (in order) as ``server_name`` may see them."""
    if not batch:
        return []
    info = await events.stored_info([e.event_id for e in batch])
    groups = {e.event_id: info[e.event_id].state_group for e in batch if e.event_id in info}
    # the previous setting of a visibility change is in the state of its parents
    parents = {p for e in batch if e.type == HV[0] and e.state_key == "" for p in e.prev_event_ids}
    parent_info = await events.stored_info(parents) if parents else {}
    wanted = {g for g in groups.values() if g is not None}
    wanted |= {i.state_group for i in parent_info.values() if i.state_group is not None}
    views = await events.server_view_for_groups(wanted, server_name)
    needed = {eid for view in views.values() for eid in view.values()}
    pdus = await events.get_pdus(needed)

    def setting_of(group: int | None) -> str:
        view = views.get(group, {}) if group is not None else {}
        return _setting(pdus.get(view[HV])) if HV in view else "shared"

    out: list[dict[str, Any]] = []
    for e in batch:
        group = groups.get(e.event_id)
        if group is None:
            out.append(dict(e.pdu))
            continue
        view = views.get(group, {})
        memberships = [
            str(pdus[eid].get("content", {}).get("membership"))
            for key, eid in view.items() if key[0] == "m.room.member" and eid in pdus
        ]
        setting = setting_of(group)
        if e.type == HV[0] and e.state_key == "":
            for p in e.prev_event_ids:
                if p in parent_info:
                    before = setting_of(parent_info[p].state_group)
                    setting = min(setting, before, key=_RANK.__getitem__)
        out.append(dict(e.pdu) if _allows(setting, memberships) else redact(e.pdu, e.room_version))
    return out

"""Space hierarchies (``m.space.child``), the pure part of ``/hierarchy``
on both APIs: which child events count, their order, a room's summary
from its state, who may see a room, and the remote answers we accept.

Only spaces (``m.room.create`` of type ``m.space``) have children. A
child event counts when its ``via`` is a non-empty list of server names
(an empty content removes the child). Children are ordered by their
``order`` (a string of at most 50 printable ASCII characters, compared by
code point; children without a valid one after those with one), then by
the child event's ``origin_server_ts``, then by room id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .restricted import allowed_rooms_in

SPACE_CHILD = "m.space.child"
SPACE_TYPE = "m.space"
SUMMARY_STATE = (
    "m.room.create", "m.room.name", "m.room.topic", "m.room.canonical_alias", "m.room.avatar",
    "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.encryption",
)
# what a hierarchy reads of a room we are in (the ACL for other servers' requests)
HIERARCHY_STATE = SUMMARY_STATE + ("m.room.server_acl",)
# join rules under which anyone may ask to join (the spec's list for /hierarchy)
OPEN_JOIN_RULES = ("public", "knock", "knock_restricted")
RESTRICTED_JOIN_RULES = ("restricted", "knock_restricted")
MAX_ORDER_LENGTH = 50


@dataclass(frozen=True)
class ChildEvent:
    """A current ``m.space.child`` state event of a space, as served in
    ``children_state`` (stripped, with its ``origin_server_ts``)."""

    room_id: str
    via: tuple[str, ...]
    suggested: bool
    order: str | None
    sender: str
    origin_server_ts: int
    content: Mapping[str, Any]

    def stripped(self) -> dict[str, Any]:
        return {"type": SPACE_CHILD, "state_key": self.room_id, "content": dict(self.content),
                "sender": self.sender, "origin_server_ts": self.origin_server_ts}


def _valid_order(order: Any) -> str | None:
    if not isinstance(order, str) or len(order) > MAX_ORDER_LENGTH:
        return None
    if any(not 0x20 <= ord(c) <= 0x7E for c in order):
        return None
    return order


def child_event(state_key: Any, content: Any, sender: Any, origin_server_ts: Any) -> ChildEvent | None:
    """The child a ``m.space.child`` event names, or None when it does not
    count (no valid ``via``, not a room id)."""
    if not isinstance(state_key, str) or not state_key.startswith("!") or not isinstance(content, Mapping):
        return None
    via = content.get("via")
    if not isinstance(via, list) or not via or not all(isinstance(v, str) and v for v in via):
        return None
    ts = origin_server_ts if isinstance(origin_server_ts, int) and not isinstance(origin_server_ts, bool) else 0
    return ChildEvent(
        room_id=state_key, via=tuple(via), suggested=content.get("suggested") is True,
        order=_valid_order(content.get("order")), sender=sender if isinstance(sender, str) else "",
        origin_server_ts=ts, content=content,
    )


def child_order_key(child: ChildEvent) -> tuple[int, str, int, str]:
    if child.order is not None:
        return (0, child.order, child.origin_server_ts, child.room_id)
    return (1, "", child.origin_server_ts, child.room_id)


def ordered_children(children: Iterable[ChildEvent], suggested_only: bool = False) -> list[ChildEvent]:
    return sorted((c for c in children if c.suggested or not suggested_only), key=child_order_key)


@dataclass
class LocalRoom:
    """What we hold of a room: its current state events of
    ``SUMMARY_STATE`` by type (client-format content), its child events,
    and its joined member count."""

    room_id: str
    room_version: str
    joined_members: int
    state: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    children: list[ChildEvent] = field(default_factory=list)

    def content(self, event_type: str) -> Mapping[str, Any]:
        return self.state.get(event_type) or {}

    @property
    def join_rule(self) -> str:
        rule = self.content("m.room.join_rules").get("join_rule")
        return rule if isinstance(rule, str) else "invite"

    @property
    def world_readable(self) -> bool:
        return self.content("m.room.history_visibility").get("history_visibility") == "world_readable"

    def allowed_room_ids(self) -> list[str]:
        """The rooms a restricted join rule names (``m.room_membership``)."""
        if self.join_rule not in RESTRICTED_JOIN_RULES:
            return []
        return allowed_rooms_in(self.content("m.room.join_rules"))

    def summary(self, suggested_only: bool = False, with_children: bool = True) -> dict[str, Any]:
        """The room's summary (``room_summary.yaml``), with its
        ``children_state`` in the children's order."""
        out: dict[str, Any] = {
            "room_id": self.room_id,
            "num_joined_members": self.joined_members,
            "world_readable": self.world_readable,
            "guest_can_join": self.content("m.room.guest_access").get("guest_access") == "can_join",
            "join_rule": self.join_rule,
            "room_version": self.room_version,
        }
        for key, event_type, field_name in (
            ("name", "m.room.name", "name"), ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"), ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ):
            value = self.content(event_type).get(field_name)
            if isinstance(value, str) and value:
                out[key] = value
        allowed = self.allowed_room_ids()
        if allowed:
            out["allowed_room_ids"] = allowed
        if self.content("m.room.encryption").get("algorithm") == "m.megolm.v1.aes-sha2":
            out["encryption"] = "m.megolm.v1.aes-sha2"
        if with_children:
            out["children_state"] = [c.stripped() for c in self.space_children(suggested_only)]
        return out

    def space_children(self, suggested_only: bool = False) -> list[ChildEvent]:
        """The room's children in order; none unless it is a space (the
        spec: a room that is not a space has an empty children_state)."""
        if self.content("m.room.create").get("type") != SPACE_TYPE:
            return []
        return ordered_children(self.children, suggested_only)


def open_to_anyone(join_rule: Any, world_readable: Any) -> bool:
    """Anyone may peek (world readable) or ask to join (public, knock)."""
    return world_readable is True or join_rule in OPEN_JOIN_RULES


def user_may_see(join_rule: Any, world_readable: Any, membership: str | None,
                 allowed_room_ids: Iterable[str], joined_rooms: Iterable[str]) -> bool:
    """Whether a user may see a room in a hierarchy (the spec's list):
    joined or invited, a public/knock room, a world-readable one, or a
    restricted one whose allowed rooms include one the user is joined to."""
    if membership in ("join", "invite") or open_to_anyone(join_rule, world_readable):
        return True
    if join_rule in RESTRICTED_JOIN_RULES:
        joined = set(joined_rooms)
        return any(r in joined for r in allowed_room_ids)
    return False


# -- answers from other servers ------------------------------------------------------
_SUMMARY_FIELDS: dict[str, type] = {
    "name": str, "topic": str, "canonical_alias": str, "avatar_url": str, "join_rule": str, "room_type": str,
    "encryption": str, "room_version": str,
}


def remote_summary(raw: Any) -> dict[str, Any] | None:
    """A room summary from another server's answer, its known fields only
    and each of the right type (None when it is not one)."""
    if not isinstance(raw, Mapping):
        return None
    room_id = raw.get("room_id")
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        return None
    count = raw.get("num_joined_members")
    out: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0,
        "world_readable": raw.get("world_readable") is True,
        "guest_can_join": raw.get("guest_can_join") is True,
    }
    for key, kind in _SUMMARY_FIELDS.items():
        value = raw.get(key)
        if isinstance(value, kind) and value:
            out[key] = value
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        ids = [r for r in allowed if isinstance(r, str) and r.startswith("!")]
        if ids:
            out["allowed_room_ids"] = ids
    out["children_state"] = [c.stripped() for c in children_of(raw)] if out.get("room_type") == SPACE_TYPE else []
    return out


def children_of(summary: Mapping[str, Any], suggested_only: bool = False) -> list[ChildEvent]:
    """The valid children named in a summary's ``children_state``, in order."""
    events = summary.get("children_state")
    out = []
    for ev in events if isinstance(events, list) else []:
        if not isinstance(ev, Mapping) or ev.get("type") != SPACE_CHILD:
            continue
        child = child_event(ev.get("state_key"), ev.get("content"), ev.get("sender"), ev.get("origin_server_ts"))
        if child is not None:
            out.append(child)
    return ordered_children(out, suggested_only)

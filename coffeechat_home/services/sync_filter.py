"""/sync filters: what of a filter's JSON /sync reads (SyncFilter)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..protocol.events import StateKey

DEFAULT_TIMELINE_LIMIT = 10


@dataclass
class SyncFilter:
    timeline_limit: int = DEFAULT_TIMELINE_LIMIT
    timeline_types: list[str] | None = None
    timeline_not_types: list[str] | None = None
    timeline_senders: list[str] | None = None
    timeline_not_senders: list[str] | None = None
    lazy_load_members: bool = False
    state_types: list[str] | None = None
    state_not_types: list[str] | None = None
    rooms: list[str] | None = None
    not_rooms: list[str] = field(default_factory=list)
    include_leave: bool = False
    account_data_types: list[str] | None = None
    presence_types: list[str] | None = None
    _timeline_key: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, f: Mapping[str, Any] | None) -> "SyncFilter":
        """Raises TypeError when a field the server reads has the wrong type."""
        if not f:
            return cls()
        room = _obj(f.get("room"))
        timeline = _obj(room.get("timeline"))
        state = _obj(room.get("state"))
        limit = timeline.get("limit")
        return cls(
            timeline_limit=max(0, min(int(limit), 1000)) if isinstance(limit, int) else DEFAULT_TIMELINE_LIMIT,
            timeline_types=_strs(timeline.get("types")),
            timeline_not_types=_strs(timeline.get("not_types")),
            timeline_senders=_strs(timeline.get("senders")),
            timeline_not_senders=_strs(timeline.get("not_senders")),
            lazy_load_members=bool(state.get("lazy_load_members") or timeline.get("lazy_load_members")),
            state_types=_strs(state.get("types")),
            state_not_types=_strs(state.get("not_types")),
            rooms=_strs(room.get("rooms")),
            not_rooms=_strs(room.get("not_rooms")) or [],
            include_leave=bool(room.get("include_leave")),
            account_data_types=_strs(_obj(f.get("account_data")).get("types")),
            presence_types=_strs(_obj(f.get("presence")).get("types")),
        )

    def timeline_key(self) -> tuple[Any, ...]:
        """What of the filter a timeline read depends on, hashable (made
        once per filter: each woken sync keys its shared timeline read by it)."""
        if self._timeline_key is None:
            self._timeline_key = (self.timeline_limit, *(None if v is None else tuple(v) for v in (
                self.timeline_types, self.timeline_not_types, self.timeline_senders, self.timeline_not_senders)))
        return self._timeline_key

    @property
    def timeline_unfiltered(self) -> bool:
        """Whether a timeline read with this filter holds every event of
        its range (up to the limit): no type or sender filter."""
        return (self.timeline_types is None and self.timeline_senders is None
                and not self.timeline_not_types and not self.timeline_not_senders)

    def wants_room(self, room_id: str) -> bool:
        return room_id not in self.not_rooms and (self.rooms is None or room_id in self.rooms)

    def wants_state(self, key: StateKey) -> bool:
        t = key[0]
        if self.state_types is not None and not type_matches(t, self.state_types):
            return False
        return not (self.state_not_types and type_matches(t, self.state_not_types))


def _obj(v: Any) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise TypeError("filter section must be an object")
    return v


def _strs(v: Any) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("filter field must be a list of strings")
    return v


def type_matches(t: str, patterns: list[str]) -> bool:
    return any(t == p or (p.endswith("*") and t.startswith(p[:-1])) for p in patterns)

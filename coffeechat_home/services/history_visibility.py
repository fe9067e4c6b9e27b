"""History visibility rules: which stream positions of a room a user may
read (the spec's rules per event, as ranges)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class JudgedEvent(Protocol):
    """What the per-event history check reads of a row (EventRow and the
    unread counts' rows)."""

    @property
    def event_id(self) -> str: ...
    @property
    def stream_pos(self) -> int | None: ...
    @property
    def type(self) -> str: ...
    @property
    def state_key(self) -> str | None: ...


_PERMISSIVENESS = {"world_readable": 0, "shared": 1, "invited": 2, "joined": 3}


def visibility_setting(value: Any) -> str:
    """A history_visibility content value as the rules read it: an unknown
    or missing one counts as "shared"."""
    return value if isinstance(value, str) and value in _PERMISSIVENESS else "shared"


def _value_at(
    changes: list[tuple[int, str]], pos: int, default: str | None, *, strictly_before: bool = False
) -> str | None:
    value = default
    for p, v in changes:
        if p < pos or (p == pos and not strictly_before):
            value = v
        else:
            break
    return value


@dataclass
class Window:
    """The stream positions of a room a user may read: a sorted list of
    disjoint ranges (lower, upper], None meaning unbounded. ``lower`` and
    ``upper`` bound them all (the hull)."""

    ranges: list[tuple[int | None, int | None]]
    membership: str | None
    joined_ever: bool = False

    @property
    def lower(self) -> int | None:
        return self.ranges[0][0] if self.ranges else None

    @property
    def upper(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def clamp(self, after: int | None, upto: int | None) -> tuple[int | None, int | None]:
        """Clamp to the hull; use ``within`` (or ``contains``) for the gaps."""
        if self.lower is not None:
            after = self.lower if after is None else max(after, self.lower)
        if self.upper is not None:
            upto = self.upper if upto is None else min(upto, self.upper)
        return after, upto

    def within(self, after: int | None, upto: int | None) -> list[tuple[int | None, int | None]]:
        """The visible parts of (after, upto], oldest first."""
        out = []
        for lo, hi in self.ranges:
            if after is not None:
                lo = after if lo is None else max(lo, after)
            if upto is not None:
                hi = upto if hi is None else min(hi, upto)
            if lo is None or hi is None or hi > lo:
                out.append((lo, hi))
        return out

    def contains(self, pos: int | None) -> bool:
        if pos is None:
            return False
        return any((lo is None or pos > lo) and (hi is None or pos <= hi) for lo, hi in self.ranges)


def visible_ranges(
    memberships: list[tuple[int, str]], visibilities: list[tuple[int, str]]
) -> list[tuple[int | None, int | None]]:
    """The spec's history visibility rules, judged per event from the
    user's membership and the room's history_visibility at each event
    (the state after it; a history_visibility change is judged by the more
    permissive of its old and new value, and the user's own membership
    events are always visible):

    world_readable, or joined at the event, or shared and the user joined
    at some point after it, or invited with the user invited at the event.
    """
    joins = [p for p, m in memberships if m == "join"]
    own = {p for p, _ in memberships}
    vis_at = {p for p, _ in visibilities}

    def visible(m: str | None, v: str, last: int | None) -> bool:
        if v == "world_readable" or m == "join":
            return True
        if v == "shared" and last is not None and any(j > last for j in joins):
            return True
        return v == "invited" and m == "invite"

    points = sorted(own | vis_at)
    segments: list[tuple[int | None, int | None, bool]] = []
    first_end = points[0] - 1 if points else None
    segments.append((None, first_end, visible(None, "shared", first_end)))
    for i, p in enumerate(points):
        nxt = points[i + 1] if i + 1 < len(points) else None
        m = _value_at(memberships, p, None)
        v = visibility_setting(_value_at(visibilities, p, "shared"))
        v_event = v
        if p in vis_at:
            prev = visibility_setting(_value_at(visibilities, p, "shared", strictly_before=True))
            v_event = prev if _PERMISSIVENESS[prev] < _PERMISSIVENESS[v] else v
        segments.append((p - 1, p, p in own or visible(m, v_event, p)))
        if nxt is None:
            segments.append((p, None, visible(m, v, None)))
        elif nxt - 1 > p:
            segments.append((p, nxt - 1, visible(m, v, nxt - 1)))
    ranges: list[tuple[int | None, int | None]] = []
    for lo, hi, ok in segments:
        if not ok:
            continue
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges

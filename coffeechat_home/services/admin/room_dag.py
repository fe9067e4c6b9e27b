"""A room's event DAG for server admins (the DAG viewer): a bounded window
of events with their prev_events edges and flags, and the state at one
event, with the state keys that were in conflict where branches merged."""

from __future__ import annotations

from typing import Any

from ...errors import invalid_param, not_found
from ...storage.room_dag import OPTIONAL_FLAG_COLUMNS, DagNode, DagRoom, DagWindow, RoomDagStore

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000


def _origin(sender: str) -> str:
    """The server an event came from: its sender's domain (room versions
    3+ carry no trustworthy ``origin`` key)."""
    return sender.partition(":")[2]


def node_json(n: DagNode, extremities: set[str], prevs: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": n.event_id,
        "type": n.type,
        "sender": n.sender,
        "origin": _origin(n.sender),
        "depth": n.depth,
        "stream_pos": n.stream_pos,
        "origin_server_ts": n.origin_server_ts,
        "prev_events": prevs,
        "outlier": n.outlier,
        "rejected": n.rejected_reason is not None,
        "forward_extremity": n.event_id in extremities,
    }
    if n.state_key is not None:
        body["state_key"] = n.state_key
    if n.rejected_reason is not None:
        body["rejected_reason"] = n.rejected_reason
    body.update(n.flags)
    return body


class RoomDagService:
    def __init__(self, store: RoomDagStore) -> None:
        self.store = store

    async def _room(self, room_id: str) -> DagRoom:
        room = await self.store.room(room_id)
        if room is None:
            raise not_found("Unknown room")
        return room

    async def window(
        self, room_id: str, *, around: str | None, from_depth: int | None, to_depth: int | None, limit: int
    ) -> dict[str, Any]:
        """Around an event (about half below it), or within a depth range,
        or (neither) the newest events; at most ``limit``."""
        if not 1 <= limit <= MAX_LIMIT:
            raise invalid_param(f"limit must be between 1 and {MAX_LIMIT}")
        if around is not None and (from_depth is not None or to_depth is not None):
            raise invalid_param("give either around or from_depth/to_depth, not both")
        if from_depth is not None and to_depth is not None and from_depth > to_depth:
            raise invalid_param("from_depth must not be above to_depth")
        room = await self._room(room_id)
        window: DagWindow
        if around is not None:
            depth = await self.store.event_depth(room_id, around)
            if depth is None:
                raise not_found("Unknown event in this room")
            window = await self.store.window_around(room_id, depth, limit)
        elif from_depth is not None:
            window = await self.store.window_between(
                room_id, from_depth, room.max_depth if to_depth is None else to_depth, limit
            )
        else:
            window = await self.store.window_upto(room_id, room.max_depth if to_depth is None else to_depth, limit)
        prevs: dict[str, list[str]] = {n.event_id: [] for n in window.nodes}
        for event_id, prev in window.edges:
            prevs[event_id].append(prev)
        in_window = set(prevs)
        extremities = set(room.forward_extremities)
        return {
            "room_id": room_id,
            "room_version": room.room_version,
            "total_events": room.total_events,
            "depth_range": {"min": room.min_depth, "max": room.max_depth},
            "forward_extremities": room.forward_extremities,
            "flags": ["outlier", "rejected", *sorted(await self._optional_flags())],
            "window": {
                "limit": limit,
                "count": len(window.nodes),
                "from_depth": window.nodes[0].depth if window.nodes else None,
                "to_depth": window.nodes[-1].depth if window.nodes else None,
                "more_below": window.more_below,
                "more_above": window.more_above,
            },
            "nodes": [node_json(n, extremities, prevs[n.event_id]) for n in window.nodes],
            "edges": [{"from": e, "to": p, "in_window": p in in_window} for e, p in window.edges],
        }

    async def _optional_flags(self) -> list[str]:
        return [OPTIONAL_FLAG_COLUMNS[c] for c in await self.store.flag_columns()]

    async def state_at(self, room_id: str, event_id: str) -> dict[str, Any]:
        """The state after ``event_id``; where the event merges branches
        (several prev_events), the state keys whose values differ between
        the branches, with each branch's value and the one in the state
        after the merge (``resolved``)."""
        await self._room(room_id)
        groups = await self.store.state_groups_of(room_id, [event_id])
        if event_id not in groups:
            raise not_found("Unknown event in this room")
        prevs = [p for e, p in await self.store.prev_events([event_id]) if e == event_id]
        prev_groups = await self.store.state_groups_of(room_id, prevs)
        group = groups[event_id]
        wanted = [g for g in [group, *prev_groups.values()] if g is not None]
        states = await self.store.state_ids(wanted)
        body: dict[str, Any] = {"room_id": room_id, "event_id": event_id, "prev_events": prevs, "state_group": group}
        if group is None:
            body["state"] = None  # an outlier: no state is stored for it
        else:
            body["state"] = [
                {"type": s.type, "state_key": s.state_key, "event_id": s.event_id, "sender": s.sender,
                 "content": s.content}
                for s in await self.store.state_entries(states.get(group, {}))
            ]
        body["conflicts"] = self._conflicts(prevs, prev_groups, states, states.get(group) if group else None)
        return body

    @staticmethod
    def _conflicts(
        prevs: list[str], prev_groups: dict[str, int | None], states: dict[int, dict[tuple[str, str], str]],
        merged: dict[tuple[str, str], str] | None,
    ) -> list[dict[str, Any]]:
        branch_states = {}
        for p in prevs:
            g = prev_groups.get(p)
            if g is not None:
                branch_states[p] = states.get(g, {})
        if len(branch_states) < 2:
            return []
        keys = sorted(set().union(*(s.keys() for s in branch_states.values())))
        out = []
        for key in keys:
            values = {p: s.get(key) for p, s in branch_states.items()}
            if len(set(values.values())) > 1:
                out.append({
                    "type": key[0], "state_key": key[1], "branches": values,
                    "resolved": merged.get(key) if merged is not None else None,
                })
        return out

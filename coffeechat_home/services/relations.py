"""Event relations (edits, reactions, threads): GET /relations."""

from __future__ import annotations

from typing import Any

from ..errors import invalid_param
from ..storage.events import EventStore
from .accounts import Requester
from .history import HistoryService, make_token, parse_token, serve_event


class RelationsService:
    def __init__(self, events: EventStore, history: HistoryService) -> None:
        self.events = events
        self.history = history

    async def relations(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        rel_type: str | None,
        event_type: str | None,
        *,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        backwards: bool,
    ) -> dict[str, Any]:
        await self.history.visible_event(requester, room_id, event_id)  # 404 when not visible
        window = await self.history.window(requester.user_id, room_id)
        start = parse_token(from_token, "from")
        end = parse_token(to_token, "to")
        if backwards:
            before, after = start, end
        else:
            after, before = start, end
        after, before = window.clamp(after, before)
        if after is not None and before is not None and before <= after:
            rows = []
        else:
            rows = await self.events.relations(
                event_id, rel_type, event_type, before=before, after=after, limit=limit, backwards=backwards
            )
        # the hull may span gaps the user may not see (left and rejoined)
        rows = [r for r in rows if r.room_id == room_id and window.contains(r.stream_pos)]
        body: dict[str, Any] = {"chunk": [serve_event(r, requester) for r in rows]}
        if from_token:
            body["prev_batch"] = from_token
        if len(rows) == limit and rows:
            last = rows[-1].stream_pos or 0
            body["next_batch"] = make_token(last - 1 if backwards else last)
        return body


def check_limit(limit: int | None) -> int:
    if limit is None:
        return 20
    if limit <= 0:
        raise invalid_param("limit must be positive")
    return min(limit, 100)

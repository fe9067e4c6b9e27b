"""Event relations (edits, reactions, threads): GET /relations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import invalid_param
from ..storage.event_listings import EventRow
from ..storage.events import EventStore
from .accounts import Requester
from .history import HistoryService
from .history_tokens import make_page_token, parse_token, serve_event
from .history_visibility import Window

# replies judged one by one for the thread summaries of a page of /threads
# in a room that restricts its history (the newest; older ones uncounted)
MAX_REPLIES_JUDGED = 1000


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
        restricts = await self.history.restricts(room_id)
        start = parse_token(from_token, "from", backfilled=True)
        end = parse_token(to_token, "to", backfilled=True)
        if backwards:
            before, after = start, end
        else:
            after, before = start, end
        clamped_after, before = window.clamp(after, before)
        if not restricts:  # else backfilled relations (below the window) count, by the state at each
            after = clamped_after
        if after is not None and before is not None and before <= after:
            raw = []
        else:
            raw = await self.events.relations(
                event_id, rel_type, event_type, before=before, after=after, limit=limit, backwards=backwards
            )
        # the hull may span gaps the user may not see (left and rejoined),
        # and each event is judged by the state at it (late arrivals)
        rows = await self.history.visible_rows(requester.user_id, room_id, window, raw, restricts=restricts)
        body: dict[str, Any] = {"chunk": [serve_event(r, requester) for r in rows]}
        if from_token:
            body["prev_batch"] = from_token
        if len(raw) == limit and raw:  # pages follow what was read, hidden or not
            last = raw[-1].stream_pos or 0
            body["next_batch"] = make_page_token(last - 1 if backwards else last)
        return body


    async def threads(
        self, requester: Requester, room_id: str, *, participated: bool, from_token: str | None, limit: int
    ) -> dict[str, Any]:
        """Thread roots, most recently active first, each with its thread
        summary in unsigned["m.relations"]["m.thread"]. Roots the user may
        not see are left out; in a room that restricts its history
        (``joined`` or ``invited``), the summary counts only the replies
        the user may see, by the state at each (``_visible_summaries``)."""
        window = await self.history.window(requester.user_id, room_id)
        user = requester.user_id
        before = parse_token(from_token, "from", backfilled=True)
        rows = await self.events.thread_roots(room_id, user, before=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        roots = await self.events.get_rows(r["root"] for r in rows)
        restricts = bool(rows) and await self.history.restricts_history(room_id, max(r["latest_pos"] for r in rows))
        visible = {root.event_id for root in await self.history.visible_rows(
            user, room_id, window, list(roots.values()), restricts=restricts)}
        summaries: dict[str, _Summary] = {}
        if restricts:
            summaries = await self._visible_summaries(requester, room_id, window, list(visible), before)
        else:
            latest_ids = await self.events.event_ids_at({r["latest_pos"] for r in rows})
            latest_events = await self.events.get_rows(latest_ids.values())
            for r in rows:
                last = latest_events.get(latest_ids.get(r["latest_pos"], ""))
                summaries[r["root"]] = _Summary(r["n"], r["mine"], last)
        chunk = []
        for r in rows:
            root = roots.get(r["root"])
            summary = summaries.get(r["root"])
            if root is None or root.event_id not in visible or summary is None:
                continue
            participated_here = summary.mine or root.sender == user
            if participated and not participated_here:
                continue
            ev = orjson.loads(root.client)
            thread: dict[str, Any] = {"count": summary.count, "current_user_participated": participated_here}
            if summary.latest is not None:
                thread["latest_event"] = orjson.loads(summary.latest.client)
            ev.setdefault("unsigned", {}).setdefault("m.relations", {})["m.thread"] = thread
            chunk.append(ev)
        body: dict[str, Any] = {"chunk": chunk}
        if more and rows:
            body["next_batch"] = make_page_token(rows[-1]["latest_pos"] - 1)
        return body

    async def _visible_summaries(
        self, requester: Requester, room_id: str, window: Window, roots: list[str], before: int | None
    ) -> dict[str, "_Summary"]:
        """Thread summaries from the replies the user may see (in the
        window or backfilled, and by the state at each); a root without any
        is left out. Judges at most MAX_REPLIES_JUDGED replies (the newest)
        per page."""
        if not roots:
            return {}
        replies = await self.events.thread_replies(room_id, roots, before=before, limit=MAX_REPLIES_JUDGED)
        out: dict[str, _Summary] = {}
        for reply in await self.history.visible_rows(requester.user_id, room_id, window, replies,
                                                     restricts=True):  # newest first
            root = _root_of(reply)
            found = out.get(root)
            mine = reply.sender == requester.user_id
            if found is None:
                out[root] = _Summary(1, mine, reply)
            else:
                out[root] = _Summary(found.count + 1, found.mine or mine, found.latest)
        return out


def _root_of(reply: EventRow) -> str:
    relates = orjson.loads(reply.client).get("content", {}).get("m.relates_to", {})
    root = relates.get("event_id") if isinstance(relates, dict) else None
    return root if isinstance(root, str) else ""


@dataclass
class _Summary:
    count: int
    mine: bool
    latest: EventRow | None


def check_limit(limit: int | None) -> int:
    if limit is None:
        return 20
    if limit <= 0:
        raise invalid_param("limit must be positive")
    return min(limit, 100)

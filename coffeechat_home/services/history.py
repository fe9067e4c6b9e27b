"""Reading rooms: history visibility, /messages, /context, single events,
members and state (current, or as of when the user left). The visibility
rules are in history_visibility.py, the tokens in history_tokens.py."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Iterable, Mapping, Protocol, Sequence

from ..errors import MatrixError, forbidden, not_found
from ..storage.backfill import BackfillStore
from ..storage.event_listings import EventRow, HistoryKey
from ..storage.events import EventStore
from ..storage.rooms import RoomStore
from ..storage.stream import StreamStore
from .accounts import Requester
from .fanout import SharedReads
from .history_tokens import make_history_token, make_token, parse_history_token, serve_event
from .history_visibility import JudgedEvent, Window, visibility_setting, visible_ranges


# /messages: pages read past when hiding by the state at each event left
# a page empty (hide_unseen)
MAX_HIDDEN_PAGES = 5
# /messages backwards: backfills of holes the page reaches, per request, and
# the events asked for in each (a hole bigger than that is filled in parts)
MAX_HOLE_FILLS = 2
HOLE_FILL_EVENTS = 50


class Backfill(Protocol):
    """Fetch history from other servers at the room's backward extremities
    with depths in [min_depth, max_depth] (services/federation/backfill.py);
    the number of events added."""

    def __call__(self, room_id: str, max_depth: int | None, limit: int, *, min_depth: int | None = None,
                 tried: set[str] | None = None) -> Awaitable[int]: ...


class HistoryService:
    def __init__(self, events: EventStore, rooms: RoomStore, stream: StreamStore) -> None:
        self.events = events
        self.rooms = rooms
        self.stream = stream
        self.backfill_store = BackfillStore(events.db)
        # set when federating (services/federation/backfill.py): fetch up to
        # ``limit`` events older than the room's history at or below a depth
        # from other servers; the number added
        self.backfill: Backfill | None = None
        # (room, the rows' highest position) -> whether the room restricts
        # its history: the same answer for every long-poll one event wakes
        # (read once, not once per woken sync). The history-visibility
        # events in the state at a row were stored before it, so an answer
        # read after rows up to that position existed is right for them.
        self._restricted: SharedReads[tuple[str, int], bool] = SharedReads(ttl=2.0, size=512)
        self._restricted_last: tuple[tuple[str, int] | None, bool] = (None, False)  # the key asked last, its answer

    async def history_visibility(self, room_id: str) -> str:
        ev = await self.rooms.current_state_event(room_id, "m.room.history_visibility", "")
        return visibility_setting((ev or {}).get("content", {}).get("history_visibility", "shared"))

    async def window(self, user_id: str, room_id: str) -> Window:
        """What of the room the user may see; 403 when nothing."""
        if await self.rooms.room_version(room_id) is None:
            raise forbidden("You are not in this room")  # do not reveal whether it exists
        changes = (await self.rooms.membership_changes(user_id, [room_id]))[room_id]
        current = changes[-1][1] if changes else None
        if current is None and await self.history_visibility(room_id) != "world_readable":
            raise forbidden("You are not allowed to see this room's history")
        first = await self.backfill_store.earliest_visibility(room_id)
        window = (await self.windows_from({room_id: changes}, {room_id: first} if first else None))[room_id]
        if window is None:
            raise forbidden("You are not allowed to see this room's history")
        return window

    async def windows_and_restricted(
        self, user_id: str, room_ids: list[str], restricted_of: list[str]
    ) -> tuple[dict[str, Window | None], set[str]]:
        """``window`` for rooms the user is or was in (None for a room of
        which nothing is visible), and which of the rooms
        ``restricted_of`` restrict their history (for ``hide_unseen_many``'s
        ``known_restricted``): the memberships and every room's visibility events
        read at once, in two statements side by side (an initial sync)."""
        changes, visibility = await asyncio.gather(
            self.rooms.membership_changes(user_id, room_ids),
            self.events.history_visibility_events([*room_ids, *restricted_of]),
        )
        restricted = {r for r in restricted_of if any(v in ("joined", "invited") for _, v in visibility[r])}
        positioned = {r: [(pos, v) for pos, v in visibility[r] if pos is not None] for r in room_ids}
        return self._windows(changes, positioned), restricted

    async def windows_from(
        self, changes: dict[str, list[tuple[int, str]]], earliest: Mapping[str, tuple[int, Any]] | None = None
    ) -> dict[str, Window | None]:
        """``earliest``: per room with backfilled history, the visibility
        in force below its oldest event (BackfillStore.earliest_visibility)."""
        visibility = await self.events.history_visibility_changes(list(changes))
        return self._windows(changes, visibility, earliest)

    @staticmethod
    def _windows(
        changes: dict[str, list[tuple[int, str]]], visibility: Mapping[str, list[tuple[int, Any]]],
        earliest: Mapping[str, tuple[int, Any]] | None = None,
    ) -> dict[str, Window | None]:
        out: dict[str, Window | None] = {}
        for room_id, mine in changes.items():
            first = (earliest or {}).get(room_id)
            vis = [(pos, visibility_setting(v)) for pos, v in [*([first] if first else []), *visibility.get(room_id, [])]]
            ranges = visible_ranges(mine, vis)
            out[room_id] = Window(ranges, mine[-1][1] if mine else None,
                                  any(m == "join" for _, m in mine)) if ranges else None
        return out

    async def hide_unseen_many(
        self, user_id: str, rows_by_room: Mapping[str, list[EventRow]],
        windows: Mapping[str, Window] | None = None, known_restricted: set[str] | None = None,
    ) -> dict[str, list[EventRow]]:
        """Drop the rows the user may not see by the state at each event
        (``hidden_events``)."""
        hidden = await self.hidden_events(user_id, rows_by_room, windows, known_restricted)
        if not hidden:
            return dict(rows_by_room)
        return {r: [row for row in rows if row.event_id not in hidden] for r, rows in rows_by_room.items()}

    async def hidden_events(
        self, user_id: str, rows_by_room: Mapping[str, Sequence[JudgedEvent]],
        windows: Mapping[str, Window] | None = None, known_restricted: set[str] | None = None,
    ) -> set[str]:
        """The ids of the rows the user may not see by the state at each
        event.

        Windows are stream ranges: they assume an event's stream position
        says whether the user was joined (or invited) at it. An event that
        reached us after the user's join although it is not after the join
        in the room's DAG (one sent before it and delivered late, one that
        crossed it, or what get_missing_events fetched for them) has a
        position after the join while the user was not joined at it. In a
        room whose history visibility is (or was) ``joined`` or
        ``invited``, each row is judged by the state after it, as the spec
        says: ``joined`` needs the user joined there, ``invited`` invited
        or joined. The user's own membership events and the visibility
        changes themselves stay as the window judged them. Rooms that never
        restricted their history cost one indexed read for all of them
        (none for one room whose answer another reader just read, none when
        the caller read which do: ``known_restricted``).

        With ``windows`` (the reader's, per room): backfilled rows (stream
        positions below zero) of such a room, which /messages reads whether
        or not the window holds them (a hole in the middle of the history
        is backfilled, so its events sort below every live one), are judged
        by the state at each alone: world_readable, or the user joined
        there, or invited in an ``invited`` room, or ``shared`` and the
        user ever joined (at a live position: after it); one without a
        known state is hidden."""
        rooms = [r for r, rows in rows_by_room.items() if rows]
        if known_restricted is not None:
            strict = known_restricted & set(rooms)
        elif len(rooms) == 1:  # a woken long-poll's room: shared by all it woke
            room_id = rooms[0]
            strict = {room_id} if await self.restricts_history(
                room_id, max(row.stream_pos or 0 for row in rows_by_room[room_id])) else set()
        else:
            strict = await self.events.rooms_with_restricted_history(rooms) if rooms else set()
        if not strict:
            return set()
        windows = windows or {}

        def backfilled(r: str, row: JudgedEvent) -> bool:
            return r in windows and row.stream_pos is not None and row.stream_pos < 0

        candidates = [
            (r, row) for r in strict for row in rows_by_room[r]
            if not ((row.type == "m.room.member" and row.state_key == user_id)
                    or (row.type == "m.room.history_visibility" and row.state_key == "" and not backfilled(r, row)))
        ]
        view = await self.events.user_view_at_events([row.event_id for _, row in candidates], user_id)
        hidden = set()
        for r, row in candidates:
            if backfilled(r, row):
                if row.event_id not in view:
                    # no state known at it (every backfilled event is stored
                    # with some): nothing says the user may see it
                    hidden.add(row.event_id)
                    continue
                setting, membership = view[row.event_id]
                v = visibility_setting(setting)
                if not (v == "world_readable" or membership == "join" or (v == "invited" and membership == "invite")
                        or (v == "shared" and windows[r].joined_ever)):
                    hidden.add(row.event_id)
                continue
            if row.event_id not in view:
                continue  # no state known for it: as the window judged it
            setting, membership = view[row.event_id]
            v = visibility_setting(setting)
            if (v == "joined" and membership != "join") or (v == "invited" and membership not in ("invite", "join")):
                hidden.add(row.event_id)
        return hidden

    async def restricts_history(self, room_id: str, upto: int) -> bool:
        """Whether the room has (or had) a ``joined`` or ``invited``
        history visibility, as of the rows up to position ``upto``: read
        once for every reader of the same rows (the history-visibility
        events in the state at a row were stored before it, so an answer
        read after rows up to that position existed is right for them)."""
        key = (room_id, upto)
        last = self._restricted_last
        if last[0] == key:  # what every member woken with the last asker asks (twice each)
            return last[1]
        found = await self._restricted.get(key, lambda: self._restricts(room_id))
        self._restricted_last = (key, found)
        return found

    def note_restriction(self, room_id: str, upto: int, restricted: bool) -> None:
        """``restricts_history(room_id, upto)``'s answer, read by the
        caller in the statement that read the rows up to ``upto``
        (EventStore.timeline_and_restriction): the askers that follow need
        no read of their own."""
        key = (room_id, upto)
        self._restricted.put(key, restricted)
        self._restricted_last = (key, restricted)

    async def _restricts(self, room_id: str) -> bool:
        return room_id in await self.events.rooms_with_restricted_history([room_id])

    async def restricts(self, room_id: str) -> bool:
        """Whether the room has (or had) a ``joined`` or ``invited``
        history visibility (read now)."""
        return await self._restricts(room_id)

    async def visible_rows(self, user_id: str, room_id: str, window: Window, rows: list[EventRow], *,
                           restricts: bool) -> list[EventRow]:
        """Of ``rows``, those of the room the user may see, as /messages
        judges them: in the user's window, or, in a room that restricts its
        history (``restricts``), backfilled (below zero, outside every
        window) and judged by the state at each; all also by the state at
        each (``hide_unseen``)."""
        kept = [r for r in rows if r.room_id == room_id and (
            window.contains(r.stream_pos) or (restricts and r.stream_pos is not None and r.stream_pos < 0))]
        return await self.hide_unseen(user_id, room_id, kept, window if restricts else None)

    async def hide_unseen(
        self, user_id: str, room_id: str, rows: list[EventRow], window: Window | None = None
    ) -> list[EventRow]:
        if not rows:
            return rows
        # a room that never restricted its history (most): the shared
        # answer hidden_events reads for one room, without its mappings
        if not await self.restricts_history(room_id, max(row.stream_pos or 0 for row in rows)):
            return rows
        return (await self.hide_unseen_many(user_id, {room_id: rows}, {room_id: window} if window else None))[room_id]

    async def visible_timeline(
        self,
        room_id: str,
        window: Window,
        *,
        after: int | None,
        upto: int | None,
        limit: int,
        backwards: bool,
        user_id: str | None = None,
        **filters: Any,
    ) -> list[EventRow]:
        """events.timeline over the visible parts of (after, upto]; with
        ``user_id``, the rows the user may not see by the state at each
        event are dropped (``hide_unseen``), so fewer than ``limit`` may
        come back."""
        parts = window.within(after, upto)
        if backwards:
            parts.reverse()
        rows: list[EventRow] = []
        for lo, hi in parts:
            if len(rows) >= limit:
                break
            rows += await self.events.timeline(
                room_id, after=lo, upto=hi, limit=limit - len(rows), backwards=backwards, **filters
            )
        return rows if user_id is None else await self.hide_unseen(user_id, room_id, rows)

    # -- /messages -------------------------------------------------------------
    async def messages(
        self,
        requester: Requester,
        room_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
        room_filter: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        window = await self.window(requester.user_id, room_id)
        start = parse_history_token(from_token, "from")
        to = parse_history_token(to_token, "to")
        f = room_filter or {}
        if start is None:
            start = (None, await self.stream.current_position()) if backwards else (None, 0)
        raw: list[EventRow] = []
        rows: list[EventRow] = []
        user = requester.user_id
        # in a room that restricts its history, backfilled rows (history
        # from before we joined, or a hole in the middle, filled: they sort
        # below every live position) are read and judged by the state at
        # each (hidden_events), not by the window. The answer is shared
        # (2 s) with the page's own per-event check when its newest row is
        # at the start position (a first page): no extra read then
        by_state = await self.restricts_history(room_id, start[1])

        async def page(key: HistoryKey) -> list[EventRow]:
            return await self.events.history(
                room_id, from_key=key, to_key=to, backwards=backwards, limit=limit,
                visible=[*window.ranges, (None, -1)] if by_state else window.ranges,
                types=f.get("types"), not_types=f.get("not_types"),
                senders=f.get("senders"), not_senders=f.get("not_senders"),
            )

        async def shown(page_rows: list[EventRow]) -> list[EventRow]:
            return await self.hide_unseen(user, room_id, page_rows, window if by_state else None)

        if limit > 0:
            raw = await page(start)
            rows = await shown(raw)
            tried: set[str] = set()  # backward extremities fetched from: once each per request
            for _ in range(MAX_HOLE_FILLS):
                if not (backwards and self.backfill is not None and to is None):
                    break
                # a hole in the page (an event of it whose prev_events we
                # lack) or, when the page is short, below it: fetch it from
                # the room's other servers before answering
                older_visible = window.lower is None or window.lower < 0
                if by_state:
                    # only holes above the oldest event of the page the user
                    # sees (not his own membership: the join into a remote
                    # room lacks its prev_events, and what is before it may
                    # be hidden), and below the page's end as before
                    seen = [r for r in rows if not (r.type == "m.room.member" and r.state_key == user)]
                    if len(raw) < limit and older_visible:
                        low = None
                    elif seen:
                        low = seen[-1].depth or 0
                    else:
                        break
                elif older_visible:
                    low = (raw[-1].depth or 0) if len(raw) >= limit else None
                else:
                    break
                high = start[0] if start[0] is not None or not raw else raw[0].depth
                if not await self.backfill(room_id, high, max(limit, HOLE_FILL_EVENTS),
                                           min_depth=low, tried=tried):
                    break
                window = await self.window(user, room_id)
                raw = await page(start)
                rows = await shown(raw)
            # by the state at each event (late arrivals, hide_unseen); a
            # page left empty is followed by the next few, so a chunk is
            # empty only at the end
            for _ in range(MAX_HIDDEN_PAGES):
                if rows or len(raw) < limit:
                    break
                raw = await page((raw[-1].depth or 0, raw[-1].stream_pos or 0))
                rows = await shown(raw)
        body: dict[str, Any] = {
            "chunk": [serve_event(r, requester) for r in rows],
            "start": from_token if from_token else make_token(start[1]),
        }
        if len(raw) == limit and raw:
            body["end"] = make_history_token(raw[-1])
        if f.get("lazy_load_members") and rows:
            body["state"] = await self.member_events_for(room_id, {r.sender for r in rows}, requester)
        return body

    async def member_events_for(self, room_id: str, users: Iterable[str], requester: Requester) -> list[Any]:
        ids = await self.rooms.current_state_ids(room_id)
        wanted = [ids[("m.room.member", u)] for u in sorted(set(users)) if ("m.room.member", u) in ids]
        rows = await self.events.get_rows(wanted)
        return [serve_event(rows[i], requester) for i in wanted if i in rows]

    # -- single events and context ----------------------------------------------
    async def visible_event(self, requester: Requester, room_id: str, event_id: str) -> EventRow:
        row = await self.events.get_row(event_id)
        if row is None or row.room_id != room_id:
            raise not_found("Event not found")
        try:
            window = await self.window(requester.user_id, room_id)
        except MatrixError:
            raise not_found("Event not found") from None
        pos = row.stream_pos
        backfilled = pos is not None and pos < 0 and await self._restricts(room_id)  # judged by the state at it
        if not (window.contains(pos) or backfilled) or not await self.hide_unseen(
                requester.user_id, room_id, [row], window):
            raise not_found("Event not found")
        return row

    async def context(
        self, requester: Requester, room_id: str, event_id: str, limit: int, room_filter: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        row = await self.visible_event(requester, room_id, event_id)
        window = await self.window(requester.user_id, room_id)
        pos = row.stream_pos or 0
        f = room_filter or {}
        kw = dict(types=f.get("types"), not_types=f.get("not_types"), senders=f.get("senders"),
                  not_senders=f.get("not_senders"))
        before_count = limit // 2
        after_count = limit - before_count
        user = requester.user_id
        before = await self.visible_timeline(room_id, window, after=None, upto=pos - 1, limit=before_count,
                                             backwards=True, user_id=user, **kw) if before_count else []
        after = await self.visible_timeline(room_id, window, after=pos, upto=None, limit=after_count,
                                            backwards=False, user_id=user, **kw) if after_count else []
        last = after[-1] if after else row
        group = await self.events.event_state_group(last.event_id)
        state_ids = await self.events.state_ids_for_group(group) if group is not None else {}
        if f.get("lazy_load_members"):
            senders = {r.sender for r in [*before, row, *after]}
            state_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders}
        state_rows = await self.events.get_rows(state_ids.values())
        return {
            "event": serve_event(row, requester),
            "events_before": [serve_event(r, requester) for r in before],
            "events_after": [serve_event(r, requester) for r in after],
            "start": make_token((before[-1].stream_pos or 1) - 1 if before else pos - 1),
            "end": make_token(after[-1].stream_pos or pos if after else pos),
            "state": [serve_event(state_rows[i], requester) for i in state_ids.values() if i in state_rows],
        }

    # -- members and state -------------------------------------------------------
    async def state_ids_visible(self, requester: Requester, room_id: str, at: int | None = None) -> dict[tuple[str, str], str]:
        """Current state for members; as of leaving for former members."""
        window = await self.window(requester.user_id, room_id)
        upto = window.clamp(None, at)[1]
        if upto is None:
            return await self.rooms.current_state_ids(room_id)
        group = await self.events.state_group_at(room_id, upto)
        return await self.events.state_ids_for_group(group) if group is not None else {}

    async def state_events(self, requester: Requester, room_id: str, at: int | None = None) -> list[Any]:
        ids = await self.state_ids_visible(requester, room_id, at)
        rows = await self.events.get_rows(ids.values())
        return [serve_event(rows[i], requester) for i in sorted(ids.values()) if i in rows]

    async def members(
        self, requester: Requester, room_id: str, at: int | None, membership: str | None, not_membership: str | None
    ) -> list[Any]:
        ids = await self.state_ids_visible(requester, room_id, at)
        member_ids = [v for (t, _), v in ids.items() if t == "m.room.member"]
        rows = await self.events.get_rows(member_ids)
        out = []
        for i in sorted(member_ids):
            row = rows.get(i)
            if row is None:
                continue
            if membership is not None and row.membership != membership:
                continue
            if not_membership is not None and row.membership == not_membership:
                continue
            out.append(serve_event(row, requester))
        return out

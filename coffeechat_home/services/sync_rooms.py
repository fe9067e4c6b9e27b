"""/sync's rooms: the per-room parts of a response (timelines, joined
rooms whole or in part, left rooms, invite and knock stripped state) and
their state and summaries, as the SyncRooms mixin of SyncService
(services/sync.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

import orjson

from ..protocol.events import StateKey
from ..storage.event_listings import EventRow, timeline_from_read
from ..storage.events import EventStore
from ..storage.rooms import RoomStore
from .accounts import Requester
from .fanout import SharedReads
from .history import HistoryService
from .history_tokens import make_token, serve_event
from .history_visibility import Window
from .sync_filter import SyncFilter

if TYPE_CHECKING:
    from .notifier import Notifier
    from .sync import SyncSources

HEROES = 5  # m.heroes in a room summary
STRIPPED_STATE_TYPES = (
    "m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.canonical_alias",
    "m.room.encryption", "m.room.topic",
)


class SyncRooms:
    """The per-room builders of SyncService (which sets these)."""

    events: EventStore
    rooms: RoomStore
    history: HistoryService
    notifier: Notifier
    _timelines: SharedReads[tuple[Any, ...], list[EventRow]]
    sources: "SyncSources"
    remote_invite_state: Callable[[str], Awaitable[list[Any] | None]] | None

    async def _timeline(
        self, room_id: str, after: int | None, upto: int, f: SyncFilter, window: Window | None = None,
        user_id: str | None = None,
    ) -> tuple[list[EventRow], bool]:
        """The last events of (after, upto]; with ``window``, only those the
        user may see (history visibility); with ``user_id``, also by the
        state at each event (HistoryService.hide_unseen: events that
        arrived after the user's join without being after it)."""
        if f.timeline_limit == 0:
            return [], True
        kw: dict[str, Any] = dict(
            types=f.timeline_types, not_types=f.timeline_not_types,
            senders=f.timeline_senders, not_senders=f.timeline_not_senders,
        )
        if window is not None:
            rows = await self.history.visible_timeline(
                room_id, window, after=after, upto=upto, limit=f.timeline_limit + 1, backwards=True, **kw
            )
        else:
            key = (room_id, after, upto, *f.timeline_key())

            async def read() -> list[EventRow]:
                if user_id is None:
                    return await self.events.timeline(
                        room_id, after=after, upto=upto, limit=f.timeline_limit + 1, backwards=True, **kw
                    )
                # with what hide_unseen below asks about the room, in the same
                # statement; a woken sync takes them from the read that woke it
                read_ahead = (self.notifier.events_read(after, upto)
                              if after is not None and f.timeline_unfiltered else None)
                if read_ahead is not None:
                    found, restricted = timeline_from_read(read_ahead, room_id, f.timeline_limit + 1)
                else:
                    found, restricted = await self.events.timeline_and_restriction(
                        room_id, after=after, upto=upto, limit=f.timeline_limit + 1, **kw
                    )
                if found:
                    self.history.note_restriction(room_id, max(r.stream_pos or 0 for r in found), restricted)
                told = self.sources.timeline_read
                if told is not None and after is not None and len(found) <= f.timeline_limit and f.timeline_unfiltered:
                    told(room_id, after, upto, found)  # every event of (after, upto]
                return found

            rows = list(await self._timelines.get(key, read))
        limited = len(rows) > f.timeline_limit
        rows = rows[: f.timeline_limit]
        if user_id is not None:
            rows = await self.history.hide_unseen(user_id, room_id, rows)
        rows.reverse()
        return rows, limited

    async def _whole_rooms(
        self, requester: Requester, join_pos: dict[str, int], since: int | None, upto: int, f: SyncFilter
    ) -> dict[str, dict[str, Any]]:
        """Joined rooms whose whole state the client gets (newly joined, or
        full_state), with their timelines and summaries: what
        ``_joined_room`` does for one such room, for all of them in about
        six queries."""
        room_ids = list(join_pos)
        if not room_ids:
            return {}
        user_id = requester.user_id
        newly = {r for r, pos in join_pos.items() if since is None or pos > since}
        # joined throughout (since, upto]: every event there is visible;
        # newly joined: the history before may not be (history visibility).
        # Which rooms restrict their history (hide_unseen_many) comes along.
        limit = f.timeline_limit + 1
        filters: dict[str, Any] = dict(
            types=f.timeline_types, not_types=f.timeline_not_types,
            senders=f.timeline_senders, not_senders=f.timeline_not_senders,
        )
        # The timelines are read beside the windows, each from where the
        # client's knowledge ends (the start, or since): a window ending at
        # upto cuts a room's newest events at its lower bound only, so the
        # rows above it are exactly what a read of the window would give
        # (they are the newest; see _within_window). One round trip less.
        windows_read = self.history.windows_and_restricted(user_id, [r for r in room_ids if r in newly], room_ids)
        if f.timeline_limit:
            (windows, restricted), ahead = await asyncio.gather(windows_read, self.events.timelines(
                [(r, None if r in newly else since, upto) for r in room_ids], limit=limit, **filters))
        else:
            (windows, restricted), ahead = await windows_read, {}
        single: list[tuple[str, int | None, int | None]] = []
        rows_by_room: dict[str, list[EventRow]] = {}
        for room_id in room_ids:
            window = windows.get(room_id)
            if room_id not in newly:
                parts: list[tuple[int | None, int | None]] = [(since, upto)]
            else:
                parts = window.within(None, upto) if window is not None else []
            if not f.timeline_limit or not parts:
                rows_by_room[room_id] = []
            elif len(parts) == 1:
                known = _within_window(ahead.get(room_id), parts[0], upto)
                if known is None:
                    single.append((room_id, *parts[0]))
                else:
                    rows_by_room[room_id] = known
            else:  # gaps in what the user may see: room by room
                assert window is not None
                rows_by_room[room_id] = await self.history.visible_timeline(
                    room_id, window, after=None, upto=upto, limit=limit, backwards=True, **filters
                )
        rows_by_room.update(await self.events.timelines(single, limit=limit, **filters))
        rows_by_room = await self.history.hide_unseen_many(user_id, rows_by_room, known_restricted=restricted)
        timelines: dict[str, tuple[list[EventRow], bool, int]] = {}
        for room_id in room_ids:
            rows = rows_by_room[room_id]
            limited = len(rows) > f.timeline_limit or not f.timeline_limit or (since is not None and room_id in newly)
            rows = rows[: f.timeline_limit]
            rows.reverse()
            start = (rows[0].stream_pos or 1) - 1 if rows else upto
            timelines[room_id] = (rows, limited, start)
        groups = await self.events.state_groups_at([(r, t[2]) for r, t in timelines.items()])
        # nothing in the stream before the timeline (a room joined over
        # federation starts at the join): the state after its first event
        groups.update(await self.events.state_groups_at(
            [(r, t[0][0].stream_pos or 0) for r, t in timelines.items() if r not in groups and t[0]]))
        heroes: dict[str, list[str]] = {}
        if f.lazy_load_members:
            # lazy loading: only the members the timelines need, the user's
            # own and the heroes' (sync.yaml: their membership events MUST
            # be in the state), so the summaries come first
            summaries = await self._summaries(room_ids, user_id)
            heroes = {r: summaries[r]["m.heroes"] for r in room_ids}
            members = {
                g: {*(r.sender for r in timelines[room_id][0]), user_id, *heroes[room_id]}
                for room_id, g in groups.items()
            }
            states = await self.events.state_ids_for_groups(groups.values(), members=members)
        else:
            states, summaries = await asyncio.gather(
                self.events.state_ids_for_groups(groups.values(), members=None), self._summaries(room_ids, user_id)
            )
        wanted = {
            room_id: self._state_filter(requester, states.get(groups.get(room_id, -1), {}), timelines[room_id][0], f,
                                        heroes.get(room_id, ()))
            for room_id in room_ids
        }
        found = await self.events.get_rows(v for ids in wanted.values() for v in ids.values())
        out: dict[str, dict[str, Any]] = {}
        for room_id in room_ids:
            rows, limited, start = timelines[room_id]
            out[room_id] = {
                "timeline": {
                    "events": [serve_event(r, requester) for r in rows],
                    "limited": limited,
                    "prev_batch": make_token(start),
                },
                "state": {
                    "events": [serve_event(found[v], requester) for v in wanted[room_id].values() if v in found]
                },
                "summary": summaries[room_id],
            }
        return out

    async def _joined_room(
        self, requester: Requester, room_id: str, since: int | None, upto: int, join_pos: int, f: SyncFilter,
        full_state: bool,
    ) -> dict[str, Any]:
        newly = since is None or join_pos > since
        after = None if newly else since
        # Joined throughout (since, upto]: every event there is visible.
        # Newly joined: the history before may not be (history visibility).
        window = await self.history.window(requester.user_id, room_id) if newly else None
        rows, limited = await self._timeline(room_id, after, upto, f, window, requester.user_id)
        if newly or full_state:
            limited = limited or (since is not None and newly)
        timeline_start = (rows[0].stream_pos or 1) - 1 if rows else upto
        state: dict[StateKey, str] = {}
        summary = None
        if newly or full_state:
            # with lazy loading the heroes' members go in the state (see _whole_rooms)
            summary = await self._summary(room_id, requester.user_id)
            heroes = summary["m.heroes"] if f.lazy_load_members else []
            state = await self._state_ids_at(requester, room_id, timeline_start, None, rows, f, heroes)
        elif limited:
            state = await self._state_ids_at(requester, room_id, timeline_start, since, rows, f)
        if summary is None and any(r.type == "m.room.member" for r in rows):
            summary = await self._summary(room_id, requester.user_id)
            if f.lazy_load_members and any(r.type == "m.room.member" and r.membership in ("leave", "ban")
                                           for r in rows):
                # someone left: a member the client was never sent may be
                # among the heroes now, and their membership must come along
                for k, v in (await self._hero_members(room_id, upto, summary["m.heroes"], rows, f)).items():
                    state.setdefault(k, v)
        found = await self.events.get_rows(state.values())
        room: dict[str, Any] = {
            "timeline": {
                "events": [serve_event(r, requester) for r in rows],
                "limited": limited,
                "prev_batch": make_token(timeline_start),
            },
            "state": {"events": [serve_event(found[v], requester) for v in state.values() if v in found]},
        }
        if summary is not None:
            room["summary"] = summary
        return room

    async def _hero_members(
        self, room_id: str, upto: int, heroes: list[str], rows: list[EventRow], f: SyncFilter
    ) -> dict[StateKey, str]:
        """The heroes' membership events as of ``upto``, but those in the timeline."""
        group = await self.events.state_group_at(room_id, upto)
        if group is None or not heroes:
            return {}
        ids = (await self.events.state_ids_for_groups([group], members={group: heroes})).get(group, {})
        in_timeline = {r.event_id for r in rows}
        return {k: v for k, v in ids.items()
                if k[0] == "m.room.member" and k[1] in heroes and v not in in_timeline and f.wants_state(k)}

    async def _state_at(
        self, requester: Requester, room_id: str, pos: int, since: int | None, rows: list[EventRow], f: SyncFilter,
    ) -> list[Any]:
        state = await self._state_ids_at(requester, room_id, pos, since, rows, f)
        found = await self.events.get_rows(state.values())
        return [serve_event(found[v], requester) for v in state.values() if v in found]

    async def _state_ids_at(
        self, requester: Requester, room_id: str, pos: int, since: int | None, rows: list[EventRow], f: SyncFilter,
        heroes: Iterable[str] = (),
    ) -> dict[StateKey, str]:
        """State at ``pos`` (the start of the timeline); with ``since``, only
        what changed since then. Lazy loading keeps the members the timeline
        needs, the user's own and the ``heroes``'."""
        group = await self.events.state_group_at(room_id, pos)
        if group is None and rows:  # see _whole_rooms: a room joined over federation
            group = await self.events.state_group_at(room_id, rows[0].stream_pos or 0)
        state = await self.events.state_ids_for_group(group) if group is not None else {}
        if since is not None:
            before_group = await self.events.state_group_at(room_id, since)
            before = await self.events.state_ids_for_group(before_group) if before_group is not None else {}
            state = {k: v for k, v in state.items() if before.get(k) != v}
        return self._state_filter(requester, state, rows, f, heroes)

    @staticmethod
    def _state_filter(
        requester: Requester, state: dict[StateKey, str], rows: list[EventRow], f: SyncFilter,
        heroes: Iterable[str] = (),
    ) -> dict[StateKey, str]:
        """The part of a room's state a response carries beside ``rows``:
        the filter's types, not what the timeline has, and with lazy
        loading only the members the timeline needs, the user's own and
        the ``heroes``' (given for a room whose whole state is sent)."""
        in_timeline = {r.event_id for r in rows}
        if f.lazy_load_members:
            wanted = {r.sender for r in rows} | {requester.user_id, *heroes}
            state = {k: v for k, v in state.items() if k[0] != "m.room.member" or k[1] in wanted}
        return {k: v for k, v in state.items() if f.wants_state(k) and v not in in_timeline}

    async def _left_room(
        self, requester: Requester, room_id: str, since: int | None, leave_pos: int, f: SyncFilter
    ) -> dict[str, Any]:
        window = await self.history.window(requester.user_id, room_id)
        rows, limited = await self._timeline(room_id, since, leave_pos, f, window, requester.user_id)
        start = (rows[0].stream_pos or 1) - 1 if rows else leave_pos
        # Only a room the client had as joined at `since` gets a state delta;
        # one it never saw (joined and left in between) gets its state whole.
        # A user who was never joined (a rejected or withdrawn invite or
        # knock) gets no room state beyond its own membership events.
        changes = await self.rooms.db.fetch(
            """SELECT membership, stream_pos FROM room_memberships WHERE user_id = $1 AND room_id = $2
               AND stream_pos <= $3 ORDER BY stream_pos""",
            requester.user_id, room_id, leave_pos,
        )
        at_since = [c["membership"] for c in changes if since is not None and c["stream_pos"] <= since]
        known = bool(at_since) and at_since[-1] == "join"
        state: list[Any] = []
        if any(c["membership"] == "join" for c in changes):
            state = await self._state_at(
                requester, room_id, start, since if known and not limited else None, rows, f
            )
        return {
            "timeline": {"events": [serve_event(r, requester) for r in rows], "limited": limited,
                         "prev_batch": make_token(start)},
            "state": {"events": state},
        }

    async def _stripped_state(self, member_event_id: str, requester: Requester) -> list[dict[str, Any]]:
        group = await self.events.event_state_group(member_event_id)
        if group is None and self.remote_invite_state is not None:
            # an invite from another server: the stripped state it sent along
            given = await self.remote_invite_state(member_event_id)
            if given is not None:
                member_row = await self.events.get_row(member_event_id)
                events = [e for e in given if isinstance(e, dict)]
                if member_row is not None:
                    events.append(orjson.loads(member_row.client))
                return [{k: e[k] for k in ("content", "sender", "state_key", "type") if k in e} for e in events]
        ids = await self.events.state_ids_for_group(group) if group is not None else {}
        member = await self.events.get_row(member_event_id)
        wanted = [v for k, v in ids.items() if k[0] in STRIPPED_STATE_TYPES]
        if member is not None:
            wanted.append(member_event_id)
            sender_member = ids.get(("m.room.member", member.sender))
            if sender_member:
                wanted.append(sender_member)
        rows = await self.events.get_rows(wanted)
        out = []
        for eid in dict.fromkeys(wanted):
            row = rows.get(eid)
            if row is None:
                continue
            ev = orjson.loads(row.client)
            out.append({k: ev[k] for k in ("content", "sender", "state_key", "type") if k in ev})
        return out

    async def _summary(self, room_id: str, user_id: str) -> dict[str, Any]:
        return (await self._summaries([room_id], user_id))[room_id]

    async def _summaries(self, room_ids: list[str], user_id: str) -> dict[str, dict[str, Any]]:
        # the first 6 of each, so that 5 remain without the user
        members = await self.rooms.member_summaries(room_ids, HEROES + 1)
        out = {}
        for room_id in room_ids:
            n_joined, n_invited, joined, invited = members[room_id]
            heroes = [u for u in joined if u != user_id][:HEROES]
            if len(heroes) < HEROES and len(joined) >= n_joined:  # every joined member read: invited next
                heroes += [u for u in invited if u != user_id][:HEROES - len(heroes)]
            out[room_id] = {
                "m.heroes": heroes, "m.joined_member_count": n_joined, "m.invited_member_count": n_invited
            }
        return out


def _within_window(
    rows: list[EventRow] | None, part: tuple[int | None, int | None], upto: int
) -> list[EventRow] | None:
    """Of ``rows``, a room's newest events up to ``upto`` (newest first,
    as many as a timeline read takes, read from below ``part``'s lower
    bound), those in ``part``: exactly what a read of ``part`` gives when
    the part ends at ``upto`` (the events above its lower bound come first,
    so the read's cut-off falls on them alike). None when it ends before
    (a read of the part is needed)."""
    lo, hi = part
    if rows is None or (hi is not None and hi < upto) or (lo is not None and lo < 0):
        return None  # (rows were read above 0, where a read from None starts too)
    return rows if lo is None else [r for r in rows if r.stream_pos is not None and r.stream_pos > lo]

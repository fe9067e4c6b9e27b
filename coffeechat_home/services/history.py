"""Reading rooms: history visibility, /messages, /context, single events,
members and state (current, or as of when the user left)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from ..errors import MatrixError, forbidden, invalid_param, not_found
from ..storage.events import EventRow, EventStore
from ..storage.rooms import RoomStore
from ..storage.stream import StreamStore
from .accounts import Requester


def parse_token(token: str | None, name: str = "from") -> int | None:
    """Stream tokens look like ``s123``; sync's next_batch is one too."""
    if token is None or token == "":
        return None
    body = token[1:] if token.startswith("s") else token
    try:
        pos = int(body.split("_")[0])
    except ValueError:
        raise invalid_param(f"Invalid {name} token") from None
    if pos < 0:
        raise invalid_param(f"Invalid {name} token")
    return pos


def make_token(pos: int) -> str:
    return f"s{max(pos, 0)}"


def serve_event(row: EventRow, requester: Requester | None) -> Any:
    """The stored client JSON, untouched unless it is the requester's own
    event sent with a transaction id (then unsigned.transaction_id)."""
    if (
        requester is not None
        and row.txn_id is not None
        and row.sender == requester.user_id
        and row.sender_device == requester.device_id
    ):
        ev = orjson.loads(row.client)
        ev.setdefault("unsigned", {})["transaction_id"] = row.txn_id
        return ev
    return orjson.Fragment(row.client.encode())


@dataclass
class Window:
    """The stream positions of a room a user may read: (lower, upper]."""

    lower: int | None
    upper: int | None
    membership: str | None

    def clamp(self, after: int | None, upto: int | None) -> tuple[int | None, int | None]:
        if self.lower is not None:
            after = self.lower if after is None else max(after, self.lower)
        if self.upper is not None:
            upto = self.upper if upto is None else min(upto, self.upper)
        return after, upto

    def contains(self, pos: int | None) -> bool:
        if pos is None:
            return False
        return (self.lower is None or pos > self.lower) and (self.upper is None or pos <= self.upper)


class HistoryService:
    def __init__(self, events: EventStore, rooms: RoomStore, stream: StreamStore) -> None:
        self.events = events
        self.rooms = rooms
        self.stream = stream

    async def history_visibility(self, room_id: str) -> str:
        ev = await self.rooms.current_state_event(room_id, "m.room.history_visibility", "")
        value = (ev or {}).get("content", {}).get("history_visibility", "shared")
        return value if value in ("world_readable", "shared", "invited", "joined") else "shared"

    async def window(self, user_id: str, room_id: str) -> Window:
        """What of the room the user may see; 403 when nothing."""
        if await self.rooms.room_version(room_id) is None:
            raise forbidden("You are not in this room")  # do not reveal whether it exists
        visibility = await self.history_visibility(room_id)
        changes = await self.rooms.db.fetch(
            """SELECT membership, stream_pos FROM room_memberships WHERE user_id = $1 AND room_id = $2
               ORDER BY stream_pos""",
            user_id, room_id,
        )
        current = changes[-1]["membership"] if changes else None
        if visibility == "world_readable":
            return Window(None, None, current)
        joined_at = [c["stream_pos"] for c in changes if c["membership"] == "join"]
        invited_at = [c["stream_pos"] for c in changes if c["membership"] in ("join", "invite")]
        if not joined_at and not (visibility in ("invited", "shared") and invited_at and current == "invite"):
            raise forbidden("You are not allowed to see this room's history")
        upper = None
        if current not in ("join",):
            # out of the room now: up to the change that took them out
            upper = changes[-1]["stream_pos"]
        if visibility == "joined":
            lower = joined_at[0] - 1 if joined_at else None
        elif visibility == "invited":
            lower = invited_at[0] - 1 if invited_at else None
        else:
            lower = None
        if current == "invite" and visibility == "shared" and not joined_at:
            # an invitee sees the state it was invited with, not the history
            lower = upper = changes[-1]["stream_pos"]
        return Window(lower, upper, current)

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
        start = parse_token(from_token, "from")
        to = parse_token(to_token, "to")
        f = room_filter or {}
        if backwards:
            upto = start if start is not None else await self.stream.current_position()
            after = to
        else:
            after = start if start is not None else 0
            upto = to
        after, upto = window.clamp(after, upto)
        rows: list[EventRow] = []
        if after is None or upto is None or upto > after:
            rows = await self.events.timeline(
                room_id, after=after, upto=upto, limit=limit, backwards=backwards,
                types=f.get("types"), not_types=f.get("not_types"),
                senders=f.get("senders"), not_senders=f.get("not_senders"),
            )
        if start is None:
            start = upto if backwards else (after or 0)
        body: dict[str, Any] = {
            "chunk": [serve_event(r, requester) for r in rows],
            "start": make_token(start if start is not None else 0),
        }
        if len(rows) == limit and rows:
            last = rows[-1].stream_pos or 0
            body["end"] = make_token(last - 1 if backwards else last)
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
        if not window.contains(row.stream_pos):
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
        b_after, b_upto = window.clamp(None, pos - 1)
        before = await self.events.timeline(room_id, after=b_after, upto=b_upto, limit=before_count,
                                            backwards=True, **kw) if before_count else []
        a_after, a_upto = window.clamp(pos, None)
        after = await self.events.timeline(room_id, after=a_after, upto=a_upto, limit=after_count,
                                           backwards=False, **kw) if after_count else []
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

"""Space hierarchies: ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy``
and ``GET /_matrix/federation/v1/hierarchy/{roomId}``.

The client walk goes depth-first through ``m.space.child`` events from the
requested space, in the children's order (protocol/hierarchy.py), and
answers the rooms the user may see, each once. Rooms we are in are read
from our database (two round trips per space for all its children); a
room we are not in is asked of the servers its child event names in
``via`` (federation ``/hierarchy``), whose answer also describes that
space's children, so a remote space costs one request. Remote requests are
bounded per page (count and time) and their answers cached for a minute in
this process (safe to lose). A page ends at ``limit`` rooms; its
``next_batch`` names the rest of the walk, stored in the database so any
instance serves the next page.

Other servers get the space and its children we are in (the first 50),
those their users may see in ``children``, the rest in
``inaccessible_children``; a room they may not see (or that we are not in)
is 404.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from ..errors import forbidden, invalid_param, not_found
from ..protocol.hierarchy import (
    RESTRICTED_JOIN_RULES, LocalRoom, children_of, open_to_anyone, remote_summary, user_may_see,
)
from ..protocol.server_acl import server_allowed
from ..storage.hierarchy import HierarchyStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_DEPTH = 50
MAX_EXAMINED = 500  # rooms looked at per page (seen or not)
MAX_REMOTE_REQUESTS = 10  # federation requests per page
REMOTE_BUDGET_S = 20.0  # time for them per page
REMOTE_TIMEOUT_S = 10.0  # per request
MAX_VIA = 3  # servers tried per room
MAX_CHILDREN_ANSWERED = 50  # children looked at per federation request (as Synapse)
CACHE_TTL_S = 60.0
CACHE_SIZE = 500

# Asks a server for a room's hierarchy: (server, room_id, suggested_only,
# timeout_s) -> its answer, or None when it failed or could not answer.
RemoteHierarchy = Callable[[str, str, bool, float], Awaitable[Any]]


@dataclass
class RemoteAnswer:
    room: dict[str, Any]
    children: dict[str, dict[str, Any]]
    inaccessible: set[str]


def parse_remote_answer(raw: Any, room_id: str) -> RemoteAnswer | None:
    """A federation /hierarchy answer about ``room_id``, checked: the room's
    summary must be that room; children not named in its children_state
    are dropped."""
    if not isinstance(raw, Mapping):
        return None
    room = remote_summary(raw.get("room"))
    if room is None or room["room_id"] != room_id:
        return None
    named = {c.room_id for c in children_of(room)}
    children: dict[str, dict[str, Any]] = {}
    raw_children = raw.get("children")
    for item in raw_children if isinstance(raw_children, list) else []:
        summary = remote_summary(item)
        if summary is not None and summary["room_id"] in named:
            children[summary["room_id"]] = summary
    raw_inaccessible = raw.get("inaccessible_children")
    inaccessible = {r for r in raw_inaccessible if isinstance(r, str)} if isinstance(raw_inaccessible, list) else set()
    return RemoteAnswer(room, children, inaccessible & named)


@dataclass
class _Entry:
    room_id: str
    via: list[str]
    depth: int
    remote: dict[str, Any] | None = None  # its summary from its parent's remote answer

    def to_json(self) -> dict[str, Any]:
        return {"room_id": self.room_id, "via": self.via, "depth": self.depth, "remote": self.remote}


@dataclass
class _Walk:
    queue: list[_Entry]
    processed: set[str] = field(default_factory=set)
    inaccessible: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"queue": [e.to_json() for e in self.queue], "processed": sorted(self.processed),
                "inaccessible": sorted(self.inaccessible)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "_Walk":
        queue = [_Entry(e["room_id"], list(e["via"]), int(e["depth"]), e.get("remote")) for e in raw["queue"]]
        return cls(queue, set(raw["processed"]), set(raw["inaccessible"]))


@dataclass
class _Rooms:
    """What a page read of rooms we are in (None: not one of ours) and
    whether the user may see them."""

    local: dict[str, LocalRoom | None] = field(default_factory=dict)
    visible: dict[str, bool] = field(default_factory=dict)


class _Budget:
    def __init__(self, now: float) -> None:
        self.requests = MAX_REMOTE_REQUESTS
        self.deadline = now + REMOTE_BUDGET_S

    def left(self, now: float) -> float:
        return 0.0 if self.requests <= 0 else max(0.0, self.deadline - now)


class HierarchyService:
    def __init__(self, store: HierarchyStore, server_name: str, remote: RemoteHierarchy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.server_name = server_name
        self.remote = remote
        self.clock = clock
        self._cache: dict[tuple[str, bool], tuple[float, RemoteAnswer]] = {}

    # -- client API ------------------------------------------------------------------
    async def client_hierarchy(self, user_id: str, room_id: str, *, suggested_only: bool, max_depth: int | None,
                               limit: int | None, from_token: str | None) -> dict[str, Any]:
        depth_cap = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        page_size = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)
        rooms = _Rooms()
        if from_token:
            page = await self.store.load_page(from_token)
            if page is None or page[0] != user_id or page[1] != room_id:
                raise invalid_param("Unknown or expired from token")
            if (page[2], page[3]) != (suggested_only, depth_cap):
                raise invalid_param("suggested_only and max_depth cannot change on paginated requests")
            walk = _Walk.from_json(page[4])
        else:
            await self._load(user_id, [room_id], rooms)
            if not rooms.visible.get(room_id):
                raise forbidden("You may not view this room")
            walk = _Walk([_Entry(room_id, [], 0)])
        found = await self._walk(user_id, walk, rooms, suggested_only, depth_cap, page_size)
        out: dict[str, Any] = {"rooms": found}
        if walk.queue:
            token = secrets.token_urlsafe(16)
            await self.store.save_page(token, user_id, room_id, suggested_only, depth_cap, walk.to_json())
            out["next_batch"] = token
        return out

    async def _load(self, user_id: str, room_ids: list[str], rooms: "_Rooms") -> None:
        """Read the rooms we are in among ``room_ids`` (not read yet on
        this page) and whether the user may see them: three round trips."""
        ids = [r for r in dict.fromkeys(room_ids) if r not in rooms.local]
        if not ids:
            return
        found = await self.store.local_rooms(ids)
        rooms.local.update({r: found.get(r) for r in ids})
        if found:
            rooms.visible.update(await self._user_may_see(user_id, list(found.values())))

    async def _walk(self, user_id: str, walk: _Walk, rooms: "_Rooms", suggested_only: bool, max_depth: int,
                    limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        budget = _Budget(self.clock())
        examined = 0
        while walk.queue and len(out) < limit and examined < MAX_EXAMINED:
            entry = walk.queue.pop()
            if entry.room_id in walk.processed or entry.room_id in walk.inaccessible:
                continue
            examined += 1
            await self._load(user_id, [entry.room_id], rooms)
            local = rooms.local[entry.room_id]
            remote_children: dict[str, dict[str, Any]] = {}
            summary: dict[str, Any] | None
            if local is not None:
                summary = local.summary(suggested_only) if rooms.visible.get(local.room_id) else None
            elif entry.remote is not None and (entry.remote.get("room_type") != "m.space"
                                               or entry.depth >= max_depth):
                summary = entry.remote
            else:
                if budget.left(self.clock()) <= 0 and self._cached(entry.room_id, suggested_only) is None:
                    walk.queue.append(entry)  # the next page asks (this one asked for others)
                    break
                answer, complete = await self._ask(entry, suggested_only, budget)
                if answer is None and not complete and examined > 1:
                    walk.queue.append(entry)  # out of budget before its last server: next page
                    break
                summary = answer.room if answer is not None else None
                if answer is not None:
                    remote_children = answer.children
                    walk.inaccessible |= answer.inaccessible
            if summary is not None and local is None and not await self._user_may_see_remote(user_id, summary):
                summary = None
            walk.processed.add(entry.room_id)
            if summary is None:
                continue
            out.append(summary)
            if entry.depth >= max_depth:
                continue
            children = [c for c in children_of(summary, suggested_only)
                        if c.room_id not in walk.processed and c.room_id not in walk.inaccessible]
            await self._load(user_id, [c.room_id for c in children], rooms)
            for c in reversed(children):  # the first child is popped next
                walk.queue.append(_Entry(c.room_id, list(c.via), entry.depth + 1, remote_children.get(c.room_id)))
        return out

    async def _user_may_see(self, user_id: str, rooms: list[LocalRoom]) -> dict[str, bool]:
        ids = [r.room_id for r in rooms] + [a for r in rooms for a in r.allowed_room_ids()]
        memberships = await self.store.memberships(user_id, ids)
        joined = [r for r, m in memberships.items() if m == "join"]
        return {r.room_id: user_may_see(r.join_rule, r.world_readable, memberships.get(r.room_id),
                                        r.allowed_room_ids(), joined) for r in rooms}

    async def _user_may_see_remote(self, user_id: str, summary: Mapping[str, Any]) -> bool:
        join_rule = summary.get("join_rule", "public")  # the spec's default for a summary
        if open_to_anyone(join_rule, summary.get("world_readable")):
            return True
        allowed = list(summary.get("allowed_room_ids") or []) if join_rule in RESTRICTED_JOIN_RULES else []
        memberships = await self.store.memberships(user_id, [summary["room_id"], *allowed])
        joined = [r for r, m in memberships.items() if m == "join"]
        membership = memberships.get(summary["room_id"])
        if membership is None:  # invited from another server to a room we are not in
            membership = await self.store.latest_membership(user_id, summary["room_id"])
        return user_may_see(join_rule, False, membership, allowed, joined)

    def _cached(self, room_id: str, suggested_only: bool) -> RemoteAnswer | None:
        cached = self._cache.get((room_id, suggested_only))
        return cached[1] if cached is not None and cached[0] > self.clock() else None

    async def _ask(self, entry: _Entry, suggested_only: bool,
                   budget: _Budget) -> tuple[RemoteAnswer | None, bool]:
        """The room's hierarchy from the first of its via servers (at most
        3, never us) that answers (cached), within the page's budget; and
        whether every server was tried (False: the budget ran out first)."""
        key = (entry.room_id, suggested_only)
        cached = self._cached(*key)
        if cached is not None:
            return cached, True
        if self.remote is None:
            return None, True
        servers = [s for s in dict.fromkeys(entry.via) if s != self.server_name][:MAX_VIA]
        for server in servers:
            left = budget.left(self.clock())
            if left <= 0:
                return None, False
            budget.requests -= 1
            answer = parse_remote_answer(
                await self.remote(server, entry.room_id, suggested_only, min(REMOTE_TIMEOUT_S, left)), entry.room_id)
            if answer is not None:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = (self.clock() + CACHE_TTL_S, answer)
                return answer, True
        return None, True

    # -- federation API ----------------------------------------------------------------
    async def federation_hierarchy(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        root = (await self.store.local_rooms([room_id])).get(room_id)
        if root is None or not (await self._server_may_see(origin, [root]))[room_id]:
            raise not_found("Room not found or not accessible to your server")
        children = root.space_children(suggested_only)[:MAX_CHILDREN_ANSWERED]
        found = await self.store.local_rooms([c.room_id for c in children])
        known = [found[c.room_id] for c in children if c.room_id in found]
        visible = await self._server_may_see(origin, known)
        return {
            "room": root.summary(suggested_only),
            "children": [r.summary(suggested_only) for r in known if visible[r.room_id]],
            "inaccessible_children": [r.room_id for r in known if not visible[r.room_id]],
        }

    async def _server_may_see(self, origin: str, rooms: list[LocalRoom]) -> dict[str, bool]:
        """Whether the server could peek or join each room: not denied by
        its ACL, and open to anyone, or one of its users joined or invited,
        or a restricted room one of whose allowed rooms it is in."""
        ids = [r.room_id for r in rooms] + [a for r in rooms for a in r.allowed_room_ids()]
        present = await self.store.server_rooms(origin, ids) if ids else {}
        out = {}
        for r in rooms:
            acl = r.state.get("m.room.server_acl")
            if not server_allowed(acl, origin):
                out[r.room_id] = False
                continue
            joined = [a for a in r.allowed_room_ids() if "join" in present.get(a, set())]
            out[r.room_id] = open_to_anyone(r.join_rule, r.world_readable) or bool(present.get(r.room_id)) \
                or (r.join_rule in RESTRICTED_JOIN_RULES and bool(joined))
        return out

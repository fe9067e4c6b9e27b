"""Account data and room tags: reads, client writes, and the account data
section of /sync."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import MatrixError, bad_json, not_found
from ..protocol.push_rules import build_ruleset
from ..storage.account_data import GLOBAL, AccountDataStore
from .notifier import Notifier

# Types the server controls; clients change them through their own APIs.
SERVER_CONTROLLED = {
    "m.fully_read": "use /rooms/{roomId}/read_markers",
    "m.push_rules": "use the /pushrules API",
}
TAG_TYPE = "m.tag"
PUSH_RULES_TYPE = "m.push_rules"


def default_push_rules_content(user_id: str) -> dict[str, Any]:
    return {"global": build_ruleset(user_id, [], {})}


class AccountDataService:
    def __init__(self, store: AccountDataStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier

    # -- client API -------------------------------------------------------
    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any]:
        """``room_id`` is GLOBAL ('') for global account data."""
        content = await self.store.get(user_id, room_id, data_type)
        if content is None and room_id == GLOBAL and data_type == PUSH_RULES_TYPE:
            content = default_push_rules_content(user_id)
        if content is None:
            raise not_found("Account data not found" if room_id == GLOBAL else "Room account data not found")
        return content

    async def put_from_client(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        how = SERVER_CONTROLLED.get(data_type)
        if how is not None:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {data_type} through this API: {how}")
        try:
            orjson.dumps(content)
        except orjson.JSONEncodeError:
            raise bad_json("The content is not valid Matrix JSON (integers must fit 64 bits)") from None
        return await self.put(user_id, room_id, data_type, content)

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Set any type (server-side callers: read markers, push rules)."""
        pos = await self.store.put(user_id, room_id, data_type, content)
        self.notifier.poke()
        return pos

    # -- tags (room account data m.tag) -----------------------------------
    async def get_tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        content = await self.store.get(user_id, room_id, TAG_TYPE)
        tags = (content or {}).get("tags")
        return tags if isinstance(tags, dict) else {}

    async def set_tag(self, user_id: str, room_id: str, tag: str, info: dict[str, Any]) -> None:
        try:
            orjson.dumps(info)
        except orjson.JSONEncodeError:
            raise bad_json("The tag is not valid Matrix JSON (integers must fit 64 bits)") from None

        def change(content: dict[str, Any] | None) -> dict[str, Any]:
            tags = dict((content or {}).get("tags") or {})
            tags[tag] = info
            return {**(content or {}), "tags": tags}

        await self.store.update(user_id, room_id, TAG_TYPE, change)
        self.notifier.poke()

    async def remove_tag(self, user_id: str, room_id: str, tag: str) -> None:
        def change(content: dict[str, Any] | None) -> dict[str, Any] | None:
            tags = dict((content or {}).get("tags") or {})
            if tag not in tags:
                return None
            del tags[tag]
            return {**(content or {}), "tags": tags}

        if await self.store.update(user_id, room_id, TAG_TYPE, change) is not None:
            self.notifier.poke()

    # -- /sync --------------------------------------------------------------
    async def account_data_for_sync(
        self, user_id: str, since: int | None, upto: int
    ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """Account data events changed in (since, upto] (all of them up to
        ``upto`` when ``since`` is None): (global events, {room_id: events}).
        An initial sync always carries ``m.push_rules``."""
        global_events: list[dict[str, Any]] = []
        room_events: dict[str, list[dict[str, Any]]] = {}
        for change in await self.store.changes(user_id, since, upto):
            event = {"type": change.type, "content": change.content}
            if change.room_id == GLOBAL:
                global_events.append(event)
            else:
                room_events.setdefault(change.room_id, []).append(event)
        if (
            since is None
            and not any(e["type"] == PUSH_RULES_TYPE for e in global_events)
            and await self.store.get(user_id, GLOBAL, PUSH_RULES_TYPE) is None  # else it comes next sync
        ):
            global_events.append({"type": PUSH_RULES_TYPE, "content": default_push_rules_content(user_id)})
        return global_events, room_events

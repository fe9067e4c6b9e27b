"""User directory search over local users.

Visible to a searcher: users sharing a room with them, users joined to
rooms whose join rule is public or whose history is world readable (the
spec's minimum), or every local user when ``search_all`` is set. A user
matches when every word of the search term is found, case-insensitively,
in their user id or display name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database

_VISIBLE = """
    SELECT o.state_key AS user_id FROM current_state me JOIN current_state o
      ON o.room_id = me.room_id AND o.type = 'm.room.member' AND o.membership = 'join'
    WHERE me.type = 'm.room.member' AND me.state_key = $1 AND me.membership = 'join'
    UNION
    SELECT m.state_key FROM current_state m
    WHERE m.type = 'm.room.member' AND m.membership = 'join' AND m.room_id IN (
        SELECT c.room_id FROM current_state c JOIN events e ON e.event_id = c.event_id
        WHERE c.state_key = '' AND (
            (c.type = 'm.room.join_rules'
             AND (e.client::JSONB -> 'content' ->> 'join_rule') = 'public')
            OR (c.type = 'm.room.history_visibility'
             AND (e.client::JSONB -> 'content' ->> 'history_visibility') = 'world_readable')))
"""


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(
        self, searcher: str, words: list[str], limit: int, *, search_all: bool
    ) -> tuple[list[DirectoryEntry], bool]:
        """Up to ``limit`` matches, best first, and whether there were more."""
        args: list[object] = [searcher, search_all, limit + 1]
        conditions = []
        for word in words:
            args.append(word.lower())
            n = len(args)
            conditions.append(
                f"(strpos(lower(d.user_id), ${n}) > 0 OR strpos(lower(COALESCE(d.display_name, '')), ${n}) > 0)"
            )
        first = "$4" if words else "''"
        rows = await self.db.fetch(
            f"""SELECT d.user_id, d.display_name, d.avatar_url FROM (
                    SELECT u.user_id,
                           CASE WHEN p.user_id IS NULL THEN split_part(substr(u.user_id, 2), ':', 1)
                                ELSE p.displayname END AS display_name,
                           p.avatar_url
                    FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id
                    WHERE NOT u.deactivated AND ($2 OR u.user_id IN ({_VISIBLE}))
                ) AS d
                WHERE {' AND '.join(conditions) or 'TRUE'}
                ORDER BY (strpos(lower(COALESCE(d.display_name, '')), {first}) = 1
                          OR strpos(lower(d.user_id), {first}) = 2) DESC,
                         (d.display_name IS NULL) ASC, {self.db.text_order("d.user_id")}
                LIMIT $3""",
            *args,
        )
        entries = [DirectoryEntry(r["user_id"], r["display_name"], r["avatar_url"]) for r in rows]
        return entries[:limit], len(entries) > limit

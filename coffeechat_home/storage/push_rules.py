"""Push rules: a user's own rules and their changes to the server-default
rules. Every change also rewrites the ``m.push_rules`` global account data
at the same stream position, so /sync delivers the new ruleset."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeAlias

import asyncpg
import orjson

from ..protocol.push_rules import DefaultChange, UserRule, build_ruleset
from .account_data import GLOBAL, upsert_account_data
from .database import Database
from .stream import StreamStore

PUSH_RULES_TYPE = "m.push_rules"

Executor: TypeAlias = "asyncpg.Connection | Database"


class PushRuleNotFound(Exception):
    """The rule (or the before/after anchor) does not exist."""

    def __init__(self, rule_id: str, *, anchor: bool = False) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id
        self.anchor = anchor


async def _load(ex: Executor, user_id: str) -> tuple[list[UserRule], dict[tuple[str, str], DefaultChange]]:
    def user_rules() -> Awaitable[list[asyncpg.Record]]:
        return ex.fetch(
            """SELECT kind, rule_id, position, conditions, pattern, actions, enabled FROM push_rules
               WHERE user_id = $1""",
            user_id,
        )

    def default_changes() -> Awaitable[list[asyncpg.Record]]:
        return ex.fetch("SELECT kind, rule_id, enabled, actions FROM push_rule_defaults WHERE user_id = $1", user_id)

    if isinstance(ex, Database):  # lone statements: side by side (an initial sync waits for them)
        rows, default_rows = await asyncio.gather(user_rules(), default_changes())
    else:  # one connection (a transaction): one after the other
        rows = await user_rules()
        default_rows = await default_changes()
    # sorted here, not by ORDER BY: text order differs between engines
    rows = sorted(rows, key=lambda r: (r["kind"], r["position"], r["rule_id"]))
    rules = [
        UserRule(
            r["kind"], r["rule_id"],
            orjson.loads(r["conditions"]) if r["conditions"] is not None else None,
            r["pattern"], orjson.loads(r["actions"]), r["enabled"],
        )
        for r in rows
    ]
    changes = {
        (r["kind"], r["rule_id"]): DefaultChange(
            r["enabled"], orjson.loads(r["actions"]) if r["actions"] is not None else None
        )
        for r in default_rows
    }
    return rules, changes


class PushRuleStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        rules, changes = await _load(self.db, user_id)
        return build_ruleset(user_id, rules, changes)

    async def _mutate(self, user_id: str, op: Callable[[asyncpg.Connection], Awaitable[None]], name: str) -> int:
        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await op(conn)
            rules, changes = await _load(conn, user_id)
            content = {"global": build_ruleset(user_id, rules, changes)}
            await upsert_account_data(conn, user_id, GLOBAL, PUSH_RULES_TYPE, content, pos)

        _, pos = await self.stream.write(write, name=name)
        return pos

    async def put_rule(self, user_id: str, rule: UserRule, before: str | None, after: str | None) -> int:
        """Create or update a user rule. Placed just before ``before`` (or
        else just after ``after``); a new rule without either becomes the
        most important of its kind; an updated one keeps its place."""

        async def op(conn: asyncpg.Connection) -> None:
            rows = await conn.fetch(
                "SELECT rule_id, position FROM push_rules WHERE user_id = $1 AND kind = $2",
                user_id, rule.kind,
            )
            order = [r["rule_id"] for r in sorted(rows, key=lambda r: (r["position"], r["rule_id"]))]
            exists = rule.rule_id in order
            anchor = before if before is not None else after
            if anchor is not None:
                if anchor == rule.rule_id or anchor not in order:
                    raise PushRuleNotFound(anchor, anchor=True)
                if exists:
                    order.remove(rule.rule_id)
                at = order.index(anchor)
                order.insert(at if before is not None else at + 1, rule.rule_id)
            elif not exists:
                order.insert(0, rule.rule_id)
            await conn.execute(
                """INSERT INTO push_rules (user_id, kind, rule_id, position, conditions, pattern, actions, enabled)
                   VALUES ($1, $2, $3, 0, $4, $5, $6, true)
                   ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET conditions = excluded.conditions,
                       pattern = excluded.pattern, actions = excluded.actions""",
                user_id, rule.kind, rule.rule_id,
                orjson.dumps(rule.conditions).decode() if rule.conditions is not None else None,
                rule.pattern, orjson.dumps(rule.actions).decode(),
            )
            await conn.execute(
                """UPDATE push_rules SET position = array_position($3::TEXT[], rule_id)
                   WHERE user_id = $1 AND kind = $2""",
                user_id, rule.kind, order,
            )

        return await self._mutate(user_id, op, "put_push_rule")

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> int:
        async def op(conn: asyncpg.Connection) -> None:
            done = await conn.fetchval(
                "DELETE FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3 RETURNING 1",
                user_id, kind, rule_id,
            )
            if not done:
                raise PushRuleNotFound(rule_id)

        return await self._mutate(user_id, op, "delete_push_rule")

    async def set_user_rule(
        self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None, actions: list[Any] | None = None
    ) -> int:
        async def op(conn: asyncpg.Connection) -> None:
            done = await conn.fetchval(
                """UPDATE push_rules SET enabled = COALESCE($4, enabled), actions = COALESCE($5, actions)
                   WHERE user_id = $1 AND kind = $2 AND rule_id = $3 RETURNING 1""",
                user_id, kind, rule_id, enabled, orjson.dumps(actions).decode() if actions is not None else None,
            )
            if not done:
                raise PushRuleNotFound(rule_id)

        return await self._mutate(user_id, op, "set_push_rule")

    async def set_default_rule(
        self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None, actions: list[Any] | None = None
    ) -> int:
        """Record a change to a server-default rule (the caller checked it exists)."""

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """INSERT INTO push_rule_defaults (user_id, kind, rule_id, enabled, actions)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET
                       enabled = COALESCE(excluded.enabled, push_rule_defaults.enabled),
                       actions = COALESCE(excluded.actions, push_rule_defaults.actions)""",
                user_id, kind, rule_id, enabled, orjson.dumps(actions).decode() if actions is not None else None,
            )

        return await self._mutate(user_id, op, "set_default_push_rule")

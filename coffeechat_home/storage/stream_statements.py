"""The pieces of a stream write's statements (storage/stream.py): write
guards (``Guard``), and the connection a one-statement write sees
(``SingleStatement``), whose statement also deletes the write's
reservation and checks its guard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import asyncpg


@dataclass(frozen=True)
class Guard:
    """A write's precondition (``write_many(guard=...)``), checked by the
    write transaction itself, so that nothing committed before the write is
    missed (e.g. "these access tokens still exist"): ``check`` is a SELECT
    of one value that fails with a division by zero unless the condition
    holds for every key of the array that ``{keys}`` stands for (of
    ``key_type``: ``BYTEA`` keys are bytes, ``TEXT`` keys str). The keys
    go as a parameter, so the text of a statement that holds the check is
    the same whatever the keys (one prepared statement), and guards with
    the same ``check`` combine into one over all their keys
    (``all_guards``)."""

    check: str
    key_type: str  # BYTEA or TEXT
    keys: tuple[bytes | str, ...]

    def __post_init__(self) -> None:
        if self.key_type not in ("BYTEA", "TEXT") or "{keys}" not in self.check:
            raise ValueError("a guard's check takes {keys}, an array of BYTEA or TEXT")

    def sql(self, param: int) -> str:
        """The check with its keys as the statement's parameter ``$param``
        (give it ``list(self.keys)``)."""
        return self.check.replace("{keys}", f"${param}::{self.key_type}[]")

    def literal_sql(self) -> str:
        """The check with its keys written into it (a simple query, which
        has no parameters)."""
        items = ", ".join(
            f"'\\x{k.hex()}'::BYTEA" if isinstance(k, bytes) else f"{sql_literal(k)}::TEXT" for k in self.keys
        )
        return self.check.replace("{keys}", f"ARRAY[{items}]::{self.key_type}[]")


def all_guards(guards: Sequence[Guard]) -> Guard | None:
    """Guards as one (None for none): their keys, each once, under their
    one ``check``. Guards with different checks do not combine (a write
    path has one kind of guard)."""
    if not guards:
        return None
    first = guards[0]
    if any(g.check != first.check or g.key_type != first.key_type for g in guards):
        raise ValueError("guards with different checks do not combine")
    return Guard(first.check, first.key_type, tuple(dict.fromkeys(k for g in guards for k in g.keys)))


class SingleStatement:
    """The connection as a one-statement write (``write_many(single=True)``)
    sees it: exactly one ``fetchrow``, whose text must hold ``ctes`` and
    ``checks``; anything else raises before reaching the database, since a
    second statement would commit on its own."""

    def __init__(self, conn: asyncpg.Connection, token: str, guard: Guard | None = None) -> None:
        self._conn = conn
        self.token = token
        self.guard = guard
        self.used = False

    def ctes(self, param: int) -> str:
        """CTEs for the statement's WITH: ``released`` deletes the
        reservation; ``guarded`` runs the write's guard, so that it reads
        what the write commits against, in the same statement. Their
        parameters are ``$param`` on: give them ``args()``."""
        released = f"released AS (DELETE FROM stream_inflight WHERE token = ${param}::TEXT RETURNING 1)"
        return released if self.guard is None else f"{released}, guarded AS ({self.guard.sql(param + 1)})"

    def args(self) -> tuple[Any, ...]:
        """The values of ``ctes``' parameters, in order."""
        return (self.token,) if self.guard is None else (self.token, list(self.guard.keys))

    def checks(self) -> str:
        """Columns for the statement's final SELECT that fail it (division
        by zero) when the reservation is gone or the guard is false."""
        released = "(SELECT 1 / count(*) FROM released) AS released"
        return released if self.guard is None else f"{released}, (SELECT * FROM guarded) AS guarded"

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        if self.used or "DELETE FROM stream_inflight" not in query or "released) AS released" not in query:
            raise RuntimeError("a one-statement stream write ran another statement")
        self.used = True
        return await self._conn.fetchrow(query, *args)

    def __getattr__(self, name: str) -> Any:
        if name in ("fetch", "fetchval", "execute", "executemany", "fetchmany", "transaction", "prepare"):
            raise RuntimeError(f"a one-statement stream write called {name}")
        return getattr(self._conn, name)


def one_statement_parts(conn: Any, param: int) -> tuple[str, str, tuple[Any, ...]]:
    """What a write statement adds when it runs on a ``SingleStatement``:
    its CTEs (with a leading comma, for the end of a WITH list), its
    checks (with a leading comma, for the end of the final SELECT's
    columns), and their parameters from ``$param`` on; nothing on any
    other connection."""
    if not isinstance(conn, SingleStatement):
        return "", "", ()
    return f",\n               {conn.ctes(param)}", f", {conn.checks()}", conn.args()


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

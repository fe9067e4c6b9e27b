"""The outbound EDU queue of the federation sender (migration 0020).

EDUs that must not be lost are queued per destination server and deleted
only once the destination acknowledged the transaction that carried them
(a crash in between sends them again; receivers dedupe by transaction id,
to-device messages by ``message_id``, device-list updates by
``stream_id``).

- ``enqueue_edus(conn, edus, now_ms)`` inside a caller's transaction (so the
  EDU is queued exactly when the change that causes it commits), or
  ``EduOutboxStore.enqueue`` on its own; then wake the sender
  (``FederationSender.wake(destination)``; instances that do not hold the
  destination find it in their periodic sweep).
- ``OutboundEdu.key``: a newer EDU with the same (destination, type, key)
  replaces a queued one (typing per room, presence per user...).
- ``OutboundEdu.expires_ts``: not sent after that time (ms since the epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import asyncpg
import orjson

from .database import Database
from .stream import DB_NOW_MS

MAX_EDUS = 100  # per transaction (the spec's limit)
MAX_EDU_BYTES = 256 * 1024  # EDU content per transaction (receivers limit bodies; at least one EDU goes)


@dataclass(frozen=True)
class OutboundEdu:
    """An EDU for one destination, as it goes into a transaction's ``edus``."""

    destination: str
    edu_type: str
    content: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    expires_ts: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"edu_type": self.edu_type, "content": self.content}


@dataclass(frozen=True)
class QueuedEdu:
    id: int
    edu_type: str
    content: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"edu_type": self.edu_type, "content": self.content}


def _columns(edus: Iterable[OutboundEdu]) -> tuple[list[Any], ...]:
    # one row per (destination, type, key): the last one wins within a batch
    # too (ON CONFLICT may not touch a row twice in one statement)
    rows: dict[tuple[str, str, str] | int, OutboundEdu] = {}
    for i, e in enumerate(edus):
        rows[(e.destination, e.edu_type, e.key) if e.key is not None else i] = e
    ordered = list(rows.values())
    return (
        [e.destination for e in ordered], [e.edu_type for e in ordered], [e.key for e in ordered],
        [orjson.dumps(e.content).decode() for e in ordered], [e.expires_ts for e in ordered],
    )


async def enqueue_edus(conn: asyncpg.Connection, edus: Sequence[OutboundEdu], now_ms: int) -> None:
    """Queue EDUs inside the caller's transaction."""
    if not edus:
        return
    destinations, types, keys, contents, expires = _columns(edus)
    # ids in input order: the sender sends them oldest first
    await conn.execute(
        """INSERT INTO federation_edu_outbox (destination, id, edu_type, edu_key, content, created_ts, expires_ts)
           SELECT q.destination, nextval('federation_edu_outbox_id_seq'), q.edu_type, q.edu_key,
                  q.content::JSONB, $6, q.expires_ts
           FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])
                WITH ORDINALITY AS q(destination, edu_type, edu_key, content, expires_ts, n)
           ORDER BY q.n
           ON CONFLICT (destination, edu_type, edu_key) DO UPDATE
               SET id = excluded.id, content = excluded.content, created_ts = excluded.created_ts,
                   expires_ts = excluded.expires_ts""",
        destinations, types, keys, contents, expires, now_ms,
    )


class EduOutboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, edus: Sequence[OutboundEdu], now_ms: int) -> list[str]:
        """Queue EDUs in one transaction; returns their destinations (to wake)."""
        if edus:
            async def txn(conn: asyncpg.Connection) -> None:
                await enqueue_edus(conn, edus, now_ms)

            await self.db.transaction(txn, name="edu_outbox_enqueue")
        return sorted({e.destination for e in edus})

    async def pending(self, destination: str, limit: int = MAX_EDUS, max_bytes: int = MAX_EDU_BYTES) -> list[QueuedEdu]:
        """The oldest EDUs queued for ``destination`` that have not expired,
        at most ``limit`` and about ``max_bytes`` of content (at least one)."""
        rows = await self.db.fetch(
            f"""SELECT id, edu_type, content::TEXT FROM federation_edu_outbox
                WHERE destination = $1 AND (expires_ts IS NULL OR expires_ts > {DB_NOW_MS})
                ORDER BY id LIMIT $2""",
            destination, limit,
        )
        out: list[QueuedEdu] = []
        size = 0
        for r in rows:
            size += len(r[2])
            if out and size > max_bytes:
                break
            out.append(QueuedEdu(r[0], r[1], orjson.loads(r[2])))
        return out

    async def delete(self, destination: str, ids: Sequence[int]) -> None:
        """Acknowledged by ``destination``: forget them."""
        if ids:
            await self.db.execute(
                "DELETE FROM federation_edu_outbox WHERE destination = $1 AND id = ANY($2::BIGINT[])",
                destination, list(ids),
            )

    async def destinations_due(self, limit: int = 100) -> list[str]:
        """Destinations with queued EDUs and no backoff running (the sweep)."""
        rows = await self.db.fetch(
            f"""SELECT DISTINCT o.destination FROM federation_edu_outbox o
                LEFT JOIN federation_destinations d ON d.destination = o.destination
                WHERE (d.retry_until_ts IS NULL OR d.retry_until_ts <= {DB_NOW_MS})
                  AND (o.expires_ts IS NULL OR o.expires_ts > {DB_NOW_MS})
                ORDER BY o.destination LIMIT $1""",
            limit,
        )
        return [r[0] for r in rows]

    async def delete_expired(self) -> int:
        status = await self.db.execute(
            f"DELETE FROM federation_edu_outbox WHERE expires_ts IS NOT NULL AND expires_ts <= {DB_NOW_MS}"
        )
        return int(status.split()[-1]) if status.startswith("DELETE") else 0

    async def count(self, destination: str) -> int:
        n: int = await self.db.fetchval(
            "SELECT count(*) FROM federation_edu_outbox WHERE destination = $1", destination
        )
        return n

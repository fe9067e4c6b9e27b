"""Device keys, one-time and fallback keys, cross-signing keys and their
signatures, and the device-list change stream.

Key objects are stored as the JSON text clients uploaded. A change that
other users must learn about (new or removed device, new device keys or
cross-signing keys, new signatures) adds a ``device_list_changes`` row at a
stream position in the same transaction, so /sync and the notifier see it.
When federating (``announce_remote``), the same transaction also writes a
``device_list_outbound`` row (migration 0029): what to announce to other
servers, which survives a crash right after the commit (see
services/e2e/federation.py, which turns it into outbox EDUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import asyncpg
import orjson

from .database import Database
from .stream import StreamStore, StreamTable, register_stream_table

register_stream_table(StreamTable("device_list_changes", "user_id"))
# A user's one-time or fallback keys changed (counts a /sync reports).
register_stream_table(StreamTable("e2e_key_count_changes", "user_id"))


class OneTimeKeyConflict(Exception):
    """A one-time or fallback key id already holds different content."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class KeyUpload:
    """What one /keys/upload stores for one device."""

    device_keys: dict[str, Any] | None
    one_time_keys: dict[str, tuple[str, Any]]  # "<alg>:<id>" -> (algorithm, key)
    fallback_keys: dict[str, tuple[str, Any]] | None


@dataclass(frozen=True, slots=True)
class ClaimedKey:
    user_id: str
    device_id: str
    key_id: str  # "<alg>:<id>"
    key: Any


async def add_key_count_change(conn: asyncpg.Connection, user_ids: Iterable[str], pos: int) -> None:
    """Record, inside a caller's stream write, that these users' one-time or
    fallback keys changed (the counts /sync reports)."""
    await conn.execute(
        """INSERT INTO e2e_key_count_changes (user_id, stream_pos)
           SELECT u, $2 FROM unnest($1::TEXT[]) AS u ON CONFLICT DO NOTHING""",
        sorted(set(user_ids)), pos,
    )


async def add_device_list_change(conn: asyncpg.Connection, user_id: str, pos: int) -> None:
    """Record, inside a caller's stream write, that a user's devices changed."""
    await conn.execute(
        "INSERT INTO device_list_changes (user_id, stream_pos) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        user_id, pos,
    )


# what other servers must learn: (kind, device ids), kind "changed", "deleted" or "cross_signing"
Announcement = tuple[str, list[str]]


async def add_announcements(conn: asyncpg.Connection, user_id: str, pos: int,
                            announcements: Iterable[Announcement]) -> None:
    """Inside the change's transaction: what to announce to other servers."""
    for kind, device_ids in announcements:
        await conn.execute(
            """INSERT INTO device_list_outbound (user_id, stream_pos, kind, device_ids) VALUES ($1, $2, $3, $4)
               ON CONFLICT (user_id, stream_pos, kind) DO NOTHING""",
            user_id, pos, kind, sorted(set(device_ids)),
        )


@dataclass(frozen=True, slots=True)
class PendingAnnouncement:
    user_id: str
    stream_pos: int
    kind: str
    device_ids: list[str]


def _same_json(stored: str, value: Any) -> bool:
    return bool(orjson.loads(stored) == value)


class E2EKeyStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream
        # federating: changes of our users also write what to announce to other servers
        self.announce_remote = False

    async def _announce(self, conn: asyncpg.Connection, user_id: str, pos: int,
                        announcements: Iterable[Announcement]) -> None:
        if self.announce_remote:
            await add_announcements(conn, user_id, pos, announcements)

    # -- upload ------------------------------------------------------------
    async def upload(self, user_id: str, device_id: str, upload: KeyUpload) -> tuple[dict[str, int], bool]:
        """Store keys for a device in one transaction; returns the unclaimed
        one-time key counts and whether the device keys changed. Raises
        OneTimeKeyConflict (nothing stored)."""

        # New one-time or fallback keys change the counts the device's
        # syncs report: a change at the upload's position says so.
        new_keys = bool(upload.one_time_keys or upload.fallback_keys)

        async def write(conn: asyncpg.Connection, pos: int) -> tuple[dict[str, int], bool]:
            changed = False
            if upload.device_keys is not None:
                changed = await self._put_device_keys(conn, user_id, device_id, upload.device_keys)
                if changed:
                    await add_device_list_change(conn, user_id, pos)
                    await self._announce(conn, user_id, pos, [("changed", [device_id])])
            await self._put_one_time_keys(conn, user_id, device_id, upload.one_time_keys)
            if upload.fallback_keys is not None:
                await self._put_fallback_keys(conn, user_id, device_id, upload.fallback_keys)
            if new_keys:
                await add_key_count_change(conn, [user_id], pos)
            return await _one_time_key_counts(conn, user_id, device_id), changed

        if upload.device_keys is None and not new_keys:
            return await self.one_time_key_counts(user_id, device_id), False  # nothing to store
        (counts, changed), _ = await self.stream.write(write, name="keys_upload")
        return counts, changed

    async def _put_device_keys(
        self, conn: asyncpg.Connection, user_id: str, device_id: str, keys: dict[str, Any]
    ) -> bool:
        stored = await conn.fetchval(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2", user_id, device_id
        )
        if stored is not None and _same_json(stored, keys):
            return False
        await conn.execute(
            """INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
               ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json""",
            user_id, device_id, orjson.dumps(keys).decode(),
        )
        return True

    async def _put_one_time_keys(
        self, conn: asyncpg.Connection, user_id: str, device_id: str, keys: dict[str, tuple[str, Any]]
    ) -> None:
        if not keys:
            return
        existing = await conn.fetch(
            """SELECT algorithm, key_id, key_json FROM e2e_one_time_keys
               WHERE user_id = $1 AND device_id = $2 AND algorithm || ':' || key_id = ANY($3::TEXT[])""",
            user_id, device_id, list(keys),
        )
        known = set()
        for r in existing:
            full_id = f"{r['algorithm']}:{r['key_id']}"
            if not _same_json(r["key_json"], keys[full_id][1]):
                raise OneTimeKeyConflict(full_id)
            known.add(full_id)
        rows = [
            (user_id, device_id, alg, full_id[len(alg) + 1:], orjson.dumps(key).decode())
            for full_id, (alg, key) in keys.items() if full_id not in known
        ]
        await conn.executemany(
            """INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
            rows,
        )

    async def _put_fallback_keys(
        self, conn: asyncpg.Connection, user_id: str, device_id: str, keys: dict[str, tuple[str, Any]]
    ) -> None:
        """A new fallback key replaces the device's one of that algorithm;
        the same key again keeps its ``used`` flag."""
        for full_id, (alg, key) in keys.items():
            key_id = full_id[len(alg) + 1:]
            row = await conn.fetchrow(
                """SELECT key_id, key_json FROM e2e_fallback_keys
                   WHERE user_id = $1 AND device_id = $2 AND algorithm = $3""",
                user_id, device_id, alg,
            )
            if row is not None and row["key_id"] == key_id:
                if _same_json(row["key_json"], key):
                    continue
                raise OneTimeKeyConflict(full_id)
            await conn.execute(
                """INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                   VALUES ($1, $2, $3, $4, $5, false)
                   ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                   SET key_id = excluded.key_id, key_json = excluded.key_json, used = false""",
                user_id, device_id, alg, key_id, orjson.dumps(key).decode(),
            )

    # -- counts for /keys/upload and /sync ------------------------------------
    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self.db.fetch(
            """SELECT algorithm, count(*) AS n FROM e2e_one_time_keys
               WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm""",
            user_id, device_id,
        )
        return {r["algorithm"]: int(r["n"]) for r in rows}

    async def key_counts_many(
        self, devices: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[dict[str, int], list[str]]]:
        """For each (user, device): its one-time key counts per algorithm
        and its unused fallback key types, in one statement."""
        users = sorted({u for u, _ in devices})
        ids = sorted({d for _, d in devices})
        rows = await self.db.fetch(
            """SELECT user_id, device_id, algorithm, count(*) AS n, TRUE AS otk FROM e2e_one_time_keys
               WHERE user_id = ANY($1::TEXT[]) AND device_id = ANY($2::TEXT[])
               GROUP BY user_id, device_id, algorithm
               UNION ALL
               SELECT user_id, device_id, algorithm, 0 AS n, FALSE AS otk FROM e2e_fallback_keys
               WHERE user_id = ANY($1::TEXT[]) AND device_id = ANY($2::TEXT[]) AND NOT used""",
            users, ids,
        )
        out: dict[tuple[str, str], tuple[dict[str, int], list[str]]] = {d: ({}, []) for d in devices}
        for r in rows:
            entry = out.get((r["user_id"], r["device_id"]))
            if entry is None:  # a pair nobody asked about
                continue
            if r["otk"]:
                entry[0][r["algorithm"]] = int(r["n"])
            else:
                entry[1].append(r["algorithm"])
        for _, fallback in out.values():
            fallback.sort()
        return out

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self.db.fetch(
            """SELECT algorithm FROM e2e_fallback_keys
               WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm""",
            user_id, device_id,
        )
        return [r["algorithm"] for r in rows]

    # -- query ------------------------------------------------------------------
    async def device_keys_for(self, wanted: dict[str, list[str]]) -> dict[str, dict[str, tuple[str, str | None]]]:
        """user -> device -> (key JSON text, display name) for existing
        devices with keys; an empty device list means every device."""
        users = list(wanted)
        if not users:
            return {}
        rows = await self.db.fetch(
            """SELECT k.user_id, k.device_id, k.key_json, d.display_name
               FROM e2e_device_keys k JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
               WHERE k.user_id = ANY($1::TEXT[])""",
            users,
        )
        out: dict[str, dict[str, tuple[str, str | None]]] = {u: {} for u in users}
        for r in rows:
            devices = wanted[r["user_id"]]
            if not devices or r["device_id"] in devices:
                out[r["user_id"]][r["device_id"]] = (r["key_json"], r["display_name"])
        return out

    async def device_exists(self, user_id: str, device_id: str) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", user_id, device_id
            )
        )

    # -- claim --------------------------------------------------------------------
    async def claim(self, wanted: list[tuple[str, str, str]]) -> list[ClaimedKey]:
        """Claim one key per (user, device, algorithm): a one-time key,
        deleted in the same serializable transaction (so each is handed out
        once, whichever instance asks), else the fallback key, marked used."""

        if not wanted:
            return []

        async def txn(conn: asyncpg.Connection, pos: int) -> list[ClaimedKey]:
            out: list[ClaimedKey] = []
            for user_id, device_id, algorithm in wanted:
                found = await _claim_one(conn, user_id, device_id, algorithm)
                if found is not None:
                    out.append(found)
            if out:  # the owners' key counts went down
                await add_key_count_change(conn, (k.user_id for k in out), pos)
            return out

        return (await self.stream.write(txn, name="keys_claim"))[0]

    # -- cross-signing ---------------------------------------------------------
    async def cross_signing_keys(self, user_ids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """user -> key type -> key object (without extra signatures)."""
        rows = await self.db.fetch(
            "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = ANY($1::TEXT[])",
            list(user_ids),
        )
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r["user_id"], {})[r["key_type"]] = orjson.loads(r["key_json"])
        return out

    async def put_cross_signing_keys(self, user_id: str, keys: dict[str, dict[str, Any]]) -> None:
        """Replace the given key types; signatures on a replaced master key
        go with it. A device-list change for the user."""

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            for key_type, key in keys.items():
                await conn.execute(
                    """INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                       ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json""",
                    user_id, key_type, orjson.dumps(key).decode(),
                )
            await add_device_list_change(conn, user_id, pos)
            if "master" in keys or "self_signing" in keys:  # (never the user-signing key)
                await self._announce(conn, user_id, pos, [("cross_signing", [])])

        await self.stream.write(write, name="cross_signing_upload")

    async def signatures_on(
        self, targets: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
        """(target user, target key id) -> [(signer user, signer key id, signature)]."""
        targets = list(targets)
        if not targets:
            return {}
        rows = await self.db.fetch(
            """SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature
               FROM e2e_signatures
               WHERE (target_user_id, target_key_id) IN (SELECT * FROM unnest($1::TEXT[], $2::TEXT[]))""",
            [t[0] for t in targets], [t[1] for t in targets],
        )
        out: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for r in rows:
            out.setdefault((r["target_user_id"], r["target_key_id"]), []).append(
                (r["signer_user_id"], r["signer_key_id"], r["signature"])
            )
        return out

    async def add_signatures(self, rows: list[tuple[str, str, str, str, str]],
                             announce: tuple[str, list[Announcement]] | None = None) -> None:
        """Store (target user, target key id, signer user, signer key id,
        signature) rows; a device-list change for every target user, and
        ``announce`` = (our user, announcements) to other servers."""
        if not rows:
            return

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await conn.executemany(
                """INSERT INTO e2e_signatures
                   (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
                   DO UPDATE SET signature = excluded.signature""",
                rows,
            )
            for target in sorted({r[0] for r in rows}):
                await add_device_list_change(conn, target, pos)
            if announce is not None:
                await self._announce(conn, announce[0], pos, announce[1])

        await self.stream.write(write, name="signatures_upload")

    # -- devices coming and going ----------------------------------------------
    async def device_added(self, user_id: str, device_id: str) -> None:
        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await add_device_list_change(conn, user_id, pos)
            await self._announce(conn, user_id, pos, [("changed", [device_id])])

        await self.stream.write(write, name="device_added")

    async def keys_without_device(self) -> dict[str, list[str]]:
        """user id -> ids of devices that hold keys but no longer exist: a
        process of an older version died between deleting a device and
        removing its keys (then two transactions; now one, remove_devices). Read at
        start, so not the one-time keys (the biggest table): a device that
        uploaded some has its device keys too."""
        rows = await self.db.fetch(
            """SELECT DISTINCT k.user_id, k.device_id FROM (
                   SELECT user_id, device_id FROM e2e_device_keys
                   UNION ALL SELECT user_id, device_id FROM e2e_fallback_keys) k
               WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = k.user_id AND d.device_id = k.device_id)
               ORDER BY k.user_id, k.device_id"""
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["user_id"], []).append(r["device_id"])
        return out

    async def devices_removed(self, user_id: str, device_ids: list[str]) -> None:
        """Forget removed devices' keys, signatures and pending to-device
        messages, as one device-list change."""

        async def gone(conn: asyncpg.Connection) -> list[str]:
            return device_ids

        await self.remove_devices(user_id, gone)

    async def remove_devices(
        self, user_id: str, delete_rows: Callable[[asyncpg.Connection], Awaitable[list[str]]]
    ) -> list[str]:
        """Run ``delete_rows`` (deleting device rows, returning their ids)
        and forget those devices' keys, signatures and pending to-device
        messages, as one device-list change, all in one stream write: no
        crash leaves keys of a device that is gone without the change its
        user's peers need. Returns the ids."""

        async def write(conn: asyncpg.Connection, pos: int) -> list[str]:
            device_ids = await delete_rows(conn)
            if not device_ids:
                return []
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "to_device_messages",
                          "to_device_txns"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE user_id = $1 AND device_id = ANY($2::TEXT[])", user_id, device_ids
                )
            await conn.execute(
                "DELETE FROM e2e_signatures WHERE target_user_id = $1 AND target_key_id = ANY($2::TEXT[])",
                user_id, device_ids,
            )
            await add_device_list_change(conn, user_id, pos)
            # (a device id can come back, by a login naming it, without the keys)
            await add_key_count_change(conn, [user_id], pos)
            await self._announce(conn, user_id, pos, [("deleted", device_ids)])
            return device_ids

        return (await self.stream.write(write, name="devices_removed"))[0]

    # -- device-list changes ---------------------------------------------------
    async def pending_announcements(self, user_id: str | None = None, limit: int = 100) -> list[PendingAnnouncement]:
        """Changes not yet announced to other servers (of one user), oldest first."""
        rows = await self.db.fetch(
            """SELECT user_id, stream_pos, kind, device_ids FROM device_list_outbound
               WHERE ($1::TEXT IS NULL OR user_id = $1) ORDER BY stream_pos, user_id, kind LIMIT $2""",
            user_id, limit,
        )
        return [PendingAnnouncement(r["user_id"], r["stream_pos"], r["kind"], list(r["device_ids"])) for r in rows]

    async def previous_position(self, user_id: str, before: int) -> int | None:
        """The user's device-list position before ``before`` (an update's ``prev_id``)."""
        pos: int | None = await self.db.fetchval(
            """SELECT stream_pos FROM device_list_changes WHERE user_id = $1 AND stream_pos < $2
               ORDER BY stream_pos DESC LIMIT 1""",
            user_id, before,
        )
        return pos

    async def users_with_changes(self, user_ids: Iterable[str], after: int, upto: int) -> set[str]:
        rows = await self.db.fetch(
            """SELECT DISTINCT user_id FROM device_list_changes
               WHERE user_id = ANY($1::TEXT[]) AND stream_pos > $2 AND stream_pos <= $3""",
            list(user_ids), after, upto,
        )
        return {r["user_id"] for r in rows}


async def _one_time_key_counts(conn: asyncpg.Connection, user_id: str, device_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT algorithm, count(*) AS n FROM e2e_one_time_keys
           WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm""",
        user_id, device_id,
    )
    return {r["algorithm"]: int(r["n"]) for r in rows}


async def _claim_one(conn: asyncpg.Connection, user_id: str, device_id: str, algorithm: str) -> ClaimedKey | None:
    if not await conn.fetchval("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", user_id, device_id):
        return None  # keys left behind by a device deleted in a crash are never handed out
    row = await conn.fetchrow(
        """DELETE FROM e2e_one_time_keys
           WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = (
               SELECT key_id FROM e2e_one_time_keys
               WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
               ORDER BY key_id LIMIT 1)
           RETURNING key_id, key_json""",
        user_id, device_id, algorithm,
    )
    if row is None:
        row = await conn.fetchrow(
            """UPDATE e2e_fallback_keys SET used = true
               WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
               RETURNING key_id, key_json""",
            user_id, device_id, algorithm,
        )
    if row is None:
        return None
    return ClaimedKey(user_id, device_id, f"{algorithm}:{row['key_id']}", orjson.loads(row["key_json"]))


async def device_list_positions(db: Database, user_id: str, limit: int = 2) -> list[int]:
    """The newest positions of a user's device-list changes, newest first
    (``stream_id`` and ``prev_id`` of their device-list updates)."""
    rows = await db.fetch(
        "SELECT stream_pos FROM device_list_changes WHERE user_id = $1 ORDER BY stream_pos DESC LIMIT $2",
        user_id, limit,
    )
    return [int(r["stream_pos"]) for r in rows]

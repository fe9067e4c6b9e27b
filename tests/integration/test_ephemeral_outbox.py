"""What services/federation/ephemeral.py puts into the EDU outbox, on the
real database: one row per other server with a joined member (not ours,
not a server whose users left), typing with its expiry and replaced by its
stop, a public receipt queued in the receipt's own transaction (an ignored
older receipt queues nothing, a private one never anything), presence for
the servers sharing a room, nothing for other servers' users."""

from __future__ import annotations

import time
from typing import Any

import orjson

from coffeechat_home.services.federation.ephemeral import STOP_TYPING_TTL_MS, EphemeralFederation
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.edu_outbox import EduOutboxStore
from coffeechat_home.storage.federation_queue import FederationQueueStore
from coffeechat_home.storage.presence import PresenceStore
from coffeechat_home.storage.receipts import Receipt, ReceiptStore
from coffeechat_home.storage.rooms import RoomStore
from coffeechat_home.storage.stream import StreamStore

OURS = "ours.test"
ROOM = "!room:ours.test"
ALICE = "@alice:ours.test"


async def _room(db: Database) -> None:
    """A room as the persister leaves it: members' current state (alice
    here, one user on each of two servers, one who left, on a third) and
    two events in stream order."""
    members = [(ALICE, "join"), ("@bob:one.test", "join"), ("@carol:two.test", "join"),
               ("@dan:two.test", "join"), ("@erin:three.test", "leave")]
    for user, membership in members:
        await db.execute(
            """INSERT INTO current_state (room_id, type, state_key, event_id, membership)
               VALUES ($1, 'm.room.member', $2, $3, $4)""", ROOM, user, f"$m{user}", membership)
    for n in (1, 2):
        await db.execute(
            """INSERT INTO events (event_id, room_id, stream_pos, depth, type, sender, origin_server_ts, pdu, client)
               VALUES ($1, $2, $3, $3, 'm.room.message', $4, 0, '{}', '{}')""", f"$e{n}", ROOM, n, ALICE)


async def _outbox(db: Database) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT destination, edu_type, edu_key, content::TEXT AS content, expires_ts
           FROM federation_edu_outbox ORDER BY edu_type, destination""")
    return [dict(r, content=orjson.loads(r["content"])) for r in rows]


async def test_what_goes_into_the_outbox(db: Database) -> None:
    await _room(db)
    stream = StreamStore(db, instance_id="t")
    woken: list[str] = []
    presence = PresenceStore(db, stream)
    fed = EphemeralFederation(OURS, EduOutboxStore(db), woken.append, FederationQueueStore(db, OURS).servers_in_room,
                              RoomStore(db), presence, Notifier(stream))

    # typing: a row per other server, expiring with the typing; the stop replaces it
    now = int(time.time() * 1000)
    await fed.typing_changed(ALICE, ROOM, True, now + 20_000)
    rows = await _outbox(db)
    assert [(r["destination"], r["edu_type"], r["expires_ts"]) for r in rows] == [
        ("one.test", "m.typing", now + 20_000), ("two.test", "m.typing", now + 20_000)]
    assert rows[0]["content"] == {"room_id": ROOM, "user_id": ALICE, "typing": True}
    assert sorted(woken) == ["one.test", "two.test"]
    await fed.typing_changed(ALICE, ROOM, False, None)
    rows = await _outbox(db)
    assert [r["content"]["typing"] for r in rows] == [False, False]
    assert all(now + STOP_TYPING_TTL_MS <= r["expires_ts"] <= int(time.time() * 1000) + STOP_TYPING_TTL_MS
               for r in rows)
    # another server's user typing here is not ours to tell
    await fed.typing_changed("@bob:one.test", ROOM, True, now + 20_000)
    assert len(await _outbox(db)) == 2

    # receipts: queued in the receipt's transaction, only when it is stored
    receipts = ReceiptStore(db, stream)

    async def receipt(receipt_type: str, event_id: str, user: str = ALICE) -> int | None:
        r = Receipt(ROOM, receipt_type, user, "", event_id, int(time.time() * 1000))
        edus = await fed.receipt_edus(user, ROOM, receipt_type, event_id, r.ts, None)
        return await receipts.put(r, edus)

    assert await receipt("m.read", "$e2") is not None
    assert await receipt("m.read", "$e1") is None  # older than the stored one: ignored, nothing queued
    assert await receipt("m.read.private", "$e1") is not None  # stored here, never queued
    assert await receipt("m.read", "$e2", "@bob:one.test") is not None  # bob's server tells its own
    queued = [r for r in await _outbox(db) if r["edu_type"] == "m.receipt"]
    assert [r["destination"] for r in queued] == ["one.test", "two.test"]
    assert all(r["expires_ts"] is None for r in queued)
    assert all(list(r["content"][ROOM]["m.read"]) == [ALICE] for r in queued)
    assert all(r["content"][ROOM]["m.read"][ALICE]["event_ids"] == ["$e2"] for r in queued)
    assert b"m.read.private" not in orjson.dumps(await _outbox(db))

    # presence: the servers sharing a room with alice
    await presence.set(ALICE, "unavailable", "away", int(time.time() * 1000))
    await fed.presence_changed(ALICE)
    queued = [r for r in await _outbox(db) if r["edu_type"] == "m.presence"]
    assert [r["destination"] for r in queued] == ["one.test", "two.test"]
    [entry] = queued[0]["content"]["push"]
    assert (entry["user_id"], entry["presence"], entry["status_msg"]) == (ALICE, "unavailable", "away")
    await fed.presence_changed("@bob:one.test")
    assert len([r for r in await _outbox(db) if r["edu_type"] == "m.presence"]) == 2

"""The federation sender's EDU outbox (storage/edu_outbox.py) on the real
database: order, a keyed EDU replacing a queued one (with a new id, so the
delete after an earlier send keeps it), expiry, the sweep's view (backoff
respected), deletion by id only."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.edu_outbox import EduOutboxStore, OutboundEdu
from coffeechat_home.storage.federation_queue import FederationQueueStore


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=2)
    try:
        yield database
    finally:
        await database.close()


async def test_outbox_order_replacement_expiry_and_sweep(db: Database) -> None:
    outbox = EduOutboxStore(db)
    now = int(await db.fetchval("SELECT (extract(epoch FROM now()) * 1000)::BIGINT"))
    d1, d2 = "one.example", "two.example"
    queued = await outbox.enqueue([
        OutboundEdu(d1, "m.direct_to_device", {"message_id": "a"}),
        OutboundEdu(d1, "m.typing", {"room_id": "!r", "typing": True}, key="!r @u"),
        OutboundEdu(d1, "m.direct_to_device", {"message_id": "b"}),
        OutboundEdu(d2, "m.typing", {"typing": True}, key="k", expires_ts=now - 1),  # already expired
    ], now)
    assert queued == [d1, d2]
    first = await outbox.pending(d1)
    assert [(q.edu_type, q.content) for q in first] == [
        ("m.direct_to_device", {"message_id": "a"}),
        ("m.typing", {"room_id": "!r", "typing": True}),
        ("m.direct_to_device", {"message_id": "b"}),
    ]
    assert first[0].as_json() == {"edu_type": "m.direct_to_device", "content": {"message_id": "a"}}
    assert await outbox.pending(d2) == []  # expired: never sent
    assert await outbox.destinations_due() == [d1]

    # while `first` is in flight, typing stops: the new content replaces the
    # queued one under a new id, so deleting what was sent keeps it
    await outbox.enqueue([OutboundEdu(d1, "m.typing", {"room_id": "!r", "typing": False}, key="!r @u"),
                          OutboundEdu(d1, "m.typing", {"room_id": "!r", "typing": True}, key="!other")], now)
    await outbox.delete(d1, [q.id for q in first])
    left = await outbox.pending(d1)
    assert [q.content for q in left] == [{"room_id": "!r", "typing": False}, {"room_id": "!r", "typing": True}]
    assert min(q.id for q in left) > max(q.id for q in first)
    # a key repeated within one batch: the last one wins
    await outbox.enqueue([OutboundEdu(d2, "m.presence", {"n": 1}, key="@p"),
                          OutboundEdu(d2, "m.presence", {"n": 2}, key="@p")], now)
    assert [q.content for q in await outbox.pending(d2)] == [{"n": 2}]
    assert await outbox.delete_expired() == 1
    assert await outbox.count(d2) == 1

    # a destination backing off is left out of the sweep until its time comes
    queue = FederationQueueStore(db, "us.example")
    await queue.ensure_destinations([d1], 0)
    await queue.failed(d1, 60_000, 60_000, "down")
    assert await outbox.destinations_due() == [d2]
    assert await queue.reset_backoff(d1)
    assert await outbox.destinations_due() == [d1, d2]
    assert len(await outbox.pending(d1, limit=1)) == 1
    # a byte budget per transaction, but never less than one EDU
    await outbox.enqueue([OutboundEdu(d2, "m.direct_to_device", {"blob": "x" * 1000}) for _ in range(3)], now)
    assert len(await outbox.pending(d2, max_bytes=2500)) == 3  # the presence EDU and two blobs
    assert len(await outbox.pending(d2, max_bytes=10)) == 1

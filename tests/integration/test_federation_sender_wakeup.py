"""When the outbound federation sender (services/federation/sender.py)
scans the events stream, on the real database: an advance of the stream
is scanned at once only after this instance committed events that may be
ours to send (a local sender; a membership event, which a resident server
relays); other advances (remote events received, writes of other
instances) wait for the periodic sweep, which then finds everything they
hold. The loop's step (``_tick``) is driven by hand: no timing."""

from __future__ import annotations

from typing import Any


from coffeechat_home.federation.client import FederationClient
from coffeechat_home.protocol.events import Event
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.services.federation.sender import FederationSender
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.federation_queue import FederationQueueStore
from coffeechat_home.storage.instances import InstanceStore
from coffeechat_home.storage.stream import StreamStore

OURS = "ours.test"
ROOM = "!room:ours.test"
ALICE = "@alice:ours.test"
RV = get_room_version("11")


async def _join(db: Database, user: str) -> None:
    await db.execute(
        """INSERT INTO current_state (room_id, type, state_key, event_id, membership)
           VALUES ($1, 'm.room.member', $2, $3, 'join')""", ROOM, user, f"$m{user}")


async def _event(db: Database, pos: int, sender: str, event_type: str = "m.room.message",
                 state_key: str | None = None) -> Event:
    """An event in stream order, as the persister leaves it."""
    await db.execute(
        """INSERT INTO events (event_id, room_id, stream_pos, depth, type, state_key, sender, origin_server_ts,
                               pdu, client)
           VALUES ($1, $2, $3, $3, $4, $5, $6, 0, '{}', '{}')""",
        f"$e{pos}", ROOM, pos, event_type, state_key, sender)
    pdu: dict[str, Any] = {"type": event_type, "sender": sender, "room_id": ROOM, "content": {}}
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, f"$e{pos}", RV)


async def test_scans_after_writes_that_may_be_ours_and_at_the_sweep(db: Database) -> None:
    for user in (ALICE, "@bob:one.test", "@carol:two.test"):
        await _join(db, user)
    instances = InstanceStore(db)
    for server in ("one.test", "two.test", "four.test", "five.test"):
        # another instance sends to them: the workers this test kicks leave them alone
        assert await instances.acquire_work_lease(f"fed-dest:{server}", "elsewhere", 600_000)
    stream = StreamStore(db, instance_id="t")
    notifier = Notifier(stream)  # its position is moved by hand
    client = FederationClient(OURS, generate_signing_key("k"))
    queue = FederationQueueStore(db, OURS)
    sender = FederationSender(queue, client, notifier, instances, "t", sweep_interval_s=3600)

    async def destinations() -> dict[str, int]:
        return {r[0]: r[1] for r in await db.fetch("SELECT destination, stream_pos FROM federation_destinations")}

    try:
        # a remote message received: neither its commit nor the advance scans
        remote = await _event(db, 1, "@bob:one.test")
        stream.local_committed = 1  # as this instance's write_many leaves it after the commit
        await sender.events_committed(ROOM, [remote])
        notifier.position = 1
        await sender._tick(sweep=False)
        assert sender.scans == 0 and await destinations() == {}

        # alice's message: scanned at the first advance that covers it, not before
        local = await _event(db, 2, ALICE)
        stream.local_committed = 2
        await sender.events_committed(ROOM, [local])
        await sender._tick(sweep=False)  # the notifier has not seen position 2 yet
        assert sender.scans == 0
        notifier.position = 2
        await sender._tick(sweep=False)
        assert sender.scans == 1 and await destinations() == {"one.test": 0, "two.test": 0}
        await sender._tick(sweep=False)  # nothing new: no second scan
        assert sender.scans == 1

        # a remote join taken through our send_join (marked for relay): its
        # commit asks for a scan, which finds its server
        await _join(db, "@frank:five.test")
        join = await _event(db, 3, "@frank:five.test", "m.room.member", "@frank:five.test")
        await queue.add_relay(join.event_id, ROOM, 0)
        stream.local_committed = 3
        await sender.events_committed(ROOM, [join])
        notifier.position = 3
        await sender._tick(sweep=False)
        assert sender.scans == 2 and (await destinations()).keys() == {"one.test", "two.test", "five.test"}

        # alice's message written by another instance (no commit here), after
        # a user of four.test joined: only the sweep scans it, and finds it all
        await _join(db, "@dan:four.test")
        await _event(db, 4, ALICE)
        notifier.position = 4
        await sender._tick(sweep=False)
        assert sender.scans == 2 and "four.test" not in await destinations()
        await sender._tick(sweep=True)
        assert sender.scans == 3 and (await destinations())["four.test"] == 3
        assert await queue.scanned_position() == 4
    finally:
        await sender.stop()
        await client.close()

"""Device-list changes left to announce to other servers (migration 0029),
on the real database: the change's transaction writes the row; the
post-commit step and the sender's sweep racing each other queue its EDUs
once (whoever deletes the row queues them), with the change's own stream id
and the one before as ``prev_id``; nothing is written when not federating."""

from __future__ import annotations

import asyncio

from coffeechat_home.services.e2e.federation import E2EFederation
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.accounts import AccountStore
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.e2e_keys import E2EKeyStore
from coffeechat_home.storage.edu_outbox import EduOutboxStore
from coffeechat_home.storage.remote_device_lists import RemoteDeviceListStore
from coffeechat_home.storage.stream import StreamStore
from coffeechat_home.storage.to_device import ToDeviceStore

ME = "@alice:test.local"


async def test_announced_once_by_racing_post_commit_step_and_sweep(database_url: str) -> None:
    db = await Database.connect(database_url, min_size=1, max_size=4)
    try:
        stream = StreamStore(db)
        keys = E2EKeyStore(db, stream)
        fed = E2EFederation(db, keys, ToDeviceStore(db, stream), RemoteDeviceListStore(db, stream),
                            Notifier(stream), "test.local", AccountStore(db).user_exists)
        woken: list[str] = []

        async def sharing(user_id: str) -> list[str]:
            return ["other.example", "test.local"]

        fed.attach_sender(EduOutboxStore(db), woken.extend, sharing)
        await keys.device_added(ME, "OLD")  # not federating: nothing left to announce
        assert await db.fetch("SELECT * FROM device_list_outbound") == []
        keys.announce_remote = True
        await keys.device_added(ME, "NEW")
        (row,) = await keys.pending_announcements()
        assert (row.user_id, row.kind, row.device_ids) == (ME, "changed", ["NEW"])
        positions = [r[0] for r in await db.fetch(
            "SELECT stream_pos FROM device_list_changes WHERE user_id = $1 ORDER BY stream_pos", ME)]
        assert positions[-1] == row.stream_pos

        for _ in range(3):  # both read the row before either deletes it, at least sometimes
            await asyncio.gather(fed.local_change(ME, ["NEW"], "changed"), fed.announce_pending(),
                                 fed.announce_pending())
        queued = await db.fetch("SELECT destination, edu_type, content::TEXT AS c FROM federation_edu_outbox")
        assert [(r["destination"], r["edu_type"]) for r in queued] == [("other.example", "m.device_list_update")]
        assert f'"stream_id": {row.stream_pos}' in queued[0]["c"] and f'"prev_id": [{positions[-2]}]' in queued[0]["c"]
        assert await keys.pending_announcements() == [] and fed.edus_queued == 1 and woken == ["other.example"]

        # a deletion and cross-signing keys: their own kinds
        await keys.devices_removed(ME, ["NEW"])
        await keys.put_cross_signing_keys(ME, {"user_signing": {"k": 1}})  # never announced
        await keys.put_cross_signing_keys(ME, {"master": {"k": 2}})
        assert [(p.kind, p.device_ids) for p in await keys.pending_announcements(ME)] == [
            ("deleted", ["NEW"]), ("cross_signing", [])]
    finally:
        await db.close()

"""Unread notification counts in /sync, from the user's push rules and read
receipts."""

from __future__ import annotations

from typing import Any

import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .room_helpers import create_room, invite_and_join, q, send_text
from .test_sync import joined, sync


def counts(body: dict[str, Any], room_id: str) -> dict[str, int]:
    return joined(body)[room_id]["unread_notifications"]


def calls_to(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple[Any, ...]]:
    """Record the positional arguments of each call to the coroutine
    method ``owner.name`` (which still runs) from now on."""
    calls: list[tuple[Any, ...]] = []
    original = getattr(owner, name)

    async def counting(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return await original(*args, **kw)

    monkeypatch.setattr(owner, name, counting)
    return calls


async def synced_pair_room(alice: ApiClient, bob: ApiClient) -> tuple[str, dict[str, Any]]:
    """A private room of alice's that bob joined, and alice's sync after it."""
    room_id = await create_room(alice, {"preset": "private_chat"})
    await invite_and_join(alice, bob, room_id)
    return room_id, await sync(alice)


async def read_up_to(api: ApiClient, room_id: str, event_id: str, receipt_type: str = "m.read") -> None:
    r = await api.post(f"rooms/{q(room_id)}/receipt/{receipt_type}/{q(event_id)}", {})
    assert r.status == 200, r


async def group_room(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> str:
    room_id = await create_room(alice, {"preset": "private_chat"})
    await invite_and_join(alice, bob, room_id)
    await invite_and_join(alice, carol, room_id)
    return room_id


async def test_messages_from_others_count_until_read(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await group_room(alice, bob, carol)
    first = await sync(alice)
    assert counts(first, room_id) == {"notification_count": 0, "highlight_count": 0}
    for i in range(3):
        await send_text(bob, room_id, f"message {i}")
    await send_text(alice, room_id, "my own message does not count")
    body = await sync(alice, first["next_batch"])
    assert counts(body, room_id) == {"notification_count": 3, "highlight_count": 0}
    # a mention of alice highlights
    latest = await send_text(bob, room_id, "look here", **{"m.mentions": {"user_ids": [alice.user_id]}})
    body = await sync(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 4, "highlight_count": 1}
    # notices and edits do not count
    await send_text(bob, room_id, "bot says", msgtype="m.notice")
    await send_text(bob, room_id, "* look here!", **{"m.relates_to": {"rel_type": "m.replace", "event_id": latest}})
    body = await sync(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 4, "highlight_count": 1}
    # reading the latest clears the counts (the receipt brings the room back)
    await read_up_to(alice, room_id, latest)
    body = await sync(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 0, "highlight_count": 0}
    # a new message counts from the receipt on; an initial sync agrees
    await send_text(carol, room_id, "after the receipt")
    body = await sync(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 1, "highlight_count": 0}
    assert counts(await sync(alice), room_id) == {"notification_count": 1, "highlight_count": 0}
    # bob's counts are his own: alice's and carol's messages after his join
    assert counts(await sync(bob), room_id) == {"notification_count": 2, "highlight_count": 0}


async def test_private_receipt_clears_counts(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await group_room(alice, bob, carol)
    latest = await send_text(bob, room_id, "one")
    assert counts(await sync(alice), room_id)["notification_count"] == 1
    await read_up_to(alice, room_id, latest, "m.read.private")
    assert counts(await sync(alice), room_id)["notification_count"] == 0


async def test_direct_room_counts(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "trusted_private_chat", "is_direct": True})
    await invite_and_join(alice, bob, room_id)
    await send_text(bob, room_id, "hi")
    await send_text(bob, room_id, "are you there?")
    assert counts(await sync(alice), room_id) == {"notification_count": 2, "highlight_count": 0}


async def test_push_rules_decide(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await group_room(alice, bob, carol)
    # mute the room with a room rule that has no actions
    r = await alice.put(f"pushrules/global/room/{q(room_id)}", {"actions": []})
    assert r.status == 200, r
    await send_text(bob, room_id, "muted")
    assert counts(await sync(alice), room_id)["notification_count"] == 0
    # a mention still highlights: override rules come before room rules
    await send_text(bob, room_id, "but", **{"m.mentions": {"user_ids": [alice.user_id]}})
    assert counts(await sync(alice), room_id) == {"notification_count": 1, "highlight_count": 1}


# -- GET /notifications ---------------------------------------------------------------------


async def notifications(api: ApiClient, **params: str) -> dict[str, Any]:
    r = await api.get("notifications", params=params)
    assert r.status == 200, r
    return r.body


async def test_notifications_list(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await group_room(alice, bob, carol)
    first = await send_text(bob, room_id, "one")
    await send_text(alice, room_id, "mine")
    await send_text(bob, room_id, "quiet", msgtype="m.notice")
    mention = await send_text(carol, room_id, "two", **{"m.mentions": {"user_ids": [alice.user_id]}})
    third = await send_text(bob, room_id, "three")
    await read_up_to(alice, room_id, mention)

    body = await notifications(alice)
    assert [n["event"]["event_id"] for n in body["notifications"]] == [third, mention, first]
    assert [n["read"] for n in body["notifications"]] == [False, True, True]
    assert all(n["room_id"] == room_id and "notify" in n["actions"] for n in body["notifications"])
    assert "next_token" not in body

    # pagination: newest first, continuing from next_token
    page1 = await notifications(alice, limit="2")
    assert [n["event"]["event_id"] for n in page1["notifications"]] == [third, mention]
    page2 = await notifications(alice, limit="2", **{"from": page1["next_token"]})
    assert [n["event"]["event_id"] for n in page2["notifications"]] == [first]
    assert "next_token" not in page2

    highlights = await notifications(alice, only="highlight")
    assert [n["event"]["event_id"] for n in highlights["notifications"]] == [mention]
    assert {"set_tweak": "highlight"} in highlights["notifications"][0]["actions"]


async def test_notifications_only_after_joining(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await send_text(alice, room_id, "before bob joined")
    assert (await notifications(bob))["notifications"] == []
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    after = await send_text(alice, room_id, "after")
    assert [n["event"]["event_id"] for n in (await notifications(bob))["notifications"]] == [after]
    r = await bob.get("notifications", params={"from": "bogus"})
    assert r.status == 400, r


async def test_a_sync_reads_a_rooms_history_restrictions_once(
    server: HomeServer, alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeline and the unread counts of an incremental sync judge the
    same new rows by the room's history visibility: one read for both (the
    sync's HistoryService is the app's; each built its own, and read it
    twice per woken sync), and that read is the timeline's own statement
    (EventStore.timeline_and_restriction), not one of its own."""
    room_id, first = await synced_pair_room(alice, bob)
    assert server.services is not None
    events = server.services.events
    asked = calls_to(monkeypatch, events, "rooms_with_restricted_history")
    with_timeline = calls_to(monkeypatch, events, "timeline_and_restriction")
    await send_text(bob, room_id, "one read")
    body = await sync(alice, first["next_batch"])
    assert [e["content"]["body"] for e in joined(body)[room_id]["timeline"]["events"]] == ["one read"]
    assert counts(body, room_id) == {"notification_count": 1, "highlight_count": 0}
    assert (asked, with_timeline) == ([], [(room_id,)])


async def test_push_rules_are_read_once_for_a_run_of_syncs(
    server: HomeServer, alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syncs one after another, each from the previous answer's position,
    reuse the push rules the first read while the user's account data does
    not change (every other one read them again); a change of the rules is
    read at once."""
    room_id, body = await synced_pair_room(alice, bob)
    assert server.services is not None
    rules = server.services.conversation.unread.push_rules
    asked = calls_to(monkeypatch, rules, "get_ruleset")
    for i in range(4):
        await send_text(bob, room_id, f"message {i}")
        body = await sync(alice, body["next_batch"])
        assert counts(body, room_id)["notification_count"] == i + 1
    assert asked.count((alice.user_id,)) <= 1
    r = await alice.put("pushrules/global/content/mute", {"actions": ["dont_notify"], "pattern": "muted"})
    assert r.status == 200, r
    before = asked.count((alice.user_id,))
    await send_text(bob, room_id, "muted")
    body = await sync(alice, body["next_batch"])
    assert asked.count((alice.user_id,)) == before + 1
    assert counts(body, room_id)["notification_count"] == 4


async def test_an_incremental_sync_counts_the_new_events_its_timeline_read(
    server: HomeServer, alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unread counts of an incremental sync evaluate the room's new
    events; when its timeline read all of them (not limited, not filtered)
    the counts take them from it instead of reading them again. A limited
    or filtered timeline leaves the counts their own read, and every way
    the counts are right."""
    room_id, body = await synced_pair_room(alice, bob)
    assert server.services is not None
    store = server.services.conversation.unread.store
    asked = calls_to(monkeypatch, store, "room_events_between")
    notified = highlighted = 0
    for label, sent, sync_filter, reads in (
        ("whole timeline", 2, None, 0),
        ("limited timeline", 4, {"room": {"timeline": {"limit": 2}}}, 1),
        # the messages (which count) left out of the timeline, a ping (which does not) in it
        ("filtered timeline", 2, {"room": {"timeline": {"not_types": ["m.room.message"]}}}, 1),
        ("whole again", 3, None, 0),
    ):
        asked.clear()
        for i in range(sent):  # the first of each round mentions alice: a highlight
            mention = {"m.mentions": {"user_ids": [alice.user_id]}} if i == 0 else {}
            await send_text(bob, room_id, f"{label} {i}", **mention)
        r = await bob.put(f"rooms/{q(room_id)}/send/org.example.ping/{label.replace(' ', '-')}", {"n": 1})
        assert r.status == 200, r
        notified += sent
        highlighted += 1
        body = await sync(alice, body["next_batch"], filter=sync_filter)
        assert counts(body, room_id) == {"notification_count": notified, "highlight_count": highlighted}, label
        assert len(asked) == reads, (label, asked)
    # an initial sync, counting afresh, agrees
    assert counts(await sync(alice), room_id) == {"notification_count": notified, "highlight_count": highlighted}

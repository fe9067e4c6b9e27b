"""Sending messages and state, transaction ids, power levels, redactions."""

from __future__ import annotations

import asyncio

from typing import Any, Callable

import pytest

from ..helpers import ApiClient
from .room_helpers import assert_error, create_room, invite_and_join, q, send_text

PW = "correct horse battery"
MSG = {"msgtype": "m.text", "body": "hello"}


async def login(client: ApiClient, user: str, device_id: str) -> ApiClient:
    r = await client.post(
        "login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": PW,
         "device_id": device_id},
        token=None,
    )
    assert r.status == 200, r
    client.token, client.user_id, client.device_id = r["access_token"], r["user_id"], r["device_id"]
    return client


async def all_events(api: ApiClient, room_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"rooms/{q(room_id)}/messages", params={"dir": "f", "limit": "1000"})
    assert r.status == 200, r
    return r["chunk"]


async def event_ids(api: ApiClient, room_id: str) -> list[str]:
    return [e["event_id"] for e in await all_events(api, room_id)]


async def get_event(api: ApiClient, room_id: str, event_id: str) -> dict[str, Any]:
    r = await api.get(f"rooms/{q(room_id)}/event/{q(event_id)}")
    assert r.status == 200, r
    return r.body


# -- messages and transaction ids ------------------------------------------------------


async def test_send_message(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await invite_and_join(alice, bob, room_id)
    r = await alice.put(f"rooms/{q(room_id)}/send/m.room.message/txn1", MSG)
    assert r.status == 200
    event_id = r["event_id"]
    ev = await get_event(alice, room_id, event_id)
    assert ev["content"] == MSG and ev["sender"] == alice.user_id and ev["type"] == "m.room.message"
    assert ev["room_id"] == room_id and "state_key" not in ev
    # the sending device sees its transaction id; others do not
    assert ev["unsigned"]["transaction_id"] == "txn1"
    ev_bob = await get_event(bob, room_id, event_id)
    assert "transaction_id" not in ev_bob.get("unsigned", {})
    assert (await all_events(bob, room_id))[-1]["event_id"] == event_id


async def test_concurrent_retries_of_one_txn_store_one_event(
    alice: ApiClient, start_server: Any
) -> None:
    """A client retrying one transaction id at once, through two instances:
    every answer names the same event, and it is stored once."""
    room_id = await create_room(alice)
    other = await start_server()
    twin = ApiClient(f"http://127.0.0.1:{other.client_port}", alice.session)
    twin.token, twin.user_id = alice.token, alice.user_id
    path = f"rooms/{q(room_id)}/send/m.room.message/burst"
    answers = await asyncio.gather(*(c.put(path, MSG) for c in [alice, twin] * 5))
    assert [a.status for a in answers] == [200] * 10
    assert len({a["event_id"] for a in answers}) == 1
    assert len([e for e in await all_events(alice, room_id) if e["type"] == "m.room.message"]) == 1


async def test_a_token_revoked_on_another_instance_cannot_send(
    alice: ApiClient, bob: ApiClient, start_server: Any
) -> None:
    """Sends may take the token from the instance's cache (the write checks
    it): after a logout through another instance the next send with the old
    token is refused and stores nothing, a refusal for another reason says
    only that the token is gone, and the room's readers are not held back."""
    room_id = await create_room(alice)
    await invite_and_join(alice, bob, room_id)
    for n in range(2):  # the first reads the token from the database, the second from the cache
        r = await alice.put(f"rooms/{q(room_id)}/send/m.room.message/warm{n}", MSG)
        assert r.status == 200, r
    other = await start_server()
    twin = ApiClient(f"http://127.0.0.1:{other.client_port}", alice.session)
    twin.token, twin.user_id = alice.token, alice.user_id
    assert (await twin.post("logout", {})).status == 200
    since = (await bob.get("sync")).body["next_batch"]
    assert_error(await alice.put(f"rooms/{q(room_id)}/send/m.room.message/after", MSG), 401, "M_UNKNOWN_TOKEN")
    assert_error(await alice.put(f"rooms/{q('!nowhere:test')}/send/m.room.message/x", MSG), 401, "M_UNKNOWN_TOKEN")
    r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/bob1", {"msgtype": "m.text", "body": "still here"})
    assert r.status == 200, r
    # the refused write left no reservation holding the stream back
    body = (await bob.get("sync", params={"since": since, "timeout": "5000"})).body
    timeline = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
    assert [e["content"].get("body") for e in timeline] == ["still here"]
    bodies = [e["content"].get("body") for e in await all_events(bob, room_id) if e["type"] == "m.room.message"]
    assert bodies == ["hello", "hello", "still here"]


async def test_txn_id_idempotent_per_device(alice: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    room_id = await create_room(alice)
    path = f"rooms/{q(room_id)}/send/m.room.message/same"
    first = (await alice.put(path, MSG))["event_id"]
    again = await alice.put(path, {"msgtype": "m.text", "body": "different body, same txn"})
    assert again.status == 200 and again["event_id"] == first
    assert (await event_ids(alice, room_id)).count(first) == 1
    assert len([e for e in await all_events(alice, room_id) if e["type"] == "m.room.message"]) == 1
    # another device of the same user: a new event
    phone = await login(new_client(), "alice", "PHONE")
    other = await phone.put(path, MSG)
    assert other.status == 200 and other["event_id"] != first
    assert len([e for e in await all_events(alice, room_id) if e["type"] == "m.room.message"]) == 2
    # the same device after a fresh login keeps its transaction ids
    phone2 = await login(new_client(), "alice", "PHONE")
    assert (await phone2.put(path, MSG))["event_id"] == other["event_id"]


async def test_txn_id_scoped_per_user(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    a = (await alice.put(f"rooms/{q(room_id)}/send/m.room.message/t", MSG))["event_id"]
    b = (await bob.put(f"rooms/{q(room_id)}/send/m.room.message/t", MSG))["event_id"]
    assert a != b


async def test_txn_id_reused_in_another_room(alice: ApiClient) -> None:
    """A transaction id names one request: reusing it elsewhere gives back
    the first event (as for any retry) rather than sending a second."""
    room1 = await create_room(alice)
    room2 = await create_room(alice)
    first = (await alice.put(f"rooms/{q(room1)}/send/m.room.message/t", MSG))["event_id"]
    before = await event_ids(alice, room2)
    r = await alice.put(f"rooms/{q(room2)}/send/m.room.message/t", MSG)
    assert r.status == 200 and r.body == {"event_id": first}, r
    assert await event_ids(alice, room2) == before


async def test_send_forbidden_and_not_found(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    before = await event_ids(alice, room_id)
    assert_error(await bob.put(f"rooms/{q(room_id)}/send/m.room.message/t", MSG), 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before
    r = await bob.put(f"rooms/{q('!nowhere:test.local')}/send/m.room.message/t", MSG)
    assert_error(r, 404, "M_NOT_FOUND")


async def test_send_malformed(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    before = await event_ids(alice, room_id)
    path = f"rooms/{q(room_id)}/send/m.room.message/t"
    assert_error(await alice.request("PUT", path, data=b"{"), 400, "M_NOT_JSON")
    assert_error(await alice.request("PUT", path, data=b""), 400, "M_NOT_JSON")
    assert_error(await alice.put(path, ["a"]), 400, "M_BAD_JSON")
    assert_error(await alice.put(path, "text"), 400, "M_BAD_JSON")
    assert await event_ids(alice, room_id) == before


async def test_send_custom_event_type(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    r = await alice.put(f"rooms/{q(room_id)}/send/org.example.thing/t", {"x": [1, 2, {"y": None}]})
    assert r.status == 200
    ev = await get_event(alice, room_id, r["event_id"])
    assert ev["type"] == "org.example.thing" and ev["content"] == {"x": [1, 2, {"y": None}]}


async def test_send_needs_events_default(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat", "power_level_content_override": {
        "events_default": 10}})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    before = await event_ids(alice, room_id)
    assert_error(await bob.put(f"rooms/{q(room_id)}/send/m.room.message/t", MSG), 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before


async def test_send_on_r0(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    r = await alice.put(f"/_matrix/client/r0/rooms/{q(room_id)}/send/m.room.message/t", MSG)
    assert r.status == 200
    assert r["event_id"] in await event_ids(alice, room_id)


# -- state --------------------------------------------------------------------------------


async def test_put_and_get_state(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "Coffee"})
    assert r.status == 200
    name_id = r["event_id"]
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.name")
    assert r.status == 200 and r.body == {"name": "Coffee"}
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.name/")
    assert r.status == 200 and r.body == {"name": "Coffee"}
    # validate=False: the spec's 200 schema here is oneOf[object, state event],
    # which every state event satisfies twice, so no answer can validate.
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.name/", params={"format": "event"}, validate=False)
    assert r.status == 200 and r["event_id"] == name_id and r["state_key"] == ""
    # a state key
    r = await alice.put(f"rooms/{q(room_id)}/state/org.example.s/some%2Fkey", {"v": 1})
    assert r.status == 200
    r = await alice.get(f"rooms/{q(room_id)}/state/org.example.s/some%2Fkey")
    assert r.status == 200 and r.body == {"v": 1}
    # the full state
    r = await alice.get(f"rooms/{q(room_id)}/state")
    keys = {(e["type"], e["state_key"]) for e in r.body}
    assert ("m.room.name", "") in keys and ("org.example.s", "some/key") in keys
    # a second name replaces the first, with prev_content
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "Tea"})
    ev = await get_event(alice, room_id, r["event_id"])
    assert ev["unsigned"]["prev_content"] == {"name": "Coffee"}
    assert ev["unsigned"]["replaces_state"] == name_id


async def test_put_same_state_twice(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    first = (await alice.put(f"rooms/{q(room_id)}/state/m.room.topic", {"topic": "t"}))["event_id"]
    before = await event_ids(alice, room_id)
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.topic", {"topic": "t"})
    assert r.status == 200 and r["event_id"] == first
    assert await event_ids(alice, room_id) == before


async def test_state_not_found(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    assert_error(await alice.get(f"rooms/{q(room_id)}/state/m.room.topic"), 404, "M_NOT_FOUND")
    assert_error(await alice.get(f"rooms/{q(room_id)}/state/m.room.member/{q('@x:test.local')}"), 404, "M_NOT_FOUND")


async def test_state_of_room_not_in(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"name": "secret"})
    assert_error(await bob.get(f"rooms/{q(room_id)}/state"), 403, "M_FORBIDDEN")
    assert_error(await bob.get(f"rooms/{q(room_id)}/state/m.room.name"), 403, "M_FORBIDDEN")
    before = await event_ids(alice, room_id)
    assert_error(await bob.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "x"}), 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before
    assert_error(await bob.get(f"rooms/{q('!nowhere:test.local')}/state"), 403, "M_FORBIDDEN")


async def test_put_state_malformed(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    before = await event_ids(alice, room_id)
    assert_error(await alice.request("PUT", f"rooms/{q(room_id)}/state/m.room.name", data=b"x"), 400, "M_NOT_JSON")
    assert_error(await alice.put(f"rooms/{q(room_id)}/state/m.room.name", [1]), 400, "M_BAD_JSON")
    # the create event cannot be replaced
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.create", {"room_version": "12"})
    assert_error(r, 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before


async def test_canonical_alias_must_point_here(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    before = await event_ids(alice, room_id)
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.canonical_alias", {"alias": "#missing:test.local"})
    assert_error(r, 400, "M_BAD_ALIAS")
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.canonical_alias", {"alias": "no-sigil"})
    assert_error(r, 400, "M_INVALID_PARAM")
    assert await event_ids(alice, room_id) == before


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_power_0_cannot_set_name_until_raised(alice: ApiClient, bob: ApiClient, version: str) -> None:
    room_id = await create_room(alice, {"room_version": version, "preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    before = await event_ids(alice, room_id)
    assert_error(await bob.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "mine"}), 403, "M_FORBIDDEN")
    # an unlisted state type needs state_default (50)
    assert_error(await bob.put(f"rooms/{q(room_id)}/state/org.example.s", {"v": 1}), 403, "M_FORBIDDEN")
    # and bob cannot raise himself
    pl_path = f"rooms/{q(room_id)}/state/m.room.power_levels"
    pl = (await alice.get(pl_path)).body
    mine = {**pl, "users": {**pl["users"], bob.user_id: 100}}
    assert_error(await bob.put(pl_path, mine), 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before
    pl["users"][bob.user_id] = 50
    assert (await alice.put(pl_path, pl)).status == 200
    r = await bob.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "mine"})
    assert r.status == 200, r
    assert (await alice.get(f"rooms/{q(room_id)}/state/m.room.name")).body == {"name": "mine"}
    # still below power_levels' 100
    assert_error(await bob.put(pl_path, mine), 403, "M_FORBIDDEN")


async def test_membership_via_state_api_is_refused(alice: ApiClient, bob: ApiClient) -> None:
    """Membership goes through the membership endpoints only: bob cannot join
    an invite-only room by writing his own member event through the state API."""
    room_id = await create_room(alice)
    before = await event_ids(alice, room_id)
    r = await bob.put(f"rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}", {"membership": "join"})
    assert_error(r, 400, "M_BAD_JSON")
    assert await event_ids(alice, room_id) == before
    assert room_id not in (await bob.get("joined_rooms"))["joined_rooms"]


# -- redactions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_redact_own_event(alice: ApiClient, bob: ApiClient, version: str) -> None:
    room_id = await create_room(alice, {"room_version": version, "preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    target = await send_text(bob, room_id, "oops")
    r = await bob.put(f"rooms/{q(room_id)}/redact/{q(target)}/r1", {"reason": "typo"})
    assert r.status == 200
    redaction_id = r["event_id"]
    # idempotent
    assert (await bob.put(f"rooms/{q(room_id)}/redact/{q(target)}/r1", {"reason": "typo"}))["event_id"] == redaction_id
    ev = await get_event(alice, room_id, target)
    assert ev["content"] == {}
    assert ev["unsigned"]["redacted_because"]["event_id"] == redaction_id
    red = await get_event(alice, room_id, redaction_id)
    assert red["type"] == "m.room.redaction" and red["content"]["reason"] == "typo"
    assert red["redacts"] == target
    if version == "10":
        assert "redacts" not in red["content"]
    else:
        assert red["content"]["redacts"] == target
    assert [e["event_id"] for e in await all_events(alice, room_id)].count(redaction_id) == 1


async def test_redact_by_moderator(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    target = await send_text(bob, room_id, "spam")
    r = await alice.put(f"rooms/{q(room_id)}/redact/{q(target)}/r1", {})
    assert r.status == 200
    assert (await get_event(bob, room_id, target))["content"] == {}


async def test_redact_by_plain_member_refused(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await carol.post(f"rooms/{q(room_id)}/join", {})
    target = await send_text(bob, room_id, "mine")
    before = await event_ids(alice, room_id)
    assert_error(await carol.put(f"rooms/{q(room_id)}/redact/{q(target)}/r1", {}), 403, "M_FORBIDDEN")
    assert_error(await carol.put(f"rooms/{q(room_id)}/send/m.room.redaction/r2", {"redacts": target}),
                 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before
    assert (await get_event(alice, room_id, target))["content"]["body"] == "mine"
    # nor a creator's event
    admin_event = await send_text(alice, room_id, "announcement")
    assert_error(await bob.put(f"rooms/{q(room_id)}/redact/{q(admin_event)}/r3", {}), 403, "M_FORBIDDEN")


async def test_redact_not_found_and_malformed(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    other_room = await create_room(alice)
    elsewhere = await send_text(alice, other_room, "elsewhere")
    before = await event_ids(alice, room_id)
    missing = "$" + "A" * 43
    assert_error(await alice.put(f"rooms/{q(room_id)}/redact/{q(missing)}/r1", {}), 404, "M_NOT_FOUND")
    assert_error(await alice.put(f"rooms/{q(room_id)}/redact/{q(elsewhere)}/r2", {}), 404, "M_NOT_FOUND")
    target = await send_text(alice, room_id, "x")
    before = await event_ids(alice, room_id)
    assert_error(await alice.put(f"rooms/{q(room_id)}/redact/{q(target)}/r3", {"reason": 5}), 400, "M_BAD_JSON")
    assert_error(await alice.request("PUT", f"rooms/{q(room_id)}/redact/{q(target)}/r4", data=b"]"),
                 400, "M_NOT_JSON")
    assert await event_ids(alice, room_id) == before
    # not in the room
    assert_error(await bob.put(f"rooms/{q(room_id)}/redact/{q(target)}/r5", {}), 403, "M_FORBIDDEN")
    assert await event_ids(alice, room_id) == before


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_redaction_via_send_endpoint(alice: ApiClient, version: str) -> None:
    """Spec 1.18: m.room.redaction may be sent with /send for every room
    version; before v11 the server moves content.redacts to the top level."""
    room_id = await create_room(alice, {"room_version": version})
    target = await send_text(alice, room_id, "oops")
    r = await alice.put(f"rooms/{q(room_id)}/send/m.room.redaction/r1", {"redacts": target, "reason": "why"})
    assert r.status == 200, r
    red = await get_event(alice, room_id, r["event_id"])
    assert red["redacts"] == target and red["content"]["reason"] == "why"
    if version == "10":
        assert "redacts" not in red["content"]
    else:
        assert red["content"]["redacts"] == target
    assert (await get_event(alice, room_id, target))["content"] == {}
    # without a target it is malformed
    r = await alice.put(f"rooms/{q(room_id)}/send/m.room.redaction/r2", {"reason": "nothing"})
    assert r.status == 400, r


async def test_txn_ids_of_send_and_redact_are_separate(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    msg = (await alice.put(f"rooms/{q(room_id)}/send/m.room.message/same", MSG))["event_id"]
    r = await alice.put(f"rooms/{q(room_id)}/redact/{q(msg)}/same", {})
    assert r.status == 200 and r["event_id"] != msg
    assert (await get_event(alice, room_id, msg))["content"] == {}

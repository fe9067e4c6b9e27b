"""Reading rooms: /messages, /context, /event, /state, /members and the
history visibility windows of users who joined late or left."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..helpers import ApiClient
from .room_helpers import assert_error, create_room, invite_and_join, q, send_text


async def messages(api: ApiClient, room_id: str, **params: Any) -> Any:
    p = {k: (json.dumps(v) if k == "filter" else str(v)) for k, v in params.items()}
    r = await api.get(f"rooms/{q(room_id)}/messages", params=p)
    assert r.status == 200, r
    return r


async def bodies(api: ApiClient, room_id: str, **params: Any) -> list[str]:
    r = await messages(api, room_id, **params)
    return [e["content"].get("body") for e in r["chunk"] if e["type"] == "m.room.message"]


async def token(api: ApiClient) -> str:
    r = await api.get("sync", params={"timeout": "0"})
    assert r.status == 200
    return r["next_batch"]


async def set_visibility(api: ApiClient, room_id: str, visibility: str) -> None:
    r = await api.put(f"rooms/{q(room_id)}/state/m.room.history_visibility", {"history_visibility": visibility})
    assert r.status == 200, r


# -- /messages -------------------------------------------------------------------------


async def test_messages_paginate_backwards_and_forwards(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    sent = [await send_text(alice, room_id, f"m{i}") for i in range(10)]
    # backwards from the end, three at a time, until no `end`
    seen: list[str] = []
    params: dict[str, Any] = {"dir": "b", "limit": 3}
    for _ in range(20):
        r = await messages(alice, room_id, **params)
        assert len(r["chunk"]) <= 3
        seen += [e["event_id"] for e in r["chunk"]]
        if "end" not in r.body:
            break
        if "from" in params:
            assert r["start"] == params["from"]
        params["from"] = r["end"]
    else:
        pytest.fail("backwards pagination did not end")
    everything = list(reversed(seen))
    assert everything[0] == (await messages(alice, room_id, dir="f", limit=1))["chunk"][0]["event_id"]
    assert everything[-10:] == sent
    assert len(everything) == len(set(everything))
    # forwards from the start, four at a time
    fwd: list[str] = []
    params = {"dir": "f", "limit": 4}
    for _ in range(20):
        r = await messages(alice, room_id, **params)
        fwd += [e["event_id"] for e in r["chunk"]]
        if "end" not in r.body:
            break
        params["from"] = r["end"]
    assert fwd == everything
    first = (await messages(alice, room_id, dir="f", limit=1))["chunk"][0]
    assert first["type"] == "m.room.create"


async def test_messages_from_and_to_tokens(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    await send_text(alice, room_id, "before")
    t1 = await token(alice)
    await send_text(alice, room_id, "a")
    await send_text(alice, room_id, "b")
    await send_text(alice, room_id, "c")
    t2 = await token(alice)
    await send_text(alice, room_id, "after")
    assert await bodies(alice, room_id, dir="f", **{"from": t1, "to": t2}) == ["a", "b", "c"]
    assert await bodies(alice, room_id, dir="b", **{"from": t2, "to": t1}) == ["c", "b", "a"]
    assert await bodies(alice, room_id, dir="f", **{"from": t2}) == ["after"]
    assert await bodies(alice, room_id, dir="b", limit=2, **{"from": t2}) == ["c", "b"]
    r = await messages(alice, room_id, dir="f", **{"from": t1, "to": t2})
    assert r["start"] == t1
    # a sync token marks a point in every room: no events past the end
    t3 = await token(alice)
    r = await messages(alice, room_id, dir="f", **{"from": t3})
    assert r["chunk"] == [] and "end" not in r.body


async def test_messages_limit_and_bad_params(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    for i in range(5):
        await send_text(alice, room_id, f"m{i}")
    assert await bodies(alice, room_id, dir="b", limit=2) == ["m4", "m3"]
    assert len((await messages(alice, room_id, dir="b", limit=0))["chunk"]) == 0
    path = f"rooms/{q(room_id)}/messages"
    assert_error(await alice.get(path, params={"dir": "x"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"dir": "b", "limit": "many"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"dir": "b", "limit": "-1"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"dir": "b", "from": "garbage"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"dir": "b", "filter": "{nope"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"dir": "b", "filter": '{"types": "m.room.message"}'}),
                 400, "M_INVALID_PARAM")
    # not a member, and a room that does not exist
    assert_error(await bob.get(path, params={"dir": "b"}), 403, "M_FORBIDDEN")
    assert_error(await bob.get(f"rooms/{q('!nowhere:test.local')}/messages"), 403, "M_FORBIDDEN")


async def test_messages_without_dir_defaults(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    await send_text(alice, room_id, "one")
    await send_text(alice, room_id, "two")
    r = await alice.get(f"rooms/{q(room_id)}/messages", params={"limit": "1"})
    assert r.status == 200
    assert r["chunk"][0]["content"]["body"] == "two"


async def test_messages_filters(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "a1")
    await send_text(bob, room_id, "b1")
    r = await alice.put(f"rooms/{q(room_id)}/send/org.example.ping/t1", {"n": 1})
    await send_text(alice, room_id, "a2")
    r = await messages(alice, room_id, dir="b", filter={"types": ["org.example.*"]})
    assert [e["type"] for e in r["chunk"]] == ["org.example.ping"]
    r = await messages(alice, room_id, dir="b", filter={"not_types": ["m.room.*"]})
    assert [e["type"] for e in r["chunk"]] == ["org.example.ping"]
    assert await bodies(alice, room_id, dir="f", filter={"senders": [bob.user_id], "types": ["m.room.message"]}) == [
        "b1"
    ]
    assert await bodies(alice, room_id, dir="f", filter={"not_senders": [bob.user_id]}) == ["a1", "a2"]
    r = await messages(alice, room_id, dir="b", filter={"types": ["m.room.message"], "limit": 1})
    assert [e["content"]["body"] for e in r["chunk"]] == ["a2"]
    assert "end" in r.body


async def test_messages_lazy_load_members(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await carol.post(f"rooms/{q(room_id)}/join", {})
    await send_text(bob, room_id, "from bob")
    await send_text(alice, room_id, "from alice")
    r = await messages(alice, room_id, dir="b", limit=2, filter={"lazy_load_members": True})
    assert [e["sender"] for e in r["chunk"]] == [alice.user_id, bob.user_id]
    members = {e["state_key"] for e in r["state"] if e["type"] == "m.room.member"}
    assert members == {alice.user_id, bob.user_id}
    assert all(e["type"] == "m.room.member" for e in r["state"])
    # without lazy loading there is no state
    r = await messages(alice, room_id, dir="b", limit=2)
    assert not r.body.get("state")


# -- /event and /context -----------------------------------------------------------------


async def test_get_event(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    event_id = await send_text(alice, room_id, "hi")
    r = await alice.get(f"rooms/{q(room_id)}/event/{q(event_id)}")
    assert r.status == 200 and r["event_id"] == event_id and r["content"]["body"] == "hi"
    missing = "$" + "B" * 43
    assert_error(await alice.get(f"rooms/{q(room_id)}/event/{q(missing)}"), 404, "M_NOT_FOUND")
    other = await create_room(alice)
    assert_error(await alice.get(f"rooms/{q(other)}/event/{q(event_id)}"), 404, "M_NOT_FOUND")
    # not a member: not found (the spec's 404 covers "no permission")
    assert_error(await bob.get(f"rooms/{q(room_id)}/event/{q(event_id)}"), 404, "M_NOT_FOUND")


async def test_context(alice: ApiClient) -> None:
    room_id = await create_room(alice, {"name": "ctx"})
    ids = [await send_text(alice, room_id, f"m{i}") for i in range(9)]
    r = await alice.get(f"rooms/{q(room_id)}/context/{q(ids[4])}", params={"limit": "4"})
    assert r.status == 200
    assert r["event"]["event_id"] == ids[4]
    assert [e["event_id"] for e in r["events_before"]] == [ids[3], ids[2]]
    assert [e["event_id"] for e in r["events_after"]] == [ids[5], ids[6]]
    state = {(e["type"], e["state_key"]) for e in r["state"]}
    assert ("m.room.name", "") in state and ("m.room.create", "") in state
    # the tokens continue with /messages
    before = await messages(alice, room_id, dir="b", limit=2, **{"from": r["start"]})
    assert [e["event_id"] for e in before["chunk"]] == [ids[1], ids[0]]
    after = await messages(alice, room_id, dir="f", limit=2, **{"from": r["end"]})
    assert [e["event_id"] for e in after["chunk"]] == [ids[7], ids[8]]
    # limit 0: the event alone
    r = await alice.get(f"rooms/{q(room_id)}/context/{q(ids[4])}", params={"limit": "0"})
    assert r.status == 200 and r["events_before"] == [] and r["events_after"] == []


async def test_context_filter_and_errors(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    a = await send_text(alice, room_id, "a")
    mid = await send_text(bob, room_id, "mid")
    b = await send_text(alice, room_id, "b")
    await send_text(bob, room_id, "c")
    path = f"rooms/{q(room_id)}/context/{q(mid)}"
    r = await alice.get(path, params={"limit": "10", "filter": json.dumps(
        {"senders": [alice.user_id], "lazy_load_members": True})})
    assert r.status == 200
    assert [e["event_id"] for e in r["events_before"]][0] == a
    assert [e["event_id"] for e in r["events_after"]] == [b]
    members = {e["state_key"] for e in r["state"] if e["type"] == "m.room.member"}
    assert members == {alice.user_id, bob.user_id}
    missing = "$" + "C" * 43
    assert_error(await alice.get(f"rooms/{q(room_id)}/context/{q(missing)}"), 404, "M_NOT_FOUND")
    assert_error(await alice.get(path, params={"limit": "x"}), 400, "M_INVALID_PARAM")


# -- redactions in history, per room version -----------------------------------------------


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_redacted_events_in_history(alice: ApiClient, bob: ApiClient, carol: ApiClient, version: str) -> None:
    room_id = await create_room(
        alice, {"room_version": version, "preset": "public_chat", "power_level_content_override": {"invite": 50}}
    )
    await bob.post(f"rooms/{q(room_id)}/join", {})
    msg = await send_text(bob, room_id, "secret", format="org.matrix.custom.html", formatted_body="<b>secret</b>")
    r = await bob.put(f"rooms/{q(room_id)}/redact/{q(msg)}/r1", {"reason": "oops"})
    redaction_id = r["event_id"]
    chunk = (await messages(alice, room_id, dir="b", limit=5))["chunk"]
    by_id = {e["event_id"]: e for e in chunk}
    assert by_id[msg]["content"] == {}
    assert by_id[msg]["unsigned"]["redacted_because"]["event_id"] == redaction_id
    assert by_id[redaction_id]["redacts"] == msg
    # redacting a state event keeps the keys the room version preserves
    pl_id = (await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels/", params={"format": "event"},
                             validate=False))["event_id"]  # see test_send_and_state: format=event schema
    assert (await alice.put(f"rooms/{q(room_id)}/redact/{q(pl_id)}/r2", {})).status == 200
    pl = (await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels")).body
    if version == "10":
        assert "invite" not in pl  # v10 redaction drops `invite`
    else:
        assert pl["invite"] == 50  # v11+ keeps it
    # and the redacted state is what the room now runs on
    r = await bob.post(f"rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
    if version == "10":
        assert r.status == 200, r
    else:
        assert_error(r, 403, "M_FORBIDDEN")
    create = (await alice.get(f"rooms/{q(room_id)}/state/m.room.create")).body
    assert create["room_version"] == version
    ev = (await alice.get(f"rooms/{q(room_id)}/event/{q(pl_id)}")).body
    assert ev["unsigned"]["redacted_because"]["sender"] == alice.user_id


@pytest.mark.parametrize("version", ["10", "11"])
async def test_redacted_create_event_per_version(alice: ApiClient, version: str) -> None:
    room_id = await create_room(alice, {"room_version": version, "creation_content": {"m.federate": True}})
    create_id = (await messages(alice, room_id, dir="f", limit=1))["chunk"][0]["event_id"]
    assert (await alice.put(f"rooms/{q(room_id)}/redact/{q(create_id)}/r", {})).status == 200
    content = (await alice.get(f"rooms/{q(room_id)}/state/m.room.create")).body
    if version == "10":
        assert content == {"creator": alice.user_id}
    else:
        assert content == {"room_version": "11", "m.federate": True}
    # the room still works
    await send_text(alice, room_id, "still fine")


# -- history visibility ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "visibility, sees_before_invite, sees_between",
    [
        ("shared", True, True),
        ("invited", False, True),
        ("joined", False, False),
        ("world_readable", True, True),
    ],
)
async def test_late_joiner_visibility(
    alice: ApiClient, bob: ApiClient, visibility: str, sees_before_invite: bool, sees_between: bool
) -> None:
    room_id = await create_room(alice)
    await set_visibility(alice, room_id, visibility)
    early = await send_text(alice, room_id, "early")
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    between = await send_text(alice, room_id, "between")
    await bob.post(f"rooms/{q(room_id)}/join", {})
    late = await send_text(alice, room_id, "late")
    seen = await bodies(bob, room_id, dir="f", limit=100)
    expected = (["early"] if sees_before_invite else []) + (["between"] if sees_between else []) + ["late"]
    assert seen == expected
    for event_id, visible in ((early, sees_before_invite), (between, sees_between), (late, True)):
        r = await bob.get(f"rooms/{q(room_id)}/event/{q(event_id)}")
        assert r.status == (200 if visible else 404), (event_id, r)
        r = await bob.get(f"rooms/{q(room_id)}/context/{q(event_id)}")
        assert r.status == (200 if visible else 404), (event_id, r)
    # backwards pagination stops where the window starts
    seen_back = await bodies(bob, room_id, dir="b", limit=100)
    assert seen_back == list(reversed(expected))


@pytest.mark.parametrize("visibility", ["shared", "invited", "joined"])
async def test_user_who_left_sees_up_to_leaving(alice: ApiClient, bob: ApiClient, visibility: str) -> None:
    room_id = await create_room(alice, {"preset": "public_chat", "name": "before"})
    await set_visibility(alice, room_id, visibility)
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "while joined")
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    after = await send_text(alice, room_id, "after leaving")
    assert (await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "after"})).status == 200
    seen = await bodies(bob, room_id, dir="b", limit=100)
    assert seen == ["while joined"]
    assert_error(await bob.get(f"rooms/{q(room_id)}/event/{q(after)}"), 404, "M_NOT_FOUND")
    # state and members as of leaving
    r = await bob.get(f"rooms/{q(room_id)}/state")
    assert r.status == 200
    state = {(e["type"], e["state_key"]): e for e in r.body}
    assert state[("m.room.name", "")]["content"]["name"] == "before"
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "leave"
    r = await bob.get(f"rooms/{q(room_id)}/state/m.room.name")
    assert r.status == 200 and r.body == {"name": "before"}
    r = await bob.get(f"rooms/{q(room_id)}/members")
    assert r.status == 200
    assert {e["state_key"]: e["content"]["membership"] for e in r["chunk"]}[bob.user_id] == "leave"
    # joined_members is for members only
    assert_error(await bob.get(f"rooms/{q(room_id)}/joined_members"), 403, "M_FORBIDDEN")


async def test_joined_visibility_hides_the_gap_between_stays(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await set_visibility(alice, room_id, "joined")
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "first stay")
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    gap = await send_text(alice, room_id, "while away")
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "second stay")
    assert await bodies(bob, room_id, dir="f", limit=100) == ["first stay", "second stay"]
    assert await bodies(bob, room_id, dir="b", limit=100) == ["second stay", "first stay"]
    assert_error(await bob.get(f"rooms/{q(room_id)}/event/{q(gap)}"), 404, "M_NOT_FOUND")


async def test_visibility_is_judged_at_each_event(alice: ApiClient, bob: ApiClient) -> None:
    """History sent while the room was `shared` stays readable to a late
    joiner after the room switches to `joined`; later history does not."""
    room_id = await create_room(alice, {"preset": "public_chat"})
    await send_text(alice, room_id, "shared era")
    await set_visibility(alice, room_id, "joined")
    await send_text(alice, room_id, "joined era")
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "after join")
    assert await bodies(bob, room_id, dir="f", limit=100) == ["shared era", "after join"]


async def test_world_readable_for_non_members(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await set_visibility(alice, room_id, "world_readable")
    event_id = await send_text(alice, room_id, "public words")
    assert "public words" in await bodies(bob, room_id, dir="b")
    assert (await bob.get(f"rooms/{q(room_id)}/event/{q(event_id)}")).status == 200
    r = await bob.get(f"rooms/{q(room_id)}/state/m.room.history_visibility")
    assert r.status == 200 and r.body == {"history_visibility": "world_readable"}
    # reading is not joining: sending is still refused
    r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/t", {"msgtype": "m.text", "body": "x"})
    assert_error(r, 403, "M_FORBIDDEN")


@pytest.mark.parametrize("visibility", ["shared", "joined"])
async def test_non_member_refused(alice: ApiClient, bob: ApiClient, visibility: str) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await set_visibility(alice, room_id, visibility)
    await send_text(alice, room_id, "x")
    assert_error(await bob.get(f"rooms/{q(room_id)}/messages"), 403, "M_FORBIDDEN")
    assert_error(await bob.get(f"rooms/{q(room_id)}/state"), 403, "M_FORBIDDEN")
    assert_error(await bob.get(f"rooms/{q(room_id)}/members"), 403, "M_FORBIDDEN")


async def test_invitee_with_invited_visibility(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await set_visibility(alice, room_id, "invited")
    await send_text(alice, room_id, "before invite")
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    await send_text(alice, room_id, "after invite")
    # not joined yet, but invited: the history since the invite is readable
    assert await bodies(bob, room_id, dir="f", limit=100) == ["after invite"]


# -- /members ---------------------------------------------------------------------------------


async def test_members(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    t_before_carol = await token(alice)
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
    path = f"rooms/{q(room_id)}/members"

    def memberships(r: Any) -> dict[str, str]:
        return {e["state_key"]: e["content"]["membership"] for e in r["chunk"]}

    r = await alice.get(path)
    assert memberships(r) == {alice.user_id: "join", bob.user_id: "join", carol.user_id: "invite"}
    r = await alice.get(path, params={"membership": "invite"})
    assert memberships(r) == {carol.user_id: "invite"}
    r = await alice.get(path, params={"not_membership": "invite"})
    assert memberships(r) == {alice.user_id: "join", bob.user_id: "join"}
    r = await alice.get(path, params={"at": t_before_carol})
    assert memberships(r) == {alice.user_id: "join", bob.user_id: "join"}
    assert_error(await alice.get(path, params={"membership": "nope"}), 400, "M_INVALID_PARAM")
    assert_error(await alice.get(path, params={"at": "bad"}), 400, "M_INVALID_PARAM")
    r = await alice.get(f"rooms/{q(room_id)}/joined_members")
    assert set(r["joined"]) == {alice.user_id, bob.user_id}


async def test_r0_history_paths(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    event_id = await send_text(alice, room_id, "r0")
    r = await alice.get(f"/_matrix/client/r0/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "1"})
    assert r.status == 200 and r["chunk"][0]["event_id"] == event_id
    r = await alice.get(f"/_matrix/client/r0/rooms/{q(room_id)}/context/{q(event_id)}")
    assert r.status == 200
    assert (await alice.get(f"/_matrix/client/r0/rooms/{q(room_id)}/state")).status == 200


async def test_invite_then_join_sees_invite_era(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await invite_and_join(alice, bob, room_id)
    await send_text(alice, room_id, "hello bob")
    assert await bodies(bob, room_id, dir="b", limit=1) == ["hello bob"]

"""Membership over HTTP: invite, join (public, invite-only, restricted, by
alias), knock, leave, kick, ban, unban, forget; refusals store nothing."""

from __future__ import annotations

from typing import Any

import pytest

from ..helpers import ApiClient
from .room_helpers import assert_error, create_room, invite_and_join, q, send_text


async def all_events(api: ApiClient, room_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"rooms/{q(room_id)}/messages", params={"dir": "f", "limit": "1000"})
    assert r.status == 200, r
    return r["chunk"]


async def membership(api: ApiClient, room_id: str, user_id: str) -> str | None:
    r = await api.get(f"rooms/{q(room_id)}/state/m.room.member/{q(user_id)}")
    if r.status == 404:
        return None
    assert r.status == 200, r
    return r["membership"]


async def member_event(api: ApiClient, room_id: str, user_id: str) -> dict[str, Any]:
    r = await api.get(f"rooms/{q(room_id)}/state", params={})
    assert r.status == 200, r
    return next(e for e in r.body if e["type"] == "m.room.member" and e["state_key"] == user_id)


class Unchanged:
    """Asserts that a refused request stored no event in a room."""

    def __init__(self, viewer: ApiClient, room_id: str) -> None:
        self.viewer, self.room_id = viewer, room_id

    async def __aenter__(self) -> "Unchanged":
        self.before = [e["event_id"] for e in await all_events(self.viewer, self.room_id)]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if exc[0] is None:
            after = [e["event_id"] for e in await all_events(self.viewer, self.room_id)]
            assert after == self.before


# -- invite and join ---------------------------------------------------------------


async def test_invite_then_join(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    r = await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id, "reason": "come"})
    assert r.status == 200 and r.body == {}
    ev = await member_event(alice, room_id, bob.user_id)
    assert ev["content"]["membership"] == "invite" and ev["content"]["reason"] == "come"
    assert ev["sender"] == alice.user_id
    # inviting again is a no-op
    async with Unchanged(alice, room_id):
        assert (await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})).status == 200
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200 and r["room_id"] == room_id
    assert await membership(alice, room_id, bob.user_id) == "join"
    r = await bob.get(f"rooms/{q(room_id)}/joined_members")
    assert r.status == 200 and set(r["joined"]) == {alice.user_id, bob.user_id}
    assert room_id in (await bob.get("joined_rooms"))["joined_rooms"]


async def test_invite_refusals(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice)
    async with Unchanged(alice, room_id):
        # not in the room
        assert_error(await carol.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id}), 403, "M_FORBIDDEN")
        # unknown local user
        assert_error(
            await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": "@nobody:test.local"}), 404, "M_NOT_FOUND"
        )
        # malformed bodies
        assert_error(await alice.post(f"rooms/{q(room_id)}/invite", {}), 400, "M_MISSING_PARAM")
        assert_error(await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": "bob"}), 400, "M_INVALID_PARAM")
        assert_error(await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": 5}), 400, "M_BAD_JSON")
        r = await alice.request("POST", f"rooms/{q(room_id)}/invite", data=b"nope")
        assert_error(r, 400, "M_NOT_JSON")
        # already joined
        assert_error(await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": alice.user_id}), 403, "M_FORBIDDEN")


async def test_invite_needs_invite_power(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"power_level_content_override": {"invite": 50}})
    await invite_and_join(alice, bob, room_id)
    async with Unchanged(alice, room_id):
        r = await bob.post(f"rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
        assert_error(r, 403, "M_FORBIDDEN")
    assert await membership(alice, room_id, carol.user_id) is None


async def test_invite_into_unknown_room(alice: ApiClient, bob: ApiClient) -> None:
    r = await alice.post(f"rooms/{q('!nope:test.local')}/invite", {"user_id": bob.user_id})
    assert_error(r, 404, "M_NOT_FOUND")
    assert (await bob.get("sync")).body.get("rooms", {}).get("invite", {}) == {}


async def test_invite_only_join_refused_without_invite(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "private_chat"})
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")
        assert_error(await bob.post(f"join/{q(room_id)}", {}), 403, "M_FORBIDDEN")
    assert room_id not in (await bob.get("joined_rooms"))["joined_rooms"]


async def test_join_public_room_by_id_and_alias(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    r = await alice.post("createRoom", {"preset": "public_chat", "room_alias_name": "lobby"})
    room_id = r["room_id"]
    r = await bob.post(f"join/{q(room_id)}", {"reason": "hello"})
    assert r.status == 200 and r["room_id"] == room_id
    assert (await member_event(alice, room_id, bob.user_id))["content"]["reason"] == "hello"
    r = await carol.post(f"join/{q('#lobby:test.local')}", {})
    assert r.status == 200 and r["room_id"] == room_id
    # joining again changes nothing
    async with Unchanged(alice, room_id):
        assert (await carol.post(f"rooms/{q(room_id)}/join", {})).status == 200


async def test_join_not_found_and_malformed(alice: ApiClient) -> None:
    assert_error(await alice.post(f"join/{q('#nowhere:test.local')}", {}), 404, "M_NOT_FOUND")
    assert_error(await alice.post(f"join/{q('!nowhere:test.local')}", {}), 404, "M_NOT_FOUND")
    assert_error(await alice.post(f"rooms/{q('!nowhere:test.local')}/join", {}), 404, "M_NOT_FOUND")
    r = await alice.post("join/notaroom", {})
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM", r
    room_id = await create_room(alice, {"preset": "public_chat"})
    assert_error(await alice.post(f"join/{q(room_id)}", {"reason": 5}), 400, "M_BAD_JSON")
    r = await alice.request("POST", f"join/{q(room_id)}", data=b"[")
    assert_error(r, 400, "M_NOT_JSON")


async def test_leave_then_rejoin_public_room(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    r = await bob.post(f"rooms/{q(room_id)}/leave", {"reason": "bye"})
    assert r.status == 200 and r.body == {}
    ev = await member_event(alice, room_id, bob.user_id)
    assert ev["content"]["membership"] == "leave" and ev["content"]["reason"] == "bye"
    assert room_id not in (await bob.get("joined_rooms"))["joined_rooms"]
    # leaving twice is harmless and stores nothing
    async with Unchanged(alice, room_id):
        assert (await bob.post(f"rooms/{q(room_id)}/leave", {})).status == 200
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "join"


async def test_reject_invite_by_leaving(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    assert (await bob.post(f"rooms/{q(room_id)}/leave", {})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "leave"
    # and may then not join
    assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")


async def test_leave_room_never_joined(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    async with Unchanged(alice, room_id):
        # The spec lists only 200 for /leave; refusing is what Synapse does too.
        assert_error(await bob.post(f"rooms/{q(room_id)}/leave", {}), 403, "M_FORBIDDEN")
    assert await membership(alice, room_id, bob.user_id) is None


async def test_creator_leaving_keeps_the_room(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    assert (await alice.post(f"rooms/{q(room_id)}/leave", {})).status == 200
    await send_text(bob, room_id, "still here")
    assert (await alice.post(f"rooms/{q(room_id)}/join", {})).status == 200


# -- kick, ban, unban -----------------------------------------------------------------


async def test_kick(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await carol.post(f"rooms/{q(room_id)}/join", {})
    # a plain member cannot kick
    async with Unchanged(alice, room_id):
        r = await bob.post(f"rooms/{q(room_id)}/kick", {"user_id": carol.user_id})
        assert_error(r, 403, "M_FORBIDDEN")
    assert await membership(alice, room_id, carol.user_id) == "join"
    r = await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": carol.user_id, "reason": "spam"})
    assert r.status == 200 and r.body == {}
    ev = await member_event(alice, room_id, carol.user_id)
    assert ev["content"]["membership"] == "leave"
    assert ev["sender"] == alice.user_id and ev["content"]["reason"] == "spam"
    assert room_id not in (await carol.get("joined_rooms"))["joined_rooms"]
    # kicking someone who is not there is refused
    async with Unchanged(alice, room_id):
        r = await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": carol.user_id})
        assert_error(r, 403, "M_FORBIDDEN")
    # a kicked user may rejoin a public room
    assert (await carol.post(f"rooms/{q(room_id)}/join", {})).status == 200


async def test_kick_malformed(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    async with Unchanged(alice, room_id):
        assert_error(await alice.post(f"rooms/{q(room_id)}/kick", {}), 400, "M_MISSING_PARAM")
        assert_error(await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": "x"}), 400, "M_INVALID_PARAM")
        assert_error(await alice.post(f"rooms/{q(room_id)}/ban", {"reason": "x"}), 400, "M_MISSING_PARAM")
        assert_error(await alice.post(f"rooms/{q(room_id)}/unban", {"user_id": []}), 400, "M_BAD_JSON")


async def test_moderator_with_lower_power_cannot_kick_admin(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"room_version": "11", "preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    path = f"rooms/{q(room_id)}/state/m.room.power_levels"
    pl = (await alice.get(path)).body
    pl["users"][bob.user_id] = 50
    assert (await alice.put(path, pl)).status == 200
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/kick", {"user_id": alice.user_id}), 403, "M_FORBIDDEN")
        assert_error(await bob.post(f"rooms/{q(room_id)}/ban", {"user_id": alice.user_id}), 403, "M_FORBIDDEN")


async def test_ban_unban(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await carol.post(f"rooms/{q(room_id)}/join", {})
    async with Unchanged(alice, room_id):
        assert_error(await carol.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id}), 403, "M_FORBIDDEN")
    r = await alice.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id, "reason": "rude"})
    assert r.status == 200 and r.body == {}
    ev = await member_event(alice, room_id, bob.user_id)
    assert ev["content"]["membership"] == "ban" and ev["content"]["reason"] == "rude"
    # banned: cannot join, cannot be invited, cannot send
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")
        assert_error(await bob.post(f"join/{q(room_id)}", {}), 403, "M_FORBIDDEN")
        assert_error(await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id}), 403, "M_FORBIDDEN")
        r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/x", {"msgtype": "m.text", "body": "hi"})
        assert_error(r, 403, "M_FORBIDDEN")
        # a plain member cannot unban
        assert_error(await carol.post(f"rooms/{q(room_id)}/unban", {"user_id": bob.user_id}), 403, "M_FORBIDDEN")
        # a banned user's own leave changes nothing
        r = await bob.post(f"rooms/{q(room_id)}/leave", {})
        assert r.status == 200 and r.body == {}, r
    assert await membership(alice, room_id, bob.user_id) == "ban"
    assert room_id not in (await bob.get("joined_rooms"))["joined_rooms"]
    r = await alice.post(f"rooms/{q(room_id)}/unban", {"user_id": bob.user_id})
    assert r.status == 200
    assert await membership(alice, room_id, bob.user_id) == "leave"
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    # unbanning someone who is not banned is refused
    async with Unchanged(alice, room_id):
        assert_error(await alice.post(f"rooms/{q(room_id)}/unban", {"user_id": bob.user_id}), 403, "M_FORBIDDEN")


async def test_ban_user_never_in_room(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    assert (await alice.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id})).status == 200
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")
    assert await membership(alice, room_id, bob.user_id) == "ban"


async def test_banned_user_cannot_knock_or_join_restricted(alice: ApiClient, bob: ApiClient) -> None:
    """The auth rules alone refuse a banned user (the membership service has
    no ban check of its own): knock rooms and restricted rooms whose allowed
    room the banned user is in."""
    knock = await knock_room(alice)
    space = await create_room(alice, {"preset": "public_chat"})
    restricted = await create_room(
        alice,
        {"initial_state": [{"type": "m.room.join_rules",
                            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]},
    )
    assert (await bob.post(f"join/{q(space)}", {})).status == 200
    for room_id in (knock, restricted):
        assert (await alice.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id})).status == 200
    async with Unchanged(alice, knock):
        assert_error(await bob.post(f"knock/{q(knock)}", {}), 403, "M_FORBIDDEN")
        assert_error(await bob.post(f"rooms/{q(knock)}/join", {}), 403, "M_FORBIDDEN")
    async with Unchanged(alice, restricted):
        assert_error(await bob.post(f"rooms/{q(restricted)}/join", {}), 403, "M_FORBIDDEN")
    for room_id in (knock, restricted):
        assert await membership(alice, room_id, bob.user_id) == "ban"


# -- knock -----------------------------------------------------------------------------


async def knock_room(alice: ApiClient, version: str = "12") -> str:
    return await create_room(
        alice,
        {"room_version": version, "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]},
    )


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_knock_then_invite(alice: ApiClient, bob: ApiClient, version: str) -> None:
    room_id = await knock_room(alice, version)
    # knocking rooms refuse plain joins
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")
    r = await bob.post(f"knock/{q(room_id)}", {"reason": "let me in"})
    assert r.status == 200 and r["room_id"] == room_id
    ev = await member_event(alice, room_id, bob.user_id)
    assert ev["content"]["membership"] == "knock" and ev["content"]["reason"] == "let me in"
    # the knocker shows up in the knock section of its sync
    s = await bob.get("sync")
    assert room_id in s["rooms"]["knock"]
    knock_state = s["rooms"]["knock"][room_id]["knock_state"]["events"]
    assert any(e["type"] == "m.room.join_rules" for e in knock_state)
    # knocking again is refused or a no-op: never a second join
    assert (await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "invite"
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "join"


async def test_knock_refusals(alice: ApiClient, bob: ApiClient) -> None:
    invite_only = await create_room(alice, {"preset": "private_chat"})
    async with Unchanged(alice, invite_only):
        assert_error(await bob.post(f"knock/{q(invite_only)}", {}), 403, "M_FORBIDDEN")
    public = await create_room(alice, {"preset": "public_chat"})
    async with Unchanged(alice, public):
        # already joined
        assert_error(await alice.post(f"knock/{q(public)}", {}), 403, "M_FORBIDDEN")
    assert_error(await bob.post(f"knock/{q('!nowhere:test.local')}", {}), 404, "M_NOT_FOUND")
    assert_error(await bob.post(f"knock/{q('#nowhere:test.local')}", {}), 404, "M_NOT_FOUND")


async def test_knock_denied_by_kick(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await knock_room(alice)
    assert (await bob.post(f"knock/{q(room_id)}", {})).status == 200
    assert (await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": bob.user_id})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "leave"


async def test_knock_retracted_by_leave(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await knock_room(alice)
    assert (await bob.post(f"knock/{q(room_id)}", {})).status == 200
    assert (await bob.post(f"rooms/{q(room_id)}/leave", {})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "leave"


# -- restricted rooms -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
async def test_restricted_join(alice: ApiClient, bob: ApiClient, version: str) -> None:
    space = await create_room(alice, {"room_version": version, "preset": "public_chat"})
    room_id = await create_room(
        alice,
        {
            "room_version": version,
            "initial_state": [
                {
                    "type": "m.room.join_rules",
                    "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]},
                }
            ],
        },
    )
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")
    assert (await bob.post(f"rooms/{q(space)}/join", {})).status == 200
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    ev = await member_event(alice, room_id, bob.user_id)
    assert ev["content"]["membership"] == "join"
    assert ev["content"]["join_authorised_via_users_server"] == alice.user_id
    # after leaving the allowed room, a new join is refused again
    assert (await bob.post(f"rooms/{q(room_id)}/leave", {})).status == 200
    assert (await bob.post(f"rooms/{q(space)}/leave", {})).status == 200
    async with Unchanged(alice, room_id):
        assert_error(await bob.post(f"rooms/{q(room_id)}/join", {}), 403, "M_FORBIDDEN")


async def test_restricted_join_with_invite(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(
        alice,
        {"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": []}}]},
    )
    await invite_and_join(alice, bob, room_id)
    ev = await member_event(alice, room_id, bob.user_id)
    assert "join_authorised_via_users_server" not in ev["content"]


# -- forget ---------------------------------------------------------------------------------


async def test_forget(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    r = await bob.post(f"rooms/{q(room_id)}/forget", {})
    assert_error(r, 400, "M_UNKNOWN")
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    r = await bob.post(f"rooms/{q(room_id)}/forget", {})
    assert r.status == 200 and r.body == {}
    assert room_id not in (await bob.get("sync")).body.get("rooms", {}).get("leave", {})
    # forgetting twice is fine; rejoining works
    r = await bob.post(f"rooms/{q(room_id)}/forget", {})
    assert r.status == 200 and r.body == {}, r
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    assert await membership(alice, room_id, bob.user_id) == "join"


async def test_forget_room_never_in(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    assert_error(await bob.post(f"rooms/{q(room_id)}/forget", {}), 404, "M_NOT_FOUND")
    assert await membership(alice, room_id, bob.user_id) is None


# -- r0 paths -------------------------------------------------------------------------------


async def test_membership_on_r0_paths(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    r0 = "/_matrix/client/r0"
    assert (await alice.post(f"{r0}/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})).status == 200
    assert (await bob.post(f"{r0}/join/{q(room_id)}", {})).status == 200
    assert (await bob.post(f"{r0}/rooms/{q(room_id)}/leave", {})).status == 200
    assert (await bob.post(f"{r0}/rooms/{q(room_id)}/forget", {})).status == 200


async def test_deactivation_leaves_rooms_and_rejects_invites(alice: ApiClient, bob: ApiClient) -> None:
    joined = await create_room(alice, {"preset": "public_chat"})
    assert (await bob.post(f"join/{q(joined)}", {})).status == 200
    invited_to = await create_room(alice)
    assert (await alice.post(f"rooms/{q(invited_to)}/invite", {"user_id": bob.user_id})).status == 200
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "correct horse battery"}
    r = await bob.post("account/deactivate", {"auth": auth})
    assert r.status == 200
    for room_id in (joined, invited_to):
        member = await alice.get(f"rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}")
        assert member["membership"] == "leave", room_id
    r = await alice.get(f"rooms/{q(joined)}/joined_members")
    assert list(r["joined"]) == [alice.user_id]

"""POST /createRoom over HTTP: room versions 10-12, presets, overrides,
initial state, invites, aliases and malformed requests."""

from __future__ import annotations

from typing import Any

import pytest

from ..helpers import ApiClient
from .room_helpers import create_room, q

VERSIONS = ["10", "11", "12"]


async def state_map(api: ApiClient, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    r = await api.get(f"rooms/{q(room_id)}/state")
    assert r.status == 200, r
    return {(e["type"], e["state_key"]): e for e in r.body}


async def joined_rooms(api: ApiClient) -> list[str]:
    r = await api.get("joined_rooms")
    assert r.status == 200, r
    return r["joined_rooms"]


async def all_events(api: ApiClient, room_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"rooms/{q(room_id)}/messages", params={"dir": "f", "limit": "1000"})
    assert r.status == 200, r
    return r["chunk"]


# -- room versions --------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_create_room_per_version(alice: ApiClient, version: str) -> None:
    room_id = await create_room(alice, {"room_version": version})
    state = await state_map(alice, room_id)
    create = state[("m.room.create", "")]
    assert create["content"]["room_version"] == version
    assert create["sender"] == alice.user_id
    pl = state[("m.room.power_levels", "")]["content"]
    if version == "10":
        assert create["content"]["creator"] == alice.user_id
    else:
        assert "creator" not in create["content"]
    if version == "12":
        # the room id is the create event's reference hash; no server part
        assert ":" not in room_id
        assert room_id[1:] == create["event_id"][1:]
        assert alice.user_id not in pl["users"]
    else:
        assert room_id.endswith(":test.local")
        assert pl["users"] == {alice.user_id: 100}
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert room_id in await joined_rooms(alice)
    # the creation events come in the order the spec gives
    types = [e["type"] for e in await all_events(alice, room_id)]
    assert types[:3] == ["m.room.create", "m.room.member", "m.room.power_levels"]


async def test_default_version_is_12(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    state = await state_map(alice, room_id)
    assert state[("m.room.create", "")]["content"]["room_version"] == "12"
    assert ":" not in room_id


@pytest.mark.parametrize("version", ["1", "9", "13", "org.example.custom", ""])
async def test_unknown_room_version(alice: ApiClient, version: str) -> None:
    r = await alice.post("createRoom", {"room_version": version})
    assert (r.status, r["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    assert await joined_rooms(alice) == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_creator_power_per_version(alice: ApiClient, bob: ApiClient, version: str) -> None:
    """v12 creators have unlimited power: they may demote a user at 100,
    which a creator at 100 (v10/v11) may not."""
    room_id = await create_room(alice, {"room_version": version, "preset": "public_chat"})
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    path = f"rooms/{q(room_id)}/state/m.room.power_levels"
    pl = (await alice.get(path)).body
    pl["users"][bob.user_id] = 100
    assert (await alice.put(path, pl)).status == 200
    pl["users"][bob.user_id] = 0
    r = await alice.put(path, pl)
    if version == "12":
        assert r.status == 200, r
        assert (await alice.get(path)).body["users"][bob.user_id] == 0
    else:
        assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
        assert (await alice.get(path)).body["users"][bob.user_id] == 100


async def test_v12_creator_cannot_be_listed_in_power_levels(alice: ApiClient) -> None:
    room_id = await create_room(alice, {"room_version": "12"})
    path = f"rooms/{q(room_id)}/state/m.room.power_levels"
    pl = (await alice.get(path)).body
    before = len(await all_events(alice, room_id))
    pl["users"][alice.user_id] = 100
    r = await alice.put(path, pl)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN"), r
    assert len(await all_events(alice, room_id)) == before
    assert alice.user_id not in (await alice.get(path)).body["users"]


# -- presets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, join_rule, history, guest",
    [
        ({"preset": "public_chat"}, "public", "shared", "forbidden"),
        ({"preset": "private_chat"}, "invite", "shared", "can_join"),
        ({"preset": "trusted_private_chat"}, "invite", "shared", "can_join"),
        ({"visibility": "public"}, "public", "shared", "forbidden"),
        ({"visibility": "private"}, "invite", "shared", "can_join"),
        ({}, "invite", "shared", "can_join"),
    ],
)
async def test_presets(alice: ApiClient, body: dict[str, Any], join_rule: str, history: str, guest: str) -> None:
    room_id = await create_room(alice, body)
    state = await state_map(alice, room_id)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": join_rule}
    assert state[("m.room.history_visibility", "")]["content"] == {"history_visibility": history}
    assert state[("m.room.guest_access", "")]["content"] == {"guest_access": guest}


@pytest.mark.parametrize("version", VERSIONS)
async def test_trusted_private_chat_gives_invitees_full_power(
    alice: ApiClient, bob: ApiClient, version: str
) -> None:
    room_id = await create_room(
        alice, {"room_version": version, "preset": "trusted_private_chat", "invite": [bob.user_id]}
    )
    state = await state_map(alice, room_id)
    if version == "12":
        # v12: invitees become additional creators, not power level entries
        assert state[("m.room.create", "")]["content"]["additional_creators"] == [bob.user_id]
        assert bob.user_id not in state[("m.room.power_levels", "")]["content"]["users"]
    else:
        assert state[("m.room.power_levels", "")]["content"]["users"][bob.user_id] == 100
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    # bob may now change the name, which needs power 50
    r = await bob.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "Bob's now"})
    assert r.status == 200, r


async def test_public_visibility_with_private_preset(alice: ApiClient) -> None:
    room_id = await create_room(alice, {"visibility": "public", "preset": "private_chat"})
    state = await state_map(alice, room_id)
    assert state[("m.room.join_rules", "")]["content"]["join_rule"] == "invite"


# -- content of the new room ----------------------------------------------------


async def test_power_level_content_override(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(
        alice,
        {
            "preset": "public_chat",
            "power_level_content_override": {"events_default": 20, "ban": 75, "events": {"m.room.topic": 10}},
        },
    )
    pl = (await state_map(alice, room_id))[("m.room.power_levels", "")]["content"]
    assert pl["events_default"] == 20 and pl["ban"] == 75
    assert pl["events"] == {"m.room.topic": 10}
    # a member at 0 cannot send messages (needs 20) ...
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    # ... and the creator still can
    r = await alice.put(f"rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"})
    assert r.status == 200


async def test_initial_state_name_topic_and_order(alice: ApiClient) -> None:
    room_id = await create_room(
        alice,
        {
            "preset": "private_chat",
            "name": "The name",
            "topic": "The topic",
            "initial_state": [
                {"type": "m.room.join_rules", "content": {"join_rule": "public"}},
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}},
                {"type": "org.example.custom", "state_key": "k", "content": {"v": 1}},
                # name and topic keys win over initial_state
                {"type": "m.room.name", "content": {"name": "overridden"}},
            ],
        },
    )
    state = await state_map(alice, room_id)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert state[("m.room.history_visibility", "")]["content"] == {"history_visibility": "joined"}
    assert state[("org.example.custom", "k")]["content"] == {"v": 1}
    assert state[("m.room.name", "")]["content"] == {"name": "The name"}
    topic = state[("m.room.topic", "")]["content"]
    assert topic["topic"] == "The topic"
    assert topic["m.topic"]["m.text"][0]["body"] == "The topic"
    # only one join_rules event (initial_state replaced the preset's)
    types = [e["type"] for e in await all_events(alice, room_id)]
    assert types.count("m.room.join_rules") == 1
    assert types.index("m.room.name") > types.index("org.example.custom")


async def test_creation_content(alice: ApiClient) -> None:
    room_id = await create_room(alice, {"creation_content": {"m.federate": False, "type": "m.space"}})
    create = (await state_map(alice, room_id))[("m.room.create", "")]["content"]
    assert create["m.federate"] is False and create["type"] == "m.space"


async def test_invite_list_and_is_direct(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"invite": [bob.user_id], "is_direct": True, "preset": "trusted_private_chat"})
    member = (await state_map(alice, room_id))[("m.room.member", bob.user_id)]
    assert member["content"]["membership"] == "invite"
    assert member["content"]["is_direct"] is True
    assert member["sender"] == alice.user_id
    r = await bob.get("sync")
    assert r.status == 200
    invite_state = r["rooms"]["invite"][room_id]["invite_state"]["events"]
    mine = [e for e in invite_state if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert mine and mine[0]["content"]["is_direct"] is True


async def test_invite_without_is_direct(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"invite": [bob.user_id]})
    member = (await state_map(alice, room_id))[("m.room.member", bob.user_id)]
    assert member["content"]["membership"] == "invite"
    assert "is_direct" not in member["content"]


async def test_invite_of_unknown_local_user(alice: ApiClient, bob: ApiClient) -> None:
    # The spec leaves this to the server. Refused as /invite refuses it (404),
    # checked before anything is made: no room, no invite stored for a name
    # someone may register later. (Synapse checks only the id's syntax here.)
    r = await alice.post("createRoom", {"invite": [bob.user_id, "@nobody:test.local"]})
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND", r
    assert "@nobody:test.local" in r["error"]
    assert await joined_rooms(alice) == []
    assert await joined_rooms(bob) == []
    r = await bob.get("sync")
    assert r.status == 200 and not r.body.get("rooms", {}).get("invite"), r
    # the same answer as /invite gives for that user
    room_id = await create_room(alice, {})
    r = await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": "@nobody:test.local"})
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND", r


# -- aliases --------------------------------------------------------------------


async def test_room_alias_name(alice: ApiClient, bob: ApiClient) -> None:
    r = await alice.post("createRoom", {"room_alias_name": "coffee", "preset": "public_chat"})
    assert r.status == 200, r
    room_id = r["room_id"]
    state = await state_map(alice, room_id)
    assert state[("m.room.canonical_alias", "")]["content"]["alias"] == "#coffee:test.local"
    # joinable by the alias
    r = await bob.post(f"join/{q('#coffee:test.local')}", {})
    assert r.status == 200 and r["room_id"] == room_id


async def test_room_alias_in_use(alice: ApiClient, bob: ApiClient) -> None:
    await create_room(alice, {"room_alias_name": "taken"})
    r = await bob.post("createRoom", {"room_alias_name": "taken"})
    assert (r.status, r["errcode"]) == (400, "M_ROOM_IN_USE")
    assert await joined_rooms(bob) == []


# The spec's grammar lets an alias localpart hold anything but ':' (and
# the request schema needs at least one character).
@pytest.mark.parametrize("name", ["has:colon", ""])
async def test_room_alias_name_invalid(alice: ApiClient, name: str) -> None:
    r = await alice.post("createRoom", {"room_alias_name": name})
    assert r.status == 400, r
    assert r["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON")
    assert await joined_rooms(alice) == []


# -- malformed requests ------------------------------------------------------------


async def test_create_room_not_json(alice: ApiClient) -> None:
    r = await alice.request("POST", "createRoom", data=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")
    assert await joined_rooms(alice) == []


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ([], "M_BAD_JSON"),
        ({"preset": "bogus"}, "M_BAD_JSON"),
        ({"visibility": "secret"}, "M_BAD_JSON"),
        ({"name": 5}, "M_BAD_JSON"),
        ({"room_version": 12}, "M_BAD_JSON"),
        ({"invite": "@bob:test.local"}, "M_BAD_JSON"),
        ({"initial_state": [{"type": "m.room.topic"}]}, "M_MISSING_PARAM"),
        ({"initial_state": [{"content": {}}]}, "M_MISSING_PARAM"),
        ({"power_level_content_override": []}, "M_BAD_JSON"),
        ({"is_direct": "yes"}, "M_BAD_JSON"),
    ],
)
async def test_create_room_bad_json(alice: ApiClient, body: Any, errcode: str) -> None:
    r = await alice.post("createRoom", body)
    assert (r.status, r["errcode"]) == (400, errcode), r
    assert await joined_rooms(alice) == []


async def test_create_room_invalid_invitee(alice: ApiClient) -> None:
    r = await alice.post("createRoom", {"invite": ["not-a-user-id"]})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    assert await joined_rooms(alice) == []


async def test_create_room_bad_power_levels_override(alice: ApiClient) -> None:
    r = await alice.post("createRoom", {"power_level_content_override": {"ban": "fifty"}})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN"), r
    assert await joined_rooms(alice) == []


async def test_create_room_needs_auth(api: ApiClient) -> None:
    r = await api.post("createRoom", {}, token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_create_room_empty_body_and_r0(alice: ApiClient) -> None:
    r = await alice.request("POST", "/_matrix/client/r0/createRoom", data=b"")
    assert r.status == 200, r
    assert r["room_id"] in await joined_rooms(alice)

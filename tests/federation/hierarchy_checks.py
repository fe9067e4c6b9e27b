"""Space hierarchies across two servers, for the two-server and the
Synapse tests: a space on one server lists a sub-space only the other
server holds; the first server's client /hierarchy asks the other's
federation /hierarchy for it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from ..conftest import HAVE_SPEC
from ..integration.processes import User
from ..spec_validation import validate_response
from .peers import FederatingServer, signed_federation_get

SPACE = {"creation_content": {"type": "m.space"}}


async def client_hierarchy(user: User, room_id: str, query: str = "") -> tuple[int, Any]:
    """The client /hierarchy of a room (validated against the spec)."""
    path = f"/_matrix/client/v1/rooms/{quote(room_id)}/hierarchy"
    async with user.session.get(user.base_url + path + (f"?{query}" if query else ""),
                                headers={"Authorization": f"Bearer {user.token}"}) as r:
        status, body = r.status, await r.json(content_type=None)
    if HAVE_SPEC:
        validate_response("GET", path, status, body)
    return status, body


async def new_room(user: User, name: str, **body: Any) -> str:
    status, room = await user.call("POST", "createRoom", {"name": name, **body})
    assert status == 200, room
    return str(room["room_id"])


async def add_child(user: User, space: str, child: str, via: str, **content: Any) -> None:
    status, body = await user.call("PUT", f"rooms/{quote(space)}/state/m.space.child/{quote(child)}",
                                   {"via": [via], **content})
    assert status == 200, body


async def sub_space_with_children(owner: User, owner_server: str) -> dict[str, str]:
    """On the owner's server: a public sub-space with a public child and
    an invite-only one. Names -> room ids."""
    rooms = {
        "Sub": await new_room(owner, "Sub", preset="public_chat", **SPACE),
        "Open": await new_room(owner, "Open", preset="public_chat"),
        "Closed": await new_room(owner, "Closed", preset="private_chat"),
    }
    await add_child(owner, rooms["Sub"], rooms["Open"], owner_server, order="1")
    await add_child(owner, rooms["Sub"], rooms["Closed"], owner_server, order="2")
    return rooms


async def check_remote_sub_space(asker: User, asker_server: str, owner: User, owner_server: str,
                                 log: Any = None, *, invited: bool = False) -> dict[str, str]:
    """The asker's space lists a room of its own server and the owner's
    sub-space: the asker's /hierarchy shows its space, its room, the
    sub-space and the sub-space's public child (from the owner's server's
    federation /hierarchy), never the invite-only child unless the owner
    ``invited`` the asker to it; suggested_only and max_depth hold for the
    remote part too."""
    rooms = await sub_space_with_children(owner, owner_server)
    if invited:
        status, body = await owner.call("POST", f"rooms/{quote(rooms['Closed'])}/invite", {"user_id": asker.user_id})
        assert status == 200, body
    rooms["Top"] = await new_room(asker, "Top", preset="public_chat", **SPACE)
    rooms["Here"] = await new_room(asker, "Here", preset="public_chat")
    await add_child(asker, rooms["Top"], rooms["Here"], asker_server, order="1")
    await add_child(asker, rooms["Top"], rooms["Sub"], owner_server, order="2", suggested=True)

    status, body = await client_hierarchy(asker, rooms["Top"])
    assert status == 200, (body, log() if log else "")
    expected = ["Top", "Here", "Sub", "Open"] + (["Closed"] if invited else [])
    assert [r.get("name") for r in body["rooms"]] == expected, (body, log() if log else "")
    sub = next(r for r in body["rooms"] if r["room_id"] == rooms["Sub"])
    assert (sub["room_type"], sub["join_rule"], sub["num_joined_members"]) == ("m.space", "public", 1), sub
    assert [e["state_key"] for e in sub["children_state"]] == [rooms["Open"], rooms["Closed"]], sub
    assert "next_batch" not in body
    status, body = await client_hierarchy(asker, rooms["Top"], "suggested_only=true")
    assert status == 200 and [r.get("name") for r in body["rooms"]] == ["Top", "Sub"], body
    status, body = await client_hierarchy(asker, rooms["Top"], "max_depth=1&limit=2")
    assert status == 200 and [r.get("name") for r in body["rooms"]] == ["Top", "Here"], body
    status, body = await client_hierarchy(asker, rooms["Top"], f"max_depth=1&limit=2&from={body['next_batch']}")
    assert status == 200 and [r.get("name") for r in body["rooms"]] == ["Sub"], body
    return rooms


async def check_federation_answer(http: aiohttp.ClientSession, server: FederatingServer, origin: FederatingServer,
                                  rooms: dict[str, str]) -> None:
    """``origin`` asks ``server`` (signed) for the hierarchy of a sub-space
    of ``sub_space_with_children``: the space with both child events, the
    public child in ``children``, the invite-only one in
    ``inaccessible_children``; the invite-only room itself and a room it
    does not know are 404."""
    async def ask(room_id: str, query: str = "") -> tuple[int, Any]:
        path = f"/_matrix/federation/v1/hierarchy/{quote(room_id)}" + query
        status, body = await signed_federation_get(http, server.fed_url, path, origin=origin.server_name,
                                                   destination=server.server_name, key=origin.signing_key())
        if HAVE_SPEC:
            validate_response("GET", path.split("?")[0], status, body, api="server-server")
        return status, body

    status, body = await ask(rooms["Sub"])
    assert status == 200, body
    assert body["room"]["room_id"] == rooms["Sub"] and body["room"]["room_type"] == "m.space", body
    assert [e["state_key"] for e in body["room"]["children_state"]] == [rooms["Open"], rooms["Closed"]], body
    assert [r["room_id"] for r in body["children"]] == [rooms["Open"]], body
    assert body["inaccessible_children"] == [rooms["Closed"]], body
    status, body = await ask(rooms["Sub"], "?suggested_only=true")
    assert status == 200 and body["room"]["children_state"] == [] and body["children"] == [], body
    for room_id in (rooms["Closed"], f"!nosuchroom:{server.server_name}"):
        status, body = await ask(room_id)
        assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body


async def check_hierarchy_both_ways(http: aiohttp.ClientSession, a: FederatingServer, b: FederatingServer,
                                    alice: User, bob: User) -> None:
    """Each server's user sees the other's sub-space in its own space (and
    an invite-only room of it once invited); a's federation answer as b."""
    await check_remote_sub_space(alice, a.server_name, bob, b.server_name, lambda: a.process.stderr()[-3000:],
                                 invited=True)
    rooms = await check_remote_sub_space(bob, b.server_name, alice, a.server_name,
                                         lambda: b.process.stderr()[-3000:])
    await check_federation_answer(http, a, b, rooms)

"""Orders users see come out in code point order (Python's sorted), not in
the database's text order: CockroachDB sorts text byte-wise, PostgreSQL by
its collation, so ORDER BY on text would answer differently per engine.
Names mix punctuation, digits and letters, which locale collations order
differently from code points (this machine's PostgreSQL has only C
locales, so these tests pin the order; they cannot show a locale here)."""

from __future__ import annotations

from typing import Callable

from ..helpers import ApiClient
from .room_helpers import create_room, invite_and_join, q

NAMES = ["x.b", "x_a", "xa", "x-c", "x1", "x=z"]


async def test_devices_listed_in_code_point_order(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("devlister", device_id="Zulu")
    for device_id in ("alpha", "Bravo", "_charlie", "ähnlich", "1delta"):
        other = new_client()
        r = await other.post(
            "login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "devlister"},
             "password": "correct horse battery", "device_id": device_id},
            token=None,
        )
        assert r.status == 200, r
    r = await api.get("devices")
    ids = [d["device_id"] for d in r["devices"]]
    assert ids == sorted(ids) and len(ids) == 6
    assert ids == ["1delta", "Bravo", "Zulu", "_charlie", "alpha", "ähnlich"]


async def test_heroes_and_directory_in_code_point_order(
    api: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    await api.register("owner")
    room = await create_room(api, {"preset": "public_chat"})
    clients = []
    for name in NAMES:
        c = new_client()
        await c.register(name)
        await invite_and_join(api, c, room)
        clients.append(c)
    user_ids = sorted(str(c.user_id) for c in clients)
    r = await api.get("sync")
    assert r["rooms"]["join"][room]["summary"]["m.heroes"] == user_ids[:5]
    # the directory: equal rank (all match "x" at the start), so the order
    # and which ones a limit keeps follow the user ids
    r = await api.post("user_directory/search", {"search_term": "x", "limit": 4})
    assert [u["user_id"] for u in r["results"]] == user_ids[:4] and r["limited"] is True
    # room aliases of a room, in order
    for alias in ("_b", "a", "B", "a.c"):
        r = await api.put(f"directory/room/{q('#' + alias + ':test.local')}", {"room_id": room})
        assert r.status == 200, r
    r = await api.get(f"rooms/{q(room)}/aliases")
    assert r["aliases"] == sorted(f"#{a}:test.local" for a in ("_b", "a", "B", "a.c"))

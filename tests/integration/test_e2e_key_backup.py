"""Server-side key backup: versions (create, get, update, delete) and keys
(all, per room, per session) with M_WRONG_ROOM_KEYS_VERSION, etag, count,
and the spec's rule for which session key is kept."""

from __future__ import annotations

from typing import Any

from ..helpers import ApiClient
from .room_helpers import q

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test.local"


def _session(first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "a") -> dict[str, Any]:
    return {"first_message_index": first, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag}}


async def _create(api: ApiClient, public_key: str = "pk") -> str:
    r = await api.post("room_keys/version", {"algorithm": ALG, "auth_data": {"public_key": public_key}})
    assert r.status == 200, r
    return str(r["version"])


async def test_versions(alice: ApiClient, bob: ApiClient) -> None:
    r = await alice.get("room_keys/version")
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND"
    v1 = await _create(alice)
    r = await alice.get("room_keys/version")
    assert r.status == 200 and r["version"] == v1 and r["count"] == 0 and r["algorithm"] == ALG
    v2 = await _create(alice, "pk2")
    assert v2 != v1
    assert (await alice.get("room_keys/version"))["version"] == v2
    assert (await alice.get(f"room_keys/version/{v1}"))["auth_data"] == {"public_key": "pk"}
    assert (await bob.get("room_keys/version")).status == 404  # per user
    r = await alice.put(f"room_keys/version/{v2}", {"algorithm": ALG, "auth_data": {"public_key": "new"},
                                                    "version": v2})
    assert r.status == 200, r
    assert (await alice.get("room_keys/version"))["auth_data"] == {"public_key": "new"}
    r = await alice.put(f"room_keys/version/{v2}", {"algorithm": ALG, "auth_data": {}, "version": v1})
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"
    assert (await alice.delete(f"room_keys/version/{v2}")).status == 200
    assert (await alice.get("room_keys/version"))["version"] == v1
    assert (await alice.get(f"room_keys/version/{v2}")).status == 404
    assert (await alice.delete(f"room_keys/version/{v2}")).status == 404
    assert (await alice.get("room_keys/version/nonsense")).status == 404
    v3 = await _create(alice)
    assert v3 not in (v1, v2)  # a deleted version's number is not reused
    r = await alice.post("room_keys/version", {"algorithm": "m.other", "auth_data": {}})
    assert r.status == 400
    assert (await alice.get("/_matrix/client/r0/room_keys/version")).status == 200


async def test_keys_round_trip(alice: ApiClient) -> None:
    v = await _create(alice)
    r = await alice.put(f"room_keys/keys/{q(ROOM)}/s1", _session(), params={"version": v})
    assert r.status == 200 and r["count"] == 1, r
    etag1 = r["etag"]
    r = await alice.put(f"room_keys/keys/{q(ROOM)}", {"sessions": {"s2": _session(), "s3": _session()}},
                        params={"version": v})
    assert r["count"] == 3 and r["etag"] != etag1
    r = await alice.put("room_keys/keys", {"rooms": {"!other:test.local": {"sessions": {"s4": _session()}}}},
                        params={"version": v})
    assert r["count"] == 4
    info = await alice.get("room_keys/version")
    assert info["count"] == 4 and info["etag"] == r["etag"]
    everything = await alice.get("room_keys/keys", params={"version": v})
    assert set(everything["rooms"]) == {ROOM, "!other:test.local"}
    assert set(everything["rooms"][ROOM]["sessions"]) == {"s1", "s2", "s3"}
    room = await alice.get(f"room_keys/keys/{q(ROOM)}", params={"version": v})
    assert set(room["sessions"]) == {"s1", "s2", "s3"}
    one = await alice.get(f"room_keys/keys/{q(ROOM)}/s1", params={"version": v})
    assert one.body == _session()
    assert (await alice.get(f"room_keys/keys/{q(ROOM)}/nosuch", params={"version": v})).status == 404
    r = await alice.delete(f"room_keys/keys/{q(ROOM)}/s1", params={"version": v})
    assert r.status == 200 and r["count"] == 3
    r = await alice.delete(f"room_keys/keys/{q(ROOM)}", params={"version": v})
    assert r["count"] == 1
    r = await alice.delete("room_keys/keys", params={"version": v})
    assert r["count"] == 0


async def test_wrong_version(alice: ApiClient) -> None:
    old = await _create(alice)
    current = await _create(alice)
    r = await alice.put(f"room_keys/keys/{q(ROOM)}/s1", _session(), params={"version": old})
    assert r.status == 403 and r["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" and r["current_version"] == current
    r = await alice.get("room_keys/keys", params={"version": "999"})
    assert r.status == 404
    r = await alice.put(f"room_keys/keys/{q(ROOM)}/s1", _session())
    assert r.status == 400 and r["errcode"] == "M_MISSING_PARAM"
    await alice.delete(f"room_keys/version/{current}")
    await alice.delete(f"room_keys/version/{old}")
    r = await alice.put(f"room_keys/keys/{q(ROOM)}/s1", _session(), params={"version": old})
    assert r.status == 404


async def test_better_key_wins(alice: ApiClient) -> None:
    v = await _create(alice)
    path = f"room_keys/keys/{q(ROOM)}/s"

    async def stored() -> str:
        return str((await alice.get(path, params={"version": v}))["session_data"]["ciphertext"])

    await alice.put(path, _session(first=5, forwarded=2, tag="base"), params={"version": v})
    steps = [
        (_session(first=6, forwarded=0, tag="later-index"), "base"),  # higher index loses
        (_session(first=5, forwarded=3, tag="more-forwarded"), "base"),  # more forwarded loses
        (_session(first=5, forwarded=1, tag="less-forwarded"), "less-forwarded"),
        (_session(first=2, forwarded=9, tag="earlier"), "earlier"),
        (_session(first=9, forwarded=9, verified=True, tag="verified"), "verified"),  # verified beats all
        (_session(first=0, forwarded=0, verified=False, tag="unverified"), "verified"),
    ]
    for body, expected in steps:
        r = await alice.put(path, body, params={"version": v})
        assert r.status == 200
        assert await stored() == expected, body


async def test_bad_bodies(alice: ApiClient) -> None:
    v = await _create(alice)
    path = f"room_keys/keys/{q(ROOM)}/s"
    for body in [
        {}, {"first_message_index": -1, "forwarded_count": 0, "is_verified": False, "session_data": {}},
        {**_session(), "session_data": "x"}, {**_session(), "session_data": {"n": 10**30}},
        {**_session(), "first_message_index": 10**30},
    ]:
        r = await alice.put(path, body, params={"version": v})
        assert r.status == 400, (body, r)
    r = await alice.put("room_keys/keys/not-a-room/s", _session(), params={"version": v})
    assert r.status == 400
    assert (await alice.get("room_keys/version"))["count"] == 0

"""Cross-signing: /keys/device_signing/upload (UIA when replacing a master
key), /keys/signatures/upload (signatures verified, per-key failures) and
the cross-signing keys in /keys/query (user-signing only to its owner)."""

from __future__ import annotations

from typing import Any

from ..helpers import ApiClient
from .e2e_helpers import CrossSigningKey, DeviceKeys
from .room_helpers import create_room, invite_and_join

PASSWORD = "correct horse battery"


def _keys(user_id: str) -> tuple[CrossSigningKey, CrossSigningKey, CrossSigningKey]:
    return (CrossSigningKey(user_id, "master"), CrossSigningKey(user_id, "self_signing"),
            CrossSigningKey(user_id, "user_signing"))


def _upload_body(master: CrossSigningKey, ssk: CrossSigningKey, usk: CrossSigningKey) -> dict[str, Any]:
    return {
        "master_key": master.unsigned(),
        "self_signing_key": master.sign(ssk.unsigned()),
        "user_signing_key": master.sign(usk.unsigned()),
    }


def _password_auth(api: ApiClient, session: str) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": api.user_id},
            "password": PASSWORD, "session": session}


async def test_upload_and_query(alice: ApiClient, bob: ApiClient) -> None:
    master, ssk, usk = _keys(alice.user_id)
    body = _upload_body(master, ssk, usk)
    r = await alice.post("keys/device_signing/upload", body)
    assert r.status == 200, r
    # the same keys again need no auth (idempotent)
    assert (await alice.post("keys/device_signing/upload", body)).status == 200
    mine = await alice.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert mine["master_keys"][alice.user_id]["keys"] == master.unsigned()["keys"]
    assert mine["self_signing_keys"][alice.user_id]["keys"] == ssk.unsigned()["keys"]
    assert mine["user_signing_keys"][alice.user_id]["keys"] == usk.unsigned()["keys"]
    theirs = await bob.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert alice.user_id in theirs["master_keys"] and alice.user_id in theirs["self_signing_keys"]
    assert alice.user_id not in theirs.body.get("user_signing_keys", {})


async def test_replacing_the_master_key_needs_the_password(alice: ApiClient) -> None:
    assert (await alice.post("keys/device_signing/upload", _upload_body(*_keys(alice.user_id)))).status == 200
    new_master, new_ssk, new_usk = _keys(alice.user_id)
    body = _upload_body(new_master, new_ssk, new_usk)
    # (the spec's file lists no 401 for this endpoint: a UIA body is not validated)
    r = await alice.post("keys/device_signing/upload", body, validate=False)
    assert r.status == 401 and r["flows"] == [{"stages": ["m.login.password"]}], r
    session = r["session"]
    wrong = {**_password_auth(alice, session), "password": "wrong"}
    r = await alice.post("keys/device_signing/upload", {**body, "auth": wrong}, validate=False)
    assert r.status == 401 and r["errcode"] == "M_FORBIDDEN"
    r = await alice.post("keys/device_signing/upload", {**body, "auth": _password_auth(alice, session)})
    assert r.status == 200, r
    q = await alice.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert q["master_keys"][alice.user_id]["keys"] == new_master.unsigned()["keys"]


async def test_bad_cross_signing_uploads(alice: ApiClient) -> None:
    master, ssk, usk = _keys(alice.user_id)
    other = CrossSigningKey(alice.user_id, "master")
    cases = [
        ({"self_signing_key": master.sign(ssk.unsigned())}, 400, "M_MISSING_PARAM"),  # no master anywhere
        ({"master_key": master.unsigned(), "self_signing_key": other.sign(ssk.unsigned())}, 400,
         "M_INVALID_SIGNATURE"),
        ({"master_key": master.unsigned(), "self_signing_key": ssk.unsigned()}, 400, "M_INVALID_SIGNATURE"),
        ({"master_key": {**master.unsigned(), "user_id": "@bob:test.local"}}, 400, "M_BAD_JSON"),
        ({"master_key": {**master.unsigned(), "usage": ["self_signing"]}}, 400, "M_BAD_JSON"),
        ({"master_key": {**master.unsigned(), "keys": {"ed25519:abc": "def"}}}, 400, "M_BAD_JSON"),
        ({"master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {master.key_id: master.public,
                                                                                 "ed25519:x": "x"}}}, 400,
         "M_BAD_JSON"),
    ]
    for body, status, errcode in cases:
        r = await alice.post("keys/device_signing/upload", body)
        assert (r.status, r.body.get("errcode")) == (status, errcode), (body, r)
    q = await alice.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert q.body.get("master_keys", {}) == {}
    # a key whose public part is one of the user's device ids
    clash = {"user_id": alice.user_id, "usage": ["master"], "keys": {f"ed25519:{alice.device_id}": alice.device_id}}
    r = await alice.post("keys/device_signing/upload", {"master_key": clash})
    assert r.status == 403 and r["errcode"] == "M_FORBIDDEN", r


async def test_signatures_upload(alice: ApiClient, bob: ApiClient) -> None:
    room = await create_room(alice)
    await invite_and_join(alice, bob, room)
    dev = DeviceKeys(alice)
    device_keys = dev.device_keys()
    await dev.upload(device_keys=device_keys)
    master, ssk, usk = _keys(alice.user_id)
    await alice.post("keys/device_signing/upload", _upload_body(master, ssk, usk))
    bob_master, bob_ssk, bob_usk = _keys(bob.user_id)
    await bob.post("keys/device_signing/upload", _upload_body(bob_master, bob_ssk, bob_usk))
    since = (await bob.get("sync"))["next_batch"]

    signed_device = ssk.sign(device_keys)  # self-signing key signs alice's device
    signed_bob = usk.sign(bob_master.unsigned())  # user-signing key signs bob's master key
    bad = ssk.sign(device_keys)
    bad["signatures"][alice.user_id][ssk.key_id] = "A" * 86
    r = await alice.post("keys/signatures/upload", {
        alice.user_id: {alice.device_id: signed_device, "NOSUCHDEVICE": signed_device},
        bob.user_id: {bob_master.public: signed_bob},
    })
    assert r.status == 200, r
    assert list(r["failures"].get(alice.user_id, {})) == ["NOSUCHDEVICE"], r
    assert bob.user_id not in r["failures"]
    r = await alice.post("keys/signatures/upload", {alice.user_id: {alice.device_id: bad}})
    assert r["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    # signed by a key not allowed to sign this (the master key signing a device), or a changed object
    wrong_signer = master.sign(device_keys)
    tampered = ssk.sign({**device_keys, "algorithms": ["x"]})
    r = await alice.post("keys/signatures/upload", {alice.user_id: {alice.device_id: wrong_signer}})
    assert r["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    r = await alice.post("keys/signatures/upload", {alice.user_id: {alice.device_id: tampered}})
    assert r["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"

    # bob sees the self-signing signature on alice's device, not alice's signature of his key
    q = await bob.post("keys/query", {"device_keys": {alice.user_id: [], bob.user_id: []}})
    sigs = q["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert sigs[ssk.key_id] == signed_device["signatures"][alice.user_id][ssk.key_id]
    assert alice.user_id not in q["master_keys"][bob.user_id].get("signatures", {})
    q = await alice.post("keys/query", {"device_keys": {bob.user_id: []}})
    assert usk.key_id in q["master_keys"][bob.user_id]["signatures"][alice.user_id]
    s = await bob.get("sync", params={"since": since})
    assert alice.user_id in s["device_lists"]["changed"]

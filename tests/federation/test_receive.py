"""Inbound federation transactions (``PUT /send/{txnId}``) received by a
coffeechat-home process over TLS, from a second server run by the test
(``Origin``, receive_helpers.py).

Good PDUs show in our users' /sync; a bad signature, a wrong content hash
(stored redacted), an event the auth rules refuse, an unknown room, a join
claiming one of our users authorised it (without our signature), repeated
and oversized transactions are answered per spec, never with a 500."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from coffeechat_home.federation.client import RemoteError
from coffeechat_home.protocol.signing import generate_signing_key

from ..integration.processes import User, wait_until
from .peers import FederatingServer
from .receive_helpers import Origin, Room, _state_content, _sync_until, _true, _txn, room_with_remote_member

pytestmark = pytest.mark.federation


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_pdus_and_edus_from_another_server(
    setup: tuple[FederatingServer, Origin, aiohttp.ClientSession], version: str
) -> None:
    ours, origin, http = setup
    alice = await User(http, ours.client_url).register("alice")
    status, body = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
    assert status == 200, body
    room = Room(ours, body["room_id"], version)
    remy = f"@remy:{origin.name}"
    since = (await alice.sync())["next_batch"]

    # remy joins (a public room: the join is allowed by the state before it)
    join = origin.build(version, room.room_id, remy,
                        {"type": "m.room.member", "state_key": remy, "content": {"membership": "join"}},
                        await room.head(), await room.state())
    answer = await origin.send(ours.server_name, [dict(join.pdu)])
    assert answer == {"pdus": {join.event_id: {}}}, answer
    msg = origin.build(version, room.room_id, remy,
                       {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hello from afar"}},
                       [(join.event_id, join.depth)], await room.state())
    txn = f"msg{next(_txn)}"
    assert await origin.send(ours.server_name, [dict(msg.pdu)], txn=txn) == {"pdus": {msg.event_id: {}}}
    since, seen = await _sync_until(alice, since, room.room_id, {join.event_id, msg.event_id})
    assert [e["event_id"] for e in seen] == [join.event_id, msg.event_id]
    assert seen[1]["content"]["body"] == "hello from afar"
    assert (await room.state())[("m.room.member", remy)] == join.event_id

    # the same txn id again, with another body: the first answer, nothing processed
    other = origin.build(version, room.room_id, remy,
                         {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "replayed"}},
                         [(msg.event_id, msg.depth)], await room.state())
    assert await origin.send(ours.server_name, [dict(other.pdu)], txn=txn) == {"pdus": {msg.event_id: {}}}
    assert await room.stored(other.event_id) is None
    # the answer was written by the database transaction that stored the event
    # (it commits exactly when the event does: no commit of its own)
    assert await _txn_writer(ours, origin.name, txn) == await _event_writer(ours, msg.event_id)

    # typing and a read receipt from remy show in alice's /sync
    loner = f"@loner:{origin.name}"
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": room.room_id, "user_id": remy, "typing": True}},
        {"edu_type": "m.receipt", "content": {room.room_id: {"m.read": {
            remy: {"event_ids": [msg.event_id], "data": {"ts": origin.ts}}}}}},
        {"edu_type": "m.unknown.thing", "content": {}},
        # a user of another server: not the origin's to report
        {"edu_type": "m.typing", "content": {"room_id": room.room_id, "user_id": "@x:elsewhere", "typing": True}},
        # the origin's user who is not in the room
        {"edu_type": "m.typing", "content": {"room_id": room.room_id, "user_id": loner, "typing": True}},
        {"edu_type": "m.receipt", "content": {room.room_id: {"m.read": {
            loner: {"event_ids": [msg.event_id], "data": {"ts": origin.ts}}}}}},
    ]
    assert await origin.send(ours.server_name, [], edus) == {"pdus": {}}
    ephemeral: list[dict[str, Any]] = []
    for _ in range(10):
        body = await alice.sync(since, timeout_ms=3000)
        since = body["next_batch"]
        ephemeral += body.get("rooms", {}).get("join", {}).get(room.room_id, {}).get("ephemeral", {}).get("events", [])
        types = {e["type"] for e in ephemeral}
        if {"m.typing", "m.receipt"} <= types:
            break
    typing = [e for e in ephemeral if e["type"] == "m.typing"]
    assert typing and typing[-1]["content"]["user_ids"] == [remy]
    receipts = [e for e in ephemeral if e["type"] == "m.receipt"]
    assert receipts and set(receipts[-1]["content"][msg.event_id]["m.read"]) == {remy}, receipts

    if version == "12":  # not room-version specific
        await _ephemeral_both_ways(ours, origin, alice, room.room_id, msg.event_id, since)

    # a message whose parent we never saw: fetched from the origin
    hidden = origin.build(version, room.room_id, remy,
                          {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "gap"}},
                          [(msg.event_id, msg.depth)], await room.state())
    after = origin.build(version, room.room_id, remy,
                         {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "after the gap"}},
                         [(hidden.event_id, hidden.depth)], await room.state())
    assert await origin.send(ours.server_name, [dict(after.pdu)]) == {"pdus": {after.event_id: {}}}
    assert origin.missing_requests and origin.missing_requests[-1]["latest_events"] == [after.event_id]
    since, seen = await _sync_until(alice, since, room.room_id, {hidden.event_id, after.event_id})
    assert [e["content"]["body"] for e in seen] == ["gap", "after the gap"]
    assert await room.head() == [(after.event_id, after.depth)]


async def _ephemeral_both_ways(ours: FederatingServer, origin: Origin, alice: User, room_id: str,
                               event_id: str, since: str) -> None:
    """Our user's typing, public receipt and presence reach the origin (remy
    is in the room), her private receipt never does; the origin's presence
    of its own user who shares the room shows in her /sync, presence of
    anyone else's user or of a user sharing no room with ours is dropped."""
    rid, me = quote(room_id), quote(alice.user_id)

    def typing() -> list[Any]:
        return [c for c in origin.edus("m.typing") if c["user_id"] == alice.user_id]

    async def until(pred: Any) -> None:
        assert await wait_until(pred, 30, interval=0.05), (origin.received, ours.process.stderr()[-3000:])

    assert (await alice.call("PUT", f"rooms/{rid}/typing/{me}", {"typing": True, "timeout": 20000}))[0] == 200
    await until(lambda: _true(typing()))
    assert (await alice.call("POST", f"rooms/{rid}/receipt/m.read.private/{quote(event_id)}", {}))[0] == 200
    assert (await alice.call("PUT", f"rooms/{rid}/typing/{me}", {"typing": False}))[0] == 200
    assert (await alice.call("POST", f"rooms/{rid}/receipt/m.read/{quote(event_id)}", {}))[0] == 200
    await until(lambda: _true([r for r in origin.edus("m.receipt") if "m.read" in r.get(room_id, {})]))
    assert typing() == [{"room_id": room_id, "user_id": alice.user_id, "typing": True},
                        {"room_id": room_id, "user_id": alice.user_id, "typing": False}]
    [receipt] = origin.edus("m.receipt")  # queued after the private one: that one never left
    assert list(receipt) == [room_id] and list(receipt[room_id]) == ["m.read"], receipt
    assert receipt[room_id]["m.read"][alice.user_id]["event_ids"] == [event_id], receipt
    assert isinstance(receipt[room_id]["m.read"][alice.user_id]["data"]["ts"], int)
    assert b"m.read.private" not in orjson.dumps(origin.received)
    assert all(o == ours.server_name for o, _ in origin.received)
    status, _ = await alice.call("PUT", f"presence/{me}/status", {"presence": "unavailable", "status_msg": "brb"})
    assert status == 200
    await until(lambda: _true(origin.edus("m.presence")))
    [presence] = origin.edus("m.presence")
    assert presence["push"][0]["user_id"] == alice.user_id, presence
    assert (presence["push"][0]["presence"], presence["push"][0]["status_msg"]) == ("unavailable", "brb")

    remy, loner = f"@remy:{origin.name}", f"@loner:{origin.name}"
    push = [{"user_id": u, "presence": "online", "status_msg": "afar", "last_active_ago": 1000}
            for u in ("@x:elsewhere", loner, remy)]
    assert await origin.send(ours.server_name, [], [{"edu_type": "m.presence", "content": {"push": push}}]) == {
        "pdus": {}}
    seen: list[Any] = []
    for _ in range(10):
        body = await alice.sync(since, timeout_ms=3000)
        since = body["next_batch"]
        seen += [e for e in body.get("presence", {}).get("events", []) if e["sender"] == remy]
        if seen:
            break
    assert seen and seen[-1]["content"]["presence"] == "online" and seen[-1]["content"]["status_msg"] == "afar"
    assert seen[-1]["content"]["last_active_ago"] >= 1000, seen
    rows = await ours.db_fetch("SELECT user_id FROM presence WHERE user_id <> $1", alice.user_id)
    assert [r["user_id"] for r in rows] == [remy]


async def _txn_writer(ours: FederatingServer, origin: str, txn_id: str) -> str:
    """The PostgreSQL transaction that wrote a transaction's answer ("": none)."""
    rows = await ours.db_fetch(
        "SELECT xmin::TEXT AS x FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2", origin, txn_id)
    return str(rows[0]["x"]) if rows else ""


async def _event_writer(ours: FederatingServer, event_id: str) -> str:
    """The PostgreSQL transaction that stored an event ("": not stored)."""
    rows = await ours.db_fetch("SELECT xmin::TEXT AS x FROM events WHERE event_id = $1", event_id)
    return str(rows[0]["x"]) if rows else ""


async def test_bad_pdus_refused(setup: tuple[FederatingServer, Origin, aiohttp.ClientSession]) -> None:
    ours, origin, http = setup
    version = "11"
    alice, room, remy, join, since, state, head = await room_with_remote_member(ours, origin, http, version)

    # 1. signed by a key the origin does not publish (same key id)
    impostor = generate_signing_key("o1")
    good_key, origin.key = origin.key, impostor
    forged = origin.build(version, room.room_id, remy,
                          {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "forged"}}, head, state)
    origin.key = good_key
    # 2. content changed after signing: the hash fails, kept redacted
    tampered_ev = origin.build(version, room.room_id, remy,
                               {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "original"}},
                               head, state)
    tampered = orjson.loads(orjson.dumps(tampered_ev.pdu))
    tampered["content"]["body"] = "tampered"
    # 3. remy (power 0) changes the power levels: refused by the auth rules
    power = await _state_content(room, ("m.room.power_levels", ""))
    power["users"][remy] = 100
    coup = origin.build(version, room.room_id, remy,
                        {"type": "m.room.power_levels", "state_key": "", "content": power}, head, state)
    # 4. a room we do not know
    unknown = dict(coup.pdu, room_id=f"!nosuchroom:{origin.name}")
    # 5. a join claiming alice authorised it (a restricted join), without our
    # signature: the authorising server's signature is required
    rita = f"@rita:{origin.name}"
    claimed = origin.build(version, room.room_id, rita, {
        "type": "m.room.member", "state_key": rita,
        "content": {"membership": "join", "join_authorised_via_users_server": alice.user_id}}, head, state)

    answer = await origin.send(ours.server_name, [dict(forged.pdu), tampered, dict(coup.pdu), unknown,
                                                  dict(claimed.pdu)])
    results = answer["pdus"]
    assert "error" in results[forged.event_id], answer
    assert results[tampered_ev.event_id] == {}, answer
    assert "error" in results[coup.event_id], answer
    assert "not signed by " + ours.server_name in results[claimed.event_id]["error"], answer
    assert set(results) == {forged.event_id, tampered_ev.event_id, coup.event_id, claimed.event_id}, answer

    assert await room.stored(forged.event_id) is None
    assert await room.stored(claimed.event_id) is None and ("m.room.member", rita) not in await room.state()
    row = await room.stored(tampered_ev.event_id)
    assert row is not None and orjson.loads(row["pdu"])["content"] == {}
    row = await room.stored(coup.event_id)
    assert row is not None and row["rejected_reason"] and row["stream_pos"] is None
    assert (await room.state())[("m.room.power_levels", "")] == state[("m.room.power_levels", "")]

    since, seen = await _sync_until(alice, since, room.room_id, {tampered_ev.event_id})
    ids = [e["event_id"] for e in seen]
    assert tampered_ev.event_id in ids and coup.event_id not in ids and forged.event_id not in ids
    assert next(e for e in seen if e["event_id"] == tampered_ev.event_id)["content"] == {}

    # soft fail: alice bans remy; remy then sends a message on the DAG before
    # the ban (allowed by its auth events and the state before it, refused by
    # the current state): stored soft-failed, never shown
    status, _ = await alice.call("POST", f"rooms/{quote(room.room_id)}/ban", {"user_id": remy})
    assert status == 200
    late = origin.build(version, room.room_id, remy,
                        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "after my ban"}},
                        [(tampered_ev.event_id, tampered_ev.depth)], await room.state_before_ban(remy))
    assert (await origin.send(ours.server_name, [dict(late.pdu)]))["pdus"] == {late.event_id: {}}
    row = await room.stored(late.event_id)
    assert row is not None and row["soft_failed"] and row["stream_pos"] is None and not row["rejected_reason"]
    since, seen = await _sync_until(alice, since, room.room_id, {late.event_id})
    assert late.event_id not in [e["event_id"] for e in seen]

    # a transaction of one rejected PDU, its txn id with a quote and a backslash:
    # its answer (the error) is written with the event and a replay gets it
    # again (processing the PDU anew would answer {}: it is stored)
    power["users"][remy] = 50
    coup2 = origin.build(version, room.room_id, remy,
                         {"type": "m.room.power_levels", "state_key": "", "content": power},
                         [(late.event_id, late.depth)], await room.state_before_ban(remy))
    odd_txn = f"it's\\{next(_txn)}"
    first = await origin.send(ours.server_name, [dict(coup2.pdu)], txn=quote(odd_txn, safe=""))
    assert "error" in first["pdus"][coup2.event_id], first
    assert await origin.send(ours.server_name, [dict(coup2.pdu)], txn=quote(odd_txn, safe="")) == first
    assert await _txn_writer(ours, origin.name, odd_txn) == await _event_writer(ours, coup2.event_id) != ""
    rows = await ours.db_fetch("SELECT response_json FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2",
                               origin.name, odd_txn)
    assert [orjson.loads(r["response_json"]) for r in rows] == [first]
    # with EDUs the answer is saved after them, in a transaction of its own: replayed all the same
    again = origin.build(version, room.room_id, remy,
                         {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "and EDUs"}},
                         [(late.event_id, late.depth)], await room.state_before_ban(remy))
    edu_txn = f"edus{next(_txn)}"
    edus = [{"edu_type": "m.unknown.thing", "content": {}}]
    first = await origin.send(ours.server_name, [dict(again.pdu)], edus, txn=edu_txn)
    assert first == {"pdus": {again.event_id: {}}}
    assert await origin.send(ours.server_name, [dict(coup2.pdu)], edus, txn=edu_txn) == first
    assert "" != await _txn_writer(ours, origin.name, edu_txn) != await _event_writer(ours, again.event_id)

    # an oversized transaction: 400, nothing processed
    many = [dict(join.pdu)] * 51
    with pytest.raises(RemoteError) as e:
        await origin.send(ours.server_name, many)
    assert (e.value.status, e.value.errcode) == (400, "M_BAD_JSON")
    # malformed PDUs inside a transaction: answered, no 500
    answer = await origin.send(ours.server_name, [{"room_id": room.room_id}, "x", {"room_id": 5},
                                                  dict(coup.pdu, sender=5)])
    assert answer["pdus"] and all("error" in r for r in answer["pdus"].values()), answer
    with pytest.raises(RemoteError) as e:
        await origin.client.put_json(ours.server_name, "/_matrix/federation/v1/send/bad", {"pdus": "x"})
    assert e.value.status == 400
    # a txn id with a NUL (which no text column holds): refused at the door, not a 500
    with pytest.raises(RemoteError) as e:
        await origin.send(ours.server_name, [dict(again.pdu)], txn="nul%00id")
    assert (e.value.status, e.value.errcode) == (400, "M_INVALID_PARAM")

    # body limits: /send takes more than the general 1 MiB (50 PDUs of 64 KiB
    # need it), other routes keep it; past its limit a body is a 413 Matrix error
    padding = [{"edu_type": "org.example.padding", "content": {"x": "p" * 50_000}}] * 30  # 1.5 MB
    big = await origin.send(ours.server_name, [], padding)
    assert big == {"pdus": {}}, big
    for path, body in (
        ("/_matrix/federation/v1/send/huge", {"pdus": [], "edus": [{"x": "p" * 1_000_000}] * 11}),
        (f"/_matrix/federation/v2/send_join/{quote(room.room_id)}/{quote(join.event_id)}",
         dict(join.pdu, padding="p" * 1_100_000)),
    ):
        with pytest.raises(RemoteError) as e:
            await origin.client.put_json(ours.server_name, path, body)
        assert (e.value.status, e.value.errcode) == (413, "M_TOO_LARGE"), (path, e.value)
    assert (await alice.call("GET", "joined_rooms"))[0] == 200  # still serving

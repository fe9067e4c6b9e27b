"""Inbound federation transactions (``PUT /send/{txnId}``) received by a
coffeechat-home process over TLS, from a second server run by the test: its
own signing key, served by its own key server (the receiver fetches it over
HTTPS), its events built and signed with the protocol library, its requests
signed by the outbound client, and a ``get_missing_events`` route answered
from the events it built (authenticated with X-Matrix like any server).

Good PDUs show in our users' /sync; a bad signature, a wrong content hash
(stored redacted), an event the auth rules refuse, an unknown room, a join
claiming one of our users authorised it (without our signature), repeated
and oversized transactions are answered per spec, never with a 500."""

from __future__ import annotations

import itertools
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp import web

from coffeechat_home.api.federation.auth import FEDERATION_BODY, FederationAuth
from coffeechat_home.api.federation.keys import KeyRoutes
from coffeechat_home.api.http import json_response
from coffeechat_home.api.middleware import make_matrix_middleware
from coffeechat_home.federation.client import FederationClient, RemoteError
from coffeechat_home.protocol.builder import build_event, select_auth_event_ids
from coffeechat_home.protocol.events import Event, StateKey
from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.services.server_keys import KeyStore, LocalKeys
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.server_keys import ServerKeyStore

from ..integration.processes import User, wait_until
from .certs import make_certificate
from .peers import FederatingServer, free_port

pytestmark = pytest.mark.federation

_txn = itertools.count()


class Origin:
    """The other server: key server, get_missing_events and the event reads
    (event, event_auth, state_ids) over TLS, and an outbound client signing
    as it."""

    def __init__(self, db: Database, workdir: Path, host: str = "localhost") -> None:
        self.port = free_port()
        self.name = f"{host}:{self.port}"
        self.key = generate_signing_key("o1")
        self.local = LocalKeys(self.name, self.key)
        self.client = FederationClient(self.name, self.key, allow_private_addresses=["127.0.0.0/8"],
                                       verify_certificates=False)
        self.key_store = KeyStore(ServerKeyStore(db), self.local, self.client, [])
        self.workdir = workdir
        self.runner: web.AppRunner | None = None
        self.built: dict[str, Event] = {}  # what get_missing_events can answer from
        self.state_before: dict[str, dict[StateKey, str]] = {}  # per built event
        self.missing_requests: list[Any] = []
        self.reads: list[str] = []  # paths of event reads served
        self.received: list[tuple[str, Any]] = []  # (origin, body) of the transactions sent to us
        self.ts = int(time.time() * 1000)

    async def start(self) -> None:
        cert, key = make_certificate(self.workdir)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert), str(key))
        app = web.Application(middlewares=[make_matrix_middleware()])
        KeyRoutes(self.local, self.key_store).register_routes(app.router)
        auth = FederationAuth(self.key_store, self.name)
        app.router.add_post("/_matrix/federation/v1/get_missing_events/{room_id}", auth(self.get_missing_events))
        app.router.add_get("/_matrix/federation/v1/event/{event_id}", auth(self.get_event))
        app.router.add_get("/_matrix/federation/v1/event_auth/{room_id}/{event_id}", auth(self.get_event_auth))
        app.router.add_get("/_matrix/federation/v1/state_ids/{room_id}", auth(self.get_state_ids))
        app.router.add_get("/_matrix/federation/v1/state/{room_id}", auth(self.get_state))
        app.router.add_put("/_matrix/federation/v1/send/{txn_id}", auth(self.on_send))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=tls).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.client.close()

    async def on_send(self, request: web.Request, origin: str) -> web.StreamResponse:
        body = request[FEDERATION_BODY]
        self.received.append((origin, body))
        return json_response({"pdus": {}})

    def edus(self, edu_type: str) -> list[Any]:
        return [e["content"] for _, body in self.received for e in body.get("edus", []) if e["edu_type"] == edu_type]

    async def get_missing_events(self, request: web.Request, origin: str) -> web.StreamResponse:
        body = request[FEDERATION_BODY]
        self.missing_requests.append(body)
        earliest = set(body["earliest_events"])
        # walk back from latest_events through what we built, stop at earliest
        out: list[Event] = []
        todo = [p for eid in body["latest_events"] for p in self.built[eid].prev_event_ids]
        seen: set[str] = set()
        while todo and len(out) < body.get("limit", 10):
            eid = todo.pop()
            if eid in seen or eid in earliest or eid not in self.built:
                continue
            seen.add(eid)
            out.append(self.built[eid])
            todo.extend(self.built[eid].prev_event_ids)
        out.sort(key=lambda e: e.depth)
        return json_response({"events": [dict(e.pdu) for e in out]})

    def _auth_chain(self, ids: list[str]) -> list[str]:
        """The auth chain of ``ids`` through the events built here (ids of
        events built elsewhere end the walk)."""
        out: dict[str, None] = {}
        todo = list(ids)
        while todo:
            eid = todo.pop()
            if eid in out:
                continue
            out[eid] = None
            if eid in self.built:
                todo.extend(self.built[eid].auth_event_ids)
        return list(out)

    def _read(self, request: web.Request) -> None:
        self.reads.append(request.path)

    async def get_event(self, request: web.Request, origin: str) -> web.StreamResponse:
        self._read(request)
        ev = self.built.get(request.match_info["event_id"])
        if ev is None:
            return json_response({"errcode": "M_NOT_FOUND", "error": "unknown event"}, status=404)
        return json_response({"origin": self.name, "origin_server_ts": self.ts, "pdus": [dict(ev.pdu)]})

    async def get_event_auth(self, request: web.Request, origin: str) -> web.StreamResponse:
        self._read(request)
        ev = self.built[request.match_info["event_id"]]
        chain = self._auth_chain(list(ev.auth_event_ids))
        return json_response({"auth_chain": [dict(self.built[a].pdu) for a in chain if a in self.built]})

    async def get_state_ids(self, request: web.Request, origin: str) -> web.StreamResponse:
        self._read(request)
        state = list(self.state_before[request.query["event_id"]].values())
        return json_response({"pdu_ids": state, "auth_chain_ids": self._auth_chain(state)})

    async def get_state(self, request: web.Request, origin: str) -> web.StreamResponse:
        self._read(request)
        state = list(self.state_before[request.query["event_id"]].values())
        return json_response({
            "pdus": [dict(self.built[e].pdu) for e in state if e in self.built],
            "auth_chain": [dict(self.built[e].pdu) for e in self._auth_chain(state) if e in self.built],
        })

    def build(self, room_version: str, room_id: str, sender: str, template: dict[str, Any],
              prev: list[tuple[str, int]], state: dict[StateKey, str]) -> Event:
        rv = get_room_version(room_version)
        tpl = {"room_id": room_id, "sender": sender, **template}
        self.ts += 1
        ev = build_event(
            rv, template=tpl, prev_events=[p for p, _ in prev], auth_events=select_auth_event_ids(rv, tpl, state),
            depth=max(d for _, d in prev) + 1, origin_server_ts=self.ts, server_name=self.name, signing_key=self.key,
        )
        self.built[ev.event_id] = ev
        self.state_before[ev.event_id] = dict(state)
        return ev

    async def send(self, dest: str, pdus: list[dict[str, Any]], edus: list[dict[str, Any]] | None = None,
                   txn: str | None = None) -> Any:
        txn = txn or f"txn{next(_txn)}"
        return await self.client.put_json(dest, f"/_matrix/federation/v1/send/{txn}",
                                          {"origin": self.name, "origin_server_ts": self.ts,
                                           "pdus": pdus, "edus": edus or []})


class Room:
    """The room as stored on our server (what the origin would know of it
    after joining)."""

    def __init__(self, server: FederatingServer, room_id: str, version: str) -> None:
        self.server = server
        self.room_id = room_id
        self.version = version

    async def state(self) -> dict[StateKey, str]:
        rows = await self.server.db_fetch(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", self.room_id)
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def head(self) -> list[tuple[str, int]]:
        rows = await self.server.db_fetch(
            """SELECT e.event_id, e.depth FROM events e
               JOIN rooms r ON e.event_id = ANY(r.forward_extremities) WHERE r.room_id = $1""", self.room_id)
        return [(r["event_id"], r["depth"]) for r in rows]

    async def state_before_ban(self, user_id: str) -> dict[StateKey, str]:
        """The current state with the user's membership before their ban."""
        state = await self.state()
        rows = await self.server.db_fetch(
            """SELECT event_id FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2
               AND pdu::jsonb -> 'content' ->> 'membership' = 'join' ORDER BY depth DESC LIMIT 1""",
            self.room_id, user_id)
        state[("m.room.member", user_id)] = rows[0]["event_id"]
        return state

    async def stored(self, event_id: str) -> Any:
        rows = await self.server.db_fetch(
            "SELECT pdu, stream_pos, rejected_reason, soft_failed FROM events WHERE event_id = $1", event_id)
        return rows[0] if rows else None


@pytest.fixture
async def setup(database_url: str, pg: Any, pg_template: str, tmp_path: Path
                ) -> AsyncIterator[tuple[FederatingServer, Origin, aiohttp.ClientSession]]:
    from .test_two_servers import new_database

    db = await Database.connect(database_url, min_size=1, max_size=2)
    ours = FederatingServer(await new_database(pg, pg_template), tmp_path / "ours")
    origin = Origin(db, tmp_path / "origin")
    http = aiohttp.ClientSession()
    try:
        await origin.start()
        await ours.start()
        yield ours, origin, http
    finally:
        await ours.stop()
        await origin.stop()
        await http.close()
        await db.close()


def _timeline(sync: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    return list(sync.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", []))


async def _sync_until(alice: User, since: str, room_id: str, want: set[str]) -> tuple[str, list[dict[str, Any]]]:
    """Long-poll /sync until the room's timeline has shown every event id in
    ``want`` (bounded: 10 polls)."""
    seen: list[dict[str, Any]] = []
    for _ in range(10):
        body = await alice.sync(since, timeout_ms=3000)
        since = body["next_batch"]
        seen.extend(_timeline(body, room_id))
        if want <= {e["event_id"] for e in seen}:
            break
    return since, seen


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


async def _true(value: Any) -> bool:
    return bool(value)


async def room_with_remote_member(
    ours: FederatingServer, origin: Origin, http: aiohttp.ClientSession, version: str
) -> tuple[User, Room, str, Event, str, dict[StateKey, str], list[tuple[str, int]]]:
    """A public room of alice's that the origin's @remy joined through
    /send: (alice, room, remy, his join, alice's since, state, head)."""
    alice = await User(http, ours.client_url).register("alice")
    status, body = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
    assert status == 200, body
    room = Room(ours, body["room_id"], version)
    remy = f"@remy:{origin.name}"
    join = origin.build(version, room.room_id, remy,
                        {"type": "m.room.member", "state_key": remy, "content": {"membership": "join"}},
                        await room.head(), await room.state())
    assert await origin.send(ours.server_name, [dict(join.pdu)]) == {"pdus": {join.event_id: {}}}
    since = (await alice.sync())["next_batch"]
    state = await room.state()
    head = [(join.event_id, join.depth)]
    return alice, room, remy, join, since, state, head


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


async def test_get_missing_events_answers(setup: tuple[FederatingServer, Origin, aiohttp.ClientSession]) -> None:
    """Our POST /get_missing_events, asked by the origin (a member server)
    about a forked DAG: alice's a1..a6, remy's r1 on a2, alice's a7 on both
    branches. The answer is what lies between earliest_events and
    latest_events (neither included, nothing behind earliest), at most
    ``limit`` events, none below ``min_depth``, each after its prev_events
    (what a receiver such as Synapse processes in order). Our sender's
    transactions to the origin have that order too."""
    ours, origin, http = setup
    version = "11"
    alice, room, remy, _join, _since, _state, _head = await room_with_remote_member(ours, origin, http, version)
    origin.received.clear()
    sent = []
    for i in range(6):
        status, body = await alice.send(room.room_id, f"a{i + 1}")
        assert status == 200, body
        sent.append(body["event_id"])
    a2 = sent[1]
    a2_pdu = orjson.loads((await room.stored(a2))["pdu"])
    r1 = origin.build(version, room.room_id, remy, {"type": "m.room.message",
                      "content": {"msgtype": "m.text", "body": "r1"}}, [(a2, a2_pdu["depth"])], await room.state())
    assert await origin.send(ours.server_name, [dict(r1.pdu)]) == {"pdus": {r1.event_id: {}}}
    status, body = await alice.send(room.room_id, "a7")
    assert status == 200, body
    a7 = body["event_id"]
    pdus = {e: orjson.loads((await room.stored(e))["pdu"]) for e in [*sent, a7]}
    assert set(pdus[a7]["prev_events"]) == {sent[5], r1.event_id}, pdus[a7]
    # our sender gave the origin alice's events, each after its prev_events
    # (in an earlier transaction or before it in the same one)
    rv = get_room_version(version)

    def pushed() -> list[str]:
        return [compute_event_id(p, rv) for _, body in origin.received for p in body.get("pdus", [])]

    assert await wait_until(lambda: _true(a7 in pushed()), 30), pushed()
    order = pushed()
    assert set(sent) | {a7} <= set(order) and len(order) == len(set(order)), order
    for e in [*sent, a7]:
        assert all(order.index(p) < order.index(e) for p in pdus[e]["prev_events"] if p in pdus), order
    depth = {**{e: p["depth"] for e, p in pdus.items()}, r1.event_id: r1.depth}
    path = f"/_matrix/federation/v1/get_missing_events/{quote(room.room_id)}"

    async def ask(**body: Any) -> list[str]:
        answer = await origin.client.post_json(ours.server_name, path, {"latest_events": [a7], **body})
        events = [Event(p, compute_event_id(p, rv), rv) for p in answer["events"]]
        ids = [e.event_id for e in events]
        assert len(ids) == len(set(ids)), ids
        for i, ev in enumerate(events):  # each event after the prev_events it came with
            assert not set(ev.prev_event_ids) & set(ids[i:]), ids
        return ids

    between = {*sent[2:], r1.event_id}
    got = await ask(earliest_events=[a2], limit=10)
    assert set(got) == between, got
    assert [depth[e] for e in got] == sorted(depth[e] for e in got)
    got = await ask(earliest_events=[a2], limit=2)
    assert len(got) == 2 and set(got) <= between, got
    got = await ask(earliest_events=[a2], limit=10, min_depth=depth[sent[4]])
    assert set(got) == {sent[4], sent[5]}, got
    # no earliest_events: back to the room's creation, oldest first
    got = await ask(earliest_events=[], limit=50)
    assert set(got) >= between | set(sent[:2]) and a7 not in got, got
    first = orjson.loads((await room.stored(got[0]))["pdu"])
    assert first["type"] == "m.room.create", first


async def _state_content(room: Room, key: StateKey) -> dict[str, Any]:
    event_id = (await room.state())[key]
    row = await room.stored(event_id)
    return dict(orjson.loads(row["pdu"])["content"])




async def test_sender_skips_servers_the_room_acl_denies(
    setup: tuple[FederatingServer, Origin, aiohttp.ClientSession], database_url: str, tmp_path: Path
) -> None:
    """Two servers in alice's room, one named by its IP address: once the
    room's server ACL denies IP literals, that one gets neither the room's
    events (the ACL event included) nor its typing, the other gets both;
    the room's federation /hierarchy answers the denied one 404, and our
    send_join answers leave it out of ``servers_in_room``."""
    ours, origin, http = setup
    version = "12"
    alice, room, _remy, _join, _since, _state, _head = await room_with_remote_member(ours, origin, http, version)
    db = await Database.connect(database_url, min_size=1, max_size=2)
    other = Origin(db, tmp_path / "other", host="127.0.0.1")
    try:
        await other.start()
        ip_user = f"@ip:{other.name}"
        join = other.build(version, room.room_id, ip_user,
                           {"type": "m.room.member", "state_key": ip_user, "content": {"membership": "join"}},
                           await room.head(), await room.state())
        assert await other.send(ours.server_name, [dict(join.pdu)]) == {"pdus": {join.event_id: {}}}

        def got(peer: Origin, event_id: str) -> bool:
            rv = get_room_version(version)
            return any(compute_event_id(p, rv) == event_id for _, body in peer.received for p in body.get("pdus", []))

        async def until(pred: Any) -> None:
            assert await wait_until(pred, 30, interval=0.05), (ours.process.stderr()[-3000:])

        status, before = await alice.send(room.room_id, "before the acl")
        assert status == 200, before
        await until(lambda: _true(got(origin, before["event_id"]) and got(other, before["event_id"])))

        hierarchy = f"/_matrix/federation/v1/hierarchy/{quote(room.room_id, safe='')}"
        assert (await other.client.get_json(ours.server_name, hierarchy))["room"]["room_id"] == room.room_id
        rid = quote(room.room_id)
        status, acl = await alice.call("PUT", f"rooms/{rid}/state/m.room.server_acl/",
                                       {"allow": ["*"], "allow_ip_literals": False})
        assert status == 200, acl
        # the room's /hierarchy: the denied server is answered 404, the other the room
        answer = await origin.client.get_json(ours.server_name, hierarchy)
        assert (answer["room"]["room_id"], answer["children"], answer["inaccessible_children"]) == (
            room.room_id, [], []), answer
        with pytest.raises(RemoteError) as denied:
            await other.client.get_json(ours.server_name, hierarchy)
        assert (denied.value.status, denied.value.errcode) == (404, "M_NOT_FOUND")
        status, after = await alice.send(room.room_id, "after the acl")
        assert status == 200, after
        me = quote(alice.user_id)
        assert (await alice.call("PUT", f"rooms/{rid}/typing/{me}", {"typing": True, "timeout": 20000}))[0] == 200
        await until(lambda: _true(got(origin, acl["event_id"]) and got(origin, after["event_id"])
                                  and [c for c in origin.edus("m.typing") if c["user_id"] == alice.user_id]))
        pos = (await ours.db_fetch("SELECT stream_pos FROM events WHERE event_id = $1", after["event_id"]))[0][0]

        async def passed() -> bool:  # the sender went past both events for the denied server
            rows = await ours.db_fetch("SELECT stream_pos FROM federation_destinations WHERE destination = $1",
                                       other.name)
            return bool(rows) and rows[0][0] >= pos

        await until(passed)
        assert not got(other, acl["event_id"]) and not got(other, after["event_id"]), other.received
        assert other.edus("m.typing") == []
        assert await ours.db_fetch("SELECT 1 FROM federation_edu_outbox WHERE destination = $1", other.name) == []
        # a send_join answer names the servers in the room but the denied one
        late = f"@late:{origin.name}"
        late_join = origin.build(version, room.room_id, late,
                                 {"type": "m.room.member", "state_key": late, "content": {"membership": "join"}},
                                 await room.head(), await room.state())
        answer = await origin.client.put_json(
            ours.server_name, f"/_matrix/federation/v2/send_join/{rid}/{quote(late_join.event_id)}", dict(late_join.pdu))
        assert answer["servers_in_room"] == sorted({ours.server_name, origin.name}), answer["servers_in_room"]
    finally:
        await other.stop()
        await db.close()


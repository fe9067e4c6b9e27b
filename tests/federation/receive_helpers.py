"""The other server of tests/federation/test_receive.py and the tests that
share it (test_answers_to_origin, test_receive_batch, test_gaps): its own
signing key, served by its own key server (the receiver fetches it over
HTTPS), its events built and signed with the protocol library, its requests
signed by the outbound client, and a ``get_missing_events`` route answered
from the events it built (authenticated with X-Matrix like any server);
with the room as stored on our server, the ``setup`` fixture (our server
and the origin) and helpers of these tests."""

from __future__ import annotations

import itertools
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from coffeechat_home.api.federation.auth import FEDERATION_BODY, FederationAuth
from coffeechat_home.api.federation.keys import KeyRoutes
from coffeechat_home.api.http import json_response
from coffeechat_home.api.middleware import make_matrix_middleware
from coffeechat_home.federation.client import FederationClient
from coffeechat_home.protocol.builder import build_event, select_auth_event_ids
from coffeechat_home.protocol.events import Event, StateKey
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.services.server_keys import KeyStore, LocalKeys
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.server_keys import ServerKeyStore

from ..integration.processes import User
from .certs import make_certificate
from .peers import FederatingServer, free_port, new_database

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


async def _state_content(room: Room, key: StateKey) -> dict[str, Any]:
    event_id = (await room.state())[key]
    row = await room.stored(event_id)
    return dict(orjson.loads(row["pdu"])["content"])

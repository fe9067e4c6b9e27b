"""Issue #9's history-visibility race: in a room whose history is for
joined members only, events from before a remote user's join that reach
the user's server after the join (a's sender catching up on a destination
that joined the room, a message that crossed the join, or what
get_missing_events fetches for them) are stored with stream positions
after the join. They must stay hidden from that user: the spec judges each
event by the state at it (he was not joined there), not by when it arrived.

First, a's sender, catching up on b (behind when bob joined), does not
send b what was said before the join. Then the late delivery another
server may still make is made deterministic: signed /sends from a push
secret 0 and secret 2 (secret 1, between them, b fetches with
get_missing_events; a serves it redacted) and a message built on the last
secret (a fork beside bob's join, as when alice's message and bob's join
cross).

What bob may not see is not counted either: his unread notification and
highlight counts (secret 0 names him) and GET /notifications leave the
late secrets out. Relations and threads judge each event the same way: the
message that crossed the join is a thread reply to a message bob sees, and
secret 2 a thread reply to secret 0; /relations and /threads show bob only
the visible reply, and the thread summary counts only it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import KNOWN_ROOM_VERSIONS
from coffeechat_home.protocol.signing import hash_and_sign_event

from ..integration.processes import User, message_bodies, pages_back, timeline_bodies, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers, send_transaction

pytestmark = pytest.mark.federation


@pytest.fixture
async def pair(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "hvrace", 2) as servers:
        yield servers[0], servers[1]


def thread_reply(body: str, root: str) -> dict[str, object]:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


async def v1_get(user: User, path: str) -> object:
    async with user.session.get(f"{user.base_url}/_matrix/client/v1/{path}",
                                headers={"Authorization": f"Bearer {user.token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def thread_counts(body: object) -> dict[str, tuple[int, str]]:
    """/threads: root -> (count, the latest event's id)."""
    assert isinstance(body, dict)
    out = {}
    for root in body["chunk"]:
        summary = root["unsigned"]["m.relations"]["m.thread"]
        out[root["event_id"]] = (summary["count"], summary["latest_event"]["event_id"])
    return out


async def test_events_from_before_a_join_delivered_after_it_stay_hidden(
    pair: tuple[FederatingServer, FederatingServer]
) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")
        status, room = await alice.call("POST", "createRoom", {
            "preset": "public_chat", "room_version": "10",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "joined"}}],
        })
        assert status == 200, room
        room_id = room["room_id"]
        secret_ids: list[str] = []
        for i, content in enumerate([{"msgtype": "m.text", "body": "secret 0 for bob"},
                                     {"msgtype": "m.text", "body": "secret 1"}, None]):
            if content is None:  # secret 2: a thread reply to secret 0
                content = thread_reply("secret 2", secret_ids[0])
            status, sent = await alice.call("PUT", f"rooms/{quote(room_id)}/send/m.room.message/s{i}", content)
            assert status == 200, sent
            secret_ids.append(sent["event_id"])
        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, body
        # since a sync that has the room (a partial-state join shows it once
        # its state is complete): the syncs below are incremental for it,
        # and judge each late event as a room the client has (one read of
        # its timeline and history visibility together)
        tokens: list[str] = []

        async def room_synced() -> bool:
            synced = await bob.sync()
            tokens.append(synced["next_batch"])
            return room_id in synced.get("rooms", {}).get("join", {})

        assert await wait_until(room_synced, 30, interval=0.2)
        since = tokens[-1]
        # a's position for b behind the secrets when bob's join landed (its
        # sender had not caught up on b yet: busy, in backoff, or the
        # instance holding b's lease died): it catches up after the join
        await a.db_fetch("INSERT INTO federation_destinations (destination, stream_pos) VALUES ($1, 0) "
                         "ON CONFLICT (destination) DO UPDATE SET stream_pos = 0", b.server_name)
        status, sent = await alice.send(room_id, "after join")
        assert status == 200
        after_id = sent["event_id"]

        async def delivered() -> bool:
            return bool(await b.db_fetch("SELECT 1 FROM events WHERE event_id = $1", after_id))

        assert await wait_until(delivered, 30, interval=0.2)
        status, sent = await alice.call("PUT", f"rooms/{quote(room_id)}/send/m.room.message/vr",
                                        thread_reply("visible reply", after_id))
        assert status == 200, sent
        reply_id = sent["event_id"]

        async def reply_delivered() -> bool:
            return bool(await b.db_fetch("SELECT 1 FROM events WHERE event_id = $1", reply_id))

        assert await wait_until(reply_delivered, 30, interval=0.2)
        # a's sender did not send b what was said before bob joined (b keeps
        # each transaction's answer, which names every PDU it got)
        answers = [orjson.loads(r["response_json"]) for r in await b.db_fetch(
            "SELECT response_json FROM federation_inbound_txns WHERE origin = $1", a.server_name)]
        assert any(after_id in ans.get("pdus", {}) for ans in answers), answers
        assert not [e for ans in answers for e in ans.get("pdus", {}) if e in secret_ids], answers
        assert await b.db_fetch("SELECT event_id FROM events WHERE event_id = ANY($1::TEXT[])", secret_ids) == []

        # a's PDUs of the secrets, pushed to b after the join
        rows = await a.db_fetch("SELECT event_id, pdu FROM events WHERE event_id = ANY($1::TEXT[])", secret_ids)
        pdus = {r["event_id"]: orjson.loads(r["pdu"]) for r in rows}
        # secret 1, between them, b fetches with get_missing_events
        answer = await send_transaction(a, b, "late1", [pdus[secret_ids[0]], pdus[secret_ids[2]]])
        assert answer == {secret_ids[0]: {}, secret_ids[2]: {}}, answer

        # a message of alice's that crossed bob's join: built on the last
        # secret, beside the join (a thread reply to "after join")
        rv = KNOWN_ROOM_VERSIONS["10"]
        last = pdus[secret_ids[-1]]
        crossing = {
            "room_id": room_id, "sender": alice.user_id, "type": "m.room.message",
            "content": thread_reply("crossed the join", after_id),
            "prev_events": [secret_ids[-1]], "auth_events": last["auth_events"],
            "depth": last["depth"] + 1, "origin_server_ts": int(time.time() * 1000),
        }
        signed = hash_and_sign_event(crossing, a.server_name, a.signing_key(), rv)
        crossing_id = compute_event_id(signed, rv)
        answer = await send_transaction(a, b, "late2", [signed])
        assert answer == {crossing_id: {}}, answer
        stored = await b.db_fetch("SELECT event_id, stream_pos FROM events WHERE event_id = ANY($1::TEXT[])",
                                  [*secret_ids, crossing_id])
        # all stored in b's timeline, after bob's join
        assert len(stored) == 4 and all(r["stream_pos"] is not None and r["stream_pos"] > 0 for r in stored), stored

        seen = ["after join", "visible reply"]
        assert await message_bodies(bob, room_id) == seen
        got, _ = await pages_back(bob, room_id, 1)
        assert [e["content"]["body"] for e in got if e["type"] == "m.room.message"] == seen
        # /sync since the join, and an initial sync
        wide = quote(orjson.dumps({"room": {"timeline": {"limit": 50}}}).decode())
        for since_q in (f"&since={since}", ""):
            status, synced = await bob.call("GET", f"sync?timeout=0&filter={wide}{since_q}")
            assert status == 200, synced
            joined = synced["rooms"]["join"][room_id]
            assert timeline_bodies(synced, room_id) == seen, joined
            # counted: the two bob sees (a one-to-one room notifies); not the
            # secrets nor the crossing message (secret 0 names him: a highlight)
            assert joined["unread_notifications"] == {"notification_count": 2, "highlight_count": 0}, joined
        status, notified = await bob.call("GET", "notifications")
        assert status == 200, notified
        assert [n["event"]["content"]["body"] for n in notified["notifications"]] == seen[::-1], notified
        # relations and threads: only the reply bob may see
        for path in (f"relations/{quote(after_id)}", f"relations/{quote(after_id)}/m.thread"):
            related = await v1_get(bob, f"rooms/{quote(room_id)}/{path}")
            assert isinstance(related, dict)
            assert [e["event_id"] for e in related["chunk"]] == [reply_id], related
        assert thread_counts(await v1_get(bob, f"rooms/{quote(room_id)}/threads")) == {after_id: (1, reply_id)}
        assert thread_counts(await v1_get(alice, f"rooms/{quote(room_id)}/threads")) == {
            after_id: (1, reply_id), secret_ids[0]: (1, secret_ids[2])}
        # a single event and its context
        for event_id in [*secret_ids, crossing_id]:
            status, body = await bob.call("GET", f"rooms/{quote(room_id)}/event/{quote(event_id)}")
            assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body
        # alice (joined at all of them) still sees everything
        assert await message_bodies(alice, room_id) == ["secret 0 for bob", "secret 1", "secret 2", *seen]

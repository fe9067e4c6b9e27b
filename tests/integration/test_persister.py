"""The persister (services/persister.py), fed events built as a remote
server builds them: forks and their resolved state, rejected, soft-failed
and outlier events, and history in DAG order after a backfill.

The events are built and signed with the protocol library and a signing
key of ``remote.example``, auth-checked here as a receiver would, and
handed to the persister's public API; what clients see is read through the
client API, what is stored straight from the database."""

from __future__ import annotations

import time
from typing import Any, Mapping

import asyncpg
import orjson
import pytest

from coffeechat_home.app import HomeServer
from coffeechat_home.protocol.auth import check_auth_rules
from coffeechat_home.protocol.builder import build_event, select_auth_event_ids
from coffeechat_home.protocol.events import Event, StateKey, auth_types_for_event
from coffeechat_home.protocol.room_versions import RoomVersion, get_room_version
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.protocol.state_res import resolve_state
from coffeechat_home.services.persister import EventContext, NewEvent, RoomBase
from coffeechat_home.storage.event_writes import RowInsert

from ..helpers import ApiClient
from .db_checks import assert_forward_extremities
from .room_helpers import create_room, q, send_text

REMOTE = "remote.example"
REMY = f"@remy:{REMOTE}"
REMOTE_KEY = generate_signing_key("r1")


class Remote:
    """A remote server's view of one room: builds and signs its events."""

    def __init__(self, hs: HomeServer, database_url: str, room_id: str) -> None:
        assert hs.services is not None
        self.services = hs.services
        self.database_url = database_url
        self.room_id = room_id
        self.ts = int(time.time() * 1000)

    async def rv(self) -> RoomVersion:
        version = await self.services.events.room_version(self.room_id)
        assert version is not None
        return get_room_version(version)

    async def events_by_id(self) -> dict[str, Event]:
        rv = await self.rv()
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch("SELECT event_id, pdu FROM events WHERE room_id = $1", self.room_id)
        finally:
            await conn.close()
        return {r["event_id"]: Event(orjson.loads(r["pdu"]), r["event_id"], rv) for r in rows}

    async def current_state(self) -> dict[StateKey, str]:
        return await self.services.events.state.current_state_ids(self.room_id)

    async def depth_of(self, event_id: str) -> int:
        return (await self.services.events.stored_info([event_id]))[event_id].depth

    async def build(
        self, template: Mapping[str, Any], prev: list[str], state_before: Mapping[StateKey, str],
        *, depth: int | None = None, ts_offset: int = 0, check: bool = True,
    ) -> Event:
        rv = await self.rv()
        known = await self.events_by_id()
        tpl = {"room_id": self.room_id, "sender": REMY, **template}
        if depth is None:
            depth = max([known[p].depth for p in prev if p in known] or [0]) + 1
        self.ts += 1
        ev = build_event(
            rv, template=tpl, prev_events=prev, auth_events=select_auth_event_ids(rv, tpl, state_before),
            depth=depth, origin_server_ts=self.ts + ts_offset, server_name=REMOTE, signing_key=REMOTE_KEY,
        )
        if check:  # as the receiver does: auth against the state before the event
            keys = auth_types_for_event(rv, ev.type, ev.sender, ev.state_key, ev.content)
            auth_state = {k: known[state_before[k]] for k in keys if k in state_before}
            auth_state[("m.room.create", "")] = known[state_before[("m.room.create", "")]]
            check_auth_rules(ev, auth_state)
        return ev

    async def persist(self, *events: Event, **ctx: Any) -> list[int | None]:
        """Persist events, each with the room's current state as the state
        before it (or ``state_before`` given in ctx)."""
        state = ctx.pop("state_before", None)
        batch = []
        running = dict(state if state is not None else await self.current_state())
        for ev in events:
            batch.append(NewEvent(ev, EventContext(state_before=dict(running), **ctx)))
            if ev.is_state and not ctx.get("rejected_reason") and not ctx.get("outlier"):
                running[ev.state_tuple] = ev.event_id
        result = await self.services.persister.persist(self.room_id, batch)
        return result.positions

    async def extremities(self) -> list[str]:
        return await self.services.events.forward_extremities(self.room_id)


async def _public_room_with_remote(
    alice: ApiClient, server: HomeServer, database_url: str, level: int = 50, version: str | None = None
) -> tuple[str, Remote]:
    body: dict[str, Any] = {"preset": "public_chat", "name": "fed"}
    if version is not None:
        body["room_version"] = version
    room_id = await create_room(alice, body)
    remote = Remote(server, database_url, room_id)
    (tip,) = await remote.extremities()
    join = await remote.build(
        {"type": "m.room.member", "state_key": REMY, "content": {"membership": "join"}},
        [tip], await remote.current_state(),
    )
    await remote.persist(join)
    assert await remote.extremities() == [join.event_id]
    # alice lets remy change state (topic, power levels)
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels")
    power = dict(r.body)
    power["users"] = {**power.get("users", {}), REMY: level}
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.power_levels", power)
    assert r.status == 200, r
    return room_id, remote


async def _topic(api: ApiClient, room_id: str) -> str:
    r = await api.get(f"rooms/{q(room_id)}/state/m.room.topic")
    assert r.status == 200, r
    return str(r["topic"])


async def _sync(api: ApiClient, **params: str) -> Any:
    r = await api.get("sync", params=params)
    assert r.status == 200, r
    return r.body


def _timeline_ids(body: Any, room_id: str) -> list[str]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


async def _messages_ids(api: ApiClient, room_id: str, **params: Any) -> tuple[list[str], Any]:
    r = await api.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "100", **params})
    assert r.status == 200, r
    return [e["event_id"] for e in r["chunk"]], r.body


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_fork_resolves_state_and_merges(
    alice: ApiClient, server: HomeServer, database_url: str, version: str
) -> None:
    room_id, remote = await _public_room_with_remote(alice, server, database_url, version=version)
    assert (await remote.rv()).identifier == version
    (parent,) = await remote.extremities()
    before = await remote.current_state()
    # two topic changes on the same parent: A is later (origin_server_ts),
    # B is persisted last. Resolution orders them by timestamp, so A wins;
    # "the last write wins" would give B.
    a = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "A"}},
                           [parent], before, ts_offset=5000)
    b = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "B"}},
                           [parent], before, ts_offset=1000)
    await remote.persist(a, state_before=before)
    assert await remote.extremities() == [a.event_id]
    assert await _topic(alice, room_id) == "A"
    await remote.persist(b, state_before=before)
    assert sorted(await remote.extremities()) == sorted([a.event_id, b.event_id])
    await assert_forward_extremities(database_url, room_id)

    known = await remote.events_by_id()
    after_a = {**before, ("m.room.topic", ""): a.event_id}
    after_b = {**before, ("m.room.topic", ""): b.event_id}
    expected = resolve_state(await remote.rv(), [after_a, after_b], known.get)
    assert expected[("m.room.topic", "")] == a.event_id
    assert await remote.current_state() == expected
    assert await _topic(alice, room_id) == "A"
    r = await alice.get(f"rooms/{q(room_id)}/state")
    topics = [e for e in r.body if e["type"] == "m.room.topic"]
    assert [t["event_id"] for t in topics] == [a.event_id]

    # the merge: one event with both as prev_events
    merge = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "merged"}},
                               [a.event_id, b.event_id], expected)
    await remote.persist(merge, state_before=expected)
    assert await remote.extremities() == [merge.event_id]
    await assert_forward_extremities(database_url, room_id)
    assert await remote.current_state() == expected

    # /sync: the state before a timeline that starts after the fork is the
    # resolved one, though B was the last state event streamed
    sync_filter = orjson.dumps({"room": {"timeline": {"limit": 1}}}).decode()
    body = await _sync(alice, filter=sync_filter)
    room = body["rooms"]["join"][room_id]
    assert _timeline_ids(body, room_id) == [merge.event_id]
    state_topics = [e["event_id"] for e in room["state"]["events"] if e["type"] == "m.room.topic"]
    assert state_topics == [a.event_id]

    # alice's next message builds on the merged DAG
    m = await send_text(alice, room_id, "after the merge")
    assert await remote.extremities() == [m]
    pdu = (await server.services.events.get_pdus([m]))[m]  # type: ignore[union-attr]
    assert pdu["prev_events"] == [merge.event_id]


async def test_local_send_merges_a_fork(alice: ApiClient, server: HomeServer, database_url: str) -> None:
    """A local message sent while the DAG is forked names every extremity
    as a prev_event and is built on the resolved state."""
    room_id, remote = await _public_room_with_remote(alice, server, database_url, level=100)
    (parent,) = await remote.extremities()
    before = await remote.current_state()
    power = dict((await remote.events_by_id())[before[("m.room.power_levels", "")]].content)
    # a topic and a power levels change on the same parent: both keys are
    # conflicted (the room had no topic), resolution keeps both
    a = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "one"}},
                           [parent], before)
    p2 = {**power, "events_default": 10}
    b = await remote.build({"type": "m.room.power_levels", "state_key": "", "content": p2}, [parent], before)
    await remote.persist(a, state_before=before)
    await remote.persist(b, state_before=before)
    assert sorted(await remote.extremities()) == sorted([a.event_id, b.event_id])
    known = await remote.events_by_id()
    expected = resolve_state(
        await remote.rv(),
        [{**before, ("m.room.topic", ""): a.event_id}, {**before, ("m.room.power_levels", ""): b.event_id}],
        known.get,
    )
    assert await remote.current_state() == expected
    assert expected[("m.room.power_levels", "")] == b.event_id and expected[("m.room.topic", "")] == a.event_id
    m = await send_text(alice, room_id, "merging")
    pdu = (await server.services.events.get_pdus([m]))[m]  # type: ignore[union-attr]
    assert sorted(pdu["prev_events"]) == sorted([a.event_id, b.event_id])
    assert b.event_id in pdu["auth_events"]  # built on the resolved power levels
    assert await remote.extremities() == [m]
    await assert_forward_extremities(database_url, room_id)


async def test_rejected_soft_failed_and_outliers_stay_hidden(
    alice: ApiClient, server: HomeServer, database_url: str
) -> None:
    room_id, remote = await _public_room_with_remote(alice, server, database_url)
    since = (await _sync(alice))["next_batch"]
    (tip,) = await remote.extremities()
    state = await remote.current_state()
    topic_before = state.get(("m.room.topic", ""))

    rejected = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "nope"}},
                                  [tip], state)
    soft = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "soft"}},
                              [tip], state)
    outlier = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "out"}},
                                 [tip], state)
    assert await remote.persist(rejected, rejected_reason="auth: not allowed") == [None]
    assert await remote.persist(soft, soft_failed=True) == [None]
    assert await remote.persist(outlier, outlier=True) == [None]

    # stored, with their flags, for auth chains and the receiver
    info = await server.services.events.stored_info(  # type: ignore[union-attr]
        [rejected.event_id, soft.event_id, outlier.event_id]
    )
    assert info[rejected.event_id].rejected and info[rejected.event_id].stream_pos is None
    assert info[soft.event_id].soft_failed and info[soft.event_id].stream_pos is None
    assert info[outlier.event_id].outlier and info[outlier.event_id].stream_pos is None
    assert set(await server.services.events.get_pdus([rejected.event_id, outlier.event_id])) == {  # type: ignore[union-attr]
        rejected.event_id, outlier.event_id,
    }
    chain, rejected_ids = await server.services.events.auth_chain_events(  # type: ignore[union-attr]
        [rejected.event_id], await remote.rv()
    )
    assert rejected.event_id in chain and rejected_ids == {rejected.event_id}
    assert set(rejected.auth_event_ids) <= set(chain)  # with its auth chain
    # neither state nor extremities changed
    assert await remote.extremities() == [tip]
    assert (await remote.current_state()).get(("m.room.topic", "")) == topic_before
    await assert_forward_extremities(database_url, room_id)
    hidden = {rejected.event_id, soft.event_id, outlier.event_id}

    # no client sees them: /sync (incremental and initial), /messages, /context
    body = await _sync(alice, since=since)
    assert not hidden & set(_timeline_ids(body, room_id))
    assert not hidden & set(_timeline_ids(await _sync(alice), room_id))
    ids, _ = await _messages_ids(alice, room_id)
    assert not hidden & set(ids)
    ids, _ = await _messages_ids(alice, room_id, dir="f")
    assert not hidden & set(ids)
    for eid in hidden:
        r = await alice.get(f"rooms/{q(room_id)}/context/{q(eid)}")
        assert r.status == 404, r
        r = await alice.get(f"rooms/{q(room_id)}/event/{q(eid)}")
        assert r.status == 404, r

    # the room goes on from the real extremity
    m = await send_text(alice, room_id, "still here")
    pdu = (await server.services.events.get_pdus([m]))[m]  # type: ignore[union-attr]
    assert pdu["prev_events"] == [tip]
    body = await _sync(alice, since=since)
    assert _timeline_ids(body, room_id)[-1] == m and not hidden & set(_timeline_ids(body, room_id))


async def test_outlier_joins_the_dag_when_persisted_again(
    alice: ApiClient, server: HomeServer, database_url: str
) -> None:
    room_id, remote = await _public_room_with_remote(alice, server, database_url)
    (tip,) = await remote.extremities()
    ev = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "late"}},
                            [tip], await remote.current_state())
    assert await remote.persist(ev, outlier=True) == [None]
    assert await remote.persist(ev, outlier=True) == [None]  # again: nothing to do
    (pos,) = await remote.persist(ev)
    assert pos is not None
    assert await remote.extremities() == [ev.event_id]
    ids, _ = await _messages_ids(alice, room_id, limit="1")
    assert ids == [ev.event_id]
    (again,) = await remote.persist(ev)  # persisted twice: no second row, no position
    assert again is None


async def test_messages_in_dag_order_after_backfill(
    alice: ApiClient, server: HomeServer, database_url: str
) -> None:
    """History that arrives late (a backfill) sorts by depth, not by when
    it was stored; stream tokens from /sync still work as `from`."""
    room_id, remote = await _public_room_with_remote(alice, server, database_url)
    (m0,) = await remote.extremities()
    state = await remote.current_state()
    d0 = await remote.depth_of(m0)

    def text(body: str) -> dict[str, Any]:
        return {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}}

    x1 = await remote.build(text("x1"), [m0], state, depth=d0 + 1)
    x2 = await remote.build(text("x2"), [x1.event_id], state, depth=d0 + 2)
    y = await remote.build(text("y"), [x2.event_id], state, depth=d0 + 3)
    # y arrives first (its prev_events missing: a gap), then the gap is filled
    await remote.persist(y)
    assert sorted(await remote.extremities()) == sorted([m0, y.event_id])
    await assert_forward_extremities(database_url, room_id)
    positions = await remote.persist(x1, x2)
    assert all(p is not None for p in positions)
    assert await remote.extremities() == [y.event_id]
    await assert_forward_extremities(database_url, room_id)

    token = (await _sync(alice))["rooms"]["join"][room_id]["timeline"]["prev_batch"]
    assert token.startswith("s")
    ids, body = await _messages_ids(alice, room_id, limit="3", **{"from": (await _sync(alice))["next_batch"]})
    assert ids == [y.event_id, x2.event_id, x1.event_id]  # DAG order; stream order is x2, x1, y
    assert body["end"].startswith("t")
    ids2, _ = await _messages_ids(alice, room_id, limit="2", **{"from": body["end"]})
    assert ids2[0] == m0
    # forwards from the page's end token (x1): what follows x1 in the DAG
    fwd, _ = await _messages_ids(alice, room_id, dir="f", limit="10", **{"from": body["end"]})
    assert fwd == [x2.event_id, y.event_id]
    fwd, _ = await _messages_ids(alice, room_id, dir="f", limit="10", **{"from": f"t{d0}-0"})
    assert fwd == [m0, x1.event_id, x2.event_id, y.event_id]
    # malformed DAG tokens are refused
    for bad in ("t1", "tx-1", "t-1-2", "t1-"):
        r = await alice.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "from": bad})
        assert (r.status, r.body.get("errcode")) == (400, "M_INVALID_PARAM"), (bad, r)


async def test_a_row_of_the_caller_commits_with_the_events_only(
    alice: ApiClient, server: HomeServer, database_url: str
) -> None:
    """``also=RowInsert``: a row of the caller's (the receiver's answer to a
    transaction) written by the events' insert statement, with bind
    parameters: none when the head's compare-and-set fails, else in the
    database transaction that wrote the events (general path and on a base)."""
    room_id, remote = await _public_room_with_remote(alice, server, database_url)
    persister = server.services.persister if server.services is not None else None
    assert persister is not None
    rv = await remote.rv()

    def answer(txn_id: str) -> RowInsert:
        return RowInsert("federation_inbound_txns",
                         (("origin", "TEXT"), ("txn_id", "TEXT"), ("response_json", "TEXT"),
                          ("received_ts", "BIGINT")),
                         (REMOTE, txn_id, '{"pdus": {}}', 1), "ON CONFLICT (origin, txn_id) DO NOTHING")

    async def writers(txn_id: str, event_id: str) -> tuple[list[str], list[str]]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetch("SELECT xmin::TEXT AS x FROM federation_inbound_txns WHERE txn_id = $1", txn_id)
            ev = await conn.fetch("SELECT xmin::TEXT AS x FROM events WHERE event_id = $1", event_id)
        finally:
            await conn.close()
        return [r["x"] for r in row], [r["x"] for r in ev]

    # the general path (a quote and a backslash in a value: a parameter, not SQL text)
    (tip,) = await remote.extremities()
    state = await remote.current_state()
    m1 = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "one"}}, [tip], state)
    result = await persister.persist(room_id, [NewEvent(m1, EventContext(state_before=state))],
                                     also=answer("it's\\one"))
    rows, events = await writers("it's\\one", m1.event_id)
    assert rows == events and len(rows) == 1

    # on a base: a stale head writes neither the events nor the row
    base = RoomBase(list(result.forward_extremities), dict(result.current_state), result.state_group,
                    result.chain_length)
    m2 = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "two"}},
                            [m1.event_id], base.state)
    stale = RoomBase([tip], base.state, base.state_group, base.chain_length)
    new = [NewEvent(m2, EventContext(state_before=base.state, state_group_before=base.state_group))]
    assert await persister.persist_on_base(room_id, new, stale, room_version=rv, also=answer("two")) is None
    assert await writers("two", m2.event_id) == ([], [])
    # the true head: both, in one database transaction
    assert await persister.persist_on_base(room_id, new, base, room_version=rv, also=answer("two")) is not None
    rows, events = await writers("two", m2.event_id)
    assert rows == events and len(rows) == 1

"""api/http.py's JSON responses over keep-alive connections: aiohttp's
connection loop keeps a connection's last response until its next request,
so a response must not hold its body once written (every idle client kept
its last /sync answer: 0.6 MB for an initial sync of a hundred rooms)."""

from __future__ import annotations

import gc
import tracemalloc

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from coffeechat_home.api.http import json_response, raw_json_response

BIG = 1_000_000  # bytes of JSON per response


async def _held_after_answers(connections: int) -> tuple[float, list[int]]:
    """MB still allocated after ``connections`` clients each got one big
    answer and kept their connection open (idle, as a client between
    syncs)."""

    async def big(request: web.Request) -> web.Response:
        if request.query.get("raw"):
            return raw_json_response(b'{"x": "' + b"a" * BIG + b'"}')
        return json_response({"x": "a" * BIG})

    app = web.Application()
    app.router.add_get("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sessions = [aiohttp.ClientSession() for _ in range(connections)]
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        bodies: list[int] = []
        for i, session in enumerate(sessions):
            async with session.get(server.make_url("/big"), params={"raw": "1"} if i % 2 else {}) as r:
                assert r.status == 200
                bodies.append(len(await r.read()))
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - base) / 1e6
        tracemalloc.stop()
        return held, bodies
    finally:
        for session in sessions:  # the connections stay open until here
            await session.close()
        await server.close()


async def test_an_idle_keep_alive_connection_does_not_keep_its_last_answer() -> None:
    held, bodies = await _held_after_answers(10)
    assert all(n > BIG for n in bodies)
    # 10 answers of 1 MB each were written; none is held once sent (the
    # clients read theirs into ``bodies`` as lengths only)
    assert held < 3, f"{held:.1f} MB still held after 10 answers of 1 MB on idle connections"


def _sync_body(rooms: int, *, others: bool = True) -> dict[str, object]:
    join = {
        f"!r{i}:hs.example": {
            "timeline": {"events": [{"type": "m.room.message", "content": {"body": "é" * 300 + str(i)}}] * 40,
                         "limited": True, "prev_batch": f"s{i}"},
            "state": {"events": []},
        }
        for i in range(rooms)
    }
    body: dict[str, object] = {"rooms": {"join": join, "leave": {"!gone:hs.example": {"timeline": {"events": []}}}}}
    if others:
        body.update(next_batch="s99", to_device={"events": []}, device_lists={"changed": ["@a:hs.example"]})
    return body


async def test_a_sync_answer_in_pieces_is_the_same_json() -> None:
    """rooms_json_response encodes a big /sync answer room by room: the
    client gets the same JSON, with a right Content-Length, over a real
    socket; a small answer goes as json_response's."""
    import copy
    import json

    from coffeechat_home.api.http import ROOMS_IN_PIECES, rooms_json_response

    cases = {"big": _sync_body(60), "bare": _sync_body(30, others=False),
             "small": _sync_body(ROOMS_IN_PIECES - 2), "no-rooms": {"next_batch": "s1"}}

    async def answer(request: web.Request) -> web.Response:
        return rooms_json_response(copy.deepcopy(cases[request.match_info["case"]]), headers={"X-Test": "1"})

    app = web.Application()
    app.router.add_get("/{case}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for name, expected in cases.items():
                async with session.get(server.make_url(f"/{name}")) as r:
                    raw = await r.read()
                    assert r.status == 200 and r.headers["Content-Type"] == "application/json", name
                    assert r.headers["X-Test"] == "1" and r.headers["Access-Control-Allow-Origin"] == "*"
                    assert int(r.headers["Content-Length"]) == len(raw), name
                    assert json.loads(raw) == expected, name
        assert len(orjson.dumps(cases["big"])) > 4 * 64 * 1024  # several chunks
    finally:
        await server.close()

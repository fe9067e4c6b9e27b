"""api/http.py's JSON responses over keep-alive connections: aiohttp's
connection loop keeps a connection's last response until its next request,
so a response must not hold its body once written (every idle client kept
its last /sync answer: 0.6 MB for an initial sync of a hundred rooms)."""

from __future__ import annotations

import gc
import tracemalloc

import aiohttp
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

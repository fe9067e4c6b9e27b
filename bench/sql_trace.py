"""Run our server with a timeline of its database calls (bench only).

    python bench/sql_trace.py serve        (instead of python -m coffeechat_home serve)

SIGUSR1 clears the timeline and starts recording; SIGUSR2 stops and writes it
to ``$BENCH_SQL_TRACE`` as JSON lines: one per HTTP request handled, pool
acquire and statement, each with its start and end (perf_counter seconds),
the connection it ran on and the first characters of its text (statements: the whole text and
arguments as well, for EXPLAIN).
bench/bench_initial_sync.py reads it to show which statements of a request
ran one after another and where the time between them went.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
from typing import Any

import asyncpg
import asyncpg.pool
from aiohttp import web_protocol

_on = False
_rows: list[dict[str, Any]] = []


def _record(kind: str, t0: float, what: str, conn: int = 0, **more: Any) -> None:
    if _on:
        _rows.append({"kind": kind, "t0": t0, "t1": time.perf_counter(), "what": what, "conn": conn, **more})


def _plain(v: Any) -> Any:
    """An argument as JSON (lists and scalars; anything else as its repr)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


def _wrap_statement(name: str) -> None:
    original = getattr(asyncpg.connection.Connection, name)

    async def traced(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(self, query, *args, **kw)
        finally:
            if _on:
                _record("sql", t0, " ".join(str(query).split())[:100], id(self) % 100000, query=str(query),
                        args=_plain(args) if name != "executemany" else None)

    setattr(asyncpg.connection.Connection, name, traced)


for _name in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
    _wrap_statement(_name)

_acquire = asyncpg.pool.Pool._acquire


async def _traced_acquire(self: Any, timeout: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return await _acquire(self, timeout)
    finally:
        _record("acquire", t0, f"pool max {self._maxsize}")


asyncpg.pool.Pool._acquire = _traced_acquire  # type: ignore[method-assign]

_handle = web_protocol.RequestHandler._handle_request


async def _traced_handle(self: Any, request: Any, *args: Any, **kw: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return await _handle(self, request, *args, **kw)
    finally:
        _record("http", t0, f"{request.method} {request.path}")


web_protocol.RequestHandler._handle_request = _traced_handle  # type: ignore[method-assign]


def _start(*_: Any) -> None:
    global _on
    _rows.clear()
    _on = True


def _stop(*_: Any) -> None:
    global _on
    _on = False
    with open(os.environ["BENCH_SQL_TRACE"], "w") as out:
        for row in _rows:
            out.write(json.dumps(row) + "\n")
    _rows.clear()


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
sys.argv = ["coffeechat_home", *sys.argv[1:]]
runpy.run_module("coffeechat_home", run_name="__main__", alter_sys=True)

"""Route registration with the client API's versioned prefixes.

Every client route answers under ``/_matrix/client/v3`` and the legacy
``/_matrix/client/r0`` (older and web clients still call it)."""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_V3 = ("/_matrix/client/v3", "/_matrix/client/r0")
CLIENT_V1 = ("/_matrix/client/v1",)


def add_client_route(
    router: web.UrlDispatcher, method: str, path: str, handler: Handler, *, prefixes: Iterable[str] = CLIENT_V3
) -> None:
    for prefix in prefixes:
        router.add_route(method, prefix + path, handler)

"""The admin API, in the paths and shapes of Synapse's
(``/_synapse/admin/...``) so that existing tools and habits work. Server
admins only: everyone else gets 403 M_FORBIDDEN."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

from aiohttp import web

from ...errors import bad_json, forbidden
from ...services.accounts import Requester
from ..auth import AuthedHandler, TokenAuth
from ..http import query_int

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"


def require_admin(requester: Requester) -> None:
    """The one admin check every admin route makes."""
    if not requester.is_admin:
        raise forbidden("You are not a server admin")


def admin_only(auth: TokenAuth, handler: AuthedHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler so it runs only for a server admin's access token."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        requester = await auth.requester(request)
        require_admin(requester)
        return await handler(request, requester)

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper


def optional(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[key]`` if present and of the right JSON type (bool is not an
    int here), else M_BAD_JSON; None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_json(f"{key} must be {what}")
    return value


def paging(request: web.Request, *, min_limit: int = 1) -> tuple[int, int]:
    """``(from, limit)`` of a paged admin list: from 0 and 100 a page by
    default, at most 1000 a page."""
    offset = query_int(request, "from", 0) or 0
    limit = query_int(request, "limit", 100, minimum=min_limit, maximum=1000) or 100
    return offset, limit


Route = tuple[str, str, AuthedHandler]


class AdminRoutes:
    """A group of admin routes: ``routes()`` lists them as (method, path,
    handler) and every one is registered behind ``admin_only``."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    def routes(self) -> Sequence[Route]:
        raise NotImplementedError

    def register_routes(self, router: web.UrlDispatcher) -> None:
        for method, path, handler in self.routes():
            wrapped = admin_only(self.auth, handler)
            if method == "GET":
                router.add_get(path, wrapped)  # with HEAD, as aiohttp adds it
            else:
                router.add_route(method, path, wrapped)

"""POST /user_directory/search."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...services.accounts import Requester
from ...storage.user_directory import UserDirectoryStore
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_WORDS = 8


class UserDirectoryRoutes:
    def __init__(self, directory: UserDirectoryStore, auth: TokenAuth, *, search_all_users: bool) -> None:
        self.directory = directory
        self.auth = auth
        self.search_all_users = search_all_users

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "POST", "/user_directory/search", authed(self.auth, self.search))

    async def search(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "user_directory_search")
        limit = min(body.get("limit", DEFAULT_LIMIT), MAX_LIMIT)
        words = body["search_term"].split()[:MAX_WORDS]
        entries, limited = await self.directory.search(
            requester.user_id, words, limit, search_all=self.search_all_users
        )
        results: list[dict[str, Any]] = []
        for e in entries:
            item: dict[str, Any] = {"user_id": e.user_id}
            if e.display_name is not None:
                item["display_name"] = e.display_name
            if e.avatar_url is not None:
                item["avatar_url"] = e.avatar_url
            results.append(item)
        return json_response({"results": results, "limited": limited})

"""Key routes: ``/_matrix/key/v2/server`` (our keys, self-signed) and the
notary routes ``/_matrix/key/v2/query`` (key responses we hold,
countersigned by us). No authentication (spec)."""

from __future__ import annotations

from typing import Any, Mapping

from aiohttp import web

from ...errors import bad_json
from ...protocol.identifiers import InvalidIdentifier, validate_server_name
from ...services.server_keys import KeyStore, LocalKeys
from ..http import json_response, query_int, read_json_object


class KeyRoutes:
    def __init__(self, local: LocalKeys, key_store: KeyStore) -> None:
        self.local = local
        self.key_store = key_store

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_matrix/key/v2/server", self.server)
        router.add_get("/_matrix/key/v2/server/{key_id}", self.server)  # deprecated form
        router.add_get("/_matrix/key/v2/query/{server_name}", self.query_one)
        router.add_get("/_matrix/key/v2/query/{server_name}/{key_id}", self.query_one)  # deprecated form
        router.add_post("/_matrix/key/v2/query", self.query)

    async def server(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.local.server_keys_response())

    async def query_one(self, request: web.Request) -> web.StreamResponse:
        server_name = request.match_info["server_name"]
        _check_server_name(server_name)
        min_valid = query_int(request, "minimum_valid_until_ts", 0) or 0
        key_id = request.match_info.get("key_id")
        criteria: dict[str, Any] = {key_id: {"minimum_valid_until_ts": min_valid}} if key_id else {}
        if not key_id and min_valid:
            criteria = {}
        return json_response({"server_keys": await self.key_store.notary_answer({server_name: criteria})})

    async def query(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request)
        queries = body.get("server_keys")
        if not isinstance(queries, Mapping):
            raise bad_json("server_keys must be an object of server names")
        if len(queries) > 100:
            raise bad_json("At most 100 servers per query")
        for server_name, criteria in queries.items():
            _check_server_name(server_name)
            if not isinstance(criteria, Mapping) or any(not isinstance(c, Mapping) for c in criteria.values()):
                raise bad_json(f"server_keys.{server_name} must map key ids to objects")
        return json_response({"server_keys": await self.key_store.notary_answer(queries)})


def _check_server_name(name: str) -> None:
    try:
        validate_server_name(name)
    except InvalidIdentifier as e:
        raise bad_json(f"{name!r} is not a server name: {e}") from None

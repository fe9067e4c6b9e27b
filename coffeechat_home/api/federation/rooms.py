"""Federation routes of the resident server: remote servers join, knock on
and leave our rooms and read their events (services/federation/resident.py)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ...errors import MatrixError, invalid_param, missing_param
from ...protocol.identifiers import is_valid_event_id
from ...services.federation.resident import ResidentService
from ..http import json_response
from .auth import FEDERATION_BODY, FederationAuth

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not room_id.startswith("!") or len(room_id) > 255:
        raise invalid_param("Invalid room id")
    return room_id


def _event_id(value: str) -> str:
    if not is_valid_event_id(value):
        raise invalid_param("Invalid event id")
    return value


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        return int(raw)
    except ValueError:
        raise invalid_param("limit must be an integer") from None


class ResidentRoutes:
    def __init__(self, auth: FederationAuth, resident: ResidentService) -> None:
        self.auth = auth
        self.resident = resident

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        router.add_get(V1 + "/make_join/{room_id}/{user_id}", a(self.make_join))
        router.add_put(V2 + "/send_join/{room_id}/{event_id}", a(self.send_join))
        router.add_get(V1 + "/make_knock/{room_id}/{user_id}", a(self.make_knock))
        router.add_put(V1 + "/send_knock/{room_id}/{event_id}", a(self.send_knock))
        router.add_get(V1 + "/make_leave/{room_id}/{user_id}", a(self.make_leave))
        router.add_put(V2 + "/send_leave/{room_id}/{event_id}", a(self.send_leave))
        router.add_get(V1 + "/event/{event_id}", a(self.get_event))
        router.add_get(V1 + "/state/{room_id}", a(self.get_state))
        router.add_get(V1 + "/state_ids/{room_id}", a(self.get_state_ids))
        router.add_get(V1 + "/event_auth/{room_id}/{event_id}", a(self.get_event_auth))
        router.add_get(V1 + "/backfill/{room_id}", a(self.backfill))
        router.add_post(V1 + "/get_missing_events/{room_id}", a(self.get_missing_events))

    def _pdus(self, pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": self.resident.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus}

    async def make_join(self, request: web.Request, origin: str) -> web.StreamResponse:
        versions = request.query.getall("ver", []) or ["1"]
        answer = await self.resident.make_membership(
            origin, _room_id(request), request.match_info["user_id"], "join", versions
        )
        return json_response(answer)

    async def make_knock(self, request: web.Request, origin: str) -> web.StreamResponse:
        versions = request.query.getall("ver", [])
        if not versions:
            raise missing_param("ver is required")
        answer = await self.resident.make_membership(
            origin, _room_id(request), request.match_info["user_id"], "knock", versions
        )
        return json_response(answer)

    async def send_knock(self, request: web.Request, origin: str) -> web.StreamResponse:
        event, _ = await self.resident.send_membership(
            origin, _room_id(request), _event_id(request.match_info["event_id"]), request[FEDERATION_BODY], "knock"
        )
        return json_response(await self.resident.knock_answer(event))

    async def make_leave(self, request: web.Request, origin: str) -> web.StreamResponse:
        answer = await self.resident.make_membership(
            origin, _room_id(request), request.match_info["user_id"], "leave", []
        )
        return json_response(answer)

    async def send_join(self, request: web.Request, origin: str) -> web.StreamResponse:
        room_id = _room_id(request)
        event, before = await self.resident.send_membership(
            origin, room_id, _event_id(request.match_info["event_id"]), request[FEDERATION_BODY], "join"
        )
        omit = request.query.get("omit_members", "false").lower() == "true"
        return json_response(await self.resident.join_answer(event, before, omit_members=omit))

    async def send_leave(self, request: web.Request, origin: str) -> web.StreamResponse:
        room_id = _room_id(request)
        await self.resident.send_membership(
            origin, room_id, _event_id(request.match_info["event_id"]), request[FEDERATION_BODY], "leave"
        )
        return json_response({})

    async def get_event(self, request: web.Request, origin: str) -> web.StreamResponse:
        event = await self.resident.event_of_room(origin, _event_id(request.match_info["event_id"]))
        return json_response(self._pdus(await self.resident.visible_pdus(origin, [event])))

    def _state_event_id(self, request: web.Request) -> str:
        event_id = request.query.get("event_id")
        if not event_id:
            raise missing_param("event_id is required")
        return _event_id(event_id)

    async def get_state(self, request: web.Request, origin: str) -> web.StreamResponse:
        state, chain = await self.resident.state_at(origin, _room_id(request), self._state_event_id(request))
        return json_response({
            "pdus": await self.resident.pdus(state), "auth_chain": await self.resident.pdus(chain),
        })

    async def get_state_ids(self, request: web.Request, origin: str) -> web.StreamResponse:
        state, chain = await self.resident.state_at(origin, _room_id(request), self._state_event_id(request))
        return json_response({"pdu_ids": state, "auth_chain_ids": chain})

    async def get_event_auth(self, request: web.Request, origin: str) -> web.StreamResponse:
        chain = await self.resident.event_auth(
            origin, _room_id(request), _event_id(request.match_info["event_id"])
        )
        return json_response({"auth_chain": chain})

    async def backfill(self, request: web.Request, origin: str) -> web.StreamResponse:
        starts = [_event_id(v) for v in request.query.getall("v", [])]
        if not starts:
            raise missing_param("v is required")
        pdus = await self.resident.backfill(origin, _room_id(request), starts, _limit(request, 10))
        return json_response(self._pdus(pdus))

    async def get_missing_events(self, request: web.Request, origin: str) -> web.StreamResponse:
        body = request[FEDERATION_BODY]
        if not isinstance(body, dict):
            raise MatrixError(400, "M_NOT_JSON", "A JSON object is required")
        earliest = body.get("earliest_events", [])
        latest = body.get("latest_events")
        if not isinstance(latest, list) or not isinstance(earliest, list) or not all(
            isinstance(x, str) for x in [*earliest, *latest]
        ):
            raise MatrixError(400, "M_BAD_JSON", "earliest_events and latest_events must be lists of event ids")
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        if not isinstance(limit, int) or not isinstance(min_depth, int):
            raise MatrixError(400, "M_BAD_JSON", "limit and min_depth must be integers")
        events = await self.resident.missing_events(origin, _room_id(request), earliest, latest, limit, min_depth)
        return json_response({"events": events})

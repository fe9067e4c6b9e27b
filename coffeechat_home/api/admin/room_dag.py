"""The room DAG for server admins (JSON behind the DAG viewer page). Not a
Synapse endpoint, so under coffeechat's own admin prefix:

- ``GET /_coffeechat/admin/v1/rooms/{room_id}/dag`` with ``around`` (an
  event id) or ``from_depth`` / ``to_depth``, and ``limit`` (1-1000,
  default 200): a window of events, never the whole DAG.
- ``GET /_coffeechat/admin/v1/rooms/{room_id}/dag/state/{event_id}``: the
  state after an event and, at a merge, the state keys in conflict."""

from __future__ import annotations

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.admin.room_dag import DEFAULT_LIMIT, RoomDagService
from ..auth import TokenAuth
from ..http import json_response
from . import admin_only

PREFIX = "/_coffeechat/admin/v1"


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid_param(f"{name} must be an integer") from None
    if not -(2**63) <= value < 2**63:
        raise invalid_param(f"{name} is out of range")
    return value


class RoomDagAdminRoutes:
    def __init__(self, dag: RoomDagService, auth: TokenAuth) -> None:
        self.dag = dag
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        router.add_get(PREFIX + "/rooms/{room_id}/dag", admin_only(a, self.window))
        router.add_get(PREFIX + "/rooms/{room_id}/dag/state/{event_id}", admin_only(a, self.state))

    async def window(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        limit = _int_param(request, "limit")
        around = request.query.get("around") or None
        return json_response(await self.dag.window(
            request.match_info["room_id"],
            around=around,
            from_depth=_int_param(request, "from_depth"),
            to_depth=_int_param(request, "to_depth"),
            limit=DEFAULT_LIMIT if limit is None else limit,
        ))

    async def state(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.dag.state_at(request.match_info["room_id"], request.match_info["event_id"]))

"""GET /sync."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.fanout import SYNC_TIMING
from ...services.sync import SyncService
from ...services.sync_filter import SyncFilter
from ..auth import TokenAuth, authed
from ..http import query_int, rooms_json_response
from ..routing import add_client_route

FilterLookup = Callable[[str, str], Awaitable[dict[str, Any] | None]]
PresenceSetter = Callable[[str, str], Awaitable[None]]
# Parsed filters kept (a client sends the same one with every long-poll).
FILTERS_CACHED = 4096


class SyncRoutes:
    def __init__(
        self,
        auth: TokenAuth,
        sync: SyncService,
        get_filter: FilterLookup | None = None,
        set_presence: PresenceSetter | None = None,
        *,
        timing: bool = False,
    ) -> None:
        self.auth = auth
        self.timing = timing
        self.sync_service = sync
        self.get_filter = get_filter
        self.set_presence = set_presence
        # (user id or "" for inline JSON, the filter parameter) -> parsed:
        # filters are immutable (a stored one's id comes from its content)
        self._filters: OrderedDict[tuple[str, str], SyncFilter] = OrderedDict()

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "GET", "/sync", authed(self.auth, self.sync))

    async def _filter(self, requester: Requester, raw: str | None) -> SyncFilter:
        if not raw:
            return SyncFilter()
        inline = raw.lstrip().startswith("{")
        key = ("" if inline else requester.user_id, raw)
        hit = self._filters.get(key)
        if hit is not None:
            self._filters.move_to_end(key)
            return hit
        parsed = await self._parse_filter(requester, raw, inline)
        self._filters[key] = parsed
        if len(self._filters) > FILTERS_CACHED:
            self._filters.popitem(last=False)
        return parsed

    async def _parse_filter(self, requester: Requester, raw: str, inline: bool) -> SyncFilter:
        if inline:
            try:
                value = json.loads(raw)
            except ValueError:
                raise invalid_param("filter is not valid JSON") from None
        else:
            value = await self.get_filter(requester.user_id, raw) if self.get_filter else None
            if value is None:
                raise invalid_param("Unknown filter id")
        if not isinstance(value, dict):
            raise invalid_param("filter must be a JSON object")
        try:
            return SyncFilter.from_json(value)
        except (TypeError, ValueError, AttributeError):
            raise invalid_param("filter has the wrong shape") from None

    async def sync(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        q = request.query
        sync_filter = await self._filter(requester, q.get("filter"))
        timeout = query_int(request, "timeout", 0) or 0
        full_state = q.get("full_state") in ("true", "1")
        set_presence = q.get("set_presence")
        if set_presence is not None and set_presence not in ("online", "offline", "unavailable"):
            raise invalid_param("set_presence must be online, offline or unavailable")
        if self.set_presence is not None:
            await self.set_presence(requester.user_id, set_presence or "online")
        timing: dict[str, float] | None = {} if self.timing else None
        if timing is not None:
            SYNC_TIMING.set(timing)  # this request's task only
        body = await self.sync_service.sync(
            requester, since_token=q.get("since"), timeout_ms=timeout, sync_filter=sync_filter,
            full_state=full_state,
        )
        if timing is None:
            return rooms_json_response(body)
        timing["built"] = time.monotonic()
        response = rooms_json_response(body)
        timing["ready"] = time.monotonic()
        # whole microseconds: formatting floats cost 4 % of a woken sync's CPU
        response.headers["X-Coffeechat-Timing"] = ";".join([f"{k}={round(v * 1e6)}" for k, v in timing.items()])
        return response

"""Push rules (the `global` scope, the only one the spec defines)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...services.accounts import Requester
from ...services.push_rules import PushRuleService
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route

RULE = "/pushrules/global/{kind}/{rule_id}"


class PushRuleRoutes:
    def __init__(self, push_rules: PushRuleService, auth: TokenAuth) -> None:
        self.push_rules = push_rules
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "GET", "/pushrules/", authed(a, self.get_all))
        add_client_route(router, "GET", "/pushrules/global/", authed(a, self.get_global))
        add_client_route(router, "GET", RULE, authed(a, self.get_rule))
        add_client_route(router, "PUT", RULE, authed(a, self.put_rule))
        add_client_route(router, "DELETE", RULE, authed(a, self.delete_rule))
        add_client_route(router, "GET", RULE + "/enabled", authed(a, self.get_enabled))
        add_client_route(router, "PUT", RULE + "/enabled", authed(a, self.put_enabled))
        add_client_route(router, "GET", RULE + "/actions", authed(a, self.get_actions))
        add_client_route(router, "PUT", RULE + "/actions", authed(a, self.put_actions))

    async def get_all(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"global": await self.push_rules.get_ruleset(requester.user_id)})

    async def get_global(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.push_rules.get_ruleset(requester.user_id))

    async def _rule(self, request: web.Request, requester: Requester) -> dict[str, Any]:
        m = request.match_info
        return await self.push_rules.get_rule(requester.user_id, m["kind"], m["rule_id"])

    async def get_rule(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self._rule(request, requester))

    async def put_rule(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        body = await read_json_object(request, "push_rule")
        await self.push_rules.put_rule(
            requester.user_id, m["kind"], m["rule_id"], body, request.query.get("before"), request.query.get("after")
        )
        return json_response({})

    async def delete_rule(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        await self.push_rules.delete_rule(requester.user_id, m["kind"], m["rule_id"])
        return json_response({})

    async def get_enabled(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"enabled": (await self._rule(request, requester))["enabled"]})

    async def put_enabled(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        body = await read_json_object(request, "push_rule_enabled")
        await self.push_rules.set_enabled(requester.user_id, m["kind"], m["rule_id"], body["enabled"])
        return json_response({})

    async def get_actions(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"actions": (await self._rule(request, requester))["actions"]})

    async def put_actions(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        body = await read_json_object(request, "push_rule_actions")
        await self.push_rules.set_actions(requester.user_id, m["kind"], m["rule_id"], body["actions"])
        return json_response({})

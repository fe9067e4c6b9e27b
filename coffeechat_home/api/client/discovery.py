"""/versions and the .well-known documents."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import not_found
from ..http import json_response

# The spec versions whose client-server surface we implement. Advertising
# a version promises its endpoints, so this list grows only with them.
SUPPORTED_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
                      "v1.10", "v1.11"]


class DiscoveryRoutes:
    def __init__(self, server_name: str, client_base_url: str, delegated_server: str | None) -> None:
        self.server_name = server_name
        self.client_base_url = client_base_url
        # What /.well-known/matrix/server names (federation.well_known_server,
        # or the server name's host with the federation listener's port);
        # None while federation is off.
        self.delegated_server = delegated_server

    def client_well_known(self, request: web.Request) -> dict[str, Any]:
        """The client discovery document, as served and as put in login
        answers. Listening on a port the system picked (port = 0), it names
        the port this request actually reached, not 0; a configured
        ``public_baseurl`` is named as it is."""
        base_url = self.client_base_url
        if base_url.endswith(":0/"):
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            if sockname:
                base_url = f"{base_url[:-3]}:{sockname[1]}/"
        return {"m.homeserver": {"base_url": base_url}}

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_matrix/client/versions", self.versions)
        router.add_get("/.well-known/matrix/client", self.well_known_client)
        router.add_get("/.well-known/matrix/server", self.well_known_server)

    async def versions(self, request: web.Request) -> web.StreamResponse:
        return json_response({"versions": SUPPORTED_VERSIONS, "unstable_features": {}})

    async def well_known_client(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.client_well_known(request))

    async def well_known_server(self, request: web.Request) -> web.StreamResponse:
        """Where other servers reach our federation listener. With federation
        off, a 404: other servers' discovery then falls back to the server
        name itself (spec, server discovery) rather than being sent to a port
        where nothing answers."""
        if self.delegated_server is None:
            raise not_found("This server does not federate: no delegation")
        return json_response({"m.server": self.delegated_server})

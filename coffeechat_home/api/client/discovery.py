"""/versions and the .well-known documents."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..http import json_response

# The spec versions whose client-server surface we implement. Advertising
# a version promises its endpoints, so this list grows only with them.
SUPPORTED_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
                      "v1.10", "v1.11"]


class DiscoveryRoutes:
    def __init__(self, server_name: str, client_base_url: str, federation_port: int | None) -> None:
        self.server_name = server_name
        self.client_base_url = client_base_url
        self.federation_port = federation_port

    @property
    def client_well_known(self) -> dict[str, Any]:
        return {"m.homeserver": {"base_url": self.client_base_url}}

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_matrix/client/versions", self.versions)
        router.add_get("/.well-known/matrix/client", self.well_known_client)
        router.add_get("/.well-known/matrix/server", self.well_known_server)

    async def versions(self, request: web.Request) -> web.StreamResponse:
        return json_response({"versions": SUPPORTED_VERSIONS, "unstable_features": {}})

    async def well_known_client(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.client_well_known)

    async def well_known_server(self, request: web.Request) -> web.StreamResponse:
        host = self.server_name.rsplit(":", 1)[0] if not self.server_name.endswith("]") else self.server_name
        port = self.federation_port or 8448
        return json_response({"m.server": f"{host}:{port}"})

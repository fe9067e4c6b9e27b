"""``GET /health``: 200 ``OK`` (as Synapse answers) when the database
answers, else 503 with a Matrix error body. For load balancers and probes;
no access token."""

from __future__ import annotations

from aiohttp import web

from ..errors import MatrixError
from ..services.health import HealthService


class HealthRoutes:
    def __init__(self, health: HealthService) -> None:
        self.health = health

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.get)

    async def get(self, request: web.Request) -> web.StreamResponse:
        problem = await self.health.problem()
        if problem is not None:
            raise MatrixError(503, "M_UNKNOWN", problem)
        return web.Response(text="OK", content_type="text/plain")

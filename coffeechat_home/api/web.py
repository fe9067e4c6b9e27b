"""The built-in web pages (``web.enabled``): the chat page at ``/`` and
``/_coffeechat/``, and the admins' room DAG viewer at
``/_coffeechat/admin/rooms/{room_id}/dag``. Plain files from
``coffeechat_home/web/`` read once at start, served with an ETag (their
content hash; a matching If-None-Match gets 304) and a strict Content
Security Policy: scripts and styles only from this server, no inline code.
The pages talk to the public client-server API only (and the DAG viewer to
the admin JSON endpoint)."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..errors import unrecognized

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_PREFIX = "/_coffeechat/static/"

# connect-src allows any http(s) origin: the chat page may be pointed at
# another homeserver. Everything else only from here, nothing inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = WEB_DIR) -> dict[str, Asset]:
    assets = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        assets[path.name] = Asset(body, ctype, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


class WebRoutes:
    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        self.assets = load_assets() if assets is None else assets

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.chat_page)
        router.add_get("/_coffeechat/", self.chat_page)
        router.add_get("/_coffeechat", self.chat_page)
        router.add_get("/_coffeechat/admin/rooms/{room_id}/dag", self.dag_page)
        router.add_get(STATIC_PREFIX + "{name}", self.static)

    def _serve(self, request: web.Request, asset: Asset) -> web.Response:
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if asset.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})

    async def chat_page(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, self.assets["index.html"])

    async def dag_page(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, self.assets["dag.html"])

    async def static(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info["name"])
        if asset is None or request.match_info["name"].endswith(".html"):
            raise unrecognized("No such file")
        return self._serve(request, asset)

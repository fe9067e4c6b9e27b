"""A server admin for admin API tests: made the way an operator makes one
(`register-user --admin` calls the same service), then logged in."""

from __future__ import annotations

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient


async def make_admin(server: HomeServer, http: aiohttp.ClientSession, name: str = "root") -> ApiClient:
    assert server.services is not None
    await server.services.accounts.register(
        username=name, password="admin pw", device_id=None, device_display_name=None,
        inhibit_login=True, is_admin=True,
    )
    client = ApiClient(f"http://127.0.0.1:{server.client_port}", http, validate=False)
    await login(client, name, "admin pw")
    return client


async def login(client: ApiClient, user: str, password: str) -> int:
    r = await client.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                                    "password": password}, token=None)
    if r.status == 200:
        client.token, client.user_id, client.device_id = r["access_token"], r["user_id"], r["device_id"]
    return r.status

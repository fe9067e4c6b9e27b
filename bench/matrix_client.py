"""The few client-server API calls the room benchmark makes, over one shared
aiohttp ClientSession (keep-alive). Works against any homeserver."""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp

_txn = itertools.count(1)


class HttpError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@dataclass
class User:
    user_id: str
    token: str
    device_id: str


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.http = session
        self.base = base_url.rstrip("/") + "/_matrix/client/v3"

    async def call(
        self, method: str, path: str, user: User | None = None, body: Any = None,
        params: dict[str, str] | None = None, ok: tuple[int, ...] = (200,), timeout: float = 60.0,
    ) -> Any:
        return (await self.call_sized(method, path, user, body, params, ok, timeout))[0]

    async def call_sized(
        self, method: str, path: str, user: User | None = None, body: Any = None,
        params: dict[str, str] | None = None, ok: tuple[int, ...] = (200,), timeout: float = 60.0,
    ) -> tuple[Any, int]:
        """The parsed answer and the size of its body in bytes."""
        headers = {"Authorization": f"Bearer {user.token}"} if user else {}
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method, self.base + path, data=data, headers=headers, params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            raw = await r.read()
            if r.status not in ok:
                raise HttpError(method, path, r.status, raw.decode(errors="replace"))
            return (json.loads(raw) if raw else {}), len(raw)

    async def register(self, username: str, password: str = "bench-password-1") -> User:
        body: dict[str, Any] = {"username": username, "password": password, "initial_device_display_name": "bench"}
        first = await self.call("POST", "/register", body=body, ok=(200, 401))
        if "access_token" not in first:
            body["auth"] = {"type": "m.login.dummy", "session": first.get("session")}
            first = await self.call("POST", "/register", body=body)
        return User(first["user_id"], first["access_token"], first["device_id"])

    async def create_room(self, user: User, **extra: Any) -> str:
        body = {"preset": "public_chat", **extra}
        return (await self.call("POST", "/createRoom", user, body))["room_id"]

    async def join(self, user: User, room_id: str) -> None:
        await self.call("POST", f"/rooms/{q(room_id)}/join", user, {})

    async def send_text(self, user: User, room_id: str, text: str) -> str:
        txn = f"b{time.monotonic_ns()}.{next(_txn)}"
        body = {"msgtype": "m.text", "body": text}
        r = await self.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{txn}", user, body)
        return r["event_id"]

    async def sync(
        self, user: User, since: str | None = None, timeout_ms: int = 0, filter_json: Any = None,
        http_timeout: float = 120.0,
    ) -> dict[str, Any]:
        return (await self.sync_sized(user, since, timeout_ms, filter_json, http_timeout))[0]

    async def sync_sized(
        self, user: User, since: str | None = None, timeout_ms: int = 0, filter_json: Any = None,
        http_timeout: float = 120.0,
    ) -> tuple[dict[str, Any], int]:
        params = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        if filter_json is not None:
            params["filter"] = json.dumps(filter_json, separators=(",", ":"))
        return await self.call_sized("GET", "/sync", user, params=params, timeout=http_timeout)

    async def messages(
        self, user: User, room_id: str, from_token: str | None, limit: int = 20
    ) -> tuple[dict[str, Any], int]:
        """One /messages page backwards and its size in bytes."""
        params = {"dir": "b", "limit": str(limit)}
        if from_token:
            params["from"] = from_token
        return await self.call_sized("GET", f"/rooms/{q(room_id)}/messages", user, params=params)

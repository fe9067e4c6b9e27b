"""A small HTTP client for tests: real sockets, JSON in and out, and
optional validation of every answer against the spec's schemas."""

from __future__ import annotations

from typing import Any

import aiohttp

from .conftest import HAVE_SPEC
from .spec_validation import validate_response



class Response:
    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body!r}>"


class ApiClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, *, validate: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.validate = validate
        self.token: str | None = None
        self.user_id: str | None = None
        self.device_id: str | None = None

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        data: Any = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        validate: bool | None = None,
    ) -> Response:
        hdrs = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        if not path.startswith("/"):
            path = "/_matrix/client/v3/" + path
        async with self.session.request(
            method, self.base_url + path, json=json, data=data, headers=hdrs, params=params
        ) as resp:
            text = await resp.text()
            ctype = resp.headers.get("Content-Type", "")
            assert ctype.startswith("application/json"), f"{method} {path}: non-JSON answer {resp.status}: {text[:200]}"
            import json as _json

            body = _json.loads(text) if text else None
            result = Response(resp.status, body, resp.headers)
        if resp.status >= 400:
            assert isinstance(body, dict) and (
                "errcode" in body or "flows" in body
            ), f"{method} {path}: error without errcode: {body}"
        do_validate = self.validate if validate is None else validate
        if do_validate and HAVE_SPEC and method != "OPTIONS":
            validate_response(method, path.split("?")[0], resp.status, body)
        return result

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, json, **kw)

    async def delete(self, path: str, json: Any = None, **kw: Any) -> Response:
        return await self.request("DELETE", path, json, **kw)

    async def register(self, username: str, password: str = "correct horse battery", **extra: Any) -> Response:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}, **extra}
        r = await self.post("register", body, token=None)
        assert r.status == 200, r
        self.token, self.user_id, self.device_id = r["access_token"], r["user_id"], r["device_id"]
        return r

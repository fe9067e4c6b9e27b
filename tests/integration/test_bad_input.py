"""Bad input never gets a 500: walk every registered client route of the
running server and send bounded malformed requests (garbage path
parameters, bodies that are not JSON objects or have wrong-typed fields,
garbage query parameters, missing or bogus access tokens).

Every answer must be < 500, and an error (>= 400) must be a Matrix JSON
body with an ``errcode``. Nothing stored may be corrupted: every table is
read before and after the walk and compared (bob, who sends none of the
requests, keeps every row he had; every event stored before keeps its place
and PDU unless redacted; every stored PDU still hashes to its event id;
every room's history stays one chain); through the API, bob's account data
and his view of the room's history are unchanged; and every GET route is
walked again with valid parameters."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, urlencode

import aiohttp
import pytest

from ..helpers import ApiClient
from .db_checks import assert_events_intact, assert_linear_history, rows_of_user, snapshot
from .room_helpers import create_room, send_text

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_txn = itertools.count()

LONG = "x" * 10_240
# Garbage for any path parameter, plus per-kind garbage below.
GENERIC_GARBAGE = ["", LONG, "ünï😀code", "%00", "a b"]
KIND_GARBAGE = {
    "room": ["!x", "#", "!nosuch:test.local"],
    "user": ["nouser", "@x", "@:"],
    "event": ["$has space", "x"],
}
PARAM_KIND = {
    "room_id": "room",
    "room": "room",
    "user_id": "user",
    "event_id": "event",
}

NOT_JSON = b"{not json"
# Wrong types for every field name the server's request schemas know about
# (and a few read by handlers without a schema).
EXTRA_FIELDS = [
    "body", "msgtype", "membership", "content", "typing", "timeout", "presence", "status_msg",
    "displayname", "avatar_url", "tags", "order", "m.fully_read", "m.read", "m.read.private",
    "thread_id", "new_version", "server", "via", "server_name", "third_party_signed", "room_alias_name",
    "initial_state", "creation_content", "power_level_content_override", "is_direct", "search_term",
    "limit", "filter", "since", "include_all_networks", "third_party_instance_id", "actions",
    "conditions", "pattern", "enabled", "device_id", "devices", "display_name", "auth", "password",
    "new_password", "logout_devices", "identifier", "type", "user", "medium", "address", "token",
    "initial_device_display_name", "refresh_token", "inhibit_login", "username", "kind",
    "room_id", "user_id", "reason", "visibility", "preset", "name", "topic", "invite", "invite_3pid",
    "room_version", "id_server", "erase", "event_fields", "event_format", "account_data", "room",
    "rooms", "not_rooms", "senders", "types", "not_types", "timeline", "state", "ephemeral",
    "include_leave", "lazy_load_members", "unread_thread_notifications", "contains_url",
]


def _known_fields() -> list[str]:
    from coffeechat_home.resources import spec_dir

    names: set[str] = set(EXTRA_FIELDS)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                names.update(props)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted((spec_dir() / "requests").glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return sorted(names)


def _nested(depth: int) -> Any:
    v: Any = []
    for _ in range(depth):
        v = [v]
    return v


def bad_bodies() -> list[tuple[str, Any]]:
    """(case name, raw bytes or JSON value)."""
    known = _known_fields()
    return [
        ("body=not-json", NOT_JSON),
        ("body=array", [1, 2, 3]),
        ("body=string", "hello"),
        ("body=number", 42),
        ("body=null", None),
        ("body=fields-as-numbers", {k: 12345 for k in known}),
        ("body=fields-as-strings", {k: "str" for k in known}),
        ("body=fields-as-lists", {k: [1, {"a": None}, "x"] for k in known}),
        ("body=fields-as-objects", {k: {"nested": {"x": [True]}} for k in known}),
        ("body=fields-huge", {k: ([0] * 5000 if i % 2 else _nested(200)) for i, k in enumerate(known)}),
        ("body=fields-bool-null", {k: (True if i % 2 else None) for i, k in enumerate(known)}),
        ("body=fields-bigint", {k: 10**30 for k in known}),
    ]


# Garbage for the query parameters each handler reads.
QUERY_GARBAGE: dict[str, list[str]] = {
    "limit": ["-1", "abc", "99999999999999999999999", "1.5"],
    "from": ["zzz", "99999999999999999999999", "s-1_x", ""],
    "to": ["zzz", "99999999999999999999999"],
    "dir": ["x", ""],
    "since": ["garbage", "99999999999999999999999", "s1_%00"],
    "timeout": ["abc", "-1", "99999999999999999999999"],
    "filter": ["{bad json", '{"room":{"timeline":{"limit":"x"}}}', "[1]", "999999999999999999999", '"s"',
               '{"types":[1]}', '{"room":{"rooms":5,"state":{"types":"x"}}}', LONG],
    "full_state": ["maybe"],
    "set_presence": ["nope"],
    "include": ["x"],
    "only": ["x", LONG],
    "kind": ["x"],
    "username": ["", LONG, "ÜÑÏ", "%00"],
    "server": ["%00", LONG],
    "at": ["zzz", "99999999999999999999999"],
    "membership": ["x"],
    "not_membership": ["x"],
    "format": ["x"],
    "before": ["x", LONG],
    "after": ["x"],
    "width": ["-1", "abc", "99999999999999999999999", "0", ""],
    "height": ["-1", "1.5", "99999999999999999999999"],
    "method": ["stretch", ""],
    "timeout_ms": ["-5", "abc", "99999999999999999999999"],
    "filename": ["../../etc/passwd", "a/b", "\x00", LONG],
    "before_ts": ["x", "-1", "99999999999999999999999"],
    "version": ["x", "-1", "99999999999999999999999", ""],
}
# Which query parameters each route reads (matched on the path's end).
QUERY_ROUTES: list[tuple[str, str, list[str]]] = [
    ("GET", "/register", ["kind"]),
    ("POST", "/register", ["kind"]),
    ("GET", "/register/available", ["username"]),
    ("GET", "/publicRooms", ["limit", "since", "server"]),
    ("POST", "/publicRooms", ["server"]),
    ("GET", "/threads", ["include", "from", "limit"]),
    ("GET", "/relations/{event_id}", ["dir", "from", "to", "limit"]),
    ("GET", "/relations/{event_id}/{rel_type}/{event_type}", ["dir", "from", "limit"]),
    ("GET", "/notifications", ["limit", "from", "only"]),
    ("PUT", "/pushrules/global/{kind}/{rule_id}", ["before", "after"]),
    ("GET", "/context/{event_id}", ["limit", "filter"]),
    ("GET", "/messages", ["limit", "dir", "from", "to", "filter"]),
    ("GET", "/members", ["at", "membership", "not_membership"]),
    ("GET", "/state/{event_type}/{state_key}", ["format"]),
    ("GET", "/sync", ["since", "timeout", "filter", "full_state", "set_presence"]),
    ("GET", "/thumbnail/{server_name}/{media_id}", ["width", "height", "method", "timeout_ms"]),
    ("GET", "/download/{server_name}/{media_id}", ["timeout_ms"]),
    ("POST", "/media/v3/upload", ["filename"]),
    ("PUT", "/upload/{server_name}/{media_id}", ["filename"]),
    ("POST", "/purge_media_cache", ["before_ts"]),
    ("GET", "/keys/changes", ["from", "to"]),
    ("PUT", "/room_keys/keys", ["version"]),
    ("GET", "/room_keys/keys", ["version"]),
    ("DELETE", "/room_keys/keys", ["version"]),
    ("PUT", "/room_keys/keys/{room_id}/{session_id}", ["version"]),
    ("GET", "/room_keys/keys/{room_id}", ["version"]),
]

BIG = 10**30
# Deeper wrong-typed bodies for routes with nested known fields.
TARGETED_BODIES: list[tuple[str, str, list[Any]]] = [
    ("POST", "/filter", [{"room": {"timeline": {"limit": BIG}}}, {"presence": {"limit": BIG, "types": [1]}},
                         {"room": {"rooms": "!x", "timeline": []}}]),
    ("PUT", "/pushrules/global/{kind}/{rule_id}", [
        {"actions": [{"set_tweak": "x", "value": BIG}], "pattern": "x"},
        {"actions": ["notify"], "conditions": [{"kind": "event_match", "key": "a", "pattern": "b", "x": BIG}]},
        {"actions": [["notify"]], "conditions": "x", "pattern": 5},
    ]),
    ("PUT", "/actions", [{"actions": [{"set_tweak": "x", "value": BIG}]}, {"actions": "notify"}]),
    ("PUT", "/profile/{user_id}/{key}", [{"displayname": BIG, "m.custom": BIG}, {"displayname": "x" * 70000}]),
    ("PUT", "/send/{event_type}/{txn_id}", [{"body": "x", "n": BIG}, {"body": "x", "f": 1.5}]),
    ("PUT", "/state/{event_type}/{state_key}", [{"x": BIG}, {"topic": ["x"]}]),
    ("PUT", "/account_data/{type}", [{"x": [BIG]}]),
    ("POST", "/createRoom", [
        {"creation_content": {"x": BIG}},
        {"initial_state": [{"type": "m.x", "state_key": "", "content": {"n": BIG}}]},
        {"initial_state": [{"type": 5, "content": "x"}, "x"]},
        {"power_level_content_override": {"users_default": BIG, "users": {"@a:b": "x"}}},
        {"invite": ["not-a-user", 5], "room_version": "x" * 1000},
        {"name": "x" * 70000},
    ]),
    ("POST", "/read_markers", [{"m.fully_read": "$x", "m.read": BIG}]),
    ("POST", "/receipt/{receipt_type}/{event_id}", [{"thread_id": BIG}]),
    ("PUT", "/devices/{device_id}", [{"display_name": BIG}]),
    ("PUT", "/typing/{user_id}", [{"typing": True, "timeout": BIG}, {"typing": True, "timeout": -1}]),
    ("POST", "/user_directory/search", [{"search_term": "a", "limit": BIG}, {"search_term": "a", "limit": -1}]),
    ("POST", "/publicRooms", [{"limit": BIG}, {"limit": -1, "filter": {"generic_search_term": 5}}, {"since": "zzz"}]),
    ("PUT", "/redact/{event_id}/{txn_id}", [{"reason": BIG}]),
    ("POST", "/invite", [{"user_id": "@" + LONG}, {"user_id": "nouser", "reason": BIG}]),
    ("POST", "/ban", [{"user_id": "@x:test.local", "reason": BIG}]),
    ("POST", "/upgrade", [{"new_version": LONG}]),
    ("PUT", "/directory/room/{alias}", [{"room_id": "!x" + LONG}]),
]

# Path parameters for the targeted bodies (a user push rule, a custom profile field).
TARGETED_PARAMS = {"rule_id": "myrule", "key": "m.custom"}

# Routes whose success would end the requester's session or account: every
# authenticated request to them is made by a throwaway user.
DESTRUCTIVE = ("/logout", "/logout/all", "/account/deactivate", "/account/password", "/delete_devices")


@dataclass
class Route:
    method: str
    path: str  # canonical, with {params}

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.path)

    def destructive(self) -> bool:
        return self.path.endswith(DESTRUCTIVE) or (self.method == "DELETE" and "/devices/" in self.path)


@dataclass
class Case:
    route: Route
    name: str
    url_path: str
    body: Any = field(default=None)
    has_body: bool = False
    query: dict[str, str] | None = None
    auth: str = "alice"  # alice | none | bogus | throwaway


def client_routes(server: Any) -> list[Route]:
    seen: set[tuple[str, str]] = set()
    routes: list[Route] = []
    for r in server.runners[0].app.router.routes():
        if r.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = r.resource.canonical
        if "/_matrix/client/r0/" in path:  # the same handlers as v3
            continue
        if (r.method, path) not in seen:
            seen.add((r.method, path))
            routes.append(Route(r.method, path))
    return routes


def fill(path: str, values: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: quote(values[m.group(1)], safe=""), path)


class Walker:
    def __init__(self, base_url: str, http: aiohttp.ClientSession, alice: ApiClient, new_client: Callable[[], ApiClient]):
        self.base_url = base_url
        self.http = http
        self.alice = alice
        self.new_client = new_client
        self.failures: list[str] = []
        self.count = 0
        self.sem = asyncio.Semaphore(16)
        self._users = itertools.count()

    async def token_for(self, case: Case) -> str | None:
        if case.auth == "none":
            return None
        if case.auth == "bogus":
            return "syt_bogus_" + LONG[:100]
        if case.auth == "throwaway":
            c = self.new_client()
            await c.register(f"throwaway{next(self._users)}")
            return c.token
        return self.alice.token

    async def send(self, case: Case) -> None:
        async with self.sem:
            token = await self.token_for(case)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            data: bytes | None = None
            if case.has_body:
                data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
                headers["Content-Type"] = "application/json"
            url = self.base_url + case.url_path
            if case.query:
                url += "?" + urlencode(case.query)
            label = f"{case.route.method} {case.route.path} [{case.name}, auth={case.auth}]"
            self.count += 1
            try:
                async with self.http.request(
                    case.route.method, url, data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as resp:
                    text = await resp.text(errors="replace")
                    status = resp.status
            except asyncio.TimeoutError:
                self.failures.append(f"{label}: no answer within 15 s")
                return
            if status >= 500:
                self.failures.append(f"{label}: {status} {text[:200]}")
            elif status >= 400:
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                if not (isinstance(body, dict) and (isinstance(body.get("errcode"), str) or "flows" in body)):
                    self.failures.append(f"{label}: {status} without a Matrix error body: {text[:200]}")

    async def run(self, cases: list[Case]) -> None:
        await asyncio.gather(*(self.send(c) for c in cases))


async def _setup(alice: ApiClient, bob: ApiClient) -> dict[str, str]:
    room_id = await create_room(alice, {"preset": "public_chat"})
    r = await bob.post(f"rooms/{quote(room_id, safe='')}/join", {})
    assert r.status == 200, r
    event_id = await send_text(alice, room_id, "hello")
    r = await alice.post(f"user/{quote(alice.user_id or '', safe='')}/filter", {"room": {"timeline": {"limit": 5}}})
    assert r.status == 200, r
    async with alice.session.post(alice.base_url + "/_matrix/media/v3/upload", data=b"a file",
                                  headers={"Authorization": f"Bearer {alice.token}"}) as up:
        assert up.status == 200
        media_id = (await up.json())["content_uri"].rsplit("/", 1)[1]
    backup = await alice.post("room_keys/version", {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                                                    "auth_data": {"public_key": "x"}})
    assert backup.status == 200, backup
    return {
        "server_name": "test.local",
        "media_id": media_id,
        "file_name": "a file.txt",
        "version": backup["version"],
        "session_id": "s",
        # admin API (alice is no admin: refused, but walked all the same)
        "token": "a-registration-token",
        "delete_id": "a-delete-id",
        "purge_id": "a-purge-id",
        "room_id": room_id,
        "room": room_id,
        "user_id": alice.user_id or "",
        "event_id": event_id,
        "event_type": "m.room.topic",
        "state_key": "",
        "txn_id": "t",
        "alias": "#valid:test.local",
        "device_id": alice.device_id or "",
        "type": "m.test",
        "tag": "u.work",
        "receipt_type": "m.read",
        "kind": "override",
        "rule_id": ".m.rule.master",
        "key": "displayname",
        "filter_id": r["filter_id"],
        "rel_type": "m.thread",
    }


def _valid_values(valid: dict[str, str]) -> dict[str, str]:
    values = dict(valid)
    values["txn_id"] = f"t{next(_txn)}"
    return values


def build_cases(routes: list[Route], valid: dict[str, str]) -> list[Case]:
    cases: list[Case] = []
    bodies = bad_bodies()
    for route in routes:
        params = route.params
        # 1. garbage path parameters, one parameter at a time (round-robin).
        if params:
            for p in params:
                garbage = GENERIC_GARBAGE + KIND_GARBAGE.get(PARAM_KIND.get(p, ""), [])
                for g in garbage:
                    values = _valid_values(valid)
                    values[p] = g
                    name = f"path {p}={g[:20]!r}{'...' if len(g) > 20 else ''}"
                    has_body = route.method in ("POST", "PUT")
                    cases.append(Case(route, name, fill(route.path, values), body={}, has_body=has_body,
                                      auth="throwaway" if route.destructive() else "alice"))
        # 2. bad bodies on a valid path.
        if route.method in ("POST", "PUT", "DELETE"):
            for name, body in bodies:
                cases.append(Case(route, name, fill(route.path, _valid_values(valid)), body=body, has_body=True,
                                  auth="throwaway" if route.destructive() else "alice"))
        for method, suffix, targeted in TARGETED_BODIES:
            if route.method == method and route.path.endswith(suffix):
                for n, body in enumerate(targeted):
                    for overrides in ({}, TARGETED_PARAMS):
                        values = {**_valid_values(valid), **overrides}
                        cases.append(Case(route, f"body=targeted-{n} {overrides or ''}", fill(route.path, values),
                                          body=body, has_body=True))
        # 3. garbage query parameters.
        for method, suffix, names in QUERY_ROUTES:
            if route.method == method and route.path.endswith(suffix):
                for qn in names:
                    for value in QUERY_GARBAGE[qn]:
                        shown = value[:20] + ("..." if len(value) > 20 else "")
                        cases.append(Case(route, f"query {qn}={shown!r}", fill(route.path, _valid_values(valid)),
                                          body={}, has_body=route.method in ("POST", "PUT"), query={qn: value},
                                          auth="throwaway" if route.destructive() else "alice"))
        # 4. no token, a bogus token, a garbage access_token query parameter.
        for auth in ("none", "bogus"):
            cases.append(Case(route, "auth", fill(route.path, _valid_values(valid)), body=NOT_JSON,
                              has_body=route.method in ("POST", "PUT"), auth=auth))
        cases.append(Case(route, "query access_token=%00", fill(route.path, _valid_values(valid)),
                          body=NOT_JSON, has_body=route.method in ("POST", "PUT"),
                          query={"access_token": "\x00" + LONG[:50]}, auth="none"))
    return cases


async def _bob_view(bob: ApiClient, room_id: str) -> dict[str, Any]:
    """What bob reads through the API: his account data and the room's history."""
    r = await bob.get(f"user/{quote(bob.user_id or '', safe='')}/account_data/m.test.bob", validate=False)
    assert r.status == 200, r
    account_data = r.body
    r = await bob.get(f"rooms/{quote(room_id, safe='')}/messages", params={"dir": "f", "limit": "1000"},
                      validate=False)
    assert r.status == 200, r
    return {"account_data": account_data, "history": [(e["event_id"], e["type"]) for e in r["chunk"]]}


async def test_bad_input_never_500(
    server: Any, base_url: str, http: aiohttp.ClientSession, alice: ApiClient, bob: ApiClient,
    new_client: Callable[[], ApiClient], caplog: pytest.LogCaptureFixture, database_url: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="coffeechat_home.errors")
    valid = await _setup(alice, bob)
    r = await bob.put(f"user/{quote(bob.user_id or '', safe='')}/account_data/m.test.bob", {"kept": [1, "two"]})
    assert r.status == 200, r
    routes = client_routes(server)
    assert len(routes) > 50, "the route walk found suspiciously few routes"
    cases = build_cases(routes, valid)
    # an upper bound against a runaway case builder (the admin API added ~300)
    assert 300 < len(cases) < 4000
    walker = Walker(base_url, http, alice, new_client)
    bob_before = await _bob_view(bob, valid["room_id"])
    stored_before = await snapshot(database_url)
    await walker.run(cases)

    # Nothing stored is corrupted (read before anyone else touches it).
    stored_after = await snapshot(database_url)
    assert rows_of_user(stored_after, bob.user_id or "") == rows_of_user(stored_before, bob.user_id or "")
    assert_events_intact(stored_before, stored_after)
    for room in stored_after["rooms"]:
        await assert_linear_history(database_url, room["room_id"])
    bob_after = await _bob_view(bob, valid["room_id"])
    assert bob_after["account_data"] == bob_before["account_data"] == {"kept": [1, "two"]}
    assert bob_after["history"][: len(bob_before["history"])] == bob_before["history"]

    # Nothing stored is corrupted: every GET route still answers sanely with
    # valid parameters, for alice and bob (alice's session must survive).
    r = await alice.get("account/whoami")
    assert r.status == 200, r
    after = [
        Case(route, "valid after walk", fill(route.path, _valid_values(valid)), auth=who)
        for route in routes
        if route.method == "GET"
        for who in ("alice",)
    ]
    await walker.run(after)
    for client in (alice, bob):
        r = await client.get("sync", validate=False)
        assert r.status == 200, r
    r = await bob.get(f"rooms/{quote(valid['room_id'], safe='')}/messages", params={"dir": "b"}, validate=False)
    assert r.status == 200, r

    logged = [rec.getMessage() for rec in caplog.records if rec.name == "coffeechat_home.errors"]
    problems = walker.failures + [f"logged server error: {m}" for m in logged]
    assert not problems, f"{len(problems)} of {walker.count} requests failed:\n" + "\n".join(problems)

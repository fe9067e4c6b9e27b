"""Registration, login, logout, whoami, password and deactivation over HTTP."""

from __future__ import annotations

import io
from typing import Callable

import pytest

from ..helpers import ApiClient

PW = "correct horse battery"


def password_auth(user: str, password: str = PW, session: str | None = None) -> dict:
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
    if session:
        auth["session"] = session
    return auth


async def test_register_without_auth_returns_uia_flows(api: ApiClient) -> None:
    r = await api.post("register", {"username": "alice", "password": PW}, token=None)
    assert r.status == 401
    assert r["flows"] == [{"stages": ["m.login.dummy"]}]
    assert isinstance(r["session"], str)
    # completing the stage with the session registers
    r2 = await api.post(
        "register",
        {"username": "alice", "password": PW, "auth": {"type": "m.login.dummy", "session": r["session"]}},
        token=None,
    )
    assert r2.status == 200
    assert r2["user_id"] == "@alice:test.local"
    assert r2["access_token"] and r2["device_id"]


async def test_register_then_whoami(api: ApiClient) -> None:
    await api.register("bob", device_id="PHONE", initial_device_display_name="Bob's phone")
    r = await api.get("account/whoami")
    assert r.status == 200
    assert r.body == {"user_id": "@bob:test.local", "device_id": "PHONE", "is_guest": False}


async def test_register_taken_username(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("carol")
    r = await new_client().post(
        "register", {"username": "carol", "password": PW, "auth": {"type": "m.login.dummy"}}, token=None
    )
    assert (r.status, r["errcode"]) == (400, "M_USER_IN_USE")


@pytest.mark.parametrize("username", ["Alice", "al ice", "al:ice", "é", "@x:other.server", "a" * 300, ""])
async def test_register_bad_usernames(api: ApiClient, username: str) -> None:
    r = await api.post(
        "register", {"username": username, "password": PW, "auth": {"type": "m.login.dummy"}},
        token=None, validate=False,
    )
    assert r.status == 400
    assert r["errcode"] in ("M_INVALID_USERNAME", "M_BAD_JSON")


async def test_register_available(api: ApiClient) -> None:
    r = await api.get("register/available", params={"username": "dave"}, token=None)
    assert r.status == 200 and r["available"] is True
    await api.register("dave")
    r = await api.get("register/available", params={"username": "dave"}, token=None)
    assert (r.status, r["errcode"]) == (400, "M_USER_IN_USE")
    r = await api.get("register/available", params={"username": "Bad Name"}, token=None)
    assert (r.status, r["errcode"]) == (400, "M_INVALID_USERNAME")


async def test_register_without_password_is_refused(api: ApiClient) -> None:
    r = await api.post("register", {"username": "nopw", "auth": {"type": "m.login.dummy"}}, token=None,
                       validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")


async def test_register_inhibit_login_gives_no_token(api: ApiClient) -> None:
    r = await api.post(
        "register",
        {"username": "quiet", "password": PW, "inhibit_login": True, "auth": {"type": "m.login.dummy"}},
        token=None,
    )
    assert r.status == 200
    assert r["user_id"] == "@quiet:test.local" and "access_token" not in r.body


async def test_register_guest_is_forbidden(api: ApiClient) -> None:
    r = await api.post("register", {}, params={"kind": "guest"}, token=None, validate=False)
    assert (r.status, r["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


async def test_register_bad_json_types(api: ApiClient) -> None:
    r = await api.post("register", {"username": 5, "password": PW}, token=None, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.post("register", [1, 2], token=None, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")


async def test_malformed_json_is_m_not_json(api: ApiClient) -> None:
    r = await api.post("register", data=b"{not json", token=None, validate=False,
                       headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")
    r = await api.post("login", data=b'{"type": NaN}', token=None, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")


async def test_oversized_body_is_m_too_large(api: ApiClient) -> None:
    big = b'{"username": "' + b"a" * 1_100_000 + b'"}'
    r = await api.post("register", data=io.BytesIO(big), token=None, validate=False)
    assert (r.status, r["errcode"]) == (413, "M_TOO_LARGE")


async def test_login_flows(api: ApiClient) -> None:
    r = await api.get("login", token=None)
    assert r.status == 200
    assert {"type": "m.login.password"} in r["flows"]


async def test_login_by_localpart_and_user_id(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("erin")
    c = new_client()
    for user in ("erin", "@erin:test.local", "ERIN"):
        r = await c.post(
            "login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": PW},
            token=None,
        )
        assert r.status == 200, (user, r)
        assert r["user_id"] == "@erin:test.local"
    # legacy top-level "user"
    r = await c.post("login", {"type": "m.login.password", "user": "erin", "password": PW}, token=None)
    assert r.status == 200
    # device_id is honoured and whoami reports it
    r = await c.post(
        "login", {"type": "m.login.password", "user": "erin", "password": PW, "device_id": "LAPTOP"}, token=None
    )
    assert r["device_id"] == "LAPTOP"
    w = await c.get("account/whoami", token=r["access_token"])
    assert w["device_id"] == "LAPTOP"


async def test_login_wrong_password_and_unknown_user(api: ApiClient) -> None:
    await api.register("frank")
    r = await api.post("login", {"type": "m.login.password", "user": "frank", "password": "nope"}, token=None)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.post("login", {"type": "m.login.password", "user": "nobody", "password": PW}, token=None)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.post("login", {"type": "m.login.password", "user": "@frank:elsewhere", "password": PW}, token=None)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")


async def test_login_unknown_type_and_missing_fields(api: ApiClient) -> None:
    r = await api.post("login", {"type": "m.login.magic"}, token=None)
    assert (r.status, r["errcode"]) == (400, "M_UNKNOWN")
    r = await api.post("login", {"password": PW}, token=None, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.post("login", {"type": "m.login.password", "password": PW}, token=None, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")


async def test_missing_and_unknown_token(api: ApiClient) -> None:
    r = await api.get("account/whoami", token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await api.get("account/whoami", token="cch_not_a_real_token")
    assert (r.status, r["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert r["soft_logout"] is False


async def test_token_in_query_and_long_token(api: ApiClient) -> None:
    await api.register("gina")
    token = api.token
    r = await api.get(f"account/whoami?access_token={token}", token=None)
    assert r.status == 200 and r["user_id"] == "@gina:test.local"
    # A 20 KB token must get a Matrix error, not aiohttp's plain-text 400.
    r = await api.get("account/whoami", token="x" * 20_000)
    assert (r.status, r["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_logout_revokes_token_and_device(api: ApiClient) -> None:
    await api.register("hank", device_id="D1")
    r = await api.post("logout", {})
    assert r.status == 200
    r = await api.get("account/whoami")
    assert (r.status, r["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # the device went with it
    r = await api.post("login", {"type": "m.login.password", "user": "hank", "password": PW}, token=None)
    api.token = r["access_token"]
    devices = await api.get("devices")
    assert [d["device_id"] for d in devices["devices"]] == [r["device_id"]]


async def test_logout_all(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("ivy")
    other = new_client()
    r = await other.post("login", {"type": "m.login.password", "user": "ivy", "password": PW}, token=None)
    other.token = r["access_token"]
    assert (await api.post("logout/all", {})).status == 200
    assert (await api.get("account/whoami")).status == 401
    assert (await other.get("account/whoami")).status == 401


async def test_legacy_r0_paths(api: ApiClient) -> None:
    await api.register("jack")
    r = await api.get("/_matrix/client/r0/account/whoami")
    assert r.status == 200 and r["user_id"] == "@jack:test.local"


async def test_change_password_needs_uia_and_logs_out_others(
    api: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    await api.register("kate")
    other = new_client()
    r = await other.post("login", {"type": "m.login.password", "user": "kate", "password": PW}, token=None)
    other.token = r["access_token"]
    r = await api.post("account/password", {"new_password": "new secret pw"})
    assert r.status == 401 and r["flows"] == [{"stages": ["m.login.password"]}]
    session = r["session"]
    r = await api.post(
        "account/password",
        {"new_password": "new secret pw", "auth": password_auth("kate", "wrong", session)},
        validate=False,
    )
    assert r.status == 401 and r["errcode"] == "M_FORBIDDEN"
    r = await api.post("account/password", {"new_password": "new secret pw", "auth": password_auth("kate")})
    assert r.status == 200
    assert (await api.get("account/whoami")).status == 200  # this session stays
    assert (await other.get("account/whoami")).status == 401  # others are logged out
    r = await api.post("login", {"type": "m.login.password", "user": "kate", "password": PW}, token=None)
    assert r.status == 403
    r = await api.post("login", {"type": "m.login.password", "user": "kate", "password": "new secret pw"}, token=None)
    assert r.status == 200


async def test_change_password_keep_devices(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("leo")
    other = new_client()
    r = await other.post("login", {"type": "m.login.password", "user": "leo", "password": PW}, token=None)
    other.token = r["access_token"]
    r = await api.post(
        "account/password", {"new_password": "x2", "logout_devices": False, "auth": password_auth("leo")}
    )
    assert r.status == 200
    assert (await other.get("account/whoami")).status == 200


async def test_uia_cannot_authorise_for_another_user(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("mia")
    other = new_client()
    await other.register("ned")
    r = await api.post("account/password", {"new_password": "pwned", "auth": password_auth("ned")},
                       validate=False)
    assert r.status == 401 and r["errcode"] == "M_FORBIDDEN"


async def test_deactivate(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("olga")
    r = await api.post("account/deactivate", {})
    assert r.status == 401 and "flows" in r.body
    r = await api.post("account/deactivate", {"auth": password_auth("olga")})
    assert r.status == 200
    assert r["id_server_unbind_result"] == "no-support"
    assert (await api.get("account/whoami")).status == 401
    c = new_client()
    r = await c.post("login", {"type": "m.login.password", "user": "olga", "password": PW}, token=None)
    assert r.status == 403 and r["errcode"] in ("M_USER_DEACTIVATED", "M_FORBIDDEN")
    # the name stays taken
    r = await c.post("register", {"username": "olga", "password": PW, "auth": {"type": "m.login.dummy"}}, token=None)
    assert (r.status, r["errcode"]) == (400, "M_USER_IN_USE")


async def test_registration_closed(start_server, http) -> None:  # type: ignore[no-untyped-def]
    hs = await start_server(COFFEECHAT_REGISTRATION_MODE="closed")
    c = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    r = await c.post("register", {"username": "x", "password": PW, "auth": {"type": "m.login.dummy"}}, token=None)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")


async def test_registration_token_flow(start_server, http) -> None:  # type: ignore[no-untyped-def]
    hs = await start_server(COFFEECHAT_REGISTRATION_MODE="token", COFFEECHAT_REGISTRATION_TOKENS="s3cret,other")
    c = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    r = await c.post("register", {"username": "tok", "password": PW}, token=None)
    assert r.status == 401 and r["flows"] == [{"stages": ["m.login.registration_token"]}]
    r = await c.post(
        "register",
        {"username": "tok", "password": PW, "auth": {"type": "m.login.registration_token", "token": "bad"}},
        token=None, validate=False,
    )
    assert r.status == 401 and r["errcode"] == "M_FORBIDDEN"
    r = await c.post(
        "register", {"username": "tok", "password": PW, "auth": {"type": "m.login.dummy"}}, token=None,
        validate=False,
    )
    assert r.status == 400 and r["errcode"] == "M_UNRECOGNIZED"
    r = await c.post(
        "register",
        {"username": "tok", "password": PW, "auth": {"type": "m.login.registration_token", "token": "s3cret"}},
        token=None,
    )
    assert r.status == 200 and r["user_id"] == "@tok:test.local"


async def test_login_rate_limited(start_server, http) -> None:  # type: ignore[no-untyped-def]
    hs = await start_server(COFFEECHAT_LIMITS_LOGIN_PER_SECOND="0.01", COFFEECHAT_LIMITS_LOGIN_BURST="2")
    c = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    statuses = []
    for _ in range(3):
        r = await c.post("login", {"type": "m.login.password", "user": "x", "password": "y"}, token=None)
        statuses.append(r.status)
    assert statuses == [403, 403, 429]
    assert r["errcode"] == "M_LIMIT_EXCEEDED" and r["retry_after_ms"] > 0

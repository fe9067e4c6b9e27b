"""The devices API."""

from __future__ import annotations

from typing import Callable

from ..helpers import ApiClient
from .test_accounts import PW, password_auth


async def _login(c: ApiClient, user: str, device_id: str) -> str:
    r = await c.post(
        "login", {"type": "m.login.password", "user": user, "password": PW, "device_id": device_id,
                  "initial_device_display_name": f"{device_id} name"},
        token=None,
    )
    assert r.status == 200
    return r["access_token"]


async def test_list_get_rename_devices(api: ApiClient) -> None:
    await api.register("pam", device_id="ONE", initial_device_display_name="first")
    await _login(api, "pam", "TWO")
    r = await api.get("devices")
    assert r.status == 200
    by_id = {d["device_id"]: d for d in r["devices"]}
    assert set(by_id) == {"ONE", "TWO"}
    assert by_id["ONE"]["display_name"] == "first"
    assert by_id["ONE"]["last_seen_ip"] == "127.0.0.1" and by_id["ONE"]["last_seen_ts"] > 0
    assert by_id["TWO"]["display_name"] == "TWO name"
    r = await api.get("devices/TWO")
    assert r.status == 200 and r["device_id"] == "TWO"
    r = await api.put("devices/TWO", {"display_name": "renamed"})
    assert r.status == 200
    assert (await api.get("devices/TWO"))["display_name"] == "renamed"


async def test_unknown_device_is_404(api: ApiClient) -> None:
    await api.register("quinn")
    r = await api.get("devices/NOPE")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await api.put("devices/NOPE", {"display_name": "x"})
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await api.delete("devices/NOPE", {"auth": password_auth("quinn")})
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_cannot_see_another_users_device(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("rita", device_id="RITA1")
    other = new_client()
    await other.register("sam")
    r = await other.get("devices/RITA1")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_delete_device_needs_uia_and_revokes_its_token(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("tom", device_id="MAIN")
    other = new_client()
    other.token = await _login(other, "tom", "SPARE")
    r = await api.delete("devices/SPARE", {})
    assert r.status == 401 and r["flows"] == [{"stages": ["m.login.password"]}]
    r = await api.delete("devices/SPARE", {"auth": password_auth("tom", session=r["session"])})
    assert r.status == 200
    assert (await other.get("account/whoami")).status == 401
    assert [d["device_id"] for d in (await api.get("devices"))["devices"]] == ["MAIN"]


async def test_delete_devices_bulk(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("uma", device_id="KEEP")
    for d in ("A", "B", "C"):
        await _login(new_client(), "uma", d)
    r = await api.post("delete_devices", {"devices": ["A", "B"]})
    assert r.status == 401
    r = await api.post("delete_devices", {"devices": ["A", "B"], "auth": password_auth("uma")})
    assert r.status == 200
    assert sorted(d["device_id"] for d in (await api.get("devices"))["devices"]) == ["C", "KEEP"]
    r = await api.post("delete_devices", {"auth": password_auth("uma")}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")


async def test_put_device_bad_body(api: ApiClient) -> None:
    await api.register("vic", device_id="V")
    r = await api.put("devices/V", {"display_name": 12}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")

"""GET /capabilities."""

from __future__ import annotations

from coffeechat_home.protocol.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

from ..helpers import ApiClient


async def test_capabilities(api: ApiClient) -> None:
    await api.register("alice")
    r = await api.get("capabilities")
    assert r.status == 200
    caps = r["capabilities"]
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.room_versions"] == {
        "default": DEFAULT_ROOM_VERSION.identifier,
        "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
    }
    assert caps["m.room_versions"]["default"] == "12"
    assert set(caps["m.room_versions"]["available"]) == {"10", "11", "12"}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.profile_fields"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": False}
    assert caps["m.get_login_token"] == {"enabled": False}
    r = await api.get("/_matrix/client/r0/capabilities")
    assert r.status == 200 and r.body == {"capabilities": caps}


async def test_capabilities_need_a_token(api: ApiClient) -> None:
    r = await api.get("capabilities", token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await api.get("capabilities", token="cch_bogus")
    assert (r.status, r["errcode"]) == (401, "M_UNKNOWN_TOKEN")

"""A real Matrix client (matrix-nio) registers, logs in, asks whoami, logs out."""

from __future__ import annotations

from pathlib import Path

import nio
import pytest

pytestmark = pytest.mark.slow


async def test_nio_register_login_whoami_logout(base_url: str, tmp_path: Path) -> None:
    client = nio.AsyncClient(base_url, "", store_path=str(tmp_path))
    try:
        resp = await client.register("niouser", "nio password 1", device_name="nio test")
        assert isinstance(resp, nio.RegisterResponse), resp
        assert resp.user_id == "@niouser:test.local"
        await client.close()

        client = nio.AsyncClient(base_url, "@niouser:test.local", store_path=str(tmp_path))
        bad = await client.login("wrong password")
        assert isinstance(bad, nio.LoginError) and bad.status_code == "M_FORBIDDEN"
        login = await client.login("nio password 1", device_name="laptop")
        assert isinstance(login, nio.LoginResponse), login
        who = await client.whoami()
        assert isinstance(who, nio.WhoamiResponse), who
        assert who.user_id == "@niouser:test.local" and who.device_id == login.device_id
        devices = await client.devices()
        assert isinstance(devices, nio.DevicesResponse)
        assert login.device_id in {d.id for d in devices.devices}
        out = await client.logout()
        assert isinstance(out, nio.LogoutResponse), out
        client.access_token = login.access_token  # nio forgets it; the server must have too
        again = await client.whoami()
        assert isinstance(again, nio.WhoamiError) and again.status_code == "M_UNKNOWN_TOKEN"
    finally:
        await client.close()

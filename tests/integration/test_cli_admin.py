"""The admin commands (issue 11), as real processes next to a running
server on the same database: user-list, user-modify, room-list,
room-delete (with its progress bar) and purge-history."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ..helpers import ApiClient
from .conftest import StartServer
from .processes import ROOT
from .test_cli import run


async def test_admin_commands(database_url: str, tmp_path: Path, start_server: StartServer,
                              new_client: object, http: object) -> None:
    server = await start_server()
    import aiohttp

    assert isinstance(http, aiohttp.ClientSession)
    alice = ApiClient(f"http://127.0.0.1:{server.client_port}", http)
    bob = ApiClient(f"http://127.0.0.1:{server.client_port}", http)
    await alice.register("alice")
    await bob.register("bob")
    room = (await alice.post("createRoom", {"name": "Old"}))["room_id"]
    await alice.post(f"rooms/{quote(room)}/invite", {"user_id": "@bob:test.local"})
    await bob.post(f"join/{quote(room)}", {})
    for i in range(3):
        await alice.put(f"rooms/{quote(room)}/send/m.room.message/c{i}", {"msgtype": "m.text", "body": str(i)})
    env = {"COFFEECHAT_DATABASE_URL": database_url, "COFFEECHAT_DATA_DIR": str(tmp_path),
           "COFFEECHAT_SERVER_NAME": "test.local", "COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N": "1024",
           "PYTHONPATH": str(ROOT)}

    code, out, err = await run("user-modify", "@bob:test.local", "--admin", env=env)
    assert code == 0 and "changed @bob:test.local (admin)" in out, err
    code, out, err = await run("user-modify", "@carol:test.local", "--password", "pw", env=env)
    assert code == 0 and "created @carol:test.local" in out, err
    code, out, _ = await run("user-list", env=env)
    assert "@bob:test.local\t\tadmin" in out and "3 users" in out
    code, out, _ = await run("room-list", env=env)
    assert f"{room}\t2\tOld" in out

    code, out, err = await run("room-delete", room, env=env, timeout=120)
    assert code == 0, err
    assert f"deleted {room}: 2 users made to leave" in out and "events purged" in out
    code, out, _ = await run("room-list", env=env)
    assert "0 rooms" in out
    assert (await bob.get("joined_rooms"))["joined_rooms"] == []

    code, _, err = await run("purge-history", "!gone:test.local", "--before", "2020-01-01", env=env)
    assert code == 1 and "M_NOT_FOUND" in err
    code, _, err = await run("user-modify", "@bob:test.local", "--erase", env=env)
    assert code == 2 and "--erase goes with --deactivate" in err
    code, out, err = await run("user-modify", "@bob:test.local", "--deactivate", "--erase", env=env)
    assert code == 0 and "(deactivated)" in out, err

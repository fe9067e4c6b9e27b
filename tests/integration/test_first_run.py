"""A newcomer's first hour (issue 11), each with the real command in a real
process: every command finds the data `serve` uses, the server name is
fixed at first start, a busy port fails before anything is created, logs
read well at a terminal, and `--version`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from coffeechat_home import __version__

from .processes import ROOT, ServerProcess, server_env
from .test_cli import run

CHECKOUT = {"PYTHONPATH": str(ROOT)}


async def _login(url: str, user: str, password: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password,
        }) as r:
            return r.status


@pytest.mark.slow
async def test_register_user_next_to_serve_dev_uses_the_same_database(tmp_path: Path) -> None:
    """Was: register-user wrote to ./data, serve --dev used ./coffeechat-data."""
    env = server_env("", tmp_path)
    env.pop("COFFEECHAT_DATA_DIR")
    env.pop("COFFEECHAT_REGISTRATION_MODE")
    server = ServerProcess(env, tmp_path, "serve", "--dev")
    await server.start()
    try:
        code, out, err = await run("register-user", "carol", "--password", "pw-carol", env=env, cwd=tmp_path)
        assert code == 0 and "@carol:faults.test" in out, err
        code, out, err = await run("register-user", "--dev", "dave", "--password", "pw-dave", env=env, cwd=tmp_path)
        assert code == 0, err
        assert await _login(server.url, "carol", "pw-carol") == 200
        assert await _login(server.url, "dave", "pw-dave") == 200
    finally:
        assert await server.stop() == 0
    assert not (tmp_path / "data").exists()
    assert (tmp_path / "coffeechat-data" / "signing.key").exists()


async def test_init_template_and_default_data_dir_agree(tmp_path: Path) -> None:
    code, _, err = await run("init", "-c", "c.toml", cwd=tmp_path)
    assert code == 0, err
    assert 'data_dir = "./coffeechat-data"' in (tmp_path / "c.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "`./coffeechat-data`" in readme and "`./data`" not in readme


async def test_restart_with_another_server_name_or_key_is_refused(database_url: str, tmp_path: Path) -> None:
    env = server_env(database_url, tmp_path, COFFEECHAT_SERVER_NAME="first.test")
    server = await ServerProcess(env, tmp_path).start()
    assert await server.stop() == 0
    code, _, err = await run("serve", env={**env, "COFFEECHAT_SERVER_NAME": "second.test"}, cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "'first.test'" in lines[0] and "COFFEECHAT_SERVER_NAME" in lines[0]
    # register-user checks too: it would create @x:second.test users
    code, _, err = await run("register-user", "x", "--password", "p",
                             env={**env, "COFFEECHAT_SERVER_NAME": "second.test"}, cwd=tmp_path)
    assert code == 2 and "'first.test'" in err
    key_id = "ed25519:" + (tmp_path / "signing.key").read_text().split()[1]
    (tmp_path / "signing.key").rename(tmp_path / "lost.key")
    code, _, err = await run("serve", env=env, cwd=tmp_path)
    assert code == 2 and f"'{key_id}'" in err and err.strip().count("\n") == 0, err
    (tmp_path / "lost.key").replace(tmp_path / "signing.key")
    server = await ServerProcess(env, tmp_path).start()
    assert await server.stop() == 0


async def test_busy_port_fails_first_and_names_the_setting(tmp_path: Path) -> None:
    """Was: initdb ran first (about 2 s), then a raw [Errno 98]."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = server_env("", tmp_path / "data", COFFEECHAT_CLIENT_LISTENER_PORT=str(port))
        code, out, err = await run("serve", env=env, cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"127.0.0.1:{port} is already in use" in lines[0]
    assert "COFFEECHAT_CLIENT_LISTENER_PORT" in lines[0]
    assert not (tmp_path / "data").exists()  # no database, no key


async def _some_traffic(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/_matrix/client/versions") as r:
            assert r.status == 200
        async with s.get(url + "/_matrix/client/v3/nowhere") as r:
            assert r.status == 404
        async with s.post(url + "/_matrix/client/v3/register", json={
            "username": "logged", "password": "p", "auth": {"type": "m.login.dummy"}}) as r:
            assert r.status == 200


async def test_logs_are_json_when_not_a_terminal(database_url: str, tmp_path: Path) -> None:
    env = server_env(database_url, tmp_path, COFFEECHAT_LOG_LEVEL="INFO")
    server = await ServerProcess(env, tmp_path).start()
    try:
        await _some_traffic(server.url)
    finally:
        assert await server.stop() == 0
    records = [json.loads(line) for line in server.stderr().splitlines() if line.strip()]
    requests = {(r["method"], r["path"]): r for r in records if r["logger"] == "coffeechat_home.access"}
    # successful reads at debug; errors and writes at info
    assert ("GET", "/_matrix/client/versions") not in requests
    assert requests[("GET", "/_matrix/client/v3/nowhere")]["status"] == 404
    assert requests[("POST", "/_matrix/client/v3/register")]["level"] == "INFO"


async def test_logs_are_readable_lines_on_a_terminal(database_url: str, tmp_path: Path) -> None:
    env = server_env(database_url, tmp_path, COFFEECHAT_LOG_LEVEL="INFO")
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coffeechat_home", "serve", stdout=asyncio.subprocess.PIPE, stderr=slave,
        env=env, cwd=tmp_path,
    )
    os.close(slave)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        port = int(line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)[1])
        await _some_traffic(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    text = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        text += chunk
    os.close(master)
    lines = text.decode(errors="replace").splitlines()
    assert any(" INFO " in ln and "POST /_matrix/client/v3/register 200" in ln for ln in lines), lines
    assert not any(ln.lstrip().startswith("{") for ln in lines), lines


async def test_register_user_takes_the_password_from_the_environment(database_url: str, tmp_path: Path) -> None:
    """Was: the documented $COFFEECHAT_NEW_PASSWORD was refused as an unknown setting."""
    env = server_env(database_url, tmp_path, COFFEECHAT_NEW_PASSWORD="from env")
    code, out, err = await run("register-user", "envuser", env=env, cwd=tmp_path)
    assert code == 0 and "@envuser:faults.test" in out, err
    server = await ServerProcess(env, tmp_path).start()
    try:
        assert await _login(server.url, "envuser", "from env") == 200
    finally:
        assert await server.stop() == 0


async def test_version() -> None:
    code, out, _ = await run("--version", env=CHECKOUT)
    assert code == 0 and out.strip() == f"coffeechat-home {__version__}"

"""The coffeechat-home command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

CMD = [sys.executable, "-m", "coffeechat_home"]


async def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CMD, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("sub", [[], ["serve"], ["init"], ["migrate"], ["register-user"]])
async def test_help(sub: list[str]) -> None:
    code, out, _ = await run(*sub, "--help")
    assert code == 0 and "usage: coffeechat-home" in out


async def test_init_writes_config_and_key(tmp_path: Path) -> None:
    code, out, err = await run("init", "--server-name", "chat.example", "-c", "c.toml", cwd=tmp_path)
    assert code == 0, err
    text = (tmp_path / "c.toml").read_text()
    assert 'server_name = "chat.example"' in text and "COCKROACH_HOSTNAME" in text
    key = (tmp_path / "coffeechat-data" / "signing.key").read_text()
    assert key.startswith("ed25519 a_")
    assert oct((tmp_path / "coffeechat-data" / "signing.key").stat().st_mode & 0o777) == "0o600"
    code, out, _ = await run("init", "-c", "c.toml", cwd=tmp_path)
    assert code == 0 and "exists" in out
    assert (tmp_path / "coffeechat-data" / "signing.key").read_text() == key


async def test_unreachable_database_is_one_line_error(tmp_path: Path) -> None:
    code, out, err = await run(
        "serve", env={"COFFEECHAT_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                      "COFFEECHAT_DATA_DIR": str(tmp_path)}, timeout=60,
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("coffeechat-home: error: cannot connect to database")
    assert "Traceback" not in err


async def test_bad_config_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[registration]\nmode = "sometimes"\n')
    code, _, err = await run("serve", "-c", str(tmp_path / "c.toml"))
    assert code == 2 and err.strip().count("\n") == 0 and "registration.mode" in err


async def test_migrate_and_register_user(database_url: str, tmp_path: Path) -> None:
    env = {"COFFEECHAT_DATABASE_URL": database_url, "COFFEECHAT_DATA_DIR": str(tmp_path),
           "COFFEECHAT_SERVER_NAME": "cli.test", "COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N": "1024"}
    code, out, err = await run("migrate", env=env)
    assert code == 0 and "up to date" in out, err
    code, out, err = await run("register-user", "admin", "--password", "pw-123", "--admin", env=env)
    assert code == 0 and "@admin:cli.test (admin)" in out, err
    code, _, err = await run("register-user", "admin", "--password", "x", env=env)
    assert code == 1 and "M_USER_IN_USE" in err
    code, _, err = await run("register-user", "Bad Name", "--password", "x", env=env)
    assert code == 1 and "M_INVALID_USERNAME" in err


async def _wait_for_line(
    proc: asyncio.subprocess.Process, needle: str, timeout: float, errfile: Path | None = None
) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    text = line.decode()
    errors = errfile.read_text()[-3000:] if errfile is not None and errfile.exists() else ""
    assert needle in text, f"stdout: {text!r}; stderr: {errors}"
    return text


async def test_serve_with_database_url_then_login(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "COFFEECHAT_DATABASE_URL": database_url, "COFFEECHAT_DATA_DIR": str(tmp_path),
           "COFFEECHAT_SERVER_NAME": "cli.test", "COFFEECHAT_CLIENT_LISTENER_PORT": "0",
           "COFFEECHAT_REGISTRATION_MODE": "open", "COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N": "1024"}
    proc = await asyncio.create_subprocess_exec(*CMD, "serve", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL, env=env)
    try:
        line = await _wait_for_line(proc, "listening on", 60)
        port = int(line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)[1])
        assert "database: postgresql://" in line
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/_matrix/client/v3/register",
                              json={"username": "u1", "password": "p", "auth": {"type": "m.login.dummy"}}) as r:
                assert r.status == 200
                assert (await r.json())["user_id"] == "@u1:cli.test"
        assert (tmp_path / "signing.key").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.slow
async def test_serve_dev_with_embedded_postgres(tmp_path: Path) -> None:
    """The README's first command: embedded PostgreSQL, open registration."""
    # run from another folder: this checkout's code, not whatever is installed
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "COFFEECHAT_CLIENT_LISTENER_PORT": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("COFFEECHAT_DATABASE_URL", None)
    started = time.monotonic()
    errfile = tmp_path / "stderr.log"
    with errfile.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*CMD, "serve", "--dev", stdout=asyncio.subprocess.PIPE,
                                                    stderr=err, env=env, cwd=tmp_path)
    try:
        line = await _wait_for_line(proc, "listening on", 120, errfile)
        assert "embedded PostgreSQL" in line and "registration: open" in line
        port = int(line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/_matrix/client/v3/register",
                              json={"username": "first", "password": "p", "auth": {"type": "m.login.dummy"}}) as r:
                assert r.status == 200
            # the web chat page is on in dev mode
            assert "web chat page: http://" in line
            async with s.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
                assert "/_coffeechat/static/chat.js" in await r.text()
        print(f"serve --dev ready in {time.monotonic() - started:.1f}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    # the embedded server stopped with us
    assert not (tmp_path / "coffeechat-data" / "postgres" / "postmaster.pid").exists()

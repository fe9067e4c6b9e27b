"""matrix-js-sdk 37.5.0 (the last release for Node 20; the SDK under
Element Web, with its Rust crypto compiled to WebAssembly) holding
encrypted conversations on our server: two js-sdk clients exchange
Megolm-encrypted messages and decrypt them, and a js-sdk client and a
matrix-nio client decrypt each other's messages.

Each js-sdk client is a Node process running tests/interop/js/jsclient.mjs,
driven a JSON command a line. The SDK is installed with npm into a cache
folder outside the repository (``$COFFEECHAT_JS_SDK_DIR``, default
``~/.cache/coffeechat-home/js-sdk-37.5.0``) the first time; without Node 20
or with npm unreachable the tests skip and say why. Every HTTP error the SDK
receives is recorded, and only the answers a healthy server gives a new
client (no key backup yet) are allowed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

import aiohttp
import nio
import pytest

from .test_mautrix_e2ee import _register
from .test_nio_e2ee import Inbox as NioInbox
from .test_nio_e2ee import _tick as nio_tick
from .nio_helpers import nio_user

pytestmark = pytest.mark.slow

SDK_VERSION = "37.5.0"
SCRIPT = Path(__file__).parent / "js" / "jsclient.mjs"
CALL_TIMEOUT_S = 120
WAIT_MS = 60_000
NIO_ROUNDS = 20
BACKUP_POLLS = 60

# What the SDK may be told "no" to by a healthy server: it asks for the
# current key backup before any exists.
ALLOWED_HTTP_ERRORS = {
    ("GET", "/_matrix/client/v3/room_keys/version", 404, "M_NOT_FOUND"),
}


@pytest.fixture(scope="session")
def js_sdk_dir() -> Path:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (matrix-js-sdk needs Node 20)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"matrix-js-sdk {SDK_VERSION} needs Node 20 or later, found {version}")
    folder = Path(os.environ.get("COFFEECHAT_JS_SDK_DIR")
                  or Path.home() / ".cache" / "coffeechat-home" / f"js-sdk-{SDK_VERSION}")
    installed = folder / "node_modules" / "matrix-js-sdk" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == SDK_VERSION:
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install matrix-js-sdk")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"name": "coffeechat-js-interop", "private": true}\n')
    try:
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", f"matrix-js-sdk@{SDK_VERSION}"],
                           cwd=folder, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of matrix-js-sdk took over 300 s (registry unreachable?)")
    if r.returncode != 0 or not installed.exists():
        pytest.skip(f"npm could not install matrix-js-sdk {SDK_VERSION} (registry unreachable?): {r.stderr[-500:]}")
    return folder


class JsClient:
    """One js-sdk client in a Node process of its own."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, log: IO[bytes]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.log = log
        self.user_id = ""
        self.device_id = ""
        self.access_token = ""

    @classmethod
    async def start(cls, sdk_dir: Path, log_path: Path) -> JsClient:
        log = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            env={**os.environ, "JS_SDK_DIR": str(sdk_dir)},
        )
        return cls(proc, log_path, log)

    def _log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), CALL_TIMEOUT_S)
        assert line, f"node exited during {cmd}:\n{self._log_tail()}"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, f"{answer['error']}\n--- SDK log:\n{self._log_tail()}"
        return answer

    async def login(self, base_url: str, name: str) -> JsClient:
        r = await self.call("login", base_url=base_url, user=name, password=f"password of {name}",
                            device_name=f"{name}'s js-sdk")
        self.user_id, self.device_id, self.access_token = r["user_id"], r["device_id"], r["access_token"]
        return self

    async def close(self) -> None:
        try:
            if self.proc.returncode is None:
                await self.call("stop")
                await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self.log.close()

    async def check_clean(self, room_id: str) -> list[str]:
        """The messages it decrypted; fails on any decryption failure or an
        HTTP error a healthy server would not give."""
        state = await self.call("state", room_id=room_id)
        assert not state["failures"], state["failures"]
        unexpected = [e for e in state["http_errors"]
                      if (e["method"], e["path"], e["status"], e["errcode"]) not in ALLOWED_HTTP_ERRORS]
        assert not unexpected, unexpected
        return list(state["texts"])


async def js_user(base_url: str, sdk_dir: Path, tmp_path: Path, name: str) -> JsClient:
    await _register(base_url, name)
    client = await JsClient.start(sdk_dir, tmp_path / f"js-{name}.log")
    try:
        return await client.login(base_url, name)
    except BaseException:
        await client.close()
        raise


async def test_two_js_sdk_clients_exchange_megolm_messages(base_url: str, js_sdk_dir: Path, tmp_path: Path) -> None:
    alice = await js_user(base_url, js_sdk_dir, tmp_path, "alice")
    clients = [alice]
    try:
        bob = await js_user(base_url, js_sdk_dir, tmp_path, "bob")
        clients.append(bob)
        room_id = (await alice.call("create_room", invite=[bob.user_id], name="Secret beans"))["room_id"]
        await bob.call("wait_invite", room_id=room_id, timeout_ms=WAIT_MS)
        await bob.call("join", room_id=room_id)
        for c in (alice, bob):
            await c.call("wait_members", room_id=room_id, user_ids=[alice.user_id, bob.user_id], timeout_ms=WAIT_MS)

        await alice.call("send", room_id=room_id, body="a secret from alice")
        await bob.call("wait_text", room_id=room_id, body="a secret from alice", timeout_ms=WAIT_MS)
        await bob.call("send", room_id=room_id, body="a secret reply from bob")
        await alice.call("wait_text", room_id=room_id, body="a secret reply from bob", timeout_ms=WAIT_MS)
        await alice.call("send", room_id=room_id, body="and one more")
        await bob.call("wait_text", room_id=room_id, body="and one more", timeout_ms=WAIT_MS)

        assert "a secret from alice" in await alice.check_clean(room_id)
        assert await bob.check_clean(room_id) == ["a secret from alice", "a secret reply from bob", "and one more"]
    finally:
        for c in clients:
            await c.close()


async def test_js_sdk_and_nio_decrypt_each_other(base_url: str, js_sdk_dir: Path, tmp_path: Path) -> None:
    bob = await nio_user(base_url, tmp_path, "bob")
    alice: JsClient | None = None
    try:
        await nio_tick(bob)
        assert not bob.should_upload_keys
        alice = await js_user(base_url, js_sdk_dir, tmp_path, "alice")
        room_id = (await alice.call("create_room", invite=[bob.user_id], name="Mixed company"))["room_id"]

        async def nio_until(done: Any, what: str) -> None:
            for _ in range(NIO_ROUNDS):
                if done():
                    return
                await nio_tick(bob, 2000)
            assert done(), f"nio never saw {what}"

        await nio_until(lambda: room_id in bob.invited_rooms, "the invite")
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await nio_until(lambda: room_id in bob.rooms and bob.rooms[room_id].encrypted
                        and alice.user_id in bob.rooms[room_id].users, "the encrypted room")
        await alice.call("wait_members", room_id=room_id, user_ids=[alice.user_id, bob.user_id], timeout_ms=WAIT_MS)
        bob_inbox = NioInbox(bob, room_id)

        await alice.call("send", room_id=room_id, body="from js-sdk to nio")
        await nio_until(lambda: "from js-sdk to nio" in bob_inbox.texts(), "js-sdk's message decrypted")
        await nio_until(lambda: alice.device_id in bob.device_store[alice.user_id], "alice's js-sdk device")
        await nio_tick(bob)  # claims alice's one-time key if nio wants to
        resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from nio to js-sdk"},
                                   ignore_unverified_devices=True)
        assert isinstance(resp, nio.RoomSendResponse), resp
        await alice.call("wait_text", room_id=room_id, body="from nio to js-sdk", timeout_ms=WAIT_MS)
        assert "from nio to js-sdk" in await alice.check_clean(room_id)
        assert not bob_inbox.undecrypted()
    finally:
        if alice is not None:
            await alice.close()
        await bob.close()


async def _backed_up_sessions(base_url: str, client: JsClient, version: str, room_id: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/_matrix/client/v3/room_keys/keys", params={"version": version},
                            headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
    return len(body["rooms"].get(room_id, {}).get("sessions", {}))


async def test_js_sdk_cross_signing_and_key_backup(base_url: str, js_sdk_dir: Path, tmp_path: Path) -> None:
    """The SDK's own security set-up: cross-signing keys uploaded (with the
    password) and the device signed, a key backup created, and the Megolm
    session of a message backed up by the SDK on its own; another js-sdk
    user sees the device signed by its owner."""
    alice = await js_user(base_url, js_sdk_dir, tmp_path, "alice")
    clients = [alice]
    try:
        security = await alice.call("bootstrap", password="password of alice")
        assert security["cross_signing_ready"] and security["own_device_cross_signed"], security
        version = (await alice.call("wait_backup", timeout_ms=WAIT_MS))["version"]
        bob = await js_user(base_url, js_sdk_dir, tmp_path, "bob")
        clients.append(bob)
        room_id = (await alice.call("create_room", invite=[bob.user_id], name="Backed up"))["room_id"]
        await bob.call("wait_invite", room_id=room_id, timeout_ms=WAIT_MS)
        await bob.call("join", room_id=room_id)
        await alice.call("wait_members", room_id=room_id, user_ids=[alice.user_id, bob.user_id], timeout_ms=WAIT_MS)
        await alice.call("send", room_id=room_id, body="worth keeping")
        await bob.call("wait_text", room_id=room_id, body="worth keeping", timeout_ms=WAIT_MS)
        status = await bob.call("device_status", user_id=alice.user_id, device_id=alice.device_id, timeout_ms=WAIT_MS)
        assert status["signed_by_owner"], status
        # the SDK uploads new room keys to the backup after a random delay (at most ~10 s)
        for _ in range(BACKUP_POLLS):
            if await _backed_up_sessions(base_url, alice, version, room_id):
                break
            await asyncio.sleep(1)
        assert await _backed_up_sessions(base_url, alice, version, room_id) == 1
        for c in clients:
            await c.check_clean(room_id)
    finally:
        for c in clients:
            await c.close()

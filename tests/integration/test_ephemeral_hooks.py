"""What the typing and presence services tell other servers (the hooks that
app.py connects to services/federation/ephemeral.py when federating), seen
in one server: a typing start, its extension (told again only after the
refresh interval), its stop and its expiry; a presence change, and the
same state told again once the refresh interval passed (Synapse forgets a
remote user's presence after 30 minutes without news)."""

from __future__ import annotations

import time
from typing import Callable

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .processes import wait_until
from .room_helpers import q
from .test_receipts_typing import _sweeping, two_in_a_room


async def test_typing_told_to_other_servers(
    api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer
) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    typing = server.services.conversation.typing
    told: list[tuple[str, str, bool, int | None]] = []

    async def record(user_id: str, room: str, is_typing: bool, expires_ts: int | None) -> None:
        told.append((user_id, room, is_typing, expires_ts))

    typing.remote = record
    path = f"rooms/{q(room_id)}/typing/{q(bob.user_id)}"
    before = int(time.time() * 1000)
    assert (await bob.put(path, {"typing": True, "timeout": 20000})).status == 200
    [(user, room, is_typing, expires)] = told
    assert (user, room, is_typing) == (bob.user_id, room_id, True)
    assert expires is not None and before + 20000 <= expires <= int(time.time() * 1000) + 20000
    # typing on: extended here, not told again ...
    assert (await bob.put(path, {"typing": True, "timeout": 20000})).status == 200
    assert len(told) == 1
    # ... until the refresh interval passed
    typing.remote_refresh_ms = 0
    assert (await bob.put(path, {"typing": True, "timeout": 20000})).status == 200
    assert len(told) == 2 and told[-1][2] is True
    assert (await bob.put(path, {"typing": False})).status == 200
    assert told[-1] == (bob.user_id, room_id, False, None)
    assert (await bob.put(path, {"typing": False})).status == 200  # was not typing: nothing to tell
    assert len(told) == 3

    # a typing notice that expires: the sweep tells its stop
    assert (await bob.put(path, {"typing": True, "timeout": 100})).status == 200
    assert told[-1][2] is True
    sweeping = await _sweeping(server)
    try:
        async def stopped() -> bool:
            return told[-1] == (bob.user_id, room_id, False, None)

        assert await wait_until(stopped, 10, interval=0.05), told
    finally:
        await sweeping.stop()
    assert len(told) == 5


async def test_presence_told_to_other_servers(api: ApiClient, server: HomeServer) -> None:
    await api.register("alice")
    presence = server.services.conversation.presence
    told: list[str] = []

    async def record(user_id: str) -> None:
        told.append(user_id)

    presence.remote = record
    assert (await api.get("sync")).status == 200  # offline -> online
    assert told == [api.user_id]
    assert (await api.get("sync")).status == 200  # no change: not told again ...
    assert told == [api.user_id]
    presence.remote_refresh_ms = 0  # ... until the refresh interval passed
    assert (await api.get("sync")).status == 200
    assert told == [api.user_id] * 2
    presence.remote_refresh_ms = 60_000
    status = {"presence": "unavailable", "status_msg": "out"}
    assert (await api.put(f"presence/{q(api.user_id)}/status", status)).status == 200
    assert (await api.put(f"presence/{q(api.user_id)}/status", status)).status == 200
    assert told == [api.user_id] * 3


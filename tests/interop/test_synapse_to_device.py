"""To-device messages from a Synapse user reach our user's device through
Synapse's transaction (an ``m.direct_to_device`` EDU in ``PUT /send``),
exactly once, in our user's /sync ``to_device`` section."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from ..federation.peers import FederatingServer
from ..integration.processes import User, wait_until
from .synapse_peer import SynapsePeer
from .test_synapse_federation import peers, register_on_synapse  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


async def test_to_device_from_synapse_arrives_once(peers: tuple[FederatingServer, SynapsePeer]) -> None:  # noqa: F811
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice")
        status, me = await alice.call("GET", "account/whoami")
        assert status == 200, me
        device = me["device_id"]
        bob = await register_on_synapse(http, syn, "bob")
        first = await alice.sync()
        content = {"note": "from synapse", "n": 1}
        body = {"messages": {alice.user_id: {device: content}}}
        status, answer = await bob.call("PUT", f"sendToDevice/m.coffeechat.test/{quote('txn 1')}", body)
        assert status == 200, answer

        got: list[dict[str, object]] = []
        since = first["next_batch"]

        async def arrived() -> bool:
            nonlocal since
            s = await alice.sync(since, timeout_ms=1000)
            since = s["next_batch"]
            got.extend(e for e in s.get("to_device", {}).get("events", []) if e.get("type") == "m.coffeechat.test")
            return bool(got)

        assert await wait_until(arrived, 60, interval=0.2), syn.log_tail()
        assert got == [{"type": "m.coffeechat.test", "sender": bob.user_id, "content": content}]
        # delivered once: later syncs hold nothing more
        for _ in range(3):
            s = await alice.sync(since, timeout_ms=300)
            since = s["next_batch"]
            assert not [e for e in s.get("to_device", {}).get("events", []) if e.get("type") == "m.coffeechat.test"]

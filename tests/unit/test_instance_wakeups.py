"""The wake-up socket between instances (services/instances.py): only a
datagram that is exactly the instance's key wakes it."""

from __future__ import annotations

import asyncio
import socket

from coffeechat_home.services.instances import _WakeReceiver


async def test_only_the_key_wakes() -> None:
    woken: list[int] = []
    key = b"0123456789abcdef0123456789abcdef"
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _WakeReceiver(key, lambda: woken.append(1)), local_addr=("127.0.0.1", 0)
    )
    addr = transport.get_extra_info("sockname")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in (b"", key[:-1], key + b"0", b"x" * len(key), key.upper(), key):
                s.sendto(data, addr)
        for _ in range(200):  # (loopback delivers at once; a bound, not a measurement)
            if woken:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert woken == [1]
    finally:
        transport.close()

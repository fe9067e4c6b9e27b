"""This instance's liveness: a lease in the database, renewed every second.

While it runs, the heartbeat also
- releases stream reservations whose release failed while the database was
  unreachable (``StreamStore.release_orphans``),
- reclaims what instances that stopped heartbeating still hold (their stream
  reservations, work leases), so that a kill -9 of one instance holds the
  others' readers back for a few seconds at most, and wakes the notifier.

Starting registers the lease and releases at once what an earlier process of
the same instance name left behind (a restart after a crash). Two processes
must not share an instance name: the second takes the name over, and the
first's writes then start over (safe, but wasteful).

Wake-ups: an instance learns of another's writes from its notifier's
position poll (``instance_poll_ms``), or at once when the writer wakes it.
Each instance listens on a UDP socket (``instance_address``) whose address
and a random key it publishes in its lease row; after every local commit
(each notifier poke, coalesced to one per loop turn) it sends each live
instance that key, and an instance that receives its own key reads the
stream position as the poll would. A wake-up carries nothing else, so a lost
or repeated one costs a poll's delay or a read, never correctness; the key
keeps anyone who cannot read the lease table from making an instance read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import Any, Callable

from ..config.settings import split_host_port
from ..storage.instances import InstanceStore
from ..storage.stream import StreamStore
from .notifier import Notifier
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0
# A survivor reclaims a dead instance's holdings within LEASE_TTL_MS plus
# one heartbeat: about 4 s after a kill -9.
LEASE_TTL_MS = 3000


def new_instance_id(name: str) -> str:
    """Unique per process: the name plus a random suffix."""
    return f"{name}/{secrets.token_hex(6)}"


class InstanceLiveness:
    def __init__(
        self,
        store: InstanceStore,
        stream: StreamStore,
        notifier: Notifier,
        name: str,
        instance_id: str,
        *,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        ttl_ms: int = LEASE_TTL_MS,
        wake_address: tuple[str, int] | None = None,
    ) -> None:
        self.store = store
        self.stream = stream
        self.notifier = notifier
        self.name = name
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.ttl_ms = ttl_ms
        self._task: asyncio.Task[None] | None = None
        self.wake_address = wake_address  # where to listen (port 0: any)
        self._wake: tuple[str, str] | None = None  # published: "host:port", key
        self._transport: asyncio.DatagramTransport | None = None
        self._targets: list[tuple[tuple[str, int], bytes]] = []  # the other instances: address, key
        self._wake_due = False

    async def _listen(self) -> None:
        """Open the wake-up socket; without one the instance still works
        (the others see its writes by their polls)."""
        if self.wake_address is None:
            return
        key = secrets.token_hex(16)
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _WakeReceiver(key.encode(), self.notifier.poke_remote), local_addr=self.wake_address
            )
        except OSError as e:
            log.warning("no wake-ups from other instances (cannot listen on %s: %s); they are seen by the poll",
                        self.wake_address, e)
            return
        self._transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self._wake = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}", key)
        self.notifier.on_local_poke = self._local_poke

    def _local_poke(self) -> None:
        """Wake the other instances once this loop turn ends (a burst of
        commits sends one wake-up each)."""
        if self._targets and not self._wake_due:
            self._wake_due = True
            asyncio.get_running_loop().call_soon(self._send_wakeups)

    def _send_wakeups(self) -> None:
        self._wake_due = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for addr, key in self._targets:
            try:
                transport.sendto(key, addr)
            except OSError:  # (unreachable: that instance's poll finds our writes)
                pass

    async def _refresh_targets(self) -> None:
        if self._transport is None:
            return
        targets = []
        for addr, key in await self.store.wake_targets(self.instance_id):
            try:  # (what an instance published: "host:port" or "[v6]:port")
                targets.append((split_host_port(addr), key.encode()))
            except ValueError:
                continue
        self._targets = targets

    async def start(self) -> None:
        await self._listen()
        replaced = await self.store.register(self.instance_id, self.name, self.ttl_ms, self._wake)
        for old in replaced:
            if old.looked_alive:
                log.warning(
                    "instance name %r was held by %s whose lease had not expired: taking it over "
                    "(a restart after a crash, or two processes sharing one name)",
                    self.name, old.instance_id,
                )
        await self.store.reclaim_dead()
        await self._refresh_targets()
        self._task = asyncio.create_task(self._run(), name="instance-heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.stream.release_orphans()
            await self.store.deregister(self.instance_id)
        except Exception as e:  # the database may be gone; our lease expires anyway
            log.warning("could not release instance lease %s: %s", self.instance_id, e)
        finally:
            if self._transport is not None:
                self.notifier.on_local_poke = None
                self._transport.close()
                self._transport = None

    async def beat(self) -> None:
        """One heartbeat (the loop calls it every interval)."""
        if not await self.store.renew(self.instance_id, self.name, self.ttl_ms, self._wake):
            log.warning("instance lease %s had expired (database unreachable?): registered again", self.instance_id)
        released = await self.stream.release_orphans()
        reclaimed = await self.store.reclaim_dead()
        await self._refresh_targets()
        if released or reclaimed:
            log.info("released %d orphaned and reclaimed %d dead stream reservations", released, reclaimed)
            # positions of every instance's writes may be free now: a full read
            self.notifier.poke_remote()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep beating through a database outage
                log.warning("instance heartbeat failed: %s", e)


class _WakeReceiver(asyncio.DatagramProtocol):
    """Takes wake-ups: a datagram that is exactly this instance's key."""

    def __init__(self, key: bytes, woken: Callable[[], None]) -> None:
        self.key = key
        self.woken = woken

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) == len(self.key) and hmac.compare_digest(data, self.key):
            self.woken()

    def error_received(self, exc: Exception) -> None:  # (an ICMP error for a send of ours)
        pass

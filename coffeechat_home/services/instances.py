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
"""

from __future__ import annotations

import asyncio
import logging
import secrets

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
    ) -> None:
        self.store = store
        self.stream = stream
        self.notifier = notifier
        self.name = name
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.ttl_ms = ttl_ms
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        replaced = await self.store.register(self.instance_id, self.name, self.ttl_ms)
        for old in replaced:
            if old.looked_alive:
                log.warning(
                    "instance name %r was held by %s whose lease had not expired: taking it over "
                    "(a restart after a crash, or two processes sharing one name)",
                    self.name, old.instance_id,
                )
        await self.store.reclaim_dead()
        self._task = asyncio.create_task(self._run(), name="instance-heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.stream.release_orphans()
            await self.store.deregister(self.instance_id)
        except Exception as e:  # the database may be gone; our lease expires anyway
            log.warning("could not release instance lease %s: %s", self.instance_id, e)

    async def beat(self) -> None:
        """One heartbeat (the loop calls it every interval)."""
        if not await self.store.renew(self.instance_id, self.name, self.ttl_ms):
            log.warning("instance lease %s had expired (database unreachable?): registered again", self.instance_id)
        released = await self.stream.release_orphans()
        reclaimed = await self.store.reclaim_dead()
        if released or reclaimed:
            log.info("released %d orphaned and reclaimed %d dead stream reservations", released, reclaimed)
            self.notifier.poke()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep beating through a database outage
                log.warning("instance heartbeat failed: %s", e)

"""The outbound federation sender (DESIGN.md 2 and 4).

It reads the events stream, never a post-commit hook: each destination has
a persisted position (``federation_destinations.stream_pos``) below which
everything it should get was acknowledged. When the notifier's position
advances, the destinations touched by the new events get a row (at the old
position) and a worker; a periodic sweep picks up destinations that are
behind (after a restart or a takeover) and those whose backoff ended.

The stream is only scanned on an advance when this instance committed
something that may be ours to send (``events_committed``, a persister
hook: events by local users, and membership events, which are what gets
relayed): a server that only receives federation traffic pays nothing
per inbound transaction. Writes of other instances (their own senders
scan them) and anything a hint missed are scanned by the periodic sweep,
so they are delayed by at most ``sweep_interval_s``, never lost.

Only the instance holding the work lease ``fed-dest:<destination>`` sends
to a destination. Batches of up to 50 PDUs go out as
``PUT /_matrix/federation/v1/send/{txnId}`` with a txn id derived from the
batch (range and event ids), so a resend after a crash is deduplicated by
the receiver; then the position moves with a compare-and-set. Failures set
a persisted backoff (``retry_min_ms`` doubling up to ``retry_max_ms``).

EDUs come from the persisted outbox (storage/edu_outbox.py): up to 100
ride along with each transaction (or go alone when no PDU is due), and are
deleted once the destination acknowledged it. ``wake(destination)`` after
enqueueing; the sweep also finds destinations with queued EDUs, so an
instance that does not hold the destination's lease leaves them to the one
that does (or to a survivor).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

from ...federation.client import FederationClient, FederationError
from ...protocol.canonical import encode_base64
from ...protocol.events import Event
from ...protocol.server_acl import server_allowed
from ...storage.edu_outbox import MAX_EDUS, EduOutboxStore, QueuedEdu
from ...storage.federation_queue import FederationQueueStore, OutgoingEvent
from ...storage.instances import InstanceStore
from ..notifier import Notifier

log = logging.getLogger(__name__)

MAX_PDUS = 50
TALKED_EVERY_S = 5.0  # how often an inbound request may end a destination's backoff
MAX_BATCHES_PER_RUN = 1000  # a worker's loop bound; the sweep resumes it


def transaction_id(destination: str, after: int, upto: int, events: list[OutgoingEvent],
                   edus: list[QueuedEdu] | None = None) -> str:
    h = hashlib.sha256(f"{destination}\n{after}\n{upto}\n".encode())
    for e in events:
        h.update(e.event_id.encode() + b"\n")
    for q in edus or ():
        h.update(b"edu %d\n" % q.id)
    return encode_base64(h.digest()[:18], urlsafe=True)


class FederationSender:
    def __init__(
        self,
        store: FederationQueueStore,
        client: FederationClient,
        notifier: Notifier,
        instances: InstanceStore,
        instance_id: str,
        *,
        outbox: EduOutboxStore | None = None,
        retry_min_ms: int = 10_000,
        retry_max_ms: int = 3_600_000,
        sweep_interval_s: float = 2.0,
        lease_ttl_ms: int = 30_000,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.client = client
        self.notifier = notifier
        self.instances = instances
        self.instance_id = instance_id
        self.server_name = store.server_name
        self.retry_min_ms = retry_min_ms
        self.retry_max_ms = retry_max_ms
        self.sweep_interval_s = sweep_interval_s
        self.lease_ttl_ms = lease_ttl_ms
        self.poll_interval_s = poll_interval_s
        self._seen = 0
        self._wanted = 0  # while above _seen: scan the stream once its position reaches this
        self.scans = 0  # stream scans done (for tests and metrics)
        self._task: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._talked: dict[str, float] = {}
        self.pdus_sent = 0
        self.edus_sent = 0
        self.transactions_sent = 0
        self.sweep_hooks: list[Callable[[], Awaitable[Any]]] = []  # run at each sweep

    async def start(self) -> None:
        scanned = await self.store.scanned_position()
        self._seen = self.notifier.position if scanned is None else min(scanned, self.notifier.position)
        self._wanted = self.notifier.position  # a range left unscanned before a restart: at once
        self._task = asyncio.create_task(self._run(), name="federation-sender")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._workers.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        for d in list(self._workers):
            await self._release(d)
        self._workers.clear()

    def wake(self, destination: str) -> None:
        """Send to ``destination`` now (e.g. it talked to us)."""
        self._kick(destination)

    def wake_all(self, destinations: Iterable[str]) -> None:
        for d in destinations:
            self._kick(d)

    async def events_committed(self, room_id: str, events: list[Event]) -> None:
        """Persister hook (after each commit of events with a stream
        position): when one may be ours to send (sent by a local user, or a
        membership event, which a resident server relays), scan the stream
        at the next advance that covers it."""
        for e in events:
            if e.type == "m.room.member" or e.sender.partition(":")[2] == self.server_name:
                # this instance's committed maximum covers the events just written
                self._wanted = max(self._wanted, self.notifier.stream.local_committed, self._seen + 1)
                self.notifier.want(self._wanted)
                return

    async def destination_talked(self, destination: str) -> None:
        """An inbound request from ``destination``: end its backoff (looked
        at once per ``TALKED_EVERY_S`` per destination, not per request)."""
        now = time.monotonic()
        if now - self._talked.get(destination, -TALKED_EVERY_S) < TALKED_EVERY_S:
            return
        if len(self._talked) > 10_000:
            self._talked.clear()
        self._talked[destination] = now
        try:
            if await self.store.reset_backoff(destination):
                self._kick(destination)
        except Exception:  # never fail the inbound request for this
            log.exception("resetting the backoff of %s", destination)

    # -- the loop --------------------------------------------------------------------
    async def _run(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                now = time.monotonic()
                sweep = now - last_sweep >= self.sweep_interval_s
                if sweep:
                    last_sweep = now
                await self._tick(sweep)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("federation sender loop")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self.poll_interval_s)

    async def _tick(self, sweep: bool) -> None:
        """One step of the loop: scan the stream once it covers what a
        commit here asked for (any advance at a sweep); at a sweep, kick
        the destinations due."""
        pos = self.notifier.position
        if pos > self._seen and (pos >= self._wanted > self._seen or sweep):
            await self._scan(pos)
        if sweep:
            for hook in self.sweep_hooks:  # e.g. device-list changes a crash left unannounced
                try:
                    await hook()
                except Exception:
                    log.exception("federation sender sweep hook")
            for d in await self.store.due(pos):
                self._kick(d)
            if self.outbox is not None:
                await self.outbox.delete_expired()
                for d in await self.outbox.destinations_due():
                    self._kick(d)

    async def _scan(self, pos: int) -> None:
        """The destinations touched by the events in (_seen, pos]: a row
        for each (at _seen) and a worker."""
        self.scans += 1
        touched = await self.store.destinations_touched(self._seen, pos)
        await self.store.ensure_destinations(touched, self._seen)
        await self.store.set_scanned_position(pos)
        self._seen = pos
        for d in touched:
            self._kick(d)

    def _kick(self, destination: str) -> None:
        if destination == self.server_name:
            return
        if destination in self._workers:
            self._again.add(destination)
            return
        self._workers[destination] = asyncio.create_task(
            self._worker(destination), name=f"federation-sender:{destination}"
        )

    async def _worker(self, destination: str) -> None:
        try:
            while True:
                self._again.discard(destination)
                await self._send_all(destination)
                if destination not in self._again:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sending to %s", destination)
        finally:
            self._workers.pop(destination, None)
            await self._release(destination)

    async def _release(self, destination: str) -> None:
        try:
            await self.instances.release_work_lease(f"fed-dest:{destination}", self.instance_id)
        except Exception:
            log.warning("could not release the lease of %s", destination)

    async def _send_all(self, destination: str) -> None:
        lease = f"fed-dest:{destination}"
        for _ in range(MAX_BATCHES_PER_RUN):
            if not await self.instances.acquire_work_lease(lease, self.instance_id, self.lease_ttl_ms):
                return  # another instance sends to it
            row = await self.store.get(destination)
            if row is None and self.outbox is not None:
                # only EDUs so far: a row (for the backoff) at the scanned
                # position, below which the destination was given nothing
                await self.store.ensure_destinations([destination], self._seen)
                row = await self.store.get(destination)
            if row is None or await self.store.backing_off(destination):
                return
            upto = self.notifier.position
            events: list[OutgoingEvent] = []
            if row.stream_pos < upto:
                events = await self.store.pending(destination, row.stream_pos, upto, MAX_PDUS)
            edus = await self.outbox.pending(destination, MAX_EDUS) if self.outbox is not None else []
            if not events and not edus:
                if row.stream_pos < upto:
                    await self.store.advance(destination, row.stream_pos, upto)
                return
            new_pos = events[-1].stream_pos if len(events) == MAX_PDUS else max(upto, row.stream_pos)
            events = await self._allowed(destination, events)
            if not events and not edus:  # all denied by their rooms' server ACLs
                await self.store.advance(destination, row.stream_pos, new_pos)
                continue
            txn_id = transaction_id(destination, row.stream_pos, new_pos, events, edus)
            body: dict[str, Any] = {
                "origin": self.server_name,
                "origin_server_ts": int(time.time() * 1000),
                "pdus": [_outgoing_pdu(e.pdu) for e in events],
            }
            if edus:
                body["edus"] = [q.as_json() for q in edus]
            try:
                await self.client.request_json(
                    "PUT", destination, f"/_matrix/federation/v1/send/{txn_id}", body=body, ignore_backoff=True
                )
            except FederationError as e:
                count = await self.store.failed(destination, self.retry_min_ms, self.retry_max_ms, str(e))
                log.info("sending to %s failed (%d in a row): %s", destination, count, e)
                return
            self.transactions_sent += 1
            self.pdus_sent += len(events)
            self.edus_sent += len(edus)
            if edus and self.outbox is not None:
                await self.outbox.delete(destination, [q.id for q in edus])
            if new_pos != row.stream_pos:
                await self.store.advance(destination, row.stream_pos, new_pos)
            elif row.retry_count:
                await self.store.reset_backoff(destination)

    async def _allowed(self, destination: str, events: list[OutgoingEvent]) -> list[OutgoingEvent]:
        """The events whose room's current server ACL lets the destination
        in (as Synapse: a denied server gets nothing of the room)."""
        if not events:
            return events
        acls = await self.store.server_acls([e.room_id for e in events])
        if not acls:
            return events
        return [e for e in events if server_allowed(acls.get(e.room_id), destination)]


def _outgoing_pdu(pdu: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in pdu.items() if k not in ("unsigned", "event_id")}
    return out

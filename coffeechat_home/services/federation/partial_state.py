"""The resync of rooms joined with a partial state (MSC3706/MSC3902; the
join side is remote_rooms.py).

One resync per partial-state room, run by the one live instance holding
the work lease ``partial-state:<room id>`` (storage/instances.py): a
survivor, or this instance after a restart, takes it over when its holder
died. A resync

1. fetches the state after our join event from a server of the room's
   ``servers_in_room`` (``/state_ids``, then the events we lack with
   ``/event`` or one ``/state``: gaps.EventFetcher.state_after), checking each
   event (format, signatures, content hash, then the auth rules in auth
   order) and storing the accepted ones we lacked as outliers;
2. in one transaction at a new stream position (storage/partial_state.py
   ``complete_state``): completes the room's state groups (so the state at
   the join and at every event received while partial is the full state),
   the current state, the room summary and the members' history rows, and
   clears the room's partial flag. /sync then shows the room as newly
   joined, with its whole state;
3. checks the events other servers sent while the room was partial against
   the (now whole) state before each: a message that fails is rejected and
   leaves the timeline; a state event that fails is only logged and counted
   (undoing its place in the state is not done yet).

An unreachable server is followed by the next one; when none answered, the
room waits (persisted, doubling from ``retry_ms``) and is tried again.

While a room is partial: events received over /send are checked against
their own auth events and against the partial state before them, with the
members it lacks taken from their auth events (events_in.receipt_auth_checks;
the check against the full state comes with the resync), /members
and /joined_members wait for the resync (bounded), and our events go to the
servers in ``servers_in_room`` as well as those of the members we know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

from ...crash_points import crash_point
from ...errors import MatrixError
from ...protocol.events import Event, StateKey
from ...protocol.room_versions import RoomVersion, get_room_version
from ...storage.events import EventStore
from ...storage.instances import InstanceStore
from ...storage.partial_state import PartialRoom, PartialStateStore, complete_state
from ...storage.stream import StreamStore
from ..persister import Persister
from .events_in import check_auth_against, state_before
from .gaps import EventFetcher, FetchBudget, GapFetchError

log = logging.getLogger(__name__)

LEASE_TTL_MS = 15_000
MAX_RETRY_MS = 600_000
SWEEP_INTERVAL_S = 2.0
WAIT_POLL_S = 0.1
MAX_RECHECKED = 1000  # events received while partial checked again after the resync


class PartialStateResync:
    def __init__(
        self,
        server_name: str,
        store: PartialStateStore,
        events: EventStore,
        fetcher: EventFetcher,
        stream: StreamStore,
        persister: Persister,
        instances: InstanceStore,
        instance_id: str,
        *,
        retry_ms: int = 5_000,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.events = events
        self.fetcher = fetcher
        self.stream = stream
        self.persister = persister
        self.instances = instances
        self.instance_id = instance_id
        self.retry_ms = retry_ms
        self.sweep_interval_s = sweep_interval_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._kicked = asyncio.Event()
        self.resyncs_done = 0  # for metrics and tests
        self.events_failing_full_state = 0
        # called after a room's resync committed (room id)
        self.completed: list[Callable[[str], Awaitable[None]]] = []

    # -- running ------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._sweep_loop(), name="partial-state-resync")

    async def stop(self) -> None:
        tasks = [t for t in [self._loop, *self._running.values()] if t is not None]
        self._loop = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._running.clear()

    def kick(self, room_id: str) -> None:
        """A partial-state join committed here: resync it now."""
        room = room_id
        if room not in self._running:
            self._running[room] = asyncio.create_task(self._run(room), name=f"partial-state {room}")

    async def _sweep_loop(self) -> None:
        """Rooms left partial (a restart, a holder that died, a backoff that
        ended) are taken up every ``sweep_interval_s``."""
        while True:
            try:
                for room in await self.store.due():
                    self.kick(room.room_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("partial-state sweep failed")
            await asyncio.sleep(self.sweep_interval_s)

    async def _run(self, room_id: str) -> None:
        lease = f"partial-state:{room_id}"
        try:
            if not await self.instances.acquire_work_lease(lease, self.instance_id, LEASE_TTL_MS):
                return  # another live instance resyncs it
            renew = asyncio.create_task(self._renew(lease))
            try:
                room = await self.store.get(room_id)
                if room is not None:
                    await self._attempt(room)
            finally:
                renew.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renew
                await self.instances.release_work_lease(lease, self.instance_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partial-state resync of %s failed", room_id)
        finally:
            self._running.pop(room_id, None)

    async def _renew(self, lease: str) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL_MS / 3000)
            await self.instances.acquire_work_lease(lease, self.instance_id, LEASE_TTL_MS)

    async def _attempt(self, room: PartialRoom) -> None:
        try:
            added = await self.resync(room)
        except GapFetchError as e:
            wait = min(MAX_RETRY_MS, self.retry_ms * (2 ** min(room.attempts, 20)))
            log.info("partial-state resync of %s: no server answered (%s); again in %d ms", room.room_id, e, wait)
            await self.store.failed(room.room_id, wait, str(e))
            return
        log.info("partial-state resync of %s done: %d state entries added", room.room_id, added)

    # -- one resync ----------------------------------------------------------------
    async def resync(self, room: PartialRoom) -> int:
        """Fetch, check and store the full state at the join; complete the
        room's state with it. Raises GapFetchError when no server gave it."""
        version = await self.events.room_version(room.room_id)
        if version is None:
            raise GapFetchError("the room is not known here")
        rv = get_room_version(version)
        errors: list[str] = []
        full: dict[StateKey, str] | None = None
        for server in [s for s in room.servers if s != self.server_name]:
            try:
                full = await self.fetcher.state_after(server, room.room_id, rv, room.join_event_id, FetchBudget())
                break
            except GapFetchError as e:
                errors.append(f"{server}: {e}")
        if full is None:
            raise GapFetchError("; ".join(errors)[:500] or "no other server in the room")
        crash_point("partial_state_fetched")  # fault tests: the outliers are stored, the state not completed
        rows = await self.events.get_rows(full.values())
        entries: dict[StateKey, tuple[str, str | None]] = {}
        for key, eid in full.items():
            row = rows.get(eid)
            if row is None:
                continue
            entries[key] = (eid, row.membership if key[0] == "m.room.member" else None)

        async with self.persister.room_lock(room.room_id):
            added, _ = await self.stream.write(
                lambda conn, pos: complete_state(conn, pos, room.room_id, room.join_event_id, entries,
                                                 {eid: row.sender for eid, row in rows.items()},
                                                 self.stream.db.text_order),
                name="partial_state_complete",
            )
        for cb in self.persister.room_changed:  # cached room heads hold the partial state
            cb(room.room_id)
        self.persister.notifier.poke()
        self.resyncs_done += 1
        await self._recheck(room, rv)
        for done in self.completed:
            await done(room.room_id)
        return int(added)

    async def _recheck(self, room: PartialRoom, rv: RoomVersion) -> None:
        """The events other servers sent while the room was partial were
        checked against their auth events only; now that the state before
        each is whole, check them against it too. One that fails is counted
        (``events_failing_full_state``) and, when it is not a state event,
        rejected and taken out of the timeline (clients that already synced
        it keep it, as with Synapse). A failing state event is only logged:
        undoing its place in the room's state is not done yet."""
        received = await self.store.received_while_partial(room.room_id, room.join_event_id, self.server_name,
                                                           MAX_RECHECKED)
        failing: dict[str, str] = {}
        for event_id, pdu in received:
            ev = Event(pdu, event_id, rv)
            try:
                await check_auth_against(self.events, ev, await state_before(self.events, ev))
            except MatrixError as e:
                self.events_failing_full_state += 1
                log.warning("event %s, received while %s was partial, fails the auth rules on the full state "
                            "before it: %s", event_id, room.room_id, e.error)
                if ev.state_key is None:
                    failing[event_id] = e.error
        if failing:
            rejected = await self.store.reject_late(
                room.room_id, list(failing), "fails the auth rules on the state before it (partial-state resync)"
            )
            if rejected:
                log.warning("rejected %d event(s) of %s after its resync: %s", len(rejected), room.room_id,
                            ", ".join(rejected))
                self.persister.notifier.poke()

    # -- waiting -----------------------------------------------------------------------
    async def wait_until_complete(self, room_id: str, timeout_s: float) -> bool:
        """Wait (bounded) until the room's state is complete; True if it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.store.is_partial(room_id):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(WAIT_POLL_S)
        return True

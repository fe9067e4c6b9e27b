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
2. checks the events other servers sent while the room was partial
   against the whole state before each, as it will be once completed
   (``_precheck``: each state group's own entries over the fetched state),
   oldest first;
3. in one transaction at a new stream position (storage/partial_state.py
   ``complete_state``): completes the room's state groups (so the state at
   the join and at every event received while partial is the full state),
   the current state, the room summary and the members' history rows, and
   clears the room's partial flag; rejects what failed (it leaves the
   timeline and the forward extremities); and when a state event failed
   (or events came after the check), replays the room's state from the
   join on without what fails (state_replay.py: state groups, fork
   resolutions, current state; storage ``rewrite_state``). /sync then
   shows the room as newly joined, with its whole state (lazy-loading
   clients too when a replay changed it: they saw what was taken out).
   A crash anywhere leaves the room partial, resynced again after the
   restart.

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
import functools
import logging
from typing import Awaitable, Callable, Mapping

import asyncpg

from ...crash_points import crash_point
from ...errors import MatrixError
from ...protocol.events import Event, StateKey
from ...protocol.room_versions import RoomVersion, get_room_version
from ...storage.events import EventStore
from ...storage.instances import InstanceStore
from ...storage.partial_state import (
    PartialRoom,
    PartialStateStore,
    PartialStateWindow,
    complete_state,
    StateRewrite,
    rewrite_state,
)
from ...storage.stream import StreamStore
from ..persister import Persister
from .events_in import check_auth_against
from .gaps import EventFetcher, FetchBudget, GapFetchError
from .state_replay import Resolver, replay_state

log = logging.getLogger(__name__)

LEASE_TTL_MS = 15_000
MAX_RETRY_MS = 600_000
SWEEP_INTERVAL_S = 2.0
WAIT_POLL_S = 0.1
MAX_RECHECKED = 1000  # events received while partial checked again after the resync
MAX_REPLAYED = 2000  # timeline events since the join whose state a replay rewrites
LATE_REASON = "fails the auth rules on the state before it (partial-state resync)"


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
        self.state_replays = 0  # rooms whose state was replayed without a state event that failed
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

        full_ids = {key: eid for key, (eid, _) in entries.items()}
        senders = {eid: row.sender for eid, row in rows.items()}
        async with self.persister.room_lock(room.room_id):
            received, failing, replay = await self._precheck(room, rv, full_ids)
            write = functools.partial(self._complete, room=room, rv=rv, entries=entries, senders=senders,
                                      received=received, failing=failing, replay=replay)
            (added, plan), _ = await self.stream.write(write, name="partial_state_complete")
        if plan is not None:
            self.state_replays += 1
            log.warning("state of %s replayed at its resync: %d event(s) rejected (%s), %d state group(s) "
                        "rewritten, %d added, %d current state change(s)", room.room_id, len(plan.rejected),
                        ", ".join(plan.rejected), len(plan.patches), len(plan.new_groups),
                        len(plan.current.changed) + len(plan.current.removed))
        for cb in self.persister.room_changed:  # cached room heads hold the partial state
            cb(room.room_id)
        self.persister.notifier.poke()
        self.resyncs_done += 1
        for done in self.completed:
            await done(room.room_id)
        return added

    async def _precheck(self, room: PartialRoom, rv: RoomVersion,
                        full: Mapping[StateKey, str]) -> tuple[list[str], list[str], bool]:
        """The events other servers sent while the room was partial were
        checked against their auth events and the partial state; check them
        (oldest first) against the whole state before each, as it will be
        once ``full`` completes the room's state groups (each group keeps
        its own entries and gains the keys it lacks). One that fails is
        counted (``events_failing_full_state``). Returns the events checked,
        the messages that fail, and whether a state event fails (then the
        resync replays the room's state without it, which checks them all
        again on the corrected state)."""
        received = await self.store.received_while_partial(room.room_id, room.join_event_id, self.server_name,
                                                           MAX_RECHECKED)
        resolver = Resolver(self.events, rv, set())
        completed: dict[int, dict[StateKey, str]] = {}  # state group -> its state, completed
        failing: list[str] = []
        replay = False
        for event_id, pdu in received:
            ev = Event(pdu, event_id, rv)
            info = await self.events.stored_info(ev.prev_event_ids)
            groups = list(dict.fromkeys(i.state_group for i in info.values() if i.state_group is not None))
            if len(completed) > 64:  # bounded: most events of a stretch share a few groups
                completed.clear()
            missing = [g for g in groups if g not in completed]
            if missing:
                for g, state in (await self.events.state_ids_for_groups(missing)).items():
                    completed[g] = {**full, **state}
            before = await resolver.resolve([completed[g] for g in groups])
            try:
                await check_auth_against(self.events, ev, before)
            except MatrixError as e:
                self.events_failing_full_state += 1
                log.warning("event %s, received while %s was partial, fails the auth rules on the full state "
                            "before it: %s", event_id, room.room_id, e.error)
                if ev.state_key is None:
                    failing.append(event_id)
                else:
                    replay = True
        return [eid for eid, _ in received], failing, replay

    async def _complete(
        self, conn: asyncpg.Connection, position: int, *, room: PartialRoom, rv: RoomVersion,
        entries: Mapping[StateKey, tuple[str, str | None]], senders: Mapping[str, str], received: list[str],
        failing: list[str], replay: bool,
    ) -> tuple[int, StateRewrite | None]:
        """The resync's transaction: the room's state completed
        (``complete_state``), and what the precheck found rejected
        (clients that already synced it keep it, as with Synapse): the
        messages leave the timeline; when a state event failed, or events
        came after the precheck, the room's state from the join on is
        replayed (state_replay.py) and rewritten. Returns (keys added to
        the current state, the replay's rewrite)."""
        added = await complete_state(conn, position, room.room_id, room.join_event_id, entries, senders,
                                     self.stream.db.text_order)
        if added is None:
            return 0, None
        store = PartialStateStore(conn)
        if not replay:
            now = await store.received_while_partial(room.room_id, room.join_event_id, self.server_name,
                                                     MAX_RECHECKED)
            replay = [eid for eid, _ in now] != received  # events came after the precheck: check them all
        if replay:
            plan = await replay_state(EventStore(conn), PartialStateWindow(conn), room.room_id, rv,
                                      room.join_event_id, position, self.server_name, LATE_REASON, MAX_REPLAYED)
            if plan is not None:
                await rewrite_state(conn, position, room.room_id, plan, self.stream.db.text_order)
                return added, plan
            log.warning("the state of %s is not replayed at its resync (over %d events since the join): a state "
                        "event that fails stays in it", room.room_id, MAX_REPLAYED)
        if failing:
            await store.reject_late(room.room_id, failing, LATE_REASON)
        return added, None

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

"""Rooms for server admins: list with member counts, details, members;
delete a room (everyone made to leave, the room blocked, optionally purged)
and purge old history, both as background jobs with a status."""

from __future__ import annotations

import secrets
import time
from typing import Any

from ...errors import invalid_param, not_found
from ...storage.admin_jobs import AdminJobStore, Job
from ...storage.room_admin import RoomAdminStore, RoomRow
from ...storage.room_purge import RoomPurgeStore
from ..accounts import Requester
from ..membership import MembershipService
from .jobs import JobRunner, Progress

DELETE = "delete_room"
PURGE = "purge_history"


class RoomAdminService:
    def __init__(self, store: RoomAdminStore, purge: RoomPurgeStore, jobs: AdminJobStore, runner: JobRunner,
                 membership: MembershipService, server_name: str) -> None:
        self.store = store
        self.purge = purge
        self.jobs = jobs
        self.runner = runner
        self.membership = membership
        self.server_name = server_name
        runner.handlers[DELETE] = self._run_delete
        runner.handlers[PURGE] = self._run_purge

    # -- reading ------------------------------------------------------------------
    async def list_rooms(self, offset: int, limit: int, search: str | None) -> tuple[list[RoomRow], int]:
        return await self.store.list_rooms(offset, limit, search)

    async def room(self, room_id: str) -> RoomRow:
        found = await self.store.room(room_id)
        if found is None:
            raise not_found("Room not found")
        return found

    async def members(self, room_id: str) -> list[str]:
        await self.room(room_id)
        return await self.store.members(room_id)

    # -- deleting -----------------------------------------------------------------
    async def delete_room(self, requester: Requester, room_id: str, *, block: bool, purge: bool) -> str:
        await self.room(room_id)
        return await self._start(DELETE, room_id, {"requester": requester.user_id, "block": block, "purge": purge},
                                 "shutting_down")

    async def delete_status(self, delete_id: str) -> Job:
        job = await self.jobs.get(delete_id)
        if job is None or job.kind != DELETE:
            raise not_found("No deletion with this id")
        return job

    async def delete_statuses(self, room_id: str) -> list[Job]:
        jobs = await self.jobs.for_room(room_id, DELETE)
        if not jobs:
            raise not_found("No deletion of this room")
        return jobs

    async def _run_delete(self, job: Job, progress: Progress) -> dict[str, Any]:
        room_id, params = job.room_id, job.params
        result: dict[str, Any] = {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [],
                                  "new_room_id": None, **job.result}
        if params.get("block"):
            # first: nobody joins again while everyone is made to leave
            await self.store.block(room_id, params["requester"], _now_ms())
        members = await self.store.members(room_id, ("join", "invite", "knock"))
        result["members"] = len(members)
        for user_id in members:
            if not user_id.endswith(":" + self.server_name):
                continue  # remote users: federation is not served yet
            await self.membership.leave(Requester(user_id, "", False, ""), room_id)
            if user_id not in result["kicked_users"]:
                result["kicked_users"].append(user_id)
            await progress("shutting_down", result)
        result["local_aliases"] = sorted(set(result["local_aliases"]) | set(await self.store.remove_aliases(room_id)))
        if params.get("purge"):
            result.setdefault("total_events", await self.purge.count_events(room_id))
            await progress("purging", result)
            while n := await self.purge.delete_event_batch(room_id):
                result["deleted_events"] = result.get("deleted_events", 0) + n
                await progress("purging", result)
            await self.purge.delete_room_rest(room_id)
        return result

    # -- purging history ------------------------------------------------------------
    async def purge_history(self, room_id: str, *, event_id: str | None, before_ts: int | None,
                            delete_local_events: bool) -> str:
        await self.room(room_id)
        if event_id is not None:
            pos = await self.purge.stream_pos_of_event(room_id, event_id)
            if pos is None:
                raise not_found("Event not found in this room")
        elif before_ts is not None:
            pos = await self.purge.stream_pos_before_ts(room_id, before_ts)
            if pos is None:
                raise invalid_param("No event in this room at or after purge_up_to_ts")
        else:
            raise invalid_param("purge_up_to_event_id or purge_up_to_ts is required")
        params = {"before_pos": pos, "delete_local_events": delete_local_events}
        return await self._start(PURGE, room_id, params, "active")

    async def purge_status(self, purge_id: str) -> Job:
        job = await self.jobs.get(purge_id)
        if job is None or job.kind != PURGE:
            raise not_found("No purge with this id")
        return job

    async def _run_purge(self, job: Job, progress: Progress) -> dict[str, Any]:
        local = None if job.params.get("delete_local_events") else ":" + self.server_name
        deleted = int(job.result.get("deleted_events", 0))
        while n := await self.purge.delete_history_batch(job.room_id, int(job.params["before_pos"]), local):
            deleted += n
            await progress("active", {"deleted_events": deleted})
        return {"deleted_events": deleted}

    async def _start(self, kind: str, room_id: str, params: dict[str, Any], status: str) -> str:
        job_id = secrets.token_urlsafe(12)
        await self.jobs.create(job_id, kind, room_id, params, status, _now_ms())
        self.runner.poke()
        return job_id


def _now_ms() -> int:
    return int(time.time() * 1000)

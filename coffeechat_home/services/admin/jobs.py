"""Runs admin jobs (room deletion, history purge) in the background. The
job's state is in the database and every step is idempotent: a job whose
instance died is claimed by a live instance (this one after a restart, or
a survivor) and run again from its stored state."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from ...storage.admin_jobs import AdminJobStore, Job
from ...storage.database import DatabaseError
from ..tasks import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

# A handler runs one job to its end; it reports progress with the callback
# (status, result), which stores it.
Progress = Callable[[str, dict[str, Any]], Awaitable[None]]
Handler = Callable[[Job, Progress], Awaitable[dict[str, Any]]]


class JobRunner:
    def __init__(self, store: AdminJobStore, instance_id: str, *, poll_interval: float = 2.0) -> None:
        self.store = store
        self.instance_id = instance_id
        self.poll_interval = poll_interval
        self.handlers: dict[str, Handler] = {}
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin-jobs")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def poke(self) -> None:
        """A job was created: look now rather than at the next poll."""
        self._poked.set()

    async def run_pending(self) -> int:
        """Claim and run jobs until none is left; returns how many ran."""
        ran = 0
        while (job := await self.store.claim(self.instance_id)) is not None:
            await self._run_job(job)
            ran += 1
        return ran

    async def _run_job(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)

        async def progress(status: str, result: dict[str, Any]) -> None:
            await self.store.update(job.job_id, status, result, _now_ms())

        if handler is None:
            await self.store.update(job.job_id, "failed", job.result, _now_ms(), f"unknown job kind {job.kind!r}")
            return
        try:
            result = await handler(job, progress)
        except asyncio.CancelledError:
            raise  # stopping: the job stays claimed by us until our lease lapses, then resumes
        except DatabaseError as e:
            log.warning("admin job %s paused by a database error: %s", job.job_id, e)
            raise
        except Exception as e:
            log.exception("admin job %s (%s) failed", job.job_id, job.kind)
            await self.store.update(job.job_id, "failed", job.result, _now_ms(), f"{type(e).__name__}: {e}")
            return
        await self.store.update(job.job_id, "complete", result, _now_ms())

    async def _run(self) -> None:
        while True:
            try:
                await self.run_pending()
            except asyncio.CancelledError:
                raise
            except DatabaseError as e:  # an outage: try again later
                log.warning("admin jobs: %s", e)
            except Exception:
                log.exception("admin jobs: unexpected error")
            await wait_event(self._poked, self.poll_interval)
            self._poked.clear()


def _now_ms() -> int:
    return int(time.time() * 1000)

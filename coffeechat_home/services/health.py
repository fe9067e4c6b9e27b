"""Is this instance able to serve: the database answers."""

from __future__ import annotations

from ..storage.database import Database, DatabaseError


class HealthService:
    def __init__(self, db: Database, *, timeout: float = 5.0) -> None:
        self.db = db
        self.timeout = timeout

    async def problem(self) -> str | None:
        """None when healthy, else what is wrong (one line)."""
        try:
            await self.db.ping(self.timeout)
        except DatabaseError as e:
            return f"the database does not answer: {e}"
        return None

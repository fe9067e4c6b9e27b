"""Server-side key backup: /room_keys/version and /room_keys/keys.

The server stores what clients encrypted; it compares only the plain
fields. A session key replaces a stored one when it is better: verified
beats unverified, then a lower first_message_index wins, then a lower
forwarded_count (spec: "Server-side key backups").
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import MatrixError, invalid_param, not_found
from ...storage.key_backup import BackupVersion, KeyBackupStore, RoomKey, WrongVersion

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
MAX_SESSIONS_PER_PUT = 10_000


def is_better(stored: RoomKey, new: RoomKey) -> bool:
    """Whether ``new`` should replace ``stored``."""
    if new.is_verified != stored.is_verified:
        return new.is_verified
    if new.first_message_index != stored.first_message_index:
        return new.first_message_index < stored.first_message_index
    return new.forwarded_count < stored.forwarded_count


def parse_version(raw: str | None) -> int:
    """Versions are decimal strings we handed out; anything else is unknown."""
    if raw is None or raw == "":
        raise MatrixError(400, "M_MISSING_PARAM", "version is required")
    if not raw.isdigit() or len(raw) > 18:
        raise not_found("Unknown backup version")
    return int(raw)


def version_json(v: BackupVersion) -> dict[str, Any]:
    return {
        "algorithm": v.algorithm, "auth_data": v.auth_data, "count": v.count, "etag": str(v.etag),
        "version": str(v.version),
    }


def key_json(k: RoomKey) -> dict[str, Any]:
    return {
        "first_message_index": k.first_message_index, "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified, "session_data": k.session_data,
    }


def room_key(room_id: str, session_id: str, data: Mapping[str, Any]) -> RoomKey:
    return RoomKey(
        room_id, session_id, data["first_message_index"], data["forwarded_count"], data["is_verified"],
        dict(data["session_data"]),
    )


class KeyBackupService:
    def __init__(self, store: KeyBackupStore) -> None:
        self.store = store

    async def create(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> str:
        return str(await self.store.create_version(user_id, algorithm, auth_data))

    async def get(self, user_id: str, version: str | None) -> dict[str, Any]:
        found = await self.store.get_version(user_id, parse_version(version) if version is not None else None)
        if found is None:
            raise not_found("No current backup version" if version is None else "Unknown backup version")
        return version_json(found)

    async def update(self, user_id: str, version: str, body: Mapping[str, Any]) -> None:
        number = parse_version(version)
        if "version" in body and body["version"] != version:
            raise invalid_param("version in the body does not match the path")
        current = await self.store.get_version(user_id, number)
        if current is None:
            raise not_found("Unknown backup version")
        if body["algorithm"] != current.algorithm:
            raise invalid_param("The algorithm of a backup version cannot change")
        await self.store.update_version(user_id, number, dict(body["auth_data"]))

    async def delete(self, user_id: str, version: str) -> None:
        if not await self.store.delete_version(user_id, parse_version(version)):
            raise not_found("Unknown backup version")

    # -- keys ----------------------------------------------------------------
    async def put_keys(self, user_id: str, version: str | None, keys: list[RoomKey]) -> dict[str, Any]:
        number = parse_version(version)
        if len(keys) > MAX_SESSIONS_PER_PUT:
            raise MatrixError(413, "M_TOO_LARGE", f"At most {MAX_SESSIONS_PER_PUT} sessions per request")
        try:
            etag, count = await self.store.put_keys(user_id, number, keys, is_better)
        except WrongVersion as e:
            if e.current is None:
                raise not_found("No current backup version") from None
            raise MatrixError(
                403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version", current_version=str(e.current)
            ) from None
        return {"etag": str(etag), "count": count}

    async def _existing(self, user_id: str, version: str | None) -> int:
        number = parse_version(version)
        if await self.store.get_version(user_id, number) is None:
            raise not_found("Unknown backup version")
        return number

    async def get_keys(
        self, user_id: str, version: str | None, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        number = await self._existing(user_id, version)
        keys = await self.store.get_keys(user_id, number, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise not_found("No such session in the backup")
            return key_json(keys[0])
        sessions: dict[str, dict[str, Any]] = {}
        for k in keys:
            sessions.setdefault(k.room_id, {})[k.session_id] = key_json(k)
        if room_id is not None:
            return {"sessions": sessions.get(room_id, {})}
        return {"rooms": {r: {"sessions": s} for r, s in sessions.items()}}

    async def delete_keys(
        self, user_id: str, version: str | None, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        number = await self._existing(user_id, version)
        etag, count = await self.store.delete_keys(user_id, number, room_id, session_id)
        return {"etag": str(etag), "count": count}

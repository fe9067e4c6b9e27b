"""Profiles: GET/PUT/DELETE /profile/{userId}[/{keyName}], and the hook the
rooms service uses to reflect displayname and avatar changes in the user's
m.room.member events."""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable

import orjson

from ..errors import MatrixError, bad_json, invalid_param, not_found
from ..protocol.identifiers import InvalidIdentifier, parse_user_id
from ..storage.profiles import NoSuchUser, ProfileStore

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")
MAX_KEY_BYTES = 255
MAX_PROFILE_BYTES = 65_536
MAX_DISPLAYNAME_CHARS = 256
MEMBER_FIELDS = ("displayname", "avatar_url")

# Called after a user's displayname or avatar_url changed, with
# (user_id, displayname, avatar_url) as they are now (None when unset).
ProfileChangeHook = Callable[[str, str | None, str | None], Awaitable[None]]


def check_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise MatrixError(400, "M_KEY_TOO_LARGE", f"Profile keys are at most {MAX_KEY_BYTES} bytes")
    if not KEY_RE.match(key):
        raise invalid_param(f"Invalid profile key {key!r}")


def check_value(key: str, value: Any) -> None:
    if key == "displayname":
        if not isinstance(value, str):
            raise bad_json("displayname must be a string")
        if len(value) > MAX_DISPLAYNAME_CHARS:
            raise bad_json(f"displayname is too long (at most {MAX_DISPLAYNAME_CHARS} characters)")
    elif key == "avatar_url":
        if not isinstance(value, str):
            raise bad_json("avatar_url must be a string")
        if value and not value.startswith("mxc://"):
            raise invalid_param("avatar_url must be an mxc:// URI")
    elif key == "m.tz" and not isinstance(value, str):
        raise bad_json("m.tz must be a string")


# Asks another server for a user's profile: (user_id, server, field or
# None) -> the profile (raises MatrixError on failure); set when federation
# is wired (services/remote_queries.py).
RemoteProfileLookup = Callable[[str, str, str | None], Awaitable[dict[str, Any]]]


class ProfileService:
    def __init__(self, store: ProfileStore, server_name: str) -> None:
        self.store = store
        self.server_name = server_name
        self.on_profile_change: list[ProfileChangeHook] = []
        self.remote_lookup: RemoteProfileLookup | None = None

    def _remote_server(self, user_id: str) -> str | None:
        """The server of a valid user id that is not ours, else None."""
        try:
            server = parse_user_id(user_id).server_name
        except InvalidIdentifier:
            return None
        return None if server == self.server_name else server

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """The full profile of a local user (``displayname`` and
        ``avatar_url`` present only when set), or None for unknown users."""
        if not user_id.endswith(":" + self.server_name):
            return None
        return await self.store.get(user_id)

    async def member_fields(self, user_id: str) -> tuple[str | None, str | None]:
        """(displayname, avatar_url) for the user's m.room.member events."""
        profile = await self.get_profile(user_id) or {}
        return profile.get("displayname"), profile.get("avatar_url")

    async def require_profile(self, user_id: str) -> dict[str, Any]:
        """The profile a client reads: local users' from the database,
        other servers' users' asked of their server."""
        remote = self._remote_server(user_id)
        if remote is not None and self.remote_lookup is not None:
            return await self.remote_lookup(user_id, remote, None)
        profile = await self.get_profile(user_id)
        if profile is None:
            raise not_found("Profile not found")
        return profile

    async def get_field(self, user_id: str, key: str) -> Any:
        check_key(key)
        remote = self._remote_server(user_id)
        if remote is not None and self.remote_lookup is not None:
            profile = await self.remote_lookup(user_id, remote, key if key in MEMBER_FIELDS else None)
        else:
            profile = await self.require_profile(user_id)
        if key not in profile:
            raise not_found(f"The user has no {key}")
        return profile[key]

    async def set_field(self, user_id: str, key: str, value: Any) -> None:
        """Set a field; an empty displayname or avatar_url removes it."""
        check_key(key)
        check_value(key, value)
        remove = key in MEMBER_FIELDS and value == ""
        await self._change(user_id, key, None if remove else value, remove=remove)

    async def delete_field(self, user_id: str, key: str) -> None:
        check_key(key)
        await self._change(user_id, key, None, remove=True)

    async def _change(self, user_id: str, key: str, value: Any, *, remove: bool) -> None:
        def change(profile: dict[str, Any]) -> dict[str, Any]:
            if remove:
                profile.pop(key, None)
            else:
                profile[key] = value
            try:
                size = len(orjson.dumps(profile))
            except orjson.JSONEncodeError:
                raise bad_json("The value is not valid Matrix JSON (integers must fit 64 bits)") from None
            if size > MAX_PROFILE_BYTES:
                raise MatrixError(400, "M_PROFILE_TOO_LARGE", "The profile would exceed 64 KiB")
            return profile

        try:
            old, new = await self.store.update(user_id, change)
        except NoSuchUser:
            raise not_found("Profile not found") from None
        if key in MEMBER_FIELDS and old.get(key) != new.get(key):
            await self._notify(user_id, new.get("displayname"), new.get("avatar_url"))

    async def _notify(self, user_id: str, displayname: str | None, avatar_url: str | None) -> None:
        for hook in list(self.on_profile_change):
            try:
                await hook(user_id, displayname, avatar_url)
            except Exception:  # the change is committed; one failing hook must not undo the reply
                log.exception("profile change hook %r failed for %s", hook, user_id)

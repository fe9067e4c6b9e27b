"""Registration tokens for server admins (Synapse's admin API shape)."""

from __future__ import annotations

import re
import time

from ...errors import MatrixError, invalid_param, not_found
from ...storage.registration_tokens import RegistrationToken, RegistrationTokenStore
from .users import new_token_string

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


class RegistrationTokenService:
    def __init__(self, store: RegistrationTokenStore) -> None:
        self.store = store

    async def create(
        self, token: str | None, length: int, uses_allowed: int | None, expiry_time: int | None
    ) -> RegistrationToken:
        if token is not None and not _TOKEN_RE.fullmatch(token):
            raise invalid_param("token must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'")
        if not 1 <= length <= 64:
            raise invalid_param("length must be between 1 and 64")
        _check_limits(uses_allowed, expiry_time)
        for _ in range(5 if token is None else 1):
            candidate = token or new_token_string(length)
            if await self.store.create(candidate, uses_allowed, expiry_time, _now_ms()):
                found = await self.store.get(candidate)
                assert found is not None
                return found
        raise MatrixError(400, "M_INVALID_PARAM", "Token already exists")

    async def list(self, valid: bool | None) -> list[RegistrationToken]:
        tokens = await self.store.list()
        if valid is None:
            return tokens
        return [t for t in tokens if is_valid(t, _now_ms()) == valid]

    async def get(self, token: str) -> RegistrationToken:
        found = await self.store.get(token)
        if found is None:
            raise not_found("No such registration token")
        return found

    async def update(
        self, token: str, *, uses_allowed: int | None, set_uses: bool, expiry_time: int | None, set_expiry: bool
    ) -> RegistrationToken:
        _check_limits(uses_allowed, expiry_time)
        found = await self.store.update(
            token, uses_allowed=uses_allowed, set_uses=set_uses, expiry_time=expiry_time, set_expiry=set_expiry
        )
        if found is None:
            raise not_found("No such registration token")
        return found

    async def delete(self, token: str) -> None:
        if not await self.store.delete(token):
            raise not_found("No such registration token")


def is_valid(t: RegistrationToken, now_ms: int) -> bool:
    return (t.uses_allowed is None or t.completed < t.uses_allowed) and (
        t.expiry_time is None or t.expiry_time > now_ms
    )


def _check_limits(uses_allowed: int | None, expiry_time: int | None) -> None:
    if uses_allowed is not None and not 0 <= uses_allowed < 2**31:
        raise invalid_param("uses_allowed must be a non-negative integer or null")
    if expiry_time is not None and not 0 <= expiry_time < 2**62:
        raise invalid_param("expiry_time must be a timestamp in ms or null")


def _now_ms() -> int:
    return int(time.time() * 1000)

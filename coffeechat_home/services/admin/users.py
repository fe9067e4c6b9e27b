"""Users for server admins: list, query, create or modify (password,
admin flag, deactivation with erase), sessions and devices."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ...errors import MatrixError, invalid_param, not_found
from ...storage.accounts import Device, UserSummary
from ..accounts import AccountService, Requester
from ..profiles import ProfileService


@dataclass(frozen=True, slots=True)
class UserChange:
    """What PUT /_synapse/admin/v2/users/{userId} asks for (None: leave as is)."""

    password: str | None = None
    logout_devices: bool = True
    displayname: str | None = None
    avatar_url: str | None = None
    admin: bool | None = None
    deactivated: bool | None = None
    erase: bool = False


class UserAdminService:
    def __init__(self, accounts: AccountService, profiles: ProfileService) -> None:
        self.accounts = accounts
        self.store = accounts.store
        self.profiles = profiles

    def local_user_id(self, user_id: str) -> str:
        """A valid user id of this server (M_INVALID_PARAM otherwise)."""
        if not user_id.startswith("@"):
            raise invalid_param("Expected a full user id, e.g. @alice:" + self.accounts.server_name)
        try:
            return self.accounts.user_id_for(user_id)
        except MatrixError as e:
            raise MatrixError(400, "M_INVALID_PARAM", e.error) from None

    async def list_users(
        self, offset: int, limit: int, name: str | None, include_deactivated: bool
    ) -> tuple[list[UserSummary], int]:
        return await self.store.list_users(offset, limit, name, include_deactivated)

    async def get_user(self, user_id: str) -> UserSummary:
        user = await self.store.user_summary(user_id)
        if user is None:
            raise not_found("User not found")
        return user

    async def put_user(self, user_id: str, change: UserChange) -> tuple[UserSummary, bool]:
        """Create the user if missing, then apply the change; returns the
        user and whether it was created."""
        user_id = self.local_user_id(user_id)
        created = False
        if not await self.store.user_exists(user_id):
            await self.accounts.register(
                username=user_id, password=change.password, device_id=None, device_display_name=None,
                inhibit_login=True, is_admin=bool(change.admin),
            )
            created = True
        elif change.password is not None:
            await self.set_password(user_id, change.password, change.logout_devices)
        if change.admin is not None and not created:
            await self.store.set_admin(user_id, change.admin)
        if change.displayname is not None:
            await self.profiles.set_field(user_id, "displayname", change.displayname)
        if change.avatar_url is not None:
            await self.profiles.set_field(user_id, "avatar_url", change.avatar_url)
        if change.deactivated is True:
            await self.deactivate(user_id, erase=change.erase)
        elif change.deactivated is False and (await self.get_user(user_id)).deactivated:
            if change.password is None:
                raise invalid_param("Reactivating a user needs a password")
            await self.store.reactivate(user_id)
            await self.set_password(user_id, change.password, True)
        return await self.get_user(user_id), created

    async def set_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        await self.get_user(user_id)
        # an admin's reset keeps no device of the user unless asked to
        requester = Requester(user_id, "", False, "")
        await self.accounts.change_password(requester, password, logout_devices)

    async def deactivate(self, user_id: str, *, erase: bool) -> None:
        """Leave every room, revoke every session; with ``erase``, also
        remove the profile (display name and avatar)."""
        user = await self.get_user(user_id)
        if erase:
            for key in ("displayname", "avatar_url"):
                await self.profiles.delete_field(user_id, key)
        if not user.deactivated:
            await self.accounts.deactivate(user_id)

    async def devices(self, user_id: str) -> list[Device]:
        await self.get_user(user_id)
        return await self.store.list_devices(user_id)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        await self.get_user(user_id)
        await self.accounts.delete_devices(user_id, [device_id])


def new_token_string(length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def user_json(user: UserSummary) -> dict[str, Any]:
    """Synapse's user object (creation_ts in seconds, as Synapse has it)."""
    return {
        "name": user.user_id,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "admin": user.is_admin,
        "deactivated": user.deactivated,
        "is_guest": False,
        "user_type": None,
        "shadow_banned": False,
        "locked": False,
        "erased": False,
        "creation_ts": user.created_ts // 1000,
        "threepids": [],
        "external_ids": [],
        "appservice_id": None,
    }

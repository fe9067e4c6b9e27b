"""Accounts: registration, login, tokens, devices, passwords, deactivation,
and user-interactive auth (UIA)."""

from __future__ import annotations

import secrets
import string
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

from ..crash_points import crash_point
from ..errors import MatrixError, forbidden, invalid_param
from ..protocol.identifiers import InvalidIdentifier, is_valid_localpart_for_registration, parse_user_id
from ..storage.accounts import AccountStore, DeviceRemover, TokenOwner, UserExists, token_hash, token_write_guard
from ..storage.registration_tokens import RegistrationTokenStore
from ..storage.stream_statements import Guard
from .passwords import PasswordHasher


# Tokens seen recently, for requests whose write checks the token itself:
# how long one is kept and how many (least recently used go first).
TOKEN_CACHE_TTL_S = 300.0
TOKEN_CACHE_SIZE = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


def new_token() -> str:
    return "cch_" + secrets.token_urlsafe(32)


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is making a client request."""

    user_id: str
    device_id: str
    is_admin: bool
    access_token: str
    # Set when the token came from this instance's cache without a database
    # read: a write made for this requester must run it as its guard
    # (storage.accounts.token_write_guard), and any other answer waits for
    # the token to be checked (api/auth.py).
    write_guard: Guard | None = None


@dataclass(frozen=True, slots=True)
class LoginResult:
    user_id: str
    device_id: str
    access_token: str


# Hooks other services register to run when an account is deactivated
# (leave rooms, remove keys ...). Each takes the user id.
DeactivationHook = Callable[[str], Awaitable[None]]
# Hooks run after devices appear (user id, device id) or go (user id,
# device ids): device lists and end-to-end keys follow them.
DeviceAddedHook = Callable[[str, str], Awaitable[None]]
DevicesRemovedHook = Callable[[str, list[str]], Awaitable[None]]


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        hasher: PasswordHasher,
        server_name: str,
        *,
        registration_mode: str,
        registration_tokens: Sequence[str] = (),
        token_store: RegistrationTokenStore | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.server_name = server_name
        self.registration_mode = registration_mode
        # tokens from the config (any number of uses), then those admins
        # made (with their uses and expiry) in the database
        self.registration_tokens = tuple(registration_tokens)
        self.token_store = token_store
        self.deactivation_hooks: list[DeactivationHook] = []
        self.device_added_hooks: list[DeviceAddedHook] = []
        self.devices_removed_hooks: list[DevicesRemovedHook] = []
        # Deletes device rows in the same transaction as the devices' keys
        # and device-list change (the E2E service's), else they go alone.
        self.device_remover: DeviceRemover | None = None
        # A stored hash to compare against when a user does not exist, so a
        # missing user takes as long to reject as a wrong password.
        self._dummy_hash: str | None = None
        # token hash -> (owner, expiry): for requests whose write checks the
        # token itself (requester_for_write); never trusted alone
        self._tokens: OrderedDict[bytes, tuple[TokenOwner, float]] = OrderedDict()

    # -- identifiers ----------------------------------------------------------
    def user_id_for(self, username: str) -> str:
        """Accept a localpart or a full user id on this server; the result
        is validated against the registration grammar."""
        if username.startswith("@"):
            try:
                uid = parse_user_id(username)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_USERNAME", str(e)) from None
            if uid.server_name != self.server_name:
                raise MatrixError(400, "M_INVALID_USERNAME", "User id is not on this server")
            localpart = uid.localpart
        else:
            localpart = username
        if not is_valid_localpart_for_registration(localpart):
            raise MatrixError(
                400,
                "M_INVALID_USERNAME",
                "Usernames may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'",
            )
        user_id = f"@{localpart}:{self.server_name}"
        if len(user_id.encode("utf-8")) > 255:
            raise MatrixError(400, "M_INVALID_USERNAME", "User id is longer than 255 bytes")
        return user_id

    def login_user_id(self, identifier: str) -> str | None:
        """A user id from a login identifier; None when it is not ours.
        Login is lenient: upper case is folded, historical localparts pass."""
        if identifier.startswith("@"):
            try:
                uid = parse_user_id(identifier)
            except InvalidIdentifier:
                return None
            if uid.server_name != self.server_name:
                return None
            return f"@{uid.localpart.lower()}:{self.server_name}"
        return f"@{identifier.lower()}:{self.server_name}"

    async def check_available(self, username: str) -> str:
        user_id = self.user_id_for(username)
        if await self.store.user_exists(user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        return user_id

    # -- registration --------------------------------------------------------
    def registration_flows(self) -> list[dict[str, Any]]:
        if self.registration_mode == "token":
            return [{"stages": ["m.login.registration_token"]}]
        return [{"stages": ["m.login.dummy"]}]

    async def register(
        self,
        *,
        username: str | None,
        password: str | None,
        device_id: str | None,
        device_display_name: str | None,
        inhibit_login: bool,
        is_admin: bool = False,
        ip: str | None = None,
    ) -> LoginResult | str:
        """Create the account; returns LoginResult, or the user id when
        inhibit_login is set."""
        if username is None:
            username = "u" + secrets.token_hex(6)
        user_id = self.user_id_for(username)
        password_hash = await self.hasher.hash(password) if password else None
        token = new_token()
        device_id = device_id or new_device_id()
        device = None if inhibit_login else (device_id, device_display_name, token)
        try:
            await self.store.create_user(user_id, password_hash, now_ms(), is_admin=is_admin, device=device, ip=ip)
        except UserExists:
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.") from None
        if inhibit_login:
            return user_id
        await self._device_added(user_id, device_id)
        return LoginResult(user_id, device_id, token)

    # -- login / tokens --------------------------------------------------------
    async def check_credentials(self, identifier: str, password: str) -> str:
        """The user id if the password is right, else M_FORBIDDEN (or
        M_USER_DEACTIVATED)."""
        user_id = self.login_user_id(identifier)
        account = await self.store.get_account(user_id) if user_id else None
        if account is None or account.password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hasher.hash(secrets.token_hex(8))
            await self.hasher.check(password, self._dummy_hash)
            if account is not None and account.deactivated:
                raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
            raise forbidden("Invalid username or password")
        if not await self.hasher.check(password, account.password_hash):
            raise forbidden("Invalid username or password")
        if account.deactivated:
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        return account.user_id

    async def login(
        self, user_id: str, device_id: str | None, device_display_name: str | None, ip: str | None = None
    ) -> LoginResult:
        device_id = device_id or new_device_id()
        token = new_token()
        await self.store.login_device(user_id, device_id, device_display_name, token, now_ms(), ip)
        await self._device_added(user_id, device_id)
        return LoginResult(user_id, device_id, token)

    async def requester_for_token(self, token: str) -> Requester | None:
        owner: TokenOwner | None = await self.store.owner_of_token(token)
        if owner is None:
            self._tokens.pop(token_hash(token), None)
            return None
        self._tokens[token_hash(token)] = (owner, time.monotonic() + TOKEN_CACHE_TTL_S)
        self._tokens.move_to_end(token_hash(token))
        while len(self._tokens) > TOKEN_CACHE_SIZE:
            self._tokens.popitem(last=False)
        return Requester(owner.user_id, owner.device_id, owner.is_admin, token)

    async def requester_for_write(self, token: str) -> Requester | None:
        """Like ``requester_for_token``, without a database read when this
        instance saw the token recently: such a requester carries a
        ``write_guard`` that its write must run (another instance may have
        revoked the token since)."""
        hit = self._tokens.get(token_hash(token))
        if hit is None or hit[1] <= time.monotonic():
            return await self.requester_for_token(token)
        owner = hit[0]
        return Requester(owner.user_id, owner.device_id, owner.is_admin, token,
                         token_write_guard(token))

    def forget_token(self, token: str) -> None:
        self._tokens.pop(token_hash(token), None)

    async def logout(self, requester: Requester) -> None:
        # Logging out deletes the device, its tokens and its keys.
        await self.delete_devices(requester.user_id, [requester.device_id])

    async def logout_all(self, requester: Requester) -> None:
        await self.delete_devices(requester.user_id, None)

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> None:
        """Delete devices (all when None), their tokens and their keys."""
        removed = await self.store.delete_devices(user_id, device_ids, self.device_remover)
        crash_point("devices_deleted")  # (with their keys and the device-list change, in one transaction)
        await self._devices_removed(user_id, removed)

    async def _device_added(self, user_id: str, device_id: str) -> None:
        for hook in self.device_added_hooks:
            await hook(user_id, device_id)

    async def _devices_removed(self, user_id: str, device_ids: list[str]) -> None:
        for h in [h for h, (owner, _) in self._tokens.items() if owner.user_id == user_id]:
            del self._tokens[h]
        if device_ids:
            for hook in self.devices_removed_hooks:
                await hook(user_id, device_ids)

    # -- password & deactivation ---------------------------------------------
    async def change_password(self, requester: Requester, new_password: str, logout_devices: bool) -> None:
        password_hash = await self.hasher.hash(new_password)
        removed = await self.store.set_password(
            requester.user_id, password_hash, keep_device=requester.device_id, revoke=logout_devices,
            remover=self.device_remover,
        )
        await self._devices_removed(requester.user_id, removed)

    async def deactivate(self, user_id: str) -> None:
        for h in [h for h, (owner, _) in self._tokens.items() if owner.user_id == user_id]:
            del self._tokens[h]
        for hook in self.deactivation_hooks:
            await hook(user_id)
        await self._devices_removed(user_id, await self.store.deactivate(user_id, self.device_remover))

    # -- user-interactive auth ------------------------------------------------
    async def require_uia(
        self,
        body: Mapping[str, Any],
        flows: list[list[str]],
        *,
        user_id: str | None,
        check_stage: Callable[[str, Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        """Return when the request's ``auth`` completes one of ``flows``;
        otherwise raise the 401 that tells the client what to do next."""
        auth = body.get("auth")
        session_id: str | None = None
        completed: list[str] = []
        error: MatrixError | None = None
        if auth is not None:
            if not isinstance(auth, Mapping):
                raise invalid_param("auth must be an object")
            raw_session = auth.get("session")
            if raw_session is not None:
                if not isinstance(raw_session, str):
                    raise invalid_param("auth.session must be a string")
                found = await self.store.uia_get(raw_session)
                if found is None:
                    raise MatrixError(400, "M_UNKNOWN", "Unknown UIA session")
                owner, completed = found
                if owner is not None and owner != user_id:
                    raise forbidden("UIA session belongs to another user")
                session_id = raw_session
            stage = auth.get("type")
            if isinstance(stage, str):
                allowed = {s for flow in flows for s in flow}
                if stage not in allowed:
                    raise MatrixError(400, "M_UNRECOGNIZED", f"Unsupported auth type {stage!r}")
                try:
                    await check_stage(stage, auth)
                    if stage not in completed:
                        completed = completed + [stage]
                    if session_id is not None:
                        await self.store.uia_complete_stage(session_id, stage)
                except MatrixError as e:
                    error = e
        for flow in flows:
            if all(s in completed for s in flow):
                if session_id is not None:
                    await self.store.uia_delete(session_id)
                return
        if session_id is None:
            session_id = secrets.token_urlsafe(16)
            await self.store.uia_create(session_id, user_id, now_ms())
            for stage in completed:
                await self.store.uia_complete_stage(session_id, stage)
        body401: dict[str, Any] = {
            "flows": [{"stages": f} for f in flows],
            "params": {},
            "session": session_id,
        }
        if completed:
            body401["completed"] = completed
        if error is not None:
            body401["errcode"] = error.errcode
            body401["error"] = error.error
        raise MatrixError(401, body401.pop("errcode", None) or "", body401.pop("error", "") or "", **body401)

    async def check_registration_stage(self, stage: str, auth: Mapping[str, Any]) -> None:
        if stage == "m.login.dummy" and self.registration_mode == "open":
            return
        if stage == "m.login.registration_token" and self.registration_mode == "token":
            token = auth.get("token")
            if isinstance(token, str) and any(secrets.compare_digest(token, t) for t in self.registration_tokens):
                return
            # a use counts when the stage passes (the user name was checked
            # before UIA began)
            if isinstance(token, str) and self.token_store is not None and await self.token_store.use(token, now_ms()):
                return
            raise MatrixError(401, "M_FORBIDDEN", "Invalid registration token")
        raise MatrixError(401, "M_FORBIDDEN", f"Auth type {stage} is not accepted")

    def password_stage_checker(self, user_id: str) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
        async def check(stage: str, auth: Mapping[str, Any]) -> None:
            if stage != "m.login.password":
                raise MatrixError(401, "M_FORBIDDEN", f"Auth type {stage} is not accepted")
            identifier = _auth_user(auth)
            password = auth.get("password")
            if not isinstance(password, str) or identifier is None:
                raise MatrixError(401, "M_FORBIDDEN", "Password auth needs an identifier and a password")
            if self.login_user_id(identifier) != user_id:
                raise MatrixError(401, "M_FORBIDDEN", "Auth is for another user")
            await self.check_credentials(identifier, password)

        return check


def _auth_user(auth: Mapping[str, Any]) -> str | None:
    identifier = auth.get("identifier")
    if isinstance(identifier, Mapping):
        user = identifier.get("user")
        if identifier.get("type") == "m.id.user" and isinstance(user, str):
            return user
        return None
    user = auth.get("user")
    return user if isinstance(user, str) else None

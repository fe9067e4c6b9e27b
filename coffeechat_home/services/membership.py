"""Membership changes: invite, join (incl. restricted rooms), knock, leave,
kick, ban, unban, forget. Every change is an m.room.member event checked by
the auth rules before it is stored; the rules alone decide who may join,
be invited or knock (bans included), the service only picks the event."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

from ..errors import MatrixError, forbidden, not_found
from ..protocol.events import Event, StateKey
from ..protocol.identifiers import InvalidIdentifier, parse_room_alias, parse_user_id
from ..protocol.restricted import AUTHORISING_USER, allowed_room_ids, authorising_servers, local_authorisers
from ..storage.accounts import AccountStore
from ..storage.rooms import RoomStore
from .accounts import Requester
from .rooms import RoomService


class MembershipService:
    def __init__(self, rooms: RoomService, store: RoomStore, accounts: AccountStore, server_name: str) -> None:
        self.rooms = rooms
        self.store = store
        self.accounts = accounts
        self.server_name = server_name
        # federation (services/federation/remote_rooms.py): join a room we do
        # not have through other servers; resolve another server's alias
        self.remote_join: Callable[[str, str, Sequence[str], Mapping[str, Any]], Awaitable[str]] | None = None
        self.remote_alias: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None
        self.remote_servers: Callable[[str, Sequence[str]], list[str]] | None = None
        self.remote_leave: Callable[[str, str, Sequence[str], Mapping[str, Any]], Awaitable[None]] | None = None
        self.remote_knock: Callable[[str, str, Sequence[str], Mapping[str, Any]], Awaitable[None]] | None = None
        # invites from other servers: (event id, sender) of a pending one;
        # whether one of our users is joined; rejecting through the inviter
        self.pending_invite: Callable[[str, str], Awaitable[tuple[str, str] | None]] | None = None
        self.local_joined: Callable[[str], Awaitable[bool]] | None = None
        self.reject_remote_invite: Callable[[str, str, Sequence[str], Mapping[str, Any]], Awaitable[None]] | None = None

    async def resolve_room(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            try:
                alias = parse_room_alias(room_id_or_alias)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
            room_id = await self.store.alias_room(room_id_or_alias)
            if room_id is None:
                if alias.server_name != self.server_name:
                    raise not_found("Room alias on another server: federation is not supported yet")
                raise not_found("Room alias not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise MatrixError(400, "M_INVALID_PARAM", "Expected a room id or alias")
        if await self.store.room_version(room_id_or_alias) is None:
            raise not_found("No known servers for this room (federation is not supported yet)")
        return room_id_or_alias

    async def _change(
        self, requester: Requester, room_id: str, target: str, membership: str, extra: Mapping[str, Any] | None = None
    ) -> str:
        content = await self.rooms.member_content(target, membership, extra)
        check = self.rooms.remote_invites if membership == "invite" else None
        return await self.rooms.send(requester, room_id, "m.room.member", content, state_key=target, check=check)

    def _reason(self, reason: Any) -> dict[str, Any] | None:
        if reason is None:
            return None
        if not isinstance(reason, str):
            raise MatrixError(400, "M_BAD_JSON", "reason must be a string")
        return {"reason": reason}

    async def _check_target(self, user_id: Any) -> str:
        if not isinstance(user_id, str):
            raise MatrixError(400, "M_MISSING_PARAM", "user_id is required")
        try:
            uid = parse_user_id(user_id)
        except InvalidIdentifier as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        if uid.server_name != self.server_name:
            if self.rooms.remote_invites is None:
                raise MatrixError(400, "M_UNRECOGNIZED", "Users on other servers need federation, which is off")
            return user_id
        if not await self.accounts.user_exists(user_id):
            raise not_found("User not found")
        return user_id

    # -- the operations ----------------------------------------------------------
    async def invite(self, requester: Requester, room_id: str, user_id: Any, reason: Any = None) -> None:
        target = await self._check_target(user_id)
        await self._refuse_blocked(room_id)
        state = await self.rooms.require_state(room_id)
        self._require_member(state, requester.user_id)
        current = _membership(state, target)
        if current == "invite":
            return
        if current == "join":
            raise forbidden(f"{target} is already in the room")
        await self._change(requester, room_id, target, "invite", self._reason(reason))

    async def _refuse_blocked(self, room_id: str) -> None:
        if await self.store.is_blocked(room_id):
            raise forbidden("This room has been blocked on this server")

    async def _invite_from_elsewhere(self, room_id: str, user_id: str) -> str | None:
        """The inviting server of a pending invite to a room none of our
        users is in."""
        if self.pending_invite is None or self.local_joined is None:
            return None
        invite = await self.pending_invite(room_id, user_id)
        if invite is None or await self.local_joined(room_id):
            return None
        server = invite[1].split(":", 1)[1]
        return server if server != self.server_name else None

    async def _remote_target(
        self, room_id_or_alias: str, via: Sequence[str], user_id: str
    ) -> tuple[str, list[str]] | None:
        """(room id, servers to ask) when the room is not on this server."""
        if self.remote_join is None or self.remote_servers is None:
            return None
        if room_id_or_alias.startswith("#"):
            try:
                alias = parse_room_alias(room_id_or_alias)
            except InvalidIdentifier as e:
                raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
            if alias.server_name == self.server_name or self.remote_alias is None:
                return None
            if await self.store.alias_room(room_id_or_alias) is not None:
                return None
            answer = await self.remote_alias(room_id_or_alias, alias.server_name)
            room_id = str(answer["room_id"])
            if await self.store.room_version(room_id) is not None:
                return None
            return room_id, self.remote_servers(room_id, [*via, *answer.get("servers", [])])
        if room_id_or_alias.startswith("!"):
            if await self.store.room_version(room_id_or_alias) is None:
                return room_id_or_alias, self.remote_servers(room_id_or_alias, via)
            inviter = await self._invite_from_elsewhere(room_id_or_alias, user_id)
            if inviter is not None:
                return room_id_or_alias, self.remote_servers(room_id_or_alias, [*via, inviter])
        return None

    async def join(
        self, requester: Requester, room_id_or_alias: str, reason: Any = None, via: Sequence[str] = ()
    ) -> str:
        remote = await self._remote_target(room_id_or_alias, via, requester.user_id)
        if remote is not None and self.remote_join is not None:
            room_id, servers = remote
            content = await self.rooms.member_content(requester.user_id, "join", self._reason(reason))
            return str(await self.remote_join(requester.user_id, room_id, servers, content))
        room_id = await self.resolve_room(room_id_or_alias)
        await self._refuse_blocked(room_id)
        state = await self.rooms.require_state(room_id)
        me = requester.user_id
        current = state.get(("m.room.member", me))
        extra = dict(self._reason(reason) or {})
        if current is not None and current.membership == "join":
            wanted = await self.rooms.member_content(me, "join", extra)
            if dict(current.content) == wanted:
                return room_id
        join_rules = state.get(("m.room.join_rules", ""))
        rule = join_rules.content.get("join_rule") if join_rules is not None else "invite"
        if (
            join_rules is not None
            and rule in ("restricted", "knock_restricted")
            and (current is None or current.membership not in ("invite", "join"))
        ):
            await self._check_allowed(join_rules, me)
            rv = join_rules.room_version
            authorisers = local_authorisers(state, self.server_name, rv)
            if not authorisers:  # none of our users may invite: a server whose user can authorises the join
                others = [s for s in authorising_servers(state, rv) if s != self.server_name]
                if self.remote_join is None or not others:
                    raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN", "No user in the room can authorise this join")
                content = await self.rooms.member_content(me, "join", self._reason(reason))
                return str(await self.remote_join(me, room_id, others, content))
            extra[AUTHORISING_USER] = authorisers[0]
        await self._change(requester, room_id, me, "join", extra)
        return room_id

    async def _check_allowed(self, join_rules: Event, user_id: str) -> None:
        for other in allowed_room_ids({("m.room.join_rules", ""): join_rules}):
            if await self.store.is_joined(other, user_id):
                return
        raise forbidden("You are not a member of any room that this restricted room allows")

    async def knock(
        self, requester: Requester, room_id_or_alias: str, reason: Any = None, via: Sequence[str] = ()
    ) -> str:
        remote = await self._remote_target(room_id_or_alias, via, requester.user_id)
        if remote is not None and self.remote_knock is not None:
            room_id, servers = remote
            content = await self.rooms.member_content(requester.user_id, "knock", self._reason(reason))
            await self.remote_knock(requester.user_id, room_id, servers, content)
            return room_id
        room_id = await self.resolve_room(room_id_or_alias)
        await self._refuse_blocked(room_id)
        state = await self.rooms.require_state(room_id)
        current = _membership(state, requester.user_id)
        if current == "join":
            raise forbidden("You are already in the room")
        await self._change(requester, room_id, requester.user_id, "knock", self._reason(reason))
        return room_id

    async def leave(self, requester: Requester, room_id: str, reason: Any = None) -> None:
        state = await self.rooms.writer.current_state(room_id)
        current = _membership(state or {}, requester.user_id)
        if current is None and self.reject_remote_invite is not None:
            inviter = await self._invite_from_elsewhere(room_id, requester.user_id)
            if inviter is not None:  # reject an invite from another server through it
                await self.reject_remote_invite(requester.user_id, room_id, [inviter], self._reason(reason) or {})
                return
        if state is None or current is None:
            raise forbidden("You are not in this room")
        if current in ("leave", "ban"):
            return  # already out: nothing to do
        others = _other_servers(state or {}, self.server_name)
        if self.remote_leave is not None and others and not _created_here(state or {}, self.server_name):
            # a room that lives elsewhere: leave through a resident server;
            # none answering, the leave is made here (the outbound sender
            # delivers it when they are back)
            try:
                await self.remote_leave(requester.user_id, room_id, others, self._reason(reason) or {})
                return
            except MatrixError as e:
                if e.status != 502:
                    raise
        await self._change(requester, room_id, requester.user_id, "leave", self._reason(reason))

    async def kick(self, requester: Requester, room_id: str, user_id: Any, reason: Any = None) -> None:
        target = await self._check_member_target(user_id)
        state = await self.rooms.require_state(room_id)
        self._require_member(state, requester.user_id)
        if _membership(state, target) not in ("join", "invite", "knock"):
            raise forbidden(f"{target} is not in the room")
        await self._change(requester, room_id, target, "leave", self._reason(reason))

    async def ban(self, requester: Requester, room_id: str, user_id: Any, reason: Any = None) -> None:
        target = await self._check_member_target(user_id)
        state = await self.rooms.require_state(room_id)
        self._require_member(state, requester.user_id)
        if _membership(state, target) == "ban":
            return
        await self._change(requester, room_id, target, "ban", self._reason(reason))

    async def unban(self, requester: Requester, room_id: str, user_id: Any, reason: Any = None) -> None:
        target = await self._check_member_target(user_id)
        state = await self.rooms.require_state(room_id)
        self._require_member(state, requester.user_id)
        if _membership(state, target) != "ban":
            raise forbidden(f"{target} is not banned")
        await self._change(requester, room_id, target, "leave", self._reason(reason))

    async def forget(self, requester: Requester, room_id: str) -> None:
        membership = await self.store.membership(room_id, requester.user_id)
        if membership is None:
            raise not_found("You have never been in this room")
        if membership in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "Leave the room before forgetting it")
        await self.store.forget(requester.user_id, room_id)

    async def leave_all(self, user_id: str, device_id: str = "") -> None:
        """On deactivation: leave every joined room and reject invites."""
        requester = Requester(user_id, device_id, False, "")
        for membership in ("join", "invite", "knock"):
            for room_id in await self.store.rooms_for_user(user_id, membership):
                await self._change(requester, room_id, user_id, "leave")

    async def profile_changed(self, user_id: str, displayname: str | None, avatar_url: str | None) -> None:
        """Reflect a profile change in the user's member event in every
        room they are joined to (the spec asks servers to)."""
        requester = Requester(user_id, "", False, "")
        for room_id in await self.store.rooms_for_user(user_id, "join"):
            state = await self.rooms.writer.current_state(room_id) or {}
            current = state.get(("m.room.member", user_id))
            extra = {k: v for k, v in (current.content if current else {}).items()
                     if k not in ("displayname", "avatar_url", "membership")}
            content = await self.rooms.member_content(user_id, "join", extra)
            if current is not None and dict(current.content) == content:
                continue
            try:
                await self.rooms.send(requester, room_id, "m.room.member", content, state_key=user_id)
            except MatrixError:
                continue  # e.g. the room forbids it now; the profile itself changed

    async def _check_member_target(self, user_id: Any) -> str:
        if not isinstance(user_id, str):
            raise MatrixError(400, "M_MISSING_PARAM", "user_id is required")
        try:
            parse_user_id(user_id)
        except InvalidIdentifier as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        return user_id

    @staticmethod
    def _require_member(state: Mapping[StateKey, Event], user_id: str) -> None:
        if _membership(state, user_id) != "join":
            raise forbidden("You are not in this room")


def _membership(state: Mapping[StateKey, Event], user_id: str) -> str | None:
    ev = state.get(("m.room.member", user_id))
    return ev.membership if ev is not None else None


def _other_servers(state: Mapping[StateKey, Event], own: str) -> list[str]:
    """Servers (other than ours) with joined members, the creator's first."""
    servers: list[str] = []
    create = state.get(("m.room.create", ""))
    if create is not None:
        servers.append(create.sender.split(":", 1)[1])
    for (etype, skey), ev in state.items():
        if etype == "m.room.member" and ev.membership == "join":
            servers.append(skey.split(":", 1)[1])
    joined = {skey.split(":", 1)[1] for (t, skey), ev in state.items() if t == "m.room.member" and ev.membership == "join"}
    return [s for s in dict.fromkeys(servers) if s != own and s in joined]


def _created_here(state: Mapping[StateKey, Event], own: str) -> bool:
    create = state.get(("m.room.create", ""))
    return create is not None and create.sender.split(":", 1)[1] == own

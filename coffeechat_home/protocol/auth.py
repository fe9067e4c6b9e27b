"""Authorization rules for room versions 10, 11 and 12, as pure functions.

``check_auth_rules(event, auth_state)`` applies the spec's rules to an event
given the state it is checked against: its own auth events (see
``auth_state_from_auth_events``), the state before it, or the current state
(the soft-fail check). Rejections raise ``AuthError(rule, message)`` where
``rule`` is a short stable identifier such as ``"member.join.banned"``.

Rules about the *list* of auth events (duplicates, unexpected entries,
rejected entries, wrong room) live in ``check_auth_events``, which
``auth_state_from_auth_events`` runs; they only make sense for an event's own
auth events, not for a room state.

Room-version differences come from ``RoomVersion`` flags, never from version
strings. No I/O: the only non-stdlib import is PyNaCl, lazily, for the
third-party-invite signature (pass ``verify_third_party_signature`` to use
another verifier).
"""


from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, Iterable, Mapping, Sequence

from .events import Event, StateKey, auth_types_for_event, create_event_id_for_room
from .power_levels import (
    CREATE, CREATE_KEY, JOIN_RULES_KEY, LEVEL_MAPS, MEMBER, NAMED_LEVELS, POWER_LEVELS, POWER_LEVELS_KEY,
    THIRD_PARTY_INVITE, PowerLevel, creators_of, get_named_level, get_power_level,
    is_valid_user_id, parse_level, required_power_level, server_name_of,
)
from .room_versions import KNOWN_ROOM_VERSIONS, RoomIdFormat

ThirdPartySignatureVerifier = Callable[[Mapping[str, Any], str], bool]
"""(signed object, base64 public key) -> True if any signature in
``signed["signatures"]`` verifies with that key."""

ServerSignatureCheck = Callable[[Event, str], bool]
"""(event, server name) -> True if the event is validly signed by that server."""


class AuthError(Exception):
    """An event fails the authorization rules.

    ``rule`` names the failed rule (stable, for logs and tests); ``message``
    says why in words.
    """

    def __init__(self, rule: str, message: str):
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


# --------------------------------------------------------------------------
# format checks the rules rely on


def check_event_format_for_auth(event: Event) -> None:
    """The format parts of the rules (rule 1 for create events).

    Create: no prev_events; v10/v11 room id domain equals the sender's
    domain; v12 no ``room_id`` at all; a known ``room_version`` if given;
    v10 a ``creator``; v12 ``additional_creators`` an array of valid user ids.
    Other events: a string room id.
    """
    rv = event.room_version
    if event.type != CREATE:
        if not isinstance(event.room_id, str) or not event.room_id.startswith("!"):
            raise AuthError("event.room_id", "event has no valid room_id")
        return
    if event.prev_event_ids:
        raise AuthError("create.has_prev_events", "m.room.create must not have prev_events")
    if rv.room_id_format is RoomIdFormat.CREATE_EVENT_HASH:
        if "room_id" in event.pdu:
            raise AuthError("create.has_room_id", "m.room.create must not have a room_id in this room version")
    else:
        if not isinstance(event.room_id, str) or server_name_of(event.room_id) != server_name_of(event.sender):
            raise AuthError("create.room_id_domain", "room_id domain does not match sender domain")
    if "room_version" in event.content:
        version = event.content["room_version"]
        if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
            raise AuthError("create.unknown_room_version", f"unrecognised room version {version!r}")
    if not rv.implicit_room_creator and "creator" not in event.content:
        raise AuthError("create.no_creator", "m.room.create has no creator")
    if rv.privileged_creators and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError(
                "create.additional_creators",
                "additional_creators must be an array of valid user ids",
            )


def check_auth_events(
    event: Event,
    auth_events: Sequence[Event],
    *,
    is_rejected: Callable[[str], bool] | None = None,
) -> None:
    """The rules on an event's own ``auth_events`` list (rule 2 in v10/v11,
    rule 3 in v12): no duplicate (type, state_key), only the keys the auth
    events selection picks (so never the create event in v12), none
    rejected, all in the event's room, and (v10/v11) a create event present.
    """
    if event.type == CREATE:
        return
    rv = event.room_version
    allowed = set(auth_types_for_event(rv, event.type, event.sender, event.state_key, event.content))
    seen: set[StateKey] = set()
    for ae in auth_events:
        if ae.state_key is None:
            raise AuthError("auth_events.not_state", f"auth event {ae.event_id} is not a state event")
        key = (ae.type, ae.state_key)
        if key in seen:
            raise AuthError("auth_events.duplicate", f"duplicate auth events for {key}")
        seen.add(key)
        if key not in allowed:
            raise AuthError("auth_events.unexpected", f"auth event {ae.event_id} {key} is not selectable")
        if is_rejected is not None and is_rejected(ae.event_id):
            raise AuthError("auth_events.rejected", f"auth event {ae.event_id} was rejected")
        if ae.room_id != event.room_id:
            raise AuthError("auth_events.room_mismatch", f"auth event {ae.event_id} is in another room")
    if rv.create_event_in_auth_events and CREATE_KEY not in seen:
        raise AuthError("auth_events.no_create", "no m.room.create among the auth events")


def auth_state_from_auth_events(
    event: Event,
    get_event: Callable[[str], Event | None],
    *,
    is_rejected: Callable[[str], bool] | None = None,
) -> dict[StateKey, Event]:
    """The state map made of an event's auth events, checked by
    ``check_auth_events``; in v12 the create event implied by the room id is
    added. Raises ``AuthError`` when an auth event is missing."""
    loaded: list[Event] = []
    for aid in event.auth_event_ids:
        ae = get_event(aid)
        if ae is None:
            raise AuthError("auth_events.missing", f"auth event {aid} is not available")
        loaded.append(ae)
    check_auth_events(event, loaded, is_rejected=is_rejected)
    state: dict[StateKey, Event] = {(ae.type, ae.state_key): ae for ae in loaded}  # type: ignore[misc]
    rv = event.room_version
    if event.type != CREATE and not rv.create_event_in_auth_events and isinstance(event.room_id, str):
        create_id = create_event_id_for_room(event.room_id, rv)
        create = get_event(create_id) if create_id is not None else None
        if create is None or (is_rejected is not None and is_rejected(create.event_id)):
            raise AuthError("create.missing", f"create event {create_id} is not available")
        state[CREATE_KEY] = create
    return state


# --------------------------------------------------------------------------
# the rules


def check_auth_rules(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    *,
    verify_third_party_signature: ThirdPartySignatureVerifier | None = None,
    is_signed_by_server: ServerSignatureCheck | None = None,
) -> None:
    """Apply the authorization rules to ``event`` against ``auth_state``.

    Raises ``AuthError`` naming the rule that rejects it; returns None if it
    is allowed. ``is_signed_by_server`` checks the
    ``join_authorised_via_users_server`` signature rule; when None that rule
    is left to the signature checks done on receipt (as in iterative auth
    checks during state resolution).
    """
    check_event_format_for_auth(event)
    if event.type == CREATE:
        return  # rule 1: create events only need the format rules
    create = _create_event_for(event, auth_state)
    if create.content.get("m.federate", True) is False and server_name_of(event.sender) != server_name_of(create.sender):
        raise AuthError("federate", "room is not federated and sender is on another server")
    if event.type == MEMBER:
        _check_membership(event, auth_state, create, verify_third_party_signature, is_signed_by_server)
        return
    rv = event.room_version
    if _membership(auth_state, event.sender, event) != "join":
        raise AuthError("sender.not_joined", f"{event.sender} is not joined to the room")
    sender_level = get_power_level(event.sender, auth_state, rv)
    if event.type == THIRD_PARTY_INVITE:
        if sender_level >= get_named_level("invite", auth_state, rv):
            return
        raise AuthError("third_party_invite.power", "sender may not invite")
    required = required_power_level(event.type, event.state_key, auth_state, rv)
    if required > sender_level:
        raise AuthError(
            "power.event_level",
            f"{event.type} needs power level {required}, sender has {sender_level}",
        )
    if event.state_key is not None and event.state_key.startswith("@") and event.state_key != event.sender:
        raise AuthError("state_key.other_user", "state_key names another user")
    if event.type == POWER_LEVELS:
        _check_power_levels(event, auth_state, create, sender_level)


def _state_event(auth_state: Mapping[StateKey, Event], key: StateKey, event: Event) -> Event | None:
    ev = auth_state.get(key)
    if ev is not None and ev.room_id != event.room_id:
        raise AuthError("auth_events.room_mismatch", f"{key} event {ev.event_id} is in another room")
    return ev


def _membership(auth_state: Mapping[StateKey, Event], user_id: str, event: Event) -> str | None:
    ev = _state_event(auth_state, (MEMBER, user_id), event)
    return ev.membership if ev is not None else None


def _create_event_for(event: Event, auth_state: Mapping[StateKey, Event]) -> Event:
    rv = event.room_version
    create = auth_state.get(CREATE_KEY)
    if rv.room_id_format is RoomIdFormat.CREATE_EVENT_HASH:
        expected = create_event_id_for_room(event.room_id, rv)
        if create is None or create.event_id != expected:
            raise AuthError(
                "create.room_id_mismatch",
                "room_id is not the id of an accepted m.room.create event",
            )
        return create
    if create is None:
        raise AuthError("auth_events.no_create", "no m.room.create event")
    if create.room_id != event.room_id:
        raise AuthError("auth_events.room_mismatch", "m.room.create is in another room")
    return create


def _check_membership(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    create: Event,
    verify_tpi: ThirdPartySignatureVerifier | None,
    is_signed_by_server: ServerSignatureCheck | None,
) -> None:
    if event.state_key is None:
        raise AuthError("member.no_state_key", "m.room.member without state_key")
    if "membership" not in event.content:
        raise AuthError("member.no_membership", "m.room.member without membership")
    via = event.content.get("join_authorised_via_users_server")
    if via is not None and is_signed_by_server is not None:
        if not isinstance(via, str) or not is_signed_by_server(event, server_name_of(via)):
            raise AuthError(
                "member.authorising_server_signature",
                "not signed by the server of join_authorised_via_users_server",
            )
    membership = event.membership
    if membership == "join":
        _check_join(event, auth_state, create)
    elif membership == "invite":
        _check_invite(event, auth_state, verify_tpi)
    elif membership == "leave":
        _check_leave(event, auth_state)
    elif membership == "ban":
        _check_ban(event, auth_state)
    elif membership == "knock" and event.room_version.knock_join_rule:
        _check_knock(event, auth_state)
    else:
        raise AuthError("member.unknown_membership", f"unknown membership {membership!r}")


def _join_rule(auth_state: Mapping[StateKey, Event], event: Event) -> str:
    ev = _state_event(auth_state, JOIN_RULES_KEY, event)
    if ev is None:
        return "invite"
    rule = ev.content.get("join_rule", "invite")
    return rule if isinstance(rule, str) else ""


def _first_join_creator(create: Event) -> str | None:
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def _check_join(event: Event, auth_state: Mapping[StateKey, Event], create: Event) -> None:
    rv = event.room_version
    target = event.state_key
    if (
        len(event.prev_event_ids) == 1
        and event.prev_event_ids[0] == create.event_id
        and target == _first_join_creator(create)
    ):
        return
    if event.sender != target:
        raise AuthError("member.join.sender_mismatch", "cannot join on behalf of another user")
    current = _membership(auth_state, event.sender, event)
    if current == "ban":
        raise AuthError("member.join.banned", f"{event.sender} is banned")
    rule = _join_rule(auth_state, event)
    if rule == "invite" or (rule == "knock" and rv.knock_join_rule):
        if current in ("invite", "join"):
            return
        raise AuthError("member.join.not_invited", f"join rule {rule!r} needs an invite")
    if (rule == "restricted" and rv.restricted_join_rule) or (
        rule == "knock_restricted" and rv.knock_restricted_join_rule
    ):
        if current in ("join", "invite"):
            return
        _check_join_authoriser(event, auth_state)
        return
    if rule == "public":
        return
    raise AuthError("member.join.join_rule", f"join rule {rule!r} does not allow joining")


def _check_join_authoriser(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    via = event.content.get("join_authorised_via_users_server")
    if not isinstance(via, str):
        raise AuthError("member.join.no_authoriser", "restricted join without join_authorised_via_users_server")
    if _membership(auth_state, via, event) != "join":
        raise AuthError("member.join.authoriser_not_joined", f"authorising user {via} is not joined")
    rv = event.room_version
    if get_power_level(via, auth_state, rv) < get_named_level("invite", auth_state, rv):
        raise AuthError("member.join.authoriser_power", f"authorising user {via} may not invite")


def _check_invite(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    verify_tpi: ThirdPartySignatureVerifier | None,
) -> None:
    rv = event.room_version
    target = event.state_key
    assert target is not None
    target_membership = _membership(auth_state, target, event)
    if "third_party_invite" in event.content:
        if target_membership == "ban":
            raise AuthError("member.invite.3pid.target_banned", f"{target} is banned")
        _check_third_party_invite(event, auth_state, verify_tpi)
        return
    if _membership(auth_state, event.sender, event) != "join":
        raise AuthError("member.invite.sender_not_joined", f"{event.sender} is not joined")
    if target_membership in ("join", "ban"):
        raise AuthError("member.invite.target_joined_or_banned", f"{target} is {target_membership}")
    if get_power_level(event.sender, auth_state, rv) >= get_named_level("invite", auth_state, rv):
        return
    raise AuthError("member.invite.power", "sender's power level is below the invite level")


def _check_third_party_invite(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    verify_tpi: ThirdPartySignatureVerifier | None,
) -> None:
    tpi = event.content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("member.invite.3pid.no_signed", "third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("member.invite.3pid.no_mxid_token", "signed lacks mxid or token")
    if mxid != event.state_key:
        raise AuthError("member.invite.3pid.mxid_mismatch", "signed.mxid does not match state_key")
    invite = _state_event(auth_state, (THIRD_PARTY_INVITE, token), event)
    if invite is None:
        raise AuthError("member.invite.3pid.no_invite_event", f"no m.room.third_party_invite for token {token!r}")
    if invite.sender != event.sender:
        raise AuthError("member.invite.3pid.sender_mismatch", "sender differs from the third party invite's sender")
    verify = verify_tpi or verify_third_party_signed
    for public_key in _third_party_public_keys(invite):
        if verify(signed, public_key):
            return
    raise AuthError("member.invite.3pid.bad_signature", "no signature in signed matches the invite's public keys")


def _third_party_public_keys(invite: Event) -> list[str]:
    keys: list[str] = []
    single = invite.content.get("public_key")
    if isinstance(single, str):
        keys.append(single)
    many = invite.content.get("public_keys")
    if isinstance(many, list):
        for entry in many:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _check_leave(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    rv = event.room_version
    target = event.state_key
    assert target is not None
    target_membership = _membership(auth_state, target, event)
    if event.sender == target:
        if target_membership in ("invite", "join", "knock"):
            return
        raise AuthError("member.leave.not_member", f"{target} has nothing to leave ({target_membership})")
    if _membership(auth_state, event.sender, event) != "join":
        raise AuthError("member.leave.sender_not_joined", f"{event.sender} is not joined")
    sender_level = get_power_level(event.sender, auth_state, rv)
    if target_membership == "ban" and sender_level < get_named_level("ban", auth_state, rv):
        raise AuthError("member.leave.unban_power", "sender's power level is below the ban level")
    if sender_level >= get_named_level("kick", auth_state, rv) and get_power_level(target, auth_state, rv) < sender_level:
        return
    raise AuthError("member.leave.kick_power", "sender may not kick this user")


def _check_ban(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    rv = event.room_version
    target = event.state_key
    assert target is not None
    if _membership(auth_state, event.sender, event) != "join":
        raise AuthError("member.ban.sender_not_joined", f"{event.sender} is not joined")
    sender_level = get_power_level(event.sender, auth_state, rv)
    if sender_level >= get_named_level("ban", auth_state, rv) and get_power_level(target, auth_state, rv) < sender_level:
        return
    raise AuthError("member.ban.power", "sender may not ban this user")


def _check_knock(event: Event, auth_state: Mapping[StateKey, Event]) -> None:
    rv = event.room_version
    rule = _join_rule(auth_state, event)
    if not (rule == "knock" or (rule == "knock_restricted" and rv.knock_restricted_join_rule)):
        raise AuthError("member.knock.join_rule", f"join rule {rule!r} does not allow knocking")
    if event.sender != event.state_key:
        raise AuthError("member.knock.sender_mismatch", "cannot knock on behalf of another user")
    if _membership(auth_state, event.sender, event) not in ("ban", "invite", "join"):
        return
    raise AuthError("member.knock.already", "sender is already banned, invited or joined")


def _check_power_levels(
    event: Event,
    auth_state: Mapping[StateKey, Event],
    create: Event,
    sender_level: PowerLevel,
) -> None:
    rv = event.room_version
    strict = rv.enforce_int_power_levels
    content = event.content
    for name in NAMED_LEVELS:
        if name in content and parse_level(content[name], strict) is None:
            raise AuthError("power_levels.invalid_level", f"{name} is not an integer")
    for name in LEVEL_MAPS:
        if name in content:
            value = content[name]
            if not isinstance(value, Mapping) or any(parse_level(v, strict) is None for v in value.values()):
                raise AuthError("power_levels.invalid_map", f"{name} is not an object of integers")
    users = content.get("users", {})
    if not isinstance(users, Mapping) or not all(
        is_valid_user_id(k) and parse_level(v, strict) is not None for k, v in users.items()
    ):
        raise AuthError("power_levels.invalid_users", "users is not an object of user ids to integers")
    if rv.privileged_creators:
        listed = creators_of(create).intersection(users)
        if listed:
            raise AuthError("power_levels.creator_in_users", f"room creators may not be listed: {sorted(listed)}")
    previous = _state_event(auth_state, POWER_LEVELS_KEY, event)
    if previous is None:
        return
    old = previous.content
    for name in NAMED_LEVELS:
        old_v = parse_level(old.get(name), strict) if name in old else None
        new_v = parse_level(content.get(name), strict) if name in content else None
        if old_v == new_v:
            continue
        if old_v is not None and old_v > sender_level:
            raise AuthError("power_levels.named_current_too_high", f"{name} is above the sender's level")
        if new_v is not None and new_v > sender_level:
            raise AuthError("power_levels.named_new_too_high", f"new {name} is above the sender's level")
    for name in LEVEL_MAPS:
        _check_level_map_changes(name, _as_map(old.get(name)), _as_map(content.get(name)), sender_level, strict)
    old_users = _as_map(old.get("users"))
    for user in set(old_users) | set(users):
        old_v = parse_level(old_users[user], strict) if user in old_users else None
        new_v = parse_level(users[user], strict) if user in users else None
        if old_v == new_v:
            continue
        if old_v is not None and user != event.sender and old_v >= sender_level:
            raise AuthError("power_levels.user_current_too_high", f"cannot change {user}, whose level is not below the sender's")
        if new_v is not None and new_v > sender_level:
            raise AuthError("power_levels.user_new_too_high", f"cannot raise {user} above the sender's level")


def _as_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _check_level_map_changes(
    name: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    sender_level: PowerLevel,
    strict: bool,
) -> None:
    for key in set(old) | set(new):
        old_v = parse_level(old[key], strict) if key in old else None
        new_v = parse_level(new[key], strict) if key in new else None
        if old_v == new_v:
            continue
        if old_v is not None and old_v > sender_level:
            raise AuthError("power_levels.map_current_too_high", f"{name}[{key!r}] is above the sender's level")
        if new_v is not None and new_v > sender_level:
            raise AuthError("power_levels.map_new_too_high", f"new {name}[{key!r}] is above the sender's level")


# --------------------------------------------------------------------------
# third-party invite signatures


def _canonical_json(value: Any) -> bytes:
    # Canonical JSON for the integer/string/bool/null JSON Matrix allows.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _unpadded_b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def verify_third_party_signed(signed: Mapping[str, Any], public_key: str) -> bool:
    """True if any ``ed25519:*`` signature in ``signed["signatures"]``
    verifies over ``signed`` (without ``signatures``/``unsigned``) with the
    base64 ``public_key``."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    try:
        key_bytes = _unpadded_b64decode(public_key)
        verify_key = VerifyKey(key_bytes)
    except (binascii.Error, ValueError, TypeError):  # nacl's errors subclass these
        return False
    message = _canonical_json({k: v for k, v in signed.items() if k not in ("signatures", "unsigned")})
    for block in signatures.values():
        if not isinstance(block, Mapping):
            continue
        for key_id, signature in block.items():
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:") or not isinstance(signature, str):
                continue
            try:
                verify_key.verify(message, _unpadded_b64decode(signature))
                return True
            except (BadSignatureError, binascii.Error, ValueError, TypeError):
                continue
    return False


def auth_state_from_events(events: Iterable[Event]) -> dict[StateKey, Event]:
    """A state map from state events (later entries win)."""
    return {(ev.type, ev.state_key): ev for ev in events if ev.state_key is not None}

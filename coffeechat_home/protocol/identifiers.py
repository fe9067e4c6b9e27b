"""Identifier grammar (spec appendix "Identifier Grammar").

Parsing is lenient where the spec says servers MUST accept (historical user
ID localparts, opaque room ID localparts) and strict where we create things
(``validate_localpart_for_registration``). Every failure raises
``InvalidIdentifier`` with a message naming what is wrong.
"""

from __future__ import annotations

import functools

import ipaddress
import re
from dataclasses import dataclass

from .canonical import decode_base64
from .errors import InvalidIdentifier
from .room_versions import RoomIdFormat, RoomVersion

__all__ = [
    "InvalidIdentifier",
    "MAX_IDENTIFIER_BYTES",
    "ServerName",
    "UserID",
    "RoomID",
    "RoomAlias",
    "parse_server_name",
    "validate_server_name",
    "is_valid_server_name",
    "parse_user_id",
    "is_valid_user_id",
    "is_compliant_user_id",
    "is_valid_localpart_for_registration",
    "validate_localpart_for_registration",
    "parse_room_id",
    "is_valid_room_id",
    "parse_room_alias",
    "is_valid_room_alias",
    "validate_event_id",
    "is_valid_event_id",
]

MAX_IDENTIFIER_BYTES = 255

_PORT_RE = re.compile(r"[0-9]{1,5}")
_IPV4_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_DNS_NAME_RE = re.compile(r"[0-9A-Za-z.\-]{1,255}")
_LOCALPART_RE = re.compile(r"[a-z0-9._=\-/+]+")
_HASH_ID_RE = re.compile(r"[A-Za-z0-9_\-]{43}")


@dataclass(frozen=True, slots=True)
class ServerName:
    host: str  # IPv6 literals keep their brackets: "[::1]"
    port: int | None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UserID:
    localpart: str
    server_name: str

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


@dataclass(frozen=True, slots=True)
class RoomID:
    opaque_id: str
    server_name: str | None  # None for v12 room IDs (create event hash)

    def __str__(self) -> str:
        if self.server_name is None:
            return f"!{self.opaque_id}"
        return f"!{self.opaque_id}:{self.server_name}"


@dataclass(frozen=True, slots=True)
class RoomAlias:
    localpart: str
    server_name: str

    def __str__(self) -> str:
        return f"#{self.localpart}:{self.server_name}"


# --- server names -----------------------------------------------------------


def parse_server_name(s: str) -> ServerName:
    """Split and check ``hostname [":" port]`` (IPv4, ``[IPv6]`` or DNS name)."""
    if not isinstance(s, str) or not s:
        raise InvalidIdentifier("server name is empty")
    return _parse_server_name(s)


# a send_join answer names the same few servers thousands of times
@functools.lru_cache(maxsize=4096)
def _parse_server_name(s: str) -> ServerName:
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise InvalidIdentifier(f"server name {s!r}: IPv6 literal has no closing ']'")
        host, rest = s[: end + 1], s[end + 1 :]
        _check_ipv6(host[1:-1], s)
        if rest and not rest.startswith(":"):
            raise InvalidIdentifier(f"server name {s!r}: unexpected text after IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        host, sep, after = s.partition(":")
        port_text = after if sep else None
        _check_hostname(host, s)
    port = None
    if port_text is not None:
        if not _PORT_RE.fullmatch(port_text):
            raise InvalidIdentifier(f"server name {s!r}: port must be 1 to 5 digits")
        port = int(port_text)
    return ServerName(host, port)


def _check_ipv6(addr: str, whole: str) -> None:
    if not _IPV6_CHARS_RE.fullmatch(addr):
        raise InvalidIdentifier(f"server name {whole!r}: invalid IPv6 literal")
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        raise InvalidIdentifier(f"server name {whole!r}: invalid IPv6 literal") from None


def _check_hostname(host: str, whole: str) -> None:
    if not host:
        raise InvalidIdentifier(f"server name {whole!r}: hostname is empty")
    if _IPV4_RE.fullmatch(host):
        if any(int(octet) > 255 for octet in host.split(".")):
            raise InvalidIdentifier(f"server name {whole!r}: IPv4 octet above 255")
        return
    if not _DNS_NAME_RE.fullmatch(host):
        raise InvalidIdentifier(
            f"server name {whole!r}: hostname may only contain A-Z, a-z, 0-9, '-' and '.'"
            " (at most 255 characters)"
        )


def validate_server_name(s: str) -> None:
    """Raise ``InvalidIdentifier`` unless ``s`` is a valid server name."""
    parse_server_name(s)


def is_valid_server_name(s: str) -> bool:
    try:
        parse_server_name(s)
    except InvalidIdentifier:
        return False
    return True


# --- shared helpers ----------------------------------------------------------


def _check_length(s: str, what: str) -> None:
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdentifier(f"{what} is not valid UTF-8 (lone surrogate)") from None
    if n > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(f"{what} is {n} bytes long; the limit is {MAX_IDENTIFIER_BYTES}")


def _split_sigil(s: str, sigil: str, what: str) -> tuple[str, str]:
    if not isinstance(s, str):
        raise InvalidIdentifier(f"{what} must be a string")
    if not s.startswith(sigil):
        raise InvalidIdentifier(f"{what} {s!r} must start with {sigil!r}")
    _check_length(s, what)
    local, sep, server = s[1:].partition(":")
    if not sep:
        raise InvalidIdentifier(f"{what} {s!r} has no ':server' part")
    if "\x00" in local:
        raise InvalidIdentifier(f"{what} {s!r} contains NUL")
    try:
        validate_server_name(server)
    except InvalidIdentifier as e:
        raise InvalidIdentifier(f"{what} {s!r}: {e}") from None
    return local, server


# --- user IDs ----------------------------------------------------------------


def parse_user_id(s: str, *, strict: bool = False) -> UserID:
    """Parse ``@localpart:server``.

    By default the historical grammar is accepted (any code points except
    ``:`` and NUL, even an empty localpart), as servers MUST for events.
    ``strict=True`` requires the current grammar ``[a-z0-9._=\\-/+]+``.
    """
    local, server = _split_sigil(s, "@", "user ID")
    if strict and not _LOCALPART_RE.fullmatch(local):
        raise InvalidIdentifier(
            f"user ID {s!r}: localpart must be non-empty and use only a-z, 0-9, '.', '_', "
            "'=', '-', '/', '+'"
        )
    return UserID(local, server)


def is_valid_user_id(s: str, *, strict: bool = False) -> bool:
    try:
        parse_user_id(s, strict=strict)
    except InvalidIdentifier:
        return False
    return True


def is_compliant_user_id(s: str) -> bool:
    """A user ID whose localpart is non-empty and within U+0021..U+007E.

    The spec calls other (historical) user IDs non-compliant: accepted in
    events, but not to be forwarded to clients outside an event context.
    """
    try:
        uid = parse_user_id(s)
    except InvalidIdentifier:
        return False
    return bool(uid.localpart) and all("\x21" <= c <= "\x7e" for c in uid.localpart)


def is_valid_localpart_for_registration(localpart: str) -> bool:
    """True if ``localpart`` fits the current user ID grammar (lowercase only)."""
    return isinstance(localpart, str) and _LOCALPART_RE.fullmatch(localpart) is not None


def validate_localpart_for_registration(localpart: str, server_name: str) -> UserID:
    """Check a localpart for a new account on ``server_name``; return the user ID."""
    if not isinstance(localpart, str) or not localpart:
        raise InvalidIdentifier("user ID localpart is empty")
    if not _LOCALPART_RE.fullmatch(localpart):
        bad = dict.fromkeys(c for c in localpart if not _LOCALPART_RE.fullmatch(c))
        raise InvalidIdentifier(
            f"user ID localpart {localpart!r} contains characters not allowed: {''.join(bad)!r}"
            " (use a-z, 0-9, '.', '_', '=', '-', '/', '+')"
        )
    return parse_user_id(f"@{localpart}:{server_name}", strict=True)


# --- room IDs ----------------------------------------------------------------


def parse_room_id(s: str, room_version: RoomVersion | None = None) -> RoomID:
    """Parse a room ID.

    With ``room_version`` the format is enforced: ``!opaque:server`` for
    server-format versions, ``!`` + 43 URL-safe base64 characters (a create
    event's reference hash, no domain) for v12. Without it, either form.
    """
    if not isinstance(s, str):
        raise InvalidIdentifier("room ID must be a string")
    if not s.startswith("!"):
        raise InvalidIdentifier(f"room ID {s!r} must start with '!'")
    want = room_version.room_id_format if room_version is not None else None
    if ":" not in s:
        if want is RoomIdFormat.SERVER:
            raise InvalidIdentifier(
                f"room ID {s!r} has no ':server' part (required in room version "
                f"{room_version.identifier if room_version else '?'})"
            )
        _check_hash_id(s, "room ID")
        return RoomID(s[1:], None)
    if want is RoomIdFormat.CREATE_EVENT_HASH:
        raise InvalidIdentifier(
            f"room ID {s!r}: room version {room_version.identifier if room_version else '?'}"
            " room IDs are '!' + the create event's hash, without a server name"
        )
    local, server = _split_sigil(s, "!", "room ID")
    return RoomID(local, server)


def _check_hash_id(s: str, what: str) -> None:
    body = s[1:]
    if not _HASH_ID_RE.fullmatch(body):
        raise InvalidIdentifier(
            f"{what} {s!r} must be {s[0]!r} followed by 43 URL-safe base64 characters"
        )
    try:
        decode_base64(body, urlsafe=True)
    except ValueError:  # pragma: no cover - the regex already guarantees this
        raise InvalidIdentifier(f"{what} {s!r} is not valid URL-safe base64") from None
    if body[-1] not in "AEIMQUYcgkosw048":
        raise InvalidIdentifier(f"{what} {s!r} is not a canonical base64 SHA-256 hash")


def is_valid_room_id(s: str, room_version: RoomVersion | None = None) -> bool:
    try:
        parse_room_id(s, room_version)
    except InvalidIdentifier:
        return False
    return True


# --- room aliases --------------------------------------------------------------


def parse_room_alias(s: str) -> RoomAlias:
    """Parse ``#localpart:server``; the localpart may hold anything but ``:``.

    NUL is refused too (PostgreSQL text cannot store it).
    """
    local, server = _split_sigil(s, "#", "room alias")
    return RoomAlias(local, server)


def is_valid_room_alias(s: str) -> bool:
    try:
        parse_room_alias(s)
    except InvalidIdentifier:
        return False
    return True


# --- event IDs -------------------------------------------------------------------


def validate_event_id(s: str, room_version: RoomVersion | None = None) -> None:
    """Check an event ID.

    With ``room_version`` (all supported versions use event format 3+), the ID
    must be ``$`` + 43 URL-safe base64 characters. Without it, any ``$``-ID
    of at most 255 bytes without NUL is accepted (historical ``$x:server``).
    """
    if not isinstance(s, str):
        raise InvalidIdentifier("event ID must be a string")
    if not s.startswith("$") or len(s) < 2:
        raise InvalidIdentifier(f"event ID {s!r} must be '$' followed by an opaque ID")
    _check_length(s, "event ID")
    if "\x00" in s:
        raise InvalidIdentifier(f"event ID {s!r} contains NUL")
    if room_version is not None and room_version.event_format >= 3:
        _check_hash_id(s, "event ID")


def is_valid_event_id(s: str, room_version: RoomVersion | None = None) -> bool:
    if type(s) is not str:
        return False
    return _is_valid_event_id(s, room_version is not None and room_version.event_format >= 3)


# (the auth events of a big room's members are the same few ids)
@functools.lru_cache(maxsize=8192)
def _is_valid_event_id(s: str, hash_format: bool) -> bool:
    try:
        validate_event_id(s)
        if hash_format:
            _check_hash_id(s, "event ID")
    except InvalidIdentifier:
        return False
    return True

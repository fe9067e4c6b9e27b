"""Identifier grammar (spec appendix "Identifier Grammar"), table-driven."""

from __future__ import annotations

import pytest

from coffeechat_home.protocol.identifiers import (
    InvalidIdentifier,
    RoomAlias,
    RoomID,
    ServerName,
    UserID,
    is_compliant_user_id,
    is_valid_event_id,
    is_valid_localpart_for_registration,
    is_valid_room_alias,
    is_valid_room_id,
    is_valid_server_name,
    is_valid_user_id,
    parse_room_alias,
    parse_room_id,
    parse_server_name,
    parse_user_id,
    validate_event_id,
    validate_localpart_for_registration,
    validate_server_name,
)
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12

HASH43 = "Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"  # the spec's pdu_v12 example

# --- server names -----------------------------------------------------------------

VALID_SERVER_NAMES = [
    ("matrix.org", ServerName("matrix.org", None)),
    ("matrix.org:8888", ServerName("matrix.org", 8888)),
    ("1.2.3.4", ServerName("1.2.3.4", None)),
    ("1.2.3.4:1234", ServerName("1.2.3.4", 1234)),
    ("[1234:5678::abcd]", ServerName("[1234:5678::abcd]", None)),
    ("[1234:5678::abcd]:5678", ServerName("[1234:5678::abcd]", 5678)),
    ("[::1]", ServerName("[::1]", None)),
    ("[::ffff:1.2.3.4]:80", ServerName("[::ffff:1.2.3.4]", 80)),
    ("localhost", ServerName("localhost", None)),
    ("MATRIX.ORG", ServerName("MATRIX.ORG", None)),
    ("a-b.example", ServerName("a-b.example", None)),
    ("x" * 255, ServerName("x" * 255, None)),
]

INVALID_SERVER_NAMES = [
    ("", "empty"),
    (":8448", "hostname is empty"),
    ("example.org:", "port must be 1 to 5 digits"),
    ("example.org:123456", "port must be 1 to 5 digits"),
    ("example.org:80a", "port must be 1 to 5 digits"),
    ("example.org:80:90", "port must be 1 to 5 digits"),
    ("exa_mple.org", "hostname may only contain"),
    ("exämple.org", "hostname may only contain"),
    ("example.org/path", "hostname may only contain"),
    ("x" * 256, "hostname may only contain"),
    ("256.1.1.1", "IPv4 octet above 255"),
    ("[1234:5678::abcd", "no closing"),
    ("[1234:5678::abcd]x", "unexpected text after IPv6"),
    ("[not:an:ipv6]", "invalid IPv6 literal"),
    ("[1:2:3:4:5:6:7:8:9]", "invalid IPv6 literal"),
    ("[fe80::1%eth0]", "invalid IPv6 literal"),
    ("[]", "invalid IPv6 literal"),
    ("1234:5678::abcd", "port must be 1 to 5 digits"),
]


@pytest.mark.parametrize("name, parsed", VALID_SERVER_NAMES, ids=[n[:30] for n, _ in VALID_SERVER_NAMES])
def test_valid_server_names(name: str, parsed: ServerName) -> None:
    assert parse_server_name(name) == parsed
    assert str(parsed) == name
    assert is_valid_server_name(name)
    validate_server_name(name)


@pytest.mark.parametrize("name, message", INVALID_SERVER_NAMES, ids=[n[:30] or "empty" for n, _ in INVALID_SERVER_NAMES])
def test_invalid_server_names(name: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        validate_server_name(name)
    assert not is_valid_server_name(name)


# --- user IDs ---------------------------------------------------------------------

VALID_USER_IDS = [
    ("@alice:example.org", UserID("alice", "example.org"), True),
    ("@a.b_c=d-e/f+g:example.org:8448", UserID("a.b_c=d-e/f+g", "example.org:8448"), True),
    ("@0:[::1]:8448", UserID("0", "[::1]:8448"), True),
    # historical localparts: accepted over federation, not strictly valid
    ("@Alice:example.org", UserID("Alice", "example.org"), False),
    ("@:example.org", UserID("", "example.org"), False),
    ("@bob smith:example.org", UserID("bob smith", "example.org"), False),
    ("@日本:example.org", UserID("日本", "example.org"), False),
    ("@a*b:example.org", UserID("a*b", "example.org"), False),
]

INVALID_USER_IDS = [
    ("alice:example.org", "must start with '@'"),
    ("#alice:example.org", "must start with '@'"),
    ("@alice", "no ':server' part"),
    ("@alice:", "server name is empty"),
    ("@alice:exa mple.org", "hostname may only contain"),
    ("@al\x00ice:example.org", "contains NUL"),
    ("@" + "a" * 243 + ":example.org", "256 bytes long; the limit is 255"),
    ("@al\ud800:example.org", "not valid UTF-8"),
]


@pytest.mark.parametrize("user_id, parsed, strict_ok", VALID_USER_IDS, ids=[u for u, _, _ in VALID_USER_IDS])
def test_valid_user_ids(user_id: str, parsed: UserID, strict_ok: bool) -> None:
    assert parse_user_id(user_id) == parsed
    assert str(parsed) == user_id
    assert is_valid_user_id(user_id)
    assert is_valid_user_id(user_id, strict=True) is strict_ok
    if not strict_ok:
        with pytest.raises(InvalidIdentifier, match="localpart must be non-empty and use only"):
            parse_user_id(user_id, strict=True)


@pytest.mark.parametrize("user_id, message", INVALID_USER_IDS, ids=[u[:30] for u, _ in INVALID_USER_IDS])
def test_invalid_user_ids(user_id: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        parse_user_id(user_id)
    assert not is_valid_user_id(user_id)


def test_user_id_length_limit_is_in_bytes() -> None:
    ok = "@" + "a" * 242 + ":example.org"  # exactly 255 bytes
    assert len(ok.encode()) == 255 and is_valid_user_id(ok, strict=True)
    # 3-byte characters: 85 of them make 255 bytes in the localpart alone.
    assert not is_valid_user_id("@" + "日" * 82 + ":example.org")


def test_user_id_splits_at_first_colon() -> None:
    assert parse_user_id("@u:[2001:db8::1]:8448") == UserID("u", "[2001:db8::1]:8448")


@pytest.mark.parametrize(
    "user_id, compliant",
    [("@alice:example.org", True), ("@Alice!:example.org", True), ("@:example.org", False),
     ("@bob smith:example.org", False), ("@é:example.org", False), ("bad", False)],
)
def test_compliant_user_ids(user_id: str, compliant: bool) -> None:
    assert is_compliant_user_id(user_id) is compliant


@pytest.mark.parametrize(
    "localpart, ok",
    [("alice", True), ("a.b_c=d-e/f+g", True), ("0123", True), ("", False), ("Alice", False),
     ("al ice", False), ("al:ice", False), ("ali*ce", False), ("élise", False), ("a#b", False)],
)
def test_localpart_for_registration(localpart: str, ok: bool) -> None:
    assert is_valid_localpart_for_registration(localpart) is ok
    if ok:
        assert validate_localpart_for_registration(localpart, "example.org") == UserID(localpart, "example.org")
    else:
        with pytest.raises(InvalidIdentifier):
            validate_localpart_for_registration(localpart, "example.org")


def test_registration_messages() -> None:
    with pytest.raises(InvalidIdentifier, match="localpart is empty"):
        validate_localpart_for_registration("", "example.org")
    with pytest.raises(InvalidIdentifier, match=r"not allowed: 'A\*'"):
        validate_localpart_for_registration("A*b", "example.org")
    with pytest.raises(InvalidIdentifier, match="the limit is 255"):
        validate_localpart_for_registration("a" * 250, "example.org")
    with pytest.raises(InvalidIdentifier, match="hostname may only contain"):
        validate_localpart_for_registration("alice", "bad server")


# --- room IDs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "room_id, version, parsed",
    [
        ("!abc:example.org", None, RoomID("abc", "example.org")),
        ("!abc:example.org", ROOM_V10, RoomID("abc", "example.org")),
        ("!abc:example.org:8448", ROOM_V11, RoomID("abc", "example.org:8448")),
        ("!AbC日:example.org", ROOM_V11, RoomID("AbC日", "example.org")),
        ("!" + HASH43, ROOM_V12, RoomID(HASH43, None)),
        ("!" + HASH43, None, RoomID(HASH43, None)),
    ],
)
def test_valid_room_ids(room_id: str, version: object, parsed: RoomID) -> None:
    assert parse_room_id(room_id, version) == parsed  # type: ignore[arg-type]
    assert str(parsed) == room_id
    assert is_valid_room_id(room_id, version)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "room_id, version, message",
    [
        ("abc:example.org", None, "must start with '!'"),
        ("!abc:example.org", ROOM_V12, "without a server name"),
        ("!" + HASH43, ROOM_V10, "no ':server' part"),
        ("!" + HASH43, ROOM_V11, "no ':server' part"),
        ("!abc", None, "43 URL-safe base64"),
        ("!" + HASH43[:-1], ROOM_V12, "43 URL-safe base64"),
        ("!" + HASH43 + "A", ROOM_V12, "43 URL-safe base64"),
        ("!" + HASH43.replace("-", "+"), ROOM_V12, "43 URL-safe base64"),
        ("!" + HASH43[:-1] + "R", ROOM_V12, "not a canonical base64"),
        ("!a\x00b:example.org", None, "contains NUL"),
        ("!abc:bad_server", None, "hostname may only contain"),
        ("!" + "a" * 250 + ":example.org", None, "the limit is 255"),
    ],
)
def test_invalid_room_ids(room_id: str, version: object, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        parse_room_id(room_id, version)  # type: ignore[arg-type]
    assert not is_valid_room_id(room_id, version)  # type: ignore[arg-type]


# --- room aliases -------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias, parsed",
    [
        ("#room:example.org", RoomAlias("room", "example.org")),
        ("#Räum mit Leerzeichen:example.org:8448", RoomAlias("Räum mit Leerzeichen", "example.org:8448")),
        ("#:example.org", RoomAlias("", "example.org")),
    ],
)
def test_valid_room_aliases(alias: str, parsed: RoomAlias) -> None:
    assert parse_room_alias(alias) == parsed
    assert str(parsed) == alias
    assert is_valid_room_alias(alias)


@pytest.mark.parametrize(
    "alias, message",
    [
        ("room:example.org", "must start with '#'"),
        ("!room:example.org", "must start with '#'"),
        ("#room", "no ':server' part"),
        ("#room:", "server name is empty"),
        ("#ro\x00om:example.org", "contains NUL"),
        ("#" + "r" * 250 + ":example.org", "the limit is 255"),
    ],
)
def test_invalid_room_aliases(alias: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        parse_room_alias(alias)
    assert not is_valid_room_alias(alias)


# --- event IDs ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11, ROOM_V12])
def test_event_ids_for_room_versions(version: object) -> None:
    assert is_valid_event_id("$" + HASH43, version)  # type: ignore[arg-type]
    for bad, message in [
        ("$0:domain", "43 URL-safe base64"),
        ("$" + HASH43[:-1], "43 URL-safe base64"),
        ("$" + HASH43.replace("-", "/"), "43 URL-safe base64"),
        ("!" + HASH43, "must be '\\$' followed"),
        ("$", "must be '\\$' followed"),
    ]:
        with pytest.raises(InvalidIdentifier, match=message):
            validate_event_id(bad, version)  # type: ignore[arg-type]


def test_event_ids_without_room_version_are_lenient() -> None:
    assert is_valid_event_id("$0:domain")
    assert is_valid_event_id("$" + HASH43)
    assert not is_valid_event_id("$")
    assert not is_valid_event_id("$a\x00")
    assert not is_valid_event_id("$" + "a" * 255)
    assert not is_valid_event_id(123)  # type: ignore[arg-type]

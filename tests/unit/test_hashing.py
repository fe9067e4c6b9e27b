"""Content hashes, reference hashes and event IDs."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest

from coffeechat_home.protocol.canonical import decode_base64, encode_base64, encode_canonical_json
from coffeechat_home.protocol.events import Event
from coffeechat_home.protocol.hashing import (
    add_content_hash,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    event_from_pdu,
)
from coffeechat_home.protocol.redaction import redact
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12


@pytest.mark.needs_spec
def test_reference_hash_vectors(spec_dir: Path, reference_hash_vector: dict[str, Any]) -> None:
    v = reference_hash_vector
    pdu = v["input"]
    old, new = v["expected"]["room_v3_to_v10"], v["expected"]["room_v11_v12"]
    assert encode_base64(compute_reference_hash(pdu, ROOM_V10)) == old["reference_hash_unpadded_base64"]
    assert compute_event_id(pdu, ROOM_V10) == old["event_id_v4_to_v10_urlsafe_base64"]
    for rv in (ROOM_V11, ROOM_V12):
        assert encode_base64(compute_reference_hash(pdu, rv)) == new["reference_hash_unpadded_base64"]
        assert compute_event_id(pdu, rv) == new["event_id_urlsafe_base64"]
    # The v11 id exercises the URL-safe alphabet.
    assert "_" in new["event_id_urlsafe_base64"] and "-" in new["event_id_urlsafe_base64"]


@pytest.mark.needs_spec
def test_content_hash_of_event_signing_vectors(
    spec_dir: Path, event_signing_vector: dict[str, Any]
) -> None:
    v = event_signing_vector
    expected = v["expected"]["hashes"]["sha256"]
    assert encode_base64(compute_content_hash(v["input"])) == expected
    assert add_content_hash(v["input"])["hashes"] == {"sha256": expected}
    assert check_content_hash(v["expected"])
    assert not check_content_hash(v["input"])  # its hashes are empty


def _pdu() -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": "@a:x",
        "room_id": "!r:x",
        "content": {"body": "héllo", "msgtype": "m.text"},
        "depth": 5,
        "origin_server_ts": 1700000000000,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
    }


def test_content_hash_definition() -> None:
    pdu = _pdu()
    expected = hashlib.sha256(encode_canonical_json(pdu)).digest()
    assert compute_content_hash(pdu) == expected
    # unsigned, signatures and hashes are outside the hash
    noisy = {**pdu, "unsigned": {"age": 1}, "signatures": {"x": {}}, "hashes": {"sha256": "zzz"}}
    assert compute_content_hash(noisy) == expected


def test_check_content_hash_detects_tampering() -> None:
    pdu = add_content_hash(_pdu())
    assert check_content_hash(pdu)
    assert "hashes" not in _pdu()  # add_content_hash copies
    tampered = copy.deepcopy(pdu)
    tampered["content"]["body"] = "evil"
    assert not check_content_hash(tampered)
    for bad_hashes in (None, {}, {"sha256": 5}, {"sha256": "!!!"}, {"sha256": encode_base64(b"x" * 32)}):
        assert not check_content_hash({**pdu, "hashes": bad_hashes})
    # Padded base64 is accepted on decode.
    padded = pdu["hashes"]["sha256"] + "="
    assert check_content_hash({**pdu, "hashes": {"sha256": padded}})


def test_reference_hash_definition_and_event_id_format() -> None:
    pdu = add_content_hash(_pdu())
    for rv in (ROOM_V10, ROOM_V11, ROOM_V12):
        payload = {k: v for k, v in redact(pdu, rv).items() if k not in ("signatures", "unsigned")}
        ref = hashlib.sha256(encode_canonical_json(payload)).digest()
        assert compute_reference_hash(pdu, rv) == ref
        event_id = compute_event_id(pdu, rv)
        assert event_id.startswith("$") and len(event_id) == 44
        assert decode_base64(event_id[1:], urlsafe=True) == ref
        assert "+" not in event_id and "/" not in event_id and "=" not in event_id


def test_event_id_ignores_what_redaction_drops_but_covers_the_hash() -> None:
    pdu = add_content_hash(_pdu())
    eid = compute_event_id(pdu, ROOM_V11)
    signed = {**pdu, "signatures": {"x": {"ed25519:a": "sig"}}, "unsigned": {"age": 3}, "age_ts": 9}
    assert compute_event_id(signed, ROOM_V11) == eid
    # content is redacted away, but the content hash changes, so the id does.
    edited = add_content_hash({**_pdu(), "content": {"body": "other"}})
    assert compute_event_id(edited, ROOM_V11) != eid
    # `origin` matters before v11 only.
    with_origin = {**pdu, "origin": "x"}
    assert compute_event_id(with_origin, ROOM_V11) == eid
    assert compute_event_id(with_origin, ROOM_V10) != compute_event_id(pdu, ROOM_V10)


def test_event_from_pdu() -> None:
    pdu = add_content_hash(_pdu())
    ev = event_from_pdu(pdu, ROOM_V11)
    assert isinstance(ev, Event)
    assert ev.event_id == compute_event_id(pdu, ROOM_V11)
    assert (ev.room_id, ev.type, ev.sender, ev.depth) == ("!r:x", "m.room.message", "@a:x", 5)


def test_v12_create_event_room_id_from_event_id() -> None:
    create = add_content_hash({
        "type": "m.room.create", "state_key": "", "sender": "@a:x",
        "content": {"room_version": "12"}, "depth": 1, "origin_server_ts": 1,
        "prev_events": [], "auth_events": [],
    })
    ev = event_from_pdu(create, ROOM_V12)
    assert ev.room_id == "!" + ev.event_id[1:]

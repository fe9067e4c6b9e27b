"""Signing keys, JSON signatures and event signatures."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import signedjson.sign

from coffeechat_home.protocol.canonical import encode_canonical_json
from coffeechat_home.protocol.redaction import redact
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from coffeechat_home.protocol.signing import (
    InvalidSigningKey,
    SignatureError,
    SigningKey,
    decode_verify_key,
    format_signing_key,
    generate_signing_key,
    get_verify_key,
    hash_and_sign_event,
    key_id_of,
    parse_signing_key,
    parse_signing_keys,
    sign_event,
    sign_json,
    signing_key_from_seed,
    verify_event_signature,
    verify_json_signature,
    verify_key_base64,
)

SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


@pytest.fixture
def spec_key(test_vectors: dict[str, Any]) -> SigningKey:
    sk = test_vectors["signing_key"]
    alg, version = sk["key_id"].split(":")
    assert alg == "ed25519"
    return signing_key_from_seed(sk["seed_unpadded_base64"], version)


def _room_version_for(vector: dict[str, Any]) -> list[RoomVersion]:
    rules = vector["redaction_rules"]
    if rules.startswith("room versions 1-10"):
        return [ROOM_V10]
    assert rules.startswith("room versions 11-12"), rules
    return [ROOM_V11, ROOM_V12]


@pytest.mark.needs_spec
def test_spec_key_derivation(test_vectors: dict[str, Any], spec_key: SigningKey) -> None:
    sk = test_vectors["signing_key"]
    assert key_id_of(spec_key) == sk["key_id"]
    assert verify_key_base64(get_verify_key(spec_key)) == sk["derived_public_key_unpadded_base64"]


@pytest.mark.needs_spec
def test_json_signing_vectors(
    spec_dir: Path, json_signing_vector: dict[str, Any], test_vectors: dict[str, Any], spec_key: SigningKey
) -> None:
    v = json_signing_vector
    name = test_vectors["signing_key"]["server_name"]
    before = copy.deepcopy(v["input"])
    assert sign_json(v["input"], name, spec_key) == v["expected"]
    assert v["input"] == before
    verify_json_signature(v["expected"], name, get_verify_key(spec_key))
    # The reference library agrees.
    signedjson.sign.verify_signed_json(v["expected"], name, get_verify_key(spec_key))


@pytest.mark.needs_spec
def test_event_signing_vectors(
    spec_dir: Path, event_signing_vector: dict[str, Any], test_vectors: dict[str, Any], spec_key: SigningKey
) -> None:
    v = event_signing_vector
    name = test_vectors["signing_key"]["server_name"]
    vk = get_verify_key(spec_key)
    for rv in _room_version_for(v):
        assert hash_and_sign_event(v["input"], name, spec_key, rv) == v["expected"]
        verify_event_signature(v["expected"], name, vk, rv)
        if "expected_redacted_signed_payload" in v:
            payload = {k: x for k, x in redact(v["expected"], rv).items() if k not in ("signatures", "unsigned")}
            assert encode_canonical_json(payload) == encode_canonical_json(v["expected_redacted_signed_payload"])
    # Under the other family of rules the same signature must not verify.
    other = ROOM_V11 if _room_version_for(v) == [ROOM_V10] else ROOM_V10
    with pytest.raises(SignatureError, match="bad signature"):
        verify_event_signature(v["expected"], name, vk, other)


@pytest.mark.needs_spec
def test_signing_details_example_is_not_a_valid_signature(
    spec_dir: Path, signed_object_check_vector: dict[str, Any], spec_key: SigningKey
) -> None:
    # Illustration only (see its verification_note): it must NOT verify.
    v = signed_object_check_vector
    assert v["verified"] is False
    ((key_id, key_b64),) = v["claimed_verify_key"].items()
    name = v["signed_object"]["name"]
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature(v["signed_object"], name, decode_verify_key(key_id, key_b64))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature(v["signed_object"], name, get_verify_key(spec_key), key_id=key_id)


# --- keys -------------------------------------------------------------------------


def test_key_file_round_trip() -> None:
    key = generate_signing_key("a_Xy1")
    line = format_signing_key(key)
    assert line.startswith("ed25519 a_Xy1 ") and "\n" not in line and len(line.split()) == 3
    again = parse_signing_key(line + "\n")
    assert key_id_of(again) == "ed25519:a_Xy1"
    assert again.encode() == key.encode()
    other = format_signing_key(generate_signing_key("b"))
    two = parse_signing_keys(f"# comment\n\n{line}\n{other}\n")
    assert [key_id_of(k) for k in two] == ["ed25519:a_Xy1", "ed25519:b"]


def test_spec_seed_without_fixture() -> None:
    key = parse_signing_key(f"ed25519 1 {SPEC_SEED}\n")
    assert verify_key_base64(get_verify_key(key)) == "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no signing key found"),
        ("ed25519 1\n", "expected 'ed25519 <key_version> <seed>'"),
        (f"curve25519 1 {SPEC_SEED}\n", "unsupported algorithm"),
        ("ed25519 1 not!base64\n", "bad ed25519 seed"),
        ("ed25519 1 Zm9v\n", "bad ed25519 seed"),
    ],
)
def test_bad_key_files(text: str, message: str) -> None:
    with pytest.raises(InvalidSigningKey, match=message):
        parse_signing_key(text)


def test_decode_verify_key_errors() -> None:
    with pytest.raises(InvalidSigningKey, match="unsupported key algorithm"):
        decode_verify_key("curve25519:1", "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI")
    with pytest.raises(InvalidSigningKey, match="bad verify key"):
        decode_verify_key("ed25519:1", "Zm9v")


# --- JSON signatures ------------------------------------------------------------------


def test_sign_and_verify_json_failures() -> None:
    key, other = generate_signing_key("k"), generate_signing_key("k")
    obj = {"a": 1, "unsigned": {"x": 1}, "signatures": {"other.org": {"ed25519:z": "sig"}}}
    signed = sign_json(obj, "example.org", key)
    assert signed["signatures"]["other.org"] == {"ed25519:z": "sig"}  # kept
    assert signed["unsigned"] == {"x": 1}
    assert "example.org" not in obj["signatures"]  # input not mutated
    vk = get_verify_key(key)
    verify_json_signature(signed, "example.org", vk)
    # unsigned is outside the signature
    verify_json_signature({**signed, "unsigned": {"changed": True}}, "example.org", vk)
    with pytest.raises(SignatureError, match="no signatures from nobody.org"):
        verify_json_signature(signed, "nobody.org", vk)
    with pytest.raises(SignatureError, match="no signature from example.org with key ed25519:q"):
        verify_json_signature(signed, "example.org", vk, key_id="ed25519:q")
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature(signed, "example.org", get_verify_key(other))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signature({**signed, "a": 2}, "example.org", vk)
    for bad in ("!!!", 5):
        tampered = {**signed, "signatures": {"example.org": {"ed25519:k": bad}}}
        with pytest.raises(SignatureError):
            verify_json_signature(tampered, "example.org", vk)
    with pytest.raises(SignatureError):
        verify_json_signature({"a": 1}, "example.org", vk)


def test_second_signature_is_added() -> None:
    k1, k2 = generate_signing_key("one"), generate_signing_key("two")
    signed = sign_json(sign_json({"a": 1}, "s.org", k1), "s.org", k2)
    assert set(signed["signatures"]["s.org"]) == {"ed25519:one", "ed25519:two"}
    verify_json_signature(signed, "s.org", get_verify_key(k1))
    verify_json_signature(signed, "s.org", get_verify_key(k2))


def test_sign_json_rejects_non_canonical_values() -> None:
    from coffeechat_home.protocol.canonical import CanonicalJSONError

    with pytest.raises(CanonicalJSONError):
        sign_json({"a": 1.5}, "s.org", generate_signing_key("k"))


# --- event signatures ------------------------------------------------------------------


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11, ROOM_V12])
def test_event_signature_survives_redaction(rv: RoomVersion) -> None:
    key = generate_signing_key("k")
    pdu = {"type": "m.room.message", "sender": "@a:s.org", "room_id": "!r:s.org",
           "content": {"body": "hi"}, "depth": 1, "origin_server_ts": 5,
           "prev_events": [], "auth_events": []}
    signed = hash_and_sign_event(pdu, "s.org", key, rv)
    vk = get_verify_key(key)
    verify_event_signature(signed, "s.org", vk, rv)
    # Redacted copies still verify; changing content does too (it is outside the
    # signature, covered by the content hash); changing the hash does not.
    verify_event_signature(redact(signed, rv), "s.org", vk, rv)
    verify_event_signature({**signed, "content": {"body": "edited"}}, "s.org", vk, rv)
    with pytest.raises(SignatureError):
        verify_event_signature({**signed, "hashes": {"sha256": "x"}}, "s.org", vk, rv)
    with pytest.raises(SignatureError):
        verify_event_signature({**signed, "depth": 2}, "s.org", vk, rv)
    # A second server's signature (e.g. on an invite) keeps the first.
    cosigned = sign_event(signed, "other.org", generate_signing_key("o"), rv)
    assert set(cosigned["signatures"]) == {"s.org", "other.org"}
    verify_event_signature(cosigned, "s.org", vk, rv)


def test_keys_agree_with_signedjson() -> None:
    """Our keys are nacl keys named as signedjson names its own (the
    reference the tests sign with): the same seed gives the same key,
    encodings and key id, and each side verifies the other's signatures."""
    import signedjson.key

    ours = generate_signing_key("k1")
    seed = format_signing_key(ours).split()[2]
    theirs = signedjson.key.decode_signing_key_base64("ed25519", "k1", seed)
    assert (ours.alg, ours.version, ours.encode()) == (theirs.alg, theirs.version, theirs.encode())
    assert signing_key_from_seed(seed, "k1").encode() == theirs.encode()
    vk = get_verify_key(ours)
    assert (vk.alg, vk.version) == ("ed25519", "k1")
    assert verify_key_base64(vk) == signedjson.key.encode_verify_key_base64(signedjson.key.get_verify_key(theirs))
    decoded = decode_verify_key("ed25519:k1", verify_key_base64(vk))
    assert (decoded.alg, decoded.version, decoded.encode()) == ("ed25519", "k1", vk.encode())
    signed = sign_json({"a": 1}, "hs.example", ours)
    signedjson.sign.verify_signed_json(signed, "hs.example", signedjson.key.get_verify_key(theirs))
    theirs_signed = signedjson.sign.sign_json({"b": 2}, "hs.example", theirs)
    verify_json_signature(theirs_signed, "hs.example", decoded)


def test_the_server_does_not_load_importlib_metadata() -> None:
    """What the server imports leaves importlib.metadata (and the email,
    csv and zip modules it loads, about 0.5 MB resident) out: signedjson's
    package imports it to read its own version, so protocol/signing.py
    names its keys itself."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import coffeechat_home.cli, coffeechat_home.wiring, coffeechat_home.app, coffeechat_home.routes\n"
        "print(sorted(m for m in ('importlib.metadata', 'signedjson') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_seed_in_either_alphabet() -> None:
    """A key file's seed reads in the standard or the URL-safe base64
    alphabet, padded or not, as signedjson (which Synapse uses) reads it."""
    import base64

    import signedjson.key

    seed = bytes(range(200, 232))  # encodes with '+' and '/' in the standard alphabet
    std = base64.b64encode(seed).decode()
    assert "+" in std and "/" in std
    for text in (std, std.rstrip("="), base64.urlsafe_b64encode(seed).decode(),
                 base64.urlsafe_b64encode(seed).decode().rstrip("=")):
        assert signing_key_from_seed(text, "k").encode() == seed, text
        assert signedjson.key.decode_signing_key_base64("ed25519", "k", text).encode() == seed, text
    with pytest.raises(InvalidSigningKey):
        signing_key_from_seed(std.replace("+", "-"), "k")  # both alphabets at once

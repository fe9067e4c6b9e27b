"""Pure checks on E2EE key objects (protocol/e2e_keys.py) and the key
backup replacement rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key
from signedjson.sign import sign_json

from coffeechat_home.protocol.e2e_keys import (
    KeyObjectError,
    check_cross_signing_key,
    check_device_keys,
    check_one_time_keys,
    split_key_id,
    verify_signed_by,
)
from coffeechat_home.protocol.errors import SignatureError
from coffeechat_home.services.e2e.key_backup import is_better
from coffeechat_home.storage.key_backup import RoomKey

USER = "@alice:example.org"
DEVICE = "DEVICEID"


def _device_keys() -> dict[str, Any]:
    key = generate_signing_key(DEVICE)
    obj = {"user_id": USER, "device_id": DEVICE, "algorithms": ["m.megolm.v1.aes-sha2"],
           "keys": {f"ed25519:{DEVICE}": encode_verify_key_base64(key.verify_key), f"curve25519:{DEVICE}": "c"}}
    return sign_json(obj, USER, key)


def test_valid_device_keys() -> None:
    check_device_keys(_device_keys(), USER, DEVICE)
    with_unsigned = {**_device_keys(), "unsigned": {"device_display_name": "x"}}
    check_device_keys(with_unsigned, USER, DEVICE)


@pytest.mark.parametrize("change", [
    lambda k: k.update(user_id="@bob:example.org"),
    lambda k: k.update(device_id="OTHER"),
    lambda k: k.update(algorithms="x"),
    lambda k: k.update(keys={}),
    lambda k: k["keys"].pop(f"ed25519:{DEVICE}"),
    lambda k: k.update(signatures="x"),
    lambda k: k.update(extra=1.5),
])
def test_malformed_device_keys(change: Any) -> None:
    keys = copy.deepcopy(_device_keys())
    change(keys)
    with pytest.raises((KeyObjectError, SignatureError)):
        check_device_keys(keys, USER, DEVICE)


def test_tampered_device_keys_fail_the_signature() -> None:
    keys = _device_keys()
    keys["algorithms"] = ["other"]
    with pytest.raises(SignatureError):
        check_device_keys(keys, USER, DEVICE)
    keys = _device_keys()
    del keys["signatures"]
    with pytest.raises(SignatureError):
        check_device_keys(keys, USER, DEVICE)


def test_key_ids() -> None:
    assert split_key_id("signed_curve25519:AAAA") == ("signed_curve25519", "AAAA")
    for bad in ["", "nocolon", ":x", "x:", 5, "a:" + "x" * 300]:
        with pytest.raises(KeyObjectError):
            split_key_id(bad)


def test_one_time_keys() -> None:
    got = check_one_time_keys({"curve25519:A": "k", "signed_curve25519:B": {"key": "k", "signatures": {}}}, "otk")
    assert got == {"curve25519:A": ("curve25519", "k"), "signed_curve25519:B": ("signed_curve25519",
                                                                                  {"key": "k", "signatures": {}})}
    for bad in [{"x": "k"}, {"a:b": 1}, {"a:b": {"key": 1}}, {"a:b": {"key": "k", "fallback": "yes"}}, []]:
        with pytest.raises(KeyObjectError):
            check_one_time_keys(bad, "otk")


def test_cross_signing_key_signed_by_master() -> None:
    master = generate_signing_key("m")
    public = encode_verify_key_base64(master.verify_key)
    master.version = public
    ssk_key = generate_signing_key("s")
    ssk_public = encode_verify_key_base64(ssk_key.verify_key)
    ssk = {"user_id": USER, "usage": ["self_signing"], "keys": {f"ed25519:{ssk_public}": ssk_public}}
    assert check_cross_signing_key(ssk, USER, "self_signing") == (f"ed25519:{ssk_public}", ssk_public)
    signed = sign_json(dict(ssk), USER, master)
    verify_signed_by(signed, USER, f"ed25519:{public}", public)
    with pytest.raises(SignatureError):
        verify_signed_by(ssk, USER, f"ed25519:{public}", public)
    with pytest.raises(KeyObjectError):
        check_cross_signing_key({**ssk, "usage": ["master"]}, USER, "self_signing")
    with pytest.raises(KeyObjectError):
        check_cross_signing_key({**ssk, "keys": {"ed25519:abc": ssk_public}}, USER, "self_signing")


def _rk(first: int, forwarded: int, verified: bool) -> RoomKey:
    return RoomKey("!r:x", "s", first, forwarded, verified, {})


@pytest.mark.parametrize("stored,new,replace", [
    (_rk(5, 2, False), _rk(5, 2, True), True),
    (_rk(0, 0, True), _rk(0, 0, False), False),
    (_rk(5, 2, False), _rk(4, 9, False), True),
    (_rk(5, 2, False), _rk(6, 0, False), False),
    (_rk(5, 2, False), _rk(5, 1, False), True),
    (_rk(5, 2, False), _rk(5, 2, False), False),
])
def test_better_backup_key(stored: RoomKey, new: RoomKey, replace: bool) -> None:
    assert is_better(stored, new) is replace

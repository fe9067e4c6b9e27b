"""Real key material for E2EE tests: ed25519 device and cross-signing keys
(PyNaCl through signedjson) and correctly signed key objects."""

from __future__ import annotations

import base64
import copy
import itertools
import os
from typing import Any

from signedjson.key import encode_verify_key_base64, generate_signing_key
from signedjson.sign import sign_json

from ..helpers import ApiClient

_ids = itertools.count()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


class CrossSigningKey:
    def __init__(self, user_id: str, usage: str) -> None:
        self.user_id = user_id
        self.usage = usage
        self.key = generate_signing_key("x")
        self.public = encode_verify_key_base64(self.key.verify_key)
        self.key.version = self.public
        self.key_id = f"ed25519:{self.public}"

    def unsigned(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "usage": [self.usage], "keys": {self.key_id: self.public}}

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(copy.deepcopy(obj), self.user_id, self.key)


class DeviceKeys:
    """A device's identity keys; ``api`` is the logged-in client of that device."""

    def __init__(self, api: ApiClient) -> None:
        assert api.user_id and api.device_id
        self.api = api
        self.user_id = api.user_id
        self.device_id = api.device_id
        self.key = generate_signing_key(self.device_id)
        self.ed25519 = encode_verify_key_base64(self.key.verify_key)
        self.curve25519 = b64(os.urandom(32))

    def device_keys(self) -> dict[str, Any]:
        obj = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{self.device_id}": self.ed25519, f"curve25519:{self.device_id}": self.curve25519},
        }
        return sign_json(obj, self.user_id, self.key)

    def one_time_keys(self, n: int, *, fallback: bool = False) -> dict[str, Any]:
        out = {}
        for _ in range(n):
            key: dict[str, Any] = {"key": b64(os.urandom(32))}
            if fallback:
                key["fallback"] = True
            out[f"signed_curve25519:AAAA{next(_ids)}"] = sign_json(key, self.user_id, self.key)
        return out

    async def upload(self, **body: Any) -> Any:
        return await self.api.post("keys/upload", body)

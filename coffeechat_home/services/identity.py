"""The server's identity is fixed at first start: a start with another
server name or signing key refuses with one line saying what was stored."""

from __future__ import annotations

import time

from ..config import ConfigError
from ..storage.server_identity import ServerIdentityStore


class ServerIdentityMismatch(ConfigError):
    pass


async def check_server_identity(store: ServerIdentityStore, server_name: str, signing_key_id: str) -> None:
    stored_name, stored_key = await store.record_or_get(server_name, signing_key_id, int(time.time() * 1000))
    if stored_name != server_name:
        raise ServerIdentityMismatch(
            f"this database belongs to server_name {stored_name!r} (recorded at its first start), "
            f"not {server_name!r}: set server_name (COFFEECHAT_SERVER_NAME) back to {stored_name!r}, "
            "or use another database"
        )
    if stored_key != signing_key_id:
        raise ServerIdentityMismatch(
            f"this database was set up with signing key {stored_key!r}, but the key file holds "
            f"{signing_key_id!r}: restore that key file (signing_key_path), or use another database"
        )

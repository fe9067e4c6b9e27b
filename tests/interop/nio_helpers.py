"""Helpers for tests that drive matrix-nio as a real client."""

from __future__ import annotations

from pathlib import Path

import nio


async def nio_user(base_url: str, tmp_path: Path, name: str) -> nio.AsyncClient:
    """A new user registered through nio's own API, its store (and Olm
    keys, with nio[e2e]) in ``tmp_path/nio-<name>``. The caller closes it."""
    store = tmp_path / f"nio-{name}"
    store.mkdir()
    client = nio.AsyncClient(base_url, "", store_path=str(store))
    resp = await client.register(name, f"password of {name}", device_name=f"{name}'s laptop")
    assert isinstance(resp, nio.RegisterResponse), resp
    return client

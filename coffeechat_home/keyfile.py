"""The server's signing key on disk (Synapse's one-line format)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .protocol.signing import SigningKey, format_signing_key, generate_signing_key, parse_signing_key


def ensure_signing_key(path: Path) -> bool:
    """Generate a key at ``path`` if there is none; True when one was written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key("a_" + secrets.token_hex(2))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another instance sharing the data dir won
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(format_signing_key(key) + "\n")
    return True


def load_signing_key(path: Path) -> SigningKey:
    try:
        return parse_signing_key(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"signing key {path} not found (run `coffeechat-home init`)") from None

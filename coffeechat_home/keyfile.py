"""The server's signing key on disk (Synapse's one-line format)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .protocol.signing import SigningKey, format_signing_key, generate_signing_key, parse_signing_key


def ensure_signing_key(path: Path) -> bool:
    """Generate a key at ``path`` if there is none; True when one was written.

    Safe when several instances share the data directory and start at once:
    the key is written whole to a temporary file beside ``path`` and then
    hard-linked to ``path``, which fails if ``path`` exists. So ``path``
    appears with all of its content or not at all (a reader never sees half
    a key), and exactly one starter's key wins; the others load that one.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key("a_" + secrets.token_hex(2))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(format_signing_key(key) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces: the first starter wins
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make the new name durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_signing_key(path: Path) -> SigningKey:
    try:
        return parse_signing_key(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"signing key {path} not found (run `coffeechat-home init`)") from None

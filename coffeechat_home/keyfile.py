"""The server's signing key on disk (Synapse's one-line format)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from .protocol.signing import (
    SigningKey,
    format_signing_key,
    generate_signing_key,
    get_verify_key,
    key_id_of,
    parse_signing_key,
    verify_key_base64,
)

if TYPE_CHECKING:
    from .storage.server_keys import ServerKeyStore


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


def pending_key_path(path: Path) -> Path:
    return path.with_name(path.name + ".new")


async def rotate_signing_key(path: Path, store: "ServerKeyStore") -> tuple[str, str]:
    """Replace the signing key at ``path`` with a new one; the old one is
    recorded in the database (published as an old verify key, expired now)
    and its file kept beside as ``<name>.<version>.old``. Returns (old key
    id, new key id).

    Crash-safe: the new key is written whole to ``<name>.new`` first, the
    database then records the change in one transaction, and only then the
    file is renamed into place; a start that finds ``<name>.new`` finishes
    or drops it by what the database says (``finish_pending_rotation``).
    """
    import time

    from .storage.server_keys import OldKey

    old = load_signing_key(path)
    new = generate_signing_key("a_" + secrets.token_hex(2))
    while new.version == old.version:
        new = generate_signing_key("a_" + secrets.token_hex(2))
    pending = pending_key_path(path)
    _write_key_file(pending, new)
    backup = path.with_name(f"{path.name}.{old.version}.old")
    with contextlib.suppress(FileExistsError):
        os.link(path, backup)
    old_entry = OldKey(key_id_of(old), verify_key_base64(get_verify_key(old)), int(time.time() * 1000))
    await store.retire_local_key(old_entry, key_id_of(new))
    os.replace(pending, path)
    _fsync_dir(path.parent)
    return key_id_of(old), key_id_of(new)


def finish_pending_rotation(path: Path, recorded_key_id: str) -> None:
    """After a rotation that stopped between the database and the rename:
    install the pending key if the database took it, else drop it."""
    pending = pending_key_path(path)
    if not pending.exists():
        return
    try:
        key = load_signing_key(pending)
    except Exception:
        os.unlink(pending)
        return
    if key_id_of(key) == recorded_key_id:
        os.replace(pending, path)
        _fsync_dir(path.parent)
    else:
        os.unlink(pending)


def _write_key_file(path: Path, key: SigningKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(format_signing_key(key) + "\n")
        f.flush()
        os.fsync(f.fileno())

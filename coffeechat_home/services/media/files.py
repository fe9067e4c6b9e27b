"""File bodies on disk, named by their SHA-256 (``ab/cd/abcd...``), so one
body uploaded twice is stored once and every instance that shares the
folder serves every file.

Uploads are streamed: chunks go to a temporary file in the same folder
(hashed as they are written, in a worker thread), which is renamed into
place once complete. Nothing holds a whole body in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .content import HEADER_BYTES

STALE_TMP_S = 3600  # a temporary file this old belongs to no running upload
WRITE_BATCH = 256 * 1024  # bytes gathered before one write in a worker thread
_HASH_RE = re.compile(r"[0-9a-f]{64}")


class BodyTooLarge(Exception):
    pass


class BodyIncomplete(Exception):
    """The body ended before its Content-Length."""


@dataclass(frozen=True, slots=True)
class StoredBody:
    sha256: str
    size: int
    head: bytes  # the first bytes, to sniff the type


def _write_and_hash(f: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    digest.update(data)


def _flush_and_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the folders; remove temporary files a crash left behind
        (only old ones: another instance may be writing the new ones)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_S
        for entry in self.tmp.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                pass

    def path_of(self, sha256: str) -> Path:
        if not _HASH_RE.fullmatch(sha256):  # never a path from anything but a hash
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    async def store_stream(
        self, chunks: AsyncIterator[bytes], *, max_bytes: int, expected: int | None = None
    ) -> StoredBody:
        """Stream a body to disk; BodyTooLarge past ``max_bytes``,
        BodyIncomplete if it ends before ``expected`` bytes."""
        loop = asyncio.get_running_loop()
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"up-{secrets.token_hex(12)}"
        digest = hashlib.sha256()
        size = 0
        head = b""
        pending: list[bytes] = []
        pending_size = 0
        try:
            # not through the executor: a handler cancelled at that await
            # (its client went away) would leave the file the thread still
            # creates; an open of a new file is one quick system call
            f = open(tmp, "wb")
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BodyTooLarge()
                    if len(head) < HEADER_BYTES:
                        head += chunk[: HEADER_BYTES - len(head)]
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= WRITE_BATCH:
                        data = b"".join(pending)
                        pending, pending_size = [], 0
                        await loop.run_in_executor(None, _write_and_hash, f, digest, data)
                if pending:
                    await loop.run_in_executor(None, _write_and_hash, f, digest, b"".join(pending))
                # on disk before the upload is acknowledged (power loss)
                await loop.run_in_executor(None, _flush_and_sync, f)
            finally:
                f.close()  # flushed already: no I/O to wait for, and no await to be cancelled at
            if expected is not None and size != expected:
                raise BodyIncomplete()
            sha = digest.hexdigest()
            await loop.run_in_executor(None, self._move_into_place, tmp, sha)
            return StoredBody(sha, size, head)
        except BaseException:
            _unlink(tmp)  # no await: nothing can cancel the clean-up of a cancelled handler
            raise

    async def store_bytes(self, data: bytes) -> str:
        """Store a small body (a thumbnail); returns its hash."""
        sha = hashlib.sha256(data).hexdigest()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_small, sha, data)
        return sha

    def _write_small(self, sha: str, data: bytes) -> None:
        if self.exists(sha):
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"th-{secrets.token_hex(12)}"
        with open(tmp, "wb") as f:
            f.write(data)
        self._move_into_place(tmp, sha)

    def _move_into_place(self, tmp: Path, sha: str) -> None:
        final = self.path_of(sha)
        if final.is_file():  # the same body is stored already
            _unlink(tmp)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def delete(self, sha256: str) -> None:
        _unlink(self.path_of(sha256))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass

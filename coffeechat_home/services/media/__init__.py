"""Media repository: uploads, downloads and thumbnails (issue 10)."""

from __future__ import annotations

from pathlib import Path

from ...config import Config
from ...storage.database import Database
from ...storage.media import MediaStore
from .files import FileStore
from .repository import MediaService, Servable, Upload, parse_mxc

__all__ = ["MediaService", "Servable", "Upload", "build_media", "parse_mxc"]


def build_media(config: Config, db: Database, root: Path | None = None) -> MediaService:
    files = FileStore(root or config.media_path)
    files.prepare()
    return MediaService(MediaStore(db), files, config.server_name, config.media)

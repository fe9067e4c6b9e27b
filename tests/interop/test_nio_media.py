"""matrix-nio as real clients of the media repository: upload, download and
thumbnail through nio's own API (authenticated media, Matrix 1.11), an
encrypted attachment, and an avatar set through the profile API that
another user's client fetches."""

from __future__ import annotations

import io
from pathlib import Path

import nio
import pytest
from PIL import Image

from ..integration.media_helpers import image_bytes
from .nio_helpers import nio_user

pytestmark = pytest.mark.slow


async def test_nio_upload_download_thumbnail(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    try:
        config = await alice.content_repository_config()
        assert isinstance(config, nio.ContentRepositoryConfigResponse), config
        assert config.upload_size == 50 * 1024 * 1024

        photo = image_bytes(800, 600, "JPEG")
        up, keys = await alice.upload(io.BytesIO(photo), content_type="image/jpeg", filename="beach.jpg",
                                      filesize=len(photo))
        assert isinstance(up, nio.UploadResponse), up
        assert keys is None and up.content_uri.startswith("mxc://test.local/")

        got = await bob.download(mxc=up.content_uri)
        assert isinstance(got, nio.MemoryDownloadResponse), got
        assert got.body == photo and got.content_type == "image/jpeg" and got.filename == "beach.jpg"
        saved = tmp_path / "saved"
        saved.mkdir()
        on_disk = await bob.download(mxc=up.content_uri, save_to=saved / "copy.jpg")
        assert isinstance(on_disk, nio.DiskDownloadResponse), on_disk
        assert (saved / "copy.jpg").read_bytes() == photo

        server_name, media_id = up.content_uri[len("mxc://"):].split("/")
        thumb = await bob.thumbnail(server_name, media_id, 96, 96, nio.ResizingMethod.crop)
        assert isinstance(thumb, nio.ThumbnailResponse), thumb
        assert thumb.content_type == "image/jpeg" and Image.open(io.BytesIO(thumb.body)).size == (96, 96)
        thumb = await bob.thumbnail(server_name, media_id, 320, 240)
        assert isinstance(thumb, nio.ThumbnailResponse) and Image.open(io.BytesIO(thumb.body)).size == (320, 240)

        # a text file is not an image: nio gets the Matrix error
        up2, _ = await alice.upload(io.BytesIO(b"minutes of the meeting"), content_type="text/plain",
                                    filename="minutes.txt", filesize=22)
        assert isinstance(up2, nio.UploadResponse), up2
        sn, mid = up2.content_uri[len("mxc://"):].split("/")
        err = await bob.thumbnail(sn, mid, 32, 32)
        assert isinstance(err, nio.ThumbnailError)

        # an encrypted attachment: the server stores opaque bytes
        secret = b"attachment for an encrypted room" * 100
        up3, decryption = await alice.upload(io.BytesIO(secret), content_type="application/pdf",
                                             encrypt=True, filesize=len(secret))
        assert isinstance(up3, nio.UploadResponse) and decryption is not None
        enc = await bob.download(mxc=up3.content_uri)
        assert isinstance(enc, nio.MemoryDownloadResponse)
        plain = nio.crypto.attachments.decrypt_attachment(
            enc.body, decryption["key"]["k"], decryption["hashes"]["sha256"], decryption["iv"]
        )
        assert plain == secret

        missing = await bob.download(mxc="mxc://test.local/doesnotexist")
        assert isinstance(missing, nio.DownloadError) and missing.status_code == "M_NOT_FOUND"
    finally:
        await alice.close()
        await bob.close()


async def test_nio_avatar_seen_by_another_user(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    try:
        avatar = image_bytes(256, 256, "PNG", color=(10, 120, 250))
        up, _ = await alice.upload(io.BytesIO(avatar), content_type="image/png", filename="me.png",
                                   filesize=len(avatar))
        assert isinstance(up, nio.UploadResponse), up
        set_resp = await alice.set_avatar(up.content_uri)
        assert isinstance(set_resp, nio.ProfileSetAvatarResponse), set_resp

        seen = await bob.get_avatar(alice.user_id)
        assert isinstance(seen, nio.ProfileGetAvatarResponse), seen
        assert seen.avatar_url == up.content_uri
        got = await bob.download(mxc=seen.avatar_url)
        assert isinstance(got, nio.MemoryDownloadResponse) and got.body == avatar
        sn, mid = seen.avatar_url[len("mxc://"):].split("/")
        thumb = await bob.thumbnail(sn, mid, 32, 32, nio.ResizingMethod.crop)
        assert isinstance(thumb, nio.ThumbnailResponse)
        assert thumb.content_type == "image/png" and Image.open(io.BytesIO(thumb.body)).size == (32, 32)

        # the avatar shows in a shared room's member event too
        room = await alice.room_create(invite=[bob.user_id])
        assert isinstance(room, nio.RoomCreateResponse), room
        joined = await bob.join(room.room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        sync = await bob.sync(timeout=0, full_state=True)
        assert isinstance(sync, nio.SyncResponse), sync
        assert bob.rooms[room.room_id].avatar_url(alice.user_id) == up.content_uri
    finally:
        await alice.close()
        await bob.close()

"""Media across servers with Synapse as the peer, both ways: a Synapse
user's upload downloaded (and thumbnailed) through our server, which
fetches it from Synapse's federation media endpoint; our upload downloaded
through Synapse's client API, which fetches it from ours (Synapse parses
our multipart answer); and matrix-nio on our server showing a Synapse
user's avatar."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from urllib.parse import quote

import aiohttp
import nio
import pytest
from PIL import Image

from ..federation.peers import FederatingServer
from ..integration.media_helpers import AUTHED, assert_error, image_bytes, media_path, raw, upload
from ..integration.processes import User
from .synapse_peer import SynapsePeer
from .test_synapse_federation import peers, register_on_synapse  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

_n = itertools.count()


async def test_media_both_ways_with_synapse(peers: tuple[FederatingServer, SynapsePeer], tmp_path: Path) -> None:  # noqa: F811
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice")
        bob = await register_on_synapse(http, syn, "bob")

        # Synapse's upload, read through our server
        doc = os.urandom(300_000)
        r = await upload(http, syn.client_url, bob.token, doc, "application/pdf", "report.pdf")
        assert r.status == 200, r.body
        syn_doc = media_path(r.json()["content_uri"])
        photo = image_bytes(800, 600, "JPEG")
        r = await upload(http, syn.client_url, bob.token, photo, "image/jpeg", "photo.jpg")
        syn_photo = media_path(r.json()["content_uri"])
        assert syn_doc.startswith(syn.server_name + "/")

        r = await raw(http, "GET", f"{ours.client_url}{AUTHED}/download/{syn_doc}", token=alice.token)
        assert r.status == 200 and r.body == doc, (r.status, r.body[:300], ours.process.stderr()[-2000:])
        assert r.headers["Content-Type"] == "application/pdf"
        assert r.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
        r = await raw(http, "GET", f"{ours.client_url}{AUTHED}/thumbnail/{syn_photo}", token=alice.token,
                      params={"width": "96", "height": "96", "method": "crop"})
        assert r.status == 200, r.body[:300]
        assert Image.open(io.BytesIO(r.body)).size == (96, 96)
        rows = await ours.db_fetch("SELECT media_id FROM media WHERE server_name = $1", syn.server_name)
        assert sorted(row["media_id"] for row in rows) == sorted([syn_doc.split("/")[1], syn_photo.split("/")[1]])
        r = await raw(http, "GET", f"{ours.client_url}{AUTHED}/download/{syn.server_name}/nosuchmedia",
                      token=alice.token)
        assert_error(r, 404, "M_NOT_FOUND")

        # our upload, read through Synapse (which fetches it from our federation endpoint)
        ours_doc = os.urandom(250_000)
        r = await upload(http, ours.client_url, alice.token, ours_doc, "application/octet-stream", "data.bin")
        assert r.status == 200
        our_path = media_path(r.json()["content_uri"])
        r = await raw(http, "GET", f"{syn.client_url}{AUTHED}/download/{our_path}", token=bob.token)
        assert r.status == 200 and r.body == ours_doc, (r.status, r.body[:300], syn.log_tail())
        assert "data.bin" in r.headers.get("Content-Disposition", "")
        png = image_bytes(640, 480)
        r = await upload(http, ours.client_url, alice.token, png, "image/png", "pic.png")
        our_png = media_path(r.json()["content_uri"])
        r = await raw(http, "GET", f"{syn.client_url}{AUTHED}/thumbnail/{our_png}", token=bob.token,
                      params={"width": "32", "height": "32", "method": "crop"})
        assert r.status == 200, (r.status, r.body[:300], syn.log_tail())
        assert Image.open(io.BytesIO(r.body)).size == (32, 32)
        r = await raw(http, "GET", f"{syn.client_url}{AUTHED}/download/{ours.server_name}/nosuchmedia",
                      token=bob.token)
        assert r.status == 404, r.body[:300]

        # matrix-nio on our server shows the Synapse user's avatar
        avatar = image_bytes(128, 128, "PNG", color=(10, 200, 40))
        r = await upload(http, syn.client_url, bob.token, avatar, "image/png", "bob.png")
        avatar_uri = r.json()["content_uri"]
        status, _ = await bob.call("PUT", f"profile/{quote(bob.user_id)}/avatar_url", {"avatar_url": avatar_uri})
        assert status == 200
        store = tmp_path / "nio"
        store.mkdir()
        client = nio.AsyncClient(ours.client_url, "", store_path=str(store))
        try:
            assert isinstance(await client.register("carol", "password of carol"), nio.RegisterResponse)
            seen = await client.get_avatar(bob.user_id)
            assert isinstance(seen, nio.ProfileGetAvatarResponse) and seen.avatar_url == avatar_uri, seen
            got = await client.download(mxc=seen.avatar_url)
            assert isinstance(got, nio.MemoryDownloadResponse) and got.body == avatar, got
            server_name, media_id = seen.avatar_url[len("mxc://"):].split("/")
            thumb = await client.thumbnail(server_name, media_id, 32, 32, nio.ResizingMethod.crop)
            assert isinstance(thumb, nio.ThumbnailResponse), thumb
            assert Image.open(io.BytesIO(thumb.body)).size == (32, 32)
        finally:
            await client.close()

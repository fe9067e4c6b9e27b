"""Media benchmark: coffeechat-home vs Synapse, same machine, same run.

    python bench/bench_media.py [--only ours|synapse] [--small N] [--large N]

For each server: upload and download throughput of 1 MB and 50 MB files
(one at a time, each upload a distinct body so nothing is deduplicated),
and the server's resident memory while a 50 MB file streams in and out:
its baseline before the transfer and its peak during it (sampled every
20 ms). Streaming means the peak must not grow by anything like the
file's size.

Remote media (ours only, ``--remote N``, default 2): a second
coffeechat-home process (the origin, federating over TLS on loopback)
holds N 50 MB uploads; our server's first download of each fetches it over
federation and streams it on (MB/s and our peak RSS), the second is served
from the cache.

Starts one PostgreSQL (in bench/.work/media/), our server and Synapse
(installed on first use into bench/.work/synapse-venv, as bench_rooms.py
does), and stops everything by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log
from matrix_client import Client, User
from servers import Postgres, RssMonitor, ServerProcess, free_port, start_ours, start_synapse
from synapse_env import ensure_synapse

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "media"
MB = 1_000_000
LIMIT = 200 * 1024 * 1024  # upload limit given to both servers



@dataclass
class Target:
    server: ServerProcess
    user: User | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.server.label


class Body:
    """A file of ``size`` bytes on disk, sent as a stream; its first 16
    bytes change for every upload so each body is new to the server."""

    def __init__(self, size: int) -> None:
        fd, name = tempfile.mkstemp(prefix="bench-media-", dir=WORK)
        self.path = Path(name)
        self.size = size
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(MB)
            left = size
            while left:
                f.write(block[: min(left, MB)])
                left -= min(left, MB)
        self.n = 0

    def next(self) -> Path:
        self.n += 1
        with open(self.path, "r+b") as f:
            f.write(os.urandom(16))
        return self.path

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


async def upload(http: aiohttp.ClientSession, t: Target, path: Path, size: int) -> str:
    assert t.user is not None
    f = await asyncio.to_thread(open, path, "rb")
    try:
        async with http.post(
            t.server.base_url + "/_matrix/media/v3/upload", data=f, params={"filename": "bench.bin"},
            headers={"Authorization": f"Bearer {t.user.token}", "Content-Type": "application/octet-stream",
                     "Content-Length": str(size)},
            timeout=aiohttp.ClientTimeout(total=300),
        ) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{t.label}: upload answered {r.status}: {body}")
            return str(body["content_uri"])
    finally:
        f.close()


async def download(http: aiohttp.ClientSession, t: Target, uri: str) -> int:
    assert t.user is not None
    server_name, media_id = uri[len("mxc://"):].split("/", 1)
    got = 0
    async with http.get(
        f"{t.server.base_url}/_matrix/client/v1/media/download/{server_name}/{media_id}",
        headers={"Authorization": f"Bearer {t.user.token}"}, timeout=aiohttp.ClientTimeout(total=300),
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"{t.label}: download answered {r.status}: {(await r.read())[:200]!r}")
        async for chunk in r.content.iter_chunked(1 << 20):
            got += len(chunk)
    return got


async def phase(http: aiohttp.ClientSession, t: Target, name: str, body: Body, count: int, rss: RssMonitor) -> None:
    rss.sample()
    base = rss.last.get(t.label, 0)
    rss.peak[t.label] = base
    uris = []
    t0 = time.perf_counter()
    for _ in range(count):
        uris.append(await upload(http, t, body.next(), body.size))
    up_s = time.perf_counter() - t0
    rss.sample()
    up_peak = rss.peak.get(t.label, 0)
    rss.peak[t.label] = rss.last.get(t.label, 0)
    t0 = time.perf_counter()
    for uri in uris:
        got = await download(http, t, uri)
        if got != body.size:
            raise RuntimeError(f"{t.label}: downloaded {got} bytes of {body.size}")
    down_s = time.perf_counter() - t0
    rss.sample()
    down_peak = rss.peak.get(t.label, 0)
    total = body.size * count / MB
    t.results[name] = {
        "count": count,
        "upload_MBps": total / up_s,
        "download_MBps": total / down_s,
        "upload_ms_each": 1000 * up_s / count,
        "download_ms_each": 1000 * down_s / count,
        "rss_before_MB": base / 2**20,
        "rss_peak_upload_MB": up_peak / 2**20,
        "rss_peak_download_MB": down_peak / 2**20,
    }
    log(f"{t.label}: {name}: " + ", ".join(f"{k}={v:.1f}" for k, v in t.results[name].items()))


def federating_env(fed_port: int) -> dict[str, str]:
    """A coffeechat-home process federating on loopback: dev mode makes its
    self-signed certificate; peers' certificates are not checked."""
    return {
        "COFFEECHAT_SERVER_NAME": f"localhost:{fed_port}",
        "COFFEECHAT_DEV_MODE": "true",
        "COFFEECHAT_FEDERATION_LISTENER_ENABLED": "true",
        "COFFEECHAT_FEDERATION_LISTENER_PORT": str(fed_port),
        "COFFEECHAT_FEDERATION_ALLOW_PRIVATE_ADDRESSES": "127.0.0.0/8,::1/128",
        "COFFEECHAT_FEDERATION_VERIFY_PEER_CERTIFICATES": "false",
        "COFFEECHAT_MEDIA_MAX_UPLOAD_BYTES": str(LIMIT),
    }


async def remote_phase(http: aiohttp.ClientSession, t: Target, origin: Target, body: Body, count: int,
                       rss: RssMonitor) -> None:
    uris = [await upload(http, origin, body.next(), body.size) for _ in range(count)]
    rss.sample()
    base = rss.last.get(t.label, 0)
    rss.peak[t.label] = base
    t0 = time.perf_counter()
    for uri in uris:
        if await download(http, t, uri) != body.size:
            raise RuntimeError(f"{t.label}: short remote download")
    first_s = time.perf_counter() - t0
    rss.sample()
    peak = rss.peak.get(t.label, 0)
    t0 = time.perf_counter()
    for uri in uris:
        await download(http, t, uri)
    cached_s = time.perf_counter() - t0
    total = body.size * count / MB
    t.results["remote"] = {
        "count": count,
        "first_MBps": total / first_s,
        "cached_MBps": total / cached_s,
        "rss_before_MB": base / 2**20,
        "rss_peak_fetch_MB": peak / 2**20,
    }
    log(f"{t.label}: remote: " + ", ".join(f"{k}={v:.1f}" for k, v in t.results["remote"].items()))


def print_table(targets: list[Target]) -> None:
    rows = [
        ("1 MB upload throughput", "small", "upload_MBps", "MB/s", "higher"),
        ("1 MB download throughput", "small", "download_MBps", "MB/s", "higher"),
        ("50 MB upload throughput", "large", "upload_MBps", "MB/s", "higher"),
        ("50 MB download throughput", "large", "download_MBps", "MB/s", "higher"),
        ("RSS before the 50 MB transfers", "large", "rss_before_MB", "MB", "lower"),
        ("peak RSS while uploading 50 MB", "large", "rss_peak_upload_MB", "MB", "lower"),
        ("peak RSS while downloading 50 MB", "large", "rss_peak_download_MB", "MB", "lower"),
    ]
    labels = [t.label for t in targets]
    print(f"{'metric':<36} {'unit':>5} " + " ".join(f"{lab:>16}" for lab in labels)
          + ("   ours/Synapse  better" if len(targets) == 2 else ""))
    for title, ph, key, unit, better in rows:
        vals = [t.results.get(ph, {}).get(key) for t in targets]
        cells = " ".join(f"{v:>16.1f}" if isinstance(v, float) else f"{'-':>16}" for v in vals)
        ratio = ""
        if len(vals) == 2 and all(isinstance(v, float) and v for v in vals):
            ratio = f"   {vals[0] / vals[1]:>12.2f}  {better}"
        print(f"{title:<36} {unit:>5} {cells}{ratio}")
    for t in targets:
        r = t.results.get("large")
        if r:
            growth = max(r["rss_peak_upload_MB"], r["rss_peak_download_MB"]) - r["rss_before_MB"]
            print(f"{t.label}: RSS growth while streaming 50 MB: {growth:.1f} MB")
        r = t.results.get("remote")
        if r:
            print(f"{t.label}: 50 MB remote media, first download (fetched over federation): "
                  f"{r['first_MBps']:.1f} MB/s; cached: {r['cached_MBps']:.1f} MB/s; "
                  f"RSS growth while fetching: {r['rss_peak_fetch_MB'] - r['rss_before_MB']:.1f} MB "
                  "(Synapse not measured: its bench config has no federation listener)")


async def run(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    want_ours = args.only in (None, "ours")
    want_syn = args.only in (None, "synapse")
    syn_python = syn_version = None
    if want_syn:
        syn_python, syn_version = ensure_synapse(HERE / ".work" / "synapse-venv", log=log)
        syn_version = syn_version.split()[0]
    pg = Postgres(WORK)
    rss = RssMonitor(interval=0.02)
    servers: list[ServerProcess] = []
    targets: list[Target] = []
    bodies: list[Body] = []
    origin: ServerProcess | None = None
    try:
        log("starting PostgreSQL ...")
        pg.start()
        await pg.configure(fsync=True)
        if want_ours:
            url = await pg.create_database("coffeechat")
            if args.remote:
                servers.append(start_ours(WORK, url, federating_env(free_port())))
                origin = start_ours(WORK / "origin", await pg.create_database("origin"), federating_env(free_port()))
                origin.label = "origin"
            else:
                servers.append(start_ours(WORK, url, {"COFFEECHAT_MEDIA_MAX_UPLOAD_BYTES": str(LIMIT)}))
        if want_syn:
            assert syn_python is not None and syn_version is not None
            await pg.create_database("synapse")
            servers.append(start_synapse(WORK, syn_python, syn_version, pg.socket_dir, "synapse",
                                         {"max_upload_size": f"{LIMIT // 2**20}M"}))
        for s in servers:
            s.wait_ready(120)
            rss.watch(s.label, s.pid)
            log(f"{s.label} {s.version} ready at {s.base_url} (pid {s.pid})")
        if origin is not None:
            origin.wait_ready(120)
        rss.start()
        small, large = Body(MB), Body(50 * MB)
        bodies += [small, large]
        async with aiohttp.ClientSession() as http:
            for s in servers:
                t = Target(s)
                t.user = await Client(http, s.base_url).register("bench")
                targets.append(t)
            for t in targets:
                await upload(http, t, small.next(), small.size)  # warm-up
                await phase(http, t, "small", small, args.small, rss)
                await phase(http, t, "large", large, args.large, rss)
            if origin is not None:
                o = Target(origin)
                o.user = await Client(http, origin.base_url).register("origin")
                await remote_phase(http, targets[0], o, large, args.remote, rss)
    finally:
        rss.stop()
        for b in bodies:
            b.remove()
        for s in servers + ([origin] if origin is not None else []):
            s.stop()
        pg.stop()
        log("stopped: " + ", ".join(f"{s.label} pid {s.pid}" for s in servers if s.proc))
    print()
    print("=" * 90)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores; 1 MB = 10^6 bytes; {args.small} x 1 MB and {args.large} x 50 MB, "
          "one at a time, each upload a new body; downloads read and discard")
    for s in servers:
        print(f"{s.label}: {s.version}")
    print_table(targets)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("ours", "synapse"), help="run one server only (no ratios)")
    p.add_argument("--small", type=int, default=20, help="1 MB files per direction (default %(default)s)")
    p.add_argument("--large", type=int, default=3, help="50 MB files per direction (default %(default)s)")
    p.add_argument("--remote", type=int, default=2,
                   help="50 MB remote files fetched through our server (0: none; default %(default)s)")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

"""Synapse as a federation peer on loopback, configured as
../shared/peers/README.md says: its own TLS federation listener (self-signed
certificate made here), loopback allowed (ip_range_whitelist), peer
certificates not verified, keys fetched straight from peers
(trusted_key_servers: []), a short federation backoff, cheap bcrypt,
open registration and no rate limits. SQLite, in the test's folder.

Synapse (pinned in bench/synapse_env.py) lives in its own virtualenv,
installed on first use (``pip install --dry-run`` showed that installing it
into our environment would upgrade packages we use, e.g. cryptography);
under ~/.cache/coffeechat-home/ (shared by every checkout on the machine)
or $COFFEECHAT_SYNAPSE_VENV. When it cannot be installed the tests skip and
say why.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from ..federation.certs import make_certificate
from ..federation.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from synapse_env import SYNAPSE_VERSION, base_config, ensure_synapse, write_synapse_files  # noqa: E402

# outside the checkout, so every clone and worktree on a machine shares one
# install (as the matrix-js-sdk tests share theirs)
VENV = Path(os.environ.get(
    "COFFEECHAT_SYNAPSE_VENV", Path.home() / ".cache" / "coffeechat-home" / f"synapse-{SYNAPSE_VERSION}"
))

_installed: tuple[Path, str] | None = None
_install_error: str | None = None


def synapse_python() -> Path:
    """The venv's python, installing Synapse once per run (under a file lock,
    so two runs never install at once); skips the test when impossible."""
    global _installed, _install_error
    if _installed is not None:
        return _installed[0]
    if _install_error is not None:
        pytest.skip(_install_error)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(VENV.parent / "synapse-venv.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _installed = ensure_synapse(VENV, log=lambda m: print(m, file=sys.stderr))
    except Exception as e:  # no registry, no wheel for this platform, ...
        _install_error = f"Synapse {SYNAPSE_VERSION} could not be installed into {VENV}: {e}"
        pytest.skip(_install_error)
    return _installed[0]


class SynapsePeer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.client_port = free_port()
        self.fed_port = free_port()
        self.server_name = f"localhost:{self.fed_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def config(self) -> dict[str, object]:
        hs = self.workdir
        cert, key = make_certificate(hs, "synapse-tls")
        config = base_config(hs)
        config.update({
            "server_name": self.server_name,
            "public_baseurl": f"{self.client_url}/",
            "listeners": [
                {"port": self.client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                 "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]},
                {"port": self.fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
                 "x_forwarded": False, "resources": [{"names": ["federation", "keys"], "compress": False}]},
            ],
            "tls_certificate_path": str(cert),
            "tls_private_key_path": str(key),
            "database": {"name": "sqlite3", "args": {"database": str(hs / "homeserver.db")}},
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "federation_verify_certificates": False,
            "federation": {"destination_min_retry_interval": "2s", "destination_retry_multiplier": 2,
                           "destination_max_retry_interval": "30s"},
            "allow_public_rooms_over_federation": True,
            "room_list_publication_rules": [{"action": "allow"}],
        })
        return config

    async def start(self, timeout_s: float = 120) -> "SynapsePeer":
        synapse_python()
        write_synapse_files(self.workdir, self.config(), log_level="INFO", key_id="a_syn")
        return await self.resume(timeout_s)

    async def resume(self, timeout_s: float = 120) -> "SynapsePeer":
        """Start again after ``stop`` with the same configuration, keys and
        database (a peer that was down comes back)."""
        python = synapse_python()
        hs = self.workdir
        with open(hs / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [str(python), "-m", "synapse.app.homeserver", "-c", str(hs / "homeserver.yaml")],
                cwd=hs, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Synapse exited ({self.proc.returncode}): {self.log_tail()}")
                try:
                    async with http.get(self.client_url + "/_matrix/client/versions",
                                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status == 200:
                            return self
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Synapse did not answer within {timeout_s} s: {self.log_tail()}")
                await asyncio.sleep(0.3)

    def signing_key_seed(self) -> tuple[str, str]:
        """(key version, base64 seed) of Synapse's signing key."""
        _, version, seed = (self.workdir / "signing.key").read_text().split()
        return version, seed

    def log_tail(self, n: int = 4000) -> str:
        parts = []
        for name in ("stdout.log", "homeserver.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(p.read_text(errors="replace")[-n:])
        return "\n".join(parts)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 30)
        except asyncio.TimeoutError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

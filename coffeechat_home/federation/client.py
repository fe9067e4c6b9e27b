"""The outbound federation client: one shared HTTPS client (connection
reuse, timeouts, answer size limit) that finds a server by server
discovery, refuses non-public addresses unless allowed, and signs every
request with ``Authorization: X-Matrix``.

    client = FederationClient(server_name, signing_key, allow_private_addresses=[...])
    profile = await client.get_json("other.org", "/_matrix/federation/v1/query/profile",
                                    query={"user_id": "@bob:other.org"})

Failures raise ``FederationError`` subclasses: ``Unreachable`` (no
connection: DNS, refused, TLS, timeout, a forbidden address, or backing
off after earlier failures), ``RemoteError`` (the server answered with an
error status; its Matrix error is kept), ``BadResponse`` (not JSON, or too
large).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import aiohttp
import orjson
from yarl import URL

from ..protocol.request_auth import sign_request
from ..protocol.signing import SigningKey
from .addresses import AddressGuard, ForbiddenAddress, GuardedResolver, is_ip_literal
from .discovery import Route, ServerResolver, max_age, WELL_KNOWN_MAX_BYTES

log = logging.getLogger(__name__)

try:  # SRV lookups need a DNS library; without one discovery skips SRV
    import aiodns

    HAVE_AIODNS = True
except ImportError:  # pragma: no cover - aiodns is a dependency
    HAVE_AIODNS = False

BACKOFF_START_S = 2.0
BACKOFF_MAX_S = 3600.0


class FederationError(Exception):
    pass


class Unreachable(FederationError):
    pass


class RemoteError(FederationError):
    def __init__(self, destination: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) and isinstance(body.get("errcode"), str) else None
        self.error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else ""
        super().__init__(f"{destination} answered {status} {self.errcode or ''} {self.error}".rstrip())


class BadResponse(FederationError):
    pass


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


class FederationClient:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        *,
        allow_private_addresses: Iterable[str] = (),
        verify_certificates: bool = True,
        timeout_s: float = 30.0,
        max_response_bytes: int = 10 * 1024 * 1024,
        use_srv: bool = True,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.guard = AddressGuard(allow_private_addresses)
        self.verify_certificates = verify_certificates
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.use_srv = use_srv and HAVE_AIODNS
        self.resolver = ServerResolver(self._fetch_well_known, self._srv_lookup if self.use_srv else None)
        self._guarded = GuardedResolver(self.guard)
        self._session: aiohttp.ClientSession | None = None
        self._dns: Any = None
        self._backoff: dict[str, _Backoff] = {}

    # -- lifecycle ----------------------------------------------------------------
    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=self._guarded, limit=200, limit_per_host=20, ttl_dns_cache=60,
                # True: aiohttp's own verifying context (made once when aiohttp
                # is imported), not one more of ours: each loads the system's
                # CA bundle again (0.8 MB resident)
                ssl=self.verify_certificates,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "coffeechat-home"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._dns is not None:
            await self._dns.close()
            self._dns = None

    # -- public API -------------------------------------------------------------
    async def get_json(self, destination: str, path: str, query: Mapping[str, str] | None = None, *,
                       signed: bool = True, timeout_s: float | None = None) -> Any:
        return await self.request_json("GET", destination, path, query=query, signed=signed, timeout_s=timeout_s)

    async def post_json(self, destination: str, path: str, body: Any, query: Mapping[str, str] | None = None, *,
                        signed: bool = True, timeout_s: float | None = None) -> Any:
        return await self.request_json("POST", destination, path, query=query, body=body, signed=signed,
                                       timeout_s=timeout_s)

    async def put_json(self, destination: str, path: str, body: Any, query: Mapping[str, str] | None = None, *,
                       signed: bool = True, timeout_s: float | None = None) -> Any:
        return await self.request_json("PUT", destination, path, query=query, body=body, signed=signed,
                                       timeout_s=timeout_s)

    async def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        signed: bool = True,
        timeout_s: float | None = None,
        ignore_backoff: bool = False,
    ) -> Any:
        """One request to ``destination``; ``path`` is already URL-encoded
        (quote each path parameter). Returns the decoded JSON answer.
        ``ignore_backoff``: for callers that keep a backoff of their own
        (the outbound sender's, persisted)."""
        if not ignore_backoff:
            self._check_backoff(destination)
        uri = path + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else "")
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if signed:
            headers["Authorization"] = sign_request(
                method, uri, self.server_name, destination, self.signing_key, body
            )
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s, sock_connect=min(10.0, timeout_s or 10.0))
        try:
            route = await self.resolver.resolve(destination)
            url = self._url(route, uri)
            headers["Host"] = route.host_header
            # (over 1 MiB, e.g. a full transaction, as a stream: aiohttp warns of raw bytes that large)
            payload: bytes | io.BytesIO | None = io.BytesIO(data) if data and len(data) > 1 << 20 else data
            async with self._get_session().request(
                method, url, data=payload, headers=headers, timeout=timeout, allow_redirects=False,
            ) as resp:
                raw = await self._read_limited(resp)
                status = resp.status
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, aiohttp.ClientPayloadError) as e:
            self._failed(destination)
            raise Unreachable(f"{destination}: {_describe(e)}") from None
        self._succeeded(destination)
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = None
            if status < 400:
                raise BadResponse(f"{destination} answered {method} {path} with something that is not JSON") from None
        if status >= 400:
            raise RemoteError(destination, status, decoded)
        if status >= 300:
            raise BadResponse(f"{destination} answered {method} {path} with a redirect ({status})")
        return decoded

    @asynccontextmanager
    async def stream(
        self,
        destination: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        read_timeout_s: float | None = None,
        total_timeout_s: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A signed GET whose answer is read by the caller, a chunk at a
        time (media downloads): yields the response once its status is a
        success (an error status raises RemoteError with its Matrix error,
        read within the JSON limit). Reading the body may raise
        ``aiohttp.ClientError`` or ``asyncio.TimeoutError``: the caller maps
        them (``Unreachable`` is raised for failures before the answer)."""
        self._check_backoff(destination)
        uri = path + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else "")
        headers = {"Authorization": sign_request("GET", uri, self.server_name, destination, self.signing_key)}
        read_s = read_timeout_s or self.timeout_s
        timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=min(10.0, read_s), sock_read=read_s)
        try:
            route = await self.resolver.resolve(destination)
            url = self._url(route, uri)
            headers["Host"] = route.host_header
            resp = await self._get_session().request(
                "GET", url, headers=headers, timeout=timeout, allow_redirects=False,
            )
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, aiohttp.ClientPayloadError) as e:
            self._failed(destination)
            raise Unreachable(f"{destination}: {_describe(e)}") from None
        try:
            self._succeeded(destination)
            if resp.status >= 300:
                try:
                    raw = await self._read_limited(resp)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                    raise Unreachable(f"{destination}: {_describe(e)}") from None
                try:
                    decoded = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    decoded = None
                if resp.status >= 400:
                    raise RemoteError(destination, resp.status, decoded)
                raise BadResponse(f"{destination} answered GET {path} with a redirect ({resp.status})")
            yield resp
        finally:
            resp.release()

    @asynccontextmanager
    async def stream_url(self, url: str, *, read_timeout_s: float | None = None,
                         total_timeout_s: float | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """An unsigned GET of an https URL another server named (a media
        download's ``Location``), through the same address guard."""
        target = URL(url)
        if target.scheme != "https" or not target.host:
            raise BadResponse(f"refusing to follow {url!r}: not an https URL")
        if is_ip_literal(target.host):
            try:
                self.guard.check(target.host, target.host)
            except ForbiddenAddress as e:
                raise Unreachable(str(e)) from None
        read_s = read_timeout_s or self.timeout_s
        timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=min(10.0, read_s), sock_read=read_s)
        try:
            resp = await self._get_session().get(target, timeout=timeout, allow_redirects=False)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, aiohttp.ClientPayloadError) as e:
            raise Unreachable(f"{target.host}: {_describe(e)}") from None
        try:
            if resp.status >= 300:
                raise RemoteError(str(target.host), resp.status, None)
            yield resp
        finally:
            resp.release()

    # -- internals --------------------------------------------------------------------
    def _url(self, route: Route, uri: str) -> URL:
        if route.connect_host is not None:
            self._guarded.targets[(route.host, route.port)] = route.connect_host
        if is_ip_literal(route.host):  # aiohttp connects to IP literals without asking the resolver
            self.guard.check(route.host, route.host)
        host = f"[{route.host}]" if ":" in route.host else route.host
        return URL(f"https://{host}:{route.port}{uri}", encoded=True)

    async def _read_limited(self, resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
        limit = limit or self.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise aiohttp.ClientPayloadError(f"answer of {resp.content_length} bytes is over the {limit} byte limit")
        # read() gives what has arrived so far, not the whole answer
        parts: list[bytes] = []
        size = 0
        while chunk := await resp.content.read(min(limit + 1 - size, 1 << 20)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise aiohttp.ClientPayloadError(f"answer over the {limit} byte limit")
        return b"".join(parts)

    def _check_backoff(self, destination: str) -> None:
        b = self._backoff.get(destination)
        if b is not None and b.until > time.monotonic():
            raise Unreachable(
                f"{destination}: not trying for another {b.until - time.monotonic():.1f} s "
                f"after {b.failures} failed attempt(s)"
            )

    def _failed(self, destination: str) -> None:
        b = self._backoff.setdefault(destination, _Backoff())
        b.failures += 1
        b.until = time.monotonic() + min(BACKOFF_START_S * 2 ** (b.failures - 1), BACKOFF_MAX_S)

    def _succeeded(self, destination: str) -> None:
        self._backoff.pop(destination, None)

    async def _fetch_well_known(self, name: str) -> tuple[int, bytes | None, int | None]:
        url = URL(f"https://{name}/.well-known/matrix/server", encoded=True)
        timeout = aiohttp.ClientTimeout(total=10, sock_connect=5)
        async with self._get_session().get(url, timeout=timeout, allow_redirects=True, max_redirects=5) as resp:
            if resp.status != 200:
                return resp.status, None, None
            return resp.status, await self._read_limited(resp, WELL_KNOWN_MAX_BYTES), max_age(
                resp.headers.get("Cache-Control"))

    async def _srv_lookup(self, service: str) -> list[tuple[int, int, int, str]]:
        if self._dns is None:
            self._dns = aiodns.DNSResolver()
        result = await asyncio.wait_for(self._dns.query_dns(service, "SRV"), 10)
        return [(r.data.priority, r.data.weight, r.data.port, r.data.target) for r in result.answer
                if hasattr(r.data, "port") and hasattr(r.data, "target")]


def _describe(e: BaseException) -> str:
    if isinstance(e, ForbiddenAddress):
        return str(e)
    cause = e.__cause__ or e.__context__
    if isinstance(e, aiohttp.ClientConnectorError) and isinstance(getattr(e, "os_error", None), ForbiddenAddress):
        return str(e.os_error)
    if isinstance(cause, ForbiddenAddress):
        return str(cause)
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"

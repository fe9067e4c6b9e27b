"""Access-token checks for client routes."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from ..errors import MatrixError
from ..services.accounts import AccountService, Requester
from ..storage.stream import GuardFailed
from .http import USER_ID


def access_token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <token>'")
    return request.query.get("access_token") or None


class TokenAuth:
    def __init__(self, accounts: AccountService) -> None:
        self.accounts = accounts

    async def requester(self, request: web.Request, *, write: bool = False) -> Requester:
        """Who the token belongs to. With ``write``, possibly from this
        instance's cache (the requester then has a ``write_guard``)."""
        token = access_token_of(request)
        if token is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        accounts = self.accounts
        requester = await (accounts.requester_for_write(token) if write else accounts.requester_for_token(token))
        if requester is None:
            raise _unknown_token()
        request[USER_ID] = requester.user_id
        return requester


def _unknown_token() -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown or revoked access token", soft_logout=False)


AuthedHandler = Callable[[web.Request, Requester], Awaitable[web.StreamResponse]]


def authed(
    auth: TokenAuth, handler: AuthedHandler, *, write: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler so it runs only with a valid access token.

    ``write``: a handler whose success is a write that runs the requester's
    ``write_guard`` (one database read fewer per request). The token may be
    taken from the cache then; a write under a token revoked meanwhile (on
    any instance) fails its guard (401), and any other failure is answered
    only once the token is checked (401 if it was revoked), so a revoked
    token learns nothing."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        requester = await auth.requester(request, write=write)
        if requester.write_guard is None:
            return await handler(request, requester)
        try:
            return await handler(request, requester)
        except GuardFailed:
            auth.accounts.forget_token(requester.access_token)
            raise _unknown_token() from None
        except Exception:
            if await auth.accounts.requester_for_token(requester.access_token) is None:
                raise _unknown_token() from None
            raise

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper

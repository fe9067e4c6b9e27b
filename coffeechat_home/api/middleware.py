"""Middlewares: CORS, request ids and structured access logs, and turning
every failure into a Matrix JSON error (never a stack trace to the client)."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Awaitable, Callable

from aiohttp import web

from ..errors import MatrixError
from ..storage.database import DatabaseError
from .http import CORS_HEADERS, REQUEST_ID, USER_ID, json_response

log = logging.getLogger("coffeechat_home.access")
errlog = logging.getLogger("coffeechat_home.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ids = itertools.count(1)
_prefix = os.urandom(3).hex()


def _error_response(err: MatrixError) -> web.Response:
    return json_response(err.to_json(), status=err.status)


# Called once per request with (request, status, seconds): metrics.
Observer = Callable[[web.Request, int, float], None]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def long_poll_ms(request: web.Request) -> int:
    """The timeout a long-poll (/sync, /events) asked for; 0 otherwise."""
    if not request.path.endswith(("/sync", "/events")):
        return 0
    raw = request.query.get("timeout", "")
    return int(raw) if raw.isdigit() and len(raw) < 10 else 0


def request_log_level(method: str, status: int, ms: float, poll_ms: int, slow_ms: int) -> int:
    """Errors and slow requests always show (WARNING for server errors and
    slow ones, INFO for client errors); successful writes at INFO;
    successful reads and long-polls at DEBUG."""
    if status >= 500 or ms >= poll_ms + slow_ms:
        return logging.WARNING
    if status >= 400 or (method not in _READS and poll_ms == 0):
        return logging.INFO
    return logging.DEBUG


def make_matrix_middleware(slow_request_ms: int = 1000, observe: Observer | None = None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def matrix_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response = await _handle(request, handler)
        elapsed = time.perf_counter() - start
        if observe is not None:
            observe(request, response.status, elapsed)
        ms = round(elapsed * 1000, 1)
        # (a read's long-poll timeout matters only when it took slow_ms or more)
        poll_ms = long_poll_ms(request) if ms >= slow_request_ms or request.method not in _READS else 0
        level = request_log_level(request.method, response.status, ms, poll_ms, slow_request_ms)
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %d %.1fms%s", request.method, request.path, response.status, ms,
                " (slow)" if level == logging.WARNING and response.status < 500 else "",
                extra={
                    "request_id": request[REQUEST_ID],
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "ms": ms,
                    "user": request.get(USER_ID),
                },
            )
        return response

    return matrix_middleware


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"{_prefix}-{next(_ids)}"
    request[REQUEST_ID] = request_id
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        try:
            response = await handler(request)
        except MatrixError as e:
            response = _error_response(e)
        except web.HTTPNotFound:
            response = _error_response(MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request"))
        except web.HTTPMethodNotAllowed:
            response = _error_response(MatrixError(405, "M_UNRECOGNIZED", "Method not allowed for this endpoint"))
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(MatrixError(413, "M_TOO_LARGE", "Request body too large"))
        except web.HTTPException as e:
            if e.status >= 400:
                response = _error_response(MatrixError(e.status, "M_UNKNOWN", e.reason or "Error"))
            else:
                raise
        except DatabaseError as e:
            # an outage or a write that kept losing serialization races:
            # the client may try again (with the same transaction id)
            errlog.warning("request %s %s %s: %s", request_id, request.method, request.path, e)
            response = _error_response(
                MatrixError(503, "M_UNKNOWN", f"The database is unavailable; try again (request {request_id})")
            )
        except Exception:
            errlog.exception("request %s %s %s failed", request_id, request.method, request.path)
            response = _error_response(MatrixError(500, "M_UNKNOWN", f"Internal server error (request {request_id})"))
    if not response.prepared and "Access-Control-Allow-Origin" not in response.headers:
        response.headers.update(CORS_HEADERS)  # (json_response has them)
    return response


matrix_middleware = make_matrix_middleware()

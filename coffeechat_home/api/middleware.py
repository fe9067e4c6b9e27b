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
from .http import REQUEST_ID, USER_ID, json_response

log = logging.getLogger("coffeechat_home.access")
errlog = logging.getLogger("coffeechat_home.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "ETag, Content-Disposition",
    "Access-Control-Max-Age": "86400",
}

_ids = itertools.count(1)
_prefix = os.urandom(3).hex()


def _error_response(err: MatrixError) -> web.Response:
    return json_response(err.to_json(), status=err.status)


@web.middleware
async def matrix_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"{_prefix}-{next(_ids)}"
    request[REQUEST_ID] = request_id
    start = time.perf_counter()
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
    if not response.prepared:
        response.headers.update(CORS_HEADERS)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "ms": round((time.perf_counter() - start) * 1000, 1),
                "user": request.get(USER_ID),
            },
        )
    return response

"""Matrix error bodies for requests refused before any handler runs.

aiohttp's HTTP parser refuses a malformed request (a ``Content-Length`` that
is not a number, a header line it cannot read, an over-long line, ...)
inside the connection protocol, before the application, its middlewares or
its response signals are reached, and answers it with a plain-text 400
(there is no public hook for this: aiohttp issues #3287 and #9882). Every
such answer is made by ``RequestHandler.handle_error``; the handler below
does what it does (refuses once a response has started, closes the
connection) but answers a Matrix error body with the CORS headers a browser
client needs to read it, and logs a client's malformed request at INFO
rather than as an ERROR with a traceback.

Wiring it in takes aiohttp's runner hook (``AppRunner._make_server``) and
the server's handler arguments (``Server._loop``/``_kwargs``, which
``Server.__call__`` itself passes): private names, so a test
(tests/integration/test_discovery.py) sends malformed requests to a running
server and fails if an aiohttp upgrade bypasses this.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .http import CORS_HEADERS

MAX_DETAIL = 200
errlog = logging.getLogger("coffeechat_home.errors")


class MatrixRequestHandler(web.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # as aiohttp: part of a response is out, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            errlog.error("error handling a request from %s", request.remote, exc_info=exc)
            error = "Internal server error"
        else:
            # a client's malformed request: not the server's error
            errlog.info("malformed request from %s: %s", request.remote, message)
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "Bad request"
            detail = " ".join((message or "").split())[:MAX_DETAIL]
            error = f"{reason}: {detail}" if detail else reason
        errcode = "M_TOO_LARGE" if status == 413 else "M_UNKNOWN"
        response = web.Response(
            status=status,
            text=json.dumps({"errcode": errcode, "error": error}),
            content_type="application/json",
            headers={**CORS_HEADERS},
        )
        response.force_close()  # as aiohttp does: the rest of the stream is not trusted
        return response


class _MatrixServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return MatrixRequestHandler(self, loop=self._loop, **self._kwargs)


class MatrixAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser errors with a
    Matrix error body."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _MatrixServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )

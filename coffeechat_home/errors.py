"""Matrix errors: raised anywhere in services or routes, rendered as
``{"errcode": "M_...", "error": "..."}`` with the right HTTP status."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.errcode:  # a bare UIA 401 carries flows, not an error
            body["errcode"] = self.errcode
            body["error"] = self.error
        body.update(self.extra)
        return body


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def not_found(msg: str) -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def unrecognized(msg: str = "Unrecognized request", status: int = 404) -> MatrixError:
    return MatrixError(status, "M_UNRECOGNIZED", msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms)

"""Checks on path parameters shared by the per-user client routes."""

from __future__ import annotations

from aiohttp import web

from ...errors import forbidden, invalid_param
from ...protocol.identifiers import is_valid_room_id
from ...services.accounts import Requester


def require_self(request: web.Request, requester: Requester, what: str) -> str:
    """The {user_id} path parameter, which must be the requester."""
    user_id = request.match_info["user_id"]
    if user_id != requester.user_id:
        raise forbidden(f"Cannot {what} for other users")
    return user_id


def room_id_param(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not is_valid_room_id(room_id):
        raise invalid_param(f"{room_id!r} is not a valid room ID")
    return room_id

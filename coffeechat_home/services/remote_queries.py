"""Client requests about other servers' users, aliases and room directories,
asked of those servers over federation (profile and room alias queries,
publicRooms, space hierarchies), with their
failures turned into Matrix errors the way Synapse does: a server that
cannot be reached is 502, an answer "not found" is 404."""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from ..errors import MatrixError, not_found
from ..federation.client import BadResponse, FederationClient, FederationError, RemoteError, Unreachable


def _mapped(e: FederationError, server: str, what: str) -> MatrixError:
    if isinstance(e, RemoteError):
        if e.status == 404:
            return not_found(f"{what} not found on {server}")
        if 400 <= e.status < 500 and e.errcode:
            return MatrixError(e.status, e.errcode, e.error or f"{server} refused the query")
        return MatrixError(502, "M_UNKNOWN", f"{server} failed to answer the query ({e.status})")
    if isinstance(e, Unreachable):
        return MatrixError(502, "M_UNKNOWN", f"Failed to reach {server}: {e}")
    assert isinstance(e, BadResponse) or isinstance(e, FederationError)
    return MatrixError(502, "M_UNKNOWN", f"Bad answer from {server}: {e}")


class RemoteQueries:
    def __init__(self, client: FederationClient) -> None:
        self.client = client

    async def profile(self, user_id: str, server: str, field: str | None = None) -> dict[str, Any]:
        query = {"user_id": user_id}
        if field is not None:
            query["field"] = field
        try:
            answer = await self.client.get_json(server, "/_matrix/federation/v1/query/profile", query)
        except FederationError as e:
            raise _mapped(e, server, "Profile") from None
        if not isinstance(answer, Mapping):
            raise MatrixError(502, "M_UNKNOWN", f"Bad profile answer from {server}")
        return {k: v for k, v in answer.items() if isinstance(k, str)}

    async def room_alias(self, alias: str, server: str) -> dict[str, Any]:
        try:
            answer = await self.client.get_json(server, "/_matrix/federation/v1/query/directory",
                                                {"room_alias": alias})
        except FederationError as e:
            raise _mapped(e, server, f"Room alias {alias}") from None
        if not isinstance(answer, Mapping) or not isinstance(answer.get("room_id"), str):
            raise MatrixError(502, "M_UNKNOWN", f"Bad directory answer from {server}")
        servers = answer.get("servers")
        servers = [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else []
        return {"room_id": answer["room_id"], "servers": servers or [server]}

    async def public_rooms(self, server: str, *, limit: int | None, since: str | None,
                           search: str | None) -> dict[str, Any]:
        """The server's public room directory (``GET /publicRooms``, or
        ``POST`` with a search term), the answer's known fields only."""
        path = "/_matrix/federation/v1/publicRooms"
        try:
            if search is None:
                query = {k: str(v) for k, v in (("limit", limit), ("since", since)) if v is not None}
                answer = await self.client.get_json(server, path, query or None)
            else:
                body: dict[str, Any] = {"filter": {"generic_search_term": search}}
                body.update({k: v for k, v in (("limit", limit), ("since", since)) if v is not None})
                answer = await self.client.post_json(server, path, body)
        except FederationError as e:
            raise _mapped(e, server, "Room directory") from None
        chunk = answer.get("chunk") if isinstance(answer, Mapping) else None
        if not isinstance(chunk, list):
            raise MatrixError(502, "M_UNKNOWN", f"Bad room directory answer from {server}")
        assert isinstance(answer, Mapping)
        out: dict[str, Any] = {"chunk": [r for r in chunk if isinstance(r, Mapping) and isinstance(r.get("room_id"), str)]}
        for key, kind in (("next_batch", str), ("prev_batch", str), ("total_room_count_estimate", int)):
            if isinstance(answer.get(key), kind):
                out[key] = answer[key]
        return out

    async def hierarchy(self, server: str, room_id: str, suggested_only: bool, timeout_s: float) -> Any:
        """The server's ``/hierarchy`` answer about a room, or None when it
        failed (the caller tries another server)."""
        try:
            return await self.client.get_json(
                server, f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}",
                {"suggested_only": "true" if suggested_only else "false"}, timeout_s=timeout_s)
        except FederationError:
            return None

"""Tokens of the reading routes (/messages, /context, /sync, /relations)
and how a stored event is served to its reader."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import invalid_param
from ..storage.event_listings import EventRow, HistoryKey
from .accounts import Requester


MAX_STREAM_POS = 2**63 - 1
# The end of a stored client event whose last key is an empty "unsigned":
# in valid JSON a structural comma precedes that key (a comma inside a
# string would leave `unsigned"` outside it), and the final brace closes
# the top-level object, so the empty object is the event's own unsigned.
_EMPTY_UNSIGNED_LAST = ',"unsigned":{}}'


def parse_token(token: str | None, name: str = "from", *, backfilled: bool = False) -> int | None:
    """Stream tokens look like ``s123``; sync's next_batch is one too.
    ``backfilled``: a token of /relations or /threads, which may point
    below zero, among backfilled events (``s-12``: ``make_page_token``)."""
    if token is None or token == "":
        return None
    body = token[1:] if token.startswith("s") else token
    try:
        pos = int(body.split("_")[0])
    except ValueError:
        raise invalid_param(f"Invalid {name} token") from None
    if pos < (-MAX_STREAM_POS if backfilled else 0) or pos > MAX_STREAM_POS:  # stream positions are BIGINT
        raise invalid_param(f"Invalid {name} token")
    return pos


def make_token(pos: int) -> str:
    return f"s{max(pos, 0)}"


def make_page_token(pos: int) -> str:
    """A /relations or /threads page token: backfilled events have stream
    positions below zero, and a page that ends among them must go on from
    there (``make_token`` would start it again from zero)."""
    return f"s{pos}"


def parse_history_token(token: str | None, name: str = "from") -> HistoryKey | None:
    """/messages tokens: ``t<depth>-<stream>`` (a point in DAG order, what
    /messages hands out) or a stream token ``s<stream>`` (from /sync,
    /context, older /messages answers)."""
    if token is None or token == "":
        return None
    if not token.startswith("t"):
        pos = parse_token(token, name)
        return None if pos is None else (None, pos)
    try:  # backfilled events have stream positions below zero: t5--3
        depth_text, pos_text = token[1:].split("-", 1)
        depth, pos = int(depth_text), int(pos_text)
    except ValueError:
        raise invalid_param(f"Invalid {name} token") from None
    if not (0 <= depth <= MAX_STREAM_POS and -MAX_STREAM_POS <= pos <= MAX_STREAM_POS):
        raise invalid_param(f"Invalid {name} token")
    return depth, pos


def make_history_token(row: EventRow) -> str:
    return f"t{row.depth or 0}-{row.stream_pos or 0}"


def serve_event(row: EventRow, requester: Requester | None) -> Any:
    """The stored client JSON, untouched unless it is the requester's own
    event sent with a transaction id (then unsigned.transaction_id)."""
    if (
        requester is not None
        and row.txn_id is not None
        and row.sender == requester.user_id
        and row.sender_device == requester.device_id
    ):
        client = row.client
        if client.endswith(_EMPTY_UNSIGNED_LAST):
            # the common case (a message: client_event writes "unsigned"
            # last, empty): the transaction id goes into the stored text,
            # without a dict per event and its re-encoding (an initial
            # sync of a user's own rooms is mostly such events)
            return orjson.Fragment(f'{client[:-2]}"transaction_id":{orjson.dumps(row.txn_id).decode()}}}}}')
        ev = orjson.loads(client)
        ev.setdefault("unsigned", {})["transaction_id"] = row.txn_id
        return ev
    fragment = row.fragment
    if fragment is None:
        # (from the str itself: orjson copies it into the response as it
        # writes, and an encoded copy per row would double what a response
        # holds while it is built)
        fragment = row.fragment = orjson.Fragment(row.client)
    return fragment

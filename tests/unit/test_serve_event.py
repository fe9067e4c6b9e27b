"""How a stored event is served to its reader (services/history_tokens.py):
the sender's own device gets ``unsigned.transaction_id``, everyone else
the stored text as it is."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from coffeechat_home.protocol.client_events import client_event
from coffeechat_home.protocol.events import Event
from coffeechat_home.protocol.room_versions import KNOWN_ROOM_VERSIONS
from coffeechat_home.services.accounts import Requester
from coffeechat_home.services.history_tokens import serve_event
from coffeechat_home.storage.event_listings import EventRow

ALICE = "@alice:example.org"


def _row(client: dict[str, Any], txn_id: str | None = "m1.2") -> EventRow:
    return EventRow(
        client["event_id"], client["room_id"], 7, client["type"], client.get("state_key"), client["sender"],
        orjson.dumps(client).decode(), sender_device="DEV", txn_id=txn_id,
    )


def _served(row: EventRow, requester: Requester | None) -> Any:
    return orjson.loads(orjson.dumps({"e": serve_event(row, requester)}))["e"]


def _message(content: dict[str, Any]) -> dict[str, Any]:
    pdu = {
        "type": "m.room.message", "room_id": "!r:example.org", "sender": ALICE, "content": content,
        "origin_server_ts": 1, "depth": 3, "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"},
        "signatures": {},
    }
    return client_event(Event(pdu, "$e1", KNOWN_ROOM_VERSIONS["10"]))


@pytest.mark.parametrize("content", [
    {"msgtype": "m.text", "body": "hi"},
    # text that looks like the end of an event, inside the content
    {"body": ',"unsigned":{}}', "unsigned": {}},
    {"body": 'quote " and \\ and \u2028', "n": [1, {"unsigned": {}}]},
])
def test_own_device_gets_its_transaction_id(content: dict[str, Any]) -> None:
    client = _message(content)
    row = _row(client, txn_id='txn "1"\\')
    own = _served(row, Requester(ALICE, "DEV", False, "tok"))
    assert own == {**client, "unsigned": {"transaction_id": 'txn "1"\\'}}
    # another device of the sender, another user, no requester: as stored
    for other in (Requester(ALICE, "OTHER", False, "tok"), Requester("@bob:example.org", "DEV", False, "tok"), None):
        assert _served(row, other) == client


def test_unsigned_with_content_keeps_it() -> None:
    client = _message({"body": "hi"})
    client["unsigned"] = {"prev_content": {"body": "old"}, "replaces_state": "$old"}
    own = _served(_row(client), Requester(ALICE, "DEV", False, "tok"))
    assert own["unsigned"] == {"prev_content": {"body": "old"}, "replaces_state": "$old", "transaction_id": "m1.2"}


def test_no_transaction_id_is_served_as_stored() -> None:
    client = _message({"body": "hi"})
    assert _served(_row(client, txn_id=None), Requester(ALICE, "DEV", False, "tok")) == client

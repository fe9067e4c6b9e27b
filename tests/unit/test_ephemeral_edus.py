"""The typing, receipt and presence EDUs we send (protocol/edus.py) against
the spec's EDU schemas (server-server API, event-schemas/m.*.yaml)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from coffeechat_home.protocol.edus import presence_edu, receipt_edu, typing_edu
from coffeechat_home.services.presence import presence_content
from coffeechat_home.storage.presence import PresenceState

from ..conftest import require_spec


@functools.cache
def _load(path: str) -> Any:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _validate(edu_type: str, content: dict[str, Any]) -> None:
    folder = require_spec() / "data" / "api" / "server-server" / "definitions" / "event-schemas"
    registry: Registry = Registry(  # type: ignore[call-arg]
        retrieve=lambda uri: DRAFT202012.create_resource(_load(uri[len("file://"):])))
    schema = {"$ref": f"file://{folder / (edu_type + '.yaml')}"}
    Draft202012Validator(schema, registry=registry).validate({"edu_type": edu_type, "content": content})


def test_typing_edu_follows_the_spec() -> None:
    for typing in (True, False):
        _validate("m.typing", typing_edu("!r:a.example", "@u:a.example", typing))


@pytest.mark.parametrize("thread_id", [None, "main", "$root"])
def test_receipt_edu_follows_the_spec(thread_id: str | None) -> None:
    content = receipt_edu("!r:a.example", "m.read", "@u:a.example", "$e", 1_700_000_000_000, thread_id)
    _validate("m.receipt", content)
    data = content["!r:a.example"]["m.read"]["@u:a.example"]["data"]
    assert data.get("thread_id") == thread_id


@pytest.mark.parametrize("status_msg", [None, "brb"])
def test_presence_edu_follows_the_spec(status_msg: str | None) -> None:
    now = 1_700_000_000_000
    state = PresenceState("@u:a.example", "unavailable", status_msg, now - 5000)
    content = presence_edu("@u:a.example", presence_content(state, now))
    _validate("m.presence", content)
    [entry] = content["push"]
    assert entry["last_active_ago"] == 5000 and ("status_msg" in entry) == (status_msg is not None)


def test_a_bad_edu_fails_the_check() -> None:
    """The check can fail: a receipt without its data does."""
    content = receipt_edu("!r:a.example", "m.read", "@u:a.example", "$e", 1, None)
    del content["!r:a.example"]["m.read"]["@u:a.example"]["data"]
    with pytest.raises(ValidationError, match="data"):
        _validate("m.receipt", content)

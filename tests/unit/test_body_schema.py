"""api/body_schema.py against jsonschema: on bodies generated from every
schema in spec/requests (valid ones and broken ones), the same verdict and
the same reported error (keyword and place, which decide the errcode and
the message's location)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from coffeechat_home.api.body_schema import SUPPORTED, BodySchema

SCHEMAS = sorted((Path(__file__).resolve().parents[2] / "spec" / "requests").glob("*.json"))
JUNK: list[Any] = [None, True, False, 0, 1, -1, 2.5, 3.0, "", "x", "!room:s", "@u:s", "$ev", "a" * 600,
                   [], ["x"], [1], {}, {"key": "k"}, {"x": 1}]


def _keywords(schema: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        for k, v in schema.items():
            found.add(k)
            if k in ("properties", "$defs"):
                for sub in v.values():
                    found |= _keywords(sub)
            elif k in ("items", "additionalProperties", "propertyNames"):
                found |= _keywords(v)
            elif k in ("anyOf", "allOf"):
                for sub in v:
                    found |= _keywords(sub)
    return found


class _Gen:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def value(self, schema: Any, depth: int = 0) -> Any:
        rng = self.rng
        if not isinstance(schema, dict) or depth > 6 or rng.random() < 0.12:
            return rng.choice(JUNK)
        if "$ref" in schema:
            target: Any = self.root
            for part in schema["$ref"][2:].split("/"):
                target = target[part]
            return self.value(target, depth + 1)
        if "allOf" in schema:
            out: dict[str, Any] = {}
            for sub in schema["allOf"]:
                v = self.value(sub, depth + 1)
                if isinstance(v, dict):
                    out.update(v)
            return out
        if "anyOf" in schema:
            return self.value(rng.choice(schema["anyOf"]), depth + 1)
        if "enum" in schema:
            return rng.choice([*schema["enum"], "not-one"])
        t = schema.get("type")
        t = rng.choice(t) if isinstance(t, list) else t
        if t == "object" or "properties" in schema:
            out = {}
            for name, sub in schema.get("properties", {}).items():
                if name in schema.get("required", ()) and rng.random() < 0.9 or rng.random() < 0.5:
                    out[name] = self.value(sub, depth + 1)
            extra = schema.get("additionalProperties")
            if rng.random() < (0.6 if isinstance(extra, dict) else 0.15):
                name = rng.choice(["extra", "@u:s", "!r:s", "x" * 300, "DEVICE"])
                out[name] = self.value(extra, depth + 1) if isinstance(extra, dict) else 1
            return out
        if t == "array":
            return [self.value(schema.get("items", {}), depth + 1) for _ in range(rng.randrange(4))]
        if t == "string":
            lo, hi = schema.get("minLength", 0), schema.get("maxLength", 20)
            pick = rng.choice(["", "x" * max(lo, 1), "x" * (hi + 1), "!r:s", "@u:s", "$e", "é" * hi])
            return pick
        if t in ("integer", "number"):
            return rng.choice([0, 1, -1, 5, 10**6, 2.0, 2.5, True])
        if t == "boolean":
            return rng.choice([True, False, 0])
        return rng.choice(JUNK)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_same_outcome_as_jsonschema(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert _keywords(schema) <= SUPPORTED, _keywords(schema) - SUPPORTED
    reference = jsonschema.Draft202012Validator(schema)
    ours = BodySchema(schema)
    rng = random.Random(path.stem)
    outcomes = set()
    for _ in range(150):
        body = _Gen(schema, rng).value(schema)
        expected = jsonschema.exceptions.best_match(reference.iter_errors(body))
        got = ours.best_error(body)
        if expected is None:
            assert got is None, (body, got)
            outcomes.add("valid")
            continue
        assert got is not None, (body, expected.message)
        assert (got.keyword, list(got.absolute_path)) == (expected.validator, list(expected.absolute_path)), (
            body, expected.message, got.message)
        outcomes.add(got.keyword)
    assert "valid" in outcomes and len(outcomes) > 1, outcomes  # both kinds were tried


def test_unsupported_keyword_is_refused() -> None:
    with pytest.raises(ValueError):
        BodySchema({"type": "object", "dependentRequired": {"a": ["b"]}}).best_error({"a": 1})


def test_any_of_reports_the_branch_of_the_bodys_type() -> None:
    """A one-time key given as an object without "key": jsonschema's
    best_match descends into anyOf and reports the object branch's missing
    property (M_MISSING_PARAM), not the string branch's type error."""
    path = next(p for p in SCHEMAS if p.stem == "keys_upload")
    schema = json.loads(path.read_text())
    body = {"one_time_keys": {"signed_curve25519:AAAA": {"signatures": {}}}}
    expected = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(body))
    got = BodySchema(schema).best_error(body)
    assert expected is not None and got is not None
    assert got.keyword == expected.validator == "required"
    assert list(got.absolute_path) == list(expected.absolute_path) == ["one_time_keys", "signed_curve25519:AAAA"]

"""Validate our JSON responses against the spec's OpenAPI schemas.

Index: (method, full path template) -> operation, built from every file in
../shared/matrix-spec/data/api/{client-server,server-server}. ``$ref``s across
files are resolved by a ``referencing`` registry that reads YAML files.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .conftest import require_spec


@functools.cache
def _load_yaml(path: str) -> Any:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def _retrieve(uri: str) -> Resource:
    assert uri.startswith("file://"), uri
    return DRAFT202012.create_resource(_load_yaml(uri[len("file://"):]))


@functools.cache
def _registry() -> Registry:
    return Registry(retrieve=_retrieve)  # type: ignore[call-arg]


@functools.cache
def _index(api: str) -> dict[tuple[str, str], tuple[Path, str]]:
    spec = require_spec()
    out: dict[tuple[str, str], tuple[Path, str]] = {}
    for f in sorted((spec / "data" / "api" / api).glob("*.yaml")):
        doc = _load_yaml(str(f))
        if not isinstance(doc, dict) or "paths" not in doc:
            continue
        base = doc["servers"][0]["variables"]["basePath"]["default"]
        for key, ops in doc["paths"].items():
            for method in ops:
                out[(method.upper(), base + key.strip())] = (f, key)
    return out


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _template_regex(template: str) -> str:
    """Path template -> regex; a trailing parameter may be empty (state
    events with state_key "" are addressed as /state/{type} or /state/{type}/)."""
    segments = template.strip("/").split("/")
    parts = []
    for i, seg in enumerate(segments):
        is_param = seg.startswith("{") and seg.endswith("}")
        if is_param and i == len(segments) - 1:
            parts.append("(?:/[^/]*)?")
        else:
            parts.append("/" + ("[^/]+" if is_param else re.escape(seg)))
    if template.endswith("/"):  # e.g. /pushrules/ and /pushrules/global/
        parts.append("/")
    return "^" + "".join(parts) + "$"


def _match(api: str, method: str, path: str) -> tuple[Path, str, str]:
    index = _index(api)
    # the legacy r0 prefix shares v3's schemas
    candidate = re.sub(r"^/_matrix/client/r0/", "/_matrix/client/v3/", path)
    found = [
        (template.count("{"), f, key, m)
        for (m, template), (f, key) in index.items()
        if m == method and re.match(_template_regex(template), candidate)
    ]
    if found:
        # /room_keys/keys is also /room_keys/keys/{roomId} with an empty
        # trailing parameter: the template with fewer parameters wins.
        _, f, key, m = min(found, key=lambda x: x[0])
        return f, key, m
    raise AssertionError(f"no operation {method} {path} in the spec's {api} API")


def _error_schema(api: str) -> dict[str, Any]:
    path = require_spec() / "data" / "api" / api / "definitions" / "errors" / "error.yaml"
    return {"$ref": f"file://{path}"}


def response_schema(method: str, path: str, status: int, api: str = "client-server") -> dict[str, Any] | None:
    """The schema of a response, None when the spec gives it no body schema.
    Error statuses the operation does not list fall back to the standard
    error body (every endpoint may answer 401, 403, 429 ...)."""
    f, key, m = _match(api, method, path)
    doc = _load_yaml(str(f))
    responses = doc["paths"][key][m.lower()]["responses"]
    resp = responses.get(status, responses.get(str(status)))
    if resp is None:
        if status >= 400:
            return _error_schema(api)
        raise AssertionError(f"{method} {path}: the spec defines no {status} response")
    pointer = f"#/paths/{_escape(key)}/{m.lower()}/responses/{status}"
    # follow OpenAPI $refs outside the schema (e.g. '#/components/responses/..')
    while "$ref" in resp:
        ref = resp["$ref"]
        pointer = ref
        node: Any = doc
        for part in ref.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        resp = node
    if "content" not in resp:
        return _error_schema(api) if status >= 400 else None
    return {"$ref": f"file://{f}{pointer}/content/application~1json/schema"}


def validate_response(method: str, path: str, status: int, body: Any, api: str = "client-server") -> None:
    """Raise jsonschema.ValidationError if ``body`` breaks the spec's schema."""
    schema = response_schema(method, path, status, api)
    if schema is None:
        return
    Draft202012Validator(schema, registry=_registry()).validate(body)

"""Request body validation against spec/requests/*.json: the part of JSON
Schema (draft 2020-12) those files use, with jsonschema's choice of the
error to report (its ``best_match``).

The jsonschema package with its dependencies (referencing, rpds, the
metaschemas of every draft) is about 2.4 MB resident in a server that only
checks request bodies against some 40 small schemas of its own; this is
the subset they use. tests/unit/test_body_schema.py checks every schema
file uses nothing else, and compares the outcome with jsonschema's on
generated bodies (valid or not, and which error is reported).

Keywords: type, enum, properties, required, additionalProperties, items,
propertyNames, minLength, maxLength, pattern, minimum, maximum, maxItems,
minProperties, maxProperties, allOf, anyOf, $ref (to ``#/$defs/...``);
annotations ($schema, title, description, $defs) are ignored.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED = frozenset({
    "type", "enum", "properties", "required", "additionalProperties", "items", "propertyNames", "minLength",
    "maxLength", "pattern", "minimum", "maximum", "maxItems", "minProperties", "maxProperties", "allOf",
    "anyOf", "$ref", "$schema", "title", "description", "$defs",
})


@dataclass
class SchemaError:
    """One failed keyword: ``path`` is relative to where it was compared
    (as jsonschema's ``error.path``), ``absolute_path`` from the body."""

    keyword: str
    message: str
    path: tuple[str | int, ...]
    absolute_path: tuple[str | int, ...]
    schema: Any
    instance: Any
    context: list["SchemaError"] = field(default_factory=list)


def is_type(instance: Any, name: str) -> bool:
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "string":
        return isinstance(instance, str)
    if name == "boolean":
        return isinstance(instance, bool)
    if name == "null":
        return instance is None
    if isinstance(instance, bool):
        return False
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    if name == "number":
        return isinstance(instance, (int, float))
    raise ValueError(f"unknown JSON Schema type {name!r}")


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


class BodySchema:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema

    def iter_errors(self, instance: Any) -> Iterator[SchemaError]:
        return self._errors(self.root, instance, (), ())

    def best_error(self, instance: Any) -> SchemaError | None:
        """jsonschema.exceptions.best_match over the errors."""
        best = max(self.iter_errors(instance), key=_relevance, default=None)
        while best is not None and best.context:
            smallest = heapq.nsmallest(2, best.context, key=_relevance)
            if len(smallest) == 2 and _relevance(smallest[0]) == _relevance(smallest[1]):
                return best
            best = smallest[0]
        return best

    def _ref(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise ValueError(f"only local references: {ref!r}")
        target: Any = self.root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target

    def _errors(
        self, schema: Any, instance: Any, rel: tuple[str | int, ...], base: tuple[str | int, ...]
    ) -> Iterator[SchemaError]:
        """``rel``: the instance's path relative to where errors are
        compared; ``base``: what comes before it in the body."""
        if schema is True:
            return
        if schema is False:
            yield SchemaError("false", f"False schema does not allow {instance!r}", rel, base + rel, schema, instance)
            return

        def err(keyword: str, message: str, context: list[SchemaError] | None = None) -> SchemaError:
            return SchemaError(keyword, message, rel, base + rel, schema, instance, context or [])

        for keyword, value in schema.items():
            if keyword == "type":
                types = [value] if isinstance(value, str) else value
                if not any(is_type(instance, t) for t in types):
                    yield err("type", f"{instance!r} is not of type {', '.join(repr(t) for t in types)}")
            elif keyword == "enum":
                if not any(_equal(v, instance) for v in value):
                    yield err("enum", f"{instance!r} is not one of {value!r}")
            elif keyword == "properties":
                if isinstance(instance, dict):
                    for name, sub in value.items():
                        if name in instance:
                            yield from self._errors(sub, instance[name], rel + (name,), base)
            elif keyword == "required":
                if isinstance(instance, dict):
                    for name in value:
                        if name not in instance:
                            yield err("required", f"{name!r} is a required property")
            elif keyword == "additionalProperties":
                if isinstance(instance, dict):
                    extras = [k for k in instance if k not in schema.get("properties", {})]
                    if value is False:
                        if extras:
                            listed = ", ".join(repr(k) for k in extras)
                            verb = "was" if len(extras) == 1 else "were"
                            yield err("additionalProperties",
                                      f"Additional properties are not allowed ({listed} {verb} unexpected)")
                    else:
                        for k in extras:
                            yield from self._errors(value, instance[k], rel + (k,), base)
            elif keyword == "items":
                if isinstance(instance, list):
                    for i, item in enumerate(instance):
                        yield from self._errors(value, item, rel + (i,), base)
            elif keyword == "propertyNames":
                if isinstance(instance, dict):
                    for name in instance:
                        yield from self._errors(value, name, rel, base)
            elif keyword in ("minLength", "maxLength"):
                if isinstance(instance, str):
                    if keyword == "minLength" and len(instance) < value:
                        yield err(keyword, f"{instance!r} is too short")
                    elif keyword == "maxLength" and len(instance) > value:
                        yield err(keyword, f"{instance!r} is too long")
            elif keyword == "pattern":
                if isinstance(instance, str) and re.search(value, instance) is None:
                    yield err("pattern", f"{instance!r} does not match {value!r}")
            elif keyword in ("minimum", "maximum"):
                if is_type(instance, "number"):
                    if keyword == "minimum" and instance < value:
                        yield err(keyword, f"{instance!r} is less than the minimum of {value!r}")
                    elif keyword == "maximum" and instance > value:
                        yield err(keyword, f"{instance!r} is greater than the maximum of {value!r}")
            elif keyword == "maxItems":
                if isinstance(instance, list) and len(instance) > value:
                    yield err(keyword, f"{instance!r} is too long")
            elif keyword in ("minProperties", "maxProperties"):
                if isinstance(instance, dict):
                    if keyword == "minProperties" and len(instance) < value:
                        yield err(keyword, f"{instance!r} does not have enough properties")
                    elif keyword == "maxProperties" and len(instance) > value:
                        yield err(keyword, f"{instance!r} has too many properties")
            elif keyword == "allOf":
                for sub in value:
                    yield from self._errors(sub, instance, rel, base)
            elif keyword == "anyOf":
                context: list[SchemaError] = []
                for sub in value:
                    found = list(self._errors(sub, instance, (), base + rel))
                    if not found:
                        break
                    context.extend(found)
                else:
                    yield err("anyOf", f"{instance!r} is not valid under any of the given schemas", context)
            elif keyword == "$ref":
                yield from self._errors(self._ref(value), instance, rel, base)
            elif keyword not in SUPPORTED:
                raise ValueError(f"unsupported JSON Schema keyword {keyword!r}")


def _matches_type(error: SchemaError) -> bool:
    expected = error.schema.get("type") if isinstance(error.schema, dict) else None
    if expected is None:
        return False
    types = [expected] if isinstance(expected, str) else expected
    return any(is_type(error.instance, t) for t in types)


class _Path(tuple):  # type: ignore[type-arg]
    """A path compared as jsonschema compares its deques (str and int
    parts never meet at one position in practice; if they do, by kind)."""

    def __lt__(self, other: object) -> bool:
        assert isinstance(other, tuple)
        return _path_key(self) < _path_key(other)

    def __gt__(self, other: object) -> bool:
        assert isinstance(other, tuple)
        return _path_key(self) > _path_key(other)


def _path_key(path: tuple[Any, ...]) -> list[tuple[int, Any]]:
    return [(0, p) if isinstance(p, int) else (1, p) for p in path]


def _relevance(error: SchemaError) -> tuple[Any, ...]:
    return (-len(error.path), _Path(error.path), error.keyword not in ("anyOf", "oneOf"), False,
            not _matches_type(error))

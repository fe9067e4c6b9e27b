"""Matrix canonical JSON, JSON parsing and unpadded base64.

Canonical JSON (spec appendix "Canonical JSON"): UTF-8, no insignificant
whitespace, object keys sorted by code point, non-ASCII text not escaped,
numbers only integers in ``[-(2**53)+1, (2**53)-1]``, no floats.

``orjson`` with ``OPT_SORT_KEYS`` gives byte-identical output to the
reference encoder (``json.dumps(ensure_ascii=False, sort_keys=True,
separators=(",", ":"))``) for exactly that value domain, and
``OPT_STRICT_INTEGER`` enforces the 53-bit range. orjson does not reject
floats, so ``encode_canonical_json`` walks the value first; hot paths that
have already checked a PDU once use ``encode_canonical_json_trusted``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from .errors import CanonicalJSONError, JSONParseError

__all__ = [
    "MAX_SAFE_INTEGER",
    "MIN_SAFE_INTEGER",
    "CanonicalJSONError",
    "JSONParseError",
    "check_canonical_json_values",
    "encode_canonical_json",
    "encode_canonical_json_trusted",
    "parse_json",
    "encode_base64",
    "decode_base64",
]

MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1

_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


# --- validation -------------------------------------------------------------


def check_canonical_json_values(obj: Any) -> None:
    """Raise ``CanonicalJSONError`` unless ``obj`` is encodable as canonical JSON.

    Allowed: dict/Mapping with str keys, list/tuple, str, int within the safe
    range, bool, None. Floats (even integral ones) and other types are
    rejected; the message names the offending path (e.g. ``content.a[2]``).
    """
    try:
        _check(obj)
    except _BadValue as e:
        where = "".join(reversed(e.path))
        where = (where[1:] if where.startswith(".") else where) or "<root>"
        raise CanonicalJSONError(e.problem.replace(_WHERE, where)) from None
    except RecursionError:
        raise CanonicalJSONError("JSON value is nested too deeply") from None


_WHERE = "\x00where\x00"  # placeholder for the path in _BadValue messages


class _BadValue(Exception):
    """Internal: carries the problem up while the path is collected."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []


def _check(obj: Any) -> None:
    # Fast on success: no path strings are built unless something is wrong.
    t = type(obj)
    if t is str or obj is None or t is bool:
        return
    if t is int:
        if not MIN_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise _BadValue(f"integer out of range at {_WHERE}: {obj}")
        return
    if t is dict or (t is not list and t is not tuple and isinstance(obj, Mapping)):
        for k, v in obj.items():
            if type(k) is not str:
                raise _BadValue(f"non-string object key {k!r} at {_WHERE}")
            try:
                _check(v)
            except _BadValue as e:
                e.path.append(f".{k}")
                raise
        return
    if t is list or t is tuple:
        for i, v in enumerate(obj):
            try:
                _check(v)
            except _BadValue as e:
                e.path.append(f"[{i}]")
                raise
        return
    if isinstance(obj, float):
        raise _BadValue(f"float value not allowed at {_WHERE}: {obj!r}")
    if isinstance(obj, int):  # bool/IntEnum subclasses: check the range only
        _check(int(obj))
        return
    if isinstance(obj, str):
        return
    raise _BadValue(f"value of type {t.__name__} not allowed at {_WHERE}")


# --- encoding ---------------------------------------------------------------


def encode_canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes, rejecting what the spec forbids."""
    check_canonical_json_values(obj)
    return encode_canonical_json_trusted(obj)


def encode_canonical_json_trusted(obj: Any) -> bytes:
    """Encode a value already known to hold no floats (checked once at the edge).

    Out-of-range integers and non-string keys are still rejected (by orjson);
    a float would be emitted as orjson prints it, so do not pass unchecked data.
    """
    try:
        return orjson.dumps(obj, option=_ORJSON_OPTS)
    except TypeError:
        pass
    # Slow path: Mapping types orjson does not know (e.g. MappingProxyType).
    try:
        return orjson.dumps(_to_plain(obj), option=_ORJSON_OPTS)
    except TypeError as e:
        raise CanonicalJSONError(f"cannot encode as canonical JSON: {e}") from None
    except RecursionError:
        raise CanonicalJSONError("JSON value is nested too deeply") from None


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# --- parsing ----------------------------------------------------------------


def parse_json(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text, normalising numbers the way canonical JSON needs.

    Integral numbers written with a fraction or exponent (``1e10``, ``2.0``)
    become ``int``; other non-integral numbers stay ``float`` (so
    ``check_canonical_json_values`` can reject them with a path). ``NaN`` and
    ``Infinity`` and invalid UTF-8 raise ``JSONParseError``.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise JSONParseError(f"invalid JSON: {e}") from None
    if not _contains_float(value):
        return value
    # orjson parsed some number as a float (a fraction, an exponent, or an
    # integer beyond 64 bits): re-parse with exact decimal handling.
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        return json.loads(text, parse_float=_parse_number, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise JSONParseError(f"invalid JSON: {e}") from None


def _contains_float(obj: Any) -> bool:
    t = type(obj)
    if t is float:
        return True
    if t is dict:
        return any(_contains_float(v) for v in obj.values())
    if t is list:
        return any(_contains_float(v) for v in obj)
    return False


def _parse_number(text: str) -> int | float:
    try:
        d = Decimal(text)
    except InvalidOperation:  # pragma: no cover - json only passes numbers
        raise JSONParseError(f"invalid number {text!r}") from None
    if d.is_finite() and d == d.to_integral_value():
        # Huge exponents would build enormous ints; such values are outside
        # the canonical range anyway, so they stay floats (rejected later).
        if d.adjusted() <= 30:
            return int(d)
    f = float(text)
    if f != f or f in (float("inf"), float("-inf")):
        raise JSONParseError(f"number out of range: {text}")
    return f


def _reject_constant(name: str) -> Any:
    raise JSONParseError(f"invalid JSON constant {name}")


# --- unpadded base64 ---------------------------------------------------------


def encode_base64(data: bytes, urlsafe: bool = False) -> str:
    """Unpadded base64 (standard alphabet, or the URL-safe one)."""
    enc = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return enc.rstrip(b"=").decode("ascii")


def decode_base64(s: str, urlsafe: bool = False) -> bytes:
    """Decode base64 with or without padding; raise ``ValueError`` if malformed."""
    try:
        raw = s.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("base64 text must be ASCII") from None
    raw += b"=" * (-len(raw) % 4)
    try:
        if urlsafe:
            if b"+" in raw or b"/" in raw:
                raise ValueError("not URL-safe base64")
            return base64.b64decode(raw, altchars=b"-_", validate=True)
        return base64.b64decode(raw, validate=True)
    except binascii.Error as e:
        raise ValueError(f"invalid base64: {e}") from None

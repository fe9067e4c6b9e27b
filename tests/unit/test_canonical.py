"""Canonical JSON, JSON parsing and unpadded base64 (spec appendices)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coffeechat_home.protocol.canonical import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJSONError,
    JSONParseError,
    check_canonical_json_values,
    decode_base64,
    encode_base64,
    encode_canonical_json,
    encode_canonical_json_trusted,
    parse_json,
)

# --- spec vectors --------------------------------------------------------------


@pytest.mark.needs_spec
def test_unpadded_base64_vectors(spec_dir: Path, unpadded_base64_vector: dict[str, Any]) -> None:
    v = unpadded_base64_vector
    raw = v["input_utf8"].encode("utf-8")
    assert encode_base64(raw) == v["expected"]
    assert decode_base64(v["expected"]) == raw


@pytest.mark.needs_spec
def test_canonical_json_vectors(spec_dir: Path, canonical_json_vector: dict[str, Any]) -> None:
    v = canonical_json_vector
    value = parse_json(v["input_json_text"])
    assert encode_canonical_json(value) == v["expected_canonical"].encode("utf-8")
    # The same from bytes input (as read off the wire).
    assert encode_canonical_json(parse_json(v["input_json_text"].encode())) == v[
        "expected_canonical"
    ].encode("utf-8")


@pytest.mark.needs_spec
def test_canonical_json_10_needs_number_normalisation(test_vectors: dict[str, Any]) -> None:
    (v,) = [v for v in test_vectors["vectors"] if v["id"] == "canonical-json-10"]
    # The caveat: the stdlib parser alone yields a float that the library prints as 1e10.0.
    assert canonicaljson.encode_canonical_json(json.loads(v["input_json_text"])) != v[
        "expected_canonical"
    ].encode()
    assert parse_json(v["input_json_text"]) == {"a": 0, "b": 10000000000}
    assert type(parse_json(v["input_json_text"])["b"]) is int


@pytest.mark.needs_spec
def test_every_vector_kind_is_covered(test_vectors: dict[str, Any]) -> None:
    # Each kind has a test taking a `<kind>_vector` argument (tests/unit/conftest.py);
    # a new kind in the file must get one too.
    kinds = {v["kind"] for v in test_vectors["vectors"]}
    assert kinds == {
        "unpadded_base64", "canonical_json", "json_signing", "event_signing",
        "redaction", "reference_hash", "signed_object_check",
    }


# --- encoding ----------------------------------------------------------------------


def test_encoding_rules() -> None:
    assert encode_canonical_json({"b": 1, "a": [True, False, None]}) == b'{"a":[true,false,null],"b":1}'
    assert encode_canonical_json({"日": "本", "a": "\u00e9"}) == '{"a":"é","日":"本"}'.encode()
    # Control characters use the escapes of the canonical grammar (lowercase hex).
    assert encode_canonical_json("\x00\x1f\n\t\"\\") == b'"\\u0000\\u001f\\n\\t\\"\\\\"'
    # Keys sorted by code point, astral plane after the BMP.
    assert encode_canonical_json({"\U0001f600": 1, "\uffff": 2}) == '{"\uffff":2,"\U0001f600":1}'.encode()
    assert encode_canonical_json([MAX_SAFE_INTEGER, MIN_SAFE_INTEGER]) == (
        b"[9007199254740991,-9007199254740991]"
    )


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"a": 1.5}, "float value not allowed at a"),
        ({"a": 1.0}, "float value not allowed at a"),
        ({"a": float("nan")}, "float"),
        ({"a": [1, {"b": 2**53}]}, "integer out of range at a[1].b"),
        ({"a": -(2**53)}, "integer out of range"),
        ({1: "x"}, "non-string object key 1 at <root>"),
        ({"k": {frozenset({1}): "x"}}, "non-string object key frozenset({1}) at k"),
        ({".a": [0, 0.5]}, "float value not allowed at .a[1]: 0.5"),
        ({"a": object()}, "type object not allowed"),
        ({"a": b"bytes"}, "type bytes not allowed"),
        ({"a": {1, 2}}, "type set not allowed"),
    ],
)
def test_rejected_values(value: Any, fragment: str) -> None:
    with pytest.raises(CanonicalJSONError, match=__import__("re").escape(fragment)):
        check_canonical_json_values(value)
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)


def test_trusted_encoder_still_rejects_range_keys_and_surrogates() -> None:
    for bad in ({"a": 2**53}, {1: 2}, {"a": "\ud800"}):
        with pytest.raises(CanonicalJSONError):
            encode_canonical_json_trusted(bad)


def test_non_dict_mappings_and_tuples_encode() -> None:
    value = types.MappingProxyType({"b": (1, 2), "a": types.MappingProxyType({"z": None})})
    assert encode_canonical_json(value) == b'{"a":{"z":null},"b":[1,2]}'


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(CanonicalJSONError, match="nested too deeply"):
        encode_canonical_json(value)


# --- parsing --------------------------------------------------------------------------


def test_parse_json_number_normalisation() -> None:
    out = parse_json(b'{"a":-0,"b":1e10,"c":2.0,"d":-0.0,"e":1.5,"f":1E2,"g":123456789012345678901234567890}')
    assert out == {"a": 0, "b": 10**10, "c": 2, "d": 0, "e": 1.5, "f": 100, "g": 123456789012345678901234567890}
    assert [type(out[k]) for k in "abcdf"] == [int] * 5
    assert type(out["e"]) is float
    # Non-integral floats and out-of-range integers then fail the canonical check.
    with pytest.raises(CanonicalJSONError, match="float value not allowed at e"):
        check_canonical_json_values(out)


def test_parse_json_exact_for_numbers_floats_cannot_hold() -> None:
    # 2**52 + 0.5 rounds to an integral double: exact parsing keeps it non-integral.
    assert type(parse_json("4503599627370495.5")) is float
    assert parse_json("9007199254740993.0") == 9007199254740993  # exact, then out of range
    with pytest.raises(CanonicalJSONError):
        check_canonical_json_values(parse_json("[9007199254740993.0]"))


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"a": -Infinity}', "1e999", "{", "", b"\xff", '{"a":1,}', '"\\ud800"'],
)
def test_parse_json_rejects(text: str | bytes) -> None:
    with pytest.raises(JSONParseError):
        parse_json(text)


def test_parse_json_keeps_strings_and_unicode() -> None:
    assert parse_json('{"a":"\\u65E5","b":"1e10"}') == {"a": "日", "b": "1e10"}


# --- base64 -----------------------------------------------------------------------------


def test_base64_padding_and_alphabets() -> None:
    data = bytes([0xFB, 0xFF, 0xBF])
    assert encode_base64(data) == "+/+/"
    assert encode_base64(data, urlsafe=True) == "-_-_"
    assert decode_base64("Zm9vYg==") == decode_base64("Zm9vYg") == b"foob"
    assert decode_base64("-_-_", urlsafe=True) == data
    for bad, urlsafe in (("Zm9v!", False), ("Z", False), ("+/+/", True), ("-_-_", False), ("日", False)):
        with pytest.raises(ValueError):
            decode_base64(bad, urlsafe=urlsafe)


# --- property: orjson fast path == reference encoder ------------------------------------

_ints = st.integers(min_value=MIN_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | _ints | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fast_path_matches_canonicaljson(value: Any) -> None:
    expected = canonicaljson.encode_canonical_json(value)
    assert encode_canonical_json(value) == expected
    assert encode_canonical_json_trusted(value) == expected
    # And it round-trips through our parser.
    assert parse_json(expected) == value


# --- found by mutation testing (tools/mutation.py) ---------------------------------------


def test_error_paths_at_the_root_and_in_lists() -> None:
    with pytest.raises(CanonicalJSONError, match=r"float value not allowed at \[1\]: 1\.5"):
        check_canonical_json_values([1, 1.5])
    with pytest.raises(CanonicalJSONError, match=r"float value not allowed at <root>: 2\.5"):
        check_canonical_json_values(2.5)


def test_int_subclasses_are_range_checked() -> None:
    import enum

    class Level(enum.IntEnum):
        LOW = 1
        HUGE = 2**60

    check_canonical_json_values({"a": Level.LOW})
    with pytest.raises(CanonicalJSONError, match="integer out of range at a"):
        check_canonical_json_values({"a": Level.HUGE})


def test_parse_json_normalises_numbers_inside_lists() -> None:
    out = parse_json("[2.0, [3e0], {\"x\": [4.0]}]")
    assert out == [2, [3], {"x": [4]}]
    assert type(out[0]) is int and type(out[1][0]) is int and type(out[2]["x"][0]) is int


def test_parse_json_integral_exponent_bound() -> None:
    # up to 10**30 integral numbers become ints; beyond, they stay floats
    # (outside the canonical range anyway) instead of building huge ints
    assert parse_json("1e30") == 10**30 and type(parse_json("1e30")) is int
    assert type(parse_json("1e31")) is float
    assert type(parse_json("[1e31]")[0]) is float


def test_base64_strips_only_padding() -> None:
    assert encode_base64(bytes([0, 0, 23])) == "AAAX"
    assert encode_base64(bytes([0, 0, 23]), urlsafe=True) == "AAAX"
    assert encode_base64(b"\x00") == "AA"


@pytest.mark.parametrize(("bad", "urlsafe"), [("YW+i", True), ("YW/i", True), ("YW*i", True), ("YW*i", False)])
def test_base64_rejects_characters_outside_the_alphabet(bad: str, urlsafe: bool) -> None:
    with pytest.raises(ValueError):
        decode_base64(bad, urlsafe=urlsafe)

"""Fixtures for the protocol unit tests: spec test vectors.

Test arguments named ``<kind>_vector`` (e.g. ``canonical_json_vector``) are
parametrized with every vector of that kind in test-vectors.json, one test
per vector id. When ../shared is absent there is a single placeholder case;
such tests also take the ``spec_dir`` fixture, which skips them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.conftest import SPEC_DIR, require_spec
except ImportError:  # tests/ not importable as a package: load it by path
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "_coffeechat_tests_conftest", Path(__file__).resolve().parent.parent / "conftest.py"
    )
    assert _spec is not None and _spec.loader is not None
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    SPEC_DIR, require_spec = _mod.SPEC_DIR, _mod.require_spec


@pytest.fixture
def spec_dir() -> Path:
    """../shared/matrix-spec, or skip the test with a clear reason."""
    return require_spec()


@pytest.fixture
def test_vectors(spec_dir: Path) -> dict[str, Any]:
    with open(spec_dir / "test-vectors.json", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


_VECTOR_ARGS = {
    "unpadded_base64_vector": "unpadded_base64",
    "canonical_json_vector": "canonical_json",
    "json_signing_vector": "json_signing",
    "event_signing_vector": "event_signing",
    "redaction_vector": "redaction",
    "reference_hash_vector": "reference_hash",
    "signed_object_check_vector": "signed_object_check",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    path = Path(SPEC_DIR) / "test-vectors.json"
    for arg, kind in _VECTOR_ARGS.items():
        if arg not in metafunc.fixturenames:
            continue
        if not path.exists():
            metafunc.parametrize(arg, [None], ids=["spec-missing"])
            continue
        with open(path, encoding="utf-8") as f:
            vectors = [v for v in json.load(f)["vectors"] if v["kind"] == kind]
        assert vectors, f"no {kind} vectors in {path}"
        metafunc.parametrize(arg, vectors, ids=[v["id"] for v in vectors])

"""Shared test fixtures: paths to ../shared and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COFFEECHAT_SHARED", ROOT.parent / "shared"))
SPEC_DIR = SHARED / "matrix-spec"


def require_spec() -> Path:
    """Return the matrix-spec folder, or skip the test with a clear reason."""
    if not (SPEC_DIR / "test-vectors.json").exists():
        pytest.skip(f"../shared/matrix-spec not found at {SPEC_DIR}: spec-derived checks skipped")
    return SPEC_DIR

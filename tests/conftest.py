"""Shared test fixtures: paths to ../shared and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COFFEECHAT_SHARED", ROOT.parent / "shared"))
SPEC_DIR = SHARED / "matrix-spec"
HAVE_SPEC = (SPEC_DIR / "test-vectors.json").exists()


def require_spec() -> Path:
    """Return the matrix-spec folder, or skip the test with a clear reason."""
    if not (SPEC_DIR / "test-vectors.json").exists():
        pytest.skip(f"../shared/matrix-spec not found at {SPEC_DIR}: spec-derived checks skipped")
    return SPEC_DIR


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say so in the summary when responses went unvalidated (the counted
    skip is tests/test_response_validation.py)."""
    if not HAVE_SPEC:
        terminalreporter.write_sep(
            "!", f"response schema validation was OFF: {SPEC_DIR} not found", yellow=True, bold=True
        )

"""Typing and lint are part of the suite (so CI, which runs the README's test
command, enforces them): ``mypy --strict`` on the package and ``ruff check``
with the rule set chosen in pyproject.toml. Both are pinned in the ``test``
extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_is_clean() -> None:
    r = _run("mypy", "--config-file", "pyproject.toml")
    assert r.returncode == 0, f"mypy --strict found problems:\n{r.stdout}{r.stderr}"
    assert "Success: no issues found" in r.stdout, r.stdout


def test_ruff_is_clean() -> None:
    r = _run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, f"ruff check found problems:\n{r.stdout}{r.stderr}"

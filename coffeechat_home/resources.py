"""Where the SQL migrations and request schemas are, installed or not.

In the repository they are the top-level ``schema/`` and ``spec/``; an
installed package carries them as ``coffeechat_home._schema`` and
``coffeechat_home._spec`` (see pyproject.toml)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _find(repo_name: str, package: str) -> Path:
    local = _REPO / repo_name
    if local.is_dir():
        return local
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{repo_name}/ not found: reinstall coffeechat-home")
    return Path(list(spec.submodule_search_locations)[0])


def schema_dir() -> Path:
    return _find("schema", "coffeechat_home._schema")


def spec_dir() -> Path:
    return _find("spec", "coffeechat_home._spec")

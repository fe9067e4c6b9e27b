"""`pip install .` (the README's first command) installs every package of
the code: pyproject.toml lists them by hand (schema/ and spec/ are mapped
in), so a new subpackage missing from the list would install a server that
cannot start (it happened: services/e2e, services/federation and
api/federation were left out, and only editable installs worked)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_for_installation() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "coffeechat_home").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    mapped = set(config["tool"]["setuptools"]["package-dir"])
    assert listed - on_disk == mapped

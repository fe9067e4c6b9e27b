"""The protocol package is pure: it imports no I/O library and nothing of
ours outside itself (DESIGN.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parents[2] / "coffeechat_home" / "protocol"
FORBIDDEN = {"aiohttp", "asyncpg", "asyncio", "socket", "requests", "urllib.request", "http"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." * node.level + (node.module or ""))
            elif node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PROTOCOL.glob("*.py")), ids=lambda p: p.name)
def test_protocol_module_is_pure(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN and name not in FORBIDDEN, f"{path.name} imports {name}"
        if name.startswith(".."):
            pytest.fail(f"{path.name} imports {name} from outside protocol/")
        assert not name.startswith("coffeechat_home") or name.startswith("coffeechat_home.protocol"), name


def test_check_finds_an_impure_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncpg\nfrom ..storage import events\n")
    assert {"asyncpg", "..storage"} <= _imports(bad)

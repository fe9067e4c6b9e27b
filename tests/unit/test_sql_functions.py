"""Every SQL function the code calls is one both engines provide: the list
in schema/FUNCTIONS.md (with its sources). Scans string literals that look
like SQL in coffeechat_home/**/*.py and the statements in schema/*.sql."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A statement, not prose: starts with a SQL verb, or holds one of these
# clauses (SQL fragments built up by f-strings).
_SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|WITH|ALTER|DROP|BEGIN)\b"
    r"|\b(SELECT|FROM|WHERE|RETURNING|VALUES|ORDER BY|ON CONFLICT)\b"
)
_CALL = re.compile(r"(?<![\w.$:'\"])([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# words that precede a parenthesis without being a call
_KEYWORDS = {
    "and", "any", "all", "as", "by", "conflict", "exists", "from", "having", "in", "key", "lateral", "not", "on",
    "or", "over", "select", "set", "values", "where", "using", "with", "filter", "primary", "unique", "references",
    "hash", "index", "table", "into", "join", "recursive", "check", "array", "row", "when", "then", "else", "is",
}
# the word before a name that makes it a table, index, CTE or alias name
_NAMING = {"into", "table", "exists", "as", "update", "recursive", "on", "index", "with"}


def _allowed() -> set[str]:
    text = (ROOT / "schema" / "FUNCTIONS.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))


def _calls(sql: str) -> set[str]:
    names = set()
    for m in _CALL.finditer(sql):
        name = m.group(1).lower()
        before = sql[: m.start()].split()
        if name in _KEYWORDS or (before and before[-1].lower() in _NAMING):
            continue
        names.add(name)
    return names


def _python_sql(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " ? " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        else:
            continue
        if _SQL.search(text):
            out.append(text)
    return out


def _used() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "coffeechat_home").rglob("*.py")):
        for sql in _python_sql(path):
            for name in _calls(sql):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "schema").glob("*.sql")):
        sql = "\n".join(line.split("--")[0] for line in path.read_text(encoding="utf-8").splitlines())
        for name in _calls(sql):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return used


def test_every_sql_function_is_on_the_list_of_both_engines() -> None:
    allowed = _allowed()
    used = _used()
    unknown = {name: sorted(files) for name, files in used.items() if name not in allowed}
    assert not unknown, (
        f"SQL functions not in schema/FUNCTIONS.md (check both engines provide them, then add them): {unknown}"
    )
    # the scan finds calls (it would be vacuous otherwise)
    assert {"nextval", "count", "unnest", "strpos"} <= set(used)


def test_the_scan_catches_a_postgresql_only_function() -> None:
    assert "starts_with" in _calls("SELECT 1 FROM events WHERE starts_with(type, $1)")
    assert "starts_with" not in _allowed()
    # table, index, CTE and alias names followed by a parenthesis are not calls
    assert _calls(
        "WITH RECURSIVE chain (id) AS (SELECT 1) INSERT INTO users (a) SELECT x FROM unnest($1::TEXT[]) AS t(x) "
        "ON CONFLICT (id) DO NOTHING; CREATE INDEX IF NOT EXISTS i ON events (room_id) USING HASH"
    ) == {"unnest"}

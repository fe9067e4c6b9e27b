"""Mutation testing of the protocol library, on demand (not in CI: it is slow).

    python tools/mutation.py                    # the five core modules below
    python tools/mutation.py auth state_res     # chosen protocol modules
    python tools/mutation.py --survivors        # also list the surviving mutants
    python tools/mutation.py --report-only      # score of the last run, no new run

It runs mutmut (configured in pyproject.toml's ``[tool.mutmut]``: mutate
``coffeechat_home/protocol/``, run ``tests/unit``) niced, one mutant at a time
by default (``--jobs``), module by module, then prints killed / survived per
module and the share of surviving mutants. mutmut keeps its state in
``./mutants``; unchanged mutants are not re-run. ``python -m mutmut show NAME``
prints the diff of one mutant.

Survivors are split in two: those that only change the wording of an error
message (the text of a raised exception other than AuthError's tested rule
id; clients get the errcode and tests check the rule ids, not prose), and
the rest. The remaining ones are explained in tools/MUTATION.md rather than
"killed" with a contrived test.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = ["auth", "power_levels", "state_res", "redaction", "canonical"]


def results() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and name.startswith("coffeechat_home."):
            status[name] = state
    return status


def _diff(name: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if not line.startswith(("---", "+++", "#", "@@"))]


_RULE_ID = re.compile(r"AuthError\(\s*(\"[^\"]*\"|None)")


def wording_only(name: str) -> bool:
    """True if the mutant only rewords an error message (see the docstring)."""
    lines = _diff(name)
    minus = [i for i, line in enumerate(lines) if line.startswith("-")]
    plus = [i for i, line in enumerate(lines) if line.startswith("+")]
    if len(minus) != 1 or len(plus) != 1:
        return False
    old, new = lines[minus[0]][1:].strip(), lines[plus[0]][1:].strip()
    if old.startswith("raise "):
        if "AuthError(" in old:
            a, b = _RULE_ID.search(old), _RULE_ID.search(new)
            return bool(a and b and a.group(1) == b.group(1))
        return True
    # a message on its own line inside a multi-line raise: prose has spaces, rule ids do not
    before = [line for line in lines[max(0, minus[0] - 3):minus[0]]]
    return old[:1] in "\"'f" and " " in old and any("raise " in line for line in before)


def module_of(name: str) -> str:
    # coffeechat_home.protocol.<module>.x_<function>__mutmut_<n>
    return name.split(".")[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", default=CORE_MODULES, help="protocol modules (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1: the machine is shared)")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--report-only", action="store_true", help="print the score of the last run")
    args = parser.parse_args()

    env = dict(os.environ)
    # mutmut runs the tests from ./mutants, where ../shared is not a sibling.
    env.setdefault("COFFEECHAT_SHARED", str(ROOT.parent / "shared"))
    started = time.monotonic()
    if not args.report_only:
        for module in args.modules:
            pattern = f"coffeechat_home.protocol.{module}.*"
            print(f"== mutmut run {pattern}", flush=True)
            subprocess.run(
                ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs), pattern],
                cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL,
            )
    elapsed = time.monotonic() - started

    status = results()
    per_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wording: set[str] = set()
    for name, state in status.items():
        if module_of(name) in args.modules:
            per_module[module_of(name)][state] += 1
            if state == "survived" and wording_only(name):
                wording.add(name)
                per_module[module_of(name)]["wording"] += 1
    print(f"\n{'module':<14}{'mutants':>9}{'killed':>8}{'timeout':>9}{'survived':>10}{'other':>7}{'survive %':>11}"
          f"{'wording':>9}{'rest %':>8}")
    total: collections.Counter[str] = collections.Counter()
    for module in args.modules:
        c = per_module[module]
        total.update(c)
        _row(module, c)
    _row("total", total)
    if not args.report_only:
        print(f"\n{elapsed / 60:.1f} min")
    print("\nsurvive %: all survivors / checked mutants; wording: survivors that only reword an error message;"
          "\nrest %: the other survivors / checked mutants")
    if args.survivors:
        print("\nsurviving mutants (python -m mutmut show NAME), wording-only ones marked (w):")
        for name, state in sorted(status.items()):
            if module_of(name) in args.modules and state == "survived":
                print(("  (w) " if name in wording else "      ") + name)
    return 0


def _row(label: str, c: collections.Counter[str]) -> None:
    killed, timeout, survived, wording = c["killed"], c["timeout"], c["survived"], c["wording"]
    n = sum(c.values()) - wording
    other = n - killed - timeout - survived
    checked = killed + timeout + survived
    share = f"{100 * survived / checked:.1f}" if checked else "-"
    rest = f"{100 * (survived - wording) / checked:.1f}" if checked else "-"
    print(f"{label:<14}{n:>9}{killed:>8}{timeout:>9}{survived:>10}{other:>7}{share:>11}{wording:>9}{rest:>8}")


if __name__ == "__main__":
    sys.exit(main())

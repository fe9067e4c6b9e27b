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

Surviving mutants that are equivalent (they cannot change any result) are
explained in tools/MUTATION.md rather than "killed" with a contrived test.
"""

from __future__ import annotations

import argparse
import collections
import os
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
    for name, state in status.items():
        if module_of(name) in args.modules:
            per_module[module_of(name)][state] += 1
    print(f"\n{'module':<14}{'mutants':>9}{'killed':>8}{'timeout':>9}{'survived':>10}{'other':>7}{'survive %':>11}")
    total: collections.Counter[str] = collections.Counter()
    for module in args.modules:
        c = per_module[module]
        total.update(c)
        _row(module, c)
    _row("total", total)
    if not args.report_only:
        print(f"\n{elapsed / 60:.1f} min")
    if args.survivors:
        print("\nsurviving mutants (python -m mutmut show NAME):")
        for name, state in sorted(status.items()):
            if module_of(name) in args.modules and state == "survived":
                print("  " + name)
    return 0


def _row(label: str, c: collections.Counter[str]) -> None:
    n = sum(c.values())
    killed, timeout, survived = c["killed"], c["timeout"], c["survived"]
    other = n - killed - timeout - survived
    checked = killed + timeout + survived
    share = f"{100 * survived / checked:.1f}" if checked else "-"
    print(f"{label:<14}{n:>9}{killed:>8}{timeout:>9}{survived:>10}{other:>7}{share:>11}")


if __name__ == "__main__":
    sys.exit(main())

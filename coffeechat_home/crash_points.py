"""Crash points for fault tests: ``crash_point(name)`` ends the process at
once (like kill -9: no cleanup, nothing flushed) when the environment
variable ``COFFEECHAT_TEST_CRASH_POINT`` names it; otherwise it does
nothing. Tests set it on a server subprocess to stop it between a commit
and the step after it (e.g. tests/federation/test_e2e_across_servers.py)."""

from __future__ import annotations

import os

ENV = "COFFEECHAT_TEST_CRASH_POINT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(137)

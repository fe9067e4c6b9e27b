"""An opt-in profiler for benchmarks: with ``BENCH_CPROFILE_DIR`` set,
SIGUSR1 starts cProfile in the server process and SIGUSR2 stops it and
writes ``cprofile-<n>.prof`` there (and ``gc-<n>.txt``, the garbage
collector's pauses meanwhile) (bench/bench_fanout.py --cprofile wraps a
fan-out in them). Unset, nothing is installed."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import itertools
import os
import signal
import time
from pathlib import Path

ENV = "BENCH_CPROFILE_DIR"


def install(loop: asyncio.AbstractEventLoop) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    out = Path(folder)
    runs = itertools.count(1)
    current: list[cProfile.Profile] = []
    gc_runs: list[tuple[int, float, int]] = []  # (generation, seconds, collected)
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if not current:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_runs.append((info["generation"], time.perf_counter() - gc_started[0], info["collected"]))

    gc.callbacks.append(on_gc)

    def start() -> None:
        if not current:
            current.append(cProfile.Profile())
            current[0].enable()

    def stop() -> None:
        if current:
            prof = current.pop()
            prof.disable()
            out.mkdir(parents=True, exist_ok=True)
            n = next(runs)
            prof.dump_stats(str(out / f"cprofile-{n}.prof"))
            # the collector's pauses (attributed by cProfile to whatever ran)
            lines = [f"{g} {s * 1000:.3f} ms {c} collected" for g, s, c in gc_runs]
            (out / f"gc-{n}.txt").write_text("\n".join(lines) + "\n")
            gc_runs.clear()

    loop.add_signal_handler(signal.SIGUSR1, start)
    loop.add_signal_handler(signal.SIGUSR2, stop)

"""An opt-in profiler for benchmarks: with ``BENCH_CPROFILE_DIR`` set,
SIGUSR1 starts cProfile in the server process and SIGUSR2 stops it and
writes ``cprofile-<n>.prof`` there (and ``gc-<n>.txt``, the garbage
collector's pauses meanwhile) (bench/bench_fanout.py --cprofile wraps a
fan-out in them). With ``BENCH_PERF=1`` as well, the same signals run
``perf record`` on the process instead (``perf-<n>.data``: on-CPU samples,
kernel and native code included, which cProfile's wall clock cannot split).
With ``BENCH_TRACEMALLOC_DIR`` set, tracemalloc traces from the end of
start-up and the server writes ``tracemalloc.txt`` there when it stops: the
Python allocations still held, by where they were made, compared with
start-up (what the server grew by while it ran). Unset, nothing is
installed."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import itertools
import os
import signal
import subprocess
import time
import tracemalloc
from pathlib import Path

ENV = "BENCH_CPROFILE_DIR"
TRACEMALLOC_ENV = "BENCH_TRACEMALLOC_DIR"
_baseline: list[tracemalloc.Snapshot] = []


def start_tracemalloc() -> None:
    """With BENCH_TRACEMALLOC_DIR set: start tracing (the server is up)."""
    if os.environ.get(TRACEMALLOC_ENV) and not tracemalloc.is_tracing():
        tracemalloc.start(12)
        _baseline.append(tracemalloc.take_snapshot())


def write_tracemalloc(top: int = 60) -> None:
    """The allocations made since start_tracemalloc and still held, the
    largest first (by the innermost frames of their tracebacks), and the
    traced peak. Called at stop."""
    folder = os.environ.get(TRACEMALLOC_ENV)
    if not folder or not tracemalloc.is_tracing() or not _baseline:
        return
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 1e6:.2f} MB, peak {peak / 1e6:.2f} MB (since start-up)"]
    for stat in snap.compare_to(_baseline[0], "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1e3:+10.1f} kB {stat.count_diff:+7d} blocks")
        lines += ["      " + str(frame) for frame in stat.traceback[-6:]]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracemalloc.txt").write_text("\n".join(lines) + "\n")


def install(loop: asyncio.AbstractEventLoop) -> None:
    start_tracemalloc()
    folder = os.environ.get(ENV)
    if not folder:
        return
    out = Path(folder)
    runs = itertools.count(1)
    current: list[cProfile.Profile] = []
    perf: list[subprocess.Popen[bytes]] = []
    use_perf = os.environ.get("BENCH_PERF") == "1"
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
        if use_perf:
            if not perf:
                out.mkdir(parents=True, exist_ok=True)
                perf.append(subprocess.Popen(
                    ["perf", "record", "-q", "-F", "4999", "-p", str(os.getpid()),
                     "-o", str(out / f"perf-{next(runs)}.data")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
                time.sleep(0.3)  # perf attaches
            return
        if not current:
            # BENCH_CPROFILE_TIMER=cpu: the thread's CPU time (slower to
            # read, but a function is not charged for time the process
            # waited for a CPU on a loaded machine)
            timer = time.thread_time if os.environ.get("BENCH_CPROFILE_TIMER") == "cpu" else None
            current.append(cProfile.Profile(timer) if timer else cProfile.Profile())
            current[0].enable()

    def stop() -> None:
        if perf:
            p = perf.pop()
            p.send_signal(signal.SIGINT)
            p.wait(30)
            return
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

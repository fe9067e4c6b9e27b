"""What several benchmarks share: a timestamped progress line, a
percentile, processes' on-CPU time, and a py-spy recording of one server
process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_s(*pids: int) -> float:
    """On-CPU time of the processes, in seconds (/proc/<pid>/schedstat:
    nanoseconds, where utime + stime count 10 ms ticks)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


class PySpy:
    """``py-spy record`` of one process (raw folded stacks, GIL-holding
    samples only: CPU) from start() to stop(), or within ``with``; the
    output is read by bench/pyspy_summary.py. Without py-spy installed it
    says so and records nothing."""

    def __init__(self, pid: int, out: Path, rate: int = 200, attach_s: float = 0.5,
                 nonblocking: bool = False) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.attach_s = attach_s  # waited after starting, so the profiler is attached before the timed step
        self.nonblocking = nonblocking  # sample without pausing the process
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "PySpy":
        exe = shutil.which("py-spy")
        if exe is None:
            log("py-spy not found (pip install py-spy): not profiling")
            return self
        args = [exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate), "--gil",
                "-o", str(self.out)]
        if self.nonblocking:
            args.append("--nonblocking")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(self.attach_s)
        return self

    def stop(self) -> None:
        """Ends the recording (py-spy writes its file on SIGINT); idempotent."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        log(f"py-spy profile: {self.out} (python bench/pyspy_summary.py {self.out})")

    def __enter__(self) -> "PySpy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

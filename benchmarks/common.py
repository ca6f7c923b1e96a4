"""Shared measuring tools: wall and CPU clocks, medians, machine facts, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Clock:
    """Wall-clock and process CPU seconds of a ``with`` block.

    On a shared machine the wall clock also counts time spent waiting for a
    core; the process CPU time does not, so with one thread it is the less
    noisy of the two.
    """

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def clock():
    c = Clock()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield c
    finally:
        c.wall = time.perf_counter() - w0
        c.cpu = time.process_time() - c0


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


@dataclass
class Series:
    """Repeated measurements of one thing; reported as medians."""

    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def add(self, c: Clock) -> None:
        self.wall.append(c.wall)
        self.cpu.append(c.cpu)

    @property
    def wall_median(self) -> float:
        return median(self.wall)

    @property
    def cpu_median(self) -> float:
        return median(self.cpu)


def set_threads(threads: int) -> None:
    """Limit every thread pool this process may use (torch, OpenMP, BLAS) to ``threads``."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def machine_info(threads: int) -> dict:
    """The facts every figure is stated with: processor, cores, load, threads, versions."""
    import numpy
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import skorch

        skorch_version = skorch.__version__
    except ImportError:
        skorch_version = "not installed"
    from torchclf import __version__
    from torchclf.accel import _cpu_has_native_bfloat16

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "native_bfloat16": _cpu_has_native_bfloat16(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch_version,
        "torchclf": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_python(code_or_args: list[str], env: dict | None = None, timeout: float = 900) -> tuple[float, str]:
    """Run ``python <args>`` as a child process; returns (wall seconds, stdout)."""
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(code_or_args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)

"""Benchmark 5: command start-up, ``torchclf --help`` and the default ``torchclf train``, as child processes."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import median


def command() -> list[str]:
    """The installed ``torchclf`` script beside this Python, else ``python -m torchclf``."""
    script = Path(sys.executable).with_name("torchclf")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torchclf"]


def _timed(args: list[str], cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False,
                          env={**os.environ, "COLUMNS": "100"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_seconds(module: str = "torchclf.cli") -> float:
    """Cumulative import time of ``module`` as ``python -X importtime`` reports it."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          capture_output=True, text=True, check=True)
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if m and m.group(2) == module:
            return int(m.group(1)) / 1e6
    return float("nan")


def run(help_repeats: int, train_repeats: int, train_args: list[str], log=print) -> dict:
    cmd = command()
    helps = [_timed([*cmd, "--help"]) for _ in range(help_repeats)]
    log("  [startup] --help: " + ", ".join(f"{w:.2f}s" for w, _ in helps))
    trains = []
    for r in range(train_repeats):
        with tempfile.TemporaryDirectory() as tmp:
            trains.append(_timed([*cmd, "train", *train_args], cwd=tmp))
        log(f"  [startup {r + 1}/{train_repeats}] train {' '.join(train_args)}: {trains[-1][0]:.2f}s wall")
    return {"command": " ".join(Path(c).name for c in cmd),
            "help_wall": median(w for w, _ in helps), "help_cpu": median(c for _, c in helps),
            "import_cli_seconds": import_seconds(),
            "train_args": " ".join(train_args) or "(none)",
            "train_wall": median(w for w, _ in trains), "train_cpu": median(c for _, c in trains),
            "help_repeats": help_repeats, "train_repeats": train_repeats}

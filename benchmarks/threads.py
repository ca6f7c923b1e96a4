"""The default thread count on a quiet and on a busy machine: `torchclf train` with and without ``--threads 1``.

    python -m benchmarks.threads                          # quiet, then 2 and 4 busy processes, 3 rounds each
    python -m benchmarks.threads --busy 0,2 --rounds 2 --rows 3000 --epochs 20
    python -m benchmarks.threads --env OMP_WAIT_POLICY=ACTIVE   # a setting for every child

Each run is a child process training the default network (256-256) on a
seeded table of ``--rows`` rows x 20 features, 3 classes, for a fixed number of
epochs (early stopping off). "Busy" starts N CPU-bound Python processes (busy
loops) before the runs and stops them after; the default and ``--threads 1``
runs are interleaved so that load elsewhere hits both alike. Reported: wall
and CPU seconds of each child, the threads the default chose (read from the
run's ``model.json``) and the load average at the start of each condition.
Run it alone: other work on the machine is part of what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import median, table
from benchmarks.startup import command

_BUSY_LOOP = "while True:\n    pass\n"


def make_table(path: Path, rows: int, seed: int = 0) -> None:
    """A seeded CSV of ``rows`` rows: 20 numeric features and a 3-class label ``y``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(3, 20))
    y = rng.integers(0, 3, size=rows)
    X = centers[y] + rng.normal(0, 3, size=(rows, 20))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(20)])
    frame["y"] = y
    frame.to_csv(path, index=False)


def train_once(data: Path, epochs: int, threads: int | None, env: dict, extra: list[str] = ()) -> dict:
    """One ``torchclf train`` child: wall and CPU seconds, and the threads it trained with."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [*command(), "train", str(data), "--target", "y", "--epochs", str(epochs), "--patience", "0",
                "--quiet", "--out", str(out)]
        if threads is not None:
            args += ["--threads", str(threads)]
        args += list(extra)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, check=False, env={**os.environ, **env})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        extra = json.loads((out / "model.json").read_text())["extra"]
        chosen = extra.get("threads") or {}
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "train_seconds": extra.get("train_seconds"), "threads": chosen.get("threads"),
            "reason": chosen.get("reason", "")}


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


ALL = os.cpu_count() or 1
# name -> (--threads, extra environment); "all cores" was the default for this network before the policy.
CONTENDERS = {
    "default": (None, {}),
    "--threads 1": (1, {}),
    f"--threads {ALL} (all cores)": (ALL, {}),
    f"--threads {ALL}, OMP_WAIT_POLICY=ACTIVE": (ALL, {"OMP_WAIT_POLICY": "ACTIVE"}),
    f"--threads {ALL}, OMP_WAIT_POLICY=PASSIVE": (ALL, {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def run(rows: int, epochs: int, busy: list[int], rounds: int, env: dict, contenders: list[str],
        extra: list[str] = (), log=print) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "table.csv"
        make_table(data, rows)
        for n_busy in busy:
            if not n_busy:  # quiet: wait (up to 5 minutes) for the load of earlier conditions to die down
                deadline = time.monotonic() + 300
                while os.getloadavg()[0] > 1.0 and time.monotonic() < deadline:
                    time.sleep(10)
            procs = busy_processes(n_busy)
            try:
                if procs:
                    time.sleep(5)  # let the load settle before the first run
                load = os.getloadavg()[0]
                runs = {name: [] for name in contenders}
                for r in range(rounds):
                    for name in contenders:
                        threads, extra_env = CONTENDERS[name]
                        runs[name].append(train_once(data, epochs, threads, {**env, **extra_env}, extra))
                        got = runs[name][-1]
                        log(f"  [threads] busy={n_busy} round {r + 1}/{rounds} {name}: {got['wall']:.2f}s wall, "
                            f"{got['cpu']:.2f}s CPU, training {got['train_seconds']}s, threads {got['threads']} "
                            f"({got['reason']})")
            finally:
                stop(procs)
            for name, got in runs.items():
                results.append({"busy": n_busy, "load_at_start": round(load, 2), "contender": name,
                                "wall": median(g["wall"] for g in got), "cpu": median(g["cpu"] for g in got),
                                "train_seconds": median(g["train_seconds"] for g in got),
                                "threads": sorted({g["threads"] for g in got}),
                                "walls": [round(g["wall"], 2) for g in got]})
    return {"rows": rows, "epochs": epochs, "rounds": rounds, "cores": os.cpu_count(), "env": env,
            "args": " ".join(extra), "results": results}


def section(res: dict) -> str:
    rows = [[r["busy"], r["load_at_start"], r["contender"], ", ".join(map(str, r["threads"])), r["wall"], r["cpu"],
             r["train_seconds"], ", ".join(map(str, r["walls"]))] for r in res["results"]]
    return (f"{res['rows']:,} rows x 20 features, default network, {res['epochs']} epochs, {res['cores']} cores, "
            f"median of {res['rounds']}" + (f", env {res['env']}" if res["env"] else "")
            + (f", `{res['args']}`" if res["args"] else "") + "\n\n"
            + table(["busy processes", "load at start", "run", "threads used", "wall s", "CPU s",
                     "training s", "walls"], rows))


def scaling(batches: list[int], rows: int, epochs: int, counts: list[int], rounds: int, log=print) -> dict:
    """Seconds per epoch of the engine with each thread count, per batch size (the default network, in process).

    Rounds interleave the thread counts; the median is reported with the
    step's multiply-adds, so that the work a thread needs to pay can be read off.
    """
    import torch

    from torchclf import accel, engine
    from torchclf.config import ModelConfig, TrainConfig
    from torchclf.model import build_model
    from torchclf.task import Task

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (rows,), generator=g)
    X = torch.randn(rows, 20, generator=g) + y[:, None].float()
    data = engine.TensorData(X, y)
    task = Task("multiclass", 3)
    out = []
    for batch in batches:
        seconds = {n: [] for n in counts}
        for _ in range(rounds):
            for n in counts:
                torch.manual_seed(0)
                model = build_model(20, 3, ModelConfig())
                config = TrainConfig(epochs=epochs, batch_size=batch, patience=0, threads=n, device="cpu")
                with accel.threads(n):
                    t0 = time.perf_counter()
                    engine.fit(model, task, data, None, config)
                    seconds[n].append((time.perf_counter() - t0) / epochs)
        macs = accel.step_macs(build_model(20, 3, ModelConfig()), batch)
        row = {"batch": batch, "macs": macs, **{f"threads_{n}": median(seconds[n]) for n in counts}}
        out.append(row)
        log(f"  [scaling] batch {batch} ({macs / 1e6:.1f}M multiply-adds): "
            + ", ".join(f"{n} thread(s) {median(seconds[n]) * 1e3:.0f} ms/epoch" for n in counts)
            + f" (load {os.getloadavg()[0]:.2f})")
    return {"rows": rows, "epochs": epochs, "rounds": rounds, "results": out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--busy", default="0,2,4", help="comma-separated numbers of busy processes, one condition each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for every child (repeatable)")
    p.add_argument("--batch-size", default=None, help="--batch-size for every run (default: torchclf's)")
    p.add_argument("--contenders", default="0,1,2", help="comma-separated indices into: "
                   + "; ".join(f"{i} {name}" for i, name in enumerate(CONTENDERS)))
    p.add_argument("--scaling", default=None, metavar="BATCHES",
                   help="instead: seconds per epoch with 1 and all threads at these batch sizes (in process)")
    args = p.parse_args(argv)
    if args.scaling:
        counts = sorted({1, ALL})
        res = scaling([int(b) for b in args.scaling.split(",")], args.rows, args.epochs, counts, args.rounds)
        print(table(["batch", "multiply-adds", *[f"{n} thread(s), ms/epoch" for n in counts]],
                    [[r["batch"], f"{r['macs'] / 1e6:.1f}M", *[r[f"threads_{n}"] * 1e3 for n in counts]]
                     for r in res["results"]]))
        return res
    env = dict(item.split("=", 1) for item in args.env)
    names = [list(CONTENDERS)[int(i)] for i in args.contenders.split(",")]
    extra = ["--batch-size", args.batch_size] if args.batch_size else []
    res = run(args.rows, args.epochs, [int(b) for b in args.busy.split(",")], args.rounds, env, names, extra)
    print(section(res))
    return res


if __name__ == "__main__":
    main()

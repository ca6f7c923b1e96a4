"""Benchmark 4: prediction through the Python API, preprocessing included; and file to file.

A 32->256->256->4 model is trained briefly and saved; ``torchclf.load(run)``
then predicts probabilities for a DataFrame of raw rows (throughput), and for
one row at a time (latency). The bare network on a ready tensor, fed in
65,536-row chunks, is the reference; the engine's own prediction uses
cache-sized chunks (1,024 rows on a CPU), which is why it can beat it.

`torchclf predict` from file to file (run on their own, one thread)::

    python -m benchmarks.predict memory --rows 1000000 --columns 32   # peak RSS of the command against the table's size
    python -m benchmarks.predict write --classes 100 --rows 200000    # writing 100 probabilities a row: CSV writers

``memory`` writes a seeded table (``--columns`` float64 features and an
integer ``id``) as CSV and Parquet under ``--folder`` (default: a temporary
folder), trains the 256-256 model on 20,000 rows of it, then runs ``python -m
torchclf predict RUN TABLE --out FILE --keep id`` as a child process per input
and output format, and, for comparison, the whole-table path that `predict`
took before streaming (``read_rows``, ``predict_frame``, ``DataFrame.to_csv``),
reading each child's peak resident set size from ``wait4``. ``write`` predicts
200,000 rows of a 100-class model and times writing the probabilities with
pandas' ``to_csv`` and with pyarrow's CSV writer (checking that the text reads
back to the same float32 values), then the whole file-to-file prediction.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, before numpy and torch start their pools
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

from benchmarks.common import Series, clock, median


def run(rows: int, repeats: int, single_calls: int, log=print) -> dict:
    import pandas as pd
    import torch

    import torchclf
    from benchmarks.training import make_data
    from torchclf.api import make_config

    X, y = make_data(max(rows, 20_000))
    frame = pd.DataFrame(X[:rows], columns=[f"x{i}" for i in range(32)])
    config = make_config(model={"hidden": (256, 256), "dropout": 0.0},
                         train={"epochs": 1, "batch_size": 256, "patience": 0})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchclf.train(X[:20_000], y[:20_000], config=config, out=Path(tmp) / "run")
        predictor = torchclf.load(Path(tmp) / "run")
    bulk, bare = Series("predict_proba"), Series("bare network")
    tensor = torch.from_numpy(X[:rows])
    model = predictor.model.eval()
    for r in range(repeats):
        with clock() as c:
            proba = predictor.predict_proba(frame)
        bulk.add(c)
        with clock() as c, torch.inference_mode():
            torch.cat([model(chunk) for chunk in torch.split(tensor, 65536)]).softmax(1)
        bare.add(c)
        log(f"  [predict {r + 1}/{repeats}] {rows / bulk.wall[-1]:,.0f} rows/s through predict_proba, "
            f"{rows / bare.wall[-1]:,.0f} rows/s bare network")
    assert proba.shape == (rows, 4)
    latencies = []
    one_rows = [frame.iloc[[i]] for i in range(min(single_calls, rows))]
    predictor.predict_proba(one_rows[0])  # the first call pays one-time set-up
    for row in one_rows:
        t0 = time.perf_counter()
        predictor.predict_proba(row)
        latencies.append(time.perf_counter() - t0)
    log(f"  [predict] single row: median {median(latencies) * 1e3:.2f} ms, "
        f"p95 {np.percentile(latencies, 95) * 1e3:.2f} ms")
    return {"rows": rows, "repeats": repeats,
            "predict_proba_rows_per_s_wall": rows / bulk.wall_median,
            "predict_proba_rows_per_s_cpu": rows / bulk.cpu_median,
            "bare_rows_per_s_wall": rows / bare.wall_median,
            "bare_rows_per_s_cpu": rows / bare.cpu_median,
            "single_row_ms_median": median(latencies) * 1e3,
            "single_row_ms_p95": float(np.percentile(latencies, 95)) * 1e3,
            "single_calls": len(latencies)}


# ----- file to file -----------------------------------------------------------------------------------------
def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _table(rows: int, columns: int, classes: int, seed: int):
    """Seeded float64 features ``x0..``, an integer ``id`` and a label ``y`` with some signal."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=rows)
    X = rng.normal(size=(rows, columns)).round(6)  # six decimals: a CSV of plausible size
    X[:, 0] += (y % 4) * 1.5
    X[:, 1] += (y // 4) * 0.5
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(columns)])
    frame.insert(0, "id", np.arange(rows, dtype=np.int64) + 10**9)
    frame["y"] = y
    return frame


def _write_table(frame, csv_path: Path, parquet_path: Path | None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, csv_path, pacsv.WriteOptions(quoting_style="none"))
    if parquet_path is not None:
        pq.write_table(table, parquet_path)


def _train(frame, target: str, out: Path, hidden) -> None:
    import torchclf
    from torchclf.api import make_config

    config = make_config(model={"hidden": hidden, "dropout": 0.0},
                         train={"epochs": 1, "batch_size": 256, "patience": 0, "threads": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchclf.train(frame, target, config=config, out=out)


# Runs ARGS as its own child and prints that child's wall and CPU seconds and peak RSS. A child's ru_maxrss
# starts at the resident size of the process that forked it (Linux folds the old memory's high-water mark in
# at exec), so the measured command is started from this small launcher, never from the benchmark's process.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen([sys.executable, *sys.argv[1:]], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime,
                  "peak_mb": usage.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status)}))
"""


def _child(args: list[str]) -> tuple[float, float, float]:
    """Run ``python ARGS`` on one thread; returns (wall s, user+sys CPU s, peak RSS MB) of that process alone."""
    import json
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *args], env=env, capture_output=True, text=True,
                          check=False)
    facts = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"code": done.returncode}
    if facts["code"] != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({facts['code']}): {done.stderr[-2000:]}")
    return facts["wall"], facts["cpu"], facts["peak_mb"]


WHOLE_TABLE = """
import sys, warnings
import torchclf
from torchclf.data.sources import read_rows
run, source, out = sys.argv[1:]
warnings.simplefilter("ignore")
predictor = torchclf.load(run)
frame = read_rows(source)
result = predictor.predict_frame(frame, where=source)
result.insert(0, "id", frame["id"])
result.to_csv(out, index=False)
"""


def bench_memory(rows: int, columns: int, folder: Path) -> None:
    import pandas as pd

    small = max(1, rows // 10)
    print(f"load {_load()} | writing {rows:,} and {small:,} rows x {columns} columns to {folder}", flush=True)
    for n, name in ((rows, "big"), (small, "small")):
        _write_table(_table(n, columns, 4, seed=1), folder / f"{name}.csv", folder / f"{name}.parquet")
    frame = pd.read_csv(folder / "big.csv").drop(columns="y")
    in_memory = frame.memory_usage(deep=True, index=False).sum() / 2**20
    del frame
    _train(_table(20_000, columns, 4, seed=0).drop(columns="id"), "y", folder / "run", (256, 256))
    print(f"input table in memory (pandas, without y): {in_memory:,.0f} MB "
          f"({rows:,} rows x {columns} float64 + int64 id)", flush=True)
    print("| command | input | rows | output | wall s | CPU s | peak RSS MB | peak / table in memory | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    cases = [("tiny", "small.csv", "p.csv")]
    for name in ("small", "big"):
        cases += [("predict", f"{name}.csv", "p.csv"), ("predict", f"{name}.parquet", "p.parquet"),
                  ("predict", f"{name}.csv", "p.parquet"), ("whole table", f"{name}.csv", "p.csv")]
    for how, source, out in cases:
        src, dst = folder / source, folder / out
        if how == "tiny":  # the fixed cost: interpreter, torch, pandas and pyarrow, on 1,000 rows
            pd.read_csv(src, nrows=1000).to_csv(folder / "tiny.csv", index=False)
            src = folder / "tiny.csv"
        if how == "whole table":
            args = ["-c", WHOLE_TABLE, str(folder / "run"), str(src), str(dst)]
        else:
            args = ["-m", "torchclf", "predict", str(folder / "run"), str(src), "--out", str(dst), "--keep", "id"]
        load = _load()
        wall, cpu, peak = _child(args)
        n = 1000 if how == "tiny" else (rows if source.startswith("big") else small)
        print(f"| {'`torchclf predict`' if how != 'whole table' else 'whole table, as before'} | {source} | {n:,} "
              f"| {out} | {wall:.1f} | {cpu:.1f} | {peak:,.0f} | {peak / in_memory:.2f} | {load} |", flush=True)


def bench_write(rows: int, classes: int, folder: Path) -> None:
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    import torchclf
    from torchclf.predict_file import Output, PredictionWriter

    features = 16
    _train(_table(20_000, features, classes, seed=0).drop(columns="id"), "y", folder / "run", (64,))
    _write_table(_table(rows, features, classes, seed=1).drop(columns="y"), folder / "new.csv", folder / "new.parquet")
    predictor = torchclf.load(folder / "run")
    frame = pd.read_parquet(folder / "new.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with clock() as c:
            proba = predictor.predict_proba(frame)
    print(f"load {_load()} | predict_proba of {rows:,} rows x {classes} classes ({proba.dtype}): "
          f"{c.wall:.2f} s wall, {c.cpu:.2f} s CPU", flush=True)
    names = [f"proba_{k}" for k in predictor.classes]
    print("| writing the probabilities | wall s | CPU s | MB | reads back equal | load |")
    print("| --- | --- | --- | --- | --- | --- |")

    def check(text: bytes) -> bool:  # pyarrow's parser rounds correctly (pandas' default parser may not)
        back = pd.read_csv(io.BytesIO(text), engine="pyarrow").to_numpy(proba.dtype)
        return bool(np.array_equal(back, proba))

    for how in ("pandas to_csv", "pandas to_csv, float_format='%.6g'", "pyarrow write_csv"):
        load = _load()
        sink = io.BytesIO()
        with clock() as c:
            if how.startswith("pandas"):
                fmt = {"float_format": "%.6g"} if "float_format" in how else {}
                text = pd.DataFrame(proba, columns=names).to_csv(index=False, **fmt).encode()
            else:
                table = pa.Table.from_arrays([pa.array(col) for col in np.ascontiguousarray(proba.T)], names=names)
                pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="none"))
                text = sink.getvalue()
        print(f"| {how} | {c.wall:.2f} | {c.cpu:.2f} | {len(text) / 2**20:.0f} | {check(text)} | {load} |", flush=True)
    print("\n| `PredictionWriter.write` (read, predict, write) | wall s | CPU s | load |")
    print("| --- | --- | --- | --- |")
    for source, out, output in (("new.parquet", "p.csv", Output()), ("new.csv", "p.csv", Output()),
                                ("new.parquet", "p.parquet", Output()),
                                ("new.parquet", "p.csv", Output(keep=("id",), top_k=5, decimals=4))):
        load = _load()
        with warnings.catch_warnings(), clock() as c:
            warnings.simplefilter("ignore")
            PredictionWriter(predictor, str(folder / source), output).write(folder / out)
        label = f"{source} -> {out}" + (" (--keep id --top-k 5 --decimals 4)" if output.top_k else "")
        print(f"| {label} | {c.wall:.2f} | {c.cpu:.2f} | {load} |", flush=True)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.predict", description="`torchclf predict` file to file.")
    p.add_argument("what", choices=["memory", "write"])
    p.add_argument("--rows", type=int, default=None, help="rows to predict (memory: 1,000,000; write: 200,000)")
    p.add_argument("--columns", type=int, default=32, help="memory: float64 feature columns")
    p.add_argument("--classes", type=int, default=100, help="write: classes of the model")
    p.add_argument("--folder", type=Path, default=None,
                   help="where the generated files go (default: a temporary folder)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        if args.what == "memory":
            bench_memory(args.rows or 1_000_000, args.columns, Path(tmp))
        else:
            bench_write(args.rows or 200_000, args.classes, Path(tmp))


if __name__ == "__main__":
    main()

"""The work around the training loop, at growing row counts and at 100 classes.

    python -m benchmarks.pipeline preprocess --rows 100000,500000,2000000     # Preprocessor.fit (growth exponent), transform
    python -m benchmarks.pipeline split --rows 100000,1000000                  # split_dataset
    python -m benchmarks.pipeline scores --rows 1000000                        # api.fit's final scores
    python -m benchmarks.pipeline classes --classes 100 --rows 200000          # metrics, plots, report at 100 classes
    python -m benchmarks.pipeline metrics --classes 100 --rows 200000          # compute_metrics against sklearn.metrics
    python -m benchmarks.pipeline fixed                                       # a 1k-row `torchclf train`, by phase

Everything runs in this process on one thread (``OMP_NUM_THREADS=1``) and is
seeded; the CPU seconds (``time.process_time``) are reported beside the wall
clock, and the one-minute load average is printed with every figure, since
the machine may be shared. ``preprocess`` fits a fresh ``Preprocessor`` on
frames of 32 float64 columns plus one text column and fits the exponent of
seconds against rows (log-log least squares).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

from benchmarks.common import clock, table


def load() -> float:
    return round(os.getloadavg()[0], 2)


def frame(rows: int, features: int = 32, classes: int = 4, seed: int = 0, text: bool = True):
    """A seeded frame: ``features`` float64 columns (some signal), a 12-value text column, and label ``y``."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=rows)
    X = rng.normal(size=(rows, features))
    X[:, : min(8, features)] += np.eye(classes, min(8, features))[y % classes] * 2.0
    out = pd.DataFrame(X, columns=[f"x{i}" for i in range(features)])
    if text:
        out["colour"] = pd.Series(np.array([f"c{i}" for i in range(12)], dtype=object)[rng.integers(0, 12, rows)])
    out["y"] = y
    return out


def exponent(rows: list[int], seconds: list[float]) -> float:
    """Slope of log(seconds) against log(rows)."""
    return float(np.polyfit(np.log(rows), np.log(seconds), 1)[0])


def bench_preprocess(rows: list[int], repeats: int) -> None:
    """``Preprocessor.fit`` and ``transform`` (the encoding of every split and prediction) on the same rows."""
    from torchclf.preprocess import Preprocessor

    walls, cpus = [], []
    out = []
    for n in rows:
        data = frame(n).drop(columns="y")
        best = encode = None
        for _ in range(repeats):
            with clock() as c:
                pre = Preprocessor().fit(data)
            best = c if best is None or c.cpu < best.cpu else best
            with clock() as c:
                pre.transform(data)
            encode = c if encode is None or c.cpu < encode.cpu else encode
        walls.append(best.wall)
        cpus.append(best.cpu)
        out.append([f"{n:,}", best.wall, best.cpu, encode.wall, encode.cpu, load()])
        print(f"  fit {n:,} rows: {best.wall:.2f}s wall, {best.cpu:.2f}s CPU; transform {encode.wall:.2f}s wall, "
              f"{encode.cpu:.2f}s CPU (load {load()})", flush=True)
        del data
    print(table(["rows", "fit wall s", "fit CPU s", "transform wall s", "transform CPU s", "load"], out))
    print(f"fit's exponent (CPU): {exponent(rows, cpus):.2f}; (wall): {exponent(rows, walls):.2f}")


def sklearn_split(ds, seed: int = 1) -> None:
    """The split as it was: labels made text for the check and for each of two train_test_split cuts."""
    from sklearn.model_selection import train_test_split

    np.unique(ds.target.astype(str).to_numpy(), return_counts=True)
    index = np.arange(ds.n_rows)
    keep, held = train_test_split(index, test_size=0.2, random_state=seed, stratify=ds.target.astype(str).to_numpy())
    rest, _test = ds.take(np.sort(keep)), ds.take(np.sort(held))
    keep, held = train_test_split(np.arange(rest.n_rows), test_size=0.125, random_state=seed + 1,
                                  stratify=rest.target.astype(str).to_numpy())
    rest.take(np.sort(keep)), rest.take(np.sort(held))


def bench_split(rows: list[int]) -> None:
    from torchclf.data import from_frame, split_dataset

    out = []
    for n in rows:
        ds = from_frame(frame(n, text=False), "y")
        ds.target = ds.target.map({k: f"class-{k}" for k in range(4)})  # text labels, as read from a file
        with clock() as c:
            split_dataset(ds, seed=1)
        with clock() as ref:
            sklearn_split(ds)
        out.append([f"{n:,}", c.wall, c.cpu, ref.wall, ref.cpu, load()])
        print(f"  split {n:,}: {c.wall:.2f}s wall, {c.cpu:.2f}s CPU; as before (sklearn, labels as text 3 times): "
              f"{ref.wall:.2f}s wall, {ref.cpu:.2f}s CPU", flush=True)
    print(table(["rows", "wall s", "CPU s", "before: wall s", "before: CPU s", "load"], out))


def bench_scores(rows: int, score_all: bool) -> None:
    """api.fit with 1 epoch of a small network: where its time goes, the final scores included.

    ``score_all`` scores every training row, as before the sample (for comparison).
    """
    from torchclf import api
    from torchclf.spec import RunSpec

    if score_all:
        api.MAX_SCORED_TRAIN_ROWS = 10**12

    config = api.make_config(model={"hidden": (32,)}, train={"epochs": 1, "batch_size": 4096, "threads": 1})
    spec = RunSpec(frame(rows, text=False), "y", None, None, config)
    with clock() as c:
        prepared = api.prepare(spec)
    print(f"  prepare: {c.wall:.2f}s wall, {c.cpu:.2f}s CPU", flush=True)
    with clock() as c:
        result = api.fit(prepared)
    print(f"  fit: {c.wall:.2f}s wall, {c.cpu:.2f}s CPU, of which training {result.seconds:.2f}s; "
          f"outside training {c.wall - result.seconds:.2f}s wall (load {load()})", flush=True)
    print(f"  train scores on {result.metrics['train']['n_samples']:,} of {result.splits.train.n_rows:,} rows "
          f"({result.metrics['train'].get('sampled', 'all rows')})")


def bench_classes(classes: int, rows: int) -> None:
    """metrics, plots and the report at ``classes`` classes, a trained run folder of ``rows`` rows."""
    from torchclf import api
    from torchclf.metrics import compute_metrics
    from torchclf.spec import RunSpec

    config = api.make_config(model={"hidden": (64,)}, train={"epochs": 1, "batch_size": 4096, "threads": 1})
    data = frame(rows, features=16, classes=classes, text=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        spec = RunSpec(data, "y", None, None, config)
        prepared = api.prepare(spec)
        result = api.fit(prepared, scores=False)
        pred = result.predictor
        parts = {}
        for part in ("train", "validation", "test"):
            rows_ = getattr(result.splits, part)
            parts[part] = (pred.labels.encode(rows_.target), pred.predict_proba(rows_.features))
        with clock() as c_metrics:
            for part, (y, proba) in parts.items():
                compute_metrics(pred.task, y, proba, [str(k) for k in pred.classes])
        print(f"  compute_metrics on the three splits ({sum(len(y) for y, _ in parts.values()):,} rows): "
              f"{c_metrics.wall:.2f}s wall, {c_metrics.cpu:.2f}s CPU", flush=True)
        with clock() as c_scores:
            result.metrics = {}
            for part in ("train", "validation", "test"):
                result.metrics[part] = api.evaluate(pred, getattr(result.splits, part))
        print(f"  api.evaluate on the three splits (predicting included): {c_scores.wall:.2f}s wall, "
              f"{c_scores.cpu:.2f}s CPU", flush=True)
        with clock() as c_mpl:
            import matplotlib.pyplot  # noqa: F401  (its import is part of any run's pictures; shown apart)
        print(f"  importing matplotlib.pyplot: {c_mpl.wall:.2f}s wall, {c_mpl.cpu:.2f}s CPU", flush=True)
        with clock() as c_run:
            api.write_run(result, out)
        report = out / "report.html"
        sizes = {p.name: p.stat().st_size for p in (out / "plots").iterdir()}
        print(f"  write_run (model, metrics.json, plots, report): {c_run.wall:.2f}s wall, {c_run.cpu:.2f}s CPU; "
              f"report.html {report.stat().st_size / 1e3:.0f} kB, metrics.json "
              f"{(out / 'metrics.json').stat().st_size / 1e3:.0f} kB, plots {sizes} (load {load()})", flush=True)
        print(f"  metrics + write_run: {c_metrics.wall + c_run.wall:.2f}s wall, {c_metrics.cpu + c_run.cpu:.2f}s CPU "
              "(matplotlib's import not included)")


def sklearn_metrics(y, proba, k: int) -> dict:
    """The multiclass numbers as compute_metrics took them from sklearn.metrics before (the reference)."""
    from sklearn import metrics as skm

    pred = proba.argmax(axis=1)
    labels = np.arange(k)
    return {
        "accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, labels=labels, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, pred, labels=labels, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels),
        "log_loss": skm.log_loss(y, np.clip(proba, 1e-15, 1.0), labels=labels),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0),
    }


def bench_metrics(classes: int, rows: int) -> None:
    """compute_metrics (numpy) against the same numbers from sklearn.metrics, on three seeded splits."""
    import warnings

    from torchclf.metrics import compute_metrics
    from torchclf.task import Task

    rng = np.random.default_rng(0)
    parts = []
    for n in (int(rows * 0.7), int(rows * 0.1), int(rows * 0.2)):
        y = rng.integers(0, classes, n)
        z = rng.normal(size=(n, classes)).astype(np.float32) + 2 * np.eye(classes, dtype=np.float32)[y]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        parts.append((y, e / e.sum(axis=1, keepdims=True)))
    names = [str(i) for i in range(classes)]
    with clock() as c:
        import sklearn.metrics  # noqa: F401
    print(f"  importing sklearn.metrics: {c.wall:.2f}s wall, {c.cpu:.2f}s CPU", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with clock() as c_sk:
            ref = [sklearn_metrics(y, p, classes) for y, p in parts]
    with clock() as c_np:
        ours = [compute_metrics(Task("multiclass", classes), y, p, names) for y, p in parts]
    same = all(abs(o[key] - float(np.round(r[key], 6))) < 1e-12 for o, r in zip(ours, ref)
               for key in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc",
                           "log_loss")) and all(o["confusion_matrix"] == r["confusion_matrix"] for o, r in zip(ours, ref))
    print(f"  {classes} classes, {rows:,} rows in three splits: sklearn.metrics {c_sk.wall:.2f}s wall, "
          f"{c_sk.cpu:.2f}s CPU; torchclf.metrics {c_np.wall:.2f}s wall, {c_np.cpu:.2f}s CPU; "
          f"same numbers (6 decimals): {same} (load {load()})")


def bench_fixed(repeats: int) -> None:
    """A 1,000-row `torchclf train` (5 epochs) as a child process, with -X importtime's biggest imports."""
    import re
    import resource
    import subprocess

    from benchmarks.startup import command

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "tiny.csv"
        frame(1000, features=4, classes=2, text=False).to_csv(csv, index=False)
        for source in (str(csv), "moons:n_samples=1000"):
            for r in range(repeats):
                out = Path(tmp) / f"run{r}-{abs(hash(source))}"
                args = [*command(), "train", source, "--epochs", "5", "--quiet", "--out", str(out)]
                if source.endswith(".csv"):
                    args += ["--target", "y"]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                w0 = time.perf_counter()
                subprocess.run(args, check=True, capture_output=True)
                wall = time.perf_counter() - w0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                import json

                train_s = json.loads((out / "model.json").read_text())["extra"]["train_seconds"]
                print(f"  train {source.split('/')[-1]} --epochs 5: {wall:.2f}s wall, {cpu:.2f}s CPU, "
                      f"training {train_s:.2f}s (load {load()})", flush=True)
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "torchclf", "train", str(csv),
                               "--target", "y", "--epochs", "5", "--quiet", "--out", str(Path(tmp) / "imp")],
                              capture_output=True, text=True, check=True)
    tops = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", line)
        if m and m.group(3).split(".")[0] in ("torch", "sklearn", "scipy", "matplotlib", "pandas", "typer", "rich",
                                              "numpy", "safetensors", "sympy") and len(m.group(2)) <= 2:
            tops.append((int(m.group(1)) / 1e6, m.group(3)))
    print("biggest imports (cumulative, -X importtime): "
          + ", ".join(f"{name} {s:.2f}s" for s, name in sorted(tops, reverse=True)[:8]))
    print("scikit-learn imported:", any(name.split(".")[0] == "sklearn" for _, name in tops))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["preprocess", "split", "scores", "classes", "metrics", "fixed"])
    p.add_argument("--rows", default=None, help="row count(s), comma-separated")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--score-all", action="store_true", help="scores: every training row, as before the sample")
    args = p.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")] if args.rows else None
    print(f"load average at start: {load()}, cores: {os.cpu_count()}", flush=True)
    if args.what == "preprocess":
        bench_preprocess(rows or [100_000, 500_000, 2_000_000], args.repeats)
    elif args.what == "split":
        bench_split(rows or [100_000, 1_000_000])
    elif args.what == "scores":
        bench_scores((rows or [1_000_000])[0], args.score_all)
    elif args.what == "classes":
        bench_classes(args.classes, (rows or [200_000])[0])
    elif args.what == "metrics":
        bench_metrics(args.classes, (rows or [200_000])[0])
    else:
        bench_fixed(args.repeats)


if __name__ == "__main__":
    main()

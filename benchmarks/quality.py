"""torchclf's default recipe against the strongest contenders: accuracy, log loss and training time.

Every model sees the same seeded splits: torchclf's own ``split_dataset(dataset, seed=seed)``
(70% train, 10% validation, 20% test). torchclf and RealMLP-TD train on the train rows and use the
validation rows to choose their epoch; LightGBM, HistGradientBoosting, MLPClassifier and
LogisticRegression train on train + validation (defaults, no early stopping of their own beyond
HistGradientBoosting's built-in one). Everything runs on one thread.

Each (table, seed, model) result is kept in a JSON file as soon as it is measured, so a long run
can be stopped and continued, or extended with more seeds, tables or ``--variant`` rows:

    OMP_NUM_THREADS=1 python benchmarks/quality.py --seeds 5 --write
    OMP_NUM_THREADS=1 python benchmarks/quality.py --tables iris,mixed --models torchclf,lightgbm --seeds 1
    OMP_NUM_THREADS=1 python benchmarks/quality.py --rerun torchclf          # after a recipe change
    OMP_NUM_THREADS=1 python benchmarks/quality.py --variant "no-smoothing:--label-smoothing 0" --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as `python benchmarks/quality.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# mixed_table is imported from here by benchmarks.deploy
from benchmarks.common import clock
from benchmarks.quality_tables import TABLES, load, mixed_table
from torchclf.data import split_dataset

__all__ = ["CONTENDERS", "main", "mixed_table", "score"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
DOC = ROOT / "docs" / "quality.md"
BEGIN, END = "<!-- benchmarks/quality.py: begin -->", "<!-- benchmarks/quality.py: end -->"
CLIP = 1e-7  # the smallest probability a log loss counts, so one confident mistake does not make it infinite


# ----- scores ----------------------------------------------------------------------------------
def score(y_true, proba: np.ndarray, predicted, classes) -> dict:
    """Accuracy and clipped log loss of one model on the test rows.

    Parameters
    ----------
    y_true : Series of shape (n_samples,) or DataFrame of shape (n_samples, n_labels) of 0/1
    proba : ndarray of shape (n_samples, n_classes), or (n_samples, n_labels) of P(label) for multilabel
    predicted : array of shape (n_samples,) of labels, or (n_samples, n_labels) of 0/1
    classes : the labels of ``proba``'s columns (single-label only)

    Returns
    -------
    dict with ``accuracy`` (multilabel: subset accuracy, every label of a row right) and ``log_loss``
    (multilabel: the binary log loss averaged over rows and labels).
    """
    proba = np.asarray(proba, dtype=np.float64)
    if isinstance(y_true, pd.DataFrame):
        Y = y_true.to_numpy().astype(np.int64)
        right = (np.asarray(predicted).astype(np.int64) == Y).all(axis=1)
        p_true = np.where(Y == 1, proba, 1.0 - proba)
        return {"accuracy": float(right.mean()), "log_loss": float(-np.log(np.clip(p_true, CLIP, 1.0)).mean())}
    y = np.asarray(y_true)
    column = pd.Index(list(classes)).get_indexer(y)  # -1: a class the model never saw
    p_true = np.where(column >= 0, proba[np.arange(len(y)), column], 0.0)
    return {"accuracy": float((np.asarray(predicted) == y).mean()),
            "log_loss": float(-np.log(np.clip(p_true, CLIP, 1.0)).mean())}


# ----- contenders: raw columns in, probabilities out ------------------------------------------------
def categorical_columns(frame: pd.DataFrame) -> list:
    """Every column that is not numeric (strings, categories, booleans, dates read as text)."""
    return [c for c in frame.columns
            if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]


def with_categories(fit_on: pd.DataFrame, frames: list, most: int | None = None) -> list:
    """``frames`` with each categorical column as a pandas category of the categories seen in ``fit_on``
    (its ``most`` most frequent ones, if given); other values become missing."""
    out = [f.copy() for f in frames]
    for col in categorical_columns(fit_on):
        counts = fit_on[col].astype("string").value_counts()
        dtype = pd.CategoricalDtype(sorted(counts.index[:most] if most else counts.index))
        for f in out:
            f[col] = f[col].astype("string").astype(dtype)
    return out


class Fitted:
    """An estimator and the column transform fitted with it; ``predict_proba`` on raw rows."""

    def __init__(self, estimator, transform: Callable[[pd.DataFrame], pd.DataFrame]):
        self.estimator, self.transform = estimator, transform
        self.classes_ = estimator.classes_

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(self.transform(X))


def fit_lightgbm(X, y, X_val, y_val, seed):
    import lightgbm

    def transform(frame):
        return with_categories(X, [frame])[0]

    model = lightgbm.LGBMClassifier(n_jobs=1, random_state=seed, verbose=-1)
    return Fitted(model.fit(transform(X), y), transform)


def fit_hgb(X, y, X_val, y_val, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Native categorical support takes at most max_bins (255) categories per column: the 254 most frequent
    # of a larger column are kept and the rest treated as missing.
    def transform(frame):
        return with_categories(X, [frame], most=254)[0]

    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)
    return Fitted(model.fit(transform(X), y), transform)


def _one_hot_pipeline(estimator, X):
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    text = categorical_columns(X)
    numeric = [c for c in X.columns if c not in text]
    columns = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        (OneHotEncoder(handle_unknown="ignore"), text),
    )

    def transform(frame):
        frame = frame.copy()
        for col in text:  # missing is one more category, written as text so every value is a str
            frame[col] = frame[col].astype("string").fillna("<missing>").astype(object)
        return frame

    return make_pipeline(columns, estimator), transform


def fit_mlp(X, y, X_val, y_val, seed):
    from sklearn.neural_network import MLPClassifier

    pipeline, transform = _one_hot_pipeline(MLPClassifier(max_iter=500, random_state=seed), X)
    return Fitted(pipeline.fit(transform(X), y), transform)


def fit_logreg(X, y, X_val, y_val, seed):
    from sklearn.linear_model import LogisticRegression

    pipeline, transform = _one_hot_pipeline(LogisticRegression(max_iter=1000), X)
    return Fitted(pipeline.fit(transform(X), y), transform)


def fit_realmlp(X, y, X_val, y_val, seed):
    from pytabkit import RealMLP_TD_Classifier

    # RealMLP refuses missing numbers: the training rows' medians fill them; missing categories are a category.
    text = categorical_columns(X)
    medians = X.drop(columns=text).median().fillna(0.0)

    def transform(frame):
        frame = frame.fillna(medians)
        for col in text:
            frame[col] = frame[col].astype("string").fillna("<missing>").astype("category")
        return frame

    model = RealMLP_TD_Classifier(device="cpu", random_state=seed, n_threads=1, verbosity=0)
    return Fitted(model.fit(transform(X), y, transform(X_val), y_val), transform)


@dataclass(frozen=True)
class Contender:
    """A model to compare with: how to fit it, and how it uses the validation rows and multilabel targets."""

    key: str
    label: str
    package: str
    fit: Callable  # (X, y, X_val, y_val, seed) -> object with predict_proba(X) and classes_
    uses_validation: bool = False  # True: trains on train, validation picks its epoch; False: trains on both
    native_multilabel: bool = False  # False: one model per label


CONTENDERS = {c.key: c for c in [
    Contender("realmlp", "RealMLP-TD", "pytabkit", fit_realmlp, uses_validation=True),
    Contender("lightgbm", "LightGBM", "lightgbm", fit_lightgbm),
    Contender("hgb", "HistGradientBoosting", "sklearn", fit_hgb),
    Contender("mlp", "MLPClassifier", "sklearn", fit_mlp, native_multilabel=True),
    Contender("logreg", "LogisticRegression", "sklearn", fit_logreg),
]}


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None when it is missing."""
    import importlib.metadata

    try:
        return importlib.metadata.version({"sklearn": "scikit-learn"}.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return None


def run_contender(contender: Contender, splits, seed: int) -> dict:
    """Fit one contender on one split and score it on the test rows.

    ``seconds`` is the fits' wall-clock time, ``cpu_seconds`` this process's CPU time for them (with one
    thread, the figure that waiting for a core on a busy machine does not inflate).
    """
    train, val, test = splits.train, splits.validation, splits.test
    if contender.uses_validation:
        X, y, X_val, y_val = train.features, train.target, val.features, val.target
    else:
        X = pd.concat([train.features, val.features], ignore_index=True)
        y = pd.concat([train.target, val.target], ignore_index=True)
        X_val = y_val = None
    per_label = test.multilabel and not contender.native_multilabel
    with clock() as took:
        if per_label:
            models = [contender.fit(X, y[c], X_val, None if y_val is None else y_val[c], seed) for c in y.columns]
        else:
            model = contender.fit(X, y, X_val, y_val, seed)
    times = {"seconds": took.wall, "cpu_seconds": took.cpu}
    if per_label:
        proba = np.column_stack([positive_proba(m, test.features) for m in models])
    else:
        proba = model.predict_proba(test.features)
    if test.multilabel:
        return {**score(test.target, proba, (proba >= 0.5).astype(np.int64), None), **times}
    classes = np.asarray(model.classes_)
    return {**score(test.target, proba, classes[proba.argmax(axis=1)], classes), **times}


def positive_proba(model, X) -> np.ndarray:
    """P(label = 1) of shape (n_samples,) from a binary model (0 if it never saw a positive row)."""
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


# ----- torchclf ----------------------------------------------------------------------------------
def torchclf_config(flags: str | None, seed: int):
    """torchclf's defaults (``flags`` None) or a variant's ``train`` flags, with ``seed`` and one thread."""
    from torchclf import api

    if flags is None:
        return api.make_config(train={"seed": seed, "threads": 1})
    from torchclf.cli import variant_config

    return variant_config("variant", shlex.split(flags), {"seed": seed, "threads": 1})


def recipe(flags: str | None) -> str:
    """A short fingerprint of torchclf's version and resolved configuration (seed and threads aside)."""
    import torchclf

    config = torchclf_config(flags, 0).to_dict()
    config["train"].pop("seed"), config["train"].pop("threads")
    text = json.dumps([torchclf.__version__, config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_torchclf(dataset, splits, seed: int, flags: str | None) -> dict:
    """Train torchclf (``torchclf.train``, the same split by the same seed) and score it on the test rows."""
    import torchclf

    with clock() as took:
        result = torchclf.train(dataset, config=torchclf_config(flags, seed))
    times = {"seconds": took.wall, "cpu_seconds": took.cpu}
    test = result.splits.test
    assert test.target.equals(splits.test.target), "torchclf split the rows differently from split_dataset"
    predictor = result.predictor
    proba = predictor.predict_proba(test.features)
    chosen = predictor.predict_indices(test.features)
    extra = {**times, **calibration_and_export(result)}
    if test.multilabel:
        order = [predictor.classes.index(c) for c in test.target.columns]
        return {**score(test.target, proba[:, order], chosen[:, order], None), **extra}
    classes = np.asarray(predictor.classes, dtype=object)
    return {**score(test.target, proba, classes[chosen], classes), **extra}


def calibration_and_export(result) -> dict:
    """The test rows' expected calibration error before and after the run's calibration, and how far the
    ONNX export's probabilities (onnxruntime) are from the predictor's on those rows (None: not exported)."""
    from torchclf.errors import TorchclfError

    calibration = result.metrics["test"]["calibration"]
    out = {"ece_uncalibrated": calibration["uncalibrated"]["ece"],
           "ece_calibrated": calibration.get("calibrated", calibration["uncalibrated"])["ece"],
           "onnx_max_difference": None, "onnx_label_mismatches": None, "onnx_note": None}
    try:
        from torchclf import export

        checked = export.check(result.predictor, export.to_onnx(result.predictor), result.splits.test.features)
    except (TorchclfError, ImportError) as exc:
        out["onnx_note"] = str(exc).splitlines()[0][:200]
    else:
        out.update(onnx_max_difference=checked.max_difference, onnx_label_mismatches=checked.label_mismatches)
    return out


def warm_up(model: str, variants: dict) -> None:
    """Fit ``model`` once on iris, untimed: a process's first fit also pays for imports and lazy set-up
    (about 4 seconds for torchclf and for RealMLP-TD here), which would swamp the small tables."""
    dataset = load("iris")
    splits = split_dataset(dataset, seed=0)
    if model.startswith("torchclf"):
        run_torchclf(dataset, splits, 0, variants.get(model))
    else:
        run_contender(CONTENDERS[model], splits, 0)


# ----- the results file ------------------------------------------------------------------------
def result_key(table: str, seed: int, model: str) -> str:
    return f"{table}|{seed}|{model}"


def read_results(path: Path) -> dict:
    """The cached results, keyed by ``result_key`` (empty when the file does not exist yet)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["results"]


def write_results(path: Path, results: dict) -> None:
    """Write the results atomically (a stopped run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"format": 1, "results": dict(sorted(results.items()))}, indent=1) + "\n",
                       encoding="utf-8")
    os.replace(partial, path)


# ----- the report --------------------------------------------------------------------------------
@dataclass
class Row:
    """One table's facts and its results by model: lists over the seeds that were measured."""

    name: str
    kind: str
    source: str
    rows: int
    columns: int
    test_rows: int
    results: dict  # model -> list of result dicts


def label_of(model: str) -> str:
    if model in CONTENDERS:
        return CONTENDERS[model].label
    return "torchclf (defaults)" if model == "torchclf" else model


def summary_line(row: Row) -> str:
    """Whether torchclf's defaults meet the issue's targets on this table."""
    mean = {m: {k: float(np.mean([r[k] for r in rs])) for k in ("accuracy", "log_loss", "seconds", "cpu_seconds")}
            for m, rs in row.results.items() if rs}
    if "torchclf" not in mean:
        return f"- {row.name}: no torchclf result"
    ours = mean["torchclf"]
    others = {m: v for m, v in mean.items() if m in CONTENDERS}
    parts = []
    if others:
        best = max(others, key=lambda m: others[m]["accuracy"])
        gap = others[best]["accuracy"] - ours["accuracy"]
        verdict = "yes" if gap <= 1.0 / row.test_rows + 1e-9 else "no"
        parts.append(f"accuracy {ours['accuracy']:.4f} vs best contender {label_of(best)} "
                     f"{others[best]['accuracy']:.4f}; within one test row (1/{row.test_rows}): {verdict}")
    if "realmlp" in mean:
        real = mean["realmlp"]
        parts.append(f"log loss {ours['log_loss']:.3f} vs RealMLP-TD {real['log_loss']:.3f}: "
                     f"{'as good' if ours['log_loss'] <= real['log_loss'] else 'worse'}")
        ratio = ours["seconds"] / real["seconds"]
        verdict = ("yes" if ratio <= 0.2 else "no") if row.rows > 1000 else "not a target at 1,000 rows or fewer"
        parts.append(f"time {ours['seconds']:.1f} s vs RealMLP-TD {real['seconds']:.1f} s, ratio {ratio:.2f} "
                     f"(CPU time {ours['cpu_seconds'] / real['cpu_seconds']:.2f}); at most 1/5: {verdict}")
    return f"- {row.name}: " + "; ".join(parts)


def calibration_line(row: Row) -> str:
    """One table's row of the calibration and export table (``-`` where results predate those fields)."""
    rs = [r for r in row.results.get("torchclf", []) if "ece_uncalibrated" in r]
    if not rs:
        return f"| {row.name} | - | - | - | - | - |"
    raw, cal = (float(np.mean([r[k] for r in rs])) for k in ("ece_uncalibrated", "ece_calibrated"))
    lowered = sum(r["ece_calibrated"] < r["ece_uncalibrated"] for r in rs)
    diffs = [r["onnx_max_difference"] for r in rs if r["onnx_max_difference"] is not None]
    if diffs:
        onnx = f"{max(diffs):.1e}"
        mismatches = str(sum(r["onnx_label_mismatches"] for r in rs if r["onnx_label_mismatches"] is not None))
    else:
        onnx, mismatches = "not exported: " + str(next((r["onnx_note"] for r in rs if r["onnx_note"]), "")), "-"
    return f"| {row.name} | {raw:.4f} | {cal:.4f} | {lowered} of {len(rs)} seeds | {onnx} | {mismatches} |"


def markdown(rows: list[Row], models: list[str], seeds: list[int], notes: list[str], facts: str) -> str:
    """The tables and summary lines written into docs/quality.md."""
    def head(first):
        cols = first + [label_of(m) for m in models]
        return ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]

    def cells(row: Row, fmt: Callable[[list], str], best: Callable[[dict], list] = lambda means: []):
        means = {m: float(np.mean([r["accuracy"] for r in row.results[m]])) for m in models if row.results.get(m)}
        winners = best(means)
        out = []
        for m in models:
            text = fmt(row.results[m]) if row.results.get(m) else "-"
            out.append(f"**{text}**" if m in winners else text)
        return out

    def best_accuracy(means):  # every model that ties for the best mean
        top = max(means.values(), default=None)
        return [m for m, v in means.items() if v == top]

    def accuracy(rs):
        text = f"{np.mean([r['accuracy'] for r in rs]):.4f} ({np.min([r['accuracy'] for r in rs]):.4f})"
        return text if len(rs) == len(seeds) else f"{text} [{len(rs)} seed{'s' if len(rs) > 1 else ''}]"

    def seconds(rs):
        return f"{np.mean([r['seconds'] for r in rs]):.2f} ({np.mean([r['cpu_seconds'] for r in rs]):.2f})"

    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    out = ["### Tables", "", "| table | kind | source | rows | columns | test rows | what |", "|" + " --- |" * 7]
    out += [f"| {r.name} | {r.kind} | {r.source} | {r.rows:,} | {r.columns} | {r.test_rows:,} | {TABLES[r.name].about} |"
            for r in rows]
    out += ["", f"### Test accuracy, mean (minimum) over {seed_text}", "",
            "Multilabel tables: subset accuracy (every label of a row right). The best mean is in bold.", ""]
    out += head(["table", "kind"])
    out += [f"| {r.name} | {r.kind} | " + " | ".join(cells(r, accuracy, best_accuracy)) + " |" for r in rows]
    out += ["", f"### Test log loss, mean over {seed_text}", "",
            (f"The true class's probability clipped below at {CLIP:g}; multilabel tables: the binary log loss "
             "averaged over labels."), ""]
    out += head(["table", "kind"])
    out += [f"| {r.name} | {r.kind} | " + " | ".join(cells(r, lambda rs: f"{np.mean([x['log_loss'] for x in rs]):.4f}"))
            + " |" for r in rows]
    out += ["", f"### Training seconds, mean over {seed_text}: wall clock (CPU time), one thread", "",
            ("The time to fit on the training rows (preprocessing included), not to predict. The CPU time is "
             "what waiting for a core on a busy machine does not inflate."), ""]
    out += head(["table", "rows"])
    out += [f"| {r.name} | {r.rows:,} | " + " | ".join(cells(r, seconds)) + " |" for r in rows]
    out += ["", "### torchclf's defaults against the targets", ""] + [summary_line(r) for r in rows]
    out += ["", f"### torchclf: calibration and ONNX export, mean over {seed_text}", "",
            ("Expected calibration error on the test rows of the network's own probabilities and of the "
             "calibrated ones (temperature on the validation rows), and the largest difference between the "
             "ONNX export's probabilities (onnxruntime) and the predictor's on the test rows."), "",
            "| table | ECE, network | ECE, calibrated | calibration lowers ECE | ONNX max difference | label mismatches |",
            "|" + " --- |" * 6]
    out += [calibration_line(r) for r in rows]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    out += ["", facts]
    return "\n".join(out) + "\n"


def write_doc(path: Path, block: str) -> None:
    """Put ``block`` between the markers in ``path``, keeping the text around them (appended if absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    marked = f"{BEGIN}\n{block}{END}"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + marked + rest.split(END, 1)[1]
    else:
        print(f"{path}: no {BEGIN} ... {END} markers; appending the tables at the end", file=sys.stderr)
        text = text.rstrip("\n") + ("\n\n" if text else "") + marked + "\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# ----- the run -----------------------------------------------------------------------------------
def parse_variants(specs: list[str]) -> dict[str, str]:
    """``NAME:FLAGS`` strings -> {"torchclf:NAME": FLAGS}."""
    variants = {}
    for spec in specs:
        name, colon, flags = spec.partition(":")
        if not colon or not name.strip():
            raise SystemExit(f"--variant {spec!r}: expected NAME:FLAGS, e.g. \"no-smoothing:--label-smoothing 0\"")
        variants[f"torchclf:{name.strip()}"] = flags.strip()
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names (default: all)")
    parser.add_argument("--models", default=",".join(["torchclf", *CONTENDERS]),
                        help="comma-separated: torchclf, " + ", ".join(CONTENDERS) + " (variants are added)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                        help="a torchclf row with `torchclf train` flags, e.g. \"no-smoothing:--label-smoothing 0\"")
    parser.add_argument("--rerun", action="append", default=[], metavar="MODEL",
                        help="recompute this model's results instead of reading them (torchclf, torchclf:NAME, ...)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"the results file (default: {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--cached-only", action="store_true",
                        help="fit nothing: report the cached results (a cell with fewer seeds says how many)")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/quality.md")
    parser.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = parse_variants(args.variant)
    models = models[:1] + list(variants) + models[1:] if models[:1] == ["torchclf"] else list(variants) + models
    unknown = [t for t in tables if t not in TABLES] + [m for m in models + args.rerun
                                                         if m != "torchclf" and m not in CONTENDERS and m not in variants]
    if unknown:
        parser.error(f"unknown table or model {unknown}; tables: {', '.join(TABLES)}; models: torchclf, "
                     + ", ".join(CONTENDERS) + ", and torchclf:NAME for each --variant NAME:FLAGS")
    seeds = list(range(args.seeds))

    warnings.simplefilter("ignore")
    from benchmarks.common import machine_info, set_threads

    set_threads(1)
    import torchclf

    notes, available = [], {}
    for m in models:
        package = CONTENDERS[m].package if m in CONTENDERS else "torchclf"
        available[m] = package_version(package)
        if available[m] is None:
            notes.append(f"{label_of(m)} skipped: {package} is not installed (pip install -e '.[bench]')")
    for name in [t for t in tables if not TABLES[t].available()]:
        notes.append(f"table {name} skipped: {TABLES[name].package} is not installed (pip install -e '.[bench]')")
        tables.remove(name)
    fingerprints = {m: recipe(variants.get(m)) for m in models if m.startswith("torchclf")}

    results = read_results(args.results)
    report, warm = [], set()
    for name in tables:
        dataset = load(name)
        table, row_results = TABLES[name], {m: [] for m in models}
        test_rows = 0
        for seed in seeds:
            splits = split_dataset(dataset, seed=seed)
            test_rows = splits.test.n_rows
            for model in models:
                if available[model] is None:
                    continue
                key = result_key(name, seed, model)
                cached = results.get(key)
                fresh = cached is not None and model not in args.rerun and (
                    model not in fingerprints or cached.get("recipe") == fingerprints[model])
                if not fresh and args.cached_only:
                    continue
                if not fresh:
                    try:
                        if model not in warm:
                            warm.add(model)
                            warm_up(model, variants)
                        if model.startswith("torchclf"):
                            measured = run_torchclf(dataset, splits, seed, variants.get(model))
                        else:
                            measured = run_contender(CONTENDERS[model], splits, seed)
                    except Exception as exc:  # noqa: BLE001  (one failing fit must not lose a long run; reported)
                        message = f"{label_of(model)} failed on {name} seed {seed}: {type(exc).__name__}: {exc}"
                        print(message, file=sys.stderr)
                        notes.append(message)
                        continue
                    cached = {**measured, "test_rows": test_rows, "version": available[model],
                              "date": time.strftime("%Y-%m-%d")}
                    if model in fingerprints:
                        cached.update(recipe=fingerprints[model], flags=variants.get(model))
                    results[key] = cached
                    write_results(args.results, results)
                    print(f"{name} seed {seed} {label_of(model)}: accuracy {cached['accuracy']:.4f}, "
                          f"log loss {cached['log_loss']:.4f}, {cached['seconds']:.1f} s", file=sys.stderr)
                row_results[model].append(cached)
        report.append(Row(name, table.kind, table.source, dataset.n_rows, dataset.features.shape[1], test_rows,
                          row_results))

    info = machine_info(1)
    packages = {CONTENDERS[m].package: v for m, v in available.items() if m in CONTENDERS and v}
    versions = ", ".join(f"{ {'sklearn': 'scikit-learn'}.get(p, p)} {v}" for p, v in packages.items())
    dates = sorted(r["date"] for row in report for rs in row.results.values() for r in rs) or ["-"]
    command = f"--seeds {args.seeds}" + (" --cached-only" if args.cached_only else "")
    facts = (f"Measured with `OMP_NUM_THREADS=1 python benchmarks/quality.py {command}` "
             f"(results cached in `{args.results.name}`, measured {dates[0]} to {dates[-1]}), "
             f"torchclf {torchclf.__version__} "
             f"(recipe {fingerprints.get('torchclf', '-')}), {versions}, torch {info['torch']}, "
             f"Python {platform.python_version()}, on {info['cpu']} ({info['cores']} cores), one thread per fit.")
    block = markdown(report, [m for m in models if available[m]], seeds, notes, facts)
    print(block)
    if args.write:
        write_doc(args.doc, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

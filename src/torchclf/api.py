"""The workflow from a source to a trained, evaluated and saved model.

source -> Dataset -> split -> Preprocessor/LabelCoder (fit on train rows) ->
tensors -> Task + model -> engine.fit -> metrics -> run folder. The command
line, the estimator and user code all come through here.
"""

from __future__ import annotations

import csv
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from torchclf import distributed, engine
from torchclf.config import RunConfig, with_overrides
from torchclf.data import Dataset, Splits, from_frame, resolve_source, split_dataset
from torchclf.errors import TorchclfError
from torchclf.metrics import compute_metrics
from torchclf.model import PRESETS, build_model
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder, Preprocessor
from torchclf.task import Task, detect_kind


@dataclass
class TrainResult:
    """What :func:`train` returns: the model and what was measured on the way."""

    predictor: Predictor
    history: list[dict]
    metrics: dict
    splits: Splits
    seconds: float
    stop_reason: str = ""
    best_epoch: int | None = None
    run_dir: Path | None = None
    data_summary: dict = field(default_factory=dict)


# ----- configuration -----------------------------------------------------------
def make_config(preset: str | None = None, *, task: str = "auto", model: dict | None = None,
                train: dict | None = None, data: dict | None = None) -> RunConfig:
    """A RunConfig from a preset name plus explicit overrides (explicit wins)."""
    base = RunConfig(task=task, preset=preset)
    if preset is not None:
        if preset not in PRESETS:
            raise TorchclfError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        base = RunConfig(model=p.model, task=task, preset=preset)
        base = with_overrides(base, train=p.train)
    return with_overrides(base, model=model or {}, train=train or {}, data=data or {})


def as_dataset(data, target=None, *, label_sep: str | None = None) -> Dataset:
    """Accept a Dataset, a path or built-in name, a DataFrame, or arrays ``X`` with labels ``target``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return resolve_source(str(data), target, label_sep=label_sep)
    if isinstance(data, pd.DataFrame):
        if target is not None and not isinstance(target, (str, list, tuple)):
            y = pd.DataFrame(np.asarray(target)) if np.asarray(target).ndim == 2 else pd.Series(np.asarray(target), name="label")
            return Dataset(features=data.reset_index(drop=True), target=y.reset_index(drop=True))
        return from_frame(data, list(target) if isinstance(target, tuple) else target, label_sep=label_sep)
    X = np.asarray(data)
    if X.ndim != 2:
        raise TorchclfError(f"X must be 2-dimensional (n_samples, n_features), got shape {X.shape}")
    if target is None:
        raise TorchclfError("labels are required: train(X, y)")
    y = np.asarray(target)
    features = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    if y.ndim == 2:
        return Dataset(features, pd.DataFrame(y, columns=[f"label_{j}" for j in range(y.shape[1])]).astype("int64"))
    return Dataset(features, pd.Series(y, name="label"))


def resolve_task(config: RunConfig, labels: LabelCoder, where: str) -> Task:
    n = labels.n_classes
    if not labels.multilabel and n < 2:
        raise TorchclfError(
            f"{where}: the target has only one class ({labels.classes[:1]}); a classifier needs at least two"
        )
    kind = detect_kind(n, labels.multilabel) if config.task == "auto" else config.task
    if kind == "multilabel" and not labels.multilabel:
        raise TorchclfError(f"{where}: --task multilabel needs several 0/1 --target columns or --label-sep")
    if kind != "multilabel" and labels.multilabel:
        raise TorchclfError(f"{where}: the target has several label columns; use --task multilabel or auto")
    if kind == "binary" and n != 2:
        raise TorchclfError(f"{where}: --task binary needs exactly 2 classes, the target has {n}; use multiclass")
    return Task(kind, n)


def set_threads(threads: int | None) -> None:
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ----- fitting -----------------------------------------------------------------
def balanced_class_weight(task: Task, y: np.ndarray) -> torch.Tensor:
    """Weights n_samples / (n_classes * count) per class (positives per label for multilabel)."""
    if task.kind == "multilabel":
        pos = y.sum(axis=0).clip(min=1)
        return torch.as_tensor((len(y) - pos) / pos, dtype=torch.float32)
    counts = np.bincount(y, minlength=task.n_classes).clip(min=1)
    return torch.as_tensor(len(y) / (task.n_classes * counts), dtype=torch.float32)


def tensors(predictor: Predictor, ds: Dataset, where: str, device, sample_weight=None) -> engine.TensorData:
    X = predictor.encode(ds.features, where)  # in the network's floating dtype
    y = predictor.task.target_tensor(predictor.labels.encode(ds.target, where))
    y = y.to(X.dtype) if y.is_floating_point() else y
    w = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight), dtype=X.dtype)
    return engine.TensorData(X, y, w).to(device)


def fit_predictor(
    train: Dataset,
    validation: Dataset | None,
    config: RunConfig,
    *,
    labels: LabelCoder | None = None,
    sample_weight=None,
    verbose: bool = False,
    callbacks=None,
    warm_start: Predictor | None = None,
    dtype: torch.dtype | None = None,
    optimizer_state: dict | None = None,
) -> tuple[Predictor, engine.TrainState]:
    """Fit preprocessing on ``train``, build the network, and train it.

    With ``warm_start``, its preprocessing, labels and weights are reused and
    training continues from them (and from ``optimizer_state``, an earlier
    ``state.optimizer.state_dict()``). ``dtype`` builds the network in another
    floating type than float32. ``sample_weight`` also weights the
    preprocessing statistics.
    """
    set_threads(config.train.threads)
    distributed.setup(config.train.threads, config.train.device)  # before the device: each rank takes its own GPU
    device = engine.resolve_device(config.train.device)
    if warm_start is not None:
        predictor = warm_start
        predictor.model.to(device)
    else:
        labels = labels or LabelCoder().fit(train.target)
        task = resolve_task(config, labels, train.name)
        preprocessor = Preprocessor(config.data.max_categories).fit(train.features, sample_weight)
        if distributed.rows_are_local():  # ranks hold different rows: rank 0's fit serves them all
            preprocessor = Preprocessor.from_dict(distributed.broadcast(preprocessor.to_dict()))
        # Every rank fits on the same rows; verify, since ranks that disagree would train different inputs.
        distributed.check_same([preprocessor.to_dict(), labels.to_dict()], f"{train.name}: preprocessing")
        torch.manual_seed(config.train.seed)
        model = build_model(preprocessor.n_outputs, task.n_outputs, config.model).to(device=device, dtype=dtype)
        predictor = Predictor(model, task, preprocessor, labels, config,
                              label_sep=train.label_sep, target_columns=train.target_columns)
    train_t = tensors(predictor, train, f"{train.name} (train)", device, sample_weight)
    val_t = tensors(predictor, validation, f"{validation.name} (validation)", device) if validation is not None else None
    class_weight = None
    if config.train.class_weight == "balanced":
        class_weight = balanced_class_weight(predictor.task, predictor.labels.encode(train.target)).to(train_t.X.dtype)
    state = engine.fit(predictor.model, predictor.task, train_t, val_t, config.train,
                       class_weight=class_weight, callbacks=callbacks, verbose=verbose,
                       optimizer_state=optimizer_state)
    predictor.model.eval()
    return predictor, state


def evaluate(predictor: Predictor, ds: Dataset, where: str | None = None) -> dict:
    """Metrics of a predictor on labelled rows (see :func:`torchclf.metrics.compute_metrics`)."""
    where = where or ds.name
    y = predictor.labels.encode(ds.target, where)
    proba = predictor.predict_proba(ds.features, where)
    if distributed.rows_are_local():  # each rank holds a part of the rows: score them all together
        y, proba = distributed.concat_rows(y), distributed.concat_rows(proba)
    return compute_metrics(predictor.task, y, proba, [str(c) for c in predictor.labels.classes])


def train(
    data="circles",
    target=None,
    *,
    config: RunConfig | None = None,
    test=None,
    label_sep: str | None = None,
    out: str | Path | None = None,
    verbose: bool = False,
    callbacks=None,
) -> TrainResult:
    """Train a classifier end to end.

    Parameters
    ----------
    data : str, Path, DataFrame, ndarray or Dataset
        A ``.csv``/``.parquet`` path, a built-in dataset spec (``"moons:noise=0.07"``),
        a DataFrame (with ``target`` naming the label column(s)), or an array
        ``X`` of shape (n_samples, n_features) with labels ``target``.
    target : str, list of str or array-like, optional
    config : RunConfig, optional
        Defaults to :func:`make_config` with no arguments.
    test : same kinds as ``data``, optional
        A separate test set; otherwise a seeded part of ``data`` is held out.
    out : path, optional
        Write the run folder there (see :func:`write_run`).

    Returns
    -------
    TrainResult
    """
    config = config or make_config()
    dataset = as_dataset(data, target, label_sep=label_sep)
    test_ds = None
    if isinstance(test, tuple):
        test_ds = as_dataset(test[0], test[1])
    elif test is not None:
        test_ds = as_dataset(test, dataset.target_columns or target, label_sep=dataset.label_sep)
    labels = LabelCoder().fit(dataset.target)
    if distributed.begin_run(data, config.train):  # each rank read its own part: code the labels of all parts
        labels = LabelCoder().fit(distributed.all_labels(dataset.target))
    splits = split_dataset(dataset, test_size=config.data.test_size, validation_size=config.data.validation_size,
                           seed=config.train.seed, test=test_ds)
    t0 = time.perf_counter()
    predictor, state = fit_predictor(splits.train, splits.validation, config, labels=labels,
                                     verbose=verbose, callbacks=callbacks)
    seconds = time.perf_counter() - t0
    metrics = {"train": evaluate(predictor, splits.train)}
    if splits.validation is not None:
        metrics["validation"] = evaluate(predictor, splits.validation)
    if splits.test is not None:
        metrics["test"] = evaluate(predictor, splits.test)
    summary = dataset.summary()
    summary["split_rows"] = {k: (0 if v is None else v.n_rows) for k, v in vars(splits).items()}
    result = TrainResult(predictor, state.history, metrics, splits, seconds, state.stop_reason,
                         state.best_epoch, data_summary=summary)
    distributed.end_run()  # under torchrun, rank 0 writes only once every rank has finished
    if out is not None:
        write_run(result, out)
    return result


# ----- the run folder ----------------------------------------------------------
def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(name.split(":")[0]).stem) or "run"
    base = Path(root) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def write_history(path: Path, history: list[dict]) -> None:
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})


def write_plots(result: TrainResult, folder: Path) -> list[Path]:
    """Learning curves, the test confusion matrix and, for two features, the decision boundary."""
    from torchclf import plots

    predictor = result.predictor
    written = [plots.learning_curves(result.history, folder / "learning_curves.png")]
    final = result.metrics.get("test") or result.metrics.get("validation") or result.metrics["train"]
    if "confusion_matrix" in final:
        written.append(plots.confusion_matrix(final["confusion_matrix"], [str(c) for c in predictor.classes],
                                              folder / "confusion_matrix.png"))
    features = predictor.preprocessor.feature_names
    numeric = all(c.kind == "numeric" for c in predictor.preprocessor.columns)
    if len(features) == 2 and numeric and predictor.task.kind != "multilabel":
        panels = []
        for title, part in (("Train", result.splits.train), ("Test", result.splits.test)):
            if part is not None:
                panels.append((title, part.features, predictor.labels.encode(part.target)))
        written.append(plots.decision_boundary(
            predictor.predict_proba, panels, (features[0], features[1]), predictor.task.kind,
            [str(c) for c in predictor.classes], folder / "decision_boundary.png"))
    return written


def write_run(result: TrainResult, out: str | Path) -> Path:
    """Write the run folder atomically: model, metrics.json, history.csv, plots/, report.html.

    Under torchrun only rank 0 writes; the other ranks return ``out`` at once.
    """
    from torchclf.artifact import atomic_folder, write_json

    if not distributed.is_main():
        return Path(out)
    predictor = result.predictor
    predictor.extra = {
        **predictor.extra,
        "data": result.data_summary,
        "train_seconds": round(result.seconds, 4),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
    }
    with atomic_folder(out) as folder:
        predictor.save_model(folder)
        write_json(folder / "metrics.json", result.metrics)
        write_history(folder / "history.csv", result.history)
        failed = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plotting warnings are not the user's concern
            # The model and metrics are the run; a picture that fails must not lose them.
            written = None
            try:
                written = write_plots(result, folder / "plots")
            except Exception as exc:  # noqa: BLE001
                failed.append(f"plots ({type(exc).__name__}: {exc})")
            # An empty list means pictures were switched off (as fast tests do): no report either.
            if written != []:
                try:
                    from torchclf.report import write_report

                    part = next(p for p in ("test", "validation", "train") if getattr(result.splits, p) is not None)
                    rows = getattr(result.splits, part)
                    write_report(folder, predictor, rows, f"{rows.name} ({part} split)", name=Path(out).name)
                except Exception as exc:  # noqa: BLE001
                    failed.append(f"report.html ({type(exc).__name__}: {exc})")
        if failed:
            warnings.warn(f"{out}: the run is saved but {' and '.join(failed)} failed; "
                          f"rebuild the report with `torchclf report {out}`")
    result.run_dir = Path(out)
    return result.run_dir


def load(path: str | Path) -> Predictor:
    """Load a run folder for prediction."""
    return Predictor.load(path)

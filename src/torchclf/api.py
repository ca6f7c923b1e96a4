"""The workflow from a run specification to a trained, evaluated and saved model, in two phases.

:func:`prepare` (set-up): read the sources, code the labels, split the rows,
decide the task, fit the preprocessing on the training rows and build the
seeded network. :func:`fit` (training): the one training loop
(:func:`torchclf.engine.fit`) with callbacks, then the scores. :func:`run`
strings them together with checkpoints and the run folder; :func:`resume`
continues an interrupted run from its newest checkpoint. Every front door
(the command line, the estimator, the playground, ``compare``) builds a
:class:`~torchclf.spec.RunSpec` and comes through here; none seeds, builds
a model or calls the engine itself.
"""

from __future__ import annotations

import csv
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from torchclf import accel, artifact, distributed, engine
from torchclf.config import RunConfig, with_overrides, with_values
from torchclf.data import Dataset, Splits, check_target, split_dataset
from torchclf.data.memory import release_memory
from torchclf.data.columns import check_not_target
from torchclf.errors import TorchclfError, warn
from torchclf.metrics import compute_metrics
from torchclf.model import PRESETS, build_model
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder, Preprocessor
from torchclf.spec import RunSpec, as_dataset
from torchclf.task import resolve_task

__all__ = ["Prepared", "RunSpec", "TrainResult", "as_dataset", "evaluate", "fit", "load", "make_config",
           "prepare", "resume", "run", "train", "write_run"]


@dataclass
class Prepared:
    """What :func:`prepare` sets up: the rows, split, and a predictor whose network is seeded but untrained.

    Attributes
    ----------
    spec : RunSpec
    splits : Splits
        Train, validation (may be None) and test (may be None) rows.
    predictor : Predictor
        Labels, task, preprocessing fitted on the training rows, and the
        network on its device.
    data_summary : dict
        Rows, columns and class balance of the source, and the split sizes.
    """

    spec: RunSpec
    splits: Splits
    predictor: Predictor
    data_summary: dict = field(default_factory=dict)
    continued: bool = False  # the network was given trained (``start``), not freshly seeded

    @property
    def config(self) -> RunConfig:
        return self.spec.config


@dataclass
class TrainResult:
    """What :func:`fit` returns: the model and what was measured on the way."""

    predictor: Predictor
    history: list[dict]
    metrics: dict
    splits: Splits
    seconds: float
    stop_reason: str = ""
    best_epoch: int | None = None
    run_dir: Path | None = None
    data_summary: dict = field(default_factory=dict)
    spec: RunSpec | None = None
    optimizer_state: dict | None = None
    refit: dict | None = None  # {"epochs", "rows", "seconds"} of the network refitted on train + validation
    spec_record: dict | None = None  # spec.describe(), computed once (it hashes the source files)
    threads: dict | None = None  # the CPU thread count training used, and why (None on a GPU)


# ----- configuration -----------------------------------------------------------
def make_config(preset: str | None = None, *, task: str = "auto", model: dict | None = None,
                train: dict | None = None, data: dict | None = None) -> RunConfig:
    """A RunConfig from a preset name plus explicit overrides (explicit wins)."""
    base = RunConfig(task=task, preset=preset)
    if preset is not None:
        if preset not in PRESETS:
            raise TorchclfError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        base = with_overrides(RunConfig(model=p.model, task=task, preset=preset), train=p.train, data=p.data)
    return with_overrides(base, model=model or {}, train=train or {}, data=data or {})


# ----- phase 1: set-up -----------------------------------------------------------
def prepare(spec: RunSpec, *, labels: LabelCoder | None = None, dtype: torch.dtype | None = None,
            start: Predictor | None = None, reuse: Prepared | None = None) -> Prepared:
    """Read, split and encode the data of ``spec`` and build its seeded network.

    Parameters
    ----------
    spec : RunSpec
    labels : LabelCoder, optional
        The classes to code the target with (default: those of the data).
    dtype : torch.dtype, optional
        Build the network in another floating type than float32.
    start : Predictor, optional
        Continue from this trained predictor: its labels, preprocessing and
        weights are kept and nothing new is fitted or seeded (the
        estimator's ``warm_start`` and ``partial_fit``).
    reuse : Prepared, optional
        An earlier preparation of the same rows with the same split and
        preprocessing settings (``tune``'s trials): its splits, labels and
        fitted preprocessing are taken as they are, and only the network is
        built and seeded, as it would be without ``reuse``.

    Under ``torchrun`` this joins the job; ranks reading their own part of a
    sharded Parquet source code the labels of all parts together and share
    rank 0's preprocessing.
    """
    config = spec.config
    if reuse is not None:
        if (reuse.config.data, reuse.config.task, reuse.config.train.seed) != (config.data, config.task,
                                                                             config.train.seed):
            raise ValueError("prepare(reuse=...): the split and preprocessing settings differ")
        old = reuse.predictor
        torch.manual_seed(config.train.seed)
        model = build_model(old.preprocessor.layout(), old.task.n_outputs, config.model).to(
            device=engine.resolve_device(config.train.device), dtype=dtype)
        predictor = Predictor(model, old.task, old.preprocessor, old.labels, config, label_sep=old.label_sep,
                              target_columns=old.target_columns)
        return Prepared(spec, reuse.splits, predictor, reuse.data_summary)
    engine.start_cuda_context(config.train.device)
    dataset = spec.dataset()
    check_target(dataset.target, config.task, dataset.name)
    check_not_target(config.data.drop, dataset.target_columns)
    test = spec.test_dataset(dataset)
    local_rows = distributed.begin_run(spec.data, config.train)
    seed = distributed.broadcast(config.train.seed)  # one split and one initialisation for every rank
    if seed != config.train.seed:  # the estimator draws a seed per process when random_state is None
        spec = spec.with_config(with_values(config, {"seed": seed}))
        config = spec.config
    summary = dataset.summary()
    # Rows read here from a file or made by a generator are this run's own: the split moves them into the parts
    # column by column instead of holding the table and its parts at once (5,000,000 rows of 32 float64 columns
    # read from Parquet: 1.3 GB, and a peak of 3.2 GB before).
    splits = split_dataset(dataset, test_size=config.data.test_size, validation_size=config.data.validation_size,
                           seed=config.train.seed, test=test, consume=isinstance(spec.data, (str, Path)))
    # The parts hold their own copies of the rows: keep only the target, so that the table read from a file is
    # freed before its parts are encoded.
    dataset = replace(dataset, features=dataset.features.iloc[:, :0])
    release_memory()
    device = engine.resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)  # initialisation, and dropout in a continued run
    if start is not None:
        predictor = start
        predictor.model.to(device)
    else:
        if labels is None:
            labels = LabelCoder().fit(distributed.all_labels(dataset.target) if local_rows else dataset.target)
        task = resolve_task(config.task, labels.n_classes, labels.multilabel, dataset.name,
                            labels.classes[0] if labels.classes else None)
        train = splits.train
        preprocessor = Preprocessor(config.data.max_categories, scaling=config.data.scaling,
                                    onehot_max=config.data.onehot_max, embed_rows=config.data.embed_rows,
                                    drop=config.data.drop).fit(train.features, train.weight)
        if distributed.rows_are_local():  # ranks hold different rows: rank 0's fit serves them all
            preprocessor = Preprocessor.from_dict(distributed.broadcast(preprocessor.to_dict()))
        # Every rank fits on the same rows; verify, since ranks that disagree would train different inputs.
        distributed.check_same([preprocessor.to_dict(), labels.to_dict()], f"{train.name}: preprocessing")
        torch.manual_seed(config.train.seed)  # the same initial weights whatever the preprocessing drew
        model = build_model(preprocessor.layout(), task.n_outputs, config.model).to(device=device, dtype=dtype)
        predictor = Predictor(model, task, preprocessor, labels, config,
                              label_sep=dataset.label_sep, target_columns=dataset.target_columns)
    summary["split_rows"] = {k: (0 if v is None else v.n_rows) for k, v in vars(splits).items()}
    return Prepared(spec, splits, predictor, summary, continued=start is not None)


def tensors(predictor: Predictor, ds: Dataset, where: str, device) -> engine.TensorData:
    """Encoded rows (and their weights) on ``device`` in the network's dtype."""
    X = predictor.encode(ds.features, where)
    y = predictor.task.target_tensor(predictor.labels.encode(ds.target, where))
    y = y.to(X.dtype) if y.is_floating_point() else y
    w = None if ds.weight is None else torch.as_tensor(np.asarray(ds.weight), dtype=X.dtype)
    return engine.TensorData(X, y, w).to(device)


# ----- phase 2: training -----------------------------------------------------------
def fit(prepared: Prepared, *, callbacks=None, verbose: bool = False, optimizer_state: dict | None = None,
        scores: bool = True) -> TrainResult:
    """Train the prepared network with :func:`torchclf.engine.fit` and score it on every split.

    Parameters
    ----------
    prepared : Prepared
    callbacks : list of Callback, optional
        Run after the divergence guard and early stopping (when there are
        validation rows) and before progress and log lines (when ``verbose``).
    optimizer_state : dict, optional
        An earlier run's ``optimizer.state_dict()`` to continue its moments.
    scores : bool
        Compute ``metrics`` for every split (False leaves it empty). The
        training split is scored on a seeded sample of
        ``MAX_SCORED_TRAIN_ROWS`` rows when it has more (its ``sampled``
        entry says so); validation and test rows are scored in full.
    """
    predictor, splits, config = prepared.predictor, prepared.splits, prepared.config
    device = predictor.device
    check_decisions(predictor, splits.validation, config)  # before training, not after
    with accel.threads(config.train.threads):
        train_t = tensors(predictor, splits.train, f"{splits.train.name} (train)", device)
        val_t = None
        if splits.validation is not None:
            val_t = tensors(predictor, splits.validation, f"{splits.validation.name} (validation)", device)
        class_weight = None
        if config.train.class_weight == "balanced":
            y = predictor.labels.encode(splits.train.target)
            class_weight = predictor.task.balanced_weight(y).to(train_t.X.dtype)
        every = engine.default_callbacks(config.train, verbose, val_t is not None and len(val_t) > 0,
                                         extra=callbacks or ())
        t0 = time.perf_counter()
        state = engine.fit(predictor.model, predictor.task, train_t, val_t, config.train,
                           class_weight=class_weight, callbacks=every,
                           optimizer_state=optimizer_state)
        seconds = time.perf_counter() - t0
        threads_used = accel.last_thread_choice()
        refitting = bool(config.train.refit and not prepared.continued and val_t is not None and len(val_t)
                         and state.best_epoch)
        if not refitting:
            # The encoded rows go before calibration and scoring encode the parts again, a chunk at a time
            # (5,000,000 rows of 32 columns: 0.5 GB of float32 that set the run's peak).
            del train_t, val_t
            release_memory()
        predictor.model.eval()
        decided = calibrate(predictor, splits.validation, config)
        metrics = {}
        # The validation rows are scored by the network early stopping chose: a refitted one has trained on them.
        parts = [("validation", splits.validation), ("train", splits.train), ("test", splits.test)]
        if scores and splits.validation is not None:
            metrics["validation"] = evaluate(predictor, splits.validation)
        refit = None
        if refitting:
            t1 = time.perf_counter()
            predictor.model = refit_network(predictor, train_t, val_t, state, class_weight, verbose)
            refit = {"epochs": state.best_epoch, "rows": len(train_t) + len(val_t),
                     "seconds": time.perf_counter() - t1}
            seconds += refit["seconds"]
            del train_t, val_t
            release_memory()
        if scores:
            for part, rows in parts:
                if rows is not None:
                    rows, sample = (scored_sample(rows, config.train.seed) if part == "train" else (rows, None))
                    if part not in metrics:
                        metrics[part] = evaluate(predictor, rows)
                    metrics[part]["calibration"].update(decided["calibration"])
                    if sample is not None:
                        metrics[part]["sampled"] = sample
            if "validation" in metrics and decided["threshold"] is not None:
                metrics["validation"]["threshold"] = decided["threshold"]
            metrics = {part: metrics[part] for part in ("train", "validation", "test") if part in metrics}
    distributed.end_run()  # under torchrun, rank 0 writes only once every rank has finished
    return TrainResult(predictor, state.history, metrics, splits, seconds, state.stop_reason, state.best_epoch,
                       data_summary=prepared.data_summary, spec=prepared.spec,
                       optimizer_state=state.optimizer.state_dict(), threads=threads_used, refit=refit)


def refit_network(predictor: Predictor, train: engine.TensorData, validation: engine.TensorData, state,
                  class_weight, verbose: bool):
    """A fresh network, seeded as the first, trained on ``train`` and ``validation`` together for the
    epochs early stopping chose, each epoch at the learning rate the first run used in it."""
    from torchclf.callbacks import ReplayLearningRates

    config = predictor.config
    both = engine.TensorData(
        torch.cat([train.X, validation.X]), torch.cat([train.y, validation.y]),
        None if train.weight is None else torch.cat([train.weight, validation.weight]))
    torch.manual_seed(config.train.seed)
    model = build_model(predictor.preprocessor.layout(), predictor.task.n_outputs, config.model)
    model = model.to(device=predictor.device, dtype=predictor.dtype)
    lrs = [row["lr"] for row in state.history[: state.best_epoch]]
    # The replayed rates are those the epochs trained at, warm-up included.
    again = replace(config.train, epochs=state.best_epoch, patience=0, schedule="none", warmup=0)
    if verbose:
        print(f"refit: a fresh network on {len(both):,} training and validation rows for {state.best_epoch} "
              "epochs", file=sys.stderr, flush=True)
    callbacks = engine.default_callbacks(again, verbose, has_validation=False, extra=[ReplayLearningRates(lrs)])
    engine.fit(model, predictor.task, both, None, again, class_weight=class_weight, callbacks=callbacks)
    return model.eval()


# Scoring every training row would predict them all again after training (33 s of 5M rows); above this
# many, the final train scores are of a seeded sample, and metrics.json says so. Validation and test rows
# are always scored in full.
MAX_SCORED_TRAIN_ROWS = 100_000


def scored_sample(rows: Dataset, seed: int, limit: int | None = None) -> tuple[Dataset, dict | None]:
    """``rows`` when at most ``limit`` (default ``MAX_SCORED_TRAIN_ROWS``), else a seeded sample of that many.

    Returns the rows and None, or the sample and ``{"rows", "of", "seed"}``
    for metrics.json. Under torchrun with rank-local rows every row is kept,
    since the ranks score their rows together.
    """
    limit = MAX_SCORED_TRAIN_ROWS if limit is None else limit
    if rows.n_rows <= limit or distributed.rows_are_local():
        return rows, None
    pick = np.sort(np.random.default_rng(seed).choice(rows.n_rows, size=limit, replace=False))
    return rows.take(pick), {"rows": int(limit), "of": int(rows.n_rows), "seed": int(seed)}


def evaluate(predictor: Predictor, ds: Dataset, where: str | None = None) -> dict:
    """Metrics of a predictor on labelled rows (see :func:`torchclf.metrics.compute_metrics`).

    Labels are taken at the predictor's threshold. ``calibration`` holds the
    expected calibration error, Brier score and log loss of the raw
    probabilities (``uncalibrated``) and, when the predictor has a
    calibration, of the calibrated ones (``calibrated``).
    """
    from torchclf.metrics import calibration_metrics

    where = where or ds.name
    y = predictor.labels.encode(ds.target, where)
    logits = predictor.predict_logits(ds.features, where)
    if distributed.rows_are_local():  # each rank holds a part of the rows: score them all together
        y, logits = distributed.concat_rows(y), distributed.concat_rows(logits)
    proba = predictor.probabilities(logits)
    out = compute_metrics(predictor.task, y, proba, [str(c) for c in predictor.labels.classes], predictor.threshold)
    cal = predictor.calibration
    out["calibration"] = {"method": None if cal is None else cal.method,
                          "uncalibrated": calibration_metrics(predictor.task, y, predictor.probabilities(logits, False))}
    if cal is not None:
        out["calibration"]["calibrated"] = calibration_metrics(predictor.task, y, proba)
    return out


def check_decisions(predictor: Predictor, validation: Dataset | None, config: RunConfig) -> None:
    """Refuse a threshold objective that cannot be met, before any training."""
    objective = config.train.threshold
    if objective is None:
        return
    if not predictor.task.takes_threshold:
        raise TorchclfError(f"threshold {objective!r}: the task is multiclass, whose label is the most probable "
                            "class; a threshold applies to binary and multilabel problems only (drop --threshold)")
    if validation is None or validation.n_rows == 0:
        raise TorchclfError(f"threshold {objective!r}: needs validation rows to be chosen on; hold some out "
                            "(--val-size above 0, or early_stopping=True in the estimator)")


def calibrate(predictor: Predictor, validation: Dataset | None, config: RunConfig) -> dict:
    """Fit the calibration and choose the threshold on the validation rows; store both on ``predictor``.

    Returns what was done, for ``metrics.json``: ``calibration`` (``notes``,
    and the fitted ``temperatures``) and ``threshold`` (None, or the
    ``objective``, the chosen ``value``, whether a floor was ``met`` per
    output, and ``notes``).
    """
    from torchclf.calibration import Calibration, choose_threshold

    predictor.calibration, predictor.threshold, predictor.threshold_objective = None, None, None
    out = {"calibration": {"notes": []}, "threshold": None}
    method, objective = config.train.calibration, config.train.threshold
    if method is None and objective is None:
        return out
    if validation is None or validation.n_rows == 0:
        out["calibration"]["notes"].append("no validation rows: the probabilities are not calibrated "
                                           "(hold some out with --val-size)")
        return out
    where = f"{validation.name} (validation)"
    y = predictor.labels.encode(validation.target, where)
    logits = predictor.predict_logits(validation.features, where)
    if distributed.rows_are_local():  # every rank fits on all validation rows, so all ranks agree
        y, logits = distributed.concat_rows(y), distributed.concat_rows(logits)
    if method is not None:
        predictor.calibration = Calibration.fit(predictor.task, logits, y, method)
        out["calibration"]["notes"] += predictor.calibration.notes
        if method == "temperature":
            out["calibration"]["temperatures"] = [round(t, 6) for t in predictor.calibration.temperatures]
    if objective is not None:
        choice = choose_threshold(y, predictor.probabilities(logits), objective)
        predictor.set_threshold(choice.threshold, choice.objective, "threshold")
        out["threshold"] = {"objective": choice.objective, "value": np.round(choice.threshold, 6).tolist(),
                            "met": choice.met, "notes": choice.notes}
    return out


# ----- the whole run: set-up, training, checkpoints, run folder ----------------------
def run(spec: RunSpec, *, out: str | Path | None = None, verbose: bool = False, callbacks=None,
        checkpoint_every: int = 0, _resume_from: tuple[Path, dict] | None = None) -> TrainResult:
    """Prepare, fit and (with ``out``) write the run folder, keeping resumable checkpoints.

    With ``out``, checkpoints go to ``OUT.checkpoints/`` every ``checkpoint_every``
    epochs (0: only when Ctrl-C is pressed, which then raises
    :class:`~torchclf.checkpoint.TrainingInterrupted` saying how to resume)
    and are removed once the run folder is complete.
    """
    from torchclf import checkpoint
    from torchclf.checkpointer import Checkpointer

    if checkpoint_every < 0:
        raise TorchclfError(f"checkpoint_every: got {checkpoint_every}, expected 0 (only on Ctrl-C) or more epochs")
    saver = None
    claimed = False
    if out is not None:
        out = Path(out)
        described = spec.describe()  # hashes the source files: before anything is claimed
        if distributed.is_main():
            # Reserve the name before the work: a second run with the same --out fails now, not after training.
            artifact.claim_run_folder(out)
            claimed = True
        if _resume_from is None and checkpoint.latest(checkpoint.folder_for(out)) is not None:
            artifact.release_run_folder(out)
            raise TorchclfError(f"{out}: an interrupted run left checkpoints in {checkpoint.folder_for(out)}; "
                                f"continue it with `torchclf train --resume {out}` or remove that folder")
        record = {"spec": described, "checkpoint_every": checkpoint_every}
        resume_path, resume_payload = _resume_from or (None, None)
        saver = Checkpointer(checkpoint.folder_for(out), checkpoint_every, record, resume=resume_path,
                             payload=resume_payload)
        if checkpoint_every and verbose and distributed.is_main():
            print(f"checkpoints every {checkpoint_every} epoch(s) in {saver.folder} "
                  f"(if stopped, continue with: torchclf train --resume {out})", file=sys.stderr)
    with accel.threads(spec.config.train.threads):
        try:
            prepared = prepare(spec)
            result = fit(prepared, callbacks=[*(callbacks or []), *([saver] if saver else [])], verbose=verbose)
            if out is not None:
                result.spec_record = described
                write_run(result, out)
        except KeyboardInterrupt as exc:
            if saver is None or isinstance(exc, checkpoint.TrainingInterrupted):
                raise
            raise checkpoint.TrainingInterrupted(saver.resume_hint()) from None
        finally:
            if saver is not None:
                saver.close()
            if claimed:
                artifact.release_run_folder(out)  # nothing to release once the folder is in place
    if saver is not None:
        saver.cleanup()
    return result


def resume(out: str | Path, *, checkpoint_every: int | None = None, verbose: bool = False,
           callbacks=None) -> TrainResult:
    """Continue the interrupted run that was to be written to ``out`` from its newest checkpoint.

    The run's own data (checked unchanged by size and SHA-256) and settings are
    used; the run folder is written to ``out`` (never to a path recorded in the
    checkpoint). ``checkpoint_every`` defaults to the interrupted run's.
    """
    from torchclf import checkpoint

    path = checkpoint.find(out)
    payload = checkpoint.load(path)
    record = payload["run"]
    try:
        spec = RunSpec.from_description(record.get("spec"), str(path))
    except TorchclfError as exc:
        raise TorchclfError(f"{exc}; resuming needs the same data (restore it, or train a new run)") from None
    saved_every = record.get("checkpoint_every")
    if type(saved_every) is not int or saved_every < 0:
        raise TorchclfError(f"{path}: damaged checkpoint (checkpoint_every {saved_every!r})")
    every = saved_every if checkpoint_every is None else checkpoint_every
    return run(spec, out=checkpoint.run_for(path.parent), verbose=verbose, callbacks=callbacks,
               checkpoint_every=every, _resume_from=(path, payload))


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
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train a classifier end to end (a :class:`RunSpec` built from the arguments, then :func:`run`).

    Parameters
    ----------
    data : str, Path, DataFrame, ndarray or Dataset
        A ``.csv``/``.parquet`` path, a built-in dataset spec (``"moons:noise=0.07"``),
        a DataFrame (with ``target`` naming the label column(s)), or an array
        ``X`` of shape (n_samples, n_features) with labels ``target``.
    target : str, list of str or array-like, optional
    config : RunConfig, optional
        Defaults to :func:`make_config` with no arguments.
    test : same kinds as ``data``, or a tuple ``(X, y)``, optional
        A separate test set; otherwise a seeded part of ``data`` is held out.
    out : path, optional
        Write the run folder there (see :func:`write_run`).

    Returns
    -------
    TrainResult
    """
    spec = RunSpec(data, target, test, label_sep, config or make_config())
    return run(spec, out=out, verbose=verbose, callbacks=callbacks, checkpoint_every=checkpoint_every)


# ----- the run folder ----------------------------------------------------------
default_run_dir = artifact.default_run_dir  # a new, claimed run folder name under runs/


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
    numeric = [c.name for c in predictor.preprocessor.columns if c.kind == "numeric"] == features  # no date parts
    if len(features) == 2 and numeric and predictor.task.kind != "multilabel":
        panels = []
        for title, part in (("Train", result.splits.train), ("Test", result.splits.test)):
            if part is not None:
                panels.append((title, part.features, predictor.labels.encode(part.target)))
        written.append(plots.decision_boundary(
            predictor.predict_proba, panels, (features[0], features[1]), predictor.task.kind,
            [str(c) for c in predictor.classes], folder / "decision_boundary.png"))
    return written


def write_run(result: TrainResult, out: str | Path, *, extra_files=None) -> Path:
    """Write the run folder atomically: model, metrics.json, history.csv, plots/, report.html.

    ``extra_files(folder)`` writes more files into the folder before the
    report is built (``tune`` adds its study summary). Under torchrun only
    rank 0 writes; the other ranks return ``out`` at once.
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
        "threads": result.threads,
        "refit": None if result.refit is None else {k: round(v, 4) for k, v in result.refit.items()},
    }
    if result.spec_record is not None or result.spec is not None:
        predictor.extra["spec"] = result.spec_record or result.spec.describe()
    with atomic_folder(out) as folder:
        predictor.save_model(folder)
        write_json(folder / "metrics.json", result.metrics)
        write_history(folder / "history.csv", result.history)
        if extra_files is not None:
            extra_files(folder)
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
            warn(f"{out}: the run is saved but {' and '.join(failed)} failed; "
                 f"rebuild the report with `torchclf report {out}`")
    result.run_dir = Path(out)
    return result.run_dir


def load(path: str | Path) -> Predictor:
    """Load a run folder for prediction."""
    return Predictor.load(path)

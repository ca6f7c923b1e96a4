"""The tutorial's "logits -> probabilities -> labels", shown for a few rows.

:func:`explain_rows` runs a trained model on some raw rows and keeps every
step: the raw network outputs (logits), the probabilities the task's output
function (sigmoid or softmax) makes of them, and the label the threshold or
argmax picks. :func:`held_out_rows` finds the test rows of a run again, so a
run folder can be explained without the user handing the data back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from torchclf.data import Dataset, resolve_source, split_dataset
from torchclf.errors import TorchclfError
from torchclf.spec import RunSpec


@dataclass
class Explanation:
    """Every step from rows to labels for a few rows.

    Attributes
    ----------
    features : DataFrame of shape (n_rows, n_columns)
        The raw input rows.
    logits : ndarray of shape (n_rows, n_outputs)
        What the network returns (1 output for a binary problem).
    probabilities : ndarray of shape (n_rows, n_classes)
        After sigmoid (binary, multilabel) or softmax (multiclass).
    predicted : list
        The labels after threshold or argmax, decoded to the original values.
    true : list or None
        The rows' known labels, when there are any.
    logit_names, class_names : list of str
    rule : str
        One line saying how probabilities became labels for this task.
    """

    features: pd.DataFrame
    logits: np.ndarray
    probabilities: np.ndarray
    predicted: list
    true: list | None
    logit_names: list[str]
    class_names: list[str]
    rule: str

    def to_frame(self, max_features: int = 4) -> pd.DataFrame:
        """One row per input row: a few features, logits, probabilities, label(s).

        Returns
        -------
        DataFrame of shape (n_rows, n_shown_features + n_outputs + n_classes + 1 or 2)
        """
        shown = self.features.iloc[:, :max_features].reset_index(drop=True).copy()
        for j, name in enumerate(self.logit_names):
            shown[name] = self.logits[:, j]
        for j, name in enumerate(self.class_names):
            shown[f"p({name})"] = self.probabilities[:, j]
        shown["predicted"] = [str(v) for v in self.predicted]
        if self.true is not None:
            shown["true"] = [str(v) for v in self.true]
        return shown


def describe_rule(task, classes: list[str] | None = None, *, calibration=None, threshold=None) -> str:
    """How this task turns logits into probabilities and probabilities into labels, in one line.

    ``calibration`` (a :class:`~torchclf.calibration.Calibration`) and
    ``threshold`` (a float, or one per label) are a predictor's own, when it has them.
    """
    def scaled(logit: str) -> str:
        if calibration is None:
            return logit
        if calibration.method != "temperature":
            return f"{logit}, calibrated ({calibration.method})"
        temps = calibration.temperatures or [1.0]
        return f"{logit} / {temps[0]:.4g}" if len(set(temps)) == 1 else f"{logit} / T (one per label)"

    if threshold is None:
        cut = f"{task.threshold:g}"
    else:
        values = np.atleast_1d(np.asarray(threshold, dtype=float))
        cut = f"{values[0]:.4g}" if len(set(values.tolist())) == 1 else "its own threshold (" + ", ".join(
            f"{v:.3g}" for v in values) + ")"
    if task.output_activation == "softmax":
        return (f"probabilities = softmax({scaled('logits')}), one per class, summing to 1; "
                "label = the class with the largest")
    if task.n_outputs == 1:
        neg, pos = (classes or ["0", "1"])[:2]
        return (f"p({pos}) = sigmoid({scaled('logit')}), p({neg}) = 1 - p({pos}); "
                f"label = {pos} if p({pos}) >= {cut}, else {neg}")
    return f"probabilities = sigmoid({scaled('logit')}) per label, independently; labels = those with p >= {cut}"


def explain_rows(predictor, rows: pd.DataFrame, true=None) -> Explanation:
    """Follow ``rows`` through the model, keeping logits, probabilities and labels.

    The probabilities and labels are the predictor's own (calibration and a
    chosen threshold included), so they agree with ``predict_proba`` and
    ``predict``.

    Parameters
    ----------
    predictor : Predictor
    rows : DataFrame of shape (n_rows, n_columns)
        Raw feature columns, as for :meth:`Predictor.predict`.
    true : Series of shape (n_rows,) or DataFrame of shape (n_rows, n_labels), optional
        Known labels to show beside the predictions.
    """
    logits = predictor.predict_logits(rows, where="explain")
    task = predictor.task
    proba = predictor.probabilities(logits)
    predicted = predictor.labels.decode(predictor.decide(proba), predictor.label_sep)
    truth = None
    if true is not None:
        encoded = predictor.labels.encode(true, "explain (labels)")
        truth = predictor.labels.decode(encoded, predictor.label_sep)
    classes = [str(c) for c in predictor.classes]
    logit_names = ["logit"] if task.n_outputs == 1 else [f"logit({c})" for c in classes]
    rule = describe_rule(task, classes, calibration=predictor.calibration, threshold=predictor.threshold)
    return Explanation(rows.reset_index(drop=True), logits, proba, list(predicted), truth,
                       logit_names, classes, rule)


def held_out_rows(predictor, data: str | None = None, target: list[str] | None = None) -> tuple[Dataset, str]:
    """Labelled rows to look at: ``data`` if given, else the run's own test split.

    The run's :class:`~torchclf.spec.RunSpec` says where its rows came from:
    its separate test file, or the test split rebuilt from its source (a
    built-in dataset spec, or a file checked unchanged by its SHA-256) with
    the run's seed and split sizes.

    Returns
    -------
    rows : Dataset
    description : str
        Where the rows came from, for titles.
    """
    if data is not None:
        ds = resolve_source(data, list(target or predictor.target_columns) or None, label_sep=predictor.label_sep)
        return ds, data
    fix = "pass the labelled rows to use as DATA"
    record = (predictor.extra or {}).get("spec")
    if record is None:
        raise TorchclfError(f"the run does not record the data it was trained on; {fix}")
    try:
        spec = RunSpec.from_description(record, "the run's data")
        dataset = spec.dataset()
        if spec.test is not None:
            return spec.test_dataset(dataset), f"{spec.test} (the run's test file)"
    except TorchclfError as exc:
        raise TorchclfError(f"{exc}; {fix}") from None
    cfg = spec.config
    splits = split_dataset(dataset, test_size=cfg.data.test_size, validation_size=cfg.data.validation_size,
                           seed=cfg.train.seed)
    part, name = (splits.test, "test") if splits.test is not None else (splits.validation, "validation")
    if part is None:
        raise TorchclfError(f"the run held out no test or validation rows; {fix}")
    return part, f"{spec.data} ({name} split)"


def pick_rows(ds: Dataset, n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series | pd.DataFrame]:
    """Up to ``n`` rows, drawn so that each class appears when there are few classes.

    Returns
    -------
    features : DataFrame of shape (min(n, n_rows), n_columns)
    target : Series or DataFrame with the same rows
    """
    if n < 1:
        raise TorchclfError(f"--rows: expected at least 1 row, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(ds.n_rows)
    if not ds.multilabel:
        # Round-robin over classes so a handful of rows still shows every class: the first row of each class
        # (classes in the order they first appear), then the second of each, and so on. Only the first n are
        # needed, but the order is worked out for every row at once rather than row by row in Python.
        classes = pd.factorize(ds.target.astype(str).to_numpy()[order])[0]
        by_class = np.argsort(classes, kind="stable")
        starts = np.searchsorted(classes[by_class], np.arange(classes.max() + 1))
        rank = np.empty_like(classes)
        rank[by_class] = np.arange(len(classes)) - starts[classes[by_class]]
        order = order[np.lexsort((classes, rank))]
    chosen = np.sort(order[:n])
    return ds.features.iloc[chosen].reset_index(drop=True), ds.target.iloc[chosen].reset_index(drop=True)


def rows_to_explain(predictor, data: str | None = None, target: list[str] | None = None, n: int = 5,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.Series | pd.DataFrame | None, str]:
    """A few rows to follow through the model, with their labels when known.

    Without ``data``: rows of the run's own test split. With ``data`` (a file
    or built-in dataset): labelled rows when the target column(s) are there,
    else its first ``n`` rows, unlabelled.

    Returns
    -------
    features : DataFrame of shape (n, n_columns)
    target : Series or DataFrame of the same rows, or None
    description : str
    """
    from torchclf.data import from_frame, read_table
    from torchclf.data.sources import names_builtin

    if data is None or names_builtin(data):
        ds, where = held_out_rows(predictor, data, target)
        return (*pick_rows(ds, n, seed), where)
    if n < 1:
        raise TorchclfError(f"--rows: expected at least 1 row, got {n}")
    frame = read_table(data)
    targets = list(target or predictor.target_columns)
    if targets and all(t in frame.columns for t in targets):
        ds = from_frame(frame, targets if len(targets) > 1 else targets[0], label_sep=predictor.label_sep, name=data)
        return (*pick_rows(ds, n, seed), data)
    return frame.head(n).reset_index(drop=True), None, f"{data} (first rows, no labels)"

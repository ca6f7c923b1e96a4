"""Scores from true labels and predicted probabilities (no training here).

The numbers of :func:`compute_metrics` are scikit-learn's metrics written in
numpy (so that training never imports scikit-learn, a second of start-up) and
tested against :mod:`sklearn.metrics`; this module decides which metrics apply
to which task and packs them as plain JSON values. Accuracies are fractions in [0, 1]. The calibration scores
(expected calibration error, Brier score, log loss) are computed here in
numpy, for every task alike, and tested against scikit-learn's.
"""

from __future__ import annotations

import numpy as np

from torchclf.task import Task


def _f(x) -> float:
    return float(np.round(float(x), 6))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of shape (n_classes, n_classes): true classes as rows, predicted as columns."""
    pairs = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(tp, pred_count, true_count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class from true positives and predicted / true counts, 0 where undefined."""
    tp = np.asarray(tp, dtype=np.float64)
    return (_divide(tp, pred_count), _divide(tp, true_count),
            _divide(2 * tp, np.asarray(pred_count) + np.asarray(true_count)))


def binary_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, highest first, each of shape (n_thresholds,).

    As ``sklearn.metrics.confusion_matrix_at_thresholds``: rows scoring at
    least the threshold count as positive; counts are float64.
    """
    score = np.asarray(score)
    order = np.argsort(score)[::-1]  # the order within tied scores does not matter: ties end up in one point
    score, truth = score[order], np.asarray(y)[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(truth)[last]
    return 1.0 + last - tps, tps, score[last]


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, each of shape (n_points,), from (0, 0) up; collinear points dropped.

    ``y`` holds 0/1 with both present. The same points as
    ``sklearn.metrics.roc_curve`` (with ``drop_intermediate=True``).
    """
    fps, tps, _ = binary_curve(y, score)
    if len(fps) > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[corner], tps[corner]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of one 0/1 target (both values present).

    Counted rather than integrated (the Mann-Whitney statistic): the share of
    (positive, negative) pairs that the score orders rightly, ties counting
    half, which is the trapezoidal area under the curve. Sorting the two
    groups' scores (no argsort of the rows) keeps it cheap per class.
    """
    truth = np.asarray(y).astype(bool)
    score = np.asarray(score)
    positives, negatives = np.sort(score[truth]), np.sort(score[~truth])
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    pairs = float(len(positives)) * float(len(negatives))
    return float((np.sum(below, dtype=np.float64) + 0.5 * np.sum(tied, dtype=np.float64)) / pairs)


def precision_recall_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall, each of shape (n_thresholds + 1,), recall decreasing to the final (recall 0, precision 1)."""
    fps, tps, _ = binary_curve(y, score)
    precision = _divide(tps, tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Sum over thresholds of precision times the gain in recall (``sklearn.metrics.average_precision_score``)."""
    precision, recall = precision_recall_curve(y, score)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def compute_metrics(task: Task, y_true: np.ndarray, proba: np.ndarray, class_names: list[str],
                    threshold=None) -> dict:
    """Metrics for one set of rows.

    Parameters
    ----------
    task : Task
    y_true : ndarray of shape (n_samples,) or (n_samples, n_labels)
        Class indices, or a 0/1 indicator matrix for multilabel.
    proba : ndarray of shape (n_samples, n_classes)
        As returned by :meth:`Task.probabilities`.
    class_names : list of str
    threshold : float or ndarray of shape (n_labels,), optional
        The decision threshold of a binary or multilabel model (default: the task's).
    """
    import torch

    y_pred = task.labels(torch.as_tensor(proba), threshold).numpy()
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    names = [str(c) for c in class_names]
    out: dict = {"n_samples": int(len(y_true))}
    if task.kind == "multilabel":
        Y, P = y_true.astype(np.int64), np.asarray(y_pred).astype(np.int64)
        tp, pred_count, true_count = (Y & P).sum(axis=0), P.sum(axis=0), Y.sum(axis=0)
        p, r, f = precision_recall_f1(tp, pred_count, true_count)
        out["subset_accuracy"] = _f(np.mean(np.all(Y == P, axis=1))) if len(Y) else 0.0
        out["accuracy"] = out["subset_accuracy"]
        out["hamming_loss"] = _f(np.count_nonzero(Y != P) / max(Y.size, 1))
        out["f1_micro"] = _f(precision_recall_f1(tp.sum(), pred_count.sum(), true_count.sum())[2])
        out["f1_macro"] = _f(np.mean(f))
        # Undefined when a label has only one value among these rows.
        if np.all((true_count > 0) & (true_count < len(Y))):
            columns = np.ascontiguousarray(proba.T)
            out["roc_auc_macro"] = _f(np.mean([roc_auc(Y[:, j], columns[j]) for j in range(Y.shape[1])]))
        support = true_count
    else:
        k = len(names)
        cm = confusion(y_true, y_pred, k)
        tp, pred_count, true_count = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
        p, r, f = precision_recall_f1(tp, pred_count, true_count)
        out["accuracy"] = _f(tp.sum() / max(len(y_true), 1))
        # Balanced accuracy: the mean recall of the classes present in y_true.
        out["balanced_accuracy"] = _f(np.mean(r[true_count > 0]) if np.any(true_count > 0) else 0.0)
        out["precision_macro"] = _f(np.mean(p))
        out["recall_macro"] = _f(np.mean(r))
        out["f1_macro"] = _f(np.mean(f))
        if np.all(true_count > 0):  # one-vs-rest needs every class among these rows
            if k == 2:  # binary, or --task multiclass on two classes: the positive column's score
                out["roc_auc"] = _f(roc_auc(y_true == 1, proba[:, 1]))
            else:
                columns = np.ascontiguousarray(proba.T)  # one class's scores contiguous: cheaper to gather
                out["roc_auc"] = _f(np.mean([roc_auc(y_true == j, columns[j]) for j in range(k)]))
        out["log_loss"] = _f(_clipped_log_loss(y_true, proba))
        out["confusion_matrix"] = cm.tolist()
        support = true_count
    out["per_class"] = {
        n: {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f[i]), "support": int(support[i])}
        for i, n in enumerate(names)
    }
    return out


def _clipped_log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean -log of the true class's probability, clipped to [eps, 1 - eps] of its float type (as scikit-learn)."""
    proba = np.asarray(proba)
    # Only the true class's column is read: picked first, then clipped (the same numbers as clipping the whole
    # matrix, at 1/k of the cost; 200,000 rows of 100 classes: 0.2 s less).
    picked = proba[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    eps = np.finfo(picked.dtype).eps
    picked = np.clip(picked, max(1e-15, eps), 1 - eps)
    return float(np.mean(-np.log(picked))) if len(picked) else 0.0


def headline(metrics: dict, kind: str) -> dict[str, float]:
    """The few numbers worth printing in a summary line, in a stable order."""
    from torchclf.task import default_metric_names

    return {k: metrics[k] for k in default_metric_names(kind) if k in metrics}


# ----- calibration -----------------------------------------------------------------------------------------
# Equal-width bins over [0, 1] for the expected calibration error and the reliability diagram; 15 as in
# Guo et al. (2017), "On Calibration of Modern Neural Networks". Bin b holds [b/15, (b+1)/15); the last
# bin also holds 1.0.
ECE_BINS = 15


def calibration_pairs(task: Task, y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (predicted probability, 0/1 outcome) pairs that calibration is judged on, both of shape (n_pairs,).

    Multiclass: the top class's probability and whether it is right (top-label calibration).
    Binary: the positive class's probability and the target. Multilabel: every (row, label) pair.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if task.kind == "multiclass":
        return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    if task.kind == "binary":
        return p[:, 1], y.astype(np.float64)
    return p.ravel(), y.astype(np.float64).ravel()


def reliability_bins(score: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin: ``count``, mean ``confidence`` and observed ``frequency``, each of shape (n_bins,).

    Empty bins have NaN confidence and frequency.
    """
    score = np.asarray(score, dtype=np.float64)
    outcome = np.asarray(outcome, dtype=np.float64)
    b = np.clip(np.floor(score * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(b, weights=score, minlength=n_bins) / count
        frequency = np.bincount(b, weights=outcome, minlength=n_bins) / count
    return {"count": count, "confidence": confidence, "frequency": frequency}


def expected_calibration_error(score: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Sum over bins of (rows in bin / all rows) * |observed frequency - mean predicted probability|."""
    bins = reliability_bins(score, outcome, n_bins)
    full = bins["count"] > 0
    gaps = np.abs(bins["frequency"][full] - bins["confidence"][full])
    return float(np.sum(bins["count"][full] * gaps) / max(len(np.asarray(score)), 1))


def brier_score(task: Task, y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean squared error of the probabilities.

    Binary: of the positive class (in [0, 1]). Multiclass: summed over classes
    (in [0, 2], as ``sklearn.metrics.brier_score_loss`` for several classes).
    Multilabel: the mean over labels of each label's binary score.
    """
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true)
    if task.kind == "multiclass":
        onehot = np.eye(p.shape[1])[y.astype(np.int64)]
        return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    score, outcome = calibration_pairs(task, y, p)
    return float(np.mean((score - outcome) ** 2))


def log_loss(task: Task, y_true: np.ndarray, proba: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood, probabilities clipped to [eps, 1 - eps].

    Multilabel: the mean over labels of each label's binary log loss.
    """
    return float(np.mean(row_log_loss(task, y_true, proba, eps)))


def row_log_loss(task: Task, y_true: np.ndarray, proba: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """Each row's term of :func:`log_loss`, shape (n_samples,) (multilabel: the mean over the row's labels);
    its mean is the log loss."""
    p = np.clip(np.asarray(proba, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y_true)
    if task.kind == "multiclass":
        return -np.log(p[np.arange(len(y)), y.astype(np.int64)])
    score, outcome = calibration_pairs(task, y, p)
    terms = -(outcome * np.log(score) + (1 - outcome) * np.log1p(-score))
    return terms.reshape(len(y), -1).mean(axis=1) if len(y) else terms  # (0, -1) is no shape


def calibration_metrics(task: Task, y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """``ece``, ``brier`` and ``log_loss`` of one set of rows, as plain floats."""
    score, outcome = calibration_pairs(task, y_true, proba)
    return {
        "ece": _f(expected_calibration_error(score, outcome, n_bins)),
        "brier": _f(brier_score(task, y_true, proba)),
        "log_loss": _f(log_loss(task, y_true, proba)),
    }

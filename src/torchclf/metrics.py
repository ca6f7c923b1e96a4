"""Scores from true labels and predicted probabilities (no training here).

Every number comes from :mod:`sklearn.metrics`; this module decides which
metrics apply to which task and packs them as plain JSON values. Accuracies
are fractions in [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np

from torchclf.task import Task


def _f(x) -> float:
    return float(np.round(float(x), 6))


def compute_metrics(task: Task, y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict:
    """Metrics for one set of rows.

    Parameters
    ----------
    task : Task
    y_true : ndarray of shape (n_samples,) or (n_samples, n_labels)
        Class indices, or a 0/1 indicator matrix for multilabel.
    proba : ndarray of shape (n_samples, n_classes)
        As returned by :meth:`Task.probabilities`.
    class_names : list of str
    """
    import torch
    from sklearn import metrics as skm

    y_pred = task.labels(torch.as_tensor(proba)).numpy()
    names = [str(c) for c in class_names]
    out: dict = {"n_samples": int(len(y_true))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision on absent classes is reported as 0
        if task.kind == "multilabel":
            out["subset_accuracy"] = _f(skm.accuracy_score(y_true, y_pred))
            out["accuracy"] = out["subset_accuracy"]
            out["hamming_loss"] = _f(skm.hamming_loss(y_true, y_pred))
            out["f1_micro"] = _f(skm.f1_score(y_true, y_pred, average="micro", zero_division=0))
            out["f1_macro"] = _f(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
            p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
            try:
                out["roc_auc_macro"] = _f(skm.roc_auc_score(y_true, proba, average="macro"))
            except ValueError:
                pass  # a label with only one value among these rows
        else:
            labels = np.arange(len(names))
            out["accuracy"] = _f(skm.accuracy_score(y_true, y_pred))
            out["balanced_accuracy"] = _f(skm.balanced_accuracy_score(y_true, y_pred))
            out["precision_macro"] = _f(skm.precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
            out["recall_macro"] = _f(skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
            out["f1_macro"] = _f(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
            present = np.unique(y_true)
            if len(present) == len(names):
                if len(names) == 2:  # binary, or --task multiclass on two classes: sklearn wants one score column
                    out["roc_auc"] = _f(skm.roc_auc_score(y_true, proba[:, 1]))
                else:
                    out["roc_auc"] = _f(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
            out["log_loss"] = _f(skm.log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=labels))
            out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
            p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {
        n: {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f[i]), "support": int(s[i])}
        for i, n in enumerate(names)
    }
    return out


def headline(metrics: dict, kind: str) -> dict[str, float]:
    """The few numbers worth printing in a summary line, in a stable order."""
    from torchclf.task import default_metric_names

    return {k: metrics[k] for k in default_metric_names(kind) if k in metrics}

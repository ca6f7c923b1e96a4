"""compute_metrics and headline against sklearn.metrics, for each task type."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from torchclf.metrics import compute_metrics, headline
from torchclf.task import Task


def r6(x) -> float:
    """The rounding compute_metrics promises: six decimals."""
    return float(np.round(float(x), 6))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def per_class(y_true, y_pred, names, **kw) -> dict:
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0, **kw)
    return {n: {"precision": r6(p[i]), "recall": r6(r[i]), "f1": r6(f[i]), "support": int(s[i])}
            for i, n in enumerate(names)}


def test_binary_against_sklearn_with_a_non_default_threshold():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    p1 = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(scale=1.5, size=120))))
    proba = np.column_stack([1 - p1, p1])
    m = compute_metrics(Task("binary", 2, threshold=0.3), y, proba, ["neg", "pos"])
    pred = (p1 >= 0.3).astype(int)
    assert pred.sum() != (p1 >= 0.5).sum()  # the threshold changes predictions on these rows
    assert m == {
        "n_samples": 120,
        "accuracy": r6(skm.accuracy_score(y, pred)),
        "balanced_accuracy": r6(skm.balanced_accuracy_score(y, pred)),
        "precision_macro": r6(skm.precision_score(y, pred, average="macro")),
        "recall_macro": r6(skm.recall_score(y, pred, average="macro")),
        "f1_macro": r6(skm.f1_score(y, pred, average="macro")),
        "roc_auc": r6(skm.roc_auc_score(y, p1)),
        "log_loss": r6(skm.log_loss(y, proba)),
        "confusion_matrix": skm.confusion_matrix(y, pred).tolist(),
        "per_class": per_class(y, pred, ["neg", "pos"]),
    }
    json.dumps(m, allow_nan=False)  # plain JSON values only


def test_multiclass_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    proba = softmax(rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y])
    m = compute_metrics(Task("multiclass", 4), y, proba, ["a", "b", "c", "d"])
    pred = proba.argmax(axis=1)
    assert m == {
        "n_samples": 200,
        "accuracy": r6(skm.accuracy_score(y, pred)),
        "balanced_accuracy": r6(skm.balanced_accuracy_score(y, pred)),
        "precision_macro": r6(skm.precision_score(y, pred, average="macro")),
        "recall_macro": r6(skm.recall_score(y, pred, average="macro")),
        "f1_macro": r6(skm.f1_score(y, pred, average="macro")),
        "roc_auc": r6(skm.roc_auc_score(y, proba, multi_class="ovr")),
        "log_loss": r6(skm.log_loss(y, proba)),
        "confusion_matrix": skm.confusion_matrix(y, pred).tolist(),
        "per_class": per_class(y, pred, ["a", "b", "c", "d"]),
    }


def test_multiclass_with_a_class_absent_from_these_rows():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)  # class 2 exists in the model but not among these rows
    proba = softmax(rng.normal(size=(60, 3)))
    m = compute_metrics(Task("multiclass", 3), y, proba, ["x", "y", "z"])
    pred = proba.argmax(axis=1)
    labels = [0, 1, 2]
    assert "roc_auc" not in m  # undefined without every class
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert len(m["confusion_matrix"]) == 3 and m["confusion_matrix"][2] == [0, 0, 0]
    assert m["log_loss"] == r6(skm.log_loss(y, proba, labels=labels))
    assert m["f1_macro"] == r6(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert m["per_class"]["z"]["support"] == 0
    assert m["per_class"] == per_class(y, pred, ["x", "y", "z"], labels=labels)


def test_two_class_multiclass_uses_the_second_column_for_roc_auc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    proba = softmax(rng.normal(size=(80, 2)) + np.eye(2)[y])
    m = compute_metrics(Task("multiclass", 2), y, proba, ["0", "1"])
    assert m["roc_auc"] == r6(skm.roc_auc_score(y, proba[:, 1]))
    assert m["accuracy"] == r6(skm.accuracy_score(y, proba.argmax(axis=1)))


def test_multilabel_against_sklearn():
    rng = np.random.default_rng(4)
    Y = rng.integers(0, 2, (150, 3))
    proba = 1 / (1 + np.exp(-(2.0 * Y - 1 + rng.normal(scale=1.2, size=(150, 3)))))
    m = compute_metrics(Task("multilabel", 3), Y, proba, ["hot", "wet", "loud"])
    pred = (proba >= 0.5).astype(int)
    subset = r6(skm.accuracy_score(Y, pred))
    assert m == {
        "n_samples": 150,
        "subset_accuracy": subset,
        "accuracy": subset,
        "hamming_loss": r6(skm.hamming_loss(Y, pred)),
        "f1_micro": r6(skm.f1_score(Y, pred, average="micro")),
        "f1_macro": r6(skm.f1_score(Y, pred, average="macro")),
        "roc_auc_macro": r6(skm.roc_auc_score(Y, proba, average="macro")),
        "per_class": per_class(Y, pred, ["hot", "wet", "loud"]),
    }


def test_multilabel_with_a_constant_label_has_no_roc_auc():
    rng = np.random.default_rng(5)
    Y = rng.integers(0, 2, (40, 2))
    Y[:, 1] = 1
    proba = rng.random((40, 2))
    m = compute_metrics(Task("multilabel", 2), Y, proba, ["a", "b"])
    assert "roc_auc_macro" not in m
    json.dumps(m, allow_nan=False)  # no NaN standing in for the undefined score
    assert m["hamming_loss"] == r6(skm.hamming_loss(Y, (proba >= 0.5).astype(int)))


@pytest.mark.parametrize("kind, expected", [
    ("binary", ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"]),
    ("multiclass", ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"]),
    ("multilabel", ["subset_accuracy", "hamming_loss", "f1_micro", "f1_macro"]),
])
def test_headline_picks_the_tasks_numbers_in_order(kind, expected):
    full = {name: float(i) / 10 for i, name in enumerate(
        ["n_samples", "accuracy", "subset_accuracy", "balanced_accuracy", "hamming_loss", "f1_micro", "f1_macro",
         "roc_auc", "log_loss", "precision_macro"])}
    shown = headline(full, kind)
    assert list(shown) == expected
    assert shown == {k: full[k] for k in expected}


def test_headline_leaves_out_what_was_not_computed():
    assert headline({"accuracy": 0.9, "log_loss": 0.3, "f1_macro": 0.8}, "binary") == {
        "accuracy": 0.9, "f1_macro": 0.8, "log_loss": 0.3}

"""Everything that differs between binary, multiclass and multilabel problems.

The model always returns logits of shape (n_samples, n_outputs). A task says how
many outputs there are, which loss trains them, and how logits become
probabilities and probabilities become labels. No other module branches on
the problem type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

TASK_KINDS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class Task:
    """A classification problem type with its number of classes (or labels).

    Parameters
    ----------
    kind : {"binary", "multiclass", "multilabel"}
    n_classes : int
        2 for binary, the number of classes for multiclass, the number of
        labels for multilabel.
    threshold : float
        Probability at or above which binary/multilabel predictions are positive.
    """

    kind: str
    n_classes: int
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.kind == "binary" and self.n_classes != 2:
            raise ValueError(f"a binary task has 2 classes, got {self.n_classes}")
        if self.kind == "multiclass" and self.n_classes < 2:
            raise ValueError(f"a multiclass task needs at least 2 classes, got {self.n_classes}")
        if self.kind == "multilabel" and self.n_classes < 1:
            raise ValueError("a multilabel task needs at least 1 label")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    @property
    def n_outputs(self) -> int:
        """Units in the output layer: 1 for binary, else one per class or label."""
        return 1 if self.kind == "binary" else self.n_classes

    @property
    def output_activation(self) -> str:
        return "softmax" if self.kind == "multiclass" else "sigmoid"

    # ----- targets -------------------------------------------------------------
    def target_tensor(self, y: np.ndarray) -> torch.Tensor:
        """Encoded targets as the loss expects them.

        ``y`` holds class indices, shape (n_samples,), or for multilabel a 0/1
        matrix of shape (n_samples, n_labels). Binary targets become float of
        shape (n_samples, 1), multiclass int64 of shape (n_samples,).
        """
        if self.kind == "multiclass":
            return torch.tensor(np.asarray(y), dtype=torch.int64)
        t = torch.tensor(np.asarray(y), dtype=torch.float32)
        return t.reshape(-1, 1) if self.kind == "binary" else t

    def loss_function(self, class_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> nn.Module:
        """The training loss, with per-sample reduction left to the engine.

        ``class_weight`` (shape (n_classes,)) reweights classes for binary and
        multiclass problems, and positive examples per label for multilabel.
        ``label_smoothing`` e moves multiclass targets to 1 - e plus e spread
        over the classes, and 0/1 targets to e/2 and 1 - e/2.
        """
        if self.kind == "multiclass":
            return nn.CrossEntropyLoss(weight=class_weight, reduction="none", label_smoothing=label_smoothing)
        pos_weight = None
        if class_weight is not None:
            # Binary: weight positives relative to negatives; multilabel: per label.
            pos_weight = class_weight[1:2] / class_weight[0] if self.kind == "binary" else class_weight
        loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
        return _SmoothedTargets(loss, label_smoothing) if label_smoothing else loss

    def per_sample_loss(self, loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of shape (n_samples,), averaged over labels for multilabel."""
        value = loss_fn(logits, target)
        return value.mean(dim=1) if value.dim() == 2 else value

    def smoothed_loss_floor(self, label_smoothing: float) -> float:
        """The smallest training loss that ``label_smoothing`` allows: the entropy of the smoothed targets
        (per row for multiclass, per label for binary and multilabel), reached when the predicted
        probabilities equal them. 0 without smoothing."""
        e = float(label_smoothing)
        if e <= 0:
            return 0.0
        if self.kind == "multiclass":
            k = self.n_classes
            spread = [1 - e + e / k] + [e / k] * (k - 1)
        else:
            spread = [1 - e / 2, e / 2]
        return float(-sum(p * math.log(p) for p in spread if p > 0))

    # ----- logits -> probabilities -> labels ----------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of shape (n_samples, n_classes).

        Binary gives two columns (negative, positive) as scikit-learn does;
        multilabel gives one independent probability per label.
        """
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        # In float64 and rounded back: torch's vectorised float32 sigmoid rounds a tensor's last few elements
        # (its tail past the last full vector) differently, so a row's probability would depend on where it
        # sat in its batch and a file predicted in chunks would not match the whole file predicted at once.
        p = torch.sigmoid(logits.double()).to(logits.dtype)
        return torch.cat([1.0 - p, p], dim=1) if self.kind == "binary" else p

    @property
    def takes_threshold(self) -> bool:
        """Whether labels come from a probability cut (binary, multilabel) rather than the argmax."""
        return self.kind != "multiclass"

    def labels(self, proba: torch.Tensor, threshold=None) -> torch.Tensor:
        """Predicted class indices (n_samples,), or a 0/1 matrix (n_samples, n_labels).

        ``threshold`` (binary: a float; multilabel: a float or one per label,
        shape (n_labels,)) replaces ``self.threshold``; multiclass ignores it.
        """
        if self.kind == "multiclass":
            return proba.argmax(dim=1)
        cut = self.threshold if threshold is None else torch.as_tensor(threshold, dtype=proba.dtype)
        if self.kind == "binary":
            return (proba[:, 1] >= cut).long()
        return (proba >= cut).long()

    def n_correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Correct predictions in a batch, as a 0-d tensor (no host sync).

        For multilabel a row counts as correct only when every label is right
        (subset accuracy).
        """
        if self.kind == "multiclass":
            return (logits.argmax(dim=1) == target).sum()
        # sigmoid(z) >= t  <=>  z >= logit(t), which avoids computing the sigmoid.
        cut = float(np.log(self.threshold / (1.0 - self.threshold)))
        hit = (logits >= cut) == (target >= 0.5)
        return hit.all(dim=1).sum()

    def balanced_weight(self, y: np.ndarray) -> torch.Tensor:
        """Loss weights that balance the classes: n_samples / (n_classes * count) per class,
        or negatives / positives per label for multilabel, from encoded targets ``y``."""
        if self.kind == "multilabel":
            pos = y.sum(axis=0).clip(min=1)
            return torch.as_tensor((len(y) - pos) / pos, dtype=torch.float32)
        counts = np.bincount(y, minlength=self.n_classes).clip(min=1)
        return torch.as_tensor(len(y) / (self.n_classes * counts), dtype=torch.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_classes": self.n_classes, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(kind=str(d["kind"]), n_classes=int(d["n_classes"]), threshold=float(d.get("threshold", 0.5)))


class _SmoothedTargets(nn.Module):
    """A 0/1-target loss applied to targets pulled towards 1/2 by ``smoothing`` / 2."""

    def __init__(self, loss: nn.Module, smoothing: float):
        super().__init__()
        self.loss = loss
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target * (1.0 - self.smoothing) + self.smoothing / 2)


def resolve_task(requested: str, n_classes: int, multilabel: bool, where: str, first_class=None) -> Task:
    """The task for a target of ``n_classes`` classes (or labels), checked against ``requested``.

    ``requested`` is ``"auto"`` (decided from the target) or a task kind.
    Raises TorchclfError (a user error) when the target does not fit it.
    """
    from torchclf.errors import TorchclfError

    if not multilabel and n_classes < 2:
        raise TorchclfError(f"{where}: the target has only one class ({[first_class]}); "
                            "a classifier needs at least two")
    kind = detect_kind(n_classes, multilabel) if requested == "auto" else requested
    if kind == "multilabel" and not multilabel:
        raise TorchclfError(f"{where}: --task multilabel needs several 0/1 --target columns or --label-sep")
    if kind != "multilabel" and multilabel:
        raise TorchclfError(f"{where}: the target has several label columns; use --task multilabel or auto")
    if kind == "binary" and n_classes != 2:
        raise TorchclfError(f"{where}: --task binary needs exactly 2 classes, the target has {n_classes}; "
                            "use multiclass")
    return Task(kind, n_classes)


def detect_kind(n_classes: int, multilabel: bool) -> str:
    """The task implied by the target: indicator frame -> multilabel, 2 classes -> binary."""
    if multilabel:
        return "multilabel"
    return "binary" if n_classes == 2 else "multiclass"


def default_metric_names(kind: str) -> list[str]:
    """The headline metrics printed after training."""
    if kind == "multilabel":
        return ["subset_accuracy", "hamming_loss", "f1_micro", "f1_macro"]
    names = ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"]
    return names

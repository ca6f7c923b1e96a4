"""A trained model applied to new raw rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from torchclf import artifact
from torchclf.config import RunConfig
from torchclf.preprocess import LabelCoder, Preprocessor
from torchclf.task import Task


class Predictor:
    """A network with its preprocessing and labels: raw rows in, labels out.

    Obtain one from :func:`torchclf.train` or :meth:`Predictor.load`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        preprocessor: Preprocessor,
        labels: LabelCoder,
        config: RunConfig,
        *,
        label_sep: str | None = None,
        target_columns: list[str] | None = None,
        extra: dict | None = None,
    ):
        self.model = model
        self.task = task
        self.preprocessor = preprocessor
        self.labels = labels
        self.config = config
        self.label_sep = label_sep
        self.target_columns = list(target_columns or [])
        self.extra = dict(extra or {})

    # ----- persistence -------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Load a run folder written by ``torchclf train`` or :meth:`save`."""
        manifest, state = artifact.load_model(path)
        model, task, pre, labels, config = artifact.rebuild(manifest, state, str(path))
        return cls(
            model, task, pre, labels, config,
            label_sep=manifest.get("label_sep"),
            target_columns=manifest.get("target_columns") or [],
            extra=manifest.get("extra") or {},
        )

    def manifest(self) -> dict:
        """Everything but the weights, as plain JSON values."""
        return {
            "config": self.config.to_dict(),
            "task": self.task.to_dict(),
            "n_inputs": self.preprocessor.n_outputs,
            "feature_names": self.preprocessor.feature_names,
            "preprocess": self.preprocessor.to_dict(),
            "labels": self.labels.to_dict(),
            "label_sep": self.label_sep,
            "target_columns": self.target_columns,
            "extra": self.extra,
        }

    def save_model(self, folder: str | Path) -> None:
        """Write weights and manifest into an existing folder."""
        artifact.save_model(Path(folder), self.manifest(), self.model.state_dict())

    # ----- prediction --------------------------------------------------------
    @property
    def classes(self) -> list:
        return list(self.labels.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating dtype: float32 unless it was built in another."""
        return next(self.model.parameters()).dtype

    def _frame(self, rows) -> pd.DataFrame:
        if isinstance(rows, pd.DataFrame):
            return rows
        array = np.asarray(rows)
        if array.ndim == 1:
            array = array.reshape(1, -1)
        return pd.DataFrame(array, columns=self.preprocessor.feature_names[: array.shape[1]])

    def encode(self, rows, where: str = "input") -> torch.Tensor:
        """Preprocessed inputs of shape (n_samples, n_inputs) on the model's device, in its dtype."""
        X = self.preprocessor.transform(self._frame(rows), where,
                                        dtype=np.float64 if self.dtype == torch.float64 else np.float32)
        return torch.from_numpy(X).to(self.device, dtype=self.dtype)

    def predict_logits(self, rows, where: str = "input") -> np.ndarray:
        """Raw network outputs of shape (n_samples, n_outputs)."""
        from torchclf.engine import predict_logits

        return _widened(predict_logits(self.model, self.encode(rows, where))).cpu().numpy()

    def predict_proba(self, rows, where: str = "input") -> np.ndarray:
        """Probabilities of shape (n_samples, n_classes) (per label for multilabel)."""
        from torchclf.engine import predict_logits

        logits = predict_logits(self.model, self.encode(rows, where))
        return self.task.probabilities(_widened(logits)).cpu().numpy()

    def predict_indices(self, rows, where: str = "input") -> np.ndarray:
        return self.task.labels(torch.from_numpy(self.predict_proba(rows, where))).numpy()

    def predict(self, rows, where: str = "input") -> list:
        """Original labels; for multilabel, the positive labels joined by the separator."""
        return self.labels.decode(self.predict_indices(rows, where), self.label_sep)

    def predict_frame(self, rows, where: str = "input") -> pd.DataFrame:
        """A ``prediction`` column and one ``proba_<label>`` column per class or label."""
        proba = self.predict_proba(rows, where)
        indices = self.task.labels(torch.from_numpy(proba)).numpy()
        out = pd.DataFrame({"prediction": self.labels.decode(indices, self.label_sep)})
        for j, name in enumerate(self.labels.classes):
            out[f"proba_{name}"] = proba[:, j]
        return out


def _widened(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs as float32; float32 and float64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))

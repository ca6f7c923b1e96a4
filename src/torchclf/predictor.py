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

# Rows are encoded and scored at most this many values per layer at a time (256 MiB of float32 for the
# widest layer), so memory stays bounded however many rows come in; narrow models take whole tables.
# Not smaller: each chunk re-reads every one-hot column's categories, which costs time per chunk.
CHUNK_VALUES = 1 << 26


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
        calibration=None,
        threshold=None,
        threshold_objective: str | None = None,
    ):
        self.model = model
        self.task = task
        self.preprocessor = preprocessor
        self.labels = labels
        self.config = config
        self.label_sep = label_sep
        self.target_columns = list(target_columns or [])
        self.extra = dict(extra or {})
        # Fitted on validation rows after training (see torchclf.calibration); None: raw probabilities, and
        # the task's 0.5 cut. ``threshold`` is a float (binary) or an ndarray of shape (n_labels,).
        self.calibration = calibration
        self.threshold = threshold
        self.threshold_objective = threshold_objective

    # ----- persistence -------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Load a run folder written by ``torchclf train`` or :meth:`save`."""
        manifest, state = artifact.load_model(path)
        model, task, pre, labels, config = artifact.rebuild(manifest, state, str(path))
        calibration, threshold, objective = artifact.decisions(manifest, task, str(path))
        return cls(
            model, task, pre, labels, config,
            label_sep=manifest.get("label_sep"),
            target_columns=manifest.get("target_columns") or [],
            extra=manifest.get("extra") or {},
            calibration=calibration, threshold=threshold, threshold_objective=objective,
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
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "threshold": None if self.threshold is None else {
                "objective": self.threshold_objective or "manual",
                "value": np.asarray(self.threshold, dtype=float).tolist()},
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
        names = self.preprocessor.feature_names
        if array.shape[1] == len(self.preprocessor.plan.columns):  # every training column, left-out ones too
            names = self.preprocessor.plan.columns
        return pd.DataFrame(array, columns=names[: array.shape[1]])

    def encode(self, rows, where: str = "input") -> torch.Tensor:
        """Preprocessed inputs of shape (n_samples, n_inputs) on the model's device, in its dtype."""
        X = self.preprocessor.transform(self._frame(rows), where,
                                        dtype=np.float64 if self.dtype == torch.float64 else np.float32)
        return torch.from_numpy(X).to(self.device, dtype=self.dtype)

    def _logits(self, rows, where: str) -> torch.Tensor:
        """Logits of shape (n_samples, n_outputs), encoded and scored a bounded chunk of rows at a time."""
        from torchclf.engine import predict_logits, prediction_batch

        frame = self._frame(rows)
        widest = max([self.preprocessor.n_outputs, *(max(p.shape) for p in self.model.parameters() if p.dim())])
        step = max(1, CHUNK_VALUES // widest)
        batch = prediction_batch(self.device)  # the engine's batch: 1,024 rows on a CPU
        if step >= batch:
            step -= step % batch  # whole multiples of the engine's batch: the same sums as in one pass
        if len(frame) <= min(step, batch):
            return predict_logits(self.model, self.encode(frame, where))
        # Every chunk's logits are written by the engine into one tensor (see engine.predict_logits).
        out = torch.empty((len(frame), self.task.n_outputs), dtype=self.dtype, device=self.device)
        for i in range(0, len(frame), step):
            X = self.encode(frame.iloc[i:i + step], where)
            predict_logits(self.model, X, batch, out=out[i:i + len(X)])
        return out

    def predict_logits(self, rows, where: str = "input") -> np.ndarray:
        """Raw network outputs of shape (n_samples, n_outputs)."""
        return _widened(self._logits(rows, where)).cpu().numpy()

    def predict_proba(self, rows, where: str = "input") -> np.ndarray:
        """Probabilities of shape (n_samples, n_classes) (per label for multilabel).

        Calibrated (and then float64) when the predictor has a calibration.
        """
        return self.probabilities(self._logits(rows, where))

    def probabilities(self, logits, calibrated: bool = True) -> np.ndarray:
        """Probabilities of shape (n_samples, n_classes) from logits of shape (n_samples, n_outputs)."""
        if calibrated and self.calibration is not None:
            return self.calibration.apply(torch.as_tensor(logits).detach().cpu().numpy())
        return self.task.probabilities(_widened(torch.as_tensor(logits))).cpu().numpy()

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices (n_samples,), or a 0/1 matrix (n_samples, n_labels), at the predictor's threshold."""
        return self.task.labels(torch.from_numpy(np.asarray(proba)), self.threshold).numpy()

    def set_threshold(self, value, objective: str = "manual", where: str = "--threshold") -> None:
        """Use ``value`` (in (0, 1); one per label for multilabel, or one for all) as the decision threshold."""
        from torchclf.errors import TorchclfError

        if not self.task.takes_threshold:
            raise TorchclfError(f"{where}: this model is multiclass, whose label is the most probable class; "
                                "a threshold applies to binary and multilabel models only")
        try:
            cut = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            cut = np.asarray(np.nan)
        per_output = cut.ndim == 1 and cut.shape[0] == self.task.n_outputs
        if not (cut.ndim == 0 or per_output) or not np.all((cut > 0) & (cut < 1)):
            raise TorchclfError(f"{where}: got {value!r}, expected a probability strictly between 0 and 1"
                                + (f" (or one per label, {self.task.n_outputs})" if self.task.n_outputs > 1 else ""))
        self.threshold = float(cut.reshape(-1)[0]) if cut.size == 1 else cut
        self.threshold_objective = objective

    def predict_indices(self, rows, where: str = "input") -> np.ndarray:
        return self.decide(self.predict_proba(rows, where))

    def predict(self, rows, where: str = "input") -> list:
        """Original labels; for multilabel, the positive labels joined by the separator."""
        return self.labels.decode(self.predict_indices(rows, where), self.label_sep)

    def predict_frame(self, rows, where: str = "input") -> pd.DataFrame:
        """A ``prediction`` column and one ``proba_<label>`` column per class or label."""
        proba = self.predict_proba(rows, where)
        indices = self.decide(proba)
        out = pd.DataFrame({"prediction": self.labels.decode(indices, self.label_sep)})
        for j, name in enumerate(self.labels.classes):
            out[f"proba_{name}"] = proba[:, j]
        return out


def _widened(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs as float32; float32 and float64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))

"""The run specification: what a run trains on and how, as one value every front door builds.

A :class:`RunSpec` holds the data source, the target, an optional separate
test source, the multilabel separator and the :class:`~torchclf.config.RunConfig`.
The command line, the estimator, the playground, ``compare``, ``tune`` and
``--resume`` all build one and hand it to :func:`torchclf.api.prepare`. Its
:meth:`~RunSpec.describe` form (plain JSON, every file source with its size
and SHA-256) is saved in the run folder and in checkpoints, so that
``explain``, ``report``, ``--resume`` and ``export`` never guess where the
data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchclf.config import RunConfig
from torchclf.data import Dataset
from torchclf.data.sources import CSV_COMPRESSIONS
from torchclf.errors import TorchclfError

IN_MEMORY = "memory"


def _file_sha256(path: Path) -> str:
    from torchclf.artifact import sha256_file

    return sha256_file(path)


def describe_source(source) -> dict | None:
    """A plain-JSON record of a source: a file (path, bytes, SHA-256), a built-in spec, or rows in memory."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        from torchclf.data.sources import names_builtin

        text = str(source)
        path = Path(text)
        if not names_builtin(text) and path.is_file():
            return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": _file_sha256(path)}
        return {"spec": text}
    if isinstance(source, Dataset):
        return {IN_MEMORY: source.name, "rows": source.n_rows}
    if isinstance(source, tuple):
        return {IN_MEMORY: "arrays", "rows": len(source[0])}
    rows = len(source) if hasattr(source, "__len__") else None
    return {IN_MEMORY: type(source).__name__, "rows": rows}


def source_argument(record: dict | None, where: str):
    """The DATA argument a :func:`describe_source` record stands for, checking a file is unchanged."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise TorchclfError(f"{where}: damaged run specification (a source is {type(record).__name__})")
    if isinstance(record.get("spec"), str):
        return record["spec"]
    if isinstance(record.get("path"), str):
        path = Path(record["path"])
        if not path.is_file():
            raise TorchclfError(f"{where}: the run trained on {path}, which is gone")
        if path.stat().st_size != record.get("bytes") or _file_sha256(path) != record.get("sha256"):
            raise TorchclfError(f"{where}: {path} has changed since the run trained on it (its size or SHA-256 "
                                "differs)")
        return str(path)
    raise TorchclfError(f"{where}: the run was trained on rows in memory ({record.get(IN_MEMORY)}), "
                        "which cannot be read again")


@dataclass(frozen=True)
class RunSpec:
    """What a run trains on and how.

    Attributes
    ----------
    data : str, Path, DataFrame, ndarray or Dataset
        A CSV (``.csv``, ``.csv.gz``, ...) or Parquet path, a built-in dataset spec
        (``"moons:noise=0.07"``), a DataFrame (``target`` names the label
        column(s)), an array ``X`` (``target`` holds the labels) or a Dataset.
    target : str, list of str or array-like, optional
    test : same kinds as ``data``, or a tuple ``(X, y)``, optional
        A separate test set; otherwise a seeded part of ``data`` is held out.
    label_sep : str, optional
        The target column holds labels joined by this separator (multilabel).
    config : RunConfig
    """

    data: Any = "circles"
    target: Any = None
    test: Any = None
    label_sep: str | None = None
    config: RunConfig = field(default_factory=RunConfig)

    def with_config(self, config: RunConfig) -> RunSpec:
        return replace(self, config=config)

    @property
    def name(self) -> str:
        """A short name for folders and titles: the file's stem or the dataset's name."""
        if isinstance(self.data, (str, Path)):
            path = Path(str(self.data).split(":")[0])
            if path.suffix.lower() in CSV_COMPRESSIONS:  # rows.csv.gz is "rows", as rows.csv
                path = path.with_suffix("")
            return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in path.stem) or "run"
        return getattr(self.data, "name", None) if isinstance(self.data, Dataset) else type(self.data).__name__

    def targets(self) -> list[str] | None:
        """The target column names, when the target names columns."""
        if isinstance(self.target, str):
            return [self.target]
        if isinstance(self.target, (list, tuple)) and all(isinstance(t, str) for t in self.target):
            return list(self.target) or None
        return None

    def describe(self) -> dict:
        """Plain JSON for the run folder and checkpoints (see :meth:`from_description`)."""
        return {
            "data": describe_source(self.data),
            "target": self.targets(),
            "test": describe_source(self.test),
            "label_sep": self.label_sep,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_description(cls, d: dict, where: str) -> RunSpec:
        """The spec a :meth:`describe` record stands for; files must still be there and unchanged."""
        if not isinstance(d, dict):
            raise TorchclfError(f"{where}: damaged run specification (expected a mapping)")
        target = d.get("target")
        if target is not None and (not isinstance(target, list) or not all(isinstance(t, str) for t in target)):
            raise TorchclfError(f"{where}: damaged run specification (target {target!r})")
        label_sep = d.get("label_sep")
        if label_sep is not None and not isinstance(label_sep, str):
            raise TorchclfError(f"{where}: damaged run specification (label_sep {label_sep!r})")
        return cls(
            data=source_argument(d.get("data"), where),
            target=target,
            test=source_argument(d.get("test"), where),
            label_sep=label_sep,
            config=RunConfig.from_dict(d.get("config", {})),
        )

    # ----- reading ---------------------------------------------------------------
    def dataset(self) -> Dataset:
        return as_dataset(self.data, self.target, label_sep=self.label_sep)

    def test_dataset(self, data: Dataset) -> Dataset | None:
        """The separate test rows, read with the training data's target columns and separator."""
        if self.test is None:
            return None
        if isinstance(self.test, tuple):
            return as_dataset(self.test[0], self.test[1])
        return as_dataset(self.test, data.target_columns or self.target, label_sep=data.label_sep)


def as_dataset(data, target=None, *, label_sep: str | None = None) -> Dataset:
    """Accept a Dataset, a path or built-in name, a DataFrame, or arrays ``X`` with labels ``target``."""
    from torchclf.data import from_frame, resolve_source

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return resolve_source(str(data), target, label_sep=label_sep)
    if isinstance(data, pd.DataFrame):
        named = isinstance(target, (str, list, tuple)) or (pd.api.types.is_scalar(target) and target in data.columns)
        if target is not None and not named:  # the labels themselves, as in fit(X, y)
            y = np.asarray(target)
            y = pd.DataFrame(y) if y.ndim == 2 else pd.Series(y, name="label")
            return Dataset(features=data.reset_index(drop=True), target=y.reset_index(drop=True))
        return from_frame(data, list(target) if isinstance(target, tuple) else target, label_sep=label_sep)
    X = np.asarray(data)
    if X.ndim != 2:
        raise TorchclfError(f"X must be 2-dimensional (n_samples, n_features), got shape {X.shape}")
    if target is None:
        raise TorchclfError("labels are required: train(X, y)")
    y = np.asarray(target)
    if len(X) == 0:
        raise TorchclfError("X has no rows; nothing to learn from")
    features = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    if y.ndim == 2:
        return Dataset(features, pd.DataFrame(y, columns=[f"label_{j}" for j in range(y.shape[1])]).astype("int64"))
    return Dataset(features, pd.Series(y, name="label"))

"""The fitted transform from raw columns to a float matrix, and from labels to indices.

Fitted on training rows only. Every fitted parameter is a plain number or
string, so the whole state round-trips through JSON (:meth:`to_dict`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from torchclf.data.sources import DataWarning
from torchclf.errors import TorchclfError

MISSING = "<missing>"
OTHER = "<other>"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    if _is_numeric(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _python(value):
    """A numpy scalar as the plain Python value JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class ColumnSpec:
    """How one raw column becomes model inputs."""

    name: str
    kind: str  # "numeric" or "categorical"
    # numeric
    median: float = 0.0
    mean: float = 0.0
    scale: float = 1.0
    missing_indicator: bool = False
    # categorical
    categories: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        if self.kind == "numeric":
            return 1 + int(self.missing_indicator)
        return len(self.categories) + 1  # + the <other> slot for unseen values

    def output_names(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name}__missing"] if self.missing_indicator else [])
        return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}={OTHER}"]


class Preprocessor:
    """Numeric columns: median-imputed then standardised (plus a missing flag
    when training rows had gaps); text columns: one-hot over the most frequent
    categories with one slot for anything else, missing values included as
    their own category.

    Parameters
    ----------
    max_categories : int
        Most one-hot columns per categorical column; rarer values share the
        ``<other>`` slot.
    numeric_text_ratio : float
        A text column whose values parse as numbers at least this often is
        treated as numeric, the stray text becoming missing values.
    """

    def __init__(self, max_categories: int = 50, numeric_text_ratio: float = 0.95):
        self.max_categories = max_categories
        self.numeric_text_ratio = numeric_text_ratio
        self.columns: list[ColumnSpec] = []

    # ----- fitting -----------------------------------------------------------
    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        """Learn column types, imputation values, scales and categories."""
        if frame.shape[1] == 0:
            raise TorchclfError("no feature columns to train on")
        self.columns = [self._fit_column(str(name), frame[name]) for name in frame.columns]
        return self

    def _fit_column(self, name: str, series: pd.Series) -> ColumnSpec:
        if not _is_numeric(series):
            present = series.dropna()
            parsed = pd.to_numeric(present, errors="coerce")
            if len(present) and parsed.notna().mean() >= self.numeric_text_ratio and parsed.notna().any():
                stray = sorted(map(str, present[parsed.isna()].unique()))[:3]
                if stray:
                    warnings.warn(
                        f"column {name!r}: treating as numeric; {int(parsed.isna().sum())} value(s) "
                        f"that are not numbers (e.g. {stray}) become missing",
                        DataWarning,
                        stacklevel=3,
                    )
            else:
                return self._fit_categorical(name, series)
        values = _as_float(series)
        if np.isinf(values).any():
            warnings.warn(
                f"column {name!r}: {int(np.isinf(values).sum())} infinite value(s) treated as missing",
                DataWarning,
                stacklevel=3,
            )
            values = np.where(np.isinf(values), np.nan, values)
        has_missing = bool(np.isnan(values).any())
        median = float(np.nanmedian(values)) if not np.isnan(values).all() else 0.0
        filled = np.where(np.isnan(values), median, values)
        mean, std = float(filled.mean()), float(filled.std())
        return ColumnSpec(
            name=name,
            kind="numeric",
            median=median,
            mean=mean,
            scale=std if std > 1e-12 else 1.0,
            missing_indicator=has_missing,
        )

    def _fit_categorical(self, name: str, series: pd.Series) -> ColumnSpec:
        values = series.astype("object").where(series.notna(), MISSING).astype(str)
        counts = values.value_counts()
        if len(counts) > self.max_categories:
            warnings.warn(
                f"column {name!r}: {len(counts)} distinct values; keeping the {self.max_categories} "
                f"most frequent, the rest share {OTHER!r}",
                DataWarning,
                stacklevel=3,
            )
        # Sort by count, then name, so the encoding does not depend on row order.
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_categories]
        return ColumnSpec(name=name, kind="categorical", categories=[k for k, _ in ordered])

    # ----- transforming ------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Raw column names the preprocessor expects, in training order."""
        return [c.name for c in self.columns]

    @property
    def output_names(self) -> list[str]:
        """Names of the model's input columns, after encoding."""
        return [n for c in self.columns for n in c.output_names()]

    @property
    def n_outputs(self) -> int:
        return sum(c.width for c in self.columns)

    def check_columns(self, frame: pd.DataFrame, where: str = "input") -> None:
        missing = [n for n in self.feature_names if n not in frame.columns]
        if missing:
            shown = ", ".join(map(repr, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise TorchclfError(
                f"{where}: missing feature column(s) {shown} that the model was trained on; "
                "add them (extra columns are ignored)"
            )

    def transform(self, frame: pd.DataFrame, where: str = "input") -> np.ndarray:
        """Encode raw rows.

        Returns
        -------
        ndarray of shape (n_samples, n_outputs), float32
        """
        self.check_columns(frame, where)
        out = np.empty((len(frame), self.n_outputs), dtype=np.float32)
        j = 0
        for spec in self.columns:
            series = frame[spec.name]
            if spec.kind == "numeric":
                values = _as_float(series)
                missing = ~np.isfinite(values)
                values = np.where(missing, spec.median, values)
                out[:, j] = (values - spec.mean) / spec.scale
                if spec.missing_indicator:
                    out[:, j + 1] = missing
            else:
                strings = series.astype("object").where(series.notna(), MISSING).astype(str)
                codes = pd.Categorical(strings, categories=spec.categories).codes.astype(np.int64)
                codes[codes < 0] = len(spec.categories)  # unseen -> <other>
                block = out[:, j : j + spec.width]
                block[:] = 0.0
                block[np.arange(len(frame)), codes] = 1.0
            j += spec.width
        return out

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.fit(frame).transform(frame)

    # ----- persistence -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "max_categories": self.max_categories,
            "numeric_text_ratio": self.numeric_text_ratio,
            "columns": [vars(c) for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        pre = cls(int(d["max_categories"]), float(d["numeric_text_ratio"]))
        pre.columns = [ColumnSpec(**c) for c in d["columns"]]
        return pre


class LabelCoder:
    """Maps original labels (strings, ints, bools) to class indices and back.

    For multilabel problems ``classes`` are the label names (the indicator
    columns) and targets are 0/1 matrices.
    """

    def __init__(self, classes: list | None = None, multilabel: bool = False):
        self.classes = list(classes or [])
        self.multilabel = multilabel

    def fit(self, target: pd.Series | pd.DataFrame) -> LabelCoder:
        if isinstance(target, pd.DataFrame):
            self.multilabel = True
            self.classes = [str(c) for c in target.columns]
            return self
        values = pd.unique(target.dropna())
        try:
            ordered = sorted(values)
        except TypeError:  # mixed types: order by their text
            ordered = sorted(values, key=str)
        self.classes = [_python(v) for v in ordered]
        return self

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode(self, target: pd.Series | pd.DataFrame, where: str = "target") -> np.ndarray:
        """Class indices of shape (n_samples,), or a 0/1 matrix (n_samples, n_labels)."""
        if self.multilabel:
            if not isinstance(target, pd.DataFrame):
                raise TorchclfError(f"{where}: this model is multilabel; give the label columns {self.classes}")
            missing = [c for c in self.classes if c not in target.columns]
            if missing:
                raise TorchclfError(f"{where}: missing label column(s) {missing}")
            return target[self.classes].to_numpy(dtype=np.int64)
        lookup = {c: i for i, c in enumerate(self.classes)}
        lookup.update({str(c): i for i, c in enumerate(self.classes)})
        raw = [_python(v) for v in target.tolist()]
        unseen = sorted({str(v) for v in raw if v not in lookup and str(v) not in lookup})
        if unseen:
            raise TorchclfError(
                f"{where}: label(s) {unseen[:5]} were not seen in training; known classes are "
                f"{[str(c) for c in self.classes][:20]}"
            )
        return np.array([lookup[v] if v in lookup else lookup[str(v)] for v in raw], dtype=np.int64)

    def decode(self, indices: np.ndarray, sep: str | None = None) -> list:
        """Original labels; for multilabel, the positive labels joined by ``sep``."""
        if self.multilabel:
            sep = "|" if sep is None else sep
            names = np.asarray(self.classes, dtype=object)
            return [sep.join(names[row.astype(bool)]) for row in np.asarray(indices)]
        return [self.classes[i] for i in np.asarray(indices).tolist()]

    def to_dict(self) -> dict:
        return {"classes": self.classes, "multilabel": self.multilabel}

    @classmethod
    def from_dict(cls, d: dict) -> LabelCoder:
        return cls(list(d["classes"]), bool(d["multilabel"]))

"""The in-memory table every source is read into."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from torchclf.data.memory import release_arrow_memory


@dataclass
class Dataset:
    """Raw feature columns plus the target, before any preprocessing.

    Attributes
    ----------
    features : DataFrame of shape (n_samples, n_columns)
        The raw columns the model may use, of any dtype.
    target : Series of shape (n_samples,) or DataFrame of shape (n_samples, n_labels)
        Class labels of any type, or a 0/1 indicator frame (one column per
        label) for a multilabel problem.
    name : str
        Where the rows came from (a file path or a built-in dataset's name).
    label_sep : str or None
        For multilabel targets read from one joined column: the separator used
        to join labels, reused when predictions are written back.
    target_columns : list of str
        The columns of the source that held the target (ignored at prediction).
    weight : ndarray of shape (n_samples,), optional
        Non-negative sample weights, carried through splits with their rows.
    """

    features: pd.DataFrame
    target: pd.Series | pd.DataFrame
    name: str = "data"
    label_sep: str | None = None
    target_columns: list[str] = field(default_factory=list)
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        assert len(self.features) == len(self.target), "features and target differ in length"

    @property
    def multilabel(self) -> bool:
        """True when the target is a label-indicator frame."""
        return isinstance(self.target, pd.DataFrame)

    @property
    def n_rows(self) -> int:
        return len(self.features)

    def take(self, index: np.ndarray) -> Dataset:
        """Return the rows at the given integer positions, with a fresh 0..n-1 index."""
        return Dataset(
            features=self.features.iloc[index].reset_index(drop=True),
            target=self.target.iloc[index].reset_index(drop=True),
            name=self.name,
            label_sep=self.label_sep,
            target_columns=list(self.target_columns),
            weight=None if self.weight is None else self.weight[index],
        )

    def take_each(self, parts: list, *, consume: bool = False) -> list:
        """``[self.take(rows) for rows in parts]`` (None where ``rows`` is None).

        With ``consume``, the feature columns are moved out of this Dataset's frame one at a time, each as
        soon as every part holds its rows, so that the whole table and all its parts are never in memory
        together: a table read from a file (one block per column, as torchclf reads Parquet) and its three
        parts peaked at twice the table's size; this way at about the table's size and one column. The frame
        is left without columns. For a frame that nobody else holds: the caller's own rows are never
        consumed.
        """
        if not consume:
            return [None if rows is None else self.take(rows) for rows in parts]
        frame = self.features
        columns = [{} for _ in parts]
        for name in list(frame.columns):
            values = frame[name]
            for part, rows in zip(columns, parts):
                if rows is not None:
                    part[name] = values.iloc[rows].reset_index(drop=True)
            del values, frame[name]
            release_arrow_memory()  # a column of a table read from Parquet is a view of Arrow's memory
        taken = []
        for part, rows in zip(columns, parts):
            if rows is None:
                taken.append(None)
                continue
            # copy=False: each column stays its own block, rather than all copied into one 2-D block at once.
            features = pd.DataFrame(part, copy=False) if part else pd.DataFrame(index=pd.RangeIndex(len(rows)))
            taken.append(Dataset(
                features=features, target=self.target.iloc[rows].reset_index(drop=True), name=self.name,
                label_sep=self.label_sep, target_columns=list(self.target_columns),
                weight=None if self.weight is None else self.weight[rows]))
        return taken

    def summary(self) -> dict:
        """Rows, columns and class balance as plain JSON-ready values."""
        if self.multilabel:
            balance = {str(c): int(self.target[c].sum()) for c in self.target.columns}
        else:
            counts = self.target.value_counts(sort=False)
            balance = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
        return {
            "name": self.name,
            "rows": int(self.n_rows),
            "columns": [str(c) for c in self.features.columns],
            "dtypes": {str(c): str(t) for c, t in self.features.dtypes.items()},
            "class_counts": balance,
        }

"""Seeded train / validation / test splits, stratified where the task allows."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from torchclf.data.dataset import Dataset
from torchclf.errors import TorchclfError


@dataclass
class Splits:
    """The three parts of a dataset; ``validation`` may be empty-free (None)."""

    train: Dataset
    validation: Dataset | None
    test: Dataset | None


def _can_stratify(ds: Dataset, n_parts: int) -> bool:
    """Whether every class has enough rows to appear in each of ``n_parts`` parts (warns once if not)."""
    if ds.multilabel:
        return False
    _, counts = np.unique(ds.target.astype(str).to_numpy(), return_counts=True)
    if counts.min() < n_parts:
        warnings.warn(
            f"{ds.name}: a class has only {counts.min()} row(s), too few to stratify; "
            "splitting without stratification",
            UserWarning,
            stacklevel=3,
        )
        return False
    return True


def _cut(ds: Dataset, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(ds.n_rows)
    if math.ceil(fraction * ds.n_rows) >= ds.n_rows:  # the rule by which scikit-learn would leave nothing to train on
        raise TorchclfError(
            f"{ds.name}: {ds.n_rows} row(s) are too few to hold out {fraction:.0%} for testing or validation; "
            "add rows, or pass --test-size 0 --val-size 0 (or a separate --test file)"
        )
    strat = ds.target.astype(str).to_numpy() if stratify else None
    try:
        keep, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=strat)
    except ValueError:
        # A held-out part too small to contain every class: split without strata.
        keep, held = train_test_split(index, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def split_dataset(
    ds: Dataset, *, test_size: float = 0.2, validation_size: float = 0.1, seed: int = 0,
    test: Dataset | None = None,
) -> Splits:
    """Split rows into train, validation and test.

    ``test_size`` and ``validation_size`` are fractions of all rows. When
    ``test`` is given it is the test set and only the validation part is cut.
    A part with a size of 0 is None.
    """
    rest = ds
    test_part = test
    cut_test = test is None and test_size > 0
    parts = 1 + int(cut_test) + int(validation_size > 0)
    stratify = parts > 1 and _can_stratify(ds, parts)
    if cut_test:
        keep, held = _cut(ds, test_size, seed, stratify)
        rest, test_part = ds.take(keep), ds.take(held)
    val_part = None
    if validation_size > 0:
        frac = validation_size / (1.0 - (test_size if test is None else 0.0))
        keep, held = _cut(rest, min(frac, 0.5), seed + 1, stratify)
        rest, val_part = rest.take(keep), rest.take(held)
    return Splits(train=rest, validation=val_part, test=test_part)

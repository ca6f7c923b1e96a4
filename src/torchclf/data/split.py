"""Seeded train / validation / test splits, stratified where the task allows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from torchclf.data.dataset import Dataset
from torchclf.errors import TorchclfError, warn


@dataclass
class Splits:
    """The three parts of a dataset; ``validation`` may be empty-free (None)."""

    train: Dataset
    validation: Dataset | None
    test: Dataset | None


def _class_codes(ds: Dataset) -> np.ndarray:
    """Each row's class as an integer, the classes numbered in the sorted order of their text.

    Classes are told apart by their text (``astype(str)``), which is what the
    split has always stratified on; only the distinct values are turned into
    text, so a million rows cost a hash pass instead of a million strings.
    """
    codes, uniques = pd.factorize(ds.target, use_na_sentinel=False)
    _, text_class = np.unique(pd.Series(uniques, dtype=object).astype(str).to_numpy(), return_inverse=True)
    return text_class.reshape(-1)[codes]


def _can_stratify(name: str, classes: np.ndarray, n_parts: int) -> bool:
    """Whether every class has enough rows to appear in each of ``n_parts`` parts (warns once if not)."""
    counts = np.bincount(classes)
    if counts.min() < n_parts:
        warn(f"{name}: a class has only {counts.min()} row(s), too few to stratify; "
             "splitting without stratification")
        return False
    return True


# The split draws from NumPy's RandomState(seed) in the order that scikit-learn's train_test_split (ShuffleSplit
# and StratifiedShuffleSplit) does, so runs keep the rows they were given before the split stopped importing
# scikit-learn (about a second of imports on the path of `train`); tests/test_split.py compares the two.
def _apportion(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """``draws`` rows shared among classes in proportion to ``counts``: each class gets the floor of its share,
    and the rows left over go to the largest remainders, ties broken at random."""
    exact = counts / counts.sum() * draws
    share = np.floor(exact)
    left = int(draws - share.sum())
    if left > 0:
        remainder = exact - share
        for value in np.sort(np.unique(remainder))[::-1]:
            tied = np.flatnonzero(remainder == value)
            now = min(len(tied), left)
            share[rng.choice(tied, size=now, replace=False)] += 1
            left -= now
            if left == 0:
                break
    return share.astype(int)


def _shuffled_parts(n: int, n_held: int, seed: int, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) row positions, unsorted; stratified by ``classes`` (integer codes) where given.

    Raises ValueError where stratification cannot work: a class of one row, or fewer rows in a part than
    there are classes.
    """
    rng = np.random.RandomState(seed)
    n_kept = n - n_held
    if classes is None:
        order = rng.permutation(n)
        return order[n_held:], order[:n_held]
    counts = np.bincount(classes)
    if counts.min() < 2 or n_kept < len(counts) or n_held < len(counts):
        raise ValueError("too few rows per class to stratify")
    members = np.split(np.argsort(classes, kind="stable"), np.cumsum(counts)[:-1])
    kept_per_class = _apportion(counts, n_kept, rng)
    held_per_class = _apportion(counts - kept_per_class, n_held, rng)
    kept, held = [], []
    for rows, k, h in zip(members, kept_per_class, held_per_class):
        rows = rows[rng.permutation(len(rows))]
        kept.append(rows[:k])
        held.append(rows[k:k + h])
    return np.concatenate(kept), np.concatenate(held)


def _cut(n: int, name: str, fraction: float, seed: int,
         classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) positions among ``n`` rows, each sorted; stratified by ``classes`` where given."""
    n_held = math.ceil(fraction * n)
    if n_held >= n:  # nothing would be left to train on
        raise TorchclfError(
            f"{name}: {n} row(s) are too few to hold out {fraction:.0%} for testing or validation; "
            "add rows, or pass --test-size 0 --val-size 0 (or a separate --test file)"
        )
    try:
        keep, held = _shuffled_parts(n, n_held, seed, classes)
    except ValueError:
        # A held-out part too small to contain every class: split without strata.
        keep, held = _shuffled_parts(n, n_held, seed, None)
    return np.sort(keep), np.sort(held)


def split_dataset(
    ds: Dataset, *, test_size: float = 0.2, validation_size: float = 0.1, seed: int = 0,
    test: Dataset | None = None, consume: bool = False,
) -> Splits:
    """Split rows into train, validation and test.

    ``test_size`` and ``validation_size`` are fractions of all rows. When
    ``test`` is given it is the test set and only the validation part is cut.
    A part with a size of 0 is None.

    The validation part is cut from the rows left after the test part, as two
    splits in a row, but the rows of each part are worked out first and copied
    from ``ds`` once (each row is copied once, not up to twice). With ``consume``, the columns are moved out
    of ``ds`` as the parts are made (see :meth:`Dataset.take_each`): for rows read from a file that nothing
    else holds.
    """
    cut_test = test is None and test_size > 0
    parts = 1 + int(cut_test) + int(validation_size > 0)
    classes = _class_codes(ds) if parts > 1 and not ds.multilabel else None
    if classes is not None and not _can_stratify(ds.name, classes, parts):
        classes = None
    rest = np.arange(ds.n_rows)
    test_rows = val_rows = None
    if cut_test:
        rest, test_rows = _cut(ds.n_rows, ds.name, test_size, seed, classes)
    if validation_size > 0:
        frac = validation_size / (1.0 - (test_size if test is None else 0.0))
        # The remaining rows' classes, numbered among themselves as the remaining rows alone would number them.
        left = None if classes is None else np.unique(classes[rest], return_inverse=True)[1].reshape(-1)
        keep, held = _cut(len(rest), ds.name, min(frac, 0.5), seed + 1, left)
        rest, val_rows = rest[keep], rest[held]
    train, validation, held_out = ds.take_each([rest, val_rows, test_rows], consume=consume)
    return Splits(train=train, validation=validation, test=test if test_rows is None else held_out)


def fold_numbers(ds: Dataset, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (0 .. folds - 1) for k-fold cross-validation: a seeded shuffle dealt round-robin, by
    class for a single-label target, so every fold holds each class in proportion. Shape (n_rows,)."""
    order = np.random.default_rng(seed).permutation(ds.n_rows)
    if not ds.multilabel:
        order = order[np.argsort(_class_codes(ds)[order], kind="stable")]
    numbers = np.empty(ds.n_rows, dtype=np.int64)
    numbers[order] = np.arange(ds.n_rows) % folds
    return numbers

"""Checking that a target holds class labels, not quantities to regress on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from torchclf.errors import TorchclfError, warn

# A float target with non-integer values is refused as regression-like above
# this many distinct values (fewer on small tables, see regression_like).
MAX_FRACTIONAL_CLASSES = 20


def regression_like(target) -> str | None:
    """Why ``target`` looks like a quantity rather than class labels, or None.

    The rule: a float column, some of whose values are not whole numbers,
    with more than ``min(20, n_rows // 2)`` distinct values. Class labels are
    text, integers or whole-valued floats (an integer column with gaps reads
    as float); a fractional float is a class label only in small label sets,
    such as half-star ratings. A measured quantity has a new value in almost
    every row, and even when rounded (temperatures to 0.1 degree) it has more
    than 20 values; on small tables, more distinct values than half the rows
    leaves most classes a single row. Counts alone do not say whether
    integer targets with many values are classes (product codes are), so
    integers are never refused.

    Parameters
    ----------
    target : Series of shape (n_samples,), or DataFrame (multilabel: never regression-like)
    """
    if not isinstance(target, pd.Series) or not pd.api.types.is_float_dtype(target.dtype):
        return None
    values = target.dropna().to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0 or np.all(values == np.round(values)):
        return None
    distinct = np.unique(values)
    if len(distinct) <= min(MAX_FRACTIONAL_CLASSES, len(values) // 2):
        return None
    examples = ", ".join(f"{v:g}" for v in values[values != np.round(values)][:3])
    return f"{len(distinct)} distinct values in {len(values)} rows, not all whole numbers (e.g. {examples})"


def check_target(target, task: str = "auto", where: str = "target") -> None:
    """Refuse a regression-like ``target`` (see :func:`regression_like`) unless ``task`` is ``"multiclass"``.

    Call it on the whole target before the labels are coded; an explicit
    multiclass task is the user saying that the numbers really are classes.
    """
    if task == "multiclass":
        return
    reason = regression_like(target)
    if reason is None:
        _warn_if_mostly_single_rows(target, where)
        return
    column = f" {target.name!r}" if target.name is not None else ""
    raise TorchclfError(
        f"{where}: the target{column} looks like a quantity to predict, not class labels: {reason}; torchclf "
        "trains classifiers, so bin the values into classes first (for example with pandas.cut), or pass "
        "--task multiclass if every distinct value really is a class"
    )


def _warn_if_mostly_single_rows(target, where: str) -> None:
    """Warn when most classes have a single row: an identifier (or a count) given as the target by mistake.

    Integers and text are never refused (product codes are classes), but with more classes than
    ``max(20, rows // 2)`` most of them have one row, which a classifier cannot learn from.
    """
    if not isinstance(target, pd.Series):
        return
    labels = target.dropna()
    classes = labels.nunique()
    if classes <= max(MAX_FRACTIONAL_CLASSES, len(labels) // 2):
        return
    from torchclf.data.sources import DataWarning

    column = f" {target.name!r}" if target.name is not None else ""
    warn(f"{where}: the target{column} has {classes} classes in {len(labels)} rows, so most classes "
         "have a single row and cannot be learnt; if it is an identifier or a quantity, give the column "
         "of the labels to predict instead", DataWarning)

"""Input columns computed from two-dimensional data: x, y, x², y², x·y, sin x, sin y.

These are TensorFlow Playground's feature inputs. A built-in dataset with two
columns takes them as ``features=`` joined by ``+`` (for example
``circles:features=x2+y2``), so a linear model given x² and y² can separate
the circles; the playground computes the same columns for an uploaded table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from torchclf.errors import TorchclfError, closest

# token -> (column name from the two source column names a and b, values from their arrays x and y)
FEATURES = {
    "x": (lambda a, b: a, lambda x, y: x),
    "y": (lambda a, b: b, lambda x, y: y),
    "x2": (lambda a, b: f"{a}^2", lambda x, y: x * x),
    "y2": (lambda a, b: f"{b}^2", lambda x, y: y * y),
    "xy": (lambda a, b: f"{a}*{b}", lambda x, y: x * y),
    "sinx": (lambda a, b: f"sin({a})", lambda x, y: np.sin(x)),
    "siny": (lambda a, b: f"sin({b})", lambda x, y: np.sin(y)),
}
RAW = ("x", "y")  # the two source columns as they are: what a dataset gives without ``features=``
SEP = "+"


def parse_features(text: str, where: str = "features") -> tuple[str, ...]:
    """``"x2+y2"`` -> ``("x2", "y2")`` in the order of :data:`FEATURES`; raises naming ``where``."""
    tokens = [t.strip() for t in str(text).split(SEP) if t.strip()]
    for t in tokens:
        if t not in FEATURES:
            hint = closest(t, FEATURES, n=1)
            raise TorchclfError(f"{where}: unknown feature {t!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                + f"; choose from {', '.join(FEATURES)} joined by '{SEP}', e.g. x2{SEP}y2")
    if not tokens:
        raise TorchclfError(f"{where}: no features chosen; choose from {', '.join(FEATURES)} joined by '{SEP}'")
    return tuple(t for t in FEATURES if t in tokens)


def format_features(tokens) -> str:
    """The inverse of :func:`parse_features`."""
    return SEP.join(tokens)


def derive(frame: pd.DataFrame, tokens, where: str = "features") -> pd.DataFrame:
    """The chosen columns of two numeric source columns.

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, 2)
    tokens : sequence of str
        Names from :data:`FEATURES`.

    Returns
    -------
    DataFrame of shape (n_samples, len(tokens)), float64, in :data:`FEATURES` order.
    """
    if frame.shape[1] != 2:
        raise TorchclfError(f"{where}: computed features need exactly two source columns, found {frame.shape[1]}; "
                            "drop features= for this data")
    a, b = (str(c) for c in frame.columns)
    x, y = (frame.iloc[:, i].to_numpy(dtype=np.float64) for i in (0, 1))
    chosen = [t for t in FEATURES if t in set(tokens)]
    return pd.DataFrame({FEATURES[t][0](a, b): FEATURES[t][1](x, y) for t in chosen})

"""Built-in datasets: generators (scikit-learn's circles, moons and blobs, drawn here) and bundled sets
(never downloaded).

A dataset is named by a spec such as ``moons`` or ``moons:noise=0.07,n_samples=500,seed=1``;
the part after the colon overrides the generator's parameters. A two-column dataset also
takes ``features=`` (such as ``circles:features=x2+y2``): input columns computed from its
two columns (see :mod:`torchclf.data.features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from torchclf.config import PARAM
from torchclf.errors import TorchclfError, closest


@dataclass(frozen=True)
class BuiltinDataset:
    """A named generator with its default parameters and a one-line description."""

    name: str
    description: str
    make: Callable[..., tuple[pd.DataFrame, pd.Series | pd.DataFrame]]
    defaults: dict


MAX_SEED = int(PARAM["seed"].high)  # the training seed's bound: NumPy's RandomState takes no more
# Generator parameters that count something (rows, classes, columns, cells): at least one of each.
COUNTS = ("n_samples", "points_per_class", "classes", "centers", "n_features", "n_classes", "cells")


def _xy_frame(X: np.ndarray, prefix: str = "x") -> pd.DataFrame:
    return pd.DataFrame(X.astype(np.float64), columns=[f"{prefix}{i}" for i in range(X.shape[1])])


def _shuffled(X: np.ndarray, y: np.ndarray, rng: np.random.RandomState, noise: float | None = None):
    """Rows in a random order, then Gaussian noise on every coordinate: scikit-learn's order of draws.

    scikit-learn's generators shuffle an index with ``RandomState.shuffle`` and then draw the noise from the
    same ``RandomState``; doing the same here gives the same rows for the same seed (tests/test_data.py
    compares the two) without importing scikit-learn, whose import costs more than the demo's training.
    """
    order = np.arange(len(y))
    rng.shuffle(order)
    X, y = X[order], y[order]
    if noise is not None:
        X = X + rng.normal(scale=noise, size=X.shape)
    return X, y


def _two_arcs(outer: np.ndarray, inner: np.ndarray, inner_xy, seed: int, noise: float):
    """Class 0 on the unit circle at the angles ``outer``; class 1 at ``inner_xy(inner)``; shuffled, noisy."""
    inner_x, inner_y = inner_xy(inner)
    X = np.column_stack([np.concatenate([np.cos(outer), inner_x]), np.concatenate([np.sin(outer), inner_y])])
    y = np.repeat(np.array([0, 1], dtype=np.int64), [len(outer), len(inner)])
    return _shuffled(X, y, np.random.RandomState(seed), noise)


def _halves(n_samples: int) -> tuple[int, int]:
    """Rows of class 0 and class 1: class 1 takes the odd one."""
    return n_samples // 2, n_samples - n_samples // 2


def _circles(n_samples: int, noise: float, factor: float, seed: int):
    """Two concentric circles, the inner one of radius ``factor``: ``make_circles``' rows for the same seed."""
    if not factor < 1:
        raise TorchclfError(f"dataset 'circles': factor is the inner circle's radius, a fraction of the outer one's: "
                            f"it must be below 1, got {factor}")
    n_out, n_in = _halves(n_samples)
    around = lambda n: np.linspace(0.0, 2 * np.pi, n, endpoint=False)  # noqa: E731 (no point counted twice)
    X, y = _two_arcs(around(n_out), around(n_in), lambda a: (np.cos(a) * factor, np.sin(a) * factor), seed, noise)
    return _xy_frame(X), pd.Series(y, name="label")


def _moons(n_samples: int, noise: float, seed: int):
    """Two interleaving half circles: ``make_moons``' rows for the same seed."""
    n_out, n_in = _halves(n_samples)
    half = lambda n: np.linspace(0.0, np.pi, n)  # noqa: E731
    X, y = _two_arcs(half(n_out), half(n_in), lambda a: (1 - np.cos(a), 1 - np.sin(a) - 0.5), seed, noise)
    return _xy_frame(X), pd.Series(y, name="label")


def _blobs(n_samples: int, centers: int, cluster_std: float, n_features: int, seed: int):
    """Gaussian blobs around centres drawn in [-10, 10]^n_features: ``make_blobs``' rows for the same seed."""
    rng = np.random.RandomState(seed)
    middles = rng.uniform(-10.0, 10.0, size=(centers, n_features))
    sizes = np.full(centers, n_samples // centers)
    sizes[: n_samples % centers] += 1  # the first blobs take the rows left over
    X = np.concatenate([rng.normal(loc=middle, scale=cluster_std, size=(size, n_features))
                        for middle, size in zip(middles, sizes)])
    y = np.repeat(np.arange(centers, dtype=np.int64), sizes)
    X, y = _shuffled(X, y, rng)
    return _xy_frame(X), pd.Series(y, name="label")


def _spirals(points_per_class: int, classes: int, noise: float, seed: int):
    """The CS231n spiral: ``classes`` arms of ``points_per_class`` points each."""
    rng = np.random.default_rng(seed)
    X = np.zeros((points_per_class * classes, 2))
    y = np.zeros(points_per_class * classes, dtype=np.int64)
    for k in range(classes):
        rows = slice(points_per_class * k, points_per_class * (k + 1))
        radius = np.linspace(0.0, 1.0, points_per_class)
        theta = np.linspace(k * 4.0, (k + 1) * 4.0, points_per_class)
        theta = theta + rng.normal(size=points_per_class) * noise
        X[rows] = np.c_[radius * np.sin(theta), radius * np.cos(theta)]
        y[rows] = k
    return _xy_frame(X), pd.Series(y, name="label")


def _xor(n_samples: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n_samples, 2))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    X = X + rng.normal(scale=noise, size=X.shape)
    return _xy_frame(X), pd.Series(y, name="label")


def _checkerboard(n_samples: int, cells: int, noise: float, seed: int):
    """Points in [-1, 1]^2 labelled by the colour of a ``cells`` x ``cells`` board's square."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n_samples, 2))
    square = np.floor((X + 1.0) / 2.0 * max(cells, 1)).clip(0, max(cells, 1) - 1).astype(np.int64)
    y = (square.sum(axis=1) % 2).astype(np.int64)
    X = X + rng.normal(scale=noise, size=X.shape)
    return _xy_frame(X), pd.Series(y, name="label")


def _multilabel(n_samples: int, n_features: int, n_classes: int, n_labels: int, seed: int):
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_classes=n_classes,
        n_labels=n_labels,
        random_state=seed,
    )
    target = pd.DataFrame(Y.astype(np.int64), columns=[f"label_{i}" for i in range(n_classes)])
    return _xy_frame(X), target


def _bundled(loader_name: str, string_labels: bool):
    def make():
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)(as_frame=True)
        X = bunch.data.astype(np.float64)
        y = bunch.target
        if string_labels:
            y = pd.Series(np.asarray(bunch.target_names)[y.to_numpy()], name="label")
        else:
            y = pd.Series(y.to_numpy(), name="label")
        return X.reset_index(drop=True), y

    return make


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset(
            "circles",
            "two concentric circles, binary (the tutorial's: 1000 samples, noise 0.03)",
            _circles,
            {"n_samples": 1000, "noise": 0.03, "factor": 0.8, "seed": 42},
        ),
        BuiltinDataset(
            "moons",
            "two interleaving half-moons, binary",
            _moons,
            {"n_samples": 1000, "noise": 0.2, "seed": 42},
        ),
        BuiltinDataset(
            "blobs",
            "Gaussian blobs, multiclass (the tutorial's: 4 centres, std 1.5)",
            _blobs,
            {"n_samples": 1000, "centers": 4, "cluster_std": 1.5, "n_features": 2, "seed": 42},
        ),
        BuiltinDataset(
            "spirals",
            "the CS231n spiral, multiclass (3 arms of 300 points)",
            _spirals,
            {"points_per_class": 300, "classes": 3, "noise": 0.2, "seed": 42},
        ),
        BuiltinDataset(
            "xor",
            "four quadrants labelled by XOR, binary",
            _xor,
            {"n_samples": 1000, "noise": 0.05, "seed": 42},
        ),
        BuiltinDataset(
            "checkerboard",
            "a checkerboard of cells x cells squares in two colours, binary",
            _checkerboard,
            {"n_samples": 1000, "cells": 4, "noise": 0.02, "seed": 42},
        ),
        BuiltinDataset(
            "multilabel",
            "scikit-learn's multilabel generator: 20 features, 5 labels",
            _multilabel,
            {"n_samples": 1000, "n_features": 20, "n_classes": 5, "n_labels": 2, "seed": 42},
        ),
        BuiltinDataset("iris", "scikit-learn's iris flowers: 150 rows, 3 classes", _bundled("load_iris", True), {}),
        BuiltinDataset("wine", "scikit-learn's wine: 178 rows, 13 features, 3 classes", _bundled("load_wine", True), {}),
        BuiltinDataset(
            "breast_cancer",
            "scikit-learn's breast cancer: 569 rows, 30 features, binary",
            _bundled("load_breast_cancer", True),
            {},
        ),
        BuiltinDataset("digits", "scikit-learn's 8x8 digits: 1797 rows, 64 features, 10 classes", _bundled("load_digits", False), {}),
    ]
}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name:key=value,key=value`` into the name and its raw overrides."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TorchclfError(
                f"dataset spec {spec!r}: expected key=value after ':', got {item!r} "
                "(example: moons:noise=0.07,n_samples=500)"
            )
        overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def _coerce(name: str, key: str, raw: str, default: int | float):
    """``raw`` as the type of ``default`` (every generator parameter is a number): a whole number (``1e3`` is
    one) or a finite float."""
    whole = isinstance(default, int)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (whole and not value.is_integer()):
        raise TorchclfError(f"dataset {name!r}: {key}={raw!r} is not a valid {'whole number' if whole else 'float'}")
    return int(value) if whole else value


def is_builtin(spec: str) -> bool:
    return parse_spec(spec)[0] in BUILTIN_DATASETS


def load_builtin(spec: str):
    """Build a built-in dataset from its spec.

    Returns
    -------
    features : DataFrame of shape (n_samples, n_features)
    target : Series of shape (n_samples,) or DataFrame of shape (n_samples, n_labels)
    params : dict
        The generator parameters actually used (defaults plus overrides).
    """
    name, overrides = parse_spec(spec)
    if name not in BUILTIN_DATASETS:
        hint = closest(name, BUILTIN_DATASETS)
        raise TorchclfError(
            f"unknown dataset {name!r}: not a file and not a built-in dataset"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + " (run `torchclf datasets` for the list)"
        )
    ds = BUILTIN_DATASETS[name]
    params = dict(ds.defaults)
    # features= is not a generator's parameter: it computes input columns from a two-column dataset.
    features = overrides.pop("features", None)
    for key, raw in overrides.items():
        if key not in params:
            allowed = ", ".join(params) or "none"
            raise TorchclfError(f"dataset {name!r} has no parameter {key!r} (parameters: {allowed})")
        params[key] = _coerce(name, key, raw, params[key])
        if isinstance(params[key], (int, float)) and params[key] < 0:
            raise TorchclfError(f"dataset {name!r}: {key} must be >= 0, got {raw}")
        if key == "seed" and params[key] > MAX_SEED:
            raise TorchclfError(f"dataset {name!r}: seed must be at most {MAX_SEED} (2**32 - 1), got {raw}")
        if key in COUNTS and params[key] < 1:
            raise TorchclfError(f"dataset {name!r}: {key} must be at least 1, got {raw}")
    frame, target = ds.make(**params)
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(frame.to_numpy(dtype=np.float64)).all():  # noise=1e308 draws infinities
            shown = ",".join(f"{k}={raw}" for k, raw in overrides.items())
            raise TorchclfError(f"dataset {name!r}: {shown} gives values too large to be numbers (infinite); "
                                "use smaller values")
    if features is not None:
        from torchclf.data.features import derive, format_features, parse_features

        where = f"dataset {name!r}: features={features}"
        tokens = parse_features(features, where)
        frame = derive(frame, tokens, where)
        params["features"] = format_features(tokens)
    return frame, target, params


def describe_builtin() -> list[tuple[str, str, str]]:
    """(name, description, default parameters) for each built-in dataset."""
    return [
        (d.name, d.description, ",".join(f"{k}={v}" for k, v in d.defaults.items()))
        for d in BUILTIN_DATASETS.values()
    ]

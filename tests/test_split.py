"""The split without scikit-learn gives the rows scikit-learn's train_test_split gave, so runs keep their rows."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from torchclf.data import split
from torchclf.data.dataset import Dataset


def _reference(ds: Dataset, fraction: float, seed: int, stratify: bool):
    """The split as it was written with scikit-learn."""
    index = np.arange(ds.n_rows)
    strat = ds.target.astype(str).to_numpy() if stratify else None
    try:
        keep, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=strat)
    except ValueError:
        keep, held = train_test_split(index, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def _dataset(labels) -> Dataset:
    target = pd.Series(labels)
    return Dataset(name="t", features=pd.DataFrame({"x": np.arange(len(target))}), target=target)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=7),
    fraction=st.sampled_from([0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5]),
    seed=st.integers(0, 2**31 - 1),
    stratify=st.booleans(),
    kind=st.sampled_from(["str", "int", "float", "category"]),
)
def test_the_split_takes_scikit_learns_rows(counts, fraction, seed, stratify, kind):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.RandomState(seed % 1000).shuffle(labels)
    values = {"str": [f"c{v * 7 % 11}" for v in labels], "int": labels * 10 - 3, "float": labels / 2,
              "category": pd.Categorical([f"k{v}" for v in labels])}[kind]
    ds = _dataset(values)
    if int(np.ceil(fraction * ds.n_rows)) >= ds.n_rows:
        return  # refused before any drawing, by both
    got = split._cut(ds, fraction, seed, stratify)
    want = _reference(ds, fraction, seed, stratify)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_classes_are_told_apart_by_their_text_as_before():
    # 1 and "1" are one class, and classes are numbered in the order of their text ("10" before "9").
    ds = _dataset(pd.Series([1, "1", "10", "9", 9, "10"] * 5, dtype=object))
    assert list(split._class_codes(ds)[:6]) == [0, 0, 1, 2, 2, 1]
    for seed in range(5):
        got, want = split._cut(ds, 0.3, seed, True), _reference(ds, 0.3, seed, True)
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("rows", [100_003])
def test_a_large_split_is_the_same_too(rows):
    labels = np.random.RandomState(0).choice(["a", "b", "c", "rare"], size=rows, p=[0.5, 0.3, 0.1999, 0.0001])
    ds = _dataset(labels)
    for stratify in (True, False):
        got, want = split._cut(ds, 0.2, 7, stratify), _reference(ds, 0.2, 7, stratify)
        np.testing.assert_array_equal(got[1], want[1])

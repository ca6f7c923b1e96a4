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


@pytest.mark.filterwarnings("ignore:.*too few to stratify")
@settings(max_examples=80, deadline=None)
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
    got = split._cut(ds.n_rows, "t", fraction, seed, split._class_codes(ds) if stratify else None)
    want = _reference(ds, fraction, seed, stratify)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_classes_are_told_apart_by_their_text_as_before():
    # 1 and "1" are one class, and classes are numbered in the order of their text ("10" before "9").
    ds = _dataset(pd.Series([1, "1", "10", "9", 9, "10"] * 5, dtype=object))
    assert list(split._class_codes(ds)[:6]) == [0, 0, 1, 2, 2, 1]
    for seed in range(5):
        got, want = split._cut(ds.n_rows, "t", 0.3, seed, split._class_codes(ds)), _reference(ds, 0.3, seed, True)
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("rows", [100_003])
def test_a_large_split_is_the_same_too(rows):
    labels = np.random.RandomState(0).choice(["a", "b", "c", "rare"], size=rows, p=[0.5, 0.3, 0.1999, 0.0001])
    ds = _dataset(labels)
    for stratify in (True, False):
        classes = split._class_codes(ds) if stratify else None
        got, want = split._cut(ds.n_rows, "t", 0.2, 7, classes), _reference(ds, 0.2, 7, stratify)
        np.testing.assert_array_equal(got[1], want[1])


def _reference_parts(ds: Dataset, test_size: float, validation_size: float, seed: int):
    """The three parts as the split used to make them: test first, then validation from the rest."""
    stratify = not ds.multilabel and ds.target.astype(str).value_counts().min() >= 3
    keep, held = _reference(ds, test_size, seed, stratify)
    rest, test = ds.take(keep), ds.take(held)
    keep, held = _reference(rest, min(validation_size / (1 - test_size), 0.5), seed + 1, stratify)
    return rest.take(keep), rest.take(held), test


@pytest.mark.filterwarnings("ignore:.*too few to stratify")
@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(2, 30), min_size=2, max_size=5), seed=st.integers(0, 10_000),
       sizes=st.sampled_from([(0.2, 0.1), (0.25, 0.25), (0.1, 0.3)]))
def test_the_three_parts_are_those_of_two_splits_in_a_row(counts, seed, sizes):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.RandomState(seed).shuffle(labels)
    ds = _dataset([f"c{v}" for v in labels])
    if int(np.ceil(sizes[0] * ds.n_rows)) >= ds.n_rows - 2:
        return
    try:
        want = _reference_parts(ds, *sizes, seed)
    except Exception as err:  # too few rows for the validation cut: the split refuses too
        with pytest.raises(type(err)):
            split.split_dataset(ds, test_size=sizes[0], validation_size=sizes[1], seed=seed)
        return
    got = split.split_dataset(ds, test_size=sizes[0], validation_size=sizes[1], seed=seed)
    for part, reference in zip((got.train, got.validation, got.test), want):
        pd.testing.assert_frame_equal(part.features, reference.features)
        pd.testing.assert_series_equal(part.target, reference.target)


def test_fold_numbers_deal_each_class_evenly_and_follow_the_seed():
    target = pd.Series(["a"] * 10 + ["b"] * 7 + ["c"] * 3)
    rows = Dataset(pd.DataFrame({"x": np.arange(20.0)}), target)
    folds = split.fold_numbers(rows, 3, seed=4)
    counts = pd.crosstab(target, folds)  # classes x folds
    # Dealt round-robin over the rows sorted by class: a's 10 rows go to folds 0, 1, 2, 0, ..., b's continue.
    assert counts.to_numpy().tolist() == [[4, 3, 3], [2, 3, 2], [1, 1, 1]]
    assert np.array_equal(split.fold_numbers(rows, 3, seed=4), folds)
    assert not np.array_equal(split.fold_numbers(rows, 3, seed=5), folds)
    # Multilabel: no classes to deal by, a seeded shuffle in equal folds.
    labels = Dataset(pd.DataFrame({"x": np.arange(10.0)}), pd.DataFrame({"p": [0, 1] * 5, "q": [1] * 10}))
    assert sorted(np.bincount(split.fold_numbers(labels, 4, seed=0)).tolist()) == [2, 2, 3, 3]


def _mixed_dataset(n: int = 300, weights: bool = True) -> Dataset:
    rng = np.random.default_rng(3)
    x = rng.normal(size=n)
    x[::7] = np.nan
    features = pd.DataFrame({
        "x": x, "k": rng.integers(0, 9, n), "colour": pd.Categorical(rng.choice(["r", "g", "b"], n)),
        "note": np.where(rng.random(n) < 0.1, None, rng.choice(["a", "b"], n)).astype(object),
        "when": pd.date_range("2024-01-01", periods=n, freq="h"),
    })
    target = pd.Series(rng.choice(["yes", "no", "maybe"], n), name="label")
    return Dataset(features, target, name="t", weight=rng.random(n) if weights else None)


@pytest.mark.parametrize("weights", [True, False])
def test_a_consuming_split_gives_the_same_parts_and_empties_the_table(weights):
    """consume=True (rows a run read itself) moves the columns into the parts: the same parts, dtypes and
    weights as copying them, and the table left without columns; without it the table is left as it was."""
    ds, copied = _mixed_dataset(weights=weights), _mixed_dataset(weights=weights)
    before = ds.features.copy()
    plain = split.split_dataset(copied, test_size=0.2, validation_size=0.1, seed=5)
    pd.testing.assert_frame_equal(copied.features, before)
    moved = split.split_dataset(ds, test_size=0.2, validation_size=0.1, seed=5, consume=True)
    for part in ("train", "validation", "test"):
        a, b = getattr(plain, part), getattr(moved, part)
        pd.testing.assert_frame_equal(b.features, a.features, check_exact=True)
        pd.testing.assert_series_equal(b.target, a.target)
        assert (a.weight is None and b.weight is None) or np.array_equal(a.weight, b.weight)
        assert len(b.features._mgr.blocks) == b.features.shape[1]  # a block per column, none copied together
    assert list(ds.features.columns) == [] and ds.n_rows == 300


def test_a_run_consumes_only_rows_it_read_itself(tmp_path, monkeypatch):
    """A file's rows are moved into the parts; a caller's DataFrame or Dataset is left whole."""
    from torchclf import api

    consumed = []
    original = split.split_dataset

    def watch(ds, **kwargs):
        consumed.append(kwargs.get("consume", False))
        return original(ds, **kwargs)

    monkeypatch.setattr(api, "split_dataset", watch)
    config = api.make_config(model={"hidden": (4,)}, train={"epochs": 1, "threads": 1})
    ds = _mixed_dataset()
    frame = ds.features.assign(label=ds.target)
    frame.to_csv(tmp_path / "t.csv", index=False)
    kept = frame.copy()
    api.prepare(api.RunSpec(str(tmp_path / "t.csv"), "label", None, None, config))
    api.prepare(api.RunSpec(frame, "label", None, None, config))
    api.prepare(api.RunSpec(ds, None, None, None, config))
    assert consumed == [True, False, False]
    pd.testing.assert_frame_equal(frame, kept)
    assert ds.features.shape == (300, 5)


def test_memory_is_handed_back_through_glibc_on_linux():
    import platform

    from torchclf.data import memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert memory._malloc_trim() is not None
    memory.release_memory()

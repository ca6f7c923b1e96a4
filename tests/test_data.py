"""Sources, built-in datasets and splits."""

import numpy as np
import pandas as pd
import pytest

from torchclf.data import from_frame, load_builtin, read_table, resolve_source, split_dataset
from torchclf.data.builtin import BUILTIN_DATASETS, parse_spec
from torchclf.errors import TorchclfError


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_every_builtin_dataset_loads(name):
    features, target, _ = load_builtin(name)
    assert len(features) == len(target) > 0
    assert features.notna().all().all()


def test_tutorial_datasets_match_the_tutorial():
    from sklearn.datasets import make_blobs, make_circles

    X, y = make_circles(1000, noise=0.03, random_state=42)
    features, target, params = load_builtin("circles")
    np.testing.assert_allclose(features.to_numpy(), X)
    np.testing.assert_array_equal(target.to_numpy(), y)
    X, y = make_blobs(n_samples=1000, n_features=2, centers=4, cluster_std=1.5, random_state=42)
    features, target, _ = load_builtin("blobs")
    np.testing.assert_allclose(features.to_numpy(), X)
    assert params["noise"] == 0.03


@pytest.mark.parametrize("spec, make, kwargs", [
    (f"circles:n_samples={n},noise={noise},factor={factor},seed={seed}", "make_circles",
     {"n_samples": n, "noise": noise, "factor": factor, "random_state": seed})
    for n, noise, factor, seed in [(1000, 0.03, 0.8, 42), (7, 0.0, 0.0, 0), (1, 0.5, 0.99, 5), (2, 0.1, 0.5, 1),
                                   (2001, 1.5, 0.3, 123)]
] + [
    (f"moons:n_samples={n},noise={noise},seed={seed}", "make_moons", {"n_samples": n, "noise": noise, "random_state": seed})
    for n, noise, seed in [(1000, 0.2, 42), (3, 0.0, 0), (1, 0.07, 9), (999, 2.0, 2**31 - 1)]
] + [
    (f"blobs:n_samples={n},centers={c},cluster_std={std},n_features={f},seed={seed}", "make_blobs",
     {"n_samples": n, "centers": c, "cluster_std": std, "n_features": f, "random_state": seed})
    for n, c, std, f, seed in [(1000, 4, 1.5, 2, 42), (10, 3, 0.0, 1, 0), (3, 5, 2.5, 7, 8), (1001, 1, 1.0, 3, 77)]
])
def test_generators_give_scikit_learns_rows_for_the_same_seed(spec, make, kwargs):
    """circles, moons and blobs are drawn without scikit-learn, and seeded runs keep the rows they had with it."""
    import sklearn.datasets

    X, y = getattr(sklearn.datasets, make)(**kwargs)
    features, target, _ = load_builtin(spec)
    np.testing.assert_array_equal(features.to_numpy(), X)
    np.testing.assert_array_equal(target.to_numpy(), y)
    assert target.dtype == np.int64 and list(features.columns) == [f"x{i}" for i in range(X.shape[1])]


@pytest.mark.parametrize("spec, message", [
    ("circles:factor=1", "dataset 'circles': factor is the inner circle's radius, a fraction of the outer one's: "
                         "it must be below 1, got 1.0"),
    ("blobs:centers=0", "dataset 'blobs': centers must be at least 1, got 0"),
    ("blobs:n_features=0", "dataset 'blobs': n_features must be at least 1, got 0"),
    ("circles:seed=4294967296", "dataset 'circles': seed must be at most 4294967295 (2**32 - 1), got 4294967296"),
    ("moons:n_samples=0", "dataset 'moons': n_samples must be at least 1, got 0"),
    ("spirals:classes=0", "dataset 'spirals': classes must be at least 1, got 0"),
    ("spirals:points_per_class=0", "dataset 'spirals': points_per_class must be at least 1, got 0"),
    ("multilabel:n_classes=0", "dataset 'multilabel': n_classes must be at least 1, got 0"),
    ("checkerboard:cells=0", "dataset 'checkerboard': cells must be at least 1, got 0"),
    ("moons:noise=nan", "dataset 'moons': noise='nan' is not a valid float"),
    ("blobs:cluster_std=inf", "dataset 'blobs': cluster_std='inf' is not a valid float"),
    ("moons:seed=1.5", "dataset 'moons': seed='1.5' is not a valid whole number"),
    ("xor:n_samples=1e400", "dataset 'xor': n_samples='1e400' is not a valid whole number"),
    ("moons:noise=1e308,seed=3", "dataset 'moons': noise=1e308,seed=3 gives values too large to be numbers "
                                 "(infinite); use smaller values"),
])
def test_generator_values_out_of_range_are_one_line(spec, message):
    with pytest.raises(TorchclfError) as caught:
        load_builtin(spec)
    assert str(caught.value) == message


def test_spec_overrides_generator_parameters():
    features, target, params = load_builtin("moons:noise=0.07,n_samples=300,seed=3")
    assert len(features) == 300 and params["noise"] == 0.07 and params["seed"] == 3
    spirals, labels, _ = load_builtin("spirals:points_per_class=100")
    assert len(spirals) == 300 and sorted(labels.unique()) == [0, 1, 2]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("moons:noise", "expected key=value"),
        ("moons:colour=3", "has no parameter 'colour'"),
        ("moons:noise=abc", "not a valid float"),
        ("moonz", "did you mean 'moons'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(TorchclfError, match=message):
        resolve_source(spec)


def test_parse_spec():
    assert parse_spec("blobs:centers=3, cluster_std=1") == ("blobs", {"centers": "3", "cluster_std": "1"})


def test_csv_and_parquet_read_the_same(tmp_path, mixed_frame):
    mixed_frame.to_csv(tmp_path / "t.csv", index=False)
    mixed_frame.to_parquet(tmp_path / "t.parquet")
    a = read_table(tmp_path / "t.csv")
    b = read_table(tmp_path / "t.parquet")
    assert list(a.columns) == list(b.columns) == list(mixed_frame.columns)
    assert len(a) == len(b) == len(mixed_frame)


def test_missing_target_lists_columns_and_suggests(mixed_frame):
    with pytest.raises(TorchclfError, match=r"\['lable'\] not found.*did you mean 'label'.*columns are: x1, x2"):
        from_frame(mixed_frame, "lable")


def test_rows_with_missing_target_are_dropped_with_a_warning(mixed_frame):
    frame = mixed_frame.copy()
    frame.loc[:4, "label"] = None
    with pytest.warns(UserWarning, match="dropped 5 row"):
        ds = from_frame(frame, "label")
    assert ds.n_rows == len(frame) - 5


def test_label_separator_makes_an_indicator_frame():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "tags": ["sports|music", "", "music"]})
    ds = from_frame(frame, "tags", label_sep="|")
    assert ds.multilabel
    assert list(ds.target.columns) == ["music", "sports"]
    assert ds.target.to_numpy().tolist() == [[1, 1], [0, 0], [1, 0]]


def test_several_target_columns_must_be_zero_one():
    frame = pd.DataFrame({"x": [1.0, 2.0], "a": [0, 1], "b": [1, 2]})
    with pytest.raises(TorchclfError, match="must hold 0/1"):
        from_frame(frame, ["a", "b"])
    assert from_frame(frame.assign(b=[1, 0]), ["a", "b"]).multilabel


def test_split_is_seeded_stratified_and_disjoint():
    ds = resolve_source("blobs")
    a = split_dataset(ds, seed=1)
    b = split_dataset(ds, seed=1)
    c = split_dataset(ds, seed=2)
    assert a.train.features.equals(b.train.features)
    assert not a.train.features.equals(c.train.features)
    assert (a.train.n_rows, a.validation.n_rows, a.test.n_rows) == (700, 100, 200)
    # Stratified: each class keeps its share (250 of 1000) in the test part.
    assert a.test.target.value_counts().tolist() == [50, 50, 50, 50]
    rows = pd.concat([a.train.features, a.validation.features, a.test.features])
    assert not rows.duplicated().any()


def test_split_keeps_every_class_share_to_within_a_row():
    # 7 classes of unequal sizes (5 to 305 rows): each part holds each class's share, rounded.
    sizes = [305, 170, 90, 41, 17, 9, 5]
    y = np.repeat([f"c{k}" for k in range(len(sizes))], sizes)
    ds = from_frame(pd.DataFrame({"x": np.arange(len(y)), "y": y}), "y")
    parts = split_dataset(ds, test_size=0.25, validation_size=0.15, seed=7)
    n = len(y)
    n_test = int(np.ceil(0.25 * n))
    n_val = int(np.ceil(0.15 / 0.75 * (n - n_test)))
    assert (parts.test.n_rows, parts.validation.n_rows) == (n_test, n_val)
    assert parts.train.n_rows == n - n_test - n_val
    test_counts = parts.test.target.value_counts().reindex([f"c{k}" for k in range(7)]).to_numpy()
    assert np.abs(test_counts - np.array(sizes) * n_test / n).max() < 1
    assert test_counts.sum() == n_test
    assert sorted(np.concatenate([p.features["x"] for p in (parts.train, parts.validation, parts.test)])) == \
        list(range(n))


def test_split_treats_labels_that_read_the_same_as_one_class():
    # 1 and "1" are one class to the label coder, so they are one stratum: 40 rows of it, 40 of "0".
    y = pd.Series([1] * 20 + ["1"] * 20 + ["0"] * 40, dtype=object)
    ds = from_frame(pd.DataFrame({"x": np.arange(80), "y": y}), "y")
    parts = split_dataset(ds, test_size=0.25, validation_size=0.0, seed=3)
    assert parts.test.target.astype(str).value_counts().to_dict() == {"1": 10, "0": 10}


def test_split_without_enough_rows_per_class_is_plain_and_says_so():
    y = ["a"] * 30 + ["b"] * 2
    ds = from_frame(pd.DataFrame({"x": np.arange(32), "y": y}), "y")
    with pytest.warns(UserWarning, match="only 2 row"):
        parts = split_dataset(ds, test_size=0.25, validation_size=0.1, seed=0)
    assert (parts.train.n_rows, parts.validation.n_rows, parts.test.n_rows) == (20, 4, 8)  # ceil(24 * 0.1 / 0.75)

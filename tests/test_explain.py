"""explain: logits -> probabilities -> labels for a few rows, the rule in words, and which rows are shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import torchclf
from torchclf.data import Dataset
from torchclf.errors import TorchclfError
from torchclf.explain import describe_rule, explain_rows, pick_rows, rows_to_explain
from torchclf.task import Task


def quick_config(**train):
    """Probabilities left uncalibrated: torch's sigmoid and softmax are then the oracles."""
    return torchclf.make_config(model={"hidden": (8,)},
                                train={"epochs": 8, "patience": 0, "seed": 1, "calibration": None, **train})


def blobs_frame(n: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])[y] + rng.normal(size=(n, 2))
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": rng.normal(size=n), "d": rng.normal(size=n),
                         "e": rng.normal(size=n), "kind": np.array(["cat", "dog", "eel"])[y]})


@pytest.fixture(scope="module")
def multiclass():
    frame = blobs_frame()
    return torchclf.train(frame, "kind", config=quick_config(lr=0.02)).predictor, frame


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.normal(size=120), "y": rng.normal(size=120)})
    frame["label"] = np.where(frame["x"] > 0, "up", "down")
    return torchclf.train(frame, "label", config=quick_config(lr=0.02)).predictor, frame


# ----- the chain of steps -----------------------------------------------------------------
def test_multiclass_chain_is_softmax_then_argmax_and_agrees_with_the_predictor(multiclass):
    predictor, frame = multiclass
    rows = frame.drop(columns="kind").iloc[[3, 50, 51, 99, 148]]
    ex = explain_rows(predictor, rows, true=frame["kind"].iloc[[3, 50, 51, 99, 148]])
    np.testing.assert_array_equal(ex.logits, predictor.predict_logits(rows))
    np.testing.assert_allclose(ex.probabilities, torch.softmax(torch.from_numpy(ex.logits), dim=1).numpy(),
                               rtol=0, atol=1e-7)
    np.testing.assert_allclose(ex.probabilities, predictor.predict_proba(rows), rtol=0, atol=1e-7)
    assert ex.predicted == predictor.predict(rows)
    assert ex.predicted == np.array(["cat", "dog", "eel"])[ex.probabilities.argmax(axis=1)].tolist()
    assert ex.true == frame["kind"].iloc[[3, 50, 51, 99, 148]].tolist()
    assert ex.logit_names == ["logit(cat)", "logit(dog)", "logit(eel)"]
    assert ex.class_names == ["cat", "dog", "eel"]
    assert ex.features.index.tolist() == [0, 1, 2, 3, 4]


def test_to_frame_shows_a_few_features_then_every_step(multiclass):
    predictor, frame = multiclass
    rows = frame.drop(columns="kind").head(4)
    ex = explain_rows(predictor, rows, true=frame["kind"].head(4))
    shown = ex.to_frame(max_features=3)
    assert list(shown.columns) == ["a", "b", "c", "logit(cat)", "logit(dog)", "logit(eel)",
                                   "p(cat)", "p(dog)", "p(eel)", "predicted", "true"]
    np.testing.assert_array_equal(shown[["logit(cat)", "logit(dog)", "logit(eel)"]].to_numpy(), ex.logits)
    np.testing.assert_array_equal(shown[["p(cat)", "p(dog)", "p(eel)"]].to_numpy(), ex.probabilities)
    assert shown["predicted"].tolist() == ex.predicted and shown["true"].tolist() == ex.true
    assert "true" not in explain_rows(predictor, rows).to_frame().columns


def test_binary_chain_is_one_logit_through_sigmoid(binary):
    predictor, frame = binary
    rows = frame[["x", "y"]].head(10)
    ex = explain_rows(predictor, rows)
    assert ex.logits.shape == (10, 1) and ex.logit_names == ["logit"]
    p = torch.sigmoid(torch.from_numpy(ex.logits))[:, 0].numpy()
    np.testing.assert_allclose(ex.probabilities, np.column_stack([1 - p, p]), rtol=0, atol=1e-7)
    assert ex.predicted == ["up" if q >= 0.5 else "down" for q in p] == predictor.predict(rows)
    assert ex.true is None
    assert ex.rule == "p(up) = sigmoid(logit), p(down) = 1 - p(up); label = up if p(up) >= 0.5, else down"


def test_the_chain_agrees_with_a_calibrated_predictor_with_a_chosen_threshold():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200)})
    frame["label"] = np.where(frame["x"] + 0.8 * rng.normal(size=200) > 0.6, "rare", "common")
    config = torchclf.make_config(model={"hidden": (8,)}, train={"epochs": 8, "patience": 0, "seed": 1,
                                                                 "calibration": "temperature", "threshold": "f1"})
    predictor = torchclf.train(frame, "label", config=config).predictor
    rows = frame[["x", "y"]]
    ex = explain_rows(predictor, rows)
    np.testing.assert_allclose(ex.probabilities, predictor.predict_proba(rows), rtol=0, atol=1e-7)
    assert ex.predicted == predictor.predict(rows)
    temperature, cut = predictor.calibration.temperatures[0], predictor.threshold
    assert ex.rule == (f"p(rare) = sigmoid(logit / {temperature:.4g}), p(common) = 1 - p(rare); "
                       f"label = rare if p(rare) >= {cut:.4g}, else common")


# ----- the rule in words -------------------------------------------------------------------
def test_rule_text_per_task():
    assert describe_rule(Task("multiclass", 4), ["a", "b", "c", "d"]) == (
        "probabilities = softmax(logits), one per class, summing to 1; label = the class with the largest")
    assert describe_rule(Task("binary", 2, threshold=0.3), ["ham", "spam"]) == (
        "p(spam) = sigmoid(logit), p(ham) = 1 - p(spam); label = spam if p(spam) >= 0.3, else ham")
    assert describe_rule(Task("binary", 2)) == (
        "p(1) = sigmoid(logit), p(0) = 1 - p(1); label = 1 if p(1) >= 0.5, else 0")
    assert describe_rule(Task("multilabel", 3, threshold=0.25), ["x", "y", "z"]) == (
        "probabilities = sigmoid(logit) per label, independently; labels = those with p >= 0.25")


# ----- which rows ---------------------------------------------------------------------------
def labelled(n: int = 40, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    # 30 "a", 8 "b", 2 "c": a small random draw would often miss "c".
    target = pd.Series(["a"] * 30 + ["b"] * 8 + ["c"] * 2, name="y").sample(frac=1, random_state=seed)
    return Dataset(pd.DataFrame({"row": np.arange(n), "v": rng.normal(size=n)}), target.reset_index(drop=True))


def test_rows_are_picked_reproducibly_by_seed_with_every_class():
    ds = labelled()
    features, target = pick_rows(ds, 4, seed=7)
    again, again_target = pick_rows(ds, 4, seed=7)
    pd.testing.assert_frame_equal(features, again)
    pd.testing.assert_series_equal(target, again_target)
    assert set(target) == {"a", "b", "c"}
    assert features["row"].tolist() == sorted(features["row"])  # shown in the source's order
    assert target.tolist() == ds.target.iloc[features["row"]].tolist()  # labels stay with their rows
    others = {tuple(pick_rows(ds, 4, seed=s)[0]["row"]) for s in range(8)}
    assert len(others) > 1  # the seed does choose


def test_more_rows_than_there_are_gives_them_all_and_zero_is_refused():
    ds = labelled()
    features, _ = pick_rows(ds, 100, seed=0)
    assert features["row"].tolist() == list(range(40))
    with pytest.raises(TorchclfError, match=r"^--rows: expected at least 1 row, got 0$"):
        pick_rows(ds, 0)


def test_multilabel_rows_are_a_seeded_sample():
    ds = Dataset(pd.DataFrame({"row": np.arange(20)}), pd.DataFrame({"p": [0, 1] * 10, "q": [1] * 20}))
    features, target = pick_rows(ds, 5, seed=3)
    assert features["row"].tolist() == sorted(np.random.default_rng(3).permutation(20)[:5].tolist())
    assert list(target.columns) == ["p", "q"] and len(target) == 5


def test_a_run_is_explained_on_its_own_test_rows(tmp_path, no_pictures):
    data = "moons:n_samples=150,noise=0.2"
    result = torchclf.train(data, config=quick_config(), out=tmp_path / "run")
    loaded = torchclf.load(tmp_path / "run")
    features, target, where = rows_to_explain(loaded, n=6, seed=4)
    assert where == f"{data} (test split)"
    test = result.splits.test
    assert len(features) == 6
    # Every row shown is one of the run's test rows, with its own label.
    keyed = {tuple(np.round(r, 12)): t for r, t in zip(test.features.to_numpy(), test.target.tolist())}
    assert [keyed[tuple(np.round(r, 12))] for r in features.to_numpy()] == target.tolist()
    again = rows_to_explain(loaded, n=6, seed=4)
    pd.testing.assert_frame_equal(again[0], features)


def test_a_file_without_the_target_shows_its_first_rows_unlabelled(binary, tmp_path):
    predictor, frame = binary
    frame[["y", "x"]].to_csv(tmp_path / "new.csv", index=False)
    features, target, where = rows_to_explain(predictor, str(tmp_path / "new.csv"), n=3)
    assert target is None and where == f"{tmp_path / 'new.csv'} (first rows, no labels)"
    np.testing.assert_allclose(features[["x", "y"]].to_numpy(), frame[["x", "y"]].head(3).to_numpy())


def test_explain_into_a_file_or_pipe_writes_every_cell_whole(tmp_path, no_pictures):
    """Out of a terminal there is no width to keep to: long values, long column names and the rule are written
    whole, not cut short with an ellipsis as at the 80 columns rich assumes for a pipe."""
    from conftest import run_cli

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a_rather_long_column_name_for_the_income": rng.lognormal(12, 1, 80),
                          "when_the_customer_signed_up": pd.date_range("2021-01-01", periods=80, freq="37h")
                          .strftime("%Y-%m-%d %H:%M")})
    frame["label"] = np.where(frame.iloc[:, 0] > frame.iloc[:, 0].median(), "a_long_class_name_one", "the_other")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    torchclf.train(str(tmp_path / "rows.csv"), "label", config=quick_config(), out=tmp_path / "run")
    code, out, err = run_cli("explain", str(tmp_path / "run"), str(tmp_path / "rows.csv"), "--rows", "3")
    assert code == 0, err
    assert "…" not in out
    head, rule = out.splitlines()[:2]  # the header and the rule each on one line, however long the paths
    assert head.startswith(f"{tmp_path / 'run'}: 3 rows of {tmp_path / 'rows.csv'}") and rule.startswith("rule: ")
    explained = rows_to_explain(torchclf.load(tmp_path / "run"), str(tmp_path / "rows.csv"), n=3)[0]
    for column in frame.columns[:2]:
        assert column in out
        for value in explained[column]:
            assert (f"{value:.4f}" if isinstance(value, float) else str(value)) in out
    assert [line for line in out.splitlines() if line.startswith("rule: ")][0].endswith("else a_long_class_name_one")


def test_picked_rows_go_round_the_classes_as_the_row_by_row_rule_did():
    """The first row of each class in order of appearance, then the second of each, ...: worked out for all rows
    at once (row by row in Python it took 0.42 s for a 40,000-row test split), with the same rows as before."""

    def row_by_row(ds, n, seed):
        order = np.random.default_rng(seed).permutation(ds.n_rows)
        labels = ds.target.astype(str).to_numpy()[order]
        groups = [order[labels == c] for c in pd.unique(labels)]
        order = np.array([g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)])
        return np.sort(order[:n])

    rng = np.random.default_rng(1)
    for case in range(200):
        rows, classes = int(rng.integers(1, 300)), int(rng.integers(1, 12))
        target = pd.Series(rng.integers(0, classes, rows) * 3).astype(str if case % 2 else int)
        ds = Dataset(features=pd.DataFrame({"row": np.arange(rows)}), target=target)
        n = int(rng.integers(1, rows + 3))
        features, labels = pick_rows(ds, n, seed=case)
        assert list(features["row"]) == list(row_by_row(ds, n, case))
        assert list(labels) == list(target.iloc[features["row"]])

"""The Python API end to end: each task type, metrics against scikit-learn, save and load."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

import torchclf
from torchclf import api

FAST = {"epochs": 30, "patience": 0}


def cfg(**train):
    return api.make_config(model={"hidden": (32,)}, train={**FAST, **train})


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "blobs"
    result = torchclf.train("blobs", config=cfg(), out=out)
    return result, out


def test_multiclass_run_folder_is_complete(blobs_run):
    result, out = blobs_run
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model.json", "metrics.json", "history.csv", "plots"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test"}
    assert metrics == result.metrics  # every number of the run, as measured
    assert metrics["test"]["n_samples"] == result.splits.test.n_rows
    history = pd.read_csv(out / "history.csv")
    assert len(history) == len(result.history) == 30
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["task"]["kind"] == "multiclass" and manifest["labels"]["classes"] == [0, 1, 2, 3]
    assert manifest["config"]["model"]["hidden"] == [32]
    assert {"torch", "torchclf", "scikit-learn"} <= set(manifest["versions"])
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_metrics_agree_with_sklearn(blobs_run):
    result, out = blobs_run
    model = torchclf.load(out)
    test = result.splits.test
    y_true = test.target.to_numpy()
    proba = model.predict_proba(test.features)
    y_pred = np.asarray(model.predict(test.features))
    m = result.metrics["test"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"), abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y_true, proba), abs=1e-5)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, proba, multi_class="ovr"), abs=1e-6)
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()


def test_loaded_model_predicts_like_the_trained_one(blobs_run):
    result, out = blobs_run
    loaded = torchclf.load(out)
    rows = result.splits.test.features
    np.testing.assert_allclose(loaded.predict_proba(rows), result.predictor.predict_proba(rows), rtol=1e-6)
    frame = loaded.predict_frame(rows)
    assert list(frame.columns) == ["prediction", "proba_0", "proba_1", "proba_2", "proba_3"]
    np.testing.assert_allclose(frame.filter(like="proba_").sum(axis=1), 1.0, rtol=1e-5)


def test_binary_with_mixed_columns_and_string_labels(mixed_frame):
    result = torchclf.train(mixed_frame, "label", config=cfg())
    model = result.predictor
    assert model.task.kind == "binary" and model.task.n_outputs == 1
    assert model.classes == ["no", "yes"]
    proba = model.predict_proba(mixed_frame)
    assert proba.shape == (len(mixed_frame), 2)
    labels = model.predict(mixed_frame)
    assert labels == np.array(["no", "yes"])[model.predict_indices(mixed_frame)].tolist()
    assert set(labels) == {"no", "yes"}
    # An unseen category and a missing value are handled, not errors.
    odd = mixed_frame.head(2).assign(color=["purple", None], x2=[np.nan, np.nan])
    assert len(model.predict(odd)) == 2
    assert result.metrics["test"]["accuracy"] > 0.8


def test_multilabel_from_indicator_columns():
    result = torchclf.train("multilabel", config=cfg(epochs=40))
    model = result.predictor
    assert model.task.kind == "multilabel" and model.task.n_outputs == 5
    m = result.metrics["test"]
    test = result.splits.test
    pred = model.predict_indices(test.features)
    truth = test.target.to_numpy()
    assert m["subset_accuracy"] == m["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred), abs=1e-6)
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(truth, pred), abs=1e-6)
    assert m["f1_micro"] == pytest.approx(skm.f1_score(truth, pred, average="micro"), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(truth, pred, average="macro"), abs=1e-6)
    assert m["f1_micro"] > 0.6


def test_multilabel_from_a_joined_column_round_trips_the_separator():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    tags = [";".join(t for t, on in (("hot", a > 0), ("wet", b > 0)) if on) for a, b in x]
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "tags": tags})
    result = torchclf.train(frame, "tags", label_sep=";", config=cfg(epochs=60))
    out = result.predictor.predict_frame(frame)
    assert list(out.columns) == ["prediction", "proba_hot", "proba_wet"]
    assert set(out["prediction"]) <= {"", "hot", "wet", "hot;wet"}
    assert (out["prediction"] == frame["tags"]).mean() > 0.85


def test_arrays_and_a_separate_test_set():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=300, n_features=6, random_state=0)
    result = torchclf.train(X[:200], y[:200], test=(X[200:], y[200:]), config=cfg())
    assert result.splits.test.n_rows == 100
    assert result.metrics["test"]["n_samples"] == 100


def test_a_dataframes_column_named_by_a_number_is_the_target_and_the_saved_run_finds_it_again(no_pictures, tmp_path):
    """``train(frame, 3)`` used to read 3 as the labels themselves (an AssertionError), and a run saved with it
    could not be loaded; the saved name is text, which finds column 3 of a frame or "3" of a file again."""
    from conftest import run_cli

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    frame = pd.DataFrame(np.c_[X, (X[:, 0] > 0).astype(int)])  # columns 0, 1, 2 and 3
    config = api.make_config(model={"hidden": (8,)}, train={"epochs": 3})
    result = api.train(frame, 3, config=config, out=tmp_path / "run")
    assert result.predictor.target_columns == ["3"]
    model = api.load(tmp_path / "run")
    assert model.target_columns == ["3"]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    code, stdout, stderr = run_cli("evaluate", str(tmp_path / "run"), str(tmp_path / "rows.csv"))
    assert code == 0, stderr
    again = api.train(frame, "3", config=config)  # the text finds the number as well
    assert again.predictor.target_columns == ["3"]
    np.testing.assert_array_equal(again.predictor.predict_proba(frame), result.predictor.predict_proba(frame))


@pytest.mark.parametrize("frame, target, message", [
    (pd.DataFrame([[1.0, 2.0, 0]], columns=["a", "a", "t"]), "t",
     "DataFrame: duplicate column names ['a']; rename them so each is unique"),
    (pd.DataFrame({"a": [], "t": []}), "t", "DataFrame: has no rows; nothing to learn from"),
    # A tuple target read as two columns, ["t", "y"], and only "y" was reported missing.
    (pd.DataFrame([[1.0, 2.0, 0]], columns=pd.MultiIndex.from_tuples([("f", "a"), ("f", "b"), ("t", "y")])),
     ("t", "y"), "DataFrame: the columns are a MultiIndex of 2 levels; give one name per column, e.g. "
                 "frame.columns = ['_'.join(map(str, c)) for c in frame.columns]"),
])
def test_a_dataframe_that_cannot_be_trained_on_is_one_message(frame, target, message):
    with pytest.raises(torchclf.TorchclfError) as caught:
        api.train(frame, target)
    assert str(caught.value) == message


def test_same_seed_same_model():
    import torch

    a = torchclf.train("moons", config=cfg(seed=3, epochs=5)).predictor.model.state_dict()
    b = torchclf.train("moons", config=cfg(seed=3, epochs=5)).predictor.model.state_dict()
    other = torchclf.train("moons", config=cfg(seed=4, epochs=5)).predictor.model.state_dict()
    # periodic embedding (frequencies, weight, bias), then two Linear layers (weight, bias)
    assert list(a) == list(b) == list(other) and len(a) == 7
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], other[k]) for k in a)  # the seed decides the weights


def test_presets_build_the_tutorial_models():
    config = api.make_config("circle-v2", train={"epochs": 5})
    assert config.model.hidden == (10, 10) and config.model.activation == "relu"
    assert config.train.optimizer == "sgd" and config.train.lr == 0.1 and config.train.batch_size is None
    model = torchclf.train("circles", config=config).predictor.model
    linears = [m for m in model.modules() if isinstance(m, __import__("torch").nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 10), (10, 10), (10, 1)]


def test_early_stopping_restores_the_best_weights():
    result = torchclf.train("moons", config=api.make_config(train={"epochs": 200, "patience": 5, "lr": 0.05}))
    assert len(result.history) < 200
    best = min(r["val_loss"] for r in result.history)
    # The network's own probabilities: the calibrated ones are fitted to these very rows.
    raw = result.metrics["validation"]["calibration"]["uncalibrated"]["log_loss"]
    assert raw == pytest.approx(best, rel=1e-3)


@pytest.mark.parametrize("name", ["circle-v0", "circle-v1", "circle-v2", "blob"])
def test_tutorial_presets_have_no_dropout_whatever_the_defaults(name):
    config = api.make_config(name)
    assert config.model.dropout == 0.0 and config.model.norm == "none"


def test_final_train_scores_are_of_a_seeded_sample_above_the_limit(monkeypatch, no_pictures, tmp_path):
    monkeypatch.setattr(api, "MAX_SCORED_TRAIN_ROWS", 120)
    spec = api.RunSpec("moons:n_samples=400", None, None, None, cfg(epochs=3))
    a = api.run(spec, out=tmp_path / "a")
    b = api.run(spec, out=tmp_path / "b")
    train = a.metrics["train"]
    assert a.splits.train.n_rows == 280
    assert train["n_samples"] == 120 and train["sampled"] == {"rows": 120, "of": 280, "seed": 2}
    assert b.metrics["train"] == train  # the same rows: the sample is seeded
    # Validation and test rows are scored in full, without a "sampled" entry.
    assert a.metrics["validation"]["n_samples"] == 40 and a.metrics["test"]["n_samples"] == 80
    assert "sampled" not in a.metrics["validation"] and "sampled" not in a.metrics["test"]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["train"]["sampled"] == {"rows": 120, "of": 280, "seed": 2}
    # Its scores are those of exactly these rows.
    rows, _ = api.scored_sample(a.splits.train, 2, limit=120)
    assert api.evaluate(a.predictor, rows)["accuracy"] == train["accuracy"]


def test_the_run_folder_records_the_threads_training_used(no_pictures, tmp_path):
    api.train("moons:n_samples=200", config=cfg(epochs=2, threads=1), out=tmp_path / "run")
    extra = json.loads((tmp_path / "run" / "model.json").read_text())["extra"]
    assert extra["threads"] == {"threads": 1, "reason": "requested 1"}

"""The Predictor: raw rows in, logits, probabilities and original labels out; saved and loaded unchanged.

The oracles are the predictor's own parts used by hand: the fitted
preprocessing, the network, and torch's sigmoid and softmax.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import torchclf
from torchclf.errors import TorchclfError
from torchclf.predictor import Predictor


def quick_config(**train):
    """A few epochs of a small network; probabilities left uncalibrated, so sigmoid and softmax are the oracles."""
    return torchclf.make_config(model={"hidden": (8,)},
                                train={"epochs": 8, "patience": 0, "seed": 5, "calibration": None, **train})


@pytest.fixture(scope="module")
def mixed_rows() -> pd.DataFrame:
    """Numbers with gaps, a category with an unseen-in-training slot, string labels."""
    rng = np.random.default_rng(3)
    n = 160
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                          "color": rng.choice(["red", "green", "blue"], size=n).astype(object)})
    frame.loc[rng.random(n) < 0.1, "x2"] = np.nan
    frame["label"] = np.where(frame["x1"] + (frame["color"] == "red") > 0.3, "yes", "no")
    return frame


@pytest.fixture(scope="module")
def binary(mixed_rows) -> Predictor:
    return torchclf.train(mixed_rows, "label", config=quick_config(lr=0.01)).predictor


@pytest.fixture(scope="module")
def calibrated(mixed_rows) -> Predictor:
    """Trained with the default post-training steps (which may fit a calibration on the validation rows)."""
    config = torchclf.make_config(model={"hidden": (8,)}, train={"epochs": 8, "patience": 0, "seed": 5})
    return torchclf.train(mixed_rows, "label", config=config).predictor


@pytest.fixture(scope="module")
def multiclass() -> tuple[Predictor, pd.DataFrame]:
    rng = np.random.default_rng(4)
    centers = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    y = np.arange(150) % 3
    X = centers[y] + rng.normal(size=(150, 2))
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "kind": np.array(["cat", "dog", "eel"])[y]})
    return torchclf.train(frame, "kind", config=quick_config(lr=0.01)).predictor, frame.drop(columns="kind")


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="label")


def by_hand_logits(predictor: Predictor, rows: pd.DataFrame) -> torch.Tensor:
    """Preprocess and run the network directly, in eval mode."""
    X = torch.from_numpy(predictor.preprocessor.transform(rows))
    predictor.model.eval()
    with torch.no_grad():
        return predictor.model(X)


# ----- binary ---------------------------------------------------------------------------
def test_binary_logits_probabilities_and_labels(binary, mixed_rows):
    rows = features(mixed_rows)
    logits = binary.predict_logits(rows)
    assert logits.shape == (160, 1) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, by_hand_logits(binary, rows).numpy())
    proba = binary.predict_proba(rows)
    p = torch.sigmoid(torch.from_numpy(logits))[:, 0].numpy()
    np.testing.assert_allclose(proba, np.column_stack([1 - p, p]), rtol=0, atol=1e-7)
    assert binary.classes == ["no", "yes"]
    assert binary.predict(rows) == ["yes" if q >= 0.5 else "no" for q in proba[:, 1]]
    np.testing.assert_array_equal(binary.predict_indices(rows), (proba[:, 1] >= 0.5).astype(int))
    assert len(set(binary.predict(rows))) == 2  # both labels occur, so the decoding is exercised


def test_predict_frame_is_predict_and_predict_proba_side_by_side(binary, mixed_rows):
    rows = features(mixed_rows)
    frame = binary.predict_frame(rows)
    assert list(frame.columns) == ["prediction", "proba_no", "proba_yes"]
    assert frame["prediction"].tolist() == binary.predict(rows)
    np.testing.assert_array_equal(frame[["proba_no", "proba_yes"]].to_numpy(), binary.predict_proba(rows))


def test_column_order_and_extra_columns_do_not_matter(binary, mixed_rows):
    rows = features(mixed_rows)
    shuffled = mixed_rows[["label", "color", "x2", "x1"]].assign(note="ignored")
    np.testing.assert_array_equal(binary.predict_proba(shuffled), binary.predict_proba(rows))
    assert binary.predict(shuffled) == binary.predict(rows)


def test_unseen_categories_and_missing_values_are_predicted(binary, mixed_rows):
    odd = features(mixed_rows).head(3).assign(color=["purple", None, "red"], x2=[np.nan, 1.0, np.nan])
    proba = binary.predict_proba(odd)
    assert proba.shape == (3, 2) and np.isfinite(proba).all()
    # An unseen category is encoded as the <other> slot, not as any known colour.
    encoded = binary.preprocessor.transform(odd)
    known = binary.preprocessor.transform(odd.assign(color=["red", "red", "red"]))
    assert not np.array_equal(encoded[0], known[0])


def test_a_missing_column_is_named_with_the_fix(binary, mixed_rows):
    with pytest.raises(TorchclfError) as caught:
        binary.predict(features(mixed_rows).drop(columns=["x2"]), where="new.csv")
    assert str(caught.value) == ("new.csv: missing feature column(s) 'x2' that the model was trained on; "
                                 "add them (extra columns are ignored)")


@pytest.mark.parametrize("name", ["binary", "calibrated"])
def test_save_and_load_give_identical_outputs(name, request, mixed_rows, tmp_path):
    binary = request.getfixturevalue(name)
    rows = features(mixed_rows)
    binary.save_model(tmp_path)
    loaded = Predictor.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict_logits(rows), binary.predict_logits(rows))
    np.testing.assert_array_equal(loaded.predict_proba(rows), binary.predict_proba(rows))
    assert loaded.predict(rows) == binary.predict(rows)
    np.testing.assert_array_equal(loaded.predict_indices(rows), binary.predict_indices(rows))
    assert loaded.classes == binary.classes
    assert loaded.task == binary.task
    assert loaded.config == binary.config
    assert loaded.preprocessor.to_dict() == binary.preprocessor.to_dict()
    before, after = binary.model.state_dict(), loaded.model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


# ----- multiclass -------------------------------------------------------------------------
def test_multiclass_softmax_and_argmax_decoding(multiclass):
    predictor, rows = multiclass
    logits = predictor.predict_logits(rows)
    assert logits.shape == (150, 3)
    proba = predictor.predict_proba(rows)
    np.testing.assert_allclose(proba, torch.softmax(torch.from_numpy(logits), dim=1).numpy(), rtol=0, atol=1e-7)
    names = np.array(["cat", "dog", "eel"])
    assert predictor.classes == names.tolist()
    assert predictor.predict(rows) == names[proba.argmax(axis=1)].tolist()
    assert set(predictor.predict(rows)) == set(names)


def test_arrays_are_read_in_the_training_column_order(multiclass):
    predictor, rows = multiclass
    np.testing.assert_array_equal(predictor.predict_proba(rows.to_numpy()), predictor.predict_proba(rows))
    one = predictor.predict_proba(rows.to_numpy()[7])  # a single row as a 1-D array
    np.testing.assert_array_equal(one, predictor.predict_proba(rows.iloc[[7]]))
    assert one.shape == (1, 3)


# ----- multilabel -------------------------------------------------------------------------
def test_multilabel_labels_are_joined_with_the_training_separator():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(160, 2))
    tags = [";".join(t for t, on in (("hot", a > 0), ("wet", b > 0)) if on) for a, b in x]
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "tags": tags})
    predictor = torchclf.train(frame, "tags", label_sep=";", config=quick_config(lr=0.02)).predictor
    rows = frame[["a", "b"]]
    logits = predictor.predict_logits(rows)
    proba = predictor.predict_proba(rows)
    assert logits.shape == proba.shape == (160, 2)
    np.testing.assert_allclose(proba, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=0, atol=1e-7)
    on = proba >= 0.5
    np.testing.assert_array_equal(predictor.predict_indices(rows), on.astype(int))
    assert predictor.predict(rows) == [";".join(n for n, hit in zip(["hot", "wet"], row) if hit) for row in on]
    assert list(predictor.predict_frame(rows).columns) == ["prediction", "proba_hot", "proba_wet"]

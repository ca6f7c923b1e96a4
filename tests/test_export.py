"""ONNX export: the graph in onnxruntime against Predictor on real run folders.

Binary, multiclass (integer classes) and multilabel runs on a mixed
numeric/categorical table with missing values; every row again with gaps and
unseen categories; thresholds and temperatures in the graph; every layer and
activation, float32 and float64; what is refused; ``torchclf export``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torchclf
from torchclf import export, serve
from torchclf.api import make_config
from torchclf.calibration import Calibration
from torchclf.config import with_values
from torchclf.errors import TorchclfError
from torchclf.estimator import NeuralNetClassifier
from torchclf.model import FeatureInputs

FEATURES = ["x1", "total amount", "color", "plan", "count"]


def table(n: int = 160, seed: int = 4) -> pd.DataFrame:
    """Numbers (one with a space in its name) and categories, with gaps; three kinds of target."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    amount = rng.lognormal(3, 1, size=n)
    color = rng.choice(["red", "green", "blue", "grey"], size=n).astype(object)
    plan = rng.choice(["basic", "pro"], size=n).astype(object)
    count = rng.poisson(2, size=n).astype(float)
    score = x1 + (color == "red") - 0.02 * amount + 0.3 * count
    frame = pd.DataFrame({"x1": x1, "total amount": amount, "color": color, "plan": plan, "count": count})
    frame.loc[rng.random(n) < 0.1, "total amount"] = np.nan
    frame.loc[rng.random(n) < 0.1, "color"] = None
    frame["yes"] = np.where(score > 0.2, "yes", "no")
    frame["level"] = np.digitize(score, [-0.3, 0.8])
    frame["t1"] = (x1 > 0).astype(int)
    frame["t2"] = (color == "red").astype(int)
    frame["t3"] = (count > 2).astype(int)
    return frame


def train(folder, target, frame=None, epochs: int = 3, train_options=None, **model) -> torchclf.Predictor:
    """A real run folder, trained briefly and loaded back."""
    config = make_config(model={"hidden": (8,), **model}, train={"epochs": epochs, "seed": 3, **(train_options or {})})
    torchclf.train(table() if frame is None else frame, target=target, config=config, out=folder / "run")
    return torchclf.load(folder / "run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, no_pictures) -> dict:
    """Calibrated by temperature (the default); binary and multilabel thresholds chosen for an objective."""
    out = {}
    for kind, target, objective in (("binary", "yes", "f1"), ("multiclass", "level", None),
                                    ("multilabel", ["t1", "t2", "t3"], "balanced_accuracy")):
        frame = table()[FEATURES + ([target] if isinstance(target, str) else target)]
        out[kind] = train(tmp_path_factory.mktemp(kind), target, frame, epochs=20,
                          train_options={"threshold": objective})
    return out


def run_graph(predictor, rows: pd.DataFrame, model=None):
    sess = export.session(model if model is not None else export.to_onnx(predictor))
    return sess.run(["label", "probabilities"], export.onnx_inputs(predictor, rows))


def assert_same(predictor, rows: pd.DataFrame, model=None) -> tuple[list, np.ndarray]:
    labels, proba = run_graph(predictor, rows, model)
    np.testing.assert_allclose(proba, predictor.predict_proba(rows), rtol=0, atol=1e-5)
    assert labels.tolist() == [str(v) for v in predictor.predict(rows)]
    return labels.tolist(), proba


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_graph_matches_predictor_with_gaps_and_unseen_categories(runs, kind):
    predictor = runs[kind]
    assert predictor.calibration.method == "temperature"
    assert (predictor.threshold is None) == (kind == "multiclass")
    rows = table(n=60, seed=11)[FEATURES]
    gaps = export.with_gaps(predictor, rows)
    assert gaps["x1"].isna().sum() == 20 and (gaps["color"] == "never seen in training").sum() == 20
    labels, proba = assert_same(predictor, rows)
    assert_same(predictor, gaps)
    assert proba.shape == (60, {"binary": 2, "multiclass": 3, "multilabel": 3}[kind])
    assert set(labels) <= {"binary": {"no", "yes"}, "multiclass": {"0", "1", "2"}}.get(kind, set(labels))


def test_graph_reports_the_same_as_the_check_helper(runs):
    predictor = runs["multiclass"]
    result = export.check_rows(predictor, export.to_onnx(predictor), table(n=40, seed=2)[FEATURES])
    assert (result.rows, result.label_mismatches, result.ok) == (80, 0, True)
    assert result.max_difference <= 1e-5


def test_categorical_inputs_follow_the_predictors_text(runs):
    """A number in a text column is compared as its text; "<missing>" is the missing value."""
    predictor = runs["binary"]
    rows = pd.DataFrame({"x1": [0.5, 0.5, 0.5], "total amount": [10.0, np.inf, np.nan],
                         "color": ["red", 3, None], "plan": ["pro", "basic", "<missing>"], "count": [1.0, 2.0, 3.0]})
    feeds = export.onnx_inputs(predictor, rows)
    assert feeds["color"].tolist() == ["red", "3", "<missing>"]
    assert_same(predictor, rows)


def test_multilabel_text_joins_every_positive_label_with_the_separator(runs):
    predictor = runs["multilabel"]
    rows = table(n=50, seed=5)[FEATURES]
    chosen = predictor.threshold
    predictor.set_threshold([0.3, 0.4, 0.35])
    predictor.label_sep = ";"
    try:
        labels, _ = assert_same(predictor, rows)
    finally:
        predictor.threshold, predictor.label_sep = chosen, None
    expected = [";".join(n for n, p, cut in zip(["t1", "t2", "t3"], row, [0.3, 0.4, 0.35]) if p >= cut)
                for row in predictor.predict_proba(rows)]
    assert labels == expected
    assert any(";" in text for text in labels)  # rows with two or more labels


def test_binary_threshold_is_in_the_graph(runs):
    predictor = runs["binary"]
    rows = table(n=80, seed=6)[FEATURES]
    chosen = predictor.threshold
    cut = float(np.sort(predictor.predict_proba(rows)[:, 1])[40])  # 40 of the 80 rows are at or above it
    default, _ = run_graph(predictor, rows)
    predictor.set_threshold(cut)
    try:
        labels, _ = assert_same(predictor, rows)
    finally:
        predictor.threshold = chosen
    assert labels.count("yes") == 40
    assert labels != default.tolist()
    meta = {p.key: p.value for p in export.to_onnx(predictor).metadata_props}
    assert json.loads(meta["torchclf.threshold"]) == [chosen]


@pytest.mark.parametrize("kind, temperatures", [("binary", [2.5]), ("multiclass", [0.4]),
                                                ("multilabel", [0.5, 3.0, 1.5])])
def test_temperature_divides_the_logits_before_the_sigmoid_or_softmax(runs, kind, temperatures):
    predictor = runs[kind]
    rows = table(n=30, seed=7)[FEATURES]
    logits = torch.from_numpy(predictor.predict_logits(rows)).double()
    fitted = predictor.calibration
    predictor.calibration = Calibration(predictor.task, "temperature", temperatures)
    try:
        model = export.to_onnx(predictor)
        _, proba = assert_same(predictor, rows, model)
        predictor.calibration = None
        assert_same(predictor, rows)
    finally:
        predictor.calibration = fitted
    expected = predictor.task.probabilities(logits / torch.tensor(temperatures, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert np.abs(proba - predictor.probabilities(logits, calibrated=False)).max() > 1e-3
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["torchclf.temperature"]) == (temperatures * predictor.task.n_outputs)[
        :predictor.task.n_outputs]


@pytest.mark.parametrize("activation, norm, dropout", [
    ("relu", "none", 0.0), ("leaky_relu", "batch", 0.1), ("gelu", "layer", 0.0), ("silu", "batch", 0.0),
    ("elu", "layer", 0.2), ("tanh", "none", 0.0), ("sigmoid", "batch", 0.0), ("linear", "layer", 0.0),
])
def test_every_layer_kind_in_float32_and_float64(tmp_path, no_pictures, activation, norm, dropout):
    calibration = None if norm == "batch" else "temperature"
    predictor = train(tmp_path, "level", table()[FEATURES + ["level"]], epochs=4,
                      train_options={"calibration": calibration},
                      hidden=(8, 6), activation=activation, norm=norm, dropout=dropout)
    assert (predictor.calibration is None) == (calibration is None)
    rows = export.with_gaps(predictor, table(n=40, seed=8)[FEATURES])
    assert_same(predictor, rows)
    predictor.model.double()
    model = export.to_onnx(predictor)
    assert_same(predictor, rows, model)
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 3


def test_graph_inputs_outputs_and_metadata(runs):
    predictor = runs["multiclass"]
    model = export.to_onnx(predictor)
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    assert inputs == [("x1", onnx.TensorProto.DOUBLE), ("total amount", onnx.TensorProto.DOUBLE),
                      ("color", onnx.TensorProto.STRING), ("plan", onnx.TensorProto.STRING),
                      ("count", onnx.TensorProto.DOUBLE)]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["torchclf.classes"]) == ["0", "1", "2"]
    assert json.loads(meta["torchclf.features"])[2] == {"name": "color", "type": "string"}
    assert {op.domain for op in model.opset_import} == {"", "ai.onnx.ml"}


def test_no_rows_gives_empty_outputs(runs):
    labels, proba = run_graph(runs["binary"], table()[FEATURES].iloc[:0])
    assert labels.shape == (0,) and proba.shape == (0, 2)


def test_what_cannot_be_exported_is_refused_in_one_line(runs, tmp_path, no_pictures):
    predictor = runs["binary"]
    original = predictor.model.layers[1]
    predictor.model.layers[1] = torch.nn.PReLU()
    try:
        with pytest.raises(TorchclfError, match=r"layer 1 of the network \(PReLU\) has no ONNX form") as err:
            export.to_onnx(predictor)
        assert "\n" not in str(err.value)
    finally:
        predictor.model.layers[1] = original
    fitted = predictor.calibration
    curve = (np.array([-1.0, 1.0]), np.array([0.1, 0.9]))
    predictor.calibration = Calibration(predictor.task, "isotonic", knots=[curve])
    try:
        with pytest.raises(TorchclfError, match="'isotonic' calibration cannot be exported to ONNX"):
            export.to_onnx(predictor)
    finally:
        predictor.calibration = fitted
    clash = table()[["x1", "plan", "yes"]].rename(columns={"plan": "label"})
    with pytest.raises(TorchclfError, match="feature column 'label' has the name of an output"):
        export.to_onnx(train(tmp_path, "yes", clash, epochs=1))
    half = train(tmp_path / "half", "yes", table()[FEATURES + ["yes"]], epochs=1)
    half.model.to(torch.bfloat16)
    with pytest.raises(TorchclfError, match="only float32 and float64 networks can be exported"):
        export.to_onnx(half)


def test_cli_export_writes_and_checks_the_file(tmp_path, no_pictures):
    csv = tmp_path / "table.csv"
    table()[FEATURES + ["yes"]].to_csv(csv, index=False)
    config = make_config(model={"hidden": (8,)}, train={"epochs": 3})
    torchclf.train(str(csv), target="yes", config=config, out=tmp_path / "run")
    out = tmp_path / "out" / "model.onnx"
    code, _, err = run_cli("export", str(tmp_path / "run"), "--format", "onnx", "--out", str(out))
    assert code == 0, err
    assert f"wrote {out}" in err
    assert "checked with onnxruntime on 32 test rows, as given and with gaps and unseen categories" in err
    assert_same(torchclf.load(tmp_path / "run"), table(n=20, seed=9)[FEATURES], str(out))

    code, _, err = run_cli("export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(out))
    assert (code, err.strip()) == (2, "error: --format torchscript: not a format torchclf exports; use --format onnx")
    table()[["x1"]].to_csv(tmp_path / "partial.csv", index=False)
    code, _, err = run_cli("export", str(tmp_path / "run"), "--out", str(out), "--data", str(tmp_path / "partial.csv"))
    assert code == 2 and "missing feature column(s) 'total amount'" in err
    code, _, err = run_cli("export", str(tmp_path / "run"), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err


# ----- the default recipe's inputs: robust scaling, embedded categories, periodic numeric embeddings -----
# "color" has 5 categories with "<missing>" (over onehot_max: embedded), "plan" 2 (one-hot).
RECIPE = {"hidden": (8,), "epochs": 4, "seed": 5, "numeric_embedding": "periodic", "embedding_dim": 3,
          "onehot_max": 3}
NUMERIC = ["x1", "total amount", "count"]


def far_out(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with numbers far outside the training range in every numeric column, and one +inf."""
    out = rows.copy()
    for k, (name, value) in enumerate([("x1", 1e9), ("x1", -1e12), ("total amount", 1e15), ("count", -1e7),
                                       ("count", np.inf), ("total amount", 5e3)]):
        out.loc[out.index[k], name] = value
    return out


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory, no_pictures) -> dict:
    """Multiclass runs with the recipe's inputs; standard scaling lets far-out numbers reach huge angles."""
    out = {}
    for scaling in ("robust", "standard"):
        config = with_values(make_config(), {**RECIPE, "scaling": scaling})
        folder = tmp_path_factory.mktemp(scaling) / "run"
        torchclf.train(table()[FEATURES + ["level"]], target="level", config=config, out=folder)
        out[scaling] = torchclf.load(folder)
    return out


@pytest.mark.parametrize("scaling", ["robust", "standard"])
def test_recipe_inputs_match_the_predictor_far_out_missing_and_unseen(recipe_runs, scaling):
    predictor = recipe_runs[scaling]
    clip = 4.0 if scaling == "robust" else 0.0
    assert [(c.name, c.embed, c.clip) for c in predictor.preprocessor.columns] == [
        ("x1", False, clip), ("total amount", False, clip), ("color", True, 0.0), ("plan", False, 0.0),
        ("count", False, clip)]
    inputs = predictor.model.inputs
    assert isinstance(inputs, FeatureInputs) and inputs.periodic is not None
    assert [t.num_embeddings for t in inputs.embeddings] == [6]  # 4 colours, <missing> and <other>
    rows = far_out(table(n=60, seed=11)[FEATURES])
    numeric = list(predictor.preprocessor.layout().numeric)
    largest = np.abs(predictor.encode(rows).numpy()[:, numeric]).max()
    assert largest == pytest.approx(4.0 if scaling == "robust" else 1e6)  # the smooth clip, or the hard one

    model = export.to_onnx(predictor)
    ops = {n.op_type for n in model.graph.node}
    assert {"Cos", "Sin", "MatMul"} <= ops and ("Sqrt" in ops) == (scaling == "robust")
    assert_same(predictor, rows, model)
    assert_same(predictor, export.with_gaps(predictor, rows), model)
    result = export.check_rows(predictor, model, rows)
    assert (result.rows, result.label_mismatches, result.ok) == (120, 0, True)
    labels, proba = run_graph(predictor, rows.iloc[:0], model)
    assert labels.shape == (0,) and proba.shape == (0, 3)


def test_periodic_embeddings_of_many_columns_are_one_batched_matmul(recipe_runs, monkeypatch):
    """Up to export.BLOCK_DIAGONAL_COLUMNS numeric columns share one block-diagonal weight; more take a batched
    MatMul between two Transposes. The same answers either way."""
    predictor = recipe_runs["standard"]
    rows = export.with_gaps(predictor, far_out(table(n=60, seed=11)[FEATURES]))
    block = export.to_onnx(predictor)
    assert "Transpose" not in {n.op_type for n in block.graph.node}
    monkeypatch.setattr(export, "BLOCK_DIAGONAL_COLUMNS", 2)  # the run has 3 numeric columns
    batched = export.to_onnx(predictor)
    assert "Transpose" in {n.op_type for n in batched.graph.node}
    np.testing.assert_allclose(assert_same(predictor, rows, batched)[1], assert_same(predictor, rows, block)[1],
                               rtol=0, atol=1e-6)


def test_each_colour_code_gets_its_own_embedding_in_the_graph(recipe_runs):
    """Rows that differ only in the embedded column: every code, missing and unseen included."""
    predictor = recipe_runs["robust"]
    colours = ["red", "green", "blue", "grey", None, "<missing>", "violet", 7]
    rows = pd.DataFrame({"x1": 0.3, "total amount": 20.0, "color": colours, "plan": "pro", "count": 2.0})
    codes = predictor.encode(rows).numpy()[:, predictor.preprocessor.layout().codes[0][0]]
    categories = predictor.preprocessor.columns[2].categories
    known = ["red", "green", "blue", "grey", "<missing>", "<missing>"]
    assert codes.tolist() == [categories.index(c) for c in known] + [len(categories)] * 2  # <other>: 5
    _, proba = assert_same(predictor, rows)
    assert len({tuple(np.round(p, 6)) for p in proba}) == 6  # six codes, six answers


def test_recipe_inputs_in_a_float64_estimator_model():
    frame = table()
    estimator = NeuralNetClassifier(dtype="float64", hidden_layer_sizes=(8,), max_iter=4, random_state=0,
                                    numeric_embedding="periodic", embedding_dim=3, scaling="robust", onehot_max=3)
    estimator.fit(frame[FEATURES], frame["yes"])
    predictor = estimator.predictor_
    assert predictor.dtype == torch.float64 and predictor.model.inputs.embeddings[0].num_embeddings == 6
    model = export.to_onnx(predictor)
    kinds = {i.data_type for i in model.graph.initializer if i.name.split("/")[-1].split(".")[0] in
             ("embedding", "frequencies", "weight", "bias")}
    assert kinds == {onnx.TensorProto.DOUBLE}
    assert "Cos" not in {n.op_type for n in model.graph.node}  # cos as a shifted Sin in float64
    rows = far_out(table(n=60, seed=12)[FEATURES])
    assert_same(predictor, rows, model)
    assert_same(predictor, export.with_gaps(predictor, rows), model)


def test_serve_predicts_a_recipe_model_through_onnx(recipe_runs):
    predictor = recipe_runs["robust"]
    served = serve.Served("recipe", predictor, backend="onnx")
    assert (served.backend, served.note) == ("onnx", "")
    rows = export.with_gaps(predictor, far_out(table(n=30, seed=13)[FEATURES]))
    # As serve parses a request: numbers with NaN, texts with None for null.
    columns = {name: rows[name].to_numpy(dtype=float) if kind == "number" else
               np.array([None if pd.isna(v) else v for v in rows[name]], dtype=object)
               for name, kind in served.features}
    labels, proba = served.predict(columns)
    assert labels == list(predictor.predict(rows))
    np.testing.assert_allclose(proba, predictor.predict_proba(rows), rtol=0, atol=1e-5)

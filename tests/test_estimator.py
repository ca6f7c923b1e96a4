"""NeuralNetClassifier: scikit-learn's own estimator checks, meta-estimators, labels, weights, run folders."""

from __future__ import annotations

import functools
import inspect
import io
import json
import pickle
from dataclasses import replace
from unittest import SkipTest

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_blobs, make_classification, make_multilabel_classification
from sklearn.metrics import recall_score
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints
from sklearn.utils.estimator_checks import (
    check_sample_weight_equivalence_on_dense_data,
    estimator_checks_generator,
    parametrize_with_checks,
)

from torchclf import NeuralNetClassifier, Predictor
from torchclf.config import PARAM, PARAMS, RunConfig
from torchclf.errors import TorchclfError
from torchclf.estimator import ESTIMATOR_ONLY, _params_from_config

# The checked configurations, with 5 epochs so that the checks stay fast (every outcome as with 10). CHECKED
# is the defaults: with early_stopping="auto" the checks' tables of 100 rows or more hold out validation rows
# and the smaller ones train on every row. HELD_OUT forces early stopping, so that every check also runs with
# held-out rows, down to tables of 9 rows that hold out one.
CHECKED = NeuralNetClassifier(max_iter=5, random_state=0)
HELD_OUT = NeuralNetClassifier(max_iter=5, random_state=0, early_stopping=True)
# What the recipe's defaults cannot pass, by design; each is run on a configuration that can, below.
# Strict: should one of them pass, the test fails and this entry goes.
RECIPE_BREAKS = {
    "check_sample_weight_equivalence_on_dense_data": "dropout draws its own mask for each copy of a repeated "
    "row, and validation rows are drawn among rows, so a weight of k is not k copies; "
    "test_sample_weights_equal_repeats_without_dropout_or_held_out_rows runs the check on EXACT",
}
EXACT = NeuralNetClassifier(max_iter=10, random_state=0, dropout=0.0, early_stopping=False)


@parametrize_with_checks([CHECKED, HELD_OUT], expected_failed_checks=lambda estimator: RECIPE_BREAKS,
                         xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    try:
        check(estimator)
    except SkipTest as exc:
        # A skip is acceptable only where scikit-learn's own MLPClassifier skips the same check here.
        same_check = functools.partial(check.func, "MLPClassifier", *check.args[1:], **check.keywords)
        with pytest.raises(SkipTest):
            same_check(MLPClassifier(max_iter=20))
        pytest.skip(f"skipped for MLPClassifier too: {exc}")


def check_names(estimator) -> set[str]:
    return {check.func.__name__ for _, check in estimator_checks_generator(estimator, mark=None)}


def test_checks_differ_from_mlpclassifiers_only_as_documented():
    """The tags decide which checks run; docs/estimator.md explains each difference."""
    ours, mlp = check_names(CHECKED), check_names(MLPClassifier())
    # We impute NaN (allow_nan) and refuse sparse input; MLPClassifier has no class_weight.
    assert mlp - ours == {"check_estimators_nan_inf", "check_sample_weight_equivalence_on_sparse_data"}
    assert ours - mlp == {"check_class_weight_classifiers"}


def test_sample_weights_equal_repeats_without_dropout_or_held_out_rows():
    """The check the defaults fail (RECIPE_BREAKS) passes without dropout and held-out rows, and each breaks it."""
    check_sample_weight_equivalence_on_dense_data("NeuralNetClassifier", EXACT)
    for breaks in ({"dropout": 0.2}, {"early_stopping": True}):
        with pytest.raises(AssertionError, match="not equivalent to fitting with removed or repeated"):
            check_sample_weight_equivalence_on_dense_data("NeuralNetClassifier", clone(EXACT).set_params(**breaks))


def small(**params) -> NeuralNetClassifier:
    return NeuralNetClassifier(**{"hidden_layer_sizes": (16,), "max_iter": 30, "lr": 0.01, "random_state": 0, **params})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Numbers, a text column with gaps, NaNs, and string labels."""
    rng = np.random.default_rng(1)
    n = 200
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n).astype(object)
    label = np.where(x1 + 1.5 * (color == "red") - 0.5 * x2 > 0.3, "yes", "no")
    x2[rng.random(n) < 0.1] = np.nan
    color[rng.random(n) < 0.05] = None
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


# ----- labels and problem types -------------------------------------------------------
def test_early_stopping_holds_out_rows_and_stops(capsys):
    X, y = make_blobs(200, centers=2, random_state=0)
    clf = small(early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, max_iter=200, verbose=True)
    clf.fit(X, y)
    assert clf.n_iter_ < 200
    assert all(row["val_loss"] is not None for row in clf.history_)
    assert "early stopping" in capsys.readouterr().err
    # Without early stopping nothing is held out, and a plateau of the training loss ends the run.
    plain = small(max_iter=500, n_iter_no_change=5, tol=1e-2, early_stopping=False).fit(X, y)
    assert plain.history_[-1]["val_loss"] is None
    assert plain.n_iter_ == plateau_epoch([r["train_loss"] for r in plain.history_], tol=1e-2, patience=5)
    assert plain.n_iter_ < 500


def validation_rows(monkeypatch) -> list:
    """Records the number of validation rows (0: none) of every api.prepare call."""
    from torchclf import api

    seen, prepare = [], api.prepare

    def spy(spec, **kwargs):
        prepared = prepare(spec, **kwargs)
        seen.append(0 if prepared.splits.validation is None else prepared.splits.validation.n_rows)
        return prepared

    monkeypatch.setattr(api, "prepare", spy)
    return seen


def test_early_stopping_auto_holds_out_rows_only_when_there_are_enough(monkeypatch, capsys):
    seen = validation_rows(monkeypatch)
    X, y = make_blobs(91, centers=2, random_state=0)
    # 10% of 91 rows rounds up to 10 validation rows (MIN_VALIDATION_ROWS): held out, as torchclf train would.
    held = small(max_iter=3, n_iter_no_change=0).fit(X, y)
    assert all(row["val_loss"] is not None for row in held.history_)
    assert held.predictor_.config.data.validation_size == 0.1
    # 90 rows would hold out 9: trained on all of them, stopping on the training loss, and verbose says so.
    few = small(max_iter=3, n_iter_no_change=0, verbose=True).fit(X[:90], y[:90])
    assert [row["val_loss"] for row in few.history_] == [None, None, None]
    assert few.predictor_.config.data.validation_size == 0.0
    assert "early_stopping='auto': 90 rows are too few to hold out 10 for validation" in capsys.readouterr().err
    # True holds out whatever the size; a larger fraction reaches 10 rows on fewer rows.
    small(max_iter=3, early_stopping=True, n_iter_no_change=0).fit(X[:20], y[:20])
    small(max_iter=3, validation_fraction=0.25, n_iter_no_change=0).fit(X[:40], y[:40])
    assert seen == [10, 0, 2, 10]


def test_tiny_tables_fit_with_the_defaults():
    """Two rows, a class of one row: early stopping neither crashes nor holds out the only row of a class."""
    X, y = make_blobs(20, centers=2, random_state=0)
    y[0] = 2  # one member
    for rows in (slice(0, 2), slice(0, 20)):
        clf = NeuralNetClassifier(max_iter=5, random_state=0).fit(X[rows], y[rows])
        assert clf.history_[-1]["val_loss"] is None
        np.testing.assert_array_equal(clf.classes_, np.unique(y[rows]))
    # Asked for, early stopping holds out 2 of the 20 rows, without strata (the command line's rule).
    with pytest.warns(UserWarning, match="a class has only 1 row"):
        forced = NeuralNetClassifier(max_iter=5, random_state=0, early_stopping=True).fit(X, y)
    assert forced.history_[-1]["val_loss"] is not None


def plateau_epoch(losses: list[float], tol: float, patience: int) -> int | None:
    """MLPClassifier's rule, written out: the epoch at which the loss has not fallen by tol for patience epochs."""
    best, bad = float("inf"), 0
    for epoch, loss in enumerate(losses, start=1):
        bad = 0 if loss < best - tol else bad + 1
        best = min(best, loss)
        if bad >= patience:
            return epoch
    return None


@pytest.mark.parametrize("labels", [["cat", "dog", "emu"], [False, True], [-1, 1], [0.0, 1.0, 2.0]])
def test_labels_round_trip(labels):
    X, y = make_blobs(90, centers=len(labels), random_state=0)
    target = np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[y]
    clf = small().fit(X, target)
    np.testing.assert_array_equal(clf.classes_, np.unique(target))
    pred = clf.predict(X)
    assert pred.dtype == np.asarray(target).dtype
    assert set(pred) <= set(target)
    assert (pred == target).mean() > 0.85
    assert clf.predict_proba(X).shape == (90, len(labels))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_multilabel_round_trip_matches_mlpclassifier_shapes():
    X, Y = make_multilabel_classification(120, n_features=4, n_classes=3, random_state=0)
    clf = small(max_iter=60).fit(X, Y)
    mlp = MLPClassifier(max_iter=50, random_state=0).fit(X, Y)
    proba = clf.predict_proba(X)
    assert proba.shape == mlp.predict_proba(X).shape == (120, 3)
    assert clf.predict(X).shape == mlp.predict(X).shape == Y.shape
    assert clf.predict(X).dtype == Y.dtype
    np.testing.assert_array_equal(clf.classes_, mlp.classes_)
    np.testing.assert_array_equal(clf.predict(X), (proba >= 0.5).astype(Y.dtype))
    assert clf.score(X, Y) > 0.4  # subset accuracy, well above the 1/8 of guessing
    # A DataFrame y names the labels.
    named = small(max_iter=5).fit(X, pd.DataFrame(Y, columns=["a", "b", "c"]))
    assert list(named.classes_) == ["a", "b", "c"]


def test_decision_function_is_the_logit_of_predict_proba():
    X, y = make_classification(100, n_features=4, random_state=0)
    clf = small().fit(X, y)
    z = clf.decision_function(X)
    assert z.shape == (100,)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)))


# ----- inputs ---------------------------------------------------------------------
def test_dataframe_with_categories_and_missing_values(frame):
    X, y = frame.drop(columns="label"), frame["label"]
    clf = small(max_iter=60).fit(X, y)
    assert list(clf.feature_names_in_) == ["x1", "x2", "color"]
    assert clf.n_features_in_ == 3
    assert set(clf.predict(X)) <= {"yes", "no"}
    assert clf.score(X, y) > 0.85
    # The same preprocessing as the command line: the category is one-hot encoded, gaps flagged.
    names = clf.predictor_.preprocessor.output_names
    assert "color=red" in names and "x2__missing" in names
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(X[["x2", "x1", "color"]])


def test_arrays_get_positional_names_and_nan_is_imputed():
    X, y = make_classification(80, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    X[::7, 1] = np.nan
    clf = small().fit(X, y)
    assert not hasattr(clf, "feature_names_in_")
    assert clf.predictor_.preprocessor.feature_names == ["x0", "x1", "x2"]
    assert np.isfinite(clf.predict_proba(X)).all()
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        clf.predict(X)


def test_sparse_input_is_refused_with_scikit_learns_message():
    from scipy import sparse

    X, y = make_classification(30, n_features=4, random_state=0)
    with pytest.raises(TypeError, match="Sparse data was passed for X, but dense data is required"):
        small().fit(sparse.csr_matrix(X), y)


def test_dtype_follows_the_input_unless_given():
    X, y = make_classification(40, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    assert small(max_iter=1).fit(X, y).predictor_.dtype.is_floating_point
    assert str(small(max_iter=1).fit(X, y).predictor_.dtype) == "torch.float64"
    assert str(small(max_iter=1).fit(X.astype(np.float32), y).predictor_.dtype) == "torch.float32"
    assert str(small(max_iter=1, dtype="float32").fit(X, y).predictor_.dtype) == "torch.float32"


def test_invalid_parameters_fail_in_fit_not_in_init():
    clf = NeuralNetClassifier(lr=-1.0, activation="nope")  # no error yet
    with pytest.raises(ValueError, match="'activation' parameter|'lr' parameter"):
        clf.fit([[0.0], [1.0]], [0, 1])


# ----- parameters from the table ----------------------------------------------------
TABLE = [p for p in PARAMS if p.estimator_name is not None]


def test_parameters_and_defaults_come_from_the_table():
    """Fails when the table and the estimator drift: a Param missing, a default changed, an unlisted extra."""
    signature = inspect.signature(NeuralNetClassifier).parameters
    for p in TABLE:
        assert p.estimator_name in signature, f"{p.name} -> {p.estimator_name} is not an __init__ parameter"
        default = signature[p.estimator_name].default
        assert (type(default), default) == (type(p.estimator_value), p.estimator_value), p.name
    table_names = {p.estimator_name for p in TABLE}
    assert set(signature) - table_names == set(ESTIMATOR_ONLY)
    assert not table_names & set(ESTIMATOR_ONLY)
    assert set(NeuralNetClassifier._parameter_constraints) == set(signature)
    # New table parameters are estimator parameters without edits here.
    assert {"precision", "compile", "eval_every"} <= set(signature)
    assert "seed" not in signature and "log_every" not in signature
    # The recipe of torchclf train: early stopping on its validation fraction (see ESTIMATOR_ONLY), dropout.
    assert signature["early_stopping"].default == "auto"
    assert signature["validation_fraction"].default == PARAM["validation_size"].default == 0.1
    assert signature["dropout"].default == PARAM["dropout"].default


def test_the_defaults_train_what_torchclf_train_trains():
    """The run an estimator with defaults describes is the command line's, but for the test rows and calibration."""
    cli = RunConfig()
    ours = NeuralNetClassifier()._config(cli.train.seed, held_out=True)
    assert ours.model == cli.model
    assert ours.train == replace(cli.train, calibration=None)  # predict_proba stays the network's own
    assert ours.data == replace(cli.data, test_size=0.0)  # the caller holds out its own test rows


def probes(p) -> list:
    """Values at and around a parameter's bounds, choices and None."""
    if p.kind == "bool":
        return [True, False, "yes", 1, None]
    if p.kind == "str":
        return [*(p.choices or ()), "nope", 1, None]
    if p.kind == "sizes":
        return [None, "64"]  # entries are checked by the table in fit (see below)
    numbers = [b + d for b in (p.low, p.high) if b is not None for d in (-1, 0, 1)] + [0, 7]
    if p.kind == "float":
        numbers += [b + d for b in (p.low, p.high) if b is not None for d in (-1e-9, 1e-9)] + [0.5, 1e9]
    return numbers + [None, "1"]


@pytest.mark.parametrize("p", TABLE, ids=lambda p: p.name)
def test_constraints_accept_exactly_what_the_table_accepts(p):
    constraints = {p.estimator_name: NeuralNetClassifier._parameter_constraints[p.estimator_name]}
    for value in probes(p):
        try:
            p.check(value, "table")
            table_ok = True
        except TorchclfError:
            table_ok = False
        try:
            validate_parameter_constraints(constraints, {p.estimator_name: value}, caller_name="estimator")
            estimator_ok = True
        except InvalidParameterError:
            estimator_ok = False
        if p.name in ("hidden", "class_weight") and estimator_ok and not table_ok:
            continue  # the estimator's documented extensions (an int, a dict) are checked in _fit
        assert estimator_ok == table_ok, f"{p.name}={value!r}: table {table_ok}, estimator {estimator_ok}"


def test_what_the_table_refuses_fails_in_fit_named_as_the_estimator_spells_it():
    with pytest.raises(TorchclfError, match=r"^NeuralNetClassifier\.hidden_layer_sizes: got \(4, 0\), expected "
                                            r"positive layer sizes such as \(64, 64\)$"):
        small(hidden_layer_sizes=[4, 0]).fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(TorchclfError, match=r"^cannot drop 'x9': no such column in the training rows; similar: "
                                            r"'x0'$"):
        small(drop="x9").fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(TorchclfError, match=r"^NeuralNetClassifier\.threshold: got 'nope', expected f1, "):
        small(threshold="nope").fit([[0.0], [1.0]], [0, 1])


# Valid values of free-text table parameters, which cannot be derived from bounds or choices.
FREE_TEXT = {"threshold": "balanced_accuracy"}


def other_value(p):
    """A valid value of a table parameter other than the estimator's default."""
    if p.choices is not None:
        return next(c for c in p.choices if c != p.estimator_value)
    if p.kind == "str":
        assert p.name in FREE_TEXT, f"add a valid value of {p.name} to FREE_TEXT"
        return FREE_TEXT[p.name]
    if p.kind == "bool":
        return not p.estimator_value
    if p.kind == "sizes":
        return (5, 3)
    if p.kind == "names":
        return ("id",)
    start = p.estimator_value if p.estimator_value is not None else (p.low or 0)
    for candidate in (start + 1, start * 2 + 1, (start + (p.high or start + 2)) / 2):
        candidate = int(candidate) if p.kind == "int" else float(candidate)
        if candidate != p.estimator_value and p.in_bounds(candidate):
            return candidate
    raise AssertionError(f"no other value for {p.name}")


def test_every_table_parameter_reaches_the_run_config_and_back():
    values = {p.estimator_name: other_value(p) for p in TABLE}
    clf = NeuralNetClassifier(**values, early_stopping=True, validation_fraction=0.25)
    config = clf._config(seed=11, held_out=True)
    assert {p.name: config.value(p.name) for p in TABLE} == {p.name: values[p.estimator_name] for p in TABLE}
    assert (config.train.seed, config.data.test_size, config.data.validation_size) == (11, 0.0, 0.25)
    assert _params_from_config(config) == {**values, "early_stopping": True, "validation_fraction": 0.25,
                                           "random_state": 11}


@pytest.mark.filterwarnings("ignore:precision=bfloat16:UserWarning")  # CPUs without native bfloat16 emulate it
def test_precision_and_eval_every_reach_training():
    X, y = make_classification(60, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    full = small(max_iter=6, early_stopping=True, eval_every=4, n_iter_no_change=0).fit(X, y)
    assert [r["val_loss"] is not None for r in full.history_] == [False, False, False, True, False, True]
    half = small(max_iter=6, precision="bfloat16").fit(X, y)
    assert half.predictor_.config.train.precision == "bfloat16"
    assert str(half.predictor_.dtype) == "torch.float32"  # autocast needs a float32 network, even for float64 X
    plain = small(max_iter=6).fit(X, y)
    assert [r["train_loss"] for r in half.history_] != [r["train_loss"] for r in plain.history_]
    with pytest.raises(ValueError, match="precision='bfloat16' needs a float32 network"):
        small(max_iter=1, precision="bfloat16", dtype="float64").fit(X, y)


def test_fit_leaves_torchs_thread_count_as_it_found_it():
    import torch

    before = torch.get_num_threads()
    X, y = make_classification(40, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    try:
        torch.set_num_threads(2)
        small(max_iter=2, threads=1).fit(X, y)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)
        small(max_iter=2, threads=1, warm_start=True).fit(X, y).fit(X, y)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


# ----- weights --------------------------------------------------------------------
@pytest.fixture(scope="module")
def imbalanced():
    X, y = make_classification(300, n_features=4, weights=[0.9, 0.1], class_sep=0.5, random_state=3)
    return X, y


def test_class_weight_balanced_raises_minority_recall(imbalanced):
    X, y = imbalanced
    plain = recall_score(y, small().fit(X, y).predict(X))
    balanced = recall_score(y, small(class_weight="balanced").fit(X, y).predict(X))
    by_dict = recall_score(y, small(class_weight={0: 1.0, 1: 9.0}).fit(X, y).predict(X))
    assert balanced > plain + 0.1
    assert by_dict > plain + 0.1


def test_sample_weight_has_an_effect_and_integer_weights_equal_repeats(frame):
    X, y = frame.drop(columns="label"), frame["label"].to_numpy()
    w = np.where(y == "yes", 10.0, 1.0)
    plain = small(max_iter=10).fit(X, y).predict_proba(X)[:, 1]
    heavy = small(max_iter=10).fit(X, y, sample_weight=w).predict_proba(X)[:, 1]
    assert heavy.mean() > plain.mean() + 0.05
    # Weights 0..3 against rows repeated 0..3 times, through the categorical preprocessing too. Full
    # batches (with mini-batches the two runs would see different batches), no dropout (a mask per copy)
    # and no validation rows (drawn among rows, not weights).
    counts = np.random.default_rng(0).integers(0, 4, size=len(X))
    rows = np.repeat(np.arange(len(X)), counts)
    exact = {"max_iter": 10, "batch_size": None, "dropout": 0.0, "early_stopping": False}
    weighted = small(**exact).fit(X, y, sample_weight=counts)
    repeated = small(**exact).fit(X.iloc[rows], y[rows])
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-9)


# ----- meta-estimators ------------------------------------------------------------
def test_in_a_pipeline_with_a_column_transformer(frame):
    X, y = frame.drop(columns="label"), frame["label"]
    X = X.assign(x2=X["x2"].fillna(0.0), color=X["color"].fillna("none"))
    columns = ColumnTransformer([
        ("num", StandardScaler(), ["x1", "x2"]),
        ("cat", OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["color"]),
    ])
    pipe = make_pipeline(columns, small(max_iter=60)).fit(X, y)
    assert pipe.score(X, y) > 0.85
    assert pipe[-1].n_features_in_ == 6  # two scaled numbers, four colours
    assert pipe.predict(X.head(3)).tolist() == pipe[-1].predict(columns.transform(X.head(3))).tolist()


def test_grid_search_over_network_parameters():
    X, y = make_classification(120, n_features=5, random_state=0)
    grid = GridSearchCV(small(max_iter=15), {"hidden_layer_sizes": [(8,), (16, 16)], "dropout": [0.0, 0.2]}, cv=2)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert grid.best_params_["hidden_layer_sizes"] in [(8,), (16, 16)]
    assert grid.best_estimator_.predictor_.config.model.hidden == tuple(grid.best_params_["hidden_layer_sizes"])
    assert grid.best_score_ > 0.7


def test_calibrated_classifier_cv():
    X, y = make_classification(150, n_features=5, random_state=1)
    cal = CalibratedClassifierCV(small(max_iter=20), cv=3, method="sigmoid").fit(X, y)
    proba = cal.predict_proba(X)
    assert proba.shape == (150, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert len(cal.calibrated_classifiers_) == 3
    assert cal.score(X, y) > 0.8


# ----- continued training, seeds, pickling ----------------------------------------
def test_warm_start_and_partial_fit_continue_training():
    X, y = make_blobs(120, centers=3, random_state=0)
    cold = small(max_iter=4, n_iter_no_change=0).fit(X, y).fit(X, y)
    assert cold.n_iter_ == 4
    warm = small(max_iter=4, n_iter_no_change=0, warm_start=True).fit(X, y)
    first = warm.predict_proba(X)
    warm.fit(X, y)
    assert warm.n_iter_ == 8 and [r["epoch"] for r in warm.history_] == list(range(1, 9))
    assert not np.allclose(first, warm.predict_proba(X))
    with pytest.raises(ValueError, match="does not match the target"):
        warm.fit(X, np.eye(3, dtype=int)[y])  # a multilabel y cannot continue a multiclass model

    inc = small(batch_size=40)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, y)
    inc.partial_fit(X[:60], y[:60], classes=[0, 1, 2])
    inc.partial_fit(X[60:], y[60:])
    assert inc.n_iter_ == 2
    # The optimizer's moments carry over: two epochs of 2 steps each.
    assert all(int(s["step"]) == 4 for s in inc._optimizer_state["state"].values())
    with pytest.raises(ValueError, match="not in classes|not seen in training"):
        inc.partial_fit(X[:5], np.array([0, 1, 2, 3, 0]))


def test_a_continued_run_keeps_its_validation_rows_and_moves_its_shuffling_on(monkeypatch):
    from torchclf import api

    seen = []

    def spy(spec, **kwargs):
        prepared = prepare(spec, **kwargs)
        validation = prepared.splits.validation
        seen.append((spec.config.train.seed, None if validation is None else validation.features.to_numpy()))
        return prepared

    prepare = api.prepare
    monkeypatch.setattr(api, "prepare", spy)
    X, y = make_blobs(80, centers=2, random_state=0)
    small(max_iter=2, warm_start=True, early_stopping=True, n_iter_no_change=0).fit(X, y).fit(X, y)
    (seed_a, rows_a), (seed_b, rows_b) = seen
    assert seed_a == seed_b == 0 and rows_a.shape == (8, 2)
    np.testing.assert_array_equal(rows_a, rows_b)
    seen.clear()
    small(max_iter=2, warm_start=True, n_iter_no_change=0, early_stopping=False).fit(X, y).fit(X, y)
    assert seen == [(0, None), (2, None)]


def test_random_state_gives_the_same_model():
    X, y = make_classification(100, n_features=4, random_state=0)
    a = small(dropout=0.2, batch_size=16).fit(X, y).predict_proba(X)
    b = small(dropout=0.2, batch_size=16).fit(X, y).predict_proba(X)
    c = small(dropout=0.2, batch_size=16, random_state=1).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_pickle_round_trip_keeps_predictions_and_training_state(frame):
    X, y = frame.drop(columns="label"), frame["label"]
    clf = small(warm_start=True).fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    assert copy.history_ == clf.history_
    copy.fit(X, y)  # continues from the unpickled weights and optimizer state
    assert copy.n_iter_ == 2 * clf.n_iter_


# ----- run folders: the estimator and the command line are interchangeable ---------
@pytest.fixture(scope="module")
def csv_path(frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.csv"
    frame.to_csv(path, index=False)
    return path


def cli_predictions(run, csv) -> pd.DataFrame:
    code, out, err = run_cli("predict", str(run), str(csv))
    assert code == 0, err
    return pd.read_csv(io.StringIO(out))


def test_cli_run_folder_loads_as_an_estimator(csv_path, frame, tmp_path, no_pictures_here):
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(csv_path), "--target", "label", "--out", str(run), "--epochs", "8",
                           "--hidden", "16,16", "--seed", "3", "--quiet")
    assert code == 0, err
    clf = NeuralNetClassifier.load(run)
    # The run's whole configuration, as estimator parameters: the table's CLI defaults plus the flags given.
    assert clf.get_params() == {
        **{p.estimator_name: p.default for p in TABLE}, "hidden_layer_sizes": (16, 16), "max_iter": 8,
        "random_state": 3, "early_stopping": True, "validation_fraction": 0.1,
        "tol": 1e-4, "dtype": None, "warm_start": False, "verbose": False,
    }
    assert 1 <= clf.n_iter_ <= 8 and clf.history_[0]["epoch"] == 1
    X = frame.drop(columns="label")
    expected = cli_predictions(run, csv_path)
    assert clf.predict(X).tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(clf.predict_proba(X), expected[["proba_no", "proba_yes"]].to_numpy(), rtol=1e-5)
    np.testing.assert_array_equal(clf.predict_proba(X), Predictor.load(run).predict_proba(X))
    # A loaded estimator is a fitted scikit-learn estimator: it clones, scores and refits.
    assert clf.score(X, frame["label"]) == pytest.approx((expected["prediction"] == frame["label"]).mean())
    assert clf.__class__(**clf.get_params()).fit(X, frame["label"]).n_iter_ >= 1


def test_estimator_saves_a_run_folder_the_cli_reads(csv_path, frame, tmp_path):
    X, y = frame.drop(columns="label"), frame["label"]
    clf = small(max_iter=20).fit(X, y)
    run = clf.save(tmp_path / "saved")
    expected = cli_predictions(run, csv_path)
    assert clf.predict(X).tolist() == expected["prediction"].tolist()
    code, out, err = run_cli("evaluate", str(run), str(csv_path), "--target", "label", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(clf.score(X, y))
    back = NeuralNetClassifier.load(run)
    assert back.get_params() == clf.get_params()
    assert back.history_ == clf.history_ and back.n_iter_ == clf.n_iter_
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))  # float64 weights kept
    with pytest.raises(ValueError, match="already exists and is not empty"):
        clf.save(run)


def test_multilabel_estimator_round_trips_through_a_run_folder(tmp_path):
    X, Y = make_multilabel_classification(60, n_features=3, n_classes=3, random_state=0)
    clf = small(max_iter=5).fit(X, Y)
    back = NeuralNetClassifier.load(clf.save(tmp_path / "ml"))
    np.testing.assert_array_equal(back.classes_, clf.classes_)
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert back.predict(X).dtype == Y.dtype

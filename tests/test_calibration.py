"""Calibration, thresholds and calibration metrics, against scikit-learn, torch and hand-worked values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.isotonic import IsotonicRegression

from torchclf import api, metrics
from torchclf.calibration import (
    MAX_KNOTS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    Calibration,
    choose_threshold,
    parse_objective,
)
from torchclf.errors import TorchclfError
from torchclf.predictor import Predictor
from torchclf.task import Task

BINARY, MULTICLASS, MULTILABEL = Task("binary", 2), Task("multiclass", 4), Task("multilabel", 3)


def overconfident(task: Task, n: int, scale: float, seed: int):
    """Logits ``scale`` times too large for targets drawn from the unscaled model."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, task.n_outputs)) * 2
    p = task.probabilities(torch.as_tensor(z)).numpy()
    if task.kind == "multiclass":
        y = np.array([rng.choice(task.n_classes, p=row) for row in p])
    elif task.kind == "binary":
        y = (rng.random(n) < p[:, 1]).astype(np.int64)
    else:
        y = (rng.random(p.shape) < p).astype(np.int64)
    return z * scale, y


# ----- metrics ----------------------------------------------------------------------------------------------


def test_ece_by_hand():
    score = np.array([0.05, 0.15, 0.62, 0.68, 0.95])
    outcome = np.array([0, 1, 1, 0, 1])
    # Two bins: [0, .5) holds .05 and .15 (mean .1, 1 of 2 right): |.5 - .1| * 2/5 = .16;
    # [.5, 1] holds .62, .68, .95 (mean .75, 2 of 3 right): |2/3 - .75| * 3/5 = .05.
    assert metrics.expected_calibration_error(score, outcome, n_bins=2) == pytest.approx(0.21, abs=1e-12)
    # Fifteen bins: every score alone in its bin, so the mean of |outcome - score|.
    assert metrics.expected_calibration_error(score, outcome) == pytest.approx(2.01 / 5, abs=1e-12)
    bins = metrics.reliability_bins(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 0]), n_bins=4)
    np.testing.assert_array_equal(bins["count"], [1, 0, 0, 2])
    np.testing.assert_array_equal(bins["frequency"][[0, 3]], [0.0, 0.5])
    assert np.isnan(bins["confidence"][1])


def test_multiclass_ece_is_top_label():
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.4, 0.35, 0.25]])
    y = np.array([0, 2, 1])
    # Top classes .7 (right), .6 (wrong), .4 (wrong), each alone in a bin.
    got = metrics.calibration_metrics(Task("multiclass", 3), y, proba)
    assert got["ece"] == pytest.approx((0.3 + 0.6 + 0.4) / 3, abs=1e-6)


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_brier_and_log_loss_match_sklearn(task):
    z, y = overconfident(task, 300, 1.0, seed=3)
    proba = task.probabilities(torch.as_tensor(z)).numpy()
    if task.kind == "multiclass":
        labels = np.arange(task.n_classes)
        brier = skm.brier_score_loss(y, proba, labels=labels)
        loss = skm.log_loss(y, proba, labels=labels)
    elif task.kind == "binary":
        brier, loss = skm.brier_score_loss(y, proba[:, 1]), skm.log_loss(y, proba[:, 1])
    else:
        brier = np.mean([skm.brier_score_loss(y[:, j], proba[:, j]) for j in range(task.n_classes)])
        loss = np.mean([skm.log_loss(y[:, j], proba[:, j]) for j in range(task.n_classes)])
    assert metrics.brier_score(task, y, proba) == pytest.approx(brier, rel=1e-12)
    assert metrics.log_loss(task, y, proba) == pytest.approx(loss, rel=1e-12)


# ----- temperature scaling ----------------------------------------------------------------------------------


def grid_nll(task: Task, z: np.ndarray, y: np.ndarray, temps: np.ndarray, column: int | None = None) -> np.ndarray:
    """NLL on a grid of temperatures with torch's own losses (an oracle independent of calibration.py)."""
    zt = torch.as_tensor(z, dtype=torch.float64)
    out = []
    for t in temps:
        if task.kind == "multiclass":
            out.append(torch.nn.functional.cross_entropy(zt / t, torch.as_tensor(y)).item())
        else:
            target = torch.as_tensor(y, dtype=torch.float64).reshape(len(y), -1)[:, column]
            out.append(torch.nn.functional.binary_cross_entropy_with_logits(zt[:, column] / t, target).item())
    return np.array(out)


@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_temperature_is_the_nll_minimum(task):
    z, y = overconfident(task, 600, 2.5, seed=1)
    cal = Calibration.fit(task, z, y)
    grid = np.exp(np.linspace(np.log(0.5), np.log(8.0), 2001))
    columns = [None] if task.kind == "multiclass" else list(range(task.n_outputs))
    assert len(cal.temperatures) == len(columns)
    for t, column in zip(cal.temperatures, columns):
        nll = grid_nll(task, z, y, grid, column)
        best = grid[np.argmin(nll)]
        assert abs(np.log(t) - np.log(best)) <= np.log(grid[1] / grid[0])
        assert grid_nll(task, z, y, [t], column)[0] <= nll.min() + 1e-12
        assert 1.8 < t < 3.5  # the logits were made 2.5 times too large


def test_temperature_lowers_ece_and_keeps_shapes():
    z, y = overconfident(MULTICLASS, 2000, 3.0, seed=4)
    cal = Calibration.fit(MULTICLASS, z[:1000], y[:1000])
    before = MULTICLASS.probabilities(torch.as_tensor(z[1000:])).numpy()
    after = cal.apply(z[1000:])
    assert after.shape == (1000, 4) and after.dtype == np.float64
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-12)
    e0 = metrics.calibration_metrics(MULTICLASS, y[1000:], before)["ece"]
    e1 = metrics.calibration_metrics(MULTICLASS, y[1000:], after)["ece"]
    assert e1 < e0 / 2
    np.testing.assert_allclose(after, torch.softmax(torch.as_tensor(z[1000:]) / cal.temperatures[0], 1).numpy())


def test_binary_apply_gives_two_columns():
    z, y = overconfident(BINARY, 400, 2.0, seed=5)
    cal = Calibration.fit(BINARY, z, y)
    p = cal.apply(z)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z[:, 0] / cal.temperatures[0])), rtol=1e-12)
    np.testing.assert_allclose(p[:, 0], 1 - p[:, 1], rtol=1e-12)


def test_one_class_output_is_left_alone():
    z = np.array([[2.0, -1.0], [1.0, 0.5], [-1.0, 3.0], [0.2, -2.0]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # label 1 never positive
    task = Task("multilabel", 2)
    cal = Calibration.fit(task, z, y)
    assert cal.temperatures[1] == 1.0 and cal.notes == [
        "output 1: only one class among the validation rows; temperature left at 1"]
    iso = Calibration.fit(task, z, y, "isotonic")
    assert iso.knots[1] is None
    np.testing.assert_allclose(iso.apply(z)[:, 1], 1 / (1 + np.exp(-z[:, 1])))


def test_perfectly_separated_rows_are_sharpened_only_to_what_n_of_n_supports():
    # Every row on the right side: the likelihood would push the temperature to its lower bound. Instead
    # the mean probability of the true class is brought up to (n+1)/(n+2), never down.
    z = np.array([[-3.0], [-0.2], [0.1], [2.5]])
    cal = Calibration.fit(BINARY, z, np.array([0, 0, 1, 1]))
    t = cal.temperatures[0]
    p_true = 1 / (1 + np.exp(-np.abs(z[:, 0]) / t))
    assert t < 1.0 and p_true.mean() == pytest.approx(5 / 6, abs=1e-9)
    assert cal.notes == [(f"output 0: every validation row is classified correctly, so they cannot measure "
                          f"over-confidence; temperature {t:.3g} sharpens the probabilities until their mean "
                          "confidence is 5/6 (what 4 of 4 right supports)")]
    zm = np.array([[2.0, 1.9, -1.0, 0.0], [0.0, 3.0, 1.0, 2.9], [1.0, 1.0, 1.5, 1.0]])
    tm = Calibration.fit(MULTICLASS, zm, np.array([0, 1, 2])).temperatures[0]
    softmax = np.exp(zm / tm) / np.exp(zm / tm).sum(axis=1, keepdims=True)
    assert softmax[[0, 1, 2], [0, 1, 2]].mean() == pytest.approx(4 / 5, abs=1e-9)
    # Already as confident as n of n supports: left alone.
    sure = np.array([[-9.0], [-8.0], [7.0], [9.0]])
    cal = Calibration.fit(BINARY, sure, np.array([0, 0, 1, 1]))
    assert cal.temperatures == [1.0] and cal.notes[0].endswith("temperature left at 1")
    # One row wrong: a finite optimum, found as usual.
    fitted = Calibration.fit(MULTICLASS, zm, np.array([0, 1, 3])).temperatures[0]
    grid = np.exp(np.linspace(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE), 4001))
    best = grid[np.argmin(grid_nll(MULTICLASS, zm, np.array([0, 1, 3]), grid))]
    assert fitted != 1.0 and abs(np.log(fitted / best)) <= np.log(grid[1] / grid[0])


near_ties = st.lists(st.integers(0, 3), min_size=4, max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    base=st.lists(st.floats(-60, 60, width=32), min_size=4, max_size=4),
    steps=near_ties,
    t=st.floats(MIN_TEMPERATURE, MAX_TEMPERATURE),
)
def test_temperature_never_changes_the_multiclass_argmax(base, steps, t):
    # Logits a few float32 steps apart are the hardest case for keeping the order through the division.
    row = np.array([np.float32(base[0])] * 4, dtype=np.float32)
    for j, s in enumerate(steps):
        for _ in range(s):
            row[j] = np.nextafter(row[j], np.float32(np.inf))
    z = np.vstack([row, np.array(base, dtype=np.float32)])
    cal = Calibration(MULTICLASS, "temperature", [t])
    np.testing.assert_array_equal(cal.apply(z).argmax(axis=1), z.argmax(axis=1))


def test_fitted_temperature_keeps_every_label():
    z, y = overconfident(MULTICLASS, 500, 0.4, seed=6)  # underconfident: T < 1 sharpens
    cal = Calibration.fit(MULTICLASS, z, y)
    assert cal.temperatures[0] < 1
    test = np.random.default_rng(7).normal(size=(5000, 4)).astype(np.float32)
    np.testing.assert_array_equal(cal.apply(test).argmax(axis=1), test.argmax(axis=1))


# ----- isotonic --------------------------------------------------------------------------------------------


def test_isotonic_binary_matches_sklearn():
    z, y = overconfident(BINARY, 500, 2.0, seed=8)
    cal = Calibration.fit(BINARY, z, y, "isotonic")
    new = np.random.default_rng(9).normal(size=(200, 1)) * 6  # also beyond the fitted range (clipped)
    # Bounded to [1/(n+1), n/(n+1)] for n = 500 validation rows.
    expected = IsotonicRegression(out_of_bounds="clip", y_min=1 / 501, y_max=500 / 501).fit(z[:, 0], y).predict(new[:, 0])
    assert expected.min() == 1 / 501 and expected.max() == 500 / 501
    np.testing.assert_allclose(cal.apply(new)[:, 1], expected, atol=1e-12)


def test_isotonic_multiclass_rows_sum_to_one():
    z, y = overconfident(MULTICLASS, 800, 2.0, seed=10)
    cal = Calibration.fit(MULTICLASS, z, y, "isotonic")
    p = cal.apply(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    # Each column before renormalising is sklearn's fit on that class's log-probability.
    logp = torch.log_softmax(torch.as_tensor(z), 1).numpy()
    col = IsotonicRegression(out_of_bounds="clip", y_min=1 / 801, y_max=800 / 801).fit(logp[:, 2], y == 2).predict(
        logp[:, 2])
    raw = np.stack([np.interp(logp[:, j], *cal.knots[j]) for j in range(4)], axis=1)
    np.testing.assert_allclose(raw[:, 2], col, atol=1e-12)
    np.testing.assert_allclose(p, raw / raw.sum(axis=1, keepdims=True), atol=1e-12)


# ----- saving and strict reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize("task", [BINARY, MULTICLASS, MULTILABEL], ids=lambda t: t.kind)
def test_round_trip_through_json(task, method):
    z, y = overconfident(task, 300, 2.0, seed=11)
    cal = Calibration.fit(task, z, y, method)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)), task)
    np.testing.assert_array_equal(back.apply(z), cal.apply(z))


def _temp(**kw):
    return {"method": "temperature", "temperatures": [1.5], **kw}


def _iso(x, y):
    return {"method": "isotonic", "knots": [{"x": x, "y": y}]}


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1.5], "expected an object"),
        ({"method": "platt", "temperatures": [1.0]}, "calibration.method: got 'platt'"),
        (_temp(extra=1), "expected the keys"),
        ({"method": "temperature", "temperatures": "1.5"}, "expected a list of numbers"),
        ({"method": "temperature", "temperatures": [1.5, 2.0]}, "expected 1 values, got 2"),
        ({"method": "temperature", "temperatures": [True]}, "expected finite numbers"),
        ({"method": "temperature", "temperatures": [float("nan")]}, "expected finite numbers"),
        ({"method": "temperature", "temperatures": ["2"]}, "expected finite numbers"),
        ({"method": "temperature", "temperatures": [0.0]}, "expected values in [0.05, 20.0]"),
        ({"method": "temperature", "temperatures": [1e9]}, "expected values in [0.05, 20.0]"),
        ({"method": "isotonic", "knots": [None, None]}, "expected a list of 1 curves"),
        ({"method": "isotonic", "knots": [[0, 1]]}, "expected an object with the keys x and y"),
        (_iso([0.0, 1.0], [0.5]), "knots[0].y: expected 2 values, got 1"),
        (_iso([1.0, 0.0], [0.2, 0.5]), "expected increasing x"),
        (_iso([0.0, 1.0], [0.5, 0.2]), "expected increasing x and non-decreasing y"),
        (_iso([0.0, 1.0], [0.5, 1.5]), "in [0, 1]"),
        (_iso([], []), "expected 1 to 4096 knots, got 0"),
        (_iso(list(range(MAX_KNOTS + 1)), [0.5] * (MAX_KNOTS + 1)), "expected 1 to 4096 knots"),
    ],
)
def test_from_dict_rejects_bad_values(payload, message):
    with pytest.raises(TorchclfError) as err:
        Calibration.from_dict(payload, BINARY)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# ----- thresholds ------------------------------------------------------------------------------------------

Y = np.array([0, 0, 1, 1, 0, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])


@pytest.mark.parametrize(
    "objective, cut",
    [
        # Predicting p >= .8 gives TP 2, FP 0, FN 1: F1 .8 and balanced accuracy .833, the best; the cut is
        # the midpoint of (.6, .8].
        ("f1", 0.7),
        ("balanced_accuracy", 0.7),
        ("precision>=0.7", 0.7),  # precision 1, recall 2/3 (at p >= .9 recall is only 1/3)
        ("precision>=0.6", 0.225),  # p >= .35: precision 3/5, recall 1
        ("recall>=0.9", 0.225),  # recall 1 at p >= .1 (precision .5) and p >= .35 (precision .6)
        ("cost:1/5", 0.225),  # p >= .35: 2 false positives, cost 2
        ("cost:5/1", 0.7),  # p >= .8: 1 false negative, cost 1
        ("cost:1/0", 0.7),  # free false negatives: p >= .8, p >= .9 and nothing positive all cost 0; nearest .5
    ],
)
def test_threshold_by_hand(objective, cut):
    choice = choose_threshold(Y, np.stack([1 - P, P], axis=1), objective)
    assert choice.threshold == pytest.approx(cut, abs=1e-12)
    assert choice.met == [True] and choice.notes == []


def test_unreachable_floor_takes_the_closest_cut():
    y, p = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.3, 0.2])
    choice = choose_threshold(y, np.stack([1 - p, p], axis=1), "precision>=0.8")
    assert choice.threshold == pytest.approx(0.55)  # p >= .8: precision .5, the best reachable
    assert choice.met == [False]
    assert choice.notes == [("precision>=0.8 is not reached on the validation rows (best precision 0.500); "
                             "using the closest cut")]


def _sklearn_value(objective: str, y, pred) -> float:
    kw = {"zero_division": 0}
    if objective == "f1":
        return skm.f1_score(y, pred, **kw)
    if objective == "balanced_accuracy":
        return skm.balanced_accuracy_score(y, pred)
    if objective == "cost:2/3":
        cm = skm.confusion_matrix(y, pred, labels=[0, 1])
        return -(2 * cm[0, 1] + 3 * cm[1, 0])
    floor = float(objective.split(">=")[1])
    precision, recall = skm.precision_score(y, pred, **kw), skm.recall_score(y, pred)
    if objective.startswith("precision"):
        return recall if pred.any() and precision >= floor else -1
    return precision if recall >= floor else -1


@pytest.mark.parametrize("objective", ["f1", "balanced_accuracy", "precision>=0.75", "recall>=0.8", "cost:2/3"])
def test_threshold_is_the_best_cut_by_sklearn(objective):
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 150)
    p = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(scale=0.25, size=150), 0.001, 0.999).round(3)
    choice = choose_threshold(y, np.stack([1 - p, p], axis=1), objective)
    cuts = np.append(np.unique(p), 1.0)
    best = max(_sklearn_value(objective, y, (p >= c).astype(int)) for c in cuts)
    assert _sklearn_value(objective, y, (p >= choice.threshold).astype(int)) == best
    # The plotted curve is the metric at each grid threshold.
    i = 49  # threshold 0.5
    assert choice.curve["threshold"][i] == pytest.approx(0.5)
    assert choice.curve["f1"][i] == pytest.approx(skm.f1_score(y, p >= 0.5))
    assert choice.curve["precision"][i] == pytest.approx(skm.precision_score(y, p >= 0.5))
    assert choice.curve["balanced_accuracy"][i] == pytest.approx(skm.balanced_accuracy_score(y, p >= 0.5))


def test_multilabel_thresholds_are_per_label():
    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, (80, 3))
    y[:, 2] = 0  # one class only: stays at 0.5
    p = np.clip(y * 0.3 + rng.random((80, 3)) * 0.7, 0, 1)
    choice = choose_threshold(y, p, "f1")
    assert choice.threshold.shape == (3,) and choice.curve["f1"].shape == (99, 3)
    for j in range(2):
        single = choose_threshold(y[:, j], np.stack([1 - p[:, j], p[:, j]], axis=1), "f1")
        assert choice.threshold[j] == single.threshold
        np.testing.assert_array_equal(choice.curve["f1"][:, j], single.curve["f1"])
    assert choice.threshold[2] == 0.5 and choice.met[2] is False
    assert choice.notes == ["label 2: only one class among the validation rows; threshold left at 0.5"]


def test_multiclass_probabilities_take_no_threshold():
    with pytest.raises(TorchclfError, match="multiclass labels are the most probable class"):
        choose_threshold(np.array([0, 1, 2]), np.eye(3), "f1")


@pytest.mark.parametrize("text, kind, values", [
    ("f1", "f1", {}),
    (" balanced_accuracy ", "balanced_accuracy", {}),
    ("precision>=0.9", "precision", {"floor": 0.9}),
    ("recall >= 1", "recall", {"floor": 1.0}),
    ("cost:1/5", "cost", {"cost_fp": 1.0, "cost_fn": 5.0}),
    ("cost:0/2.5", "cost", {"cost_fp": 0.0, "cost_fn": 2.5}),
])
def test_parse_objective(text, kind, values):
    obj = parse_objective(text)
    assert obj.kind == kind and all(getattr(obj, k) == v for k, v in values.items())


@pytest.mark.parametrize("text, message", [
    ("accuracy", "expected f1, balanced_accuracy"),
    ("precision>=0", "needs a floor in (0, 1]"),
    ("recall>=1.5", "needs a floor in (0, 1]"),
    ("recall>=nan", "needs a floor in (0, 1]"),
    ("cost:0/0", "not both 0"),
    ("cost:-1/2", "two costs of 0 or more"),
    ("cost:1/inf", "two costs of 0 or more"),
])
def test_parse_objective_rejects(text, message):
    with pytest.raises(TorchclfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_objective(text)


# ----- in the workflow: training, the run folder, predict, the estimator, the report ------------------------


def small(**train):
    return api.make_config(model={"hidden": (8,)}, train={"epochs": 15, "threads": 1, "batch_size": 64, **train})


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, no_pictures):
    out = tmp_path_factory.mktemp("runs") / "moons"
    result = api.train("moons:n_samples=400,noise=0.3", config=small(threshold="cost:1/4"), out=out)
    return out, result


def test_run_folder_keeps_calibration_and_threshold(binary_run):
    out, result = binary_run
    fitted = result.predictor
    assert fitted.calibration.method == "temperature" and fitted.threshold_objective == "cost:1/4"
    loaded = Predictor.load(out)
    assert loaded.calibration.temperatures == fitted.calibration.temperatures
    assert loaded.threshold == fitted.threshold and loaded.threshold_objective == "cost:1/4"
    rows = result.splits.test.features
    proba = loaded.predict_proba(rows)
    np.testing.assert_array_equal(proba, fitted.predict_proba(rows))
    logits = loaded.predict_logits(rows)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-logits[:, 0] / loaded.calibration.temperatures[0])),
                               rtol=1e-6)
    indices = loaded.predict_indices(rows)
    np.testing.assert_array_equal(indices, (proba[:, 1] >= loaded.threshold).astype(int))
    frame = loaded.predict_frame(rows)
    assert list(frame["prediction"]) == loaded.labels.decode(indices, None)


def test_metrics_json_reports_before_and_after(binary_run):
    out, result = binary_run
    metrics = json.loads((out / "metrics.json").read_text())
    test = result.splits.test
    predictor = result.predictor
    y = predictor.labels.encode(test.target)
    logits = predictor.predict_logits(test.features)
    record = metrics["test"]["calibration"]
    assert record["method"] == "temperature" and record["temperatures"] == [
        round(predictor.calibration.temperatures[0], 6)]
    assert record["uncalibrated"] == metrics_of(predictor.task, y, predictor.probabilities(logits, False))
    assert record["calibrated"] == metrics_of(predictor.task, y, predictor.probabilities(logits))
    assert set(metrics) == {"train", "validation", "test"}
    threshold = metrics["validation"]["threshold"]
    assert threshold["objective"] == "cost:1/4" and threshold["value"] == round(predictor.threshold, 6)
    # Labels in metrics.json are taken at the chosen threshold.
    proba = predictor.probabilities(logits)
    assert metrics["test"]["accuracy"] == pytest.approx(
        skm.accuracy_score(y, proba[:, 1] >= predictor.threshold), abs=1e-6)


def metrics_of(task, y, proba):
    return metrics.calibration_metrics(task, y, proba)


def test_predict_threshold_overrides_the_saved_one(binary_run, tmp_path):
    out, result = binary_run
    rows = tmp_path / "rows.csv"
    result.splits.test.features.to_csv(rows, index=False)
    code, stdout, stderr = run_cli("predict", str(out), str(rows), "--threshold", "0.8")
    assert code == 0, stderr
    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(stdout))
    positive = str(result.predictor.classes[1])
    expected = np.where(frame[f"proba_{positive}"] >= 0.8, positive, str(result.predictor.classes[0]))
    assert list(frame["prediction"].astype(str)) == list(expected)
    assert (frame[f"proba_{positive}"] >= result.predictor.threshold).sum() != (frame[f"proba_{positive}"] >= 0.8).sum()
    for bad in ("0", "1.5", "nan"):
        code, _, stderr = run_cli("predict", str(out), str(rows), "--threshold", bad)
        assert code == 2 and stderr.count("\n") == 1 and "--threshold" in stderr


def test_old_run_folders_load_and_damaged_fields_are_refused(binary_run, tmp_path):
    import shutil

    out, result = binary_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "model.json").read_text())
    old = {k: v for k, v in manifest.items() if k not in ("calibration", "threshold")}
    (copy / "model.json").write_text(json.dumps(old))
    loaded = Predictor.load(copy)
    assert loaded.calibration is None and loaded.threshold is None
    rows = result.splits.test.features
    np.testing.assert_allclose(loaded.predict_proba(rows), result.predictor.probabilities(
        result.predictor.predict_logits(rows), False), rtol=1e-6)
    for field_name, value, message in [
        ("calibration", {"method": "temperature", "temperatures": [float("inf")]}, "damaged manifest"),
        ("calibration", {"method": "temperature", "temperatures": ["1"]}, "expected finite numbers"),
        ("calibration", {"method": "temperature", "temperatures": [1.0, 2.0]}, "expected 1 values"),
        ("calibration", "temperature", "expected an object"),
        ("threshold", {"objective": "f1", "value": 1.5}, "threshold must be a probability in (0, 1)"),
        ("threshold", {"objective": "f1", "value": [0.5]}, "threshold must be a probability in (0, 1)"),
        ("threshold", {"objective": "", "value": 0.5}, "named by an objective"),
        ("threshold", {"objective": "f1", "value": 0.5, "x": 1}, "keys objective and value"),
    ]:
        text = json.dumps({**manifest, field_name: value}, allow_nan=True)
        (copy / "model.json").write_text(text)
        with pytest.raises(TorchclfError) as err:
            Predictor.load(copy)
        assert message in str(err.value) and "\n" not in str(err.value), (field_name, value, str(err.value))


def test_multiclass_temperature_never_changes_a_label(no_pictures):
    result = api.train("blobs:n_samples=300", config=small(epochs=30))
    predictor = result.predictor
    assert predictor.calibration is not None and predictor.calibration.temperatures[0] != 1.0
    rows = result.splits.test.features
    logits = predictor.predict_logits(rows)
    np.testing.assert_array_equal(predictor.predict_indices(rows), logits.argmax(axis=1))
    with pytest.raises(TorchclfError, match="a threshold applies to binary and multilabel"):
        predictor.set_threshold(0.3)


def test_threshold_needs_a_binary_or_multilabel_task_and_validation_rows(no_pictures):
    with pytest.raises(TorchclfError, match="the task is multiclass"):
        api.train("blobs:n_samples=100", config=small(epochs=1, threshold="f1"))
    config = api.make_config(train={"epochs": 1, "threshold": "f1"}, data={"validation_size": 0.0})
    with pytest.raises(TorchclfError, match="needs validation rows"):
        api.train("moons:n_samples=100", config=config)
    # Calibration alone is skipped, with a note, when there are no validation rows.
    result = api.train("moons:n_samples=100", config=api.make_config(
        train={"epochs": 1}, data={"validation_size": 0.0}))
    assert result.predictor.calibration is None
    assert result.metrics["test"]["calibration"]["notes"] == [
        "no validation rows: the probabilities are not calibrated (hold some out with --val-size)"]
    assert "calibrated" not in result.metrics["test"]["calibration"]


def test_multilabel_isotonic_and_per_label_thresholds(no_pictures, tmp_path):
    out = tmp_path / "ml"
    result = api.train("multilabel:n_samples=400", config=small(calibration="isotonic", threshold="f1"), out=out)
    predictor = Predictor.load(out)
    assert predictor.calibration.method == "isotonic" and predictor.threshold.shape == (5,)
    np.testing.assert_array_equal(predictor.threshold, result.predictor.threshold)
    rows = result.splits.test.features
    proba = predictor.predict_proba(rows)
    np.testing.assert_array_equal(predictor.predict_indices(rows), (proba >= predictor.threshold).astype(int))
    assert len(json.loads((out / "metrics.json").read_text())["validation"]["threshold"]["value"]) == 5


def test_calibration_off_keeps_the_raw_probabilities(no_pictures):
    result = api.train("moons:n_samples=200", config=small(calibration=None))
    predictor = result.predictor
    assert predictor.calibration is None and result.metrics["test"]["calibration"]["method"] is None
    rows = result.splits.test.features
    np.testing.assert_array_equal(predictor.predict_proba(rows),
                                  predictor.task.probabilities(torch.from_numpy(predictor.predict_logits(rows))))


def test_table_gives_flags_and_estimator_parameters():
    from torchclf.config import PARAM, TrainConfig
    from torchclf.estimator import NeuralNetClassifier

    assert PARAM["calibration"].default == "temperature" and PARAM["threshold"].default is None
    assert TrainConfig(threshold=" recall >= 0.8").threshold == "recall>=0.8"
    with pytest.raises(TorchclfError, match="TrainConfig.threshold: got 'f2'"):
        TrainConfig(threshold="f2")
    code, stdout, _ = run_cli("train", "--help")
    assert code == 0 and "--calibration" in stdout and "--threshold" in stdout
    params = NeuralNetClassifier().get_params()
    assert params["calibration"] is None and params["threshold"] is None  # the estimator's own default


def test_estimator_chooses_and_keeps_a_threshold():
    import pickle

    from sklearn.datasets import make_classification

    from torchclf.estimator import NeuralNetClassifier

    X, y = make_classification(n_samples=300, n_features=6, weights=[0.8], random_state=0)
    est = NeuralNetClassifier(hidden_layer_sizes=(8,), max_iter=20, early_stopping=True, threshold="recall>=0.9",
                              random_state=0, threads=1).fit(X, y)
    predictor = est.predictor_
    assert predictor.threshold_objective == "recall>=0.9" and 0 < predictor.threshold < 1
    np.testing.assert_array_equal(est.predict(X), (est.predict_proba(X)[:, 1] >= predictor.threshold).astype(int))
    back = pickle.loads(pickle.dumps(est))
    assert back.predictor_.threshold == predictor.threshold
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))


def test_report_shows_reliability_and_threshold_curves(tmp_path):
    from torchclf.report import build_html

    out = tmp_path / "run"
    result = api.train("moons:n_samples=300,noise=0.3", config=small(threshold="f1"), out=out)
    page = build_html(out, result.predictor, result.splits.test, "test rows")
    section = page.split('<section id="calibration">')[1].split("</section>")[0]
    assert section.count("<img") == 2 and "reliability diagram" in section
    assert "chosen for f1" in section and f"{round(result.predictor.threshold, 4)}" in section
    assert "ece before" in section


def test_the_bounded_search_finds_scipys_minimum():
    """The temperature search is torchclf's own (scipy.optimize cost 0.6 s of imports); on convex and
    unimodal functions, and on real sigmoid NLLs, it lands where scipy's bounded Brent search does."""
    import math

    from scipy.optimize import minimize_scalar

    from torchclf.calibration import _minimize_bounded

    rng = np.random.default_rng(3)
    low, high = math.log(0.05), math.log(20.0)
    for i in range(400):
        c, s = rng.uniform(-3.5, 3.5), rng.uniform(0.1, 5.0)
        if i % 3 == 0:
            def f(u, c=c, s=s):
                return s * (u - c) ** 2 + 0.01 * u
        elif i % 3 == 1:
            def f(u, c=c):
                return abs(u - c) ** 1.5
        else:
            z = rng.normal(size=300) * 3
            y = (rng.random(300) < 1 / (1 + np.exp(-z * s))).astype(float)

            def f(u, z=z, y=y):
                return float(np.mean(np.logaddexp(0, z / math.exp(u)) - y * z / math.exp(u)))
        want = minimize_scalar(f, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x
        assert abs(_minimize_bounded(f, low, high) - want) < 1e-5

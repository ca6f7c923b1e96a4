"""The column plan: --drop, identifiers and free text left out with one warning, dates as numeric parts."""

from __future__ import annotations

import json
import warnings
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from torchclf.config import PARAM
from torchclf.data.columns import ColumnPlan
from torchclf.data.sources import DataWarning
from torchclf.errors import TorchclfError
from torchclf.preprocess import Preprocessor

FAST = ["--epochs", "3", "--hidden", "4", "--patience", "0", "--quiet"]
PARTS = ["year", "month", "month_sin", "month_cos", "day", "weekday", "weekday_sin", "weekday_cos", "dayofyear",
         "hour", "hour_sin", "hour_cos", "minute", "timestamp"]


def people(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "name": [f"Smith, Mr. John {i}" for i in range(n)],
        "x": rng.normal(size=n),
        "color": rng.choice(["red", "blue"], size=n),
    })


def fitted(frame: pd.DataFrame, **kwargs) -> tuple[Preprocessor, list[str]]:
    """A Preprocessor fitted on ``frame`` and the DataWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre = Preprocessor(**kwargs).fit(frame)
    return pre, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


# ----- identifiers and free text ----------------------------------------------------
def test_an_identifier_column_is_left_out_with_one_line_saying_so():
    pre, said = fitted(people())
    assert said == [("column 'name': 60 distinct values in 60 rows (an identifier); left out — to silence this, "
                     "drop it yourself (--drop name; drop=['name'] in Python) or convert it")]
    # The flag and the estimator's parameter the line names are the table's.
    assert (PARAM["drop"].cli_flag, PARAM["drop"].estimator_name) == ("--drop", "drop")
    assert pre.feature_names == ["x", "color"]
    assert [c.name for c in pre.columns] == ["x", "color"]
    assert [(c.name, c.reason) for c in pre.plan.left_out] == [("name", "identifier")]
    # new rows need not hold it
    assert pre.transform(people(5, seed=1).drop(columns="name")).shape == (5, pre.n_outputs)


def test_the_warning_names_the_callers_line_whichever_door_it_came_through():
    """However deep in torchclf a warning starts, it is attributed to the line that called into torchclf:
    here, through a Preprocessor, ``torchclf.train``, the estimator's ``fit`` (wrapped by scikit-learn's
    decorators) and ``cross_val_score`` (which calls ``fit`` through joblib)."""
    from sklearn.model_selection import cross_val_score

    import torchclf
    from torchclf import NeuralNetClassifier

    frame = people(60)
    y = pd.Series(np.where(frame["x"] > 0, "up", "down"))
    y[3] = None  # a missing target: a warning from reading the rows, another depth
    config = torchclf.make_config(model={"hidden": (4,)}, train={"epochs": 1, "threads": 1})
    calls = {
        "preprocessor": lambda: Preprocessor().fit(frame),
        "train": lambda: torchclf.train(frame.assign(y=y), "y", config=config),
        "estimator": lambda: NeuralNetClassifier(hidden_layer_sizes=(4,), max_iter=1, threads=1).fit(
            frame[y.notna()], y[y.notna()]),
        "cross_val_score": lambda: cross_val_score(
            NeuralNetClassifier(hidden_layer_sizes=(4,), max_iter=1, threads=1), people(120), np.repeat(["a", "b"], 60),
            cv=2),
    }
    for door, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = call.__code__.co_firstlineno
            call()
        ours = [w for w in caught if issubclass(w.category, DataWarning)]
        assert ours, door
        assert {(w.filename, w.lineno) for w in ours} == {(__file__, line)}, (door, [str(w.message) for w in ours])


def test_whole_number_row_counters_and_named_ids_are_left_out_other_distinct_numbers_kept():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "row": np.arange(1, 61),                            # rises by one per row: a row number
        "customer_id": rng.permutation(10_000)[:60],        # any order, but the name says identifier
        "visits": rng.permutation(60) * 7,                  # distinct whole numbers, no order, plain name
        "price": np.arange(60) + 0.5,                       # a float column rising in every row
        "weight": rng.normal(size=60),                      # a float column, every value distinct
    })
    pre, said = fitted(frame)
    assert said == [("columns 'row' (a row number: 60 distinct whole numbers in 60 rows), 'customer_id' (an "
                     "identifier: 60 distinct whole numbers in 60 rows); left out — to silence this, drop them "
                     "yourself (--drop row --drop customer_id; drop=['row', 'customer_id'] in Python) or convert "
                     "them")]
    assert pre.feature_names == ["visits", "price", "weight"]


def test_float_columns_with_all_distinct_values_are_kept_without_a_word():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.exponential(size=200), "c": np.linspace(0, 1, 200)})
    pre, said = fitted(frame)
    assert said == [] and pre.feature_names == ["a", "b", "c"] and pre.plan.keeps_all


def test_small_tables_keep_every_column():
    pre, said = fitted(people(30).assign(row=np.arange(30)))
    assert said == [] and pre.feature_names == ["name", "x", "color", "row"]


def test_free_text_is_left_out_and_codes_with_many_values_are_kept():
    rng = np.random.default_rng(2)
    words = np.array(["the", "parcel", "arrived", "late", "and", "broken", "very", "happy", "with", "service"])
    n = 80
    frame = pd.DataFrame({
        "review": [" ".join(rng.choice(words, size=8)) for _ in range(n)],  # prose, nearly all different
        "ticket": [f"A/5 {rng.integers(100, 130)}" for _ in range(n)],     # many values, repeats, short
        "x": rng.normal(size=n),
    })
    distinct = frame["review"].nunique()
    assert 0.5 * n <= distinct  # the example is what it claims to be
    pre, said = fitted(frame)
    assert said == [(f"column 'review': {distinct} distinct values in {n} rows, typically 8 words (free text); "
                     "left out — to silence this, drop it yourself (--drop review; drop=['review'] in Python) or "
                     "convert it")]
    assert pre.feature_names == ["ticket", "x"]


def test_drop_silences_and_leaves_out():
    pre, said = fitted(people(), drop=("name", "color"))
    assert said == [] and pre.feature_names == ["x"]
    assert pre.plan.drop == ["name", "color"] and pre.plan.left_out == []


def test_a_drop_that_is_not_a_column_or_leaves_nothing_is_one_clear_error():
    with pytest.raises(TorchclfError, match=r"^cannot drop 'colour': no such column in the training rows; "
                                            r"similar: 'color'$"):
        Preprocessor(drop=["colour"]).fit(people())
    with pytest.raises(TorchclfError, match=r"^training rows: every feature column is dropped or left out "
                                            r"\('x', 'color', 'name'\); keep at least one column to learn from$"), \
            pytest.warns(DataWarning):
        Preprocessor(drop=["x", "color"]).fit(people())


# ----- dates -------------------------------------------------------------------------
STAMPS = ["2024-01-15 06:00", "2024-07-04 18:30", "2023-12-31 00:00", None]
MOMENTS = [datetime(2024, 1, 15, 6, 0), datetime(2024, 7, 4, 18, 30), datetime(2023, 12, 31, 0, 0)]


def expected_parts(moments) -> dict[str, list[float]]:
    """The parts worked out by hand with the standard library (None: a missing date)."""
    out = {p: [] for p in PARTS}
    for m in moments:
        if m is None:
            for p in PARTS:
                out[p].append(np.nan)
            continue
        hour = m.hour + m.minute / 60
        values = {"year": m.year, "month": m.month, "day": m.day, "weekday": m.weekday(),
                  "dayofyear": m.timetuple().tm_yday, "hour": m.hour, "minute": m.minute,
                  "month_sin": np.sin(2 * np.pi * (m.month - 1) / 12), "month_cos": np.cos(2 * np.pi * (m.month - 1) / 12),
                  "weekday_sin": np.sin(2 * np.pi * m.weekday() / 7), "weekday_cos": np.cos(2 * np.pi * m.weekday() / 7),
                  "hour_sin": np.sin(2 * np.pi * hour / 24), "hour_cos": np.cos(2 * np.pi * hour / 24),
                  "timestamp": (m - datetime(1970, 1, 1)).total_seconds() / 86400}
        for p in PARTS:
            out[p].append(values[p])
    return out


def test_a_text_date_column_becomes_its_parts_in_place():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "when": STAMPS, "b": ["u", "v", "u", "v"]})
    plan = ColumnPlan()
    out = plan.fit(frame)
    assert [(d.name, d.format, d.parts) for d in plan.dates] == [("when", "%Y-%m-%d %H:%M", PARTS)]
    assert list(out.columns) == ["a", *[f"when__{p}" for p in PARTS], "b"]
    want = expected_parts([*MOMENTS, None])
    assert [m.weekday() for m in MOMENTS] == [0, 3, 6] and want["dayofyear"][:3] == [15, 186, 365]
    for p in PARTS:
        np.testing.assert_allclose(out[f"when__{p}"].to_numpy(), want[p], rtol=1e-12, atol=1e-12, err_msg=p)
    assert out["a"].tolist() == [1.0, 2.0, 3.0, 4.0] and out["b"].tolist() == ["u", "v", "u", "v"]


def test_only_parts_that_vary_enter_and_datetime_columns_need_no_format():
    frame = pd.DataFrame({"day": pd.to_datetime(["2021-03-01", "2021-03-02", "2021-03-05"]), "x": [1.0, 2.0, 3.0]})
    pre, said = fitted(frame)
    assert said == []
    assert [(d.name, d.format, d.parts) for d in pre.plan.dates] == [
        ("day", None, ["day", "weekday", "weekday_sin", "weekday_cos", "dayofyear", "timestamp"])]
    assert pre.feature_names == ["day", "x"]
    assert [c.name for c in pre.columns] == ["day__day", "day__weekday", "day__weekday_sin", "day__weekday_cos",
                                             "day__dayofyear", "day__timestamp", "x"]
    # text dates in new rows are read as well
    again = pre.transform(pd.DataFrame({"day": ["2021-03-02"], "x": [2.0]}))
    np.testing.assert_array_equal(again, pre.transform(frame.iloc[[1]]))


def dated(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2022-01-01 08:00")
    when = [start + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 24 * 700, size=n)]
    return pd.DataFrame({"when": [w.strftime("%d/%m/%Y %H:%M") for w in when], "x": rng.normal(size=n)})


def test_unseen_missing_and_unreadable_dates_at_prediction():
    pre, said = fitted(dated())
    assert said == [] and pre.plan.dates[0].format == "%d/%m/%Y %H:%M"
    rows = pd.DataFrame({"when": ["01/06/2031 12:00", None, "garbage", "2024-01-15 06:00"], "x": [0.0] * 4})
    parts = pre.plan.apply(rows)
    want = expected_parts([datetime(2031, 6, 1, 12, 0), None, None, datetime(2024, 1, 15, 6, 0)])
    for p in pre.plan.dates[0].parts:  # a date never seen, missing, not a date, and ISO 8601 in a d/m/Y column
        np.testing.assert_allclose(parts[f"when__{p}"].to_numpy(), want[p], rtol=1e-12, err_msg=p)
    encoded = pre.transform(rows)
    assert np.isfinite(encoded).all()
    np.testing.assert_array_equal(encoded[1], encoded[2])  # missing and unreadable: both the training medians
    assert not np.array_equal(encoded[0], encoded[1])
    assert pre.input_notes(rows) == [("column 'when': 1 of 3 value(s) are not dates (e.g. ['garbage']) and are "
                                      "treated as missing (the training median)")]
    with pytest.raises(TorchclfError, match=r"^input: column 'when' held dates in training, but 2 of 3 value\(s\) "
                                            r"here are not dates \(e.g. \['no', 'yes'\]\); give dates as in "
                                            r"training, such as '31/03/2024 14:30'$"):
        pre.transform(pd.DataFrame({"when": ["yes", "no", "01/01/2023 10:00"], "x": [0.0] * 3}))
    with pytest.raises(TorchclfError, match="missing feature column"):
        pre.transform(rows.drop(columns="when"))


def test_an_iso_date_reads_the_same_alone_or_among_dates_in_the_columns_format():
    pre, _ = fitted(dated())
    iso = "2024-03-05T14:30:15.25"
    alone = pre.plan.apply(pd.DataFrame({"when": [iso], "x": [0.0]}))
    among = pre.plan.apply(pd.DataFrame({"when": ["05/03/2024 14:30", iso], "x": [0.0] * 2}))
    pd.testing.assert_frame_equal(alone, among.iloc[[1]].reset_index(drop=True))
    want = expected_parts([datetime(2024, 3, 5, 14, 30, 15, 250000)])
    np.testing.assert_allclose(alone["when__timestamp"].to_numpy(), want["timestamp"], rtol=1e-15)


# ----- saving and loading -------------------------------------------------------------
def mixed(n: int = 60) -> pd.DataFrame:
    return pd.concat([people(n), dated(n).rename(columns={"x": "z"})], axis=1)


def test_the_plan_round_trips_through_json():
    pre, _ = fitted(mixed(), drop=["color"])
    state = json.loads(json.dumps(pre.to_dict()))
    assert state["plan"] == {
        "columns": ["name", "x", "color", "when", "z"], "drop": ["color"],
        "left_out": [{"name": "name", "reason": "identifier"}],
        "dates": [{"name": "when", "format": "%d/%m/%Y %H:%M", "parts": PARTS[:-2] + ["timestamp"]}]}
    again = Preprocessor.from_dict(state)
    assert again.to_dict() == pre.to_dict() and again.feature_names == ["x", "when", "z"]
    rows = mixed(7)
    np.testing.assert_array_equal(again.transform(rows), pre.transform(rows))


def test_a_manifest_from_before_the_plan_still_loads():
    frame = people().drop(columns="name")
    pre, _ = fitted(frame)
    state = pre.to_dict()
    del state["plan"]
    old = Preprocessor.from_dict(state)
    assert old.plan.keeps_all and old.plan.columns == [] and old.feature_names == ["x", "color"]
    np.testing.assert_array_equal(old.transform(frame), pre.transform(frame))


def _hostile(state: dict, change: str) -> dict:
    plan = state["plan"]
    if change == "not an object":
        state["plan"] = ["when"]
    elif change == "unknown field":
        plan["run"] = "rm -rf /"
    elif change == "repeated column":
        plan["columns"] = ["x", "x"]
    elif change == "drop not a column":
        plan["drop"] = ["nowhere"]
    elif change == "bad reason":
        plan["left_out"][0]["reason"] = "because"
    elif change == "long format":
        plan["dates"][0]["format"] = "%Y" * 40
    elif change == "format not text":
        plan["dates"][0]["format"] = 5
    elif change == "unknown part":
        plan["dates"][0]["parts"] = ["year", "__class__"]
    elif change == "no parts":
        plan["dates"][0]["parts"] = []
    elif change == "a column twice":
        plan["dates"][0]["name"] = "name"
    elif change == "a left-out column encoded":
        state["columns"][0]["name"] = "name"
    return state


@pytest.mark.parametrize("change", ["not an object", "unknown field", "repeated column", "drop not a column",
                                    "bad reason", "long format", "format not text", "unknown part", "no parts",
                                    "a column twice", "a left-out column encoded"])
def test_a_hostile_plan_is_refused(change):
    pre, _ = fitted(mixed(), drop=["color"])
    state = _hostile(json.loads(json.dumps(pre.to_dict())), change)
    with pytest.raises(TorchclfError, match=r"^invalid manifest: preprocess\.(plan|columns)"):
        Preprocessor.from_dict(state)


# ----- the front doors ------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_run(tmp_path_factory, no_pictures):
    folder = tmp_path_factory.mktemp("columns")
    n = 200
    frame = pd.concat([people(n, seed=4), dated(n, seed=4).rename(columns={"x": "junk1"})], axis=1)
    frame.insert(0, "id", np.arange(1, n + 1))
    frame["junk2"] = np.random.default_rng(4).normal(size=n)
    frame["y"] = np.where(frame["x"] + (frame["color"] == "red") > 0.5, "yes", "no")
    frame.to_csv(folder / "table.csv", index=False)
    code, _, err = run_cli("train", str(folder / "table.csv"), "--target", "y", "--drop", "color",
                           "--drop", "junk1,junk2", "--out", str(folder / "run"), *FAST)
    assert code == 0, err
    return folder, frame, err


def test_cli_drop_is_repeatable_and_takes_commas(table_run):
    folder, _, err = table_run
    manifest = json.loads((folder / "run" / "model.json").read_text())
    assert manifest["config"]["data"]["drop"] == ["color", "junk1", "junk2"]
    assert manifest["feature_names"] == ["x", "when"]
    plan = manifest["preprocess"]["plan"]
    assert plan["drop"] == ["color", "junk1", "junk2"]
    assert plan["left_out"] == [{"name": "id", "reason": "identifier"}, {"name": "name", "reason": "identifier"}]
    assert [d["name"] for d in plan["dates"]] == ["when"]
    assert "columns 'id' (a row number: " in err and "drop them yourself (--drop id --drop name; " in err


def test_the_reports_data_section_says_which_columns_the_model_used_and_why_others_not(table_run):
    import re

    from torchclf.report import _data_section

    folder, frame, _ = table_run
    manifest = json.loads((folder / "run" / "model.json").read_text())
    text = re.sub(r"<[^>]+>", " ", _data_section(manifest))
    parts = ", ".join(manifest["preprocess"]["plan"]["dates"][0]["parts"])
    cells = re.sub(r"\s+", " ", text)
    assert " input columns 7 " in cells and " used by the model 2 " in cells  # id, name, x, when, junk1, color, junk2
    assert f"Used: x, when (a date, as {len(parts.split(', '))} numbers: {parts})" in cells
    assert "Left out (a value per row, or free text: nothing a model can learn from): id (identifier), name " \
           "(identifier)" in cells
    assert "Dropped as asked: color, junk1, junk2" in cells


def test_cli_predicts_a_date_model_from_raw_rows_and_exports_it(table_run, tmp_path):
    import torchclf

    folder, frame, _ = table_run
    rows = frame[["when", "x"]].head(20)  # no id, name, color, junk or target: not needed
    rows.to_csv(tmp_path / "rows.csv", index=False)
    code, _, err = run_cli("predict", str(folder / "run"), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    expected = torchclf.load(folder / "run").predict_frame(pd.read_csv(tmp_path / "rows.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), expected, check_dtype=False)
    pytest.importorskip("onnxruntime")
    code, _, err = run_cli("export", str(folder / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 0 and "checked with onnxruntime on 40 test rows" in err and "labels identical" in err, err


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_serve_takes_a_date_column_as_text(table_run, backend):
    pytest.importorskip("starlette")
    pytest.importorskip("onnxruntime")
    import torchclf
    from torchclf import serve

    folder, frame, _ = table_run
    predictor = torchclf.load(folder / "run")
    served = serve.Served("dates", predictor, backend)
    assert (served.backend, served.note) == ("onnx" if backend == "auto" else "torch", "")
    assert served.features == [("x", "number"), ("when", "string")]
    schema = served.schema("/models/dates/predict")
    assert schema["features"] == [{"name": "x", "type": "number"},
                                  {"name": "when", "type": "string", "format": "date"}]
    records = frame[["x", "when"]].head(5).to_dict("records")
    labels, proba = served.predict(serve.request_columns(served, {"records": records}))
    assert labels == list(predictor.predict(frame.head(5)))
    np.testing.assert_allclose(proba, predictor.predict_proba(frame.head(5)), rtol=0, atol=1e-6)


def test_cli_refuses_a_drop_that_is_no_column_or_the_target(table_run):
    folder, _, _ = table_run
    code, _, err = run_cli("train", str(folder / "table.csv"), "--target", "y", "--drop", "colour", *FAST)
    assert code == 2 and err.strip().endswith("error: cannot drop 'colour': no such column in the training rows; "
                                              "similar: 'color'")
    code, _, err = run_cli("train", str(folder / "table.csv"), "--target", "y", "--drop", "y", *FAST)
    assert code == 2 and "error: --drop 'y': that is the target column, which is never a feature" in err


def test_the_estimator_drops_by_name_and_predicts_from_every_column(tmp_path):
    from torchclf import NeuralNetClassifier

    frame = people(80, seed=6)
    y = (frame["x"] > 0).astype(int).to_numpy()
    with pytest.warns(DataWarning, match="column 'name': 80 distinct values in 80 rows"):
        clf = NeuralNetClassifier(drop="color", max_iter=2, hidden_layer_sizes=(4,), random_state=0).fit(frame, y)
    assert clf.predictor_.preprocessor.feature_names == ["x"]
    assert clf.predictor_.config.data.drop == ("color",)
    assert clf.predict(frame).shape == (80,)
    loaded = NeuralNetClassifier.load(clf.save(tmp_path / "est"))
    assert loaded.drop == "color" and loaded.n_features_in_ == 3  # the parameter as it was given
    np.testing.assert_array_equal(loaded.predict_proba(frame), clf.predict_proba(frame))
    X = np.random.default_rng(0).normal(size=(30, 3))
    arrays = NeuralNetClassifier(drop=["x1"], max_iter=2, hidden_layer_sizes=(4,), random_state=0).fit(X, y[:30])
    assert arrays.predictor_.preprocessor.feature_names == ["x0", "x2"] and arrays.predict(X).shape == (30,)

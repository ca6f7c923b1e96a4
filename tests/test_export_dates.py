"""ONNX export of runs with date columns: the graph reads dates from text as the predictor does.

The date parts the graph computes are compared with the column plan's own
(``ColumnPlan.apply``) for many formats and awkward values; whole runs with
date columns are compared with ``Predictor.predict_proba`` in onnxruntime
(float32 and float64 networks, missing and unreadable dates, dates given as
values); what the graph cannot read is refused in one line; ``serve`` answers
a date run through onnxruntime.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torchclf
from torchclf import export
from torchclf.api import make_config
from torchclf.data.columns import PARTS, ColumnPlan
from torchclf.errors import TorchclfError

# Days that test the calendar: leap days (2000 is a leap year, 1900 and 2100 are not), the ends of years
# and months, the epoch and the days around it, far from it both ways.
EDGES = [datetime(1700, 3, 1), datetime(1899, 12, 31, 23, 59, 59), datetime(1900, 2, 28, 12), datetime(1900, 3, 1),
         datetime(1969, 12, 31, 23, 59, 59), datetime(1970, 1, 1), datetime(1970, 1, 1, 0, 0, 1),
         datetime(2000, 2, 29, 12, 30), datetime(2023, 12, 31, 23, 0), datetime(2024, 2, 29, 6, 7, 8),
         datetime(2024, 12, 31, 18, 45, 30), datetime(2068, 7, 4), datetime(2100, 3, 1, 1, 2, 3)]


def moments(n: int = 40, seed: int = 0, low: int = 1701, high: int = 2199) -> list[datetime]:
    """The edge days within [low, high] and ``n`` random moments of those years, to the microsecond."""
    rng = np.random.default_rng(seed)
    start, span = datetime(low, 1, 1), (datetime(high, 12, 31) - datetime(low, 1, 1)).total_seconds()
    drawn = [start + timedelta(seconds=float(s), microseconds=int(u))
             for s, u in zip(rng.integers(0, int(span), size=n), rng.integers(0, 1_000_000, size=n))]
    return [m for m in EDGES if low <= m.year <= high] + drawn


def graph_parts(fmt: str, values: list) -> np.ndarray:
    """Every date part of the text ``values``, as the exported graph computes it, of shape (n, len(PARTS))."""
    from onnx import TensorProto, helper

    g = export._Graph({"when"}, TensorProto.DOUBLE)
    g.op("Identity", export._date_parts(g, "when", fmt, list(PARTS)), out="parts")
    graph = helper.make_graph(g.nodes, "dates", [helper.make_tensor_value_info("when", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("parts", TensorProto.DOUBLE, ["n", len(PARTS)])],
                              g.constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", export.OPSET)])
    model.ir_version = export.IR_VERSION
    texts = np.array(["<missing>" if v is None else v for v in values], dtype=object)
    return export.session(model).run(["parts"], {"when": texts})[0]


def plan_parts(fmt: str, values: list) -> np.ndarray:
    """The same as the predictor computes them (the column plan), of shape (n, len(PARTS))."""
    plan = ColumnPlan.from_dict({"columns": ["when"], "dates": [{"name": "when", "format": fmt, "parts": list(PARTS)}]})
    out = plan.apply(pd.DataFrame({"when": pd.Series(values, dtype=object)}))
    return out[[f"when__{p}" for p in PARTS]].to_numpy(dtype=np.float64)


ISO_SHAPES = ["%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H"]
# Per format: texts the graph must read as the predictor does (one digit for a month, day or hour where
# strptime takes it, runs of spaces, ISO 8601 in a column of another format), then texts that are no date
# (no such day, hour or minute, the wrong separators, nothing), each a missing date for both.
CASES = {
    "%Y-%m-%d": (["2024-3-5", "2024-03-05 14:30", "2024-03-05T14:30:15.25"],
                 ["2023-02-29", "2024-04-31", "2024-13-01", "1999-12-31  23:59", "05-03-2024", "24-03-05", ""]),
    "%d/%m/%Y %H:%M": (["5/3/2024 4:03", "05/03/2024   14:30", "2024-03-05", "2024-03-05T14:30:15.500001"],
                       ["31/04/2024 10:00", "29/02/2023 10:00", "05/03/2024 24:00", "05/03/2024 10:60", "05/03/24 10:00",
                        "05/03/2024", "05/03/2024T10:00", "2024-2-29 7"]),
    "ISO8601": (["2024-3-5", "2024-03-05 7:5", "2024-03-05T14:30:15.123456789", "2024-03-05 14", "2024-03-05T14:30:5"],
                ["2024-02-30", "2024-03-05 24:00", "2024-03-05T14:60", "2024-03-05T1", "2024-03-05 14:30:60", "x"]),
    "%m/%d/%y": (["3/5/24", "12/31/68", "01/01/69", "2024-03-05"], ["13/01/24", "02/29/23", "3/5/2024", "3/5/4"]),
    "%Y/%m/%d %H:%M:%S.%f": (["2024/3/5 1:2:3.4", "2024/03/05 14:30:15.999999", "2024-03-05 14:30"],
                             ["2024/02/30 10:00:00.5", "2024/03/05 25:00:00.5", "05/03/2024 10:00:00.5"]),
    "at %d.%m.%Y!": (["at 5.3.2024!", "2024-03-05T06:00"], ["at 5.3.2024", "5.3.2024!", "at 31.11.2024!"]),
    # Text can have both shapes: "2024-05-13" is no date in %Y-%d-%m (month 13) but is May 13 in ISO 8601.
    "%Y-%d-%m": (["2024-13-05", "2024-05-13", "2024-12-31 10:00"], ["2024-31-02", "2024-00-10", "2024-31-12 10:00"]),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_the_graph_reads_every_date_part_as_the_column_plan(fmt):
    low, high = (1969, 2068) if "%y" in fmt else (1701, 2199)
    good, bad = CASES[fmt]
    shapes = ISO_SHAPES if fmt == "ISO8601" else [fmt]
    dated = [m.strftime(shapes[i % len(shapes)]) for i, m in enumerate(moments(low=low, high=high))]
    values = dated + good + bad + [None]
    expected = plan_parts(fmt, values)
    assert np.isnan(expected).all(axis=1).tolist() == [False] * (len(dated) + len(good)) + [True] * (len(bad) + 1)
    np.testing.assert_allclose(graph_parts(fmt, values), expected, rtol=0, atol=1e-9)


def test_parts_by_hand_for_a_leap_day_and_the_epoch():
    """2024-02-29 06:07:08.5 was a Thursday (3), day 60 of the year, 19,782.25496 days after 1970-01-01."""
    parts = dict(zip(PARTS, graph_parts("ISO8601", ["2024-02-29 06:07:08.5", "1970-01-01", "1969-12-31 18:00"]).T))
    assert [parts[p][0] for p in ("year", "month", "day", "weekday", "dayofyear", "hour", "minute")] == [
        2024, 2, 29, 3, 60, 6, 7]
    assert parts["timestamp"].tolist() == [19782 + (6 * 3600 + 7 * 60 + 8.5) / 86400, 0.0, -0.25]
    assert parts["weekday"][1:].tolist() == [3.0, 2.0] and parts["hour_sin"][1] == 0.0
    np.testing.assert_allclose(parts["month_cos"][0], np.cos(2 * np.pi / 12), rtol=0, atol=1e-15)


# ----- whole runs ---------------------------------------------------------------------
def dated_table(fmt: str, n: int = 150, seed: int = 1) -> pd.DataFrame:
    """Dates as text in ``fmt`` (a mix of precisions for ISO 8601) with a few missing, a number, a category."""
    rng = np.random.default_rng(seed)
    when = [datetime(2021, 1, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 800, size=n)]
    shapes = ["%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] if fmt == "ISO8601" else [fmt]
    text = np.array([w.strftime(shapes[i % len(shapes)]) for i, w in enumerate(when)], dtype=object)
    text[rng.random(n) < 0.08] = None
    x = rng.normal(size=n)
    shop = rng.choice(["north", "south", "east"], size=n)
    score = x + np.array([np.cos(w.month / 2) + (w.weekday() >= 5) for w in when]) + (shop == "north")
    return pd.DataFrame({"x": x, "when": text, "shop": shop, "y": np.where(score > 0.8, "high", "low")})


@pytest.fixture(scope="module")
def date_runs(tmp_path_factory, no_pictures) -> dict:
    out = {}
    for fmt in ("%Y-%m-%d", "%d/%m/%Y %H:%M", "ISO8601"):
        folder = tmp_path_factory.mktemp("dates") / "run"
        config = make_config(model={"hidden": (8,)}, train={"epochs": 5, "seed": 3})
        torchclf.train(dated_table(fmt), target="y", config=config, out=folder)
        out[fmt] = torchclf.load(folder)
    return out


def new_rows(fmt: str) -> pd.DataFrame:
    """Rows the run never saw: its dates, missing ones, ISO 8601 in another format's column, and no dates."""
    rows = dated_table(fmt, n=40, seed=7).drop(columns="y")
    rows.loc[[3, 4, 5], "when"] = [None, "no date at all", "2022-06-30T08:15:00"]
    rows.loc[6, "when"] = "31/02/2022 10:00" if fmt == "%d/%m/%Y %H:%M" else "2022-02-31"
    return rows


def assert_same(predictor, rows: pd.DataFrame, model=None) -> np.ndarray:
    sess = export.session(model if model is not None else export.to_onnx(predictor))
    labels, proba = sess.run(["label", "probabilities"], export.onnx_inputs(predictor, rows))
    np.testing.assert_allclose(proba, predictor.predict_proba(rows), rtol=0, atol=1e-5)
    assert labels.tolist() == [str(v) for v in predictor.predict(rows)]
    return proba


@pytest.mark.parametrize("fmt", ["%Y-%m-%d", "%d/%m/%Y %H:%M", "ISO8601"])
def test_a_date_run_matches_the_predictor_in_float32_and_float64(date_runs, fmt):
    predictor = date_runs[fmt]
    assert [(d.format, len(d.parts)) for d in predictor.preprocessor.plan.dates] == [
        (fmt, 10 if fmt == "%Y-%m-%d" else 14)]
    rows = new_rows(fmt)
    encoded = predictor.encode(rows).numpy()
    missing = predictor.preprocessor.output_names.index("when__timestamp__missing")
    assert encoded[[3, 4, 5, 6], missing].tolist() == [1.0, 1.0, 0.0, 1.0]  # missing, no date, ISO 8601, no such day
    proba = assert_same(predictor, rows)
    assert len({tuple(np.round(p, 6)) for p in proba}) > 30  # the dates move the answers
    assert_same(predictor, export.with_gaps(predictor, rows))
    predictor.model.double()
    try:
        model = export.to_onnx(predictor)
        assert {i.data_type for i in model.graph.initializer if "weight" in i.name} == {onnx.TensorProto.DOUBLE}
        assert_same(predictor, rows, model)
    finally:
        predictor.model.float()


def test_the_graph_takes_the_date_as_one_text_input(date_runs):
    predictor = date_runs["%d/%m/%Y %H:%M"]
    model = export.to_onnx(predictor)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("x", onnx.TensorProto.DOUBLE), ("when", onnx.TensorProto.STRING), ("shop", onnx.TensorProto.STRING)]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["torchclf.features"])[1] == {"name": "when", "type": "string", "format": "date",
                                                        "date_format": "%d/%m/%Y %H:%M"}
    sess = export.session(model)
    labels, proba = sess.run(["label", "probabilities"], export.onnx_inputs(predictor, new_rows("ISO8601").iloc[:0]))
    assert labels.shape == (0,) and proba.shape == (0, 2)


def test_date_values_are_given_to_the_graph_as_iso_text(date_runs):
    """A frame holding date values, not text: written in ISO 8601, which every date column's graph reads."""
    predictor = date_runs["%d/%m/%Y %H:%M"]
    rows = dated_table("%d/%m/%Y %H:%M", n=20, seed=9).drop(columns="y")
    rows["when"] = pd.to_datetime(rows["when"], format="%d/%m/%Y %H:%M")
    assert rows["when"].isna().sum() == 2
    feeds = export.onnx_inputs(predictor, rows)
    assert feeds["when"][0] == rows["when"].iloc[0].strftime("%Y-%m-%dT%H:%M:%S.000000")
    assert_same(predictor, rows)
    with pytest.raises(TorchclfError, match="dates with a time zone cannot be given to the ONNX graph"):
        export.onnx_inputs(predictor, rows.assign(when=rows["when"].dt.tz_localize("UTC")))


def test_a_format_the_graph_cannot_read_is_refused_in_one_line(tmp_path, no_pictures):
    rng = np.random.default_rng(2)
    days = [datetime(2022, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 600, size=80)]
    frame = pd.DataFrame({"x": rng.normal(size=80), "y": rng.choice(["a", "b"], size=80)})
    config = make_config(model={"hidden": (4,)}, train={"epochs": 1})
    for fmt, values, why in [
        ("%d %b %Y", [d.strftime("%d %b %Y") for d in days], "format '%d %b %Y': %b is not read"),
        (None, pd.to_datetime(days), "training had date values, not text in a format"),
    ]:
        torchclf.train(frame.assign(day=values), target="y", config=config, out=tmp_path / str(fmt))
        predictor = torchclf.load(tmp_path / str(fmt))
        assert predictor.preprocessor.plan.dates[0].format == fmt
        with pytest.raises(TorchclfError) as err:
            export.to_onnx(predictor)
        assert str(err.value) == (
            f"export: date column 'day' cannot be read by the ONNX graph ({why}); export reads date formats made "
            "of %Y %y %m %d %H %M %S %f with text between the fields, and ISO 8601; predict with torchclf (or "
            "serve --backend torch), or re-train with the dates as text in such a format (or --drop the column)")


@pytest.mark.parametrize("fmt, why", [("%Y%m%d", "two of its fields have no text between them"),
                                      ("%d/%m", "it has no year"), ("%Y-%m-%d %I:%M %p", "%I is not read"),
                                      ("%Y-%m-%dT%H:%M:%S%z", "%z is not read"), ("%Y-%m-%d 1%H", "its text holds digits"),
                                      ("%Y-%m-%d %", "a lone % is not read"), ("%Y/%y", "it gives a field twice")])
def test_what_a_format_may_hold(fmt, why):
    with pytest.raises(ValueError, match=f"^{why}$"):
        export._date_tokens(fmt)


def test_serve_answers_a_date_run_through_onnxruntime(date_runs):
    pytest.importorskip("starlette")
    from torchclf import serve

    predictor = date_runs["ISO8601"]
    served = serve.Served("dates", predictor, backend="onnx")
    assert (served.backend, served.note) == ("onnx", "")
    rows = new_rows("ISO8601")
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
               for r in rows.to_dict("records")]
    labels, proba = served.predict(serve.request_columns(served, {"records": records}))
    assert labels == list(predictor.predict(rows))
    np.testing.assert_allclose(proba, predictor.predict_proba(rows), rtol=0, atol=1e-5)

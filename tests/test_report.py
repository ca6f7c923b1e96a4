"""report.html (every section, every picture embedded, nothing external), explain, and the plots behind them."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import count_axes, run_cli
from torchclf import api, plots
from torchclf.report import SECTIONS


class ReportParser(HTMLParser):
    """Collects each <section id=...>'s text and <img> sources, and every external reference."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.external: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.sections[self.current] = {"text": "", "imgs": [], "h2": False}
        for key in ("src", "href"):
            value = a.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(f"{tag} {key}={value[:60]}")
        if tag in ("link", "script", "iframe", "object", "embed"):
            self.external.append(tag)
        if self.current is None:
            return
        if tag == "img":
            self.sections[self.current]["imgs"].append(a.get("src", ""))
        elif tag == "h2":
            self.sections[self.current]["h2"] = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self.current is not None:
            self.tables.setdefault(self.current, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self.current is not None:
            self.sections[self.current]["text"] += data
        if self._cell is not None:
            self._cell.append(data)


def parse(path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def decode_png(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    raw = base64.b64decode(src.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(raw), format="png")


def assert_picture(img: np.ndarray, min_w: int = 300, min_h: int = 200) -> None:
    assert img.shape[1] >= min_w and img.shape[0] >= min_h, img.shape
    assert img[..., :3].std() > 0.03, "picture is blank"


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runs") / "circles"
    config = api.make_config(model={"hidden": (32, 32)}, train={"epochs": 25, "batch_size": 128})
    result = api.train("circles", config=config, out=out)
    return out, result


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "iris"
    result = api.train("iris", config=api.make_config(model={"hidden": (16,)}, train={"epochs": 40}), out=out)
    return out, result


def test_train_writes_a_report_with_every_section_and_embedded_images(binary_run):
    out, result = binary_run
    report = parse(out / "report.html")
    assert [sid for sid, _ in SECTIONS] == list(report.sections)
    for sid, heading in SECTIONS:
        assert report.sections[sid]["h2"], sid
        assert heading.split()[0] in report.sections[sid]["text"]
    assert report.external == []
    # Binary, two features: confusion matrix, learning curves, ROC/PR and boundary are all pictures.
    for sid in ("confusion-matrix", "learning-curves", "roc-pr", "decision-boundary"):
        assert len(report.sections[sid]["imgs"]) == 1, sid
        assert_picture(decode_png(report.sections[sid]["imgs"][0]))
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text


def test_report_tables_hold_the_runs_numbers(binary_run):
    out, result = binary_run
    report = parse(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    header, *rows = report.tables["metrics"]
    by_split = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by_split) == {"train", "validation", "test"}
    assert float(by_split["test"]["accuracy"]) == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    per_class = {r[0]: r for r in report.tables["per-class"][1:]}
    assert set(per_class) == {"0", "1"}
    assert float(per_class["1"][3]) == pytest.approx(metrics["test"]["per_class"]["1"]["f1"], abs=1e-4)
    cm = [[int(v) for v in r[1:]] for r in report.tables["confusion-matrix"][1:]]
    assert cm == metrics["test"]["confusion_matrix"]
    data_text = report.sections["data"]["text"]
    assert "1000" in data_text and "x0" in data_text and "0.5000" in data_text  # rows, columns, balance
    config_rows = {r[0]: r[1] for r in report.tables["configuration"][1:]}
    assert config_rows["train.epochs"] == "25" and config_rows["model.hidden"] == "32,32"


def test_explain_section_follows_sigmoid_and_threshold(binary_run):
    out, _ = binary_run
    report = parse(out / "report.html")
    header, *rows = report.tables["explain"]
    assert header[:3] == ["x0", "x1", "logit"] and header[-2:] == ["predicted", "true"]
    assert len(rows) == 5
    temperature = json.loads((out / "model.json").read_text())["calibration"]["temperatures"][0]
    for row in rows:
        values = dict(zip(header, row))
        p1 = 1 / (1 + np.exp(-float(values["logit"]) / temperature))  # the run's calibration, as predict uses it
        assert float(values["p(1)"]) == pytest.approx(p1, abs=2e-4)
        assert float(values["p(0)"]) == pytest.approx(1 - p1, abs=2e-4)
        assert values["predicted"] == ("1" if p1 >= 0.5 else "0")
    assert "sigmoid" in report.sections["explain"]["text"]


def test_explain_rows_multiclass_softmax_argmax(iris_run):
    from torchclf.explain import explain_rows, held_out_rows, pick_rows

    _, result = iris_run
    predictor = result.predictor
    rows, where = held_out_rows(predictor)
    # The run's test split is rebuilt from its source: the very rows it was scored on.
    pd.testing.assert_frame_equal(rows.features, result.splits.test.features)
    features, target = pick_rows(rows, 6)
    assert target.nunique() == 3  # a handful of rows still shows every class
    ex = explain_rows(predictor, features, target)
    assert ex.logits.shape == (6, 3) and ex.probabilities.shape == (6, 3)
    temperature = predictor.calibration.temperatures[0]
    np.testing.assert_allclose(ex.probabilities, torch.softmax(torch.from_numpy(ex.logits) / temperature, 1).numpy(),
                               atol=1e-6)
    assert [predictor.classes[i] for i in ex.probabilities.argmax(1)] == ex.predicted
    assert ex.predicted == predictor.predict(features)
    assert "softmax" in ex.rule and "test split" in where


def test_report_features_option_draws_beyond_two_features(iris_run):
    out, _ = iris_run
    report = parse(out / "report.html")
    # Four features: no boundary until two columns are picked.
    assert report.sections["decision-boundary"]["imgs"] == []
    assert "--features" in report.sections["decision-boundary"]["text"]
    code, stdout, stderr = run_cli("report", str(out), "--features", "petal length (cm),petal width (cm)",
                                   "--resolution", "60")
    assert code == 0, stderr
    report = parse(out / "report.html")
    section = report.sections["decision-boundary"]
    assert "60x60" in section["text"] and "training median" in section["text"]
    assert_picture(decode_png(section["imgs"][0]))
    assert len(report.sections["roc-pr"]["imgs"]) == 1  # the test split was rebuilt from "iris"
    assert report.external == []


def test_report_errors_are_one_line(iris_run):
    out, _ = iris_run
    code, _, stderr = run_cli("report", str(out), "--features", "sepal length (cm),nope")
    assert code == 2 and stderr.count("\n") == 1 and "nope" in stderr and "petal width (cm)" in stderr
    code, _, stderr = run_cli("report", str(out), "--features", "a")
    assert code == 2 and "two column names" in stderr
    code, _, stderr = run_cli("report", str(out), "--resolution", "3", "--features",
                              "sepal length (cm),sepal width (cm)")
    assert code == 2 and "--resolution" in stderr


def test_report_without_a_rereadable_source_keeps_every_section(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120), "c": rng.normal(size=120)})
    frame["y"] = np.where(frame["a"] + frame["b"] > 0, "yes", "no")
    out = tmp_path / "frame-run"
    api.train(frame, "y", config=api.make_config(model={"hidden": (8,)}, train={"epochs": 5}), out=out)
    (out / "report.html").unlink()
    code, stdout, stderr = run_cli("report", str(out))
    assert code == 0 and "warning" in stderr and "DATA" in stderr
    report = parse(out / "report.html")
    assert list(report.sections) == [sid for sid, _ in SECTIONS]
    assert "torchclf report RUN DATA" in report.sections["roc-pr"]["text"]
    # Given the labelled rows as a file, the curves and examples come back.
    frame.to_csv(tmp_path / "rows.csv", index=False)
    code, _, stderr = run_cli("report", str(out), str(tmp_path / "rows.csv"), "--rows", "3")
    assert code == 0, stderr
    report = parse(out / "report.html")
    assert len(report.sections["roc-pr"]["imgs"]) == 1
    assert len(report.tables["explain"]) == 1 + 3


def test_explain_cli(binary_run, iris_run, tmp_path):
    out, _ = binary_run
    code, stdout, stderr = run_cli("explain", str(out), "--rows", "4")
    assert code == 0, stderr
    assert "sigmoid" in stdout and "logit" in stdout and "4 rows of circles (test split)" in stdout
    iris_out, result = iris_run
    code, stdout, _ = run_cli("explain", str(iris_out), "--rows", "2")
    assert code == 0 and stdout.count("predicted:") == 2 and "softmax" in stdout
    # Unlabelled rows from a file: predictions without a "true" column.
    result.splits.test.features.head(3).to_csv(tmp_path / "new.csv", index=False)
    code, stdout, _ = run_cli("explain", str(iris_out), str(tmp_path / "new.csv"))
    assert code == 0 and stdout.count("predicted:") == 3 and "true:" not in stdout


def test_the_learning_curves_say_why_the_training_loss_can_lie_above_the_validation_loss(binary_run, tmp_path):
    out, result = binary_run  # the defaults' smoothing (0.1) and dropout (0.2)
    floor = result.predictor.task.smoothed_loss_floor(0.1)
    assert parse(out / "report.html").sections["learning-curves"]["text"].endswith(
        f"The training loss is what the network learns from: it is computed against targets smoothed by 0.1, so "
        f"it cannot fall below {floor:.3f} (their entropy), and it is averaged over each epoch's steps with "
        "dropout 0.2 on. The validation loss, measured after each epoch, has neither, so the training curve can "
        "lie above it with nothing wrong.")
    captions = {}
    for name, smoothing, dropout in (("plain", 0.0, 0.0), ("dropout", 0.0, 0.3)):
        config = api.make_config(model={"hidden": (8,), "dropout": dropout},
                                 train={"epochs": 2, "label_smoothing": smoothing})
        api.train("circles:n_samples=200", config=config, out=tmp_path / name)
        captions[name] = parse(tmp_path / name / "report.html").sections["learning-curves"]["text"]
    assert "training loss" not in captions["plain"]
    assert captions["dropout"].endswith("The training loss is what the network learns from: it is averaged over "
                                        "each epoch's steps with dropout 0.3 on. The validation loss, measured "
                                        "after each epoch, has no dropout, so the training curve can lie above it "
                                        "with nothing wrong.")


def test_multilabel_report_says_what_does_not_apply(tmp_path):
    out = tmp_path / "ml"
    api.train("multilabel:n_samples=300", config=api.make_config(model={"hidden": (16,)}, train={"epochs": 5}), out=out)
    report = parse(out / "report.html")
    assert list(report.sections) == [sid for sid, _ in SECTIONS]
    assert "not defined for multilabel" in report.sections["confusion-matrix"]["text"]
    assert "not drawn for multilabel" in report.sections["decision-boundary"]["text"]
    assert len(report.sections["roc-pr"]["imgs"]) == 1


def test_a_failing_plot_does_not_lose_the_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "learning_curves", broken)
    result = api.train("circles:n_samples=200", config=api.make_config(model={"hidden": (4,)}, train={"epochs": 2}))
    with pytest.warns(UserWarning, match="the run is saved but plots"):
        api.write_run(result, tmp_path / "run")
    assert (tmp_path / "run" / "model.json").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    assert api.load(tmp_path / "run").predict(pd.DataFrame({"x0": [0.0], "x1": [0.0]}))
    # The report is still written; only the broken picture's section says what happened.
    report = parse(tmp_path / "run" / "report.html")
    assert "could not be built (RuntimeError: no fonts)" in report.sections["learning-curves"]["text"]
    assert len(report.sections["roc-pr"]["imgs"]) == 1


# ----- the pictures' content -------------------------------------------------------------


def test_roc_pr_curves_two_panels_and_undefined_case(tmp_path, monkeypatch):
    seen = count_axes(monkeypatch)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    proba = rng.dirichlet(np.ones(3), 150) * 0.5 + np.eye(3)[y] * 0.5
    path = plots.roc_pr_curves(y, proba, ["a", "b", "c"], tmp_path / "curves.png")
    assert seen["curves.png"] == 2
    assert_picture(mpimg.imread(path), 600, 250)
    assert plots.roc_pr_curves(np.zeros(10, int), np.full((10, 2), 0.5), ["a", "b"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_run_with_a_separate_test_file_is_explained_and_reported_from_its_spec(tmp_path):
    """`--test FILE` used to go unrecorded: explain failed and the report left out its curves."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=160), "b": rng.normal(size=160)})
    frame["y"] = np.where(frame["a"] - frame["b"] > 0, "up", "down")
    frame.iloc[:120].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[120:].to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "run"
    code, _, stderr = run_cli("train", str(tmp_path / "train.csv"), "-t", "y", "--test", str(tmp_path / "test.csv"),
                              "--epochs", "4", "--hidden", "8", "--out", str(out), "-q")
    assert code == 0, stderr
    spec = json.loads((out / "model.json").read_text())["extra"]["spec"]
    assert spec["test"]["path"] == str((tmp_path / "test.csv").resolve()) and len(spec["test"]["sha256"]) == 64
    code, stdout, stderr = run_cli("explain", str(out), "--rows", "3")
    assert code == 0, stderr
    assert "the run's test file" in " ".join(stdout.split()) and stdout.count("│ up ") + stdout.count("│ down ") >= 3
    (out / "report.html").unlink()
    code, _, stderr = run_cli("report", str(out), "--rows", "2")
    assert code == 0 and "warning" not in stderr, stderr
    report = parse(out / "report.html")
    assert len(report.sections["roc-pr"]["imgs"]) == 1 and len(report.tables["explain"]) == 1 + 2
    # The test file changed since: the run says so instead of using other rows.
    with open(tmp_path / "test.csv", "a", encoding="utf-8") as fh:
        fh.write("0.5,0.5,up\n")
    code, _, stderr = run_cli("explain", str(out))
    assert code == 2 and "has changed since the run trained on it" in stderr and "DATA" in stderr


def test_many_classes_show_the_confusion_matrix_as_a_picture_only(tmp_path):
    from torchclf import report

    k = report.MAX_TABLE_CLASSES + 1
    cm = (np.eye(k, dtype=int) * 5 + 1).tolist()
    html = report._confusion_section({"test": {"confusion_matrix": cm}}, [f"c{i}" for i in range(k)], tmp_path, tmp_path)
    parser = ReportParser()
    parser.feed(f'<section id="confusion-matrix">{html}</section>')
    assert "confusion-matrix" not in parser.tables  # no k*k cells of HTML
    assert len(parser.sections["confusion-matrix"]["imgs"]) == 1
    assert f"{k} classes: the counts are in metrics.json (test.confusion_matrix)" in html
    small = report._confusion_section({"test": {"confusion_matrix": cm[:3]}}, ["a", "b", "c"], tmp_path, tmp_path)
    assert small.count("<tr>") == 1 + 3


def test_the_metrics_section_says_when_the_train_split_was_sampled():
    from torchclf import report

    metrics = {"train": {"n_samples": 100_000, "accuracy": 0.9, "sampled": {"rows": 100_000, "of": 3_500_000,
                                                                            "seed": 2}},
               "test": {"n_samples": 1_000_000, "accuracy": 0.89}}
    html = report._metrics_section(metrics, "multiclass")
    assert "train: scored on a seeded sample of 100,000 of its 3,500,000 rows" in html
    assert "test: scored" not in html


def test_the_configuration_section_shows_the_threads_training_used():
    from torchclf import report

    html = report._config_section({"config": {}, "extra": {"threads": {"threads": 1, "reason": "requested 1"}}})
    assert "<td class=\"l\">threads</td><td class=\"l\">1 (requested 1)</td>" in html

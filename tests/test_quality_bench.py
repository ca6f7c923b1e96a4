"""The quality benchmark's plumbing: its tables, scores, results cache and docs block (no real contender runs)."""

from __future__ import annotations

import importlib.util
import json
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from benchmarks import quality
from benchmarks import quality_tables as qt


def test_highcard_table_has_the_columns_categories_and_missing_values_it_claims():
    frame = qt.highcard_table(40, n=3000, seed=3)
    assert list(frame.columns) == ["item", "x0", "x1", "x2", "x3", "bought"]
    assert frame["item"].nunique() == 40  # every one of 40 categories occurs in 3,000 rows
    assert set(frame["item"].dropna().str.len()) == {9} and frame["item"].dropna().str.startswith("item").all()
    assert set(frame["bought"]) == {"yes", "no"}
    assert frame["item"].isna().sum() == 54 and frame["x3"].isna().sum() == 150
    assert frame.drop(columns=["item", "x3"]).notna().all().all()
    pd.testing.assert_frame_equal(frame, qt.highcard_table(40, n=3000, seed=3))
    # The category carries the signal: its rows' label rate spreads far beyond what chance gives.
    rate = (frame["bought"] == "yes").groupby(frame["item"]).mean()
    assert rate.max() - rate.min() > 0.6


def test_multilabel_mixed_table_has_four_indicator_labels_and_mixed_features():
    frame = qt.multilabel_mixed_table(n=500, seed=2)
    assert list(frame.columns) == ["age", "hours", "region", "device", "sessions", *qt.MULTILABEL_TAGS]
    assert frame[qt.MULTILABEL_TAGS].isin([0, 1]).all().all()
    assert frame[qt.MULTILABEL_TAGS].sum().gt(0).all()
    assert frame["hours"].isna().any() and frame["region"].isna().any()
    assert set(frame["device"]) == {"phone", "tablet", "desktop"}


def test_load_returns_the_builtin_and_generated_tables_as_datasets():
    iris = qt.load("iris")
    assert (iris.n_rows, iris.features.shape[1], iris.name) == (150, 4, "iris")
    multilabel = qt.load("multilabel")
    assert list(multilabel.target.columns) == [f"label_{i}" for i in range(5)]
    mixed = qt.load("mixed")
    assert (mixed.n_rows, list(mixed.features.columns)) == (4000, ["age", "income", "city", "plan", "visits"])
    assert sorted(mixed.target.unique()) == ["churn", "stay", "upgrade"]
    assert {t.kind for t in qt.TABLES.values()} == {qt.BUILTIN, qt.GENERATED, qt.REAL}
    assert len(qt.TABLES) >= 12


REAL = [("penguins", 344, 7, 3), ("diamonds", 53_940, 9, 5), ("cars", 406, 8, 3), ("seattle_weather", 1_461, 5, 5)]


@pytest.mark.parametrize(("name", "rows", "columns", "classes"), REAL)
def test_real_tables_are_read_from_their_installed_package(name, rows, columns, classes):
    table = qt.TABLES[name]
    if importlib.util.find_spec(table.package) is None:
        pytest.skip(f"{table.package} is not installed (the bench extra)")
    dataset = qt.load(name)
    assert (dataset.n_rows, dataset.features.shape[1], dataset.target.nunique()) == (rows, columns, classes)
    assert table.kind == qt.REAL and table.source.startswith(table.package)


def test_package_file_names_a_missing_package():
    with pytest.raises(ModuleNotFoundError, match="not_a_package_here is not installed"):
        qt.package_file("not_a_package_here", "data.csv")


def test_score_matches_scikit_learn_for_single_label():
    from sklearn.metrics import accuracy_score, log_loss

    y = pd.Series(["b", "a", "c", "b"])
    proba = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    classes = np.array(["a", "b", "c"])
    got = quality.score(y, proba, classes[proba.argmax(axis=1)], classes)
    assert got == pytest.approx({"accuracy": accuracy_score(y, classes[proba.argmax(axis=1)]),
                                 "log_loss": log_loss(y, proba, labels=classes)})
    assert got["accuracy"] == 0.75


def test_score_clips_and_counts_every_label_for_multilabel():
    Y = pd.DataFrame({"x": [1, 0], "y": [0, 1]})
    proba = np.array([[0.9, 0.0], [0.2, 0.6]])  # the 0.0 is a sure and right "no"
    got = quality.score(Y, proba, (proba >= 0.5).astype(int), None)
    expected = -np.mean(np.log([0.9, 1.0, 0.8, 0.6]))
    assert got == pytest.approx({"accuracy": 1.0, "log_loss": expected})
    wrong = quality.score(Y, np.array([[0.0, 0.0], [0.2, 0.6]]), np.array([[0, 0], [0, 1]]), None)
    assert wrong == pytest.approx({"accuracy": 0.5, "log_loss": -np.mean(np.log([quality.CLIP, 1.0, 0.8, 0.6]))})


class Prior:
    """A stand-in contender: predicts the training rows' class frequencies and counts its fits."""

    fits: ClassVar[list] = []

    def __init__(self, X, y, X_val, y_val, seed):
        Prior.fits.append((len(X), None if X_val is None else len(X_val), getattr(y, "name", None), seed))
        counts = pd.Series(y).value_counts(normalize=True).sort_index()
        self.classes_, self.p = counts.index.to_numpy(), counts.to_numpy()

    def predict_proba(self, X):
        return np.tile(self.p, (len(X), 1))


@pytest.fixture
def prior(monkeypatch):
    Prior.fits = []
    monkeypatch.setitem(quality.CONTENDERS, "prior", quality.Contender("prior", "Prior", "sklearn", Prior))
    return quality.CONTENDERS["prior"]


def test_run_contender_trains_on_train_plus_validation_and_per_label(prior):
    table = qt.load("mixed")
    splits = quality.split_dataset(table, seed=4)
    got = quality.run_contender(prior, splits, seed=4)
    assert Prior.fits == [(3200, None, "label", 4)]  # 70% train + 10% validation
    train = pd.concat([splits.train.target, splits.validation.target])
    p = train.value_counts(normalize=True)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log(p[splits.test.target].to_numpy())))
    assert got["accuracy"] == pytest.approx((splits.test.target == p.idxmax()).mean())

    Prior.fits = []
    tags = quality.split_dataset(qt.load("multilabel"), seed=1)
    quality.run_contender(prior, tags, seed=1)
    assert Prior.fits == [(800, None, f"label_{i}", 1) for i in range(5)]


def test_results_cache_round_trips_continues_and_reruns(prior, tmp_path, capsys):
    results = tmp_path / "results" / "quality.json"
    argv = ["--tables", "iris", "--models", "prior", "--results", str(results)]
    assert quality.main([*argv, "--seeds", "2"]) == 0
    assert len(Prior.fits) == 3  # the untimed warm-up, then seeds 0 and 1
    stored = quality.read_results(results)
    assert sorted(stored) == ["iris|0|prior", "iris|1|prior"]
    assert stored["iris|0|prior"]["test_rows"] == 30 and stored["iris|0|prior"]["accuracy"] == pytest.approx(1 / 3)
    quality.write_results(results, stored)
    assert quality.read_results(results) == stored

    Prior.fits = []
    assert quality.main([*argv, "--seeds", "3"]) == 0  # continues: only seed 2 is new
    assert [f[3] for f in Prior.fits] == [0, 2]
    Prior.fits = []
    assert quality.main([*argv, "--seeds", "3", "--rerun", "prior"]) == 0
    assert [f[3] for f in Prior.fits] == [0, 0, 1, 2]
    assert "| iris | built-in | **0.3333 (0.3333)** |" in capsys.readouterr().out


def test_write_puts_the_tables_between_the_markers_and_keeps_the_prose(tmp_path, capsys):
    results, doc = tmp_path / "quality.json", tmp_path / "quality.md"
    record = {"accuracy": 0.9, "log_loss": 0.25, "seconds": 2.0, "cpu_seconds": 1.5, "test_rows": 30,
              "version": "x", "date": "d"}
    quality.write_results(results, {"iris|0|logreg": record, "iris|1|logreg": {**record, "accuracy": 0.8}})
    doc.write_text(f"# Title\n\nprose before\n\n{quality.BEGIN}\nold tables\n{quality.END}\n\nprose after\n")
    argv = ["--tables", "iris", "--models", "logreg", "--seeds", "2", "--results", str(results), "--doc", str(doc)]
    assert quality.main([*argv, "--write"]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n" + quality.BEGIN + "\n### Tables\n")
    assert text.endswith(quality.END + "\n\nprose after\n") and "old tables" not in text
    assert "| iris | built-in | **0.8500 (0.8000)** |" in text
    assert "| iris | built-in | 0.2500 |" in text and "| iris | 150 | 2.00 (1.50) |" in text
    assert "- iris: no torchclf result" in text


def test_write_appends_a_marked_block_to_a_page_without_markers(tmp_path):
    doc = tmp_path / "quality.md"
    doc.write_text("# Old page\n")
    quality.write_doc(doc, "tables\n")
    assert doc.read_text() == f"# Old page\n\n{quality.BEGIN}\ntables\n{quality.END}\n"
    quality.write_doc(doc, "new\n")
    assert doc.read_text() == f"# Old page\n\n{quality.BEGIN}\nnew\n{quality.END}\n"


def test_variants_are_parsed_with_train_flags_and_fingerprinted():
    assert quality.parse_variants(["short:--epochs 3", "wide: --hidden 64,64"]) == {
        "torchclf:short": "--epochs 3", "torchclf:wide": "--hidden 64,64"}
    with pytest.raises(SystemExit, match="expected NAME:FLAGS"):
        quality.parse_variants(["--epochs 3"])
    assert quality.torchclf_config("--epochs 3", 7).train.epochs == 3
    assert quality.torchclf_config("--epochs 3", 7).train.seed == 7
    assert quality.recipe(None) == quality.recipe(None) != quality.recipe("--epochs 3")


def test_torchclf_row_scores_the_same_test_rows_as_the_contenders():
    dataset = qt.load("iris")
    splits = quality.split_dataset(dataset, seed=2)
    got = quality.run_torchclf(dataset, splits, 2, "--epochs 3")
    import torchclf

    again = torchclf.train(dataset, config=quality.torchclf_config("--epochs 3", 2))
    assert got["accuracy"] == pytest.approx(again.metrics["test"]["accuracy"], abs=1e-6)
    assert json.dumps(got)  # plain numbers, ready for the results file

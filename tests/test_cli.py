"""The command line, in-process (its real processes are in test_startup.py)."""

import json

import pandas as pd
import pytest
from conftest import run_cli

FAST = ["--epochs", "20", "--hidden", "16", "--patience", "0", "--quiet"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame({
        "size": rng.normal(size=n),
        "shape": rng.choice(["round", "square"], size=n),
        "weight": rng.normal(size=n),
    })
    frame["fruit"] = np.where(frame["size"] + (frame["shape"] == "round") > 0.5, "apple", "pear")
    frame.to_csv(folder / "fruit.csv", index=False)
    code, out, err = run_cli("train", str(folder / "fruit.csv"), "--target", "fruit", "--out", str(folder / "run"), *FAST)
    assert code == 0, err
    return folder, out


def printed_table(out: str) -> dict[str, dict[str, str]]:
    """The metrics table of `torchclf train` as {split: {metric: printed text}}."""
    lines = out.splitlines()
    header = next(line for line in lines if "split" in line)
    names = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in lines if line.startswith("│")]
    return {row[0]: dict(zip(names[1:], row[1:])) for row in rows}


def test_train_prints_the_metrics_of_the_run_folder(csv_run):
    folder, out = csv_run
    assert f"run folder: {folder / 'run'}" in out
    saved = json.loads((folder / "run" / "metrics.json").read_text())
    table = printed_table(out)
    assert list(table) == ["train", "validation", "test"]
    for split, shown in table.items():
        assert list(shown) == ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"]
        assert shown == {name: f"{saved[split][name]:.4f}" for name in shown}, split
    assert (folder / "run" / "plots" / "learning_curves.png").stat().st_size > 1000


def test_predict_writes_one_row_per_input_row_in_order(csv_run):
    folder, _ = csv_run
    code, _, err = run_cli("predict", str(folder / "run"), str(folder / "fruit.csv"), "--out", str(folder / "p.csv"))
    assert code == 0, err
    pred = pd.read_csv(folder / "p.csv")
    source = pd.read_csv(folder / "fruit.csv")
    assert list(pred.columns) == ["prediction", "proba_apple", "proba_pear"]
    assert len(pred) == len(source)
    assert (pred["prediction"] == source["fruit"]).mean() > 0.8  # order preserved
    assert (pred["prediction"] == pred[["proba_apple", "proba_pear"]].idxmax(axis=1).str[6:]).all()


def test_predict_to_stdout_ignores_extra_columns(csv_run):
    folder, _ = csv_run
    code, out, _ = run_cli("predict", str(folder / "run"), str(folder / "fruit.csv"))
    assert code == 0 and out.splitlines()[0] == "prediction,proba_apple,proba_pear"


def test_evaluate_json_matches_the_test_metrics_format(csv_run):
    folder, _ = csv_run
    code, out, _ = run_cli("evaluate", str(folder / "run"), str(folder / "fruit.csv"), "--json")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["n_samples"] == 200
    from sklearn.metrics import accuracy_score

    import torchclf

    frame = pd.read_csv(folder / "fruit.csv")
    predicted = torchclf.load(folder / "run").predict(frame)
    assert metrics["accuracy"] == round(accuracy_score(frame["fruit"], predicted), 6)
    assert metrics["accuracy"] > 0.8  # and the model learned the rule


def test_missing_feature_column_is_named(csv_run, tmp_path):
    folder, _ = csv_run
    pd.read_csv(folder / "fruit.csv").drop(columns="weight").to_csv(tmp_path / "x.csv", index=False)
    code, _, err = run_cli("predict", str(folder / "run"), str(tmp_path / "x.csv"))
    assert code == 2 and "missing feature column(s) 'weight'" in err and "Traceback" not in err


def test_existing_output_folder_is_not_overwritten(csv_run):
    folder, _ = csv_run
    before = sorted(p.name for p in (folder / "run").iterdir())
    code, _, err = run_cli("train", "moons", "--out", str(folder / "run"), *FAST)
    assert code == 2 and "already exists and is not empty" in err
    assert sorted(p.name for p in (folder / "run").iterdir()) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no/such.csv", "--target", "y"], "no such file"),
        (["train", "FILE", "--target", "nope"], "target column(s) ['nope'] not found"),
        (["train", "FILE"], "no target column given; pass --target COL (columns are: a, y)"),
        (["train", "ONECLASS", "--target", "y"], "only one class"),
        (["train", "EMPTY", "--target", "y"], "no data rows"),
        # A value out of range names the flag that gave it, as typed.
        (["train", "moons", "--optimizer", "rmsprop"], "error: --optimizer: got 'rmsprop', expected one of adam, "
                                                       "adamw, sgd\n"),
        (["train", "moons", "--hidden", "6,0"], "error: --hidden: got '6,0', expected comma-separated positive "
                                                "layer sizes such as 64,64\n"),
        (["train", "moons", "--epochs", "0"], "error: --epochs: got 0, expected a whole number >= 1\n"),
        (["train", "moons", "--patience-min", "0"], "error: --patience-min: got 0, expected a whole number >= 1, "
                                                    "or 'none'\n"),
        (["train", "moons", "--hidden", "6,x"], "--hidden: got '6,x', expected comma-separated positive layer sizes"),
        (["train", "moons", "--seed", "-1"], "error: --seed: got -1, expected a whole number >= 0 and <= 4294967295\n"),
        # The rule over two flags names both as typed, with the preset's or default value of the one not given.
        (["train", "moons", "--test-size", "0.85"], "error: --test-size 0.85 and --val-size 0.1 hold out 0.95 of the "
                                                    "rows; together they must stay below 0.9, so that rows are left "
                                                    "to train on\n"),
        (["train", "moons", "--preset", "circle-v9"], "unknown preset 'circle-v9'"),
        # A built-in dataset's target and labels are its own: other ones were once silently ignored.
        (["train", "moons", "--target", "nope"], "error: moons: a built-in dataset brings its own target (label), "
                                                 "not nope; drop --target, or give a file with that column\n"),
        (["train", "multilabel", "--label-sep", ","], "error: multilabel: a built-in dataset's labels are not joined "
                                                      "text; drop --label-sep, or give a file whose labels are\n"),
        (["predict", "not-a-run", "moons"], "no such run folder"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(tmp_path, args, message):
    (tmp_path / "f.csv").write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
    (tmp_path / "one.csv").write_text("a,y\n1,0\n2,0\n3,0\n")
    (tmp_path / "empty.csv").write_text("a,y\n")
    swap = {"FILE": tmp_path / "f.csv", "ONECLASS": tmp_path / "one.csv", "EMPTY": tmp_path / "empty.csv"}
    args = [str(swap.get(a, a)) for a in args]
    code, out, err = run_cli(*args, "--out", str(tmp_path / "r")) if args[0] == "train" else run_cli(*args)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_datasets_lists_every_builtin():
    from torchclf.data.builtin import BUILTIN_DATASETS

    code, out, _ = run_cli("datasets")
    assert code == 0
    for name in BUILTIN_DATASETS:
        assert name in out


def test_multiclass_and_multilabel_through_the_cli(tmp_path, no_pictures_here):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1]})
    frame["hot"] = (x[:, 0] > 0).astype(int)
    frame["wet"] = (x[:, 1] > 0).astype(int)
    frame["tags"] = [",".join(t for t, on in (("hot", h), ("wet", w)) if on) for h, w in zip(frame.hot, frame.wet)]
    frame.to_parquet(tmp_path / "t.parquet")

    code, out, err = run_cli("train", str(tmp_path / "t.parquet"), "-t", "hot", "-t", "wet", "--out", str(tmp_path / "ml"), *FAST)
    assert code == 0, err
    assert "subset_accuracy" in out and "hamming_loss" in out
    code, out, err = run_cli("predict", str(tmp_path / "ml"), str(tmp_path / "t.parquet"))
    assert code == 0 and out.splitlines()[0] == "prediction,proba_hot,proba_wet"

    code, _, err = run_cli("train", str(tmp_path / "t.parquet"), "-t", "tags", "--label-sep", ",",
                           "--out", str(tmp_path / "sep"), "--epochs", "60", "--hidden", "16", "--patience", "0", "-q")
    assert code == 0, err
    code, out, _ = run_cli("predict", str(tmp_path / "sep"), str(tmp_path / "t.parquet"))
    pred = pd.read_csv(__import__("io").StringIO(out), keep_default_na=False)
    assert set(pred["prediction"]) <= {"", "hot", "wet", "hot,wet"}
    assert (pred["prediction"] == frame["tags"]).mean() > 0.8

    code, out, err = run_cli("train", "blobs", "--preset", "blob", "--out", str(tmp_path / "mc"), "-q")
    assert code == 0, err
    metrics = json.loads((tmp_path / "mc" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9 and len(metrics["test"]["confusion_matrix"]) == 4


@pytest.mark.parametrize("args", [["train", "--hiden", "3"], ["nosuch"], ["train", "--epochs", "abc"]])
def test_usage_errors_exit_2_without_a_traceback(args, capsys):
    from torchclf.cli import main

    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Error:" in err and "Traceback" not in err


def test_a_folder_named_like_a_dataset_does_not_shadow_it(tmp_path, monkeypatch):
    from torchclf.data import resolve_source

    (tmp_path / "wine").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_source("wine").n_rows == 178


def test_an_output_the_file_system_refuses_is_one_line_and_leaves_nothing(csv_run, tmp_path):
    folder, _ = csv_run
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder is needed")
    code, _, err = run_cli("predict", str(folder / "run"), str(folder / "fruit.csv"),
                           "--out", str(blocked / "p.csv"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked"]


def test_the_help_names_every_file_type_that_is_read():
    """The help texts' list of files (cli.TABLE_FILE, kept free of pandas for --help) against what is read."""
    from torchclf.cli import TABLE_FILE
    from torchclf.data.sources import CSV_COMPRESSIONS

    assert "CSV" in TABLE_FILE and "Parquet" in TABLE_FILE
    assert [suffix for suffix in CSV_COMPRESSIONS if suffix not in TABLE_FILE] == []

"""The bad-input catalogue (docs/reliability.md), one test per row, through the real command line.

Each row asserts the exit code and the message; a failing row also asserts
that nothing was written.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

TINY = ["--epochs", "1", "--hidden", "2", "--threads", "1", "--quiet"]


# Plots and the HTML report are not what these rows test, and cost seconds per run.
pytestmark = pytest.mark.usefixtures("no_pictures")


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "color": rng.choice(["r", "g", "b"], n)})
    frame["label"] = np.where(frame["x1"] > 0, "yes", "no")
    return frame


def _train(tmp_path, path, *extra):
    """Train on ``path``; returns (code, stdout, stderr, out folder)."""
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("train", str(path), *extra, *TINY, "--out", str(out))
    return code, stdout, stderr, out


def _fails(tmp_path, path, message, *extra):
    code, _, err, out = _train(tmp_path, path, *extra)
    assert code == 2, err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1, "one line, no traceback"
    assert not out.exists(), "nothing is written"
    return err


def _warns(tmp_path, path, message, *extra):
    code, stdout, err, out = _train(tmp_path, path, *extra)
    assert code == 0, err
    assert message in err, err
    assert (out / "model.json").is_file()
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input")
    _frame().to_csv(folder / "rows.csv", index=False)
    code, _, err = run_cli("train", str(folder / "rows.csv"), "--target", "label", *TINY, "--out", str(folder / "run"))
    assert code == 0, err
    return folder / "run"


# ----- reading ------------------------------------------------------------------------
def test_missing_file(tmp_path):
    _fails(tmp_path, tmp_path / "nope.csv", "nope.csv: no such file (check the path)", "--target", "label")


def test_missing_file_with_another_extension_is_not_taken_for_a_dataset_name(tmp_path):
    _fails(tmp_path, "nope.xlsx", "nope.xlsx: no such file", "--target", "label")


def test_a_folder_instead_of_a_file(tmp_path):
    (tmp_path / "rows.csv").mkdir()
    _fails(tmp_path, tmp_path / "rows.csv", "is a folder, expected a .csv or .parquet file", "--target", "label")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file permissions do not bind root")
def test_unreadable_file(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().to_csv(path, index=False)
    path.chmod(0)
    _fails(tmp_path, path, "cannot be read as csv", "--target", "label")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("a,b\n1,2\n")
    _fails(tmp_path, path, "unsupported file type '.txt'; use a .csv, .csv.gz, .csv.bz2, .csv.xz, .csv.zip, "
                           ".parquet or .pq file", "--target", "b")


def _damaged(tmp_path, name: str) -> object:
    """A compressed CSV file named ``name``, damaged as its name says."""
    import gzip
    import zipfile

    path = tmp_path / name
    text = _frame().to_csv(index=False).encode()
    if name == "cut.csv.gz":
        path.write_bytes(gzip.compress(text)[:200])
    elif name == "two.csv.zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.csv", text)
            archive.writestr("b.csv", text)
    elif name == "locked.csv.zip":  # marked encrypted, as `zip -e` writes it (zipfile cannot encrypt)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.csv", text)
        data = bytearray(path.read_bytes())
        data[6] |= 1  # the local header's flags
        data[data.find(b"PK\x01\x02") + 8] |= 1  # the central directory's
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not compressed at all\n" * 10)
    return path


@pytest.mark.parametrize("name, message", [
    ("cut.csv.gz", "cut.csv.gz: cannot be read as gzip: Compressed file ended before the end-of-stream marker was "
                   "reached"),
    ("text.csv.bz2", "text.csv.bz2: cannot be read as bz2: Invalid data stream"),
    ("text.csv.xz", "text.csv.xz: cannot be read as xz: Input format not supported by decoder"),
    ("text.csv.zip", "text.csv.zip: cannot be read as zip: File is not a zip file"),
    ("two.csv.zip", "two.csv.zip: a zip archive of 2 files; torchclf reads an archive that holds one CSV file"),
    ("locked.csv.zip", "locked.csv.zip: cannot be read as zip: File <ZipInfo filename='a.csv' filemode='?rw-------' "
                       "file_size=5390> is encrypted, password required for extraction; re-save it as a plain zip "
                       "archive, or as .csv.gz"),
])
def test_a_damaged_compressed_file(tmp_path, name, message):
    _fails(tmp_path, _damaged(tmp_path, name), message, "--target", "label")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be created")
@pytest.mark.parametrize("command", ["train", "predict", "export"])
def test_an_output_that_cannot_be_created_is_named_as_typed(run_dir, tmp_path, command):
    """Not the hidden working name beside it (.x.csv.PID-xxxx.partial, .run.claim), which means nothing to the user."""
    out = f"/proc/torchclf-{command}-test"
    args = {"train": ["train", "moons", *TINY], "predict": ["predict", str(run_dir), "moons"],
            "export": ["export", str(run_dir)]}[command]
    code, stdout, err = run_cli(*args, "--out", out)
    assert (code, stdout) == (2, "")
    assert err == f"error: {out}: No such file or directory; check the path, its permissions and free space\n"


def test_running_out_of_memory_is_one_line_with_what_to_do(tmp_path, monkeypatch):
    """More rows than the machine holds is a limit, not a bug: no traceback, no "report it", nothing written."""
    from torchclf.data import builtin

    def too_big(**params):
        raise MemoryError("Unable to allocate 3.64 TiB for an array with shape (500000000000,) and data type float64")

    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "moons",
                        builtin.BuiltinDataset("moons", "", too_big, builtin.BUILTIN_DATASETS["moons"].defaults))
    code, stdout, err, out = _train(tmp_path, "moons:n_samples=1e12")
    assert (code, stdout) == (1, "")
    assert err == ("error: out of memory (Unable to allocate 3.64 TiB for an array with shape (500000000000,) and "
                   "data type float64); use fewer rows or columns, a smaller --batch-size, or a machine with more "
                   "memory\n")
    assert not out.exists()


def test_empty_file(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("")
    _fails(tmp_path, path, "the file is empty; expected a header row and data rows", "--target", "label")


def test_header_only(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("x1,x2,label\n")
    _fails(tmp_path, path, "has a header but no data rows", "--target", "label")


def test_not_utf8(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("x1,name,label\n1,caf\xe9,a\n2,b,b\n".encode("latin-1"))
    _fails(tmp_path, path, "not UTF-8 text (byte 19); re-save the file as UTF-8", "--target", "label")


def test_duplicate_column_names(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,a,label\n1,2,x\n3,4,y\n")
    _fails(tmp_path, path, "duplicate column names ['a']; rename them so each is unique", "--target", "label")


# ----- the target -------------------------------------------------------------------------
def test_target_column_missing_suggests_the_closest_name(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().to_csv(path, index=False)
    _fails(tmp_path, path, "target column(s) ['lable'] not found ('lable': did you mean 'label'?)", "--target", "lable")


def test_no_target_given(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().to_csv(path, index=False)
    _fails(tmp_path, path, "no target column given; pass --target COL (columns are: x1, x2, color, label)")


def test_target_with_one_class(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().assign(label="yes").to_csv(path, index=False)
    _fails(tmp_path, path, "the target has only one class (['yes']); a classifier needs at least two",
           "--target", "label")


def test_target_all_missing(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().assign(label=np.nan).to_csv(path, index=False)
    _fails(tmp_path, path, "every row's target ['label'] is missing; nothing to learn from", "--target", "label")


def test_rows_with_a_missing_target_are_dropped_with_a_count(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _frame()
    frame.loc[:4, "label"] = np.nan
    frame.to_csv(path, index=False)
    _warns(tmp_path, path, "warning: " + str(path) + ": dropped 5 row(s) with a missing target", "--target", "label")


def test_class_too_rare_to_stratify_falls_back_with_a_warning(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _frame()
    frame.loc[0, "label"] = "rare"
    frame.to_csv(path, index=False)
    _warns(tmp_path, path, "a class has only 1 row(s), too few to stratify; splitting without stratification",
           "--target", "label")


# ----- feature columns -------------------------------------------------------------------
def test_numeric_column_with_stray_text(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _frame().astype({"x1": object})
    frame.loc[3, "x1"] = "oops"
    frame.to_csv(path, index=False)
    _warns(tmp_path, path, "column 'x1': treating as numeric; 1 value(s) that are not numbers (e.g. ['oops']) "
           "become missing", "--target", "label", "--test-size", "0", "--val-size", "0")


def test_infinities(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _frame()
    frame.loc[[2, 5], "x2"] = [np.inf, -np.inf]
    frame.to_csv(path, index=False)
    _warns(tmp_path, path, "column 'x2': 2 infinite value(s) treated as missing",
           "--target", "label", "--test-size", "0", "--val-size", "0")


def test_a_target_with_a_class_per_row_is_warned_about(tmp_path):
    """An identifier given as --target trained 120 one-row classes without a word."""
    path = tmp_path / "rows.csv"
    _frame().assign(label=range(120)).to_csv(path, index=False)
    _warns(tmp_path, path, "rows.csv: the target 'label' has 120 classes in 120 rows, so most classes have a single "
           "row and cannot be learnt; if it is an identifier or a quantity, give the column of the labels to "
           "predict instead", "--target", "label", "--test-size", "0", "--val-size", "0")


def test_constant_columns(tmp_path):
    path = tmp_path / "rows.csv"
    _frame().assign(const=7, empty=np.nan).to_csv(path, index=False)
    _warns(tmp_path, path, "constant column(s) 'const', 'empty': one value in every training row", "--target", "label")


def test_categorical_column_with_thousands_of_values_is_capped(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _frame(n=2500)
    frame["id"] = [f"id{i % 2000}" for i in range(len(frame))]  # repeats: a category, not an identifier
    frame.to_csv(path, index=False)
    _warns(tmp_path, path, "column 'id': 2000 distinct values; keeping the 50 most frequent, the rest share '<other>'",
           "--target", "label", "--test-size", "0", "--val-size", "0", "--max-categories", "50")


# ----- prediction and evaluation ----------------------------------------------------------
def test_predict_with_missing_columns(run_dir, tmp_path):
    path = tmp_path / "new.csv"
    _frame(seed=1).drop(columns=["x2"]).to_csv(path, index=False)
    code, out, err = run_cli("predict", str(run_dir), str(path), "--out", str(tmp_path / "p.csv"))
    assert code == 2
    assert "missing feature column(s) 'x2' that the model was trained on; add them" in err
    assert not (tmp_path / "p.csv").exists()


def test_predict_with_extra_columns_ignores_them(run_dir, tmp_path):
    path = tmp_path / "new.csv"
    _frame(seed=1).assign(extra=1).to_csv(path, index=False)
    code, out, err = run_cli("predict", str(run_dir), str(path))
    assert code == 0, err
    assert "column(s) 'extra' are not used by the model and are ignored" in err
    assert "label" not in err.split("ignored")[0], "the target column is expected in labelled files"
    assert len(pd.read_csv(io.StringIO(out))) == 120


def test_predict_with_unseen_categories(run_dir, tmp_path):
    path = tmp_path / "new.csv"
    frame = _frame(seed=1)
    frame.loc[:3, "color"] = "purple"
    frame.to_csv(path, index=False)
    code, out, err = run_cli("predict", str(run_dir), str(path))
    assert code == 0, err
    assert "column 'color': 4 row(s) with categories not seen in training (e.g. ['purple']) use the '<other>' slot" in err


def test_evaluate_with_unseen_labels(run_dir, tmp_path):
    path = tmp_path / "new.csv"
    frame = _frame(seed=1)
    frame.loc[:3, "label"] = "maybe"
    frame.to_csv(path, index=False)
    code, out, err = run_cli("evaluate", str(run_dir), str(path))
    assert code == 2
    assert "label(s) ['maybe'] were not seen in training; known classes are ['no', 'yes']" in err


@pytest.mark.parametrize("kind, message", [
    ("plain folder", "not a torchclf run folder (no model.json)"),
    ("file", "is a file, not a run folder"),
    ("missing", "no such run folder (train one with `torchclf train`)"),
])
def test_a_run_folder_that_is_not_a_run_folder(tmp_path, kind, message):
    run = tmp_path / "run"
    if kind == "plain folder":
        run.mkdir()
        (run / "notes.txt").write_text("hello")
    elif kind == "file":
        run.write_text("x1,label\n1,a\n")
    rows = tmp_path / "rows.csv"
    _frame().to_csv(rows, index=False)
    for command in ("predict", "evaluate"):
        code, _, err = run_cli(command, str(run), str(rows))
        assert code == 2 and message in err, err


# ----- divergence ---------------------------------------------------------------------------
def test_a_learning_rate_that_diverges_stops_keeps_the_best_weights_and_says_so(tmp_path):
    path = tmp_path / "rows.csv"
    _frame(n=200).to_csv(path, index=False)
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(path), "--target", "label", "--optimizer", "sgd", "--lr", "1000",
                           "--momentum", "0.9", "--batch-size", "full", "--hidden", "32,32", "--epochs", "40",
                           "--schedule", "none", "--patience", "0", "--threads", "1", "-q", "--out", str(out))
    assert code == 0, err
    assert "training diverged at epoch" in err and "kept the best weights so far" in err
    assert "retry with a smaller --lr (e.g. 100)" in err
    from torchclf import load

    # Loading refuses non-finite weights, so this also checks that the kept weights are finite.
    proba = load(out).predict_proba(_frame(n=10, seed=3))
    assert np.isfinite(proba).all()


def test_divergence_in_the_first_epoch_is_an_error(tmp_path):
    path = tmp_path / "rows.csv"
    _frame(n=200).to_csv(path, index=False)
    err = _fails(tmp_path, path, "training diverged at epoch 1", "--target", "label", "--optimizer", "sgd",
                 "--lr", "1e30", "--batch-size", "full", "--hidden", "32,32", "--schedule", "none")
    assert "no weights are worth keeping" in err and "smaller --lr" in err

"""Round two of the reliability catalogue, the data rows (docs/reliability.md, "Round two: data").

Issue 14's items 9-12, 15, 17, 18 (plots) and 19: tables that used to end in
an unexpected exception, a hang or a silent fix-up. Each test drives the
user's path (the command line in-process where there is one) and checks the
exit status and the whole message.
"""

from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from forked import PIPE, Forked, cli

from torchclf import plots, preprocess
from torchclf.data import check_target, from_frame
from torchclf.data.sources import sniff_decimal, sniff_delimiter
from torchclf.errors import TorchclfError

TINY = ["--epochs", "1", "--hidden", "2", "--threads", "1", "--quiet"]


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    frame["label"] = np.where(frame["x1"] > 0, "yes", "no")
    return frame


def _train(tmp_path, path, *extra):
    out = tmp_path / "run"
    code, _, stderr = run_cli("train", str(path), *extra, *TINY, "--out", str(out))
    return code, stderr, out


def _fails(tmp_path, path, *extra) -> str:
    """Train, expecting one error line, exit status 2 and no run folder; returns the line."""
    code, err, out = _train(tmp_path, path, *extra)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.fixture
def quick(monkeypatch):
    """Pictures off, for the rows that are not about them (per test: the plot rows need them on)."""
    import torchclf.api
    import torchclf.report

    monkeypatch.setattr(torchclf.api, "write_plots", lambda *a, **k: [])
    monkeypatch.setattr(torchclf.report, "write_report", lambda *a, **k: None)


# ----- 9: a regression-like target ----------------------------------------------------------
def test_a_float_target_with_many_fractional_values_is_refused_with_advice():
    price = pd.Series(np.r_[np.arange(600) * 0.5, np.nan], name="price")  # 0, 0.5, 1, 1.5, ... and a gap
    with pytest.raises(TorchclfError) as info:
        check_target(price, "auto", "houses.csv")
    assert str(info.value) == (
        "houses.csv: the target 'price' looks like a quantity to predict, not class labels: 600 distinct values "
        "in 600 rows, not all whole numbers (e.g. 0.5, 1.5, 2.5); torchclf trains classifiers, so bin the values "
        "into classes first (for example with pandas.cut), or pass --task multiclass if every distinct value "
        "really is a class")
    check_target(price, "multiclass", "houses.csv")  # the user says they are classes


@pytest.mark.parametrize("values, refused", [
    (np.arange(600) % 300 * 1.0, False),               # whole-valued floats (integer labels with gaps) are classes
    (np.arange(600) % 9 / 2 + 0.5, False),              # half-star ratings: 9 fractional values, well under 20
    (np.arange(600) % 21 + 0.5, True),                  # 21 fractional values: more than 20
    (np.arange(10) + 0.25, True),                       # a small table: 10 distinct in 10 rows (limit 10 // 2)
    (np.array([0.5, 1.5] * 5), False),                  # two fractional classes
])
def test_the_regression_rule(values, refused):
    target = pd.Series(values)
    if refused:
        with pytest.raises(TorchclfError, match="looks like a quantity to predict"):
            check_target(target)
    else:
        check_target(target)


def test_train_refuses_a_regression_target_unless_told_multiclass(tmp_path, quick):
    frame = _frame(60)
    frame["label"] = np.arange(60) * 0.5
    frame.to_csv(tmp_path / "rows.csv", index=False)
    err = _fails(tmp_path, tmp_path / "rows.csv", "--target", "label")
    assert "looks like a quantity to predict, not class labels: 60 distinct values in 60 rows" in err


def test_integer_and_text_targets_are_never_refused():
    """Only warned about when most classes would have a single row (an identifier given as the target)."""
    from torchclf.data.sources import DataWarning

    with pytest.warns(DataWarning, match="the target has 1000 classes in 1000 rows, so most classes have a single"):
        check_target(pd.Series(np.arange(1000)))  # product codes may be classes
    with pytest.warns(DataWarning, match="500 classes in 500 rows"):
        check_target(pd.Series([f"{v:.3f}" for v in np.linspace(0, 1, 500)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_target(pd.Series(np.arange(1000) % 40))  # 40 classes of 25 rows: no warning
        check_target(pd.DataFrame({"a": [0, 1], "b": [1, 0]}))  # multilabel


def test_hundreds_of_classes_draw_a_confusion_matrix_without_per_cell_texts(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and Path(path))
    k = 100
    plots.confusion_matrix(np.eye(k, dtype=int).tolist(), [f"{i / 7:.3f}" for i in range(k)], tmp_path / "cm.png")
    ax = drawn["fig"].axes[0]
    assert len(ax.texts) == 0  # k * k cell texts: 50 s to draw for 100 classes, minutes for 600
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{i / 7:.3f}" for i in range(0, k, 3)]
    assert len(drawn["fig"].axes) == 2  # a colour bar stands in for the counts
    plots._pyplot().close(drawn["fig"])


# ----- 10: an encoded matrix larger than memory ----------------------------------------------------
def _users_csv(tmp_path, rows: int, users: int):
    """A CSV of ``rows`` rows: a number, a user id cycling through ``users`` values, and a two-class label."""
    frame = pd.DataFrame({"x1": np.random.default_rng(0).normal(size=rows),
                          "id": [f"u{i % users}" for i in range(rows)], "label": ["a", "b"] * (rows // 2)})
    frame.to_csv(tmp_path / "users.csv", index=False)
    return tmp_path / "users.csv"


def test_an_encoding_larger_than_memory_is_refused_with_the_size_and_a_fix(tmp_path, quick, monkeypatch):
    monkeypatch.setattr(preprocess, "available_memory", lambda: 16 * 2**20, raising=False)
    # 2,500 users, 500 of them twice: a category with many values (one per row would be an identifier, left out)
    err = _fails(tmp_path, _users_csv(tmp_path, 3000, 2500), "--target", "label", "--onehot-max", "none")
    # 2,100 training rows x (1 numeric + 1,849 categories in them + <other>) inputs x 4 bytes.
    assert err.endswith(": the encoded rows would take 14.8 MiB (2,100 rows x 1,851 inputs x 4 bytes), more than "
                        "75% of the 16.0 MiB of memory available; column 'id' alone has 1,850 one-hot inputs: "
                        "embed it with --onehot-max 16 (onehot_max), lower --max-categories (max_categories) or "
                        "drop that column\n"), err


def test_a_column_kept_one_hot_for_its_rare_categories_gets_the_embed_rows_fix(tmp_path, quick, monkeypatch):
    monkeypatch.setattr(preprocess, "available_memory", lambda: 4 * 2**20, raising=False)
    # 1,000 users of 6 rows each: over --onehot-max, but too rare to embed under the default --embed-rows
    err = _fails(tmp_path, _users_csv(tmp_path, 6000, 1000), "--target", "label")
    assert "one-hot inputs: embed it with --embed-rows none (embed_rows), which embeds it although its " \
           "categories are rare, lower --max-categories" in err, err


def test_available_memory_is_read_from_the_system():
    available = preprocess.available_memory()
    assert isinstance(available, int) and available > 2**20


# ----- 11: list and struct columns -------------------------------------------------------------------
def nested_parquet(path: Path) -> pd.DataFrame:
    frame = _frame()
    frame["tags"] = [[i % 3, i % 5] for i in range(len(frame))]
    frame["meta"] = [{"source": "s", "n": i} for i in range(len(frame))]
    frame.to_parquet(path)
    return frame


def test_list_and_struct_columns_are_left_out_with_one_warning(tmp_path, quick):
    nested_parquet(tmp_path / "rows.parquet")
    code, err, out = _train(tmp_path, tmp_path / "rows.parquet", "--target", "label")
    assert code == 0, err
    assert err == (f"warning: {tmp_path / 'rows.parquet'}: column(s) 'tags', 'meta' hold lists or structs, not "
                   "single values, so they cannot be features; ignoring them (flatten them into columns of numbers "
                   "or text to use them)\n")
    import torchclf

    assert torchclf.load(out).preprocessor.feature_names == ["x1", "x2"]
    code, stdout, err = run_cli("predict", str(out), str(tmp_path / "rows.parquet"))
    assert code == 0 and len(stdout.splitlines()) == 121, err
    assert err == f"warning: {tmp_path / 'rows.parquet'}: column(s) 'tags', 'meta' are not used by the model and are ignored\n"


def test_a_list_target_is_refused_with_the_way_to_give_several_labels(tmp_path, quick):
    nested_parquet(tmp_path / "rows.parquet")
    err = _fails(tmp_path, tmp_path / "rows.parquet", "--target", "tags")
    assert err == (f"error: {tmp_path / 'rows.parquet'}: target column 'tags' holds lists or structs, not one label "
                   "per row; for several labels per row join them into text and pass --label-sep (e.g. 'a|b' with "
                   "--label-sep '|'), or give one 0/1 --target column per label\n")


def test_a_dataframe_with_a_list_column_given_directly_trains_without_it():
    frame = _frame()
    frame["vec"] = [np.array([i, i + 1]) for i in range(len(frame))]
    with pytest.warns(UserWarning, match=r"training rows: column\(s\) 'vec' hold lists or structs"):
        pre = preprocess.Preprocessor().fit(frame.drop(columns="label"))
    assert pre.feature_names == ["x1", "x2"]


# ----- 12: --label-sep with no labels at all -------------------------------------------------------
def test_label_sep_with_every_row_empty_is_refused(tmp_path, quick):
    frame = _frame()
    frame["label"] = ""
    frame.loc[0, "label"] = "|"
    frame.to_csv(tmp_path / "rows.csv", index=False)
    err = _fails(tmp_path, tmp_path / "rows.csv", "--target", "label", "--label-sep", "|")
    assert err == (f"error: {tmp_path / 'rows.csv'}: target column 'label' has no labels: split on --label-sep '|', "
                   "every row is empty (first values: ['|', '', '']); check the column and the separator\n")


def test_an_empty_label_sep_is_refused():
    with pytest.raises(TorchclfError, match=r"^DataFrame: --label-sep is empty; give the text that joins the "
                                            r"labels, such as '\|'$"):
        from_frame(_frame(), "label", label_sep="")


# ----- 15: text where training had numbers ----------------------------------------------------------
@pytest.fixture(scope="module")
def numeric_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("numeric-run")
    _frame().to_csv(folder / "rows.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        import torchclf.api
        import torchclf.report

        mp.setattr(torchclf.api, "write_plots", lambda *a, **k: [])
        mp.setattr(torchclf.report, "write_report", lambda *a, **k: None)
        code, _, err = run_cli("train", str(folder / "rows.csv"), "--target", "label", *TINY,
                               "--out", str(folder / "run"))
    assert code == 0, err
    return folder / "run"


@pytest.mark.parametrize("values, shown", [
    (["abc"] * 120, "120 of 120 value(s) here are not numbers (e.g. ['abc'])"),
    (list(pd.date_range("2024-01-01", periods=120).strftime("%Y-%m-%d")),
     "120 of 120 value(s) here are not numbers (e.g. ['2024-01-01', '2024-01-02', '2024-01-03'])"),
])
def test_predict_refuses_a_numeric_column_that_is_mostly_text(tmp_path, numeric_run, values, shown):
    frame = _frame().drop(columns="label")
    frame["x1"] = values
    frame.to_csv(tmp_path / "new.csv", index=False)
    code, stdout, err = run_cli("predict", str(numeric_run), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 2 and stdout == "", err
    assert err == (f"error: {tmp_path / 'new.csv'}: column 'x1' held numbers in training, but {shown}; convert "
                   "the column to numbers as in the training data (dates to the same numeric form), or fix the "
                   "values\n")
    assert not (tmp_path / "p.csv").exists()


def test_predict_warns_about_a_few_values_that_are_not_numbers(tmp_path, numeric_run):
    frame = _frame().drop(columns="label")
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[[3, 7], "x2"] = ["oops", "n/a?"]
    frame.to_csv(tmp_path / "new.csv", index=False)
    code, stdout, err = run_cli("predict", str(numeric_run), str(tmp_path / "new.csv"))
    assert code == 0 and len(stdout.splitlines()) == 121, err
    assert err == (f"warning: {tmp_path / 'new.csv'}: column 'x2': 2 of 120 value(s) are not numbers "
                   "(e.g. ['n/a?', 'oops']) and are treated as missing (the training median)\n")


def test_the_python_api_refuses_too(numeric_run):
    import torchclf

    model = torchclf.load(numeric_run)
    with pytest.raises(TorchclfError, match=r"^rows: column 'x2' held numbers in training, but 2 of 2 value"):
        model.predict(pd.DataFrame({"x1": [0.1, 0.2], "x2": ["2024-01-01", "2024-02-01"]}), where="rows")


# ----- 17: SIGTERM while waiting for a rank that failed -----------------------------------------------
def test_sigterm_ends_a_rank_stuck_waiting_for_the_others_within_seconds(tmp_path):
    """Rank 0 of a 2-process job whose rank 1 never comes (it failed on its rows): torchrun's SIGTERM
    must end it, although it waits inside the process group's C++ code, not after torchrun's 30 s."""
    import socket

    from test_distributed import launch_env, write_row_groups

    write_row_groups(tmp_path / "t.parquet", [20, 20])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = launch_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), TORCHCLF_SHARD_PARQUET="1", TORCHCLF_DIST_TIMEOUT="120")
    proc = Forked(cli("train", str(tmp_path / "t.parquet"), "--target", "label", *TINY, "--device", "cpu",
                      "--out", str(tmp_path / "run")), stdout=PIPE, stderr=PIPE, env=env)
    try:
        # Wait until rank 0 listens for the other ranks (the store on MASTER_PORT), then stop it.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert seconds < 10, (seconds, err)
    assert "torchrun rank 0: stopped by SIGTERM while waiting for the other processes" in err
    assert not (tmp_path / "run").exists()


# ----- 18: labels and column names are plain text in every plot ---------------------------------------
def test_mathtext_like_labels_and_column_names_are_drawn_as_typed(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"$x_1": rng.normal(size=120), "x$^2": rng.normal(size=120)})
    frame["label"] = np.where(frame["$x_1"] > 0, r"$\frac{a}{$", "_b")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    code, err, out = _train(tmp_path, tmp_path / "rows.csv", "--target", "label")
    assert code == 0 and err == "", err
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "confusion_matrix.png", "decision_boundary.png", "learning_curves.png"]
    assert (out / "report.html").is_file()


def test_every_drawing_function_is_plain_text_and_legends_keep_underscored_names(tmp_path, monkeypatch):
    import inspect

    drawing = [f for name, f in vars(plots).items() if inspect.isfunction(f) and not name.startswith("_")
               and f.__module__ == plots.__name__ and "path" in inspect.signature(f).parameters]
    assert len(drawing) >= 7
    assert [f.__name__ for f in drawing if getattr(f, "__wrapped__", None) is None] == []
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and Path(path))
    y = np.array([0, 1] * 10)
    plots.roc_pr_curves(y, np.column_stack([1 - y * 0.8, y * 0.8 + 0.1]), ["a", "_b"], tmp_path / "roc.png")
    legend = [t.get_text() for t in drawn["fig"].axes[0].get_legend().get_texts()]
    assert legend == [" _b (AUC 1.000)", "chance"]


# ----- 19: other delimiters ---------------------------------------------------------------------------
@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_and_bar_separated_files_are_read(tmp_path, quick, sep):
    _frame().to_csv(tmp_path / "rows.csv", sep=sep, index=False)
    code, err, out = _train(tmp_path, tmp_path / "rows.csv", "--target", "label")
    assert code == 0 and err == "", err
    import torchclf

    assert torchclf.load(out).preprocessor.feature_names == ["x1", "x2"]


def test_semicolon_files_with_decimal_commas_read_as_the_same_numbers(tmp_path):
    from torchclf.data import read_table

    frame = _frame()
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "excel.csv", sep=";", decimal=",", index=False)  # "0,1257302210933933;..."
    assert "," in (tmp_path / "excel.csv").read_text().splitlines()[1]
    pd.testing.assert_frame_equal(read_table(tmp_path / "excel.csv"), read_table(tmp_path / "comma.csv"),
                                  check_exact=True)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zip"])
def test_compressed_csv_files_read_as_the_plain_file_and_name_the_run_as_it(tmp_path, suffix):
    """Delimiter and decimal mark guessed through the decompressor (a spreadsheet's export here); the run is
    named after the table, not its compression."""
    import bz2
    import gzip
    import lzma
    import zipfile

    from torchclf.data import read_table
    from torchclf.spec import RunSpec

    _frame().to_csv(tmp_path / "excel.csv", sep=";", decimal=",", index=False)
    text = (tmp_path / "excel.csv").read_bytes()
    path = tmp_path / f"excel.csv{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("excel.csv", text)
    else:
        path.write_bytes({".gz": gzip, ".bz2": bz2, ".xz": lzma}[suffix].compress(text))
    pd.testing.assert_frame_equal(read_table(path), read_table(tmp_path / "excel.csv"), check_exact=True)
    assert RunSpec(str(path)).name == "excel"


def test_an_unrecognised_separator_says_what_was_seen(tmp_path, quick):
    _frame().to_csv(tmp_path / "rows.csv", sep=" ", index=False)
    err = _fails(tmp_path, tmp_path / "rows.csv", "--target", "label")
    assert err.endswith("; the table was read as one column 'x1 x2 label': CSV fields must be separated by ',' "
                        "(or by ';', a tab or '|', used the same number of times on every line)\n"), err


@pytest.mark.parametrize("text, sep", [
    ("a,b\n1;2,3\n", ","),                 # commas win whenever the header has one
    ("a;b\n1;2\n3;4\n", ";"),
    ("a;b\n1;2\n3\n", ","),                # a line with another count: not a separator
    ("note\nx;y\n", ","),                  # a one-column file stays one column
    ("a\tb\n1\t2\n", "\t"),
    ("", ","),
])
def test_sniff_delimiter(text, sep):
    assert sniff_delimiter(text) == sep


@pytest.mark.parametrize("text, sep, decimal", [
    ("a;b\n1,5;2\n", ";", ","),
    ("a;b\n1,5;2.5\n", ";", "."),          # a decimal point anywhere: commas are something else
    ("a;b\n15;2\n", ";", "."),
    ("a,b\n1,5\n", ",", "."),              # only ';' files use decimal commas
])
def test_sniff_decimal(text, sep, decimal):
    assert sniff_decimal(text, sep) == decimal

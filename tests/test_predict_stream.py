"""`torchclf predict` from file to file in chunks of rows (torchclf.predict_file), and its output options.

Chunks are forced down to a few rows so that every file here is read, predicted and written in several.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli

from torchclf import api, engine, predict_file, predictor
from torchclf.data.sources import read_rows
from torchclf.engine import predict_logits
from torchclf.predict_file import PredictionWriter
from torchclf.predictor import Predictor

CHUNK = 16  # rows per chunk in these tests: 60 rows are 4 chunks, the last of 12 rows


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                          "color": rng.choice(["red", "green", "blue"], n).astype(object),
                          "id": [f"{i:03d}" for i in range(n)]})  # leading zeros: text, not numbers
    frame.loc[rng.random(n) < 0.1, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.05, "color"] = None
    score = frame["x1"] + (frame["color"] == "red") * 1.2
    frame["kind"] = np.where(score > 0.8, "hi", np.where(frame["x2"].fillna(0) > 0, "mid", "lo"))
    frame["flag"] = score > 0.3
    frame["tags"] = [",".join(t for t, on in (("a", a), ("b", b)) if on)
                     for a, b in zip(frame["x1"] > 0, frame["x2"].fillna(0) > 0)]
    return frame


TARGETS = {"kind": {}, "flag": {"calibration": None}, "tags": {}}  # multiclass, binary (float32), multilabel


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Run folders for a multiclass, a binary (bool labels, uncalibrated) and a multilabel model (labels
    joined by a comma, so that some predictions need quoting in a CSV), and 60 new rows as CSV and Parquet."""
    folder = tmp_path_factory.mktemp("stream")
    train = _frame(300, seed=0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(api, "write_plots", lambda *a, **k: [])
        mp.setattr("torchclf.report.write_report", lambda *a, **k: None)
        for target, train_options in TARGETS.items():
            config = api.make_config(model={"hidden": (16,)}, data={"drop": ["id"]},
                                     train={"epochs": 30, "threads": 1, "seed": 2, **train_options})
            rows = train.drop(columns=[t for t in TARGETS if t != target])
            result = api.train(rows, target, config=config, label_sep="," if target == "tags" else None)
            api.write_run(result, folder / target)
    new = _frame(60, seed=1).drop(columns=list(TARGETS))
    new.to_csv(folder / "new.csv", index=False)
    new.to_parquet(folder / "new.parquet")
    return folder


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of CHUNK rows: the engine's batch made that small, and files read one batch at a time."""
    monkeypatch.setattr(engine, "prediction_batch", lambda device: CHUNK)
    monkeypatch.setattr(predict_file, "CHUNK_VALUES", 1)


def _read(path: Path, **kw) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False, **kw)


def _expected(made: Path, target: str, source: str) -> pd.DataFrame:
    """The whole input predicted at once, by the predictor's own method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor.load(made / target).predict_frame(read_rows(str(made / source)))


def _same(got: pd.DataFrame, want: pd.DataFrame, from_text: bool) -> None:
    """Equal column names, labels and probabilities; from CSV text, float32 values compare at float32."""
    assert list(got.columns) == list(want.columns)
    assert got["prediction"].astype(str).tolist() == want["prediction"].astype(str).tolist()
    for col in want.columns[1:]:
        values = got[col].to_numpy()
        if from_text:
            values = values.astype(want[col].dtype)  # the text is the shortest that reads back as this dtype
        assert values.dtype == want[col].dtype, col
        np.testing.assert_array_equal(values, want[col].to_numpy(), err_msg=col)


# ----- same results as predicting the whole table at once -------------------------------------------------
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("source, out", [("new.csv", "p.csv"), ("new.csv", "p.parquet"),
                                         ("new.parquet", "p.csv"), ("new.parquet", "p.parquet")])
def test_chunked_file_to_file_equals_the_whole_table_predicted_at_once(made, tmp_path, small_chunks,
                                                                       target, source, out, monkeypatch):
    sizes = []
    original = Predictor.predict_proba
    monkeypatch.setattr(Predictor, "predict_proba", lambda self, rows, where="input": (
        sizes.append(len(rows)), original(self, rows, where))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = PredictionWriter(Predictor.load(made / target), str(made / source))
        assert writer.write(tmp_path / out) == 60
    assert sizes == [CHUNK] * 3 + [12]  # never more than a chunk of rows in memory
    if out.endswith(".parquet"):
        assert pq.ParquetFile(tmp_path / out).metadata.num_row_groups == 4
    want = _expected(made, target, source)
    assert want["proba_" + str(Predictor.load(made / target).classes[0])].dtype == (
        np.float32 if target == "flag" else np.float64)
    _same(_read(tmp_path / out), want, from_text=out.endswith(".csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zip"])
def test_compressed_csv_in_and_out_holds_the_plain_files_bytes(made, tmp_path, small_chunks, suffix):
    """A compressed CSV input gives the predictions of the plain file, and a compressed output decompresses to
    the plain output's bytes (the same bytes twice for gzip: no time or name in its header); zip is read, not
    written."""
    import bz2
    import gzip
    import lzma
    import zipfile

    plain = (made / "new.csv").read_bytes()
    source = tmp_path / f"new.csv{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("new.csv", plain)
    else:
        source.write_bytes({".gz": gzip, ".bz2": bz2, ".xz": lzma}[suffix].compress(plain))
    assert run_cli("predict", str(made / "tags"), str(made / "new.csv"), "--out", str(tmp_path / "want.csv"),
                   "--keep", "id")[0] == 0
    want = (tmp_path / "want.csv").read_bytes()
    out = tmp_path / f"p.csv{suffix}"
    code, _, err = run_cli("predict", str(made / "tags"), str(source), "--out", str(out), "--keep", "id")
    if suffix == ".zip":
        assert (code, err.strip()) == (2, f"error: --out {out}: torchclf does not write zip archives; write a "
                                          ".csv.gz, .csv.bz2, .csv.xz, .csv or .parquet file")
        assert not out.exists()
        assert run_cli("predict", str(made / "tags"), str(source), "--out", str(out.with_suffix("")),
                       "--keep", "id")[0] == 0
        assert out.with_suffix("").read_bytes() == want
        return
    assert code == 0, err
    opened = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    with opened(out) as fh:
        assert fh.read() == want
    if suffix == ".gz":
        first = out.read_bytes()
        assert run_cli("predict", str(made / "tags"), str(source), "--out", str(out), "--keep", "id")[0] == 0
        assert out.read_bytes() == first


def test_csv_text_is_what_pandas_wrote_for_the_labels_and_reads_back_exactly(made, tmp_path, small_chunks):
    code, _, err = run_cli("predict", str(made / "flag"), str(made / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "prediction,proba_False,proba_True" and len(lines) == 61
    assert {line.split(",")[0] for line in lines[1:]} == {"False", "True"}  # pandas' text for bool labels
    want = _expected(made, "flag", "new.csv")
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["prediction"].tolist() == want["prediction"].tolist()
    np.testing.assert_array_equal(got[["proba_False", "proba_True"]].to_numpy(np.float32),
                                  want[["proba_False", "proba_True"]].to_numpy())


def test_labels_holding_the_delimiter_are_quoted(made, tmp_path, small_chunks):
    code, _, err = run_cli("predict", str(made / "tags"), str(made / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    text = (tmp_path / "p.csv").read_text()
    want = _expected(made, "tags", "new.csv")["prediction"]
    assert '"a,b"' in text and (want == "a,b").any()
    assert pd.read_csv(tmp_path / "p.csv", keep_default_na=False)["prediction"].tolist() == want.tolist()


def test_standard_output_gets_the_same_text_as_the_file(made, tmp_path, small_chunks):
    code, printed, err = run_cli("predict", str(made / "kind"), str(made / "new.csv"), "--keep", "id")
    assert code == 0, err
    code, _, err = run_cli("predict", str(made / "kind"), str(made / "new.csv"), "--keep", "id",
                           "--out", str(tmp_path / "p.csv"))
    assert (code, err) == (0, f"wrote 60 predictions to {tmp_path / 'p.csv'}\n")
    assert printed == (tmp_path / "p.csv").read_text()


def test_a_builtin_dataset_is_predicted_in_chunks_too(tmp_path, small_chunks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = api.train("blobs:n_samples=200", config=api.make_config(model={"hidden": (8,)},
                                                                          train={"epochs": 2, "threads": 1}))
        writer = PredictionWriter(result.predictor, "blobs:n_samples=70,seed=5")
        writer.write(tmp_path / "p.parquet")
        want = result.predictor.predict_frame(read_rows("blobs:n_samples=70,seed=5"))
    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.num_row_groups == 5
    _same(pd.read_parquet(tmp_path / "p.parquet"), want, from_text=False)


def test_category_codes_read_as_in_the_whole_file_whatever_a_chunk_holds(tmp_path, small_chunks, no_pictures):
    """A chunk holding only the codes 007 and 12 would be read as the numbers 7 and 12 on its own."""
    rng = np.random.default_rng(3)
    codes = np.array(["A7", "007", "12", "B"], dtype=object)
    train = pd.DataFrame({"x": rng.normal(size=400), "code": codes[rng.integers(0, 4, 400)]})
    train["y"] = np.where(train["code"] == "007", "yes", "no")
    config = api.make_config(model={"hidden": (8,)}, train={"epochs": 20, "threads": 1, "seed": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api.write_run(api.train(train, "y", config=config), tmp_path / "run")
    new = pd.DataFrame({"x": rng.normal(size=48), "code": codes[rng.integers(0, 4, 48)]})
    new.loc[16:31, "code"] = ["007", "12"] * 8  # the second chunk: numbers only, 007 among them
    new.to_csv(tmp_path / "new.csv", index=False)
    alone = pd.read_csv(tmp_path / "new.csv", skiprows=range(1, 17), nrows=16)  # the chunk read on its own
    assert alone["code"].tolist() == [7, 12] * 8
    code, _, err = run_cli("predict", str(tmp_path / "run"), str(tmp_path / "new.csv"),
                           "--out", str(tmp_path / "p.csv"))
    assert (code, err) == (0, f"wrote 48 predictions to {tmp_path / 'p.csv'}\n")  # no category unseen in training
    got = pd.read_csv(tmp_path / "p.csv")
    want = Predictor.load(tmp_path / "run").predict_frame(read_rows(str(tmp_path / "new.csv")))
    _same(got, want, from_text=True)
    as_numbers = Predictor.load(tmp_path / "run").predict_frame(alone)  # 7 is no code the model knows
    assert not np.allclose(as_numbers["proba_yes"][::2], got["proba_yes"][16:32:2])


# ----- output options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, out", [("new.csv", "p.csv"), ("new.csv", "p.parquet"),
                                         ("new.parquet", "p.csv"), ("new.parquet", "p.parquet")])
def test_keep_passes_identifiers_through_unchanged(made, tmp_path, small_chunks, source, out):
    code, _, err = run_cli("predict", str(made / "kind"), str(made / source), "--out", str(tmp_path / out),
                           "--keep", "id", "--keep", "x1", "--label-only")
    assert code == 0, err
    assert "not used by the model" not in err  # the kept identifier is not reported as an unused column
    got = _read(tmp_path / out, dtype={"id": str})
    want = _expected(made, "kind", source)
    assert list(got.columns) == ["id", "x1", "prediction"]
    assert got["id"].tolist() == [f"{i:03d}" for i in range(60)]  # "007" stays "007"
    np.testing.assert_array_equal(got["x1"].to_numpy(), read_rows(str(made / source))["x1"].to_numpy())
    assert got["prediction"].tolist() == want["prediction"].tolist()


def test_a_kept_number_column_whole_in_the_first_chunk_only_goes_to_parquet(made, tmp_path, small_chunks):
    rows = pd.read_csv(made / "new.csv", dtype={"id": str})
    rows["x1"] = [str(i) for i in range(len(rows))]  # written as whole numbers: "7", not "7.0"
    rows.loc[CHUNK + 3, "x1"], rows.loc[2 * CHUNK + 1, "x1"] = "2.5", None  # chunk 1 reads as int64, 2 and 3 float64
    rows.to_csv(tmp_path / "ints.csv", index=False)
    code, _, err = run_cli("predict", str(made / "kind"), str(tmp_path / "ints.csv"), "--out",
                           str(tmp_path / "p.parquet"), "--keep", "x1", "--label-only")
    assert code == 0, err
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "p.parquet")["x1"].to_numpy(),
                                  pd.to_numeric(rows["x1"]).to_numpy())


def test_top_k_gives_the_most_probable_classes_in_order(made, tmp_path, small_chunks):
    code, _, err = run_cli("predict", str(made / "kind"), str(made / "new.parquet"), "--out",
                           str(tmp_path / "p.parquet"), "--top-k", "2")
    assert code == 0, err
    got = pd.read_parquet(tmp_path / "p.parquet")
    assert list(got.columns) == ["top1", "top1_proba", "top2", "top2_proba"]
    want = _expected(made, "kind", "new.parquet")
    proba = want.drop(columns="prediction")
    names = np.array([c[len("proba_"):] for c in proba.columns])
    order = np.argsort(-proba.to_numpy(), axis=1, kind="stable")
    assert got["top1"].tolist() == want["prediction"].tolist()
    assert got["top2"].tolist() == names[order[:, 1]].tolist()
    for k in (1, 2):
        np.testing.assert_array_equal(got[f"top{k}_proba"].to_numpy(),
                                      np.take_along_axis(proba.to_numpy(), order[:, k - 1:k], axis=1)[:, 0])
    assert (got["top1_proba"] >= got["top2_proba"]).all()


def test_decimals_round_the_probabilities(made, tmp_path, small_chunks):
    code, _, err = run_cli("predict", str(made / "flag"), str(made / "new.csv"), "--out", str(tmp_path / "p.csv"),
                           "--decimals", "2")
    assert code == 0, err
    text = (tmp_path / "p.csv").read_text().splitlines()
    fields = [field for line in text[1:] for field in line.split(",")[1:]]
    assert len(fields) == 120 and all(re.fullmatch(r"[01](\.\d{1,2})?", f) for f in fields), fields[:6]
    want = _expected(made, "flag", "new.csv")
    got = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(got["proba_True"].to_numpy(np.float32), np.round(want["proba_True"].to_numpy(), 2))
    assert got["prediction"].tolist() == want["prediction"].tolist()  # labels come from the unrounded values


def test_label_only_writes_the_prediction_column(made, tmp_path, small_chunks):
    code, printed, err = run_cli("predict", str(made / "tags"), str(made / "new.parquet"), "--label-only")
    assert code == 0, err
    want = _expected(made, "tags", "new.parquet")
    got = pd.read_csv(__import__("io").StringIO(printed), keep_default_na=False)
    assert list(got.columns) == ["prediction"] and got["prediction"].tolist() == want["prediction"].tolist()


# ----- errors ---------------------------------------------------------------------------------------------
def test_option_errors_are_one_line(made, tmp_path):
    new = made / "new.csv"
    with_clash = tmp_path / "clash.csv"
    pd.read_csv(new).assign(prediction=1).to_csv(with_clash, index=False)
    cases = [
        (("kind", new, "--keep", "idd"), f"--keep idd: {new} has no such column (did you mean 'id'?); its columns "
                                          "are 'x1', 'x2', 'color', 'id'"),
        (("kind", new, "--keep", "id", "--keep", "Colour"), f"--keep Colour: {new} has no such column (did you mean "
                                                             "'color'?); its columns are 'x1', 'x2', 'color', 'id'"),
        (("flag", new, "--top-k", "1"), "--top-k 1: this model is binary; the most probable classes apply to "
                                        "multiclass models only (the proba_ columns already give every class's "
                                        "probability)"),
        (("tags", new, "--top-k", "1"), "--top-k 1: this model is multilabel; the most probable classes apply to "
                                        "multiclass models only (the proba_ columns already give every label's "
                                        "probability)"),
        (("kind", new, "--top-k", "4"), "--top-k 4: the model has 3 classes; give a number from 1 to 3"),
        (("kind", new, "--top-k", "0"), "--top-k 0: the model has 3 classes; give a number from 1 to 3"),
        (("kind", new, "--top-k", "2", "--label-only"), "--label-only and --top-k ask for different columns; give "
                                                        "one of them"),
        (("kind", new, "--decimals", "-1"), "--decimals -1: give a number of decimals from 0 to 17"),
        (("kind", with_clash, "--keep", "prediction"), "--keep prediction: the predictions already have a column "
                                                       "'prediction'; rename that input column to keep it"),
    ]
    for (target, source, *options), message in cases:
        out = tmp_path / "p.csv"
        code, printed, err = run_cli("predict", str(made / target), str(source), "--out", str(out), *options)
        assert (code, printed, err) == (2, "", f"error: {message}\n"), options
        assert not out.exists()


def test_a_header_without_rows_is_an_error_and_writes_nothing(made, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("x1,x2,color,id\n")
    (tmp_path / "p.csv").write_text("old\n")
    code, _, err = run_cli("predict", str(made / "kind"), str(empty), "--out", str(tmp_path / "p.csv"))
    assert (code, err) == (2, f"error: {empty}: has a header but no data rows\n")
    assert (tmp_path / "p.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "p.csv"]


# ----- never a half-written file --------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["p.csv", "p.parquet", "p.csv.gz"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_in_the_second_chunk_leaves_the_target_untouched(made, tmp_path, small_chunks, monkeypatch,
                                                                   out, failure):
    target = tmp_path / out
    target.write_bytes(b"old predictions\n")
    calls = []
    original = Predictor.predict_proba

    def second_fails(self, rows, where="input"):
        calls.append(len(rows))
        if len(calls) == 2:
            raise failure("the second chunk fails")
        return original(self, rows, where)

    monkeypatch.setattr(Predictor, "predict_proba", second_fails)
    if failure is KeyboardInterrupt:
        code, _, err = run_cli("predict", str(made / "kind"), str(made / "new.csv"), "--out", str(target))
        assert (code, err.splitlines()[-1]) == (130, f"interrupted; nothing was written to {target}")
    else:
        with pytest.raises(RuntimeError, match="the second chunk fails"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PredictionWriter(Predictor.load(made / "kind"), str(made / "new.csv")).write(target)
    assert calls == [CHUNK, CHUNK]
    assert target.read_bytes() == b"old predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out]


# ----- notes on the rows ----------------------------------------------------------------------------------
def test_a_note_is_given_once_with_the_rows_it_counts(made, tmp_path, small_chunks):
    frame = pd.read_csv(made / "new.csv")
    frame.loc[[1, 3, 40], "color"] = "purple"  # chunks 1 and 3
    frame.to_csv(tmp_path / "odd.csv", index=False)
    code, _, err = run_cli("predict", str(made / "kind"), str(tmp_path / "odd.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0
    assert err.splitlines() == [
        f"warning: {tmp_path / 'odd.csv'} (rows 1-16): column(s) 'id' are not used by the model and are ignored",
        f"warning: {tmp_path / 'odd.csv'} (rows 1-16): column 'color': 2 row(s) with categories not seen in training "
        "(e.g. ['purple']) use the '<other>' slot",
        f"wrote 60 predictions to {tmp_path / 'p.csv'}"]


def test_a_table_read_in_one_chunk_gives_notes_without_row_numbers(made, tmp_path):
    code, _, err = run_cli("predict", str(made / "kind"), str(made / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert (code, err.splitlines()[0]) == (0, f"warning: {made / 'new.csv'}: column(s) 'id' are not used by the "
                                              "model and are ignored")


# ----- chunk sizes and the predictor's own chunks ---------------------------------------------------------
def test_chunks_are_whole_multiples_of_the_engines_batch():
    assert predict_file.chunk_rows(36, 1024) == 28_672  # 2**20 values / 36 columns = 29,127 rows: 28 x 1,024
    assert predict_file.chunk_rows(132, 1024) == 7_168
    assert predict_file.chunk_rows(100_000, 1024) == 1_024  # never less than one batch
    assert predict_file.chunk_rows(36, 65_536) == 65_536  # a GPU's batch


def test_parquet_chunks_count_each_input_value_four_times(made, tmp_path, monkeypatch):
    """Arrow's reader costs several times a batch's values, so a Parquet chunk takes fewer rows than a CSV one.
    Here 4 input columns (x1, x2, color, id) and 4 output columns (prediction, 3 probabilities) in 2**10
    values: 1024 / (4 + 4) = 128 rows from CSV, 1024 / (4 * 4 + 4) = 51, so 48 (6 batches of 8), from Parquet."""
    monkeypatch.setattr(engine, "prediction_batch", lambda device: 8)
    monkeypatch.setattr(predict_file, "CHUNK_VALUES", 1024)
    model = Predictor.load(made / "kind")
    rows = {}
    for source in ("new.csv", "new.parquet"):
        writer = PredictionWriter(model, str(made / source), predict_file.Output(keep=("id",)))
        chunks = writer.source.chunks
        monkeypatch.setattr(writer.source, "chunks",
                            lambda n, keep, chunks=chunks, source=source: (rows.update({source: n}), chunks(n, keep))[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert writer.write(tmp_path / "p.csv") == 60
    assert rows == {"new.csv": 128, "new.parquet": 48}


def test_chunked_logits_are_written_into_one_tensor_equal_to_one_pass(made, monkeypatch):
    model = Predictor.load(made / "kind")
    frame = read_rows(str(made / "new.csv"))
    monkeypatch.setattr(engine, "prediction_batch", lambda device: 8)
    one_pass = predict_logits(model.model, model.encode(frame))  # the engine's own batches of 8
    widest = max([model.preprocessor.n_outputs, *(max(p.shape) for p in model.model.parameters() if p.dim())])
    batches, chunks = [], []
    hook = model.model.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    original = engine.predict_logits
    monkeypatch.setattr(engine, "predict_logits",
                        lambda m, X, *a, **k: (chunks.append(len(X)), original(m, X, *a, **k))[1])
    monkeypatch.setattr(predictor, "CHUNK_VALUES", widest * 20)  # 20 rows, down to 16: two batches of 8
    logits = model._logits(frame, "new.csv")
    hook.remove()
    assert chunks == [16, 16, 16, 12] and batches == [8] * 7 + [4]  # each chunk scored a batch at a time
    assert logits.shape == (60, 3) and logits.dtype == torch.float32
    assert torch.equal(logits, one_pass)


def test_the_engine_writes_each_batch_into_one_tensor(made, monkeypatch):
    """No list of small outputs to concatenate (they pin the freed activation memory): every batch's logits
    go into one tensor, the caller's ``out`` when given."""
    model = Predictor.load(made / "kind")
    X = model.encode(read_rows(str(made / "new.csv")))
    whole = model.model.eval()(X).detach()  # one product: equal to the batches' to float rounding
    dims, cat = [], torch.cat  # the network's own joins are along columns; one of rows would be the batches'
    monkeypatch.setattr(torch, "cat", lambda tensors, dim=0, **k: (dims.append(dim), cat(tensors, dim=dim, **k))[1])
    logits = predict_logits(model.model, X, batch_size=7)
    assert 0 not in dims and len(dims) > 0
    assert logits.shape == (60, 3)
    torch.testing.assert_close(logits, whole, rtol=1e-6, atol=1e-6)
    out = torch.full((70, 3), -1.0)
    assert predict_logits(model.model, X, batch_size=7, out=out[5:65]).data_ptr() == out[5].data_ptr()
    assert torch.equal(out[5:65], logits) and bool((out[:5] == -1).all()) and bool((out[65:] == -1).all())

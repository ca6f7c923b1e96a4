"""Reliability, round two: files and outputs (issue 14, items 3, 5-8, 13, 14 and 16).

Each test is a row of "Round two: files and outputs" in docs/reliability.md:
manifests that ask for too much, predict writing onto what it reads or onto
special files, two runs racing for one folder name, permissions, a full disk,
deeply nested JSON, and signals during predict.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from forked import PIPE, Forked

from torchclf import api, artifact, checkpoint, predictor
from torchclf.errors import TorchclfError
from torchclf.predictor import Predictor

POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX files, signals and permissions")


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(["a", "b", "c"], n)})
    frame["y"] = np.where(frame["x"] + (frame["c"] == "a") > 0.2, "p", "q")
    return frame


def _train(frame: pd.DataFrame, **model):
    # Plain inputs (no numeric embedding): the sizes below count the inputs and the one hidden layer.
    config = api.make_config(model={"hidden": (16,), "numeric_embedding": "none", **model},
                             train={"epochs": 2, "threads": 1, "seed": 3})
    return api.train(frame, "y", config=config)


def _write_run(result, out: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:  # pictures are not under test here
        mp.setattr(api, "write_plots", lambda *a, **k: [])
        return api.write_run(result, out)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small run folder (5 encoded inputs, one hidden layer of 16) and 40 rows to predict."""
    folder = tmp_path_factory.mktemp("files")
    _write_run(_train(_frame(120)), folder / "run")
    _frame(40, seed=1).drop(columns="y").to_csv(folder / "rows.csv", index=False)
    return folder


@pytest.fixture
def run(made, tmp_path) -> Path:
    shutil.copytree(made / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def rows(made, tmp_path) -> Path:
    shutil.copy(made / "rows.csv", tmp_path / "rows.csv")
    return tmp_path / "rows.csv"


def _edit_manifest(run: Path, change) -> None:
    manifest = json.loads((run / "model.json").read_text())
    change(manifest)
    (run / "model.json").write_text(json.dumps(manifest))


def _load_error(run: Path) -> str:
    with pytest.raises(TorchclfError) as info:
        Predictor.load(run)
    return str(info.value)


# ----- item 3: what a manifest may ask for, and predicting in bounded chunks ---------------------
def test_a_manifest_with_too_many_categories_is_refused_before_anything_is_built(run):
    def widen(m):
        column = next(c for c in m["preprocess"]["columns"] if c["kind"] == "categorical")
        column["categories"] = [f"k{i}" for i in range(262_144)]  # with <other> and x, 2 inputs too many

    _edit_manifest(run, widen)
    assert _load_error(run) == (
        f"{run}: invalid manifest: preprocess.columns must be at most 262144 encoded inputs in all, one-hot "
        "categories included (found 262146); re-train or restore the model")


def test_a_manifest_with_too_many_classes_is_refused(run):
    _edit_manifest(run, lambda m: m["labels"].update(classes=[f"class {i}" for i in range(70_000)]))
    assert _load_error(run) == (f"{run}: invalid manifest: labels.classes must be at most 65536 classes or labels "
                                "(found 70000); re-train or restore the model")


def test_a_manifest_with_too_wide_a_layer_or_too_many_parameters_is_refused(run):
    _edit_manifest(run, lambda m: m["config"]["model"].update(hidden=[300_000]))
    assert _load_error(run) == (f"{run}: invalid manifest: config.model.hidden must be a list of at most 64 layer "
                                "sizes in [1, 262144]; re-train or restore the model")
    # Two layers of 60,000 units: each within bounds, 3.6e9 numbers together (14 GB in float32).
    _edit_manifest(run, lambda m: m["config"]["model"].update(hidden=[60_000, 60_000]))
    total = 5 * 60_000 + 60_000 + 60_000 * 60_000 + 60_000 + 60_000 * 1 + 1
    assert _load_error(run) == (f"{run}: invalid manifest: the network it describes has {total} parameters, more "
                                "than a torchclf model may have (268435456); re-train or restore the model")


def test_predict_encodes_and_scores_rows_in_bounded_chunks_with_the_same_results(made, monkeypatch):
    model = Predictor.load(made / "run")
    frame = pd.read_csv(made / "rows.csv").iloc[:23]
    whole = model.predict_frame(frame)
    sizes = []
    transform = model.preprocessor.transform
    monkeypatch.setattr(model.preprocessor, "transform", lambda f, *a, **k: sizes.append(len(f)) or transform(f, *a, **k))
    monkeypatch.setattr(predictor, "CHUNK_VALUES", 5 * 16)  # the widest layer has 16 units: 5 rows at a time
    chunked = model.predict_frame(frame)
    assert sizes == [5, 5, 5, 5, 3]
    pd.testing.assert_frame_equal(chunked, whole)
    np.testing.assert_array_equal(model.predict_logits(frame), Predictor.load(made / "run").predict_logits(frame))


def test_predicting_more_rows_of_a_wide_model_takes_no_more_memory(monkeypatch):
    """1,002 inputs: 5,000 rows would be 20 MB encoded at once; in chunks of 64 rows, 256 kB at a time."""
    rng = np.random.default_rng(0)
    # 1,000 categories in 1,001 rows (a value in every row would be an identifier, left out)
    frame = pd.DataFrame({"x": rng.normal(size=1001), "c": [f"v{i}" for i in range(1000)] + ["v0"]})
    frame["y"] = np.where(frame["x"] > 0, "p", "q")
    config = api.make_config(model={"hidden": (4,), "numeric_embedding": "none"}, train={"epochs": 1, "threads": 1},
                             data={"max_categories": 1000, "onehot_max": None, "test_size": 0, "validation_size": 0})
    model = api.train(frame, "y", config=config).predictor
    assert model.preprocessor.n_outputs == 1002
    monkeypatch.setattr(predictor, "CHUNK_VALUES", 64 * 1002)
    peaks = {}
    for n in (500, 5000):
        rows = pd.concat([frame.drop(columns="y")] * 5).iloc[:n]
        tracemalloc.start()
        model.predict_proba(rows)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[5000] < 5000 * 1002 * 4 / 16, peaks  # far below one encoded copy of the rows
    assert peaks[5000] < peaks[500] + 400_000, peaks  # ten times the rows: only the probabilities' bytes more


# ----- item 5: predict never writes onto what it reads ------------------------------------------------
def test_predict_refuses_to_write_onto_its_own_input(run, rows, tmp_path):
    before = rows.read_bytes()
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(rows))
    assert (code, err) == (2, f"error: --out {rows}: is the input file {rows}; writing the predictions there "
                              "would destroy it; choose another file\n")
    (tmp_path / "alias.csv").symlink_to(rows)
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(tmp_path / "alias.csv"))
    assert code == 2 and "is the input file" in err
    assert rows.read_bytes() == before and (tmp_path / "alias.csv").is_symlink()


def test_predict_refuses_to_write_inside_the_run_folder(run, rows):
    before = (run / "model.json").read_bytes()
    for target in (run / "model.json", run / "predictions.csv", run / "plots" / ".." / "p.csv"):
        code, _, err = run_cli("predict", str(run), str(rows), "--out", str(target))
        assert (code, err) == (2, f"error: --out {target}: lies inside the run folder {run}, whose files the "
                                  "model is; choose a file outside it\n")
    assert (run / "model.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["history.csv", "metrics.json", "model.json", "model.safetensors"]


# ----- item 6: special files are written, not replaced; `--out -` ----------------------------------------
@POSIX
def test_predict_writes_into_a_fifo_without_replacing_it(run, rows, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(fifo))
    reader.join(timeout=60)
    if reader.is_alive():  # nothing was written into the pipe: let the reader go
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    _, printed, _ = run_cli("predict", str(run), str(rows))
    assert received == [printed]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "rows.csv", "run"]


@POSIX
def test_predict_through_a_symlink_keeps_the_link_and_writes_its_target(run, rows, tmp_path):
    (tmp_path / "null").symlink_to(os.devnull)
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(tmp_path / "null"))
    assert code == 0, err
    assert (tmp_path / "null").is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    target = tmp_path / "kept.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    (tmp_path / "link.csv").symlink_to(target.name)
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(tmp_path / "link.csv"))
    assert code == 0, err
    assert os.readlink(tmp_path / "link.csv") == "kept.csv"
    _, printed, _ = run_cli("predict", str(run), str(rows))
    assert target.read_text() == printed
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@POSIX
@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_predict_onto_a_full_device_fails_with_one_line_and_leaves_the_device(run, rows, tmp_path):
    (tmp_path / "full").symlink_to("/dev/full")
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(tmp_path / "full"))
    assert (code, err) == (2, f"error: {tmp_path / 'full'}: No space left on device; check the path, its "
                              "permissions and free space\n")
    assert (tmp_path / "full").is_symlink() and Path("/dev/full").is_char_device()


@POSIX
def test_predict_refuses_a_socket(run, rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative name: socket paths are limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        code, _, err = run_cli("predict", str(run), str(rows), "--out", "sock")
    assert (code, err) == (2, "error: sock: is a special file (not a regular file, a pipe or a character "
                              "device); give a file name such as predictions.csv\n")


def test_predict_out_dash_prints_to_standard_output(run, rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, printed, err = run_cli("predict", str(run), str(rows), "--out", "-")
    assert (code, err) == (0, "")
    assert printed == run_cli("predict", str(run), str(rows))[1]
    assert printed.splitlines()[0] == "prediction,proba_p,proba_q" and len(printed.splitlines()) == 41
    assert not (tmp_path / "-").exists()


# ----- item 7: claiming a run folder's name ------------------------------------------------------------
HOLD_CLAIM = ("import sys; from torchclf.artifact import claim_run_folder; claim_run_folder(sys.argv[1]); "
              "print('claimed', flush=True); sys.stdin.read()")
TRY_CLAIM = ("import sys\nfrom torchclf.artifact import claim_run_folder, release_run_folder\ntry:\n"
             "    claim_run_folder(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n    sys.exit(2)\n"
             "release_run_folder(sys.argv[1])\nprint('claimed')")


def _hold_claim(out: Path) -> subprocess.Popen:
    """Another process that claims ``out`` and holds it until its standard input closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "claimed\n"
    return proc


def _claim_elsewhere(out: Path) -> str:
    """What another process gets when it tries to claim ``out``."""
    return subprocess.run([sys.executable, "-c", TRY_CLAIM, str(out)], capture_output=True, text=True,
                          timeout=60).stdout.strip()


@POSIX
def test_a_claimed_run_folder_is_refused_at_once_and_a_crashed_claim_blocks_nobody(tmp_path):
    out = tmp_path / "runs" / "same"
    holder = _hold_claim(out)
    try:
        expected = (f"{out}: another torchclf run (process {holder.pid}) is writing this run folder; choose "
                    "another --out or wait for it to finish (a crashed run's claim .same.claim counts no more)")
        with pytest.raises(TorchclfError) as info:
            artifact.claim_run_folder(out)
        assert str(info.value) == expected
        with pytest.raises(TorchclfError) as info, artifact.atomic_folder(out):
            pass
        assert str(info.value) == expected
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up
        holder.wait()
    assert artifact.claim_run_folder(out) == out.parent / ".same.claim"
    artifact.release_run_folder(out)
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == []


@POSIX
def test_atomic_folder_puts_the_run_in_place_of_the_claim(tmp_path):
    out = tmp_path / "run"
    claim = artifact.claim_run_folder(out)
    assert _claim_elsewhere(out).startswith(f"{out}: another torchclf run (process {os.getpid()})")
    with artifact.atomic_folder(out) as folder:
        (folder / "model.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and not claim.exists()
    assert _claim_elsewhere(out) == f"{out}: already exists and is not empty; choose another --out or remove it"


@POSIX
def test_a_failed_write_keeps_the_callers_claim_until_it_is_released(tmp_path):
    out = tmp_path / "run"
    artifact.claim_run_folder(out)
    with pytest.raises(RuntimeError), artifact.atomic_folder(out) as folder:
        (folder / "half").write_text("x")
        raise RuntimeError("training failed")
    assert not out.exists()
    assert _claim_elsewhere(out).startswith(f"{out}: another torchclf run (process {os.getpid()})")
    artifact.release_run_folder(out)
    artifact.release_run_folder(out)  # twice: nothing more to do
    assert _claim_elsewhere(out) == "claimed"
    assert list(tmp_path.iterdir()) == []


@POSIX
def test_default_run_dir_gives_distinct_claimed_names_in_the_same_second(tmp_path):
    names = [artifact.default_run_dir("moons:noise=0.1", tmp_path) for _ in range(3)]
    try:
        assert len(set(names)) == 3
        for path in names:
            assert path.parent == tmp_path
            stem, day, time_, suffix = path.name.split("-")
            assert (stem, len(day), len(time_), len(suffix)) == ("moons", 8, 6, 6)
            assert _claim_elsewhere(path).startswith(f"{path}: another torchclf run (process {os.getpid()})")
    finally:
        for path in names:
            artifact.release_run_folder(path)
    assert list(tmp_path.iterdir()) == []


# ----- item 8: permissions follow the umask ----------------------------------------------------------------
@POSIX
def test_run_folders_weights_and_predictions_follow_the_umask(made, rows, tmp_path):
    result = _train(_frame(60))
    previous = os.umask(0o027)
    try:
        out = _write_run(result, tmp_path / "shared")
        code, _, err = run_cli("predict", str(out), str(rows), "--out", str(tmp_path / "p.csv"))
    finally:
        os.umask(previous)
    assert code == 0, err
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [out, *out.iterdir(), tmp_path / "p.csv"]}
    assert modes == {"shared": "0o750", "history.csv": "0o640", "metrics.json": "0o640", "model.json": "0o640",
                     "model.safetensors": "0o640", "p.csv": "0o640"}


# ----- item 13: a full disk ------------------------------------------------------------------------------
def test_a_full_disk_while_writing_weights_is_one_line_naming_the_file(made, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    _frame(60).to_csv(tmp_path / "data.csv", index=False)
    monkeypatch.setattr(api, "write_plots", lambda *a, **k: [])
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(tmp_path / "data.csv"), "--target", "y", "--out", str(out),
                           "--epochs", "1", "--hidden", "4", "--quiet")
    assert (code, err) == (2, f"error: {out / 'model.safetensors'}: No space left on device; check the path, its "
                              "permissions and free space\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


@POSIX
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_a_report_that_cannot_be_written_leaves_no_temporary_file_in_the_run(run, monkeypatch):
    import resource

    from torchclf import report

    monkeypatch.setattr(report, "build_html", lambda *a, **k: "<p>" + "x" * 200_000 + "</p>")
    before = sorted(p.name for p in run.iterdir())
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(OSError) as info:
            report.write_report(run)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert info.value.filename == str(run / "report.html")
    assert sorted(p.name for p in run.iterdir()) == before


# ----- item 14: deeply nested JSON -------------------------------------------------------------------------
def _nested(levels: int):
    """``levels`` lists, one inside the other, around a 0."""
    value = 0
    for _ in range(levels):
        value = [value]
    return value


def test_json_nested_too_deeply_is_refused_with_one_line(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"a": _nested(63)}))  # 64 levels with the outer object
    assert artifact.read_json(path, "manifest") == {"a": _nested(63)}
    for levels in (64, 940, 100_000):  # the last too deep for Python's own parser
        path.write_text('{"a": ' + "[" * levels + "0" + "]" * levels + "}")
        with pytest.raises(TorchclfError) as info:
            artifact.read_json(path, "manifest")
        assert str(info.value) == (f"{path}: damaged manifest (lists and objects nested more than 64 levels "
                                   "deep); re-train or restore the file")


def test_a_deeply_nested_manifest_gives_one_short_line(run, rows):
    _edit_manifest(run, lambda m: m["config"]["model"].update(activation=_nested(940)))
    code, _, err = run_cli("predict", str(run), str(rows))
    assert (code, err) == (2, f"error: {run / 'model.json'}: damaged manifest (lists and objects nested more than "
                              "64 levels deep); re-train or restore the file\n")


def test_a_deeply_nested_checkpoint_is_refused(tmp_path):
    import torch

    folder = checkpoint.save(tmp_path / "run.checkpoints", {"epoch": 1, "run": {}, "w": torch.zeros(2)}, 1)
    meta = folder / "checkpoint.json"
    doc = json.loads(meta.read_text())
    doc["payload"]["deep"] = _nested(940)
    meta.write_text(json.dumps(doc))
    with pytest.raises(TorchclfError) as info:
        checkpoint.load(folder)
    assert str(info.value) == (f"{meta}: damaged checkpoint (lists and objects nested more than 64 levels deep); "
                               "re-train or restore the file")


# ----- item 16: signals while predict writes -------------------------------------------------------------
# The command line in a process of its own, whose CSV writer writes half the rows, says so and waits:
# a signal sent then arrives in the middle of the write.
def _slow_writer(*args: str):
    """``torchclf`` with ``args``, whose CSV output writes half of the first chunk, says so and waits."""

    def command() -> int:
        import time

        from torchclf import predict_file
        from torchclf.cli import main

        original = predict_file._CsvSink.write

        def half_then_wait(self, table):
            original(self, table.slice(0, len(table) // 2))
            self.stream.flush()
            print("writing", file=sys.stderr, flush=True)
            time.sleep(120)

        predict_file._CsvSink.write = half_then_wait
        return main(list(args))

    return command


def _signal_while_writing(run: Path, rows: Path, out: Path, signum: int) -> tuple[int, str, int]:
    """Exit status, what the process printed after the signal, and its process id."""
    proc = Forked(_slow_writer("predict", str(run), str(rows), "--out", str(out)), stderr=PIPE,
                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    while lines.get(timeout=120) != "writing\n":
        pass
    proc.send_signal(signum)
    status = proc.wait(timeout=60)
    reader.join(timeout=10)
    return status, "".join(lines.queue), proc.pid


def _o_tmpfile_works(folder: Path) -> bool:
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except (AttributeError, OSError):
        return False
    return True


@POSIX
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_predict_removes_the_partial_file_and_says_so(run, rows, tmp_path, signum, code, word):
    out = tmp_path / "p.csv"
    status, err, _ = _signal_while_writing(run, rows, out, signum)
    assert (status, err) == (code, f"{word}; nothing was written to {out}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "run"]


@POSIX
def test_a_killed_predict_leaves_no_partial_file_or_one_the_next_write_removes(run, rows, tmp_path):
    out = tmp_path / "p.csv"
    status, _, pid = _signal_while_writing(run, rows, out, signal.SIGKILL)
    assert status == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("rows.csv", "run"))
    if _o_tmpfile_works(tmp_path):  # Linux: the file has no name until it is complete
        assert left == []
    # Where it had one, the dead writer's file goes with the next write; a running writer's (this one's) stays.
    (tmp_path / f".p.csv.{pid}-dead.partial").write_text("half")
    (tmp_path / f".p.csv.{os.getpid()}-live.partial").write_text("in progress")
    code, _, err = run_cli("predict", str(run), str(rows), "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".p.csv.{os.getpid()}-live.partial", "p.csv",
                                                          "rows.csv", "run"]
    assert out.read_text() == run_cli("predict", str(run), str(rows))[1]

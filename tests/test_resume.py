"""Interruptions: SIGKILL and Ctrl-C mid-training, resuming, and folders that are never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from forked import PIPE, Forked, cli
from safetensors.torch import load_file

from torchclf import checkpoint
from torchclf.callbacks import Callback

# Dropout, mini-batches, a plateau schedule and early stopping's best-weight
# tracking all carry state across epochs that a resume must restore exactly.
FLAGS = ["--target", "label", "--epochs", "40", "--hidden", "8", "--dropout", "0.1", "--batch-size", "32",
         "--patience", "0", "--seed", "3", "--threads", "1", "--quiet"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


# Plots and the HTML report have nothing to do with resuming and cost seconds per run.
pytestmark = pytest.mark.usefixtures("no_pictures")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(7)
    n = 300
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y", "z"], n)})
    frame["label"] = np.where(frame["a"] * frame["b"] + (frame["c"] == "x") > 0.2, "pos", "neg")
    frame.to_csv(folder / "rows.csv", index=False)
    return folder / "rows.csv"


@pytest.fixture(scope="module")
def reference(data) -> Path:
    """An uninterrupted run with the same data, flags and thread count."""
    out = data.parent / "reference"
    code, _, err = run_cli("train", str(data), *FLAGS, "--out", str(out))
    assert code == 0, err
    return out


def _start(data: Path, out: Path, *extra: str) -> Forked:
    return Forked(cli("train", str(data), *FLAGS, "--out", str(out), *extra), env=_env(), stdout=PIPE, stderr=PIPE)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_the_same_weights(data, reference):
    out = data.parent / "killed"
    proc = _start(data, out, "--checkpoint-every", "2")
    folder = checkpoint.folder_for(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = checkpoint.latest(folder)
        if done is not None and done.name >= "epoch-000006":
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not out.exists(), "a killed run must not leave a run folder"
    saved = checkpoint.latest(folder)
    assert saved is not None and "epoch-000006" <= saved.name < "epoch-000040"

    code, stdout, err = run_cli("train", "--resume", str(out), "--quiet")
    assert code == 0, err
    assert f"run folder: {out.resolve()}" in stdout
    assert _sha(out / "model.safetensors") == _sha(reference / "model.safetensors")
    resumed, uninterrupted = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert len(pd.read_csv(out / "history.csv")) == 40
    assert not folder.exists(), "checkpoints are removed once the run folder is complete"


@pytest.mark.slow
def test_sigkill_without_checkpoints_leaves_no_run_folder(data):
    out = data.parent / "plain"
    proc = Forked(cli("train", str(data), *FLAGS[:-1], "--log-every", "1", "--out", str(out)), env=_env(),
                  stdout=PIPE, stderr=PIPE)
    for line in proc.stderr:  # killed once training is visibly under way
        if line.startswith("Epoch"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert not checkpoint.folder_for(out).exists()
    leftovers = [p.name for p in data.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    # Only the name's claim file stays; its lock died with the process, so the next run takes it over.
    assert leftovers == [f".{out.name}.claim"]
    from torchclf import artifact

    artifact.claim_run_folder(out)
    artifact.release_run_folder(out)
    assert [p.name for p in data.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def test_kill_while_the_folder_is_being_written_leaves_nothing_visible_and_is_cleaned_next_time(tmp_path):
    out = tmp_path / "run"
    child = textwrap.dedent(f"""
        import sys, time
        from torchclf.artifact import atomic_folder
        with atomic_folder({str(out)!r}) as tmp:
            (tmp / "model.json").write_text("{{}}")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _visible(tmp_path) == set()
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(stale) == 1 and stale[0].name.startswith(f".run.{proc.pid}-")

    from torchclf.artifact import atomic_folder

    with atomic_folder(out) as tmp:
        (tmp / "model.json").write_text("{}")
    assert _visible(tmp_path) == {"run"}
    assert not stale[0].exists(), "a dead writer's partial folder is removed by the next write"


def test_a_live_writers_partial_folder_is_left_alone(tmp_path):
    from torchclf.artifact import remove_stale_partials

    live = tmp_path / f".run.{os.getpid()}-abc.partial"
    live.mkdir()
    assert remove_stale_partials(tmp_path / "run") == []
    assert live.exists()


@contextlib.contextmanager
def ctrl_c_at(monkeypatch, epoch: int):
    """Send this process SIGINT when training reaches ``epoch``, as a user pressing Ctrl-C would."""
    from torchclf import engine
    from torchclf.callbacks import Callback

    class PressCtrlC(Callback):
        def on_epoch_begin(self, state):
            if state.epoch == epoch:
                os.kill(os.getpid(), signal.SIGINT)

    defaults = engine.default_callbacks
    monkeypatch.setattr(engine, "default_callbacks", lambda *a, **k: [*defaults(*a, **k), PressCtrlC()])
    try:
        yield
    finally:
        monkeypatch.setattr(engine, "default_callbacks", defaults)


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_resume_matches(data, reference, monkeypatch):
    out = data.parent / "ctrl-c"
    with ctrl_c_at(monkeypatch, 5):
        code, _, err = run_cli("train", str(data), *FLAGS, "--out", str(out))
    assert code == 130
    assert "interrupted; stopped after epoch 5 and saved a checkpoint" in err
    assert f"torchclf train --resume {out}" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C gets its usual meaning back"
    assert not out.exists()
    assert checkpoint.latest(checkpoint.folder_for(out)).name == "epoch-000005"

    code, _, err = run_cli("train", "--resume", str(out), "-q")
    assert code == 0, err
    assert _sha(out / "model.safetensors") == _sha(reference / "model.safetensors")


def test_resume_refuses_finished_runs_missing_checkpoints_and_other_options(data, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(data.read_bytes())
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(rows), *FLAGS[:2], "--epochs", "4", "--hidden", "4", "--checkpoint-every",
                           "2", "--threads", "1", "-q", "--out", str(out))
    assert code == 0, err
    assert not checkpoint.folder_for(out).exists()
    code, _, err = run_cli("train", "--resume", str(out))
    assert code == 2 and "this run already finished" in err

    code, _, err = run_cli("train", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "no checkpoint to resume" in err and "--checkpoint-every" in err

    code, _, err = run_cli("train", "--resume", str(out), "--epochs", "9")
    assert code == 2 and "drop the other options" in err


def test_resume_refuses_data_that_changed_since_the_checkpoint(data, tmp_path, monkeypatch):
    from torchclf import engine
    from torchclf.callbacks import Callback

    rows = tmp_path / "rows.csv"
    rows.write_bytes(data.read_bytes())

    class PressCtrlC(Callback):
        def on_epoch_begin(self, state):
            if state.epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    defaults = engine.default_callbacks
    monkeypatch.setattr(engine, "default_callbacks", lambda *a, **k: [*defaults(*a, **k), PressCtrlC()])
    out = tmp_path / "run"
    code, _, _ = run_cli("train", str(rows), *FLAGS[:2], "--epochs", "5", "--hidden", "4", "--threads", "1", "-q",
                         "--out", str(out))
    monkeypatch.setattr(engine, "default_callbacks", defaults)
    assert code == 130 and checkpoint.latest(checkpoint.folder_for(out)) is not None

    code, _, err = run_cli("train", str(rows), *FLAGS[:2], "--out", str(out), "-q")
    assert code == 2 and "interrupted run left checkpoints" in err

    with open(rows, "a", encoding="utf-8") as fh:
        fh.write("0.1,0.2,x,pos\n")
    code, _, err = run_cli("train", "--resume", str(out))
    assert code == 2 and "has changed since the run trained on it" in err

    code, _, err = run_cli("predict", str(checkpoint.folder_for(out)), str(rows))
    assert code == 2 and "holds training checkpoints, not a finished run" in err


def test_damaged_checkpoint_is_a_clear_error(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with ctrl_c_at(monkeypatch, 2):
        code, _, _ = run_cli("train", str(data), *FLAGS[:2], "--epochs", "5", "--hidden", "4", "--threads", "1",
                             "-q", "--out", str(out))
    assert code == 130
    tensors = checkpoint.latest(checkpoint.folder_for(out)) / checkpoint.TENSORS_NAME
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    code, _, err = run_cli("train", "--resume", str(out))
    assert code == 2 and "the checkpoint is damaged or was changed" in err


# ----- resume as an API call, and paths that come from a checkpoint ----------------------
class _StopAt(Callback):
    """Ctrl-C as the user presses it, at the start of a chosen epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch
    def on_epoch_begin(self, state):
        if state.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def _api_config():
    import torchclf

    return torchclf.make_config(model={"hidden": (8,), "dropout": 0.1},
                                train={"epochs": 12, "batch_size": 32, "patience": 0, "seed": 3, "threads": 1})


def test_resume_is_an_api_call_that_continues_to_the_same_weights(data, tmp_path):
    import torchclf
    from torchclf import api

    whole = api.train(str(data), "label", config=_api_config(), out=tmp_path / "whole")
    out = tmp_path / "stopped"
    with pytest.raises(checkpoint.TrainingInterrupted, match=r"torchclf train --resume .*stopped"):
        api.train(str(data), "label", config=_api_config(), out=out, callbacks=[_StopAt(5)])
    assert not out.exists() and checkpoint.latest(checkpoint.folder_for(out)).name == "epoch-000005"
    resumed = torchclf.api.resume(out)
    assert [r["epoch"] for r in resumed.history] == list(range(1, 13))
    assert _sha(out / "model.safetensors") == _sha(tmp_path / "whole" / "model.safetensors")
    assert resumed.metrics["test"] == whole.metrics["test"]
    assert not checkpoint.folder_for(out).exists()


def test_resume_writes_where_the_user_points_and_deletes_only_its_own_files(data, tmp_path):
    """A moved checkpoint folder resumes into the folder named now; a user's file kept beside it stays."""
    import shutil

    from torchclf import api

    first = tmp_path / "first"
    with pytest.raises(checkpoint.TrainingInterrupted):
        api.train(str(data), "label", config=_api_config(), out=first, callbacks=[_StopAt(3)])
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(checkpoint.folder_for(first)), str(checkpoint.folder_for(moved)))
    keep = checkpoint.folder_for(moved) / "keepme" / "important.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    code, _, err = run_cli("train", "--resume", str(moved), "-q")
    assert code == 0, err
    assert (moved / "model.safetensors").is_file() and not first.exists()
    assert keep.read_text() == "mine"
    assert sorted(p.name for p in checkpoint.folder_for(moved).iterdir()) == ["keepme"]


def test_a_checkpoint_of_the_previous_format_is_refused_with_advice(data, tmp_path):
    from torchclf import api
    from torchclf.artifact import read_json, write_json

    out = tmp_path / "old"
    with pytest.raises(checkpoint.TrainingInterrupted):
        api.train(str(data), "label", config=_api_config(), out=out, callbacks=[_StopAt(3)])
    meta = checkpoint.latest(checkpoint.folder_for(out)) / checkpoint.JSON_NAME
    doc = read_json(meta, "checkpoint")
    doc["format_version"] = 1
    write_json(meta, doc)
    code, _, err = run_cli("train", "--resume", str(out))
    assert code == 2 and "a checkpoint of torchclf 0.1 (format 1)" in err and "train it again" in err

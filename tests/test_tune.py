"""`torchclf tune`: seeded and reproducible, pruning, resuming after SIGKILL, workers sharing a study,
the saved best configuration, the report's Tuning section, and one-line errors."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from forked import DEVNULL, PIPE, Forked, cli

from torchclf import api

optuna = pytest.importorskip("optuna")

DATA = "moons:n_samples=200"
# The fixture's study searches learning rates above the default (1e-3), so that it holds no defaults trial
# and saves a trial whose settings all differ from the defaults.
SPACE = {"lr": {"low": 0.003, "high": 0.03, "log": True}}
SPACE_TOML = "[space]\nlr = { low = 0.003, high = 0.03, log = true }\n"
FLOATS, TEXTS = ("lr", "weight_decay", "dropout", "label_smoothing"), ("numeric_embedding", "scaling")



@pytest.fixture
def no_tune_pictures(monkeypatch):
    import torchclf.report
    import torchclf.tune

    monkeypatch.setattr(api, "write_plots", lambda *a, **k: [])
    monkeypatch.setattr(torchclf.report, "write_report", lambda *a, **k: None)
    monkeypatch.setattr(torchclf.tune, "PICTURES", ())


def _trials(folder) -> list[dict]:
    with open(folder / "tune" / "trials.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _study(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url)


def _finished(study) -> list:
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`torchclf tune` on the command line: 4 trials of 6 epochs, seed 3, no pruner, with every picture."""
    out = tmp_path_factory.mktemp("tune") / "best"
    space = out.parent / "space.toml"
    space.write_text(SPACE_TOML)
    code, stdout, stderr = run_cli("tune", DATA, "--trials", "4", "--epochs", "6", "--seed", "3", "--pruner", "none",
                                   "--space", str(space), "--out", str(out))
    return code, stdout, stderr, out


def test_tune_saves_the_best_trial_as_a_run_with_its_study(tuned):
    code, stdout, stderr, out = tuned
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["0", "1", "2", "3"]
    assert [line.split()[2] for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert f"run folder: {out}" in stdout
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["complete"] * 4
    # moons has no categorical column, so onehot_max, which could change nothing, is not searched.
    names = ["weight_decay", "dropout", "batch_size", "width", "depth", "label_smoothing", "numeric_embedding",
             "embedding_dim", "scaling", "lr"]
    assert list(rows[0]) == ["number", "state", "value", *names, "epochs", "note"]
    best = min(rows, key=lambda r: float(r["value"]))
    record = json.loads((out / "model.json").read_text())["extra"]["tune"]
    url = f"sqlite:///{out.resolve()}.optuna.db"
    assert (record["study"], record["storage"], record["trial"]) == ("best", url, int(best["number"]))
    assert record["value"] == float(best["value"])
    assert record["params"] == {k: float(best[k]) if k in FLOATS else best[k] if k in TEXTS else int(best[k])
                                for k in names}
    params = record["params"]
    assert record["settings"] == {**{k: v for k, v in params.items() if k not in ("width", "depth")},
                                  "hidden": [params["width"]] * params["depth"]}
    assert record["counts"] == {"complete": 4, "pruned": 0, "fail": 0, "running": 0}
    assert record["choice"] == {"rule": "the best trial, unless within 2 standard error(s) of the defaults",
                                "best_trial": int(best["number"]), "best_value": float(best["value"])}
    # The study in the database holds the same trials.
    study = _study(url, "best")
    assert [t.number for t in _finished(study)] == [0, 1, 2, 3]
    assert study.best_trial.number == record["trial"] and study.best_value == record["value"]
    # The trial's objective is the saved run's validation log loss (of its calibrated probabilities).
    calibration = json.loads((out / "metrics.json").read_text())["validation"]["calibration"]
    assert calibration["calibrated"]["log_loss"] == pytest.approx(record["value"], abs=5e-7)  # 6 decimals
    assert calibration["uncalibrated"]["log_loss"] != pytest.approx(record["value"], abs=5e-7)


def test_report_shows_the_tuning_section(tuned):
    from torchclf.report import SECTIONS

    out = tuned[3]
    assert sorted(p.name for p in (out / "tune").iterdir()) == ["curves.png", "history.png", "importance.png",
                                                              "summary.json", "trials.csv"]
    page = (out / "report.html").read_text()
    ids = [sid for sid, _ in SECTIONS] + ["tuning"]
    assert [page.index(f'<section id="{sid}">') for sid in ids] == sorted(page.index(f'<section id="{sid}">')
                                                                          for sid in ids)
    tuning = page[page.index('<section id="tuning">'):]
    assert tuning.count("<img ") == 3
    assert '<a href="#tuning">Tuning</a>' in page
    summary = json.loads((out / "tune" / "summary.json").read_text())
    assert summary["counts"]["complete"] == 4 and f"<td>{summary['best_trial']}</td>" in tuning


def test_a_seeded_study_is_reproducible(tuned, tmp_path, no_tune_pictures):
    """The same seed proposes the same trials and gets the same losses; the saved weights are the same."""
    import torch

    import torchclf

    out = tmp_path / "again"

    again = torchclf.tune(DATA, trials=4, config=api.make_config(train={"epochs": 6, "seed": 3}), pruner="none",
                          space=SPACE, out=out)
    assert _trials(out) == _trials(tuned[3])
    first, second = _weights(tuned[3]), _weights(out)
    assert list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert again.train_command == json.loads((tuned[3] / "model.json").read_text())["extra"]["tune"]["train_command"]


def test_training_again_with_the_recorded_settings_gives_the_same_weights(tuned, tmp_path, no_tune_pictures):
    import torch

    out = tuned[3]
    command = json.loads((out / "model.json").read_text())["extra"]["tune"]["train_command"]
    words = shlex.split(command)
    assert words[:3] == ["torchclf", "train", DATA] and "--hidden" in words and "--seed" in words
    code, _, stderr = run_cli(*words[1:], "--out", str(tmp_path / "retrained"), "-q")
    assert code == 0, stderr
    tuned_weights, retrained = _weights(out), _weights(tmp_path / "retrained")
    assert list(tuned_weights) == list(retrained)
    assert all(torch.equal(tuned_weights[k], retrained[k]) for k in tuned_weights)


def test_pruning_stops_hopeless_trials(tmp_path, no_tune_pictures):
    """A learning rate of 1e-6 cannot keep up with 0.03: once two trials finished, those trials are pruned."""
    import torchclf

    space = {"lr": [0.03, 1e-6], "weight_decay": 0.01, "dropout": 0.0, "batch_size": 64, "width": 32, "depth": 1}
    result = torchclf.tune(DATA, trials=6, config=api.make_config(train={"epochs": 8}), space=space, out=tmp_path / "p",
                           pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    rows = _trials(tmp_path / "p")
    assert [(r["state"], r["lr"], r["epochs"]) for r in rows] == [
        ("complete", "0.03", "8"), ("complete", "0.03", "8"), ("pruned", "1e-06", "2"),
        ("pruned", "1e-06", "2"), ("pruned", "1e-06", "2"), ("pruned", "1e-06", "2")]
    assert result.counts == {"complete": 2, "pruned": 4, "fail": 0, "running": 0}
    # An Optuna pruner is asked, and told the best loss so far, every epoch.
    trial = result.study.trials[2]
    assert trial.user_attrs["curve"] == [[e, trial.intermediate_values[e]] for e in (1, 2)]
    # Without a pruner the same study runs every trial to its end.
    result = torchclf.tune(DATA, trials=6, config=api.make_config(train={"epochs": 8}), space=space,
                           out=tmp_path / "n", pruner="none")
    assert [(r["state"], r["epochs"]) for r in _trials(tmp_path / "n")] == [("complete", "8")] * 6


def test_a_study_continues_only_with_the_same_space(tuned, tmp_path):
    import torchclf
    from torchclf.errors import TorchclfError

    out = tuned[3]
    url = f"sqlite:///{out.resolve()}.optuna.db"
    with pytest.raises(TorchclfError, match="the study was started with another search space; continue it"):
        torchclf.tune(DATA, trials=5, config=api.make_config(train={"epochs": 6, "seed": 3}), storage=url,
                      study="best", space={"dropout": 0.3}, out=tmp_path / "x")
    with pytest.raises(TorchclfError, match="the study was started with another fixed settings"):
        torchclf.tune(DATA, trials=5, config=api.make_config(train={"epochs": 7, "seed": 3}), storage=url,
                      study="best", space=SPACE, out=tmp_path / "x")
    assert len(_finished(_study(url, "best"))) == 4


def _env():
    # Heartbeats every second: a killed worker's trial is freed after 4 s instead of 20.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCHCLF_TUNE_HEARTBEAT": "1"}


def _tune_process(*args, **streams) -> Forked:
    """The command line in another process, forked from this one while ``no_tune_pictures`` holds (the pictures
    cost seconds and are tested in-process)."""
    assert sys.modules["torchclf.tune"].PICTURES == (), "fork with no_tune_pictures"
    return Forked(cli("tune", DATA, *args), env=_env(), **streams)


def _has_study(db: Path, name: str) -> bool:
    """True once the tune has made the study in ``db``; read-only, so as not to race it making the tables."""
    if not db.exists():
        return False
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        try:
            return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
        except sqlite3.OperationalError:  # no tables yet
            return False


def _beating(db: Path, trial_id: int) -> bool:
    """Whether Optuna's heartbeat thread has recorded trial ``trial_id`` (its own table: read only here)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        return con.execute("SELECT 1 FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)).fetchone() is not None


def _wait_for_trial(process, url: str, name: str, number: int, running: bool) -> None:
    """Wait until the study ``name`` has a trial ``number`` that drew its parameters (and, if ``running``, still
    runs and has a heartbeat: the test below covers a trial killed before its first heartbeat).

    Fails when ``process``, the tune filling the study, ends first.
    """
    db = Path(url.removeprefix("sqlite:///"))
    deadline = time.monotonic() + 300
    study = None
    while True:
        assert process.poll() is None and time.monotonic() < deadline, f"tune ended before its trial {number}"
        if study is None and _has_study(db, name):
            study = _study(url, name)
        trials = study.get_trials() if study is not None else []
        if len(trials) > number and trials[number].params and (not running or (
                trials[number].state.name == "RUNNING" and _beating(db, trials[number]._trial_id))):
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_tune_finishes_only_the_remaining_trials(tmp_path, monkeypatch, no_tune_pictures):
    """A tune process killed in its third trial; the same command, run again (in this process), does the rest."""
    out = tmp_path / "killed"
    url = f"sqlite:///{out.resolve()}.optuna.db"
    args = ("--trials", "6", "--epochs", "30", "--pruner", "none", "--confirm", "0", "--out", str(out))
    first = _tune_process(*args, stderr=DEVNULL, stdout=DEVNULL)
    try:
        _wait_for_trial(first, url, "killed", 2, running=True)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert first.returncode == -signal.SIGKILL and not out.exists()
    before = _study(url, "killed").get_trials()
    kept = {t.number: t.params for t in before if t.state.name == "COMPLETE"}
    assert sorted(kept) == [0, 1] and [t.state.name for t in before[2:]] == ["RUNNING"]

    monkeypatch.setenv("TORCHCLF_TUNE_HEARTBEAT", "1")  # as the killed process had
    monkeypatch.setattr(sys.modules["torchclf.tune"], "GRACE_BEATS", 2)  # its trial is stale after 2 s, not 4
    code, _, stderr = run_cli("tune", DATA, *args)
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("trial ")]
    assert "continuing with 2 complete and 0 pruned trial(s) of 6" in stderr
    assert [line.split()[1] for line in lines] == ["3", "4", "5", "6"]
    study = _study(url, "killed")
    assert [t.number for t in _finished(study)] == [0, 1, 3, 4, 5, 6]
    assert {t.number: t.params for t in study.get_trials() if t.number in kept} == kept
    assert study.trials[2].state.name == "FAIL"  # the killed trial, failed once its heartbeat stopped
    assert json.loads((out / "model.json").read_text())["extra"]["tune"]["counts"]["complete"] == 6


@pytest.mark.slow
def test_a_tune_killed_before_optunas_first_heartbeat_is_resumed(tmp_path, no_tune_pictures):
    """The window Optuna leaves: its heartbeat thread records a trial's first beat while the trial already runs,
    so a worker can die with a trial that drew parameters and never beat. Here the thread never beats (as if
    every kill came first) and the worker dies (``os._exit``, no clean-up) once its third trial has drawn its
    first parameter; the same command then fails that trial when its heartbeat goes stale and runs the rest,
    instead of waiting for it without end."""
    out = tmp_path / "window"
    url = f"sqlite:///{out.resolve()}.optuna.db"
    args = ("--trials", "4", "--epochs", "10", "--pruner", "none", "--confirm", "0", "--out", str(out))

    def dies_in_trial_2():
        import optuna.study._optimize

        tune = sys.modules["torchclf.tune"]
        optuna.study._optimize.get_heartbeat_thread = lambda *a: contextlib.nullcontext()
        suggest = tune.Dimension.suggest

        def then_die(self, trial):
            value = suggest(self, trial)
            if trial.number == 2:
                os._exit(9)
            return value

        tune.Dimension.suggest = then_die
        return cli("tune", DATA, *args)()

    first = Forked(dies_in_trial_2, env=_env())
    assert first.wait(300) == 9
    before = _study(url, "window").get_trials()
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"] and before[2].params

    again = Forked(cli("tune", DATA, *args), env=_env(), stderr=PIPE)
    try:
        _, stderr = again.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        again.kill()
        again.wait(30)
        pytest.fail("the same command did not finish in 120 s: it waited for the dead worker's trial")
    assert again.returncode == 0, stderr
    assert "continuing with 2 complete and 0 pruned trial(s) of 4" in stderr
    study = _study(url, "window")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path, monkeypatch, no_tune_pictures):
    """A tune in another process and the same command in this process, begun once the other runs a trial."""
    out = tmp_path / "shared"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # Trials of about 0.3 s each: long enough for this process to join before the other has run them all.
    # No confirmation: the workers' shared choice is the subject here (confirm_trial has its own tests below).
    args = ("--trials", "6", "--epochs", "40", "--pruner", "none", "--confirm", "0", "--storage", url, "--study", "s",
            "--out", str(out))
    monkeypatch.setenv("TORCHCLF_TUNE_HEARTBEAT", "1")
    # Files, not pipes: nothing reads the other process's output while this one tunes.
    with open(tmp_path / "other.out", "w+") as other_out, open(tmp_path / "other.err", "w+") as other_err:
        other = _tune_process(*args, stdout=other_out, stderr=other_err)
        try:
            _wait_for_trial(other, url, "s", 0, running=False)  # so that both take part, whatever their start-up
            here = run_cli("tune", DATA, *args)
            other.wait(timeout=300)
        finally:
            if other.poll() is None:
                other.kill()
                other.wait(30)
        other_out.seek(0)
        other_err.seek(0)
        outputs = [(other_out.read(), other_err.read()), here[1:]]
    assert [other.returncode, here[0]] == [0, 0], [o[1] for o in outputs]
    ran = [[int(line.split()[1]) for line in err.splitlines() if line.startswith("trial ")] for _, err in outputs]
    study = _study(url, "s")
    finished = _finished(study)
    assert len(finished) == 6 and all(ran), ran
    # Every finished trial was run by exactly one of the two, and none was lost.
    assert sorted(ran[0] + ran[1]) == sorted(t.number for t in finished)
    # The workers never drew the same random start.
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 6
    # One saved the chosen trial; the other said where.
    from torchclf.tune import choose_trial

    assert json.loads((out / "model.json").read_text())["extra"]["tune"]["trial"] == choose_trial(study)[0].number
    said = [out_text + err for out_text, err in outputs]
    assert sum("another process is saving" in s or "already holds the best configuration" in s for s in said) == 1

BAD_SPACES = [
    ("[space]\nlearning_rate = { low = 0.001, high = 0.1 }\n",
     "unknown parameter 'learning_rate'; known: width, depth, hidden, activation, dropout, norm, numeric_embedding, "
     "periodic_max, embedding_dim, epochs"),
    ("[space]\nlr = { low = 0.1, high = 0.001, log = true }\n", "lr: low 0.1 is not below high 0.001"),
    ("[space]\ndropout = { low = 0.0, high = 1.5 }\n",
     "dropout: high 1.5 is outside the parameter's bounds (>= 0 and < 1)"),
    ("[space]\ndepth = { low = 1.0, high = 3 }\n", "depth: low 1.0 is not a whole number"),
    ("[space]\nlr = \"fast\"\n", "lr: got 'fast', expected a number > 0"),
    ("[space]\noptimizer = [\"adam\", \"lion\"]\n", "optimizer: got 'lion', expected one of adam, adamw, sgd"),
    ("[space]\nactivation = { low = 1, high = 2 }\n", "activation: a str parameter has no range; give a list"),
    ("[space]\nlr = { low = 0, high = 0.1 }\n", "lr: low 0 is outside the parameter's bounds (> 0)"),
    ("[space]\nweight_decay = { low = 0, high = 0.1, log = true }\n", "weight_decay: a log range needs low above 0"),
    ("[space\nlr = 1\n", "not valid TOML"),
    ("[variants]\na = \"--lr 1\"\n", "expected one [space] table of parameters"),
    ("[space]\nseed = [1, 2]\n", "unknown parameter 'seed'"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES, ids=[m.split(":")[0][:20] for _, m in BAD_SPACES])
def test_a_bad_space_file_is_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    code, _, stderr = run_cli("tune", DATA, "--space", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(f"error: {path}: "), stderr
    assert message in stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.optuna.db").exists()


@pytest.mark.parametrize("args, message", [
    (("--val-size", "0"), "tune: needs validation rows to score trials on"),
    (("--pruner", "mean"), "--pruner: got 'mean', expected one of quartile, median, halving, none"),
    (("--timeout", "0"), "--timeout: got 0.0, expected a number of seconds above 0"),
    (("--confirm", "1"), "--confirm: got 1, expected 0 (no confirmation) or a number of folds >= 2"),
    (("--lr", "0.01", "--weight-decay", "0", "--dropout", "0", "--batch-size", "32", "--hidden", "8",
      "--label-smoothing", "0", "--numeric-embedding", "none", "--embedding-dim", "4", "--scaling", "robust",
      "--onehot-max", "4"),
     ("tune: the flags hidden, dropout, numeric_embedding, embedding_dim, batch_size, lr, weight_decay, "
      "label_smoothing, onehot_max, scaling fix every searched parameter")),
    # onehot_max is left, but moons has no categorical column for it to change.
    (("--lr", "0.01", "--weight-decay", "0", "--dropout", "0", "--batch-size", "32", "--hidden", "8",
      "--label-smoothing", "0", "--numeric-embedding", "none", "--embedding-dim", "4", "--scaling", "robust"),
     "moons: the parameters left to search cannot change a model of these columns"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, message):
    code, _, stderr = run_cli("tune", DATA, *args, "--out", str(tmp_path / "o"))
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


def test_flags_are_fixed_and_leave_the_search(tmp_path):
    from torchclf.tune import DEFAULT_SPACE, parse_space

    space = DEFAULT_SPACE.without(["lr", "hidden"])
    assert space.names == ["weight_decay", "dropout", "batch_size", "label_smoothing", "numeric_embedding",
                           "embedding_dim", "scaling", "onehot_max"]
    space = parse_space({"hidden": ["64", [32, 32]], "batch_size": [32, "full"], "dropout": 0.1})
    assert space.names == ["lr", "weight_decay", "label_smoothing", "numeric_embedding", "embedding_dim", "scaling",
                           "onehot_max", "hidden", "batch_size"]
    assert space.fixed == {"dropout": 0.1}
    assert space.settings({"hidden": "32,32", "batch_size": "full", "lr": 0.5}) == {
        "dropout": 0.1, "hidden": (32, 32), "batch_size": None, "lr": 0.5}


def test_trials_never_refit_and_the_saved_run_does_when_asked(tmp_path, monkeypatch, no_tune_pictures):
    calls = []
    refit = api.refit_network
    monkeypatch.setattr(api, "refit_network", lambda *a, **k: calls.append(1) or refit(*a, **k))
    out = tmp_path / "refit"
    code, _, stderr = run_cli("tune", DATA, "--trials", "2", "--epochs", "4", "--pruner", "none", "--refit",
                              "--out", str(out))
    assert code == 0, stderr
    assert calls == [1]  # the saved run only: a trial scored on rows it trained on would look better than it is
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["config"]["train"]["refit"] is True


def test_torchclf_tune_is_the_function_even_after_importing_the_module():
    import torchclf
    import torchclf.tune  # sets the package's attribute to the module
    from torchclf.errors import TorchclfError

    with pytest.raises(TorchclfError, match="--trials: got 0, expected a whole number of trials >= 1"):
        torchclf.tune(DATA, trials=0)


def test_the_default_space_is_checked_against_the_table_and_holds_its_defaults():
    from torchclf.config import PARAM, RunConfig
    from torchclf.tune import (
        DEFAULT_SPACE,
        DEFAULT_TABLE,
        default_params,
        parse_space,
        searchable,
    )

    # Parsed like a space file (each range and choice passed its table row's checks), over every option
    # of the default recipe.
    assert DEFAULT_SPACE.names == list(DEFAULT_TABLE) and set(DEFAULT_SPACE.names) <= set(searchable())
    assert {"numeric_embedding", "embedding_dim", "label_smoothing", "scaling", "onehot_max"} <= set(DEFAULT_TABLE)
    # Every table default lies inside: 1,000 training rows make the automatic batch size 64.
    assert default_params(DEFAULT_SPACE, RunConfig(), 1000) == {
        **{name: PARAM[name].default for name in DEFAULT_SPACE.names if name in PARAM},
        "batch_size": 64, "width": 256, "depth": 2}
    assert default_params(DEFAULT_SPACE, RunConfig(), 40_000)["batch_size"] == 512
    # A fixed setting counts as the default; a default outside the space means no defaults trial.
    config = api.make_config(train={"lr": 0.01})
    assert default_params(DEFAULT_SPACE.without(["lr"]), config, 1000)["weight_decay"] == 0.01
    assert default_params(parse_space(SPACE), RunConfig(), 1000) is None
    assert default_params(parse_space({"hidden": ["64", "256,256"]}), RunConfig(), 1000)["hidden"] == "256,256"


def test_dimensions_that_cannot_change_the_model_are_not_searched():
    import pandas as pd

    from torchclf.config import RunConfig
    from torchclf.preprocess import Preprocessor
    from torchclf.tune import DEFAULT_SPACE, fit_to_data, parse_space

    frame = pd.DataFrame({"x": [0.1, 0.5, 0.9, 0.3, 0.7, 0.2] * 10, "city": list("abcdef") * 10})
    names = DEFAULT_SPACE.names

    def searched(columns, space=DEFAULT_SPACE):
        return fit_to_data(space, Preprocessor(100, onehot_max=16).fit(columns), RunConfig(), len(columns)).names

    # Six categories of ten rows each: onehot_max 4 embeds the column, 16 and 64 one-hot encode it.
    assert searched(frame) == names
    # Five rows each, fewer than embed_rows (8): one-hot whatever onehot_max says, and nothing to embed.
    assert searched(frame[["city"]].iloc[:30]) == [n for n in names if n not in (
        "scaling", "numeric_embedding", "onehot_max", "embedding_dim")]
    # Unless a space file searches embed_rows too: with none, onehot_max 4 embeds them again.
    assert searched(frame[["city"]].iloc[:30], parse_space({"embed_rows": ["none", 8]})) == [
        n for n in names if n not in ("scaling", "numeric_embedding")] + ["embed_rows"]
    assert searched(frame[["x"]]) == [n for n in names if n != "onehot_max"]
    assert searched(frame[["city"]]) == [n for n in names if n not in ("scaling", "numeric_embedding")]
    three = frame[["city"]].replace({"d": "a", "e": "b", "f": "c"})
    assert searched(three) == [n for n in names if n not in ("scaling", "numeric_embedding", "onehot_max",
                                                               "embedding_dim")]
    # A space file's own choices are searched as written.
    assert "onehot_max" in searched(three, parse_space({"onehot_max": [8, 16]}))
    # More numeric columns than periodic_max (32): no numeric column can be embedded, the choice changes nothing.
    wide = pd.DataFrame({f"x{i}": frame["x"] * (i + 1) for i in range(33)})
    assert searched(wide) == [n for n in names if n not in ("onehot_max", "numeric_embedding", "embedding_dim")]


def test_the_defaults_are_the_first_trial(tmp_path, no_tune_pictures):
    import torchclf
    from torchclf.tune import choose_trial, unpack_losses

    result = torchclf.tune(DATA, trials=3, config=api.make_config(train={"epochs": 12}), out=tmp_path / "d",
                           confirm=0)
    first = result.study.trials[0]
    assert first.user_attrs["defaults"] is True
    assert first.params == {"lr": 0.001, "weight_decay": 0.01, "dropout": 0.2, "batch_size": 64, "width": 256,
                            "depth": 2, "label_smoothing": 0.1, "numeric_embedding": "periodic", "embedding_dim": 8,
                            "scaling": "standard"}
    # The pruner is asked at epochs 5 and 10, and only those reach the database; the curve has every epoch.
    assert sorted(first.intermediate_values) == [5, 10]
    assert [epoch for epoch, _ in first.user_attrs["curve"]] == list(range(1, 13))
    assert first.value == pytest.approx(unpack_losses(first.user_attrs["row_losses"]).mean(), rel=1e-6)
    chosen, choice = choose_trial(result.study)
    assert (result.best_trial, result.choice) == (chosen.number, choice) and choice["defaults_trial"] == 0


def test_the_best_trial_replaces_the_defaults_only_when_clearly_better():
    import numpy as np
    from optuna.distributions import FloatDistribution

    from torchclf.tune import choose_trial, pack_losses

    defaults = np.array([0.5, 0.25, 0.75, 1.0])  # exact in float32, as the losses are stored

    def study_with(other):
        study = optuna.create_study()
        for losses, attrs in ((defaults, {"defaults": True}), (other, {})):
            study.add_trial(optuna.trial.create_trial(
                params={"lr": 0.001}, distributions={"lr": FloatDistribution(1e-4, 1.0)}, value=float(losses.mean()),
                user_attrs={**attrs, "row_losses": pack_losses(losses)}))
        return study

    rule = "the best trial, unless within 2 standard error(s) of the defaults"
    # 0.125 lower on every row: clearly better.
    trial, choice = choose_trial(study_with(defaults - 0.125))
    assert trial.number == 1 and choice == {"rule": rule, "best_trial": 1, "best_value": 0.5, "defaults_trial": 0,
                                            "defaults_value": 0.625, "difference": -0.125, "standard_error": 0.0}
    # 0.0625 lower on average, but rows differ by -0.5, 0.25, -0.25, 0.25: a standard error of 0.1875.
    study = study_with(defaults + np.array([-0.5, 0.25, -0.25, 0.25]))
    trial, choice = choose_trial(study)
    assert trial.number == 0 and choice == {"rule": rule, "best_trial": 1, "best_value": 0.5625, "defaults_trial": 0,
                                            "defaults_value": 0.625, "difference": -0.0625, "standard_error": 0.1875}
    assert choose_trial(study, within=0)[0].number == 1
    # 0.0625 lower on average, rows by -0.125, -0.125, 0, 0: 1.7 standard errors, kept within 2 but not within 1.
    study = study_with(defaults + np.array([-0.125, -0.125, 0.0, 0.0]))
    trial, choice = choose_trial(study)
    assert trial.number == 0 and choice["standard_error"] == pytest.approx((0.015625 / 3) ** 0.5 / 2, rel=1e-12)
    assert choose_trial(study, within=1)[0].number == 1



# Three epochs: the defaults (lr 1e-3) are still learning, so a trial with a larger rate beats them.
CONFIRMED = {"data": "moons:n_samples=300,noise=0.3", "trials": 5, "pruner": "none", "confirm": 3,
             "space": {"lr": {"low": 1e-4, "high": 0.1, "log": True}}}


def test_a_trial_that_beats_the_defaults_is_confirmed_by_cross_validation(tmp_path, no_tune_pictures, monkeypatch):
    import numpy as np

    import torchclf
    from torchclf import tune as tuning
    from torchclf.tune import unpack_losses

    config = api.make_config(train={"epochs": 3, "seed": 5})
    lines = []
    result = torchclf.tune(**CONFIRMED, config=config, out=tmp_path / "c", verbose=True, write=lines.append)
    study, choice = result.study, result.choice
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert complete[0].number != 0 and study.trials[0].user_attrs["defaults"]  # the premise
    finalists = [0, *[t.number for t in complete if t.number != 0][:2]]
    # Each finalist's out-of-fold loss of every training and validation row (240 of 300), kept in the study.
    stored = {n: unpack_losses(study.user_attrs[f"cv_losses_3_{n}"]) for n in finalists}
    assert sorted(choice["cross_validated"]) == sorted(map(str, finalists)) and choice["rows"] == 240
    assert {n: len(v) for n, v in stored.items()} == dict.fromkeys(finalists, 240)
    for n, losses in stored.items():
        assert choice["cross_validated"][str(n)] == pytest.approx(losses.mean(), rel=1e-6)
    # The finalist with the lowest cross-validated loss, saved when more than one standard error below the defaults.
    finalist = min(finalists[1:], key=lambda n: stored[n].mean())
    diff = stored[finalist] - stored[0]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert choice["finalist"] == finalist and choice["standard_error"] == pytest.approx(se, rel=1e-5)
    assert result.best_trial == (finalist if diff.mean() < -se else 0)
    assert any(line.startswith("confirming: 3-fold cross-validation of the defaults (trial 0) and trial(s) ")
               for line in lines)
    saved = json.loads((tmp_path / "c" / "model.json").read_text())["extra"]["tune"]
    assert saved["trial"] == result.best_trial and saved["choice"]["cross_validated"] == choice["cross_validated"]
    # The report's Tuning section says so.
    from torchclf.report import _tuning_choice

    means = [f"trial {n} {stored[n].mean():.4f}" + (" (the defaults)" if n == 0 else "") for n in finalists]
    assert _tuning_choice(choice) == [["how it was chosen", choice["rule"]],
                                      ["3-fold cross-validated loss on 240 rows", ", ".join(means)]]

    # The same study again (a resumed or second worker): the kept losses are read, not trained again.
    def no_training(*args, **kwargs):
        raise AssertionError("trained a finalist again")

    monkeypatch.setattr(tuning, "cross_validated_losses", no_training)
    again = torchclf.tune(**CONFIRMED, config=config, out=tmp_path / "again", storage=f"{tmp_path / 'c'}.optuna.db",
                          study="c")
    assert (again.best_trial, again.choice) == (result.best_trial, choice)
    # Without confirmation: the validation rows' rule.
    plain = torchclf.tune(**{**CONFIRMED, "confirm": 0}, config=config, out=tmp_path / "plain",
                          storage=f"{tmp_path / 'c'}.optuna.db", study="c")
    assert "cross_validated" not in plain.choice and plain.choice["best_trial"] == complete[0].number
    # A confirmation that cannot train (here: 4 folds, none stored) falls back to that rule, and says so.
    def cannot(*args, **kwargs):
        raise tuning.TorchclfError("too few rows in a fold")

    monkeypatch.setattr(tuning, "cross_validated_losses", cannot)
    lines.clear()
    fallback = torchclf.tune(**{**CONFIRMED, "confirm": 4}, config=config, out=tmp_path / "fallback",
                             storage=f"{tmp_path / 'c'}.optuna.db", study="c", verbose=True, write=lines.append)
    assert fallback.best_trial == plain.best_trial
    assert fallback.choice == {**plain.choice, "confirmation": "failed on trial 0: too few rows in a fold"}
    assert "confirming trial 0 failed (too few rows in a fold); choosing on the validation rows instead" in lines


def test_what_the_rows_hold_is_said_once_not_for_every_training(tmp_path, no_tune_pictures):
    """The trials, the confirmation's folds and the final run all train on the rows the study read first, so
    a warning about them (here: an identifier column) is given once, by that first reading."""
    import warnings

    import numpy as np
    import pandas as pd

    import torchclf
    from torchclf.data.sources import DataWarning

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "z": rng.normal(size=120)})
    frame["ticket_id"] = [f"T{i:05d}" for i in rng.permutation(120)]
    frame["y"] = np.where(frame["x"] + 0.3 * rng.normal(size=120) > 0, "a", "b")
    config = api.make_config(train={"epochs": 2, "seed": 5})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = torchclf.tune(frame, "y", trials=3, pruner="none", confirm=2, config=config,
                               space={"lr": {"low": 1e-4, "high": 0.1, "log": True}}, out=tmp_path / "t")
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(said) == 1 and said[0].startswith("column 'ticket_id': "), said
    assert "cross_validated" in result.choice  # the confirmation's folds trained on those rows too
    assert result.result.predictor.preprocessor.feature_names == ["x", "z"]


def test_the_confirmed_finalist_replaces_the_defaults_only_when_clearly_better():
    """The rule on stored cross-validated losses (nothing is trained): the finalist with the lowest of them,
    saved when more than one standard error of the per-row difference below the defaults'."""
    import types

    import numpy as np
    from optuna.distributions import FloatDistribution

    from torchclf.tune import DEFAULT_SPACE, choose_trial, confirm_trial, pack_losses

    defaults = np.array([0.5, 0.25, 0.75, 1.0])

    def study_with(validation: list[float], cross_validated: list):
        study = optuna.create_study()
        for number, value in enumerate(validation):
            study.add_trial(optuna.trial.create_trial(
                params={"lr": 0.001 * (number + 1)}, distributions={"lr": FloatDistribution(1e-4, 1.0)}, value=value,
                user_attrs={"defaults": True} if number == 0 else {}))
            study.set_user_attr(f"cv_losses_4_{number}", pack_losses(cross_validated[number]))
        return study

    pool = types.SimpleNamespace(n_rows=4)
    # Trial 2 has the lowest validation loss, but trial 1 the lowest cross-validated one: 0.125 below the
    # defaults' on every row, clearly better.
    study = study_with([0.6, 0.5, 0.4], [defaults, defaults - 0.125, defaults + 0.25])
    trial, choice = confirm_trial(study, DEFAULT_SPACE, pool, None, None, folds=4)
    assert trial.number == 1 and choice == {
        "rule": "the finalist with the lowest 4-fold cross-validated loss, unless within 1 standard error(s) of "
                "the defaults'", "best_trial": 2, "best_value": 0.4, "defaults_trial": 0, "defaults_value": 0.6,
        "cross_validated": {"0": 0.625, "2": 0.875, "1": 0.5}, "folds": 4, "rows": 4, "finalist": 1,
        "difference": -0.125, "standard_error": 0.0}
    # 0.0625 lower on average, by -0.125, -0.125, 0, 0: 1.7 standard errors, replaces them; by -0.5, 0.25, -0.25,
    # 0.25 (a standard error of 0.1875): kept.
    study = study_with([0.6, 0.5], [defaults, defaults + np.array([-0.125, -0.125, 0.0, 0.0])])
    assert confirm_trial(study, DEFAULT_SPACE, pool, None, None, folds=4)[0].number == 1
    study = study_with([0.6, 0.5], [defaults, defaults + np.array([-0.5, 0.25, -0.25, 0.25])])
    trial, choice = confirm_trial(study, DEFAULT_SPACE, pool, None, None, folds=4)
    assert trial.number == 0 and (choice["difference"], choice["standard_error"]) == (-0.0625, 0.1875)
    # The defaults with the lowest validation loss: nothing to confirm, choose_trial's answer.
    study = study_with([0.4, 0.5], [defaults, defaults - 0.125])
    assert confirm_trial(study, DEFAULT_SPACE, pool, None, None, folds=4) == choose_trial(study)

def test_workers_share_the_confirmation_and_take_over_a_dead_workers_claim(monkeypatch):
    """Three finalists: the defaults' losses stored, trial 1 claimed by a live worker (which stores its losses
    a moment later), trial 2 claimed by a worker that stopped refreshing its claim. This worker trains only
    trial 2, keeps its claim fresh while it does, and uses the other worker's losses for trial 1."""
    import threading
    import types

    import numpy as np
    from optuna.distributions import FloatDistribution

    import torchclf.tune
    from torchclf.tune import DEFAULT_SPACE, confirm_trial, pack_losses

    study = optuna.create_study()
    for number, value in enumerate([0.6, 0.4, 0.5]):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.001 * (number + 1)}, distributions={"lr": FloatDistribution(1e-4, 1.0)}, value=value,
            user_attrs={"defaults": True} if number == 0 else {}))
    defaults = np.array([0.5, 0.25, 0.75, 1.0])
    study.set_user_attr("cv_losses_4_0", pack_losses(defaults))
    study.set_user_attr("cv_claim_4_1", {"worker": "alive", "at": time.time()})
    study.set_user_attr("cv_claim_4_2", {"worker": "dead", "at": time.time() - 60})
    trained, beats = [], []

    def cross_validated(pool, rows, settings, labels, folds):
        trained.append(settings["lr"])
        start = time.time()
        time.sleep(0.6)  # three heartbeats of 0.2 s
        beats.append(study.user_attrs["cv_claim_4_2"]["at"] - start)
        return defaults - 0.125

    monkeypatch.setattr(torchclf.tune, "cross_validated_losses", cross_validated)
    other = threading.Timer(0.3, lambda: study.set_user_attr("cv_losses_4_1", pack_losses(defaults + 0.25)))
    other.start()
    lines = []
    trial, choice = confirm_trial(study, DEFAULT_SPACE, types.SimpleNamespace(n_rows=4), None, None, folds=4,
                                  say=lines.append, heartbeat=0.2)
    other.join()
    assert trained == [0.003]  # trial 2 only
    assert beats[0] > 0.1  # its claim was refreshed while it trained
    assert study.user_attrs["cv_claim_4_2"]["worker"] not in ("dead", "alive")
    assert "trial 1: another worker is cross-validating it; waiting for its losses" in lines
    assert trial.number == 2 and choice["cross_validated"] == {"0": 0.625, "1": 0.875, "2": 0.5}

    # A failure that is not torchclf's own is named by its type; the choice falls back to the validation
    # rows, and the claim is freed for another worker.
    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torchclf.tune, "cross_validated_losses", broken)
    study.set_user_attr("cv_losses_4_2", None)
    lines.clear()
    trial, choice = confirm_trial(study, DEFAULT_SPACE, types.SimpleNamespace(n_rows=4), None, None, folds=4,
                                  say=lines.append, heartbeat=0.2)
    assert choice["confirmation"] == "failed on trial 2: RuntimeError: out of memory"
    assert "confirming trial 2 failed (RuntimeError: out of memory); choosing on the validation rows instead" in lines
    assert study.user_attrs["cv_claim_4_2"]["at"] == 0.0


def test_a_trial_reuses_the_split_and_preprocessing_and_seeds_its_network_as_ever():
    import torch

    spec = api.RunSpec(DATA, config=api.make_config(model={"hidden": (16,)}))
    first = api.prepare(spec)
    other = spec.with_config(api.make_config(model={"hidden": (8, 8)}, train={"lr": 0.01}))
    again, fresh = api.prepare(other, reuse=first), api.prepare(other)
    assert again.splits is first.splits and again.predictor.preprocessor is first.predictor.preprocessor
    mine, theirs = again.predictor.model.state_dict(), fresh.predictor.model.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="the split and preprocessing settings differ"):
        api.prepare(spec.with_config(api.make_config(data={"scaling": "robust"})), reuse=first)


def test_row_losses_average_to_the_log_loss():
    import numpy as np

    from torchclf.metrics import log_loss, row_log_loss
    from torchclf.task import Task

    cases = [(Task("binary", 2), np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]), [-np.log(0.8), -np.log(0.6)]),
             (Task("multiclass", 3), np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]),
              [-np.log(0.7), -np.log(0.5)]),
             (Task("multilabel", 2), np.array([[1, 0], [0, 0]]), np.array([[0.9, 0.3], [0.2, 0.4]]),
              [-(np.log(0.9) + np.log(0.7)) / 2, -(np.log(0.8) + np.log(0.6)) / 2])]
    for task, y, proba, expected in cases:
        rows = row_log_loss(task, y, proba)
        assert rows == pytest.approx(expected, rel=1e-12)
        assert rows.mean() == pytest.approx(log_loss(task, y, proba), rel=1e-12)

"""Early stopping, the divergence guard, the epoch logger and the progress bar.

Most tests drive a callback with a real :class:`~torchclf.engine.TrainState`
whose history and weights the test writes itself, so that every loss and
every stop is known in advance; a few run ``engine.fit`` on a tiny model.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from torchclf import engine
from torchclf.callbacks import (
    Callback,
    DivergenceGuard,
    EarlyStopping,
    EpochLogger,
    ProgressBar,
    format_epoch,
)
from torchclf.config import TrainConfig
from torchclf.errors import TorchclfError
from torchclf.task import Task


def make_state(epochs: int = 50) -> engine.TrainState:
    model = nn.Linear(2, 1)
    return engine.TrainState(model=model, config=TrainConfig(epochs=epochs),
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def stamp(model: nn.Module, value: float) -> None:
    """Set every weight to ``value``, so that the weights say which epoch left them."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def stamped(model: nn.Module) -> float:
    values = torch.cat([p.detach().view(-1) for p in model.parameters()]).unique()
    assert len(values) == 1, values
    return float(values[0])


def drive(callbacks: list[Callback], state: engine.TrainState, losses: list, key: str = "val_loss") -> None:
    """Run the hooks as the engine does, one epoch per loss; epoch k leaves the weights stamped k.

    ``key`` names the loss that ``losses`` gives; the training loss is 0.5 when
    validation is monitored, and there is no validation when it is not.
    """
    for cb in callbacks:
        cb.on_train_begin(state)
    for loss in losses:
        state.epoch += 1
        for cb in callbacks:
            cb.on_epoch_begin(state)
        stamp(state.model, float(state.epoch))
        row = {"epoch": state.epoch, "train_loss": 0.5, "train_accuracy": 0.5, "val_loss": None,
               "val_accuracy": None, key: loss}
        state.history.append(row)
        for cb in callbacks:
            cb.on_epoch_end(state)
        if state.stop:
            break
    for cb in callbacks:
        cb.on_train_end(state)


# ----- early stopping on the validation loss ------------------------------------------
def test_stops_after_patience_evaluations_without_improvement_and_restores_the_best():
    state = make_state()
    stopper = EarlyStopping(patience=3)
    drive([stopper], state, [1.0, 0.8, 0.7, 0.75, 0.71, 0.9, 0.5, 0.4])
    assert state.epoch == 6 and state.stop
    assert (stopper.best_epoch, stopper.best_loss, stopper.bad_evals) == (3, 0.7, 3)
    assert state.best_epoch == 3
    assert stamped(state.model) == 3.0  # epoch 3's weights, not epoch 6's
    assert "validation loss" in state.stop_reason
    assert "for 3 evaluation(s)" in state.stop_reason and "best at epoch 3" in state.stop_reason


def test_a_gain_smaller_than_min_delta_is_not_an_improvement():
    state = make_state()
    stopper = EarlyStopping(patience=2, min_delta=0.05)
    drive([stopper], state, [1.0, 0.97, 0.96, 0.5])
    assert state.epoch == 3 and state.stop
    assert "has not improved by 0.05" in state.stop_reason


def test_patience_zero_never_stops_but_restores_the_best_weights():
    state = make_state()
    stopper = EarlyStopping(patience=0)
    drive([stopper], state, [0.9, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    assert state.epoch == 7 and not state.stop and state.stop_reason == ""
    assert stopper.bad_evals == 5 and state.best_epoch == 2
    assert stamped(state.model) == 2.0


def test_restore_best_false_keeps_the_last_weights():
    state = make_state()
    drive([EarlyStopping(patience=2, restore_best=False)], state, [0.5, 0.6, 0.7, 0.1])
    assert state.epoch == 3 and state.stop
    assert stamped(state.model) == 3.0


def test_epochs_without_validation_do_not_count():
    state = make_state()
    stopper = EarlyStopping(patience=2)
    # eval_every 2: validation losses only on even epochs.
    drive([stopper], state, [None, 0.5, None, 0.6, None, 0.7, None, 0.8])
    assert state.epoch == 6 and stopper.bad_evals == 2 and state.best_epoch == 2
    assert stamped(state.model) == 2.0


def test_best_weights_at_the_last_epoch_are_kept_as_they_are():
    state = make_state()
    drive([EarlyStopping(patience=3)], state, [0.9, 0.8, 0.7])
    assert not state.stop and state.best_epoch == 3 and stamped(state.model) == 3.0


def test_an_unknown_monitor_is_refused():
    with pytest.raises(ValueError, match="monitor must be one of"):
        EarlyStopping(patience=3, monitor="val_accuracy")


# ----- early stopping on the training loss: scikit-learn MLPClassifier's rule -----------
def test_train_loss_rule_tracks_the_best_through_gains_below_tol():
    # 0.89 is 0.11 below the first loss but only 0.06 below the best (0.95): MLPClassifier
    # counts it as no improvement, so the third stalled epoch stops training.
    state = make_state()
    stopper = EarlyStopping(patience=3, min_delta=0.1, monitor="train_loss", restore_best=False)
    drive([stopper], state, [1.0, 0.95, 0.89, 0.85, 0.2], key="train_loss")
    assert state.epoch == 4 and state.stop
    assert stopper.best_loss == 0.85 and stopper.best_epoch == 4
    assert "training loss" in state.stop_reason and "has not improved by 0.1 for 3 evaluation(s)" in state.stop_reason


def test_train_loss_rule_stops_where_mlpclassifier_stops():
    """Feed MLPClassifier's own loss curve; it stops once its no-improvement count exceeds n_iter_no_change."""
    from sklearn.datasets import make_moons
    from sklearn.neural_network import MLPClassifier

    X, y = make_moons(n_samples=200, noise=0.2, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01, tol=1e-3, n_iter_no_change=4,
                            max_iter=400, random_state=0).fit(X, y)
    # A ConvergenceWarning would mean it ran out of iterations instead of stopping by the rule.
    assert not [w for w in caught if "Convergence" in type(w.message).__name__]
    curve = [float(v) for v in clf.loss_curve_]
    assert 20 < clf.n_iter_ < 400
    state = make_state(epochs=400)
    stopper = EarlyStopping(patience=clf.n_iter_no_change + 1, min_delta=clf.tol, monitor="train_loss",
                            restore_best=False)
    drive([stopper], state, curve + [0.0] * 5, key="train_loss")
    assert state.stop and state.epoch == clf.n_iter_ == len(curve)
    assert stopper.best_loss == clf.best_loss_ == min(curve)


def test_train_loss_monitor_through_the_engine_without_validation():
    torch.manual_seed(0)
    X = torch.randn(64, 2)
    y = (X[:, :1] > 0).float()
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    stopper = EarlyStopping(patience=2, min_delta=10.0, monitor="train_loss", restore_best=False)
    config = TrainConfig(epochs=30, optimizer="sgd", lr=0.1, batch_size=None, schedule="none", patience=0,
                         device="cpu")
    state = engine.fit(model, Task("binary", 2), engine.TensorData(X, y), None, config, callbacks=[stopper])
    # No loss can fall by 10: epochs 2 and 3 are the two stalled evaluations.
    assert len(state.history) == 3 and state.stop
    assert stopper.best_loss == min(r["train_loss"] for r in state.history)


# ----- early stopping: resumable state ------------------------------------------------
def test_state_dict_round_trip_continues_exactly():
    losses = [1.0, 0.7, 0.8, 0.6, 0.65, 0.66, 0.67, 0.1]
    whole_state, whole = make_state(), EarlyStopping(patience=3)
    drive([whole], whole_state, losses)
    assert (whole_state.epoch, whole.best_epoch) == (7, 4)

    first_state, first = make_state(), EarlyStopping(patience=3)
    drive_epochs(first, first_state, losses[:3])
    saved = copy.deepcopy(first.state_dict())  # as a checkpoint would write it
    assert {k: v for k, v in saved.items() if k != "best_state"} == {"best_loss": 0.7, "best_epoch": 2, "bad_evals": 1,
                                                                     "evals": 3, "best_eval": 2}
    assert set(saved["best_state"]) == {"weight", "bias"}
    assert all(torch.equal(t, torch.full_like(t, 2.0)) for t in saved["best_state"].values())

    resumed_state, resumed = make_state(), EarlyStopping(patience=3)
    resumed.load_state_dict(saved)
    resumed_state.epoch, resumed_state.history = 3, list(first_state.history)
    drive([resumed], resumed_state, losses[3:])
    assert resumed_state.epoch == whole_state.epoch and resumed_state.stop_reason == whole_state.stop_reason
    assert resumed.state_dict()["best_epoch"] == 4 and resumed_state.best_epoch == whole_state.best_epoch == 4
    assert stamped(resumed_state.model) == stamped(whole_state.model) == 4.0


# ----- early stopping: an early best waits less ---------------------------------------------
@pytest.mark.parametrize("best_at, stops_at", [(2, 2 + 4), (6, 6 + 6), (9, 9 + 8)])
def test_patience_min_waits_as_long_as_the_best_took_from_the_minimum_up_to_the_patience(best_at, stops_at):
    losses = [1.0 - 0.01 * e for e in range(1, best_at + 1)] + [2.0] * 20
    state, stopper = make_state(), EarlyStopping(patience=8, patience_min=4)
    drive([stopper], state, losses)
    assert (state.epoch, state.best_epoch, stopper.best_eval) == (stops_at, best_at, best_at)
    assert f"for {stops_at - best_at} evaluation(s)" in state.stop_reason


def test_patience_min_counts_evaluations_not_epochs():
    state, stopper = make_state(), EarlyStopping(patience=30, patience_min=1)
    # Validation every other epoch: the best is the 2nd evaluation (epoch 3), so two more evaluations end it.
    drive([stopper], state, [1.0, None, 0.9, None, 2.0, None, 2.0, None, 2.0, None, 0.1])
    assert (state.epoch, state.best_epoch, stopper.evals, stopper.best_eval) == (7, 3, 4, 2)


def test_a_checkpoint_from_before_patience_min_resumes_counting_an_evaluation_per_epoch():
    stopper = EarlyStopping(patience=30, patience_min=15)
    stopper.load_state_dict({"best_loss": 0.3, "best_epoch": 20, "bad_evals": 4, "best_state": None})
    assert (stopper.evals, stopper.best_eval, stopper.wait) == (24, 20, 20)


def drive_epochs(cb: Callback, state: engine.TrainState, losses: list) -> None:
    """Epochs only, no train end: a run interrupted after ``len(losses)`` epochs."""
    for loss in losses:
        state.epoch += 1
        cb.on_epoch_begin(state)
        stamp(state.model, float(state.epoch))
        state.history.append({"epoch": state.epoch, "train_loss": 0.5, "val_loss": loss})
        cb.on_epoch_end(state)


def test_early_stopping_through_the_engine_restores_the_best_validation_weights():
    torch.manual_seed(0)
    X = torch.randn(120, 2)
    y = (X[:, :1] * X[:, 1:] > 0).float()  # xor: a small net overfits quickly at this learning rate
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
    train, val = engine.TensorData(X[:60], y[:60]), engine.TensorData(X[60:], y[60:])
    config = TrainConfig(epochs=200, optimizer="adam", lr=0.05, batch_size=None, schedule="none", patience=4,
                         device="cpu", weight_decay=0.0)
    state = engine.fit(model, Task("binary", 2), train, val, config)
    losses = [r["val_loss"] for r in state.history]
    (stopper,) = [cb for cb in state.callbacks if isinstance(cb, EarlyStopping)]  # the engine's own
    assert (stopper.patience, stopper.patience_min, stopper.monitor) == (4, config.patience_min, "val_loss")
    # The last epoch whose loss beat every earlier one by min_delta, then patience more.
    last_gain = max(e for e in range(len(losses))
                    if losses[e] < min(losses[:e], default=math.inf) - stopper.min_delta)
    assert state.stop and len(losses) == last_gain + 1 + 4 < 200
    best = int(np.argmin(losses))
    assert state.best_epoch == best + 1
    task = Task("binary", 2)
    assert engine.evaluate(model, task, task.loss_function(), val)[0] == pytest.approx(losses[best], abs=1e-6)


# ----- divergence guard -----------------------------------------------------------------
def test_divergence_restores_the_last_finite_weights_and_says_how_to_fix():
    state = make_state()
    guard = DivergenceGuard(lr=0.1)
    drive([guard], state, [0.5, 0.4, math.nan, 0.3], key="train_loss")
    assert state.epoch == 3 and state.stop
    assert stamped(state.model) == 2.0  # the weights epoch 3 started from
    assert state.stop_reason == (
        "training diverged at epoch 3 (the training loss is nan); stopped and kept the best weights so far; "
        "retry with a smaller --lr (e.g. 0.01), or check the data for extreme values")


def test_an_infinite_validation_loss_is_divergence_too():
    state = make_state()
    guard = DivergenceGuard(lr=0.003)
    drive([guard], state, [0.5, math.inf], key="val_loss")
    assert state.stop and stamped(state.model) == 1.0
    assert "(the validation loss is inf)" in state.stop_reason and "--lr (e.g. 0.0003)" in state.stop_reason


def test_divergence_in_the_first_epoch_is_an_error():
    state = make_state()
    with pytest.raises(TorchclfError, match="training diverged at epoch 1 .* before any epoch finished cleanly"):
        drive([DivergenceGuard(lr=1.0)], state, [math.nan], key="train_loss")


def test_divergence_reason_wins_over_early_stopping_in_the_same_epoch():
    state = make_state()
    guard, stopper = DivergenceGuard(lr=0.1), EarlyStopping(patience=1)
    drive([guard, stopper], state, [0.5, math.inf])
    assert state.stop_reason.startswith("training diverged at epoch 2")


def test_guard_through_the_engine_undoes_the_poisoned_epoch():
    class Poison(Callback):
        """Corrupts the weights as epoch 3 begins, after the guard took its copy."""

        def on_epoch_begin(self, state):
            if state.epoch == 3:
                self.before = {k: v.clone() for k, v in state.model.state_dict().items()}
                with torch.no_grad():
                    state.model[0].weight[0, 0] = math.nan

    torch.manual_seed(0)
    X = torch.randn(40, 2)
    y = (X[:, :1] > 0).float()
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    poison = Poison()
    config = TrainConfig(epochs=10, optimizer="sgd", lr=0.1, batch_size=None, schedule="none", patience=0,
                         device="cpu")
    state = engine.fit(model, Task("binary", 2), engine.TensorData(X, y), None, config,
                       callbacks=[DivergenceGuard(config.lr), poison])
    assert len(state.history) == 3 and math.isnan(state.history[-1]["train_loss"])
    after = model.state_dict()
    assert list(after) == list(poison.before)
    assert all(torch.equal(after[k], poison.before[k]) for k in after)


# ----- epoch logger -----------------------------------------------------------------------
def row(epoch: int, val: bool = True) -> dict:
    r = {"epoch": epoch, "train_loss": 0.123456 / epoch, "train_accuracy": 0.5 + epoch / 10000,
         "val_loss": None, "val_accuracy": None}
    if val:
        r["val_loss"], r["val_accuracy"] = 0.2 / epoch, 0.25
    return r


def test_format_epoch_matches_the_tutorial_style():
    assert format_epoch(row(3)) == "Epoch    3 | loss 0.04115 | acc 0.5003 | val_loss 0.06667 | val_acc 0.2500"
    assert format_epoch(row(1200, val=False)) == "Epoch 1200 | loss 0.00010 | acc 0.6200"


def log_lines(every: int, epochs: int, stop_at: int | None = None, reason: str = "",
              epoch_seconds: float = 0.0, seconds: float = 10.0) -> list[str]:
    """The lines of a logger over a run whose epochs each take ``epoch_seconds`` on a fake clock."""
    lines: list[str] = []
    clock = {"now": 100.0}
    logger = EpochLogger(every, write=lines.append, seconds=seconds, clock=lambda: clock["now"])
    state = make_state(epochs)
    logger.on_train_begin(state)
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        clock["now"] += epoch_seconds
        state.history.append(row(epoch))
        if epoch == stop_at:
            state.stop, state.stop_reason = True, reason
        logger.on_epoch_end(state)
        if state.stop:
            break
    logger.on_train_end(state)
    return lines


def test_logger_writes_the_first_epoch_every_n_epochs_and_the_last():
    lines = log_lines(every=3, epochs=10)
    assert lines == [format_epoch(row(e)) for e in (1, 3, 6, 9, 10)]


def test_logger_writes_the_stopping_epoch_and_the_reason():
    lines = log_lines(every=4, epochs=20, stop_at=6, reason="early stopping: enough")
    assert lines == [format_epoch(row(e)) for e in (1, 4, 6)] + ["early stopping: enough"]


def test_a_slow_run_logs_at_least_every_few_seconds():
    """With every=100 a 4 s epoch would stay silent for minutes off a terminal; time makes it speak."""
    lines = log_lines(every=100, epochs=12, epoch_seconds=4.0, seconds=10.0)
    assert lines == [format_epoch(row(e)) for e in (1, 4, 7, 10, 12)]


def test_logger_every_zero_means_every_epoch():
    assert log_lines(every=0, epochs=3) == [format_epoch(row(e)) for e in (1, 2, 3)]


def test_logger_through_the_engine_writes_to_stderr_by_default(capsys):
    torch.manual_seed(0)
    X = torch.randn(16, 2)
    data = engine.TensorData(X, (X[:, :1] > 0).float())
    model = nn.Linear(2, 1)
    config = TrainConfig(epochs=5, optimizer="sgd", lr=0.1, batch_size=None, schedule="none", patience=0,
                         device="cpu")
    state = engine.fit(model, Task("binary", 2), data, None, config, callbacks=[EpochLogger(2)])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [format_epoch(state.history[e - 1]) for e in (1, 2, 4, 5)]


# ----- progress bar -----------------------------------------------------------------------
def test_progress_bar_stays_silent_off_a_terminal():
    from rich.console import Console

    sink = io.StringIO()
    bar = ProgressBar(console=Console(file=sink, force_terminal=False))
    state = make_state(4)
    bar.on_train_begin(state)
    assert bar.progress is None
    state.epoch = 1
    state.history.append(row(1))
    bar.on_epoch_end(state)
    bar.on_train_end(state)
    assert sink.getvalue() == ""


def test_progress_bar_counts_completed_epochs_on_a_terminal():
    from rich.console import Console

    bar = ProgressBar(console=Console(file=io.StringIO(), force_terminal=True, width=120))
    state = make_state(8)
    bar.on_train_begin(state)
    try:
        task = bar.progress.tasks[0]
        assert task.total == 8 and task.completed == 0
        state.epoch = 5  # a resumed run reports the epoch it reached, not a count of calls
        state.history.append(row(5))
        bar.on_epoch_end(state)
        assert task.completed == 5
        assert task.fields["status"] == format_epoch(row(5))[10:]
    finally:
        bar.on_train_end(state)
    assert not bar.progress.live.is_started

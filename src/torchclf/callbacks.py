"""Hooks around the training loop: early stopping, logging, progress bars.

A callback is a plain object; every hook does nothing unless overridden. The
engine passes its :class:`TrainState` (defined here, the contract between the two), which callbacks may read
and whose ``stop`` flag they may set.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TrainState:
    """What the loop knows, shared with callbacks: they may read it and set ``stop``.

    ``model`` is the bare network (not a DDP or compiled wrapper); ``history``
    holds one row per epoch run (``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``). ``scheduler`` and
    ``generator`` are exposed so that a checkpoint can save and restore them.
    Between epochs a callback may also replace ``config`` (a new TrainConfig:
    more epochs, another batch size), ``optimizer`` and ``scheduler``: each
    epoch reads them afresh. ``step`` of ``steps`` is the step just taken in
    the current epoch (set for ``on_step_end``). ``graphs`` is the
    :class:`torchclf.graphs.GraphStats` of a run whose steps replay CUDA
    graphs (None otherwise).
    """

    model: Any
    config: Any
    optimizer: Any
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    stop: bool = False
    stop_reason: str = ""
    best_epoch: int | None = None
    scheduler: Any = None
    generator: Any = None
    callbacks: list = field(default_factory=list)
    step: int = 0
    steps: int = 0
    graphs: Any = None

    @property
    def last(self) -> dict:
        return self.history[-1]


class Callback:
    """Base class: override the hooks you need."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_epoch_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None:
        """After each optimizer step; the loop calls it only on callbacks that override it."""

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


_LOSS_NAMES = {"train_loss": "training loss", "val_loss": "validation loss"}


class _Snapshot:
    """A reusable copy of a model's weights and buffers.

    Copying into buffers kept from the last snapshot costs a few in-place
    copies per epoch, where ``deepcopy(model.state_dict())`` cost more than a
    small model's whole training step.
    """

    def __init__(self):
        self.live: dict | None = None  # the model's own tensors, views that track training
        self.saved: dict | None = None

    def take(self, model) -> dict:
        import torch

        if self.live is None:
            self.live = model.state_dict()
        if self.saved is None:
            self.saved = {k: v.detach().clone() for k, v in self.live.items()}
        else:
            with torch.no_grad():
                for buffer, value in zip(self.saved.values(), self.live.values()):
                    buffer.copy_(value)
        return self.saved


class ReplayLearningRates(Callback):
    """Set every parameter group's learning rate at the start of epoch ``i`` to ``rates[i - 1]``
    (the rates an earlier run used, so that a refit follows its schedule)."""

    def __init__(self, rates: list[float]):
        self.rates = list(rates)

    def on_epoch_begin(self, state: TrainState) -> None:
        rate = self.rates[min(state.epoch, len(self.rates)) - 1]
        for group in state.optimizer.param_groups:
            group["lr"] = rate


class EarlyStopping(Callback):
    """Stop when a monitored loss has not improved for ``patience`` evaluations.

    ``monitor`` is ``"val_loss"`` (early stopping proper: the best weights
    are restored at the end) or ``"train_loss"`` (scikit-learn's
    MLPClassifier rule without a validation set: stop once the training loss
    has stalled). An evaluation counts as an improvement when the loss falls
    below the best seen by more than ``min_delta``; the best is tracked even
    through smaller gains, as MLPClassifier does.

    With ``patience`` 0 it never stops early but still restores the best
    weights seen, when ``restore_best`` and the monitored loss exist.

    With ``patience_min``, an early best waits less: training stops after
    as many evaluations without improvement as it took to reach the best
    loss, at least ``patience_min`` and at most ``patience``.
    """

    MONITORS = ("val_loss", "train_loss")

    def __init__(self, patience: int, min_delta: float = 1e-4, restore_best: bool = True,
                 monitor: str = "val_loss", patience_min: int | None = None):
        if monitor not in self.MONITORS:
            raise ValueError(f"EarlyStopping: monitor must be one of {self.MONITORS}, got {monitor!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.monitor = monitor
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_evals = 0
        self.patience_min = patience_min
        self.evals = 0  # evaluations seen, and the one that gave the best loss
        self.best_eval = 0
        self._snapshot = _Snapshot()

    @property
    def wait(self) -> int:
        """Evaluations without improvement after which training stops (0: never)."""
        if self.patience_min is None or not self.patience:
            return self.patience
        # A best reached in a few evaluations is rarely beaten after many more: over 13 tables x 5 seeds, a
        # wait as long as the best took (at least 15) kept every run's best epoch of a fixed wait of 30.
        return min(self.patience, max(self.patience_min, self.best_eval))

    def on_epoch_end(self, state: TrainState) -> None:
        loss = state.last.get(self.monitor)
        if loss is None:
            return
        improved = loss < self.best_loss - self.min_delta
        self.evals += 1
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.best_eval = loss, state.epoch, self.evals
            if self.restore_best:
                self.best_state = self._snapshot.take(state.model)
        if improved:
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.patience and self.bad_evals >= self.wait:
            state.stop = True
            what = _LOSS_NAMES[self.monitor]
            state.stop_reason = (
                f"early stopping: the {what} has not improved by {self.min_delta:g} for {self.wait} "
                f"evaluation(s); best at epoch {self.best_epoch}"
            )

    def state_dict(self) -> dict:
        """Counters and best weights, for a resumable checkpoint."""
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals,
                "best_state": self.best_state, "evals": self.evals, "best_eval": self.best_eval}

    def load_state_dict(self, d: dict) -> None:
        self.best_loss, self.best_epoch = float(d["best_loss"]), int(d["best_epoch"])
        self.bad_evals, self.best_state = int(d["bad_evals"]), d["best_state"]
        # Checkpoints from before the counts: one evaluation per epoch, the most a best epoch can mean.
        self.evals = int(d.get("evals", self.best_epoch + self.bad_evals))
        self.best_eval = int(d.get("best_eval", self.best_epoch))

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_state is not None and self.best_epoch != state.epoch:
            state.model.load_state_dict(self.best_state)
            state.best_epoch = self.best_epoch
        elif self.best_state is not None:
            state.best_epoch = self.best_epoch



class DivergenceGuard(Callback):
    """Stop when the loss stops being a finite number, keeping the last finite weights.

    The weights are copied at the start of each epoch (when they are finite),
    so a diverged epoch is undone. If the very first epoch diverges there is
    nothing worth keeping, and training fails with a :class:`TorchclfError`.
    :class:`EarlyStopping`, placed after this callback, then restores its own
    best weights where it has them.
    """

    def __init__(self, lr: float):
        self.lr = lr
        self.kept: dict | None = None
        self.kept_epoch: int | None = None
        self.reason = ""
        self._snapshot = _Snapshot()

    def on_epoch_begin(self, state: TrainState) -> None:
        import torch

        with torch.no_grad():  # views of the weights without autograd bookkeeping
            params = [p.view(-1) for p in state.model.parameters()]
            finite = bool(params) and bool(torch.cat(params).isfinite().all())
        if finite:
            self.kept = self._snapshot.take(state.model)
            self.kept_epoch = state.epoch - 1

    def on_epoch_end(self, state: TrainState) -> None:
        from torchclf.errors import TorchclfError

        row = state.last
        bad = [(name, row[name]) for name in ("train_loss", "val_loss")
               if row.get(name) is not None and not math.isfinite(row[name])]
        if not bad:
            return
        name, value = bad[0]
        what = f"training diverged at epoch {state.epoch} (the {_LOSS_NAMES[name]} is {value})"
        hint = f"retry with a smaller --lr (e.g. {self.lr / 10:g}), or check the data for extreme values"
        if not self.kept_epoch:
            raise TorchclfError(f"{what} before any epoch finished cleanly, so no weights are worth keeping; {hint}")
        state.model.load_state_dict(self.kept)
        state.stop = True
        self.reason = f"{what}; stopped and kept the best weights so far; {hint}"
        state.stop_reason = self.reason

    def on_train_end(self, state: TrainState) -> None:
        if self.reason:  # early stopping may have written its own reason in the same epoch
            state.stop_reason = self.reason


def format_epoch(row: dict) -> str:
    """One log line in the tutorial's style, accuracies as fractions."""
    parts = [f"Epoch {row['epoch']:>4}", f"loss {row['train_loss']:.5f}", f"acc {row['train_accuracy']:.4f}"]
    if row.get("val_loss") is not None:
        parts += [f"val_loss {row['val_loss']:.5f}", f"val_acc {row['val_accuracy']:.4f}"]
    return " | ".join(parts)


class EpochLogger(Callback):
    """Print a line at the first epoch, every ``every`` epochs, at the last, and whenever ``seconds`` passed.

    Like the tutorial's loop; the first line and the time-based ones keep a
    slow run visibly alive when its output goes to a file or a pipe (where no
    progress bar shows) long before a tenth of the epochs is done.
    """

    def __init__(self, every: int, write: Callable[[str], None] | None = None, seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.every = max(1, every)
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.seconds = seconds
        self.clock = clock
        self.last_time = 0.0

    def on_train_begin(self, state: TrainState) -> None:
        self.last_time = self.clock()

    def on_epoch_end(self, state: TrainState) -> None:
        now = self.clock()
        due = state.epoch % self.every == 0 or state.epoch == state.config.epochs or state.stop
        if due or state.epoch == 1 or now - self.last_time >= self.seconds:
            self.write(format_epoch(state.last))
            self.last_time = now

    def on_train_end(self, state: TrainState) -> None:
        if state.stop_reason:
            self.write(state.stop_reason)


class ProgressBar(Callback):
    """A rich progress bar over epochs, shown only on an interactive terminal."""

    def __init__(self, console=None):
        self.console = console
        self.progress = None
        self.task_id = None

    def on_train_begin(self, state: TrainState) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = self.console or Console(stderr=True)
        if not console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=state.config.epochs, status="")

    def on_epoch_end(self, state: TrainState) -> None:
        if self.progress is not None:
            # completed, not advance: a resumed run starts part-way through.
            self.progress.update(self.task_id, completed=state.epoch, status=format_epoch(state.last)[10:])

    def on_train_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()


class L1Penalty(Callback):
    """Add ``strength * sum(|w|)`` over the layers' weights (not biases) to the training loss.

    It works through gradient hooks: ``strength * sign(w)``, the penalty's
    gradient, is added to each weight's gradient as backward computes it. So
    the training step stays as it is, and the reported loss is the data's
    loss alone (as TensorFlow Playground shows it). ``strength`` may be
    changed while training.
    """

    def __init__(self, strength: float):
        self.strength = float(strength)
        self._handles: list = []

    def attach(self, model) -> None:
        """Hook the weights of ``model`` (a model holds one penalty: an earlier one is detached)."""
        earlier = model.__dict__.get("_torchclf_l1_penalty")
        if earlier is not None:
            earlier.detach()
        self.detach()
        for param in model.parameters():
            if param.dim() >= 2 and param.requires_grad:
                self._handles.append(param.register_hook(self._hook(param)))
        model.__dict__["_torchclf_l1_penalty"] = self

    def _hook(self, param):
        def add(grad):
            # None leaves the gradient untouched, so strength 0 trains exactly as without a penalty.
            return grad + self.strength * param.detach().sign() if self.strength else None

        return add

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_begin(self, state: TrainState) -> None:
        self.attach(state.model)

    def on_train_end(self, state: TrainState) -> None:
        self.detach()

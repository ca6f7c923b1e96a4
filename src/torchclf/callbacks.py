"""Hooks around the training loop: early stopping, logging, progress bars.

A callback is a plain object; every hook does nothing unless overridden. The
engine passes its :class:`~torchclf.engine.TrainState`, which callbacks may read
and whose ``stop`` flag they may set.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from torchclf.engine import TrainState


class Callback:
    """Base class: override the hooks you need."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_epoch_begin(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


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


class EarlyStopping(Callback):
    """Stop when the monitored validation loss has not improved for ``patience``
    evaluations, and restore the best weights at the end.

    With ``patience`` 0 it never stops early but still restores the best
    weights seen, when a validation set exists.
    """

    def __init__(self, patience: int, min_delta: float = 1e-4, restore_best: bool = True):
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_evals = 0
        self._snapshot = _Snapshot()

    def on_epoch_end(self, state: TrainState) -> None:
        loss = state.last.get("val_loss")
        if loss is None:
            return
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.bad_evals = loss, state.epoch, 0
            if self.restore_best:
                self.best_state = self._snapshot.take(state.model)
        else:
            self.bad_evals += 1
            if self.patience and self.bad_evals >= self.patience:
                state.stop = True
                state.stop_reason = (
                    f"early stopping: validation loss has not improved for {self.patience} "
                    f"evaluation(s); best at epoch {self.best_epoch}"
                )

    def state_dict(self) -> dict:
        """Counters and best weights, for a resumable checkpoint."""
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals,
                "best_state": self.best_state}

    def load_state_dict(self, d: dict) -> None:
        self.best_loss, self.best_epoch = float(d["best_loss"]), int(d["best_epoch"])
        self.bad_evals, self.best_state = int(d["bad_evals"]), d["best_state"]

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_state is not None and self.best_epoch != state.epoch:
            state.model.load_state_dict(self.best_state)
            state.best_epoch = self.best_epoch
        elif self.best_state is not None:
            state.best_epoch = self.best_epoch


_LOSS_NAMES = {"train_loss": "training loss", "val_loss": "validation loss"}


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
    """Print a line every ``every`` epochs (and at the last), like the tutorial's loop."""

    def __init__(self, every: int, write: Callable[[str], None] | None = None):
        self.every = max(1, every)
        self.write = write or (lambda line: print(line, file=sys.stderr))

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs or state.stop:
            self.write(format_epoch(state.last))

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

"""The one training and evaluation loop.

Every front door (the command line, the scikit-learn estimator, the Python
API) trains through :func:`fit`. Batches are sliced from tensors already on
the device, and losses and accuracies are summed on the device and read once
per epoch, so a step never waits on the host.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from torchclf import accel, distributed, graphs
from torchclf.callbacks import (
    Callback,
    DivergenceGuard,
    EarlyStopping,
    EpochLogger,
    L1Penalty,
    ProgressBar,
    TrainState,
)
from torchclf.config import TrainConfig, batch_rows
from torchclf.errors import TorchclfError
from torchclf.task import Task


@dataclass
class TensorData:
    """Encoded rows on one device.

    Attributes
    ----------
    X : Tensor of shape (n_samples, n_features), float32
    y : Tensor of shape (n_samples,) or (n_samples, n_outputs)
        As produced by :meth:`Task.target_tensor`.
    weight : Tensor of shape (n_samples,), optional
        Per-sample weights for the loss.
    """

    X: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.X.shape[0]

    def to(self, device: torch.device) -> TensorData:
        w = None if self.weight is None else self.weight.to(device)
        return TensorData(self.X.to(device), self.y.to(device), w)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TorchclfError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TorchclfError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return torch.device(name)


def start_cuda_context(name: str) -> None:
    """Start creating the CUDA context in a background thread, where ``name`` ("auto" or "cuda") will train
    on a GPU, so that the second or more it takes overlaps reading and encoding the data.

    Not under torchrun, whose processes choose their GPU when they join the job.
    """
    if name not in ("auto", "cuda") or "LOCAL_RANK" in os.environ or not torch.cuda.is_available():
        return

    def create():
        try:
            torch.empty(1, device="cuda")
        except Exception:  # noqa: BLE001 - the main thread meets the same error where it matters, and says it
            pass

    threading.Thread(target=create, name="torchclf-cuda-context", daemon=True).start()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    # Fused where available (one kernel for all parameters), else foreach.
    if config.optimizer == "sgd":
        return accel.make_optimizer(
            torch.optim.SGD, params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return accel.make_optimizer(kind, params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule == "plateau":
        patience = max(3, config.patience // 3) if config.patience else 10
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=patience)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def train_step(model, task: Task, loss_fn, optimizer, X, y, w, precision=accel.FULL_PRECISION):
    """One optimisation step; returns the batch's summed loss and correct count as tensors."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = model(X)
    # The loss in at least float32 under any precision (a float64 network keeps float64).
    per_sample = task.per_sample_loss(loss_fn, logits.to(torch.promote_types(logits.dtype, torch.float32)), y)
    loss = per_sample.mean() if w is None else (per_sample * w).sum() / w.sum()
    precision.backward(loss)
    precision.step(optimizer)
    return loss.detach() * X.shape[0], task.n_correct(logits.detach(), y)


def _batches(n: int, batch_size: int | None, generator: torch.Generator, device) -> list[torch.Tensor] | None:
    """Shuffled index batches for one epoch (this rank's share under torchrun), or None for a single full batch."""
    if distributed.world_size() == 1 and (batch_size is None or batch_size >= n):
        return None
    if device.type == "cuda":
        # Drawn on the host, a million rows' permutation costs about 20 ms, a third of a graph-replayed
        # epoch; the GPU draws it from a seed that the host generator gives, so a run stays seeded by
        # config.seed and checkpoints keep one host generator.
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        order = torch.randperm(n, device=device, generator=torch.Generator(device).manual_seed(seed))
    else:
        order = torch.randperm(n, generator=generator)
    order = distributed.shard_permutation(order).to(device)
    return list(torch.split(order, batch_size or len(order)))


def run_epoch(model, task, loss_fn, optimizer, data: TensorData, batch_size, generator,
              precision=accel.FULL_PRECISION, after_step=None, graphed: graphs.GraphedSteps | None = None,
              ) -> tuple[float, float]:
    """Train for one pass over ``data``; returns (mean loss, accuracy).

    ``after_step(i, n)``, when given, is called after the i-th of the epoch's n steps. ``graphed``, when
    given, runs the steps (replayed from CUDA graphs) on the same batches.
    """
    # Always switch: ``model`` may be a DDP or compiled wrapper whose own flag
    # does not show that evaluation left the module inside in eval mode.
    model.train()
    device = data.X.device
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device, dtype=torch.int64)
    batches = _batches(len(data), batch_size, generator, device)
    if graphed is not None:
        total_loss, total_correct = graphed.run_epoch(optimizer, batches, after_step)
    elif batches is None:
        loss, correct = train_step(model, task, loss_fn, optimizer, data.X, data.y, data.weight, precision)
        total_loss += loss
        total_correct += correct
        if after_step is not None:
            after_step(1, 1)
    else:
        for i, idx in enumerate(batches, 1):
            w = None if data.weight is None else data.weight[idx]
            loss, correct = train_step(model, task, loss_fn, optimizer, data.X[idx], data.y[idx], w, precision)
            total_loss += loss
            total_correct += correct
            if after_step is not None:
                after_step(i, len(batches))
    # Under torchrun the sums of all ranks together are the single-process sums.
    total_loss, total_correct, n = distributed.sum_across_ranks(total_loss, total_correct,
                                                                 distributed.shard_size(len(data)))
    return total_loss / n, total_correct / n


def prediction_batch(device: torch.device) -> int:
    """Rows per forward pass when predicting on ``device`` (callers that cut rows into chunks of their own use
    whole multiples of it, so that every row's logits come from the same products)."""
    # Measured for a 32-256-256-4 network on one CPU thread: 1M rows in chunks
    # of 1024 ran at about 550k rows/s, in one product at about 255k (the
    # activations no longer fit in cache). GPUs want large chunks instead.
    return 1024 if device.type == "cpu" else 65536


@torch.inference_mode()
def _logits_eval_mode(model: nn.Module, X: torch.Tensor, batch_size: int | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    if model.training:
        model.eval()
    batch_size = batch_size or prediction_batch(X.device)
    if X.shape[0] <= batch_size and out is None:
        return model(X)
    # Each batch's logits go straight into one tensor. Kept in a list for torch.cat, the small outputs pin the
    # freed activation memory around them, about 1 KB a row (2M rows of 32 features, hidden 256-256: 1.98 GB
    # above the inputs through cat, in 3 runs of 4; 29 to 34 MB written in place, the output being 31 MB).
    for start in range(0, X.shape[0], batch_size):
        logits = model(X[start:start + batch_size])
        if out is None:
            out = logits.new_empty((X.shape[0], *logits.shape[1:]))
        out[start:start + len(logits)] = logits
    return out


def predict_logits(model: nn.Module, X: torch.Tensor, batch_size: int | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of shape (n_samples, n_outputs), computed in eval mode (the mode is restored).

    Rows go through in chunks of ``batch_size`` (default: :func:`prediction_batch`), which keeps each
    layer's activations in cache and bounds memory. ``out``, a tensor of shape (n_samples, n_outputs) in
    the logits' dtype (a view into a larger one, say), receives them and is returned.
    """
    was_training = model.training
    try:
        return _logits_eval_mode(model, X, batch_size, out)
    finally:
        if was_training:
            model.train()


def evaluate(model, task: Task, loss_fn, data: TensorData) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data`` (under torchrun each rank scores a block of rows).

    Leaves the model in eval mode: the next training epoch switches it back,
    which saves two mode switches per evaluation.
    """
    rows = distributed.shard_range(len(data))
    logits = _logits_eval_mode(model, data.X[rows])
    y = data.y[rows]
    per_sample = task.per_sample_loss(loss_fn, logits, y)
    if data.weight is None:
        loss_sum, weight_sum = per_sample.sum(), per_sample.shape[0]
    else:
        w = data.weight[rows]
        loss_sum, weight_sum = (per_sample * w).sum(), w.sum()
    loss_sum, weight_sum, correct, n = distributed.sum_across_ranks(
        loss_sum, weight_sum, task.n_correct(logits, y), per_sample.shape[0])
    return loss_sum / weight_sum, correct / n


def default_callbacks(config: TrainConfig, verbose: bool, has_validation: bool, extra=()) -> list[Callback]:
    """The standard callbacks around ``extra`` ones: the divergence guard and early stopping
    first (so ``extra`` sees their decisions), progress and log lines last (so they show every stop)."""
    callbacks: list[Callback] = [DivergenceGuard(config.lr)]
    if config.l1:
        callbacks.append(L1Penalty(config.l1))
    if has_validation:
        callbacks.append(EarlyStopping(config.patience, patience_min=config.patience_min))
    callbacks += list(extra)
    if verbose:
        every = config.log_every or max(1, config.epochs // 10)
        callbacks += [ProgressBar(), EpochLogger(every)]
    return callbacks


def warm_up_rates(optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> list[float] | None:
    """Scale the learning rates for ``epoch`` of a warm-up over ``epochs`` (e/(N+1) of the scheduled rate).

    Returns the scheduled rates to put back after the epoch (None outside the warm-up), so that schedulers,
    which step from the optimizer's rate, never see the scaled one; the history records the scaled rate,
    the one the epoch trained at (a refit replays it).
    """
    if epoch > epochs:
        return None
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * epoch / (epochs + 1)
    return scheduled


def _step_end(state: TrainState, hooks: list[Callback], step: int, steps: int) -> None:
    state.step, state.steps = step, steps
    for cb in hooks:
        cb.on_step_end(state)


@accel.speed_settings
def fit(
    model: nn.Module,
    task: Task,
    train: TensorData,
    validation: TensorData | None,
    config: TrainConfig,
    *,
    class_weight: torch.Tensor | None = None,
    callbacks: list[Callback] | None = None,
    verbose: bool = False,
    optimizer_state: dict | None = None,
) -> TrainState:
    """Train ``model`` in place and return the final state (history included).

    ``train`` and ``validation`` must already be on the model's device.
    Randomness (shuffling) comes from ``config.seed``; the caller seeds model
    initialisation. ``optimizer_state`` (an earlier run's
    ``state.optimizer.state_dict()`` for the same optimizer) continues that
    run's moment estimates.
    """
    if callbacks is None:
        callbacks = default_callbacks(config, verbose, validation is not None and len(validation) > 0)
    if distributed.is_distributed() and not distributed.is_main():  # api.prepare joined the job
        callbacks = [cb for cb in callbacks if not isinstance(cb, (ProgressBar, EpochLogger))]
    device = train.X.device
    class_weight = None if class_weight is None else class_weight.to(device)
    loss_fn = task.loss_function(class_weight, config.label_smoothing)
    # Validation measures the plain loss: smoothing is a training device, not what early stopping should judge.
    eval_loss_fn = task.loss_function(class_weight) if config.label_smoothing else loss_fn
    optimizer = make_optimizer(model, config)
    if optimizer_state is not None:
        # The moments carry over; the hyperparameters are this run's configuration.
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(optimizer_state)
        for group, fresh in zip(optimizer.param_groups, settings):
            group.update(fresh)
    scheduler = make_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState(model=model, config=config, optimizer=optimizer, scheduler=scheduler,
                       generator=generator, callbacks=callbacks)
    train_model = distributed.wrap(model)  # DDP under torchrun; evaluation and callbacks use the bare model
    train_model = accel.maybe_compile(train_model, config.compile, device)
    precision = accel.Precision(config.precision, device)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda line: None)
    backend, why_not = graphs.plan(config, device, precision, callbacks)
    graphed = None
    if backend is not None:
        graphed = graphs.GraphedSteps(train_model, task, loss_fn, train, precision, train_step, backend, say)
        state.graphs = graphed.stats
    elif why_not:
        say(f"CUDA graphs off: {why_not}; training eagerly")

    # Only callbacks that define on_step_end are called after each step, so the others cost the loop nothing.
    step_hooks = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]
    after_step = None if not step_hooks else (lambda i, n: _step_end(state, step_hooks, i, n))
    for cb in callbacks:
        cb.on_train_begin(state)
    # Callbacks may replace state.config (say, more epochs or another batch size), state.optimizer and
    # state.scheduler between epochs; each epoch reads them afresh. A restored checkpoint sets state.epoch.
    while state.epoch < state.config.epochs:
        state.epoch = epoch = state.epoch + 1
        for cb in callbacks:
            cb.on_epoch_begin(state)
        config, optimizer, scheduler = state.config, state.optimizer, state.scheduler
        t0 = time.perf_counter()
        scheduled = warm_up_rates(optimizer, epoch, config.warmup)
        train_loss, train_acc = run_epoch(train_model, task, loss_fn, optimizer, train,
                                          batch_rows(config.batch_size, len(train)), generator, precision, after_step,
                                          graphed)
        lr = optimizer.param_groups[0]["lr"]
        for group, rate in zip(optimizer.param_groups, scheduled or ()):
            group["lr"] = rate  # the schedule steps from its own rate
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
               "val_loss": None, "val_accuracy": None, "lr": lr}
        if validation is not None and len(validation) and (epoch % config.eval_every == 0 or epoch == config.epochs):
            row["val_loss"], row["val_accuracy"] = evaluate(model, task, eval_loss_fn, validation)
        row["seconds"] = time.perf_counter() - t0
        state.history.append(row)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if row["val_loss"] is not None or validation is None:
                    scheduler.step(row["val_loss"] if row["val_loss"] is not None else train_loss)
            else:
                scheduler.step()
        for cb in callbacks:
            cb.on_epoch_end(state)
        if distributed.any_rank(state.stop):  # ranks stop together, or the others would wait on them
            break
    for cb in callbacks:
        cb.on_train_end(state)
    return state

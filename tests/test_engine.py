"""The training loop's mode handling and bookkeeping."""

import torch
from torch import nn

from torchclf import engine
from torchclf.config import TrainConfig
from torchclf.task import Task


class Recorder(nn.Module):
    """A linear model that records the training flag it saw at each forward pass."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.linear(x)


class Wrapper(nn.Module):
    """Stands in for DDP or a compiled module: its own flag is separate from the inner model's."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_training_after_evaluation_is_in_train_mode_even_through_a_wrapper():
    torch.manual_seed(0)
    task = Task("binary", 2)
    inner = Recorder()
    wrapped = Wrapper(inner)
    data = engine.TensorData(torch.randn(32, 2), torch.randint(0, 2, (32, 1)).float())
    loss_fn = task.loss_function()
    optimizer = torch.optim.SGD(inner.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    engine.evaluate(inner, task, loss_fn, data)          # leaves the inner model in eval mode
    assert inner.seen == [False]
    engine.run_epoch(wrapped, task, loss_fn, optimizer, data, 8, generator)
    assert inner.seen[1:] == [True] * 4


def test_fit_restores_the_best_weights_from_reused_snapshots():
    torch.manual_seed(0)
    task = Task("binary", 2)
    X = torch.randn(200, 2)
    y = (X[:, :1] > 0).float()
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    data, val = engine.TensorData(X[:150], y[:150]), engine.TensorData(X[150:], y[150:])
    state = engine.fit(model, task, data, val, TrainConfig(epochs=40, patience=0, lr=0.5, optimizer="sgd",
                                                           schedule="none", batch_size=None))
    best = min(range(len(state.history)), key=lambda i: state.history[i]["val_loss"])
    final_loss, _ = engine.evaluate(model, task, task.loss_function(), val)
    assert abs(final_loss - state.history[best]["val_loss"]) < 1e-6


def _warmup_run(warmup, schedule, epochs=6):
    torch.manual_seed(0)
    task = Task("multiclass", 3)
    X = torch.randn(120, 4)
    y = X[:, :3].argmax(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    config = TrainConfig(epochs=epochs, patience=0, lr=0.08, optimizer="sgd", schedule=schedule, batch_size=32,
                         warmup=warmup, weight_decay=0.0, label_smoothing=0.0)
    state = engine.fit(model, task, engine.TensorData(X, y), engine.TensorData(X[:30], y[:30]), config)
    return [row["lr"] for row in state.history], state.optimizer.param_groups[0]["lr"]


def test_warmup_scales_the_first_epochs_of_any_schedule_and_leaves_the_schedule_its_own_rates():
    rates, last = _warmup_run(3, "none")
    assert rates == [0.08 * 1 / 4, 0.08 * 2 / 4, 0.08 * 3 / 4, 0.08, 0.08, 0.08] and last == 0.08
    cosine, cosine_last = _warmup_run(0, "cosine")
    warmed, warmed_last = _warmup_run(2, "cosine")
    # The cosine schedule steps from its own rates: the warm-up only scales the epochs it covers.
    assert warmed == [cosine[0] / 3, cosine[1] * 2 / 3, *cosine[2:]] and warmed_last == cosine_last

"""Training steps replayed from CUDA graphs (torchclf.graphs) against the eager loop.

Every case runs twice: on the CPU with a stand-in backend whose "capture" records the step function and
whose replay calls it (so the batching, index buffers, sums, learning-rate tensors and re-captures are
checked without a GPU), and on CUDA with real graphs where a GPU is present (skipped otherwise).
"""

import pytest
import torch
from torch import nn

from torchclf import engine, graphs
from torchclf.callbacks import Callback, L1Penalty
from torchclf.config import TrainConfig
from torchclf.task import Task

CUDA = torch.cuda.is_available()


class StandIn:
    """Capture keeps the function, replay calls it: a CUDA graph's contract, without the GPU."""

    capturable = False

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.captures = 0

    def eager(self, fn):
        fn()

    def capture(self, fn):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        # A graph replays with the learning rates it was captured with: the device tensor (whose value may
        # change) for Adam, the number for SGD. A rate set on the optimizer later is not seen by the replay.
        optimizer = next(cell.cell_contents for cell in fn.__closure__
                         if isinstance(cell.cell_contents, torch.optim.Optimizer))
        baked = [group["lr"] for group in optimizer.param_groups]

        def replay():
            now = [group["lr"] for group in optimizer.param_groups]
            for group, rate in zip(optimizer.param_groups, baked):
                group["lr"] = rate
            try:
                fn()
            finally:
                for group, rate in zip(optimizer.param_groups, now):
                    group["lr"] = rate

        return replay


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"))])
def where(request, monkeypatch):
    """The device, with graphs planned on it (the stand-in on the CPU, real graphs on CUDA)."""
    if request.param == "cpu":
        real_plan = graphs.plan
        monkeypatch.setattr(graphs, "CudaBackend", StandIn)
        monkeypatch.setattr(graphs, "plan", lambda config, device, *rest: real_plan(config, torch.device("cuda"),
                                                                                   *rest))
    return torch.device(request.param)


def _close(a, b, device):
    # The stand-in runs the eager loop's arithmetic except for the learning rate, a float32 tensor for Adam
    # (rates a float32 holds exactly, powers of two, give the eager run to the bit); real graphs differ by
    # float rounding too. A wrong batch, a step too many or a stale rate differ by orders of magnitude more.
    if device.type == "cpu":
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    else:
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


def _data(task, n, device, seed=0, weights=False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    if task.kind == "multiclass":
        y = (X[:, :3].argmax(1) + (X[:, 3] > 1).long()) % task.n_outputs
    elif task.kind == "binary":
        y = (X[:, :1] + 0.3 * X[:, 1:2] > 0).float()
    else:
        y = (X[:, :task.n_outputs] > 0).float()
    w = torch.rand(n, generator=g) + 0.5 if weights else None
    return engine.TensorData(X, y, w).to(device)


def _fit(task, device, graphed, *, callbacks=None, data=None, class_weight=None, dropout=0.0, **config):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, task.n_outputs))
    model.to(device)
    base = dict(epochs=6, batch_size=48, optimizer="adam", lr=2 ** -8, weight_decay=0.0, schedule="none",
                patience=0, label_smoothing=0.0, device=device.type, cuda_graphs=graphed, seed=3)
    train = data if data is not None else _data(task, 250, device)
    val = _data(task, 60, device, seed=9)
    extra = [] if callbacks is None else callbacks
    chosen = engine.default_callbacks(TrainConfig(**{**base, **config}), False, True, extra)
    state = engine.fit(model, task, train, val, TrainConfig(**{**base, **config}), class_weight=class_weight,
                       callbacks=chosen)
    return model, state


def _same_run(a, b, device):
    (model_a, state_a), (model_b, state_b) = a, b
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        _close(torch.tensor([r[key] for r in state_a.history], dtype=torch.float64),
               torch.tensor([r[key] for r in state_b.history], dtype=torch.float64), device)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        _close(sa[k], sb[k], device)


@pytest.mark.parametrize("kind,outputs", [("multiclass", 3), ("binary", 2), ("multilabel", 3)])
def test_graphed_steps_train_as_the_eager_loop_does(where, kind, outputs):
    task = Task(kind, outputs)
    eager = _fit(task, where, False)
    graphed = _fit(task, where, True)
    _same_run(graphed, eager, where)
    stats = graphed[1].graphs
    # 250 rows in batches of 48: five of 48 and one of 10, each size captured after its warm-up steps.
    assert eager[1].graphs is None
    assert sorted(stats.sizes) == [10, 48]
    assert stats.eager == 2 * graphs.WARMUP_STEPS and stats.replayed == 6 * 6 - stats.eager
    assert not stats.failed


def test_weights_schedules_and_sgd_follow_the_eager_loop(where):
    task = Task("multiclass", 3)
    data = _data(task, 250, where, weights=True)
    class_weight = torch.tensor([1.0, 2.0, 0.5])
    for settings in (dict(optimizer="adamw", weight_decay=0.01, schedule="cosine", label_smoothing=0.1, warmup=2),
                     dict(optimizer="sgd", momentum=0.9, lr=0.05, schedule="cosine"),
                     dict(optimizer="adam", schedule="plateau", batch_size=None)):
        eager = _fit(task, where, False, data=data, class_weight=class_weight, **settings)
        graphed = _fit(task, where, True, data=data, class_weight=class_weight, **settings)
        _same_run(graphed, eager, where)
        assert graphed[1].graphs.replayed > 0
    # SGD bakes its learning rate into the graphs: the cosine schedule changes it every epoch, so every
    # epoch captures again (without new warm-up steps).
    sgd = _fit(task, where, True, data=data, optimizer="sgd", momentum=0.9, lr=0.05, schedule="cosine")[1]
    assert sgd.graphs.eager == 2 * graphs.WARMUP_STEPS
    assert sgd.graphs.captured > 6


def test_the_optimizer_is_left_as_it_was_made():
    task = Task("multiclass", 3)
    model, state = _fit(task, torch.device("cpu"), False)
    backend = StandIn()
    backend.capturable = False
    stepper = graphs.GraphedSteps(model, task, task.loss_function(), _data(task, 100, torch.device("cpu")),
                                  engine.accel.FULL_PRECISION, engine.train_step, backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        batches = engine._batches(100, 16, generator, torch.device("cpu"))
        stepper.run_epoch(optimizer, batches)
        group = optimizer.param_groups[0]
        # Back to the very number (0.001, not its float32 rounding) between epochs, for schedulers,
        # checkpoints and the history.
        assert type(group["lr"]) is float and group["lr"] == 0.001 and group["capturable"] is False


class SwapOptimizer(Callback):
    """Replaces the optimizer before epoch 3, as the playground does when a setting changes."""

    def on_epoch_begin(self, state):
        if state.epoch == 3:
            state.optimizer = engine.make_optimizer(state.model, state.config)


class SetRates(Callback):
    """Sets a number as the learning rate every epoch and after the second step (powers of two, which a
    float32 tensor holds exactly, so that the stand-in's run is the eager one to the bit)."""

    def on_epoch_begin(self, state):
        for group in state.optimizer.param_groups:
            group["lr"] = 2.0 ** -(5 + state.epoch)

    def on_step_end(self, state):
        if state.step == 2:
            for group in state.optimizer.param_groups:
                group["lr"] = 2.0 ** -9


def test_a_new_optimizer_or_learning_rate_from_a_callback_reaches_the_graphs(where):
    task = Task("multiclass", 3)
    for make in (SwapOptimizer, SetRates):
        eager = _fit(task, where, False, callbacks=[make()])
        graphed = _fit(task, where, True, callbacks=[make()])
        _same_run(graphed, eager, where)
    swapped = _fit(task, where, True, callbacks=[SwapOptimizer()])[1].graphs
    # The new optimizer's state is made by eager steps again: 48 rows captured in epochs 1 and 3; the batch
    # of 10 had only two warm-up steps before the swap and is captured in epoch 6, after three more.
    assert swapped.sizes == [48, 48, 10] and swapped.eager == 3 + 2 + 3 + 3


def test_a_failed_capture_says_so_once_and_trains_on_eagerly(monkeypatch, capsys):
    failing = StandIn(fail=True)
    monkeypatch.setattr(graphs, "plan", lambda config, *a: (failing if config.cuda_graphs else None, ""))
    task = Task("multiclass", 3)
    eager = _fit(task, torch.device("cpu"), False)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 3))
    config = TrainConfig(epochs=6, batch_size=48, optimizer="adam", lr=2 ** -8, weight_decay=0.0,
                         schedule="none", patience=0, label_smoothing=0.0, device="cpu", seed=3)
    state = engine.fit(model, task, _data(task, 250, torch.device("cpu")), _data(task, 60, torch.device("cpu"),
                       seed=9), config, verbose=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "CUDA graphs" in line]
    assert lines == ["CUDA graphs: capturing the training step failed (operation not permitted when stream is "
                     "capturing); training on eagerly"]
    assert failing.captures == 1 and state.graphs.replayed == 0 and state.graphs.eager == 36
    _same_run((model, state), eager, torch.device("cpu"))


class _Scaled:
    scaler = object()


def test_plan_says_where_graphs_cannot_be_used(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    config = TrainConfig(device="cuda")
    full = engine.accel.FULL_PRECISION
    if not CUDA:
        monkeypatch.setattr(graphs, "CudaBackend", StandIn)
    assert graphs.plan(config, cpu, full, [])[0] is None and graphs.plan(config, cpu, full, [])[1] == ""
    assert graphs.plan(TrainConfig(cuda_graphs=False), cuda, full, []) == (None, "")
    assert graphs.plan(config, cuda, full, [])[0] is not None
    assert "torch.compile" in graphs.plan(TrainConfig(compile=True), cuda, full, [])[1]
    assert "float16" in graphs.plan(config, cuda, _Scaled(), [])[1]
    assert "L1 penalty" in graphs.plan(config, cuda, full, [L1Penalty(0.1)])[1]
    monkeypatch.setattr(graphs.distributed, "is_distributed", lambda: True)
    assert "torchrun" in graphs.plan(config, cuda, full, [])[1]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_dropout_runs_are_reproducible_and_learn_as_eager_ones_do():
    task, device = Task("multiclass", 3), torch.device("cuda")
    data = _data(task, 2000, device)
    runs = [_fit(task, device, graphed, data=data, dropout=0.3, epochs=15, batch_size=64)
            for graphed in (True, True, False)]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)
    graphed_acc, eager_acc = runs[0][1].history[-1]["val_accuracy"], runs[2][1].history[-1]["val_accuracy"]
    assert graphed_acc > 0.8 and abs(graphed_acc - eager_acc) < 0.05


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bfloat16_graphs_follow_eager_bfloat16():
    task, device = Task("multiclass", 3), torch.device("cuda")
    eager = _fit(task, device, False, precision="bfloat16")
    graphed = _fit(task, device, True, precision="bfloat16")
    assert graphed[1].graphs.replayed > 0
    for a, b in zip(graphed[0].state_dict().values(), eager[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_the_cuda_context_is_created_in_the_background_only_where_training_will_use_it(monkeypatch):
    made = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: made.append(kw.get("device")))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name in ("cpu", "mps", "auto", "cuda"):
        engine.start_cuda_context(name)
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun's processes choose their own GPU
    engine.start_cuda_context("cuda")
    for thread in [t for t in __import__("threading").enumerate() if t.name == "torchclf-cuda-context"]:
        thread.join(5)
    assert made == ["cuda", "cuda"]

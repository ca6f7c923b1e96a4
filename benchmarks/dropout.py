"""Dropout on the CPU: torch's against torchclf's (``torchclf.model.dropout``), alone and in training.

1. The operation, forward and backward, on batches of 256 units (median of ``--repeats`` timed loops).
2. ``engine.fit`` of the default network (256-256 ReLU, dropout 0.2, Adam) on the rows of benchmark 1
   (32 features, 4 classes) at the automatic batch sizes of small and large tables, each dropout drawn
   in turn from the same seed; training samples per second over the epochs, and the final training loss.

    OMP_NUM_THREADS=1 python -m benchmarks.dropout
"""

from __future__ import annotations

import argparse
import contextlib
import time

from benchmarks.common import median, set_threads, table


@contextlib.contextmanager
def torchs_dropout():
    """The network's Dropout modules draw with ``torch.nn.functional.dropout`` inside the block."""
    import torch.nn.functional as F

    from torchclf import model

    ours = model.dropout
    model.dropout = F.dropout
    try:
        yield
    finally:
        model.dropout = ours


def op_seconds(rows: int, p: float, repeats: int, loops: int) -> float:
    """Seconds of one forward and backward pass of dropout on a ``rows`` x 256 batch."""
    import torch

    from torchclf import model

    x = torch.randn(rows, 256, requires_grad=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            model.dropout(x, p, True).sum().backward()
        times.append((time.perf_counter() - start) / loops)
    return median(times)


def fit_rate(rows: int, batch: int, epochs: int) -> tuple[float, float]:
    """Training samples per second of ``engine.fit`` with the default network, and the last training loss."""
    import torch

    from benchmarks.training import make_data
    from torchclf import engine
    from torchclf.config import ModelConfig, TrainConfig
    from torchclf.model import build_model
    from torchclf.task import Task

    X, y = make_data(rows, seed=1)
    data = engine.TensorData(torch.from_numpy(X), torch.from_numpy(y))
    torch.manual_seed(0)
    net = build_model(32, 4, ModelConfig())
    config = TrainConfig(epochs=epochs, batch_size=batch, seed=0, patience=0, threads=1)
    start = time.perf_counter()
    state = engine.fit(net, Task("multiclass", 4), data, None, config, callbacks=[])
    seconds = time.perf_counter() - start
    return rows * epochs / seconds, state.history[-1]["train_loss"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    set_threads(1)
    ops = []
    for rows in (64, 512, 4096):
        loops = max(5, 20_000 // rows)
        with torchs_dropout():
            theirs = op_seconds(rows, 0.2, args.repeats, loops)
        ours = op_seconds(rows, 0.2, args.repeats, loops)
        ops.append([f"{rows} x 256", f"{theirs * 1e3:.3f}", f"{ours * 1e3:.3f}", f"{theirs / ours:.2f}x"])
    print("Dropout 0.2, forward and backward, ms")
    print(table(["batch", "torch", "torchclf", "speed-up"], ops))
    fit_rate(1000, 64, 1)  # untimed: the first fit pays for lazy imports and set-up
    fits = []
    for batch in (64, 512):
        with torchs_dropout():
            theirs, loss_theirs = fit_rate(args.rows, batch, args.epochs)
        ours, loss_ours = fit_rate(args.rows, batch, args.epochs)
        fits.append([batch, f"{theirs:,.0f}", f"{ours:,.0f}", f"{ours / theirs:.2f}x",
                     f"{loss_theirs:.4f} / {loss_ours:.4f}"])
    print(f"\nengine.fit, default network, {args.rows:,} rows x 32, {args.epochs} epochs: samples/s")
    print(table(["batch", "torch's dropout", "torchclf's", "speed-up", "last training loss, torch's / torchclf's"],
                fits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

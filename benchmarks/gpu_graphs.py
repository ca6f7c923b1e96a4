"""Training throughput on one CUDA GPU: the engine's CUDA-graph steps against eager loops and a
hand-written whole-step graph, in one process, on the same rows.

The workload is the speed issue's: 1,000,000 rows x 32 features, an MLP 32-256-256-4, Adam at 1e-3,
batches of 256 and 4096. Each loop trains a fresh network (same initial weights) for ``--epochs`` epochs;
samples per second are the rows over the median time of the epochs after the first (which holds the
warm-up and the captures). The accuracy is the last epoch's training accuracy.

Loops:
- ``eager loop``: the tutorial's loop, the permutation drawn on the GPU, each batch sliced from it;
- ``engine eager``: :func:`torchclf.engine.fit` with ``cuda_graphs=False``;
- ``engine graphs``: :func:`torchclf.engine.fit` with its defaults (whole-step CUDA graphs);
- ``engine graphs bf16``: the same with ``precision="bfloat16"``;
- ``engine eager bf16``: eager steps with ``precision="bfloat16"``;
- ``hand graph``: PyTorch's documented whole-network capture written out by hand (static index buffer,
  ``index_select`` into the batch, capturable Adam with a tensor learning rate, loss and correct counts summed
  on the device); the epoch's last, smaller batch runs eagerly;
- ``hand graph fused``: the same with the fused Adam (one kernel for every parameter), as the engine uses.

Usage (on a machine with a CUDA GPU): ``python benchmarks/gpu_graphs.py [--rows N] [--epochs E]
[--batches 256,4096] [--results FILE]``. Prints a table; ``--results`` also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from torchclf import engine  # noqa: E402
from torchclf.config import TrainConfig  # noqa: E402
from torchclf.task import Task  # noqa: E402

FEATURES, CLASSES, HIDDEN = 32, 4, 256


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, CLASSES)).cuda()


def workload(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    X = torch.randn(rows, FEATURES, device="cuda", generator=g)
    teacher = torch.randn(FEATURES, CLASSES, device="cuda", generator=g)
    noise = torch.randn(rows, CLASSES, device="cuda", generator=g)
    return X, (X @ teacher + noise).argmax(dim=1)


def _timed_epoch(run_epoch) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run_epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def eager_loop(X, y, batch, epochs):
    model, loss_fn = network(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    correct = torch.zeros((), device="cuda", dtype=torch.int64)

    def epoch():
        correct.zero_()
        order = torch.randperm(len(X), device="cuda")
        for start in range(0, len(X), batch):
            idx = order[start:start + batch]
            xb, yb = X[idx], y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct.add_((logits.detach().argmax(dim=1) == yb).sum())

    times = [_timed_epoch(epoch) for _ in range(epochs)]
    return times, correct.item() / len(X)


def hand_graph(X, y, batch, epochs, fused=False):
    model, loss_fn = network(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3, device="cuda"), capturable=True,
                                 fused=fused or None)
    correct = torch.zeros((), device="cuda", dtype=torch.int64)
    index = torch.zeros(batch, dtype=torch.int64, device="cuda")

    def step(idx):
        xb, yb = X.index_select(0, idx), y.index_select(0, idx)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        optimizer.step()
        correct.add_((logits.detach().argmax(dim=1) == yb).sum())

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up steps (they train, as any step does)
        for _ in range(3):
            index.copy_(torch.randperm(len(X), device="cuda")[:batch])
            optimizer.zero_grad(set_to_none=True)
            step(index)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step(index)
    full = len(X) // batch * batch

    def epoch():
        correct.zero_()
        order = torch.randperm(len(X), device="cuda")
        for start in range(0, full, batch):
            index.copy_(order[start:start + batch])
            graph.replay()
        if full < len(X):  # the last, smaller batch, eagerly (its grads are its own)
            optimizer.zero_grad(set_to_none=True)
            step(order[full:])

    times = [_timed_epoch(epoch) for _ in range(epochs)]
    return times, correct.item() / len(X)


def engine_loop(X, y, batch, epochs, **settings):
    model = network()
    config = TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-3, weight_decay=0.0,
                         schedule="none", patience=0, label_smoothing=0.0, device="cuda", **settings)
    state = engine.fit(model, Task("multiclass", CLASSES), engine.TensorData(X, y), None, config)
    stats = state.graphs
    note = "" if stats is None else f"{stats.captured} graph(s), {stats.replayed} replays, {stats.eager} eager"
    return [row["seconds"] for row in state.history], state.history[-1]["train_accuracy"], note


LOOPS = {
    "eager loop": lambda X, y, b, e: (*eager_loop(X, y, b, e), ""),
    "engine eager": lambda X, y, b, e: engine_loop(X, y, b, e, cuda_graphs=False),
    "engine eager bf16": lambda X, y, b, e: engine_loop(X, y, b, e, cuda_graphs=False, precision="bfloat16"),
    "engine graphs": lambda X, y, b, e: engine_loop(X, y, b, e),
    "engine graphs bf16": lambda X, y, b, e: engine_loop(X, y, b, e, precision="bfloat16"),
    "hand graph": lambda X, y, b, e: (*hand_graph(X, y, b, e), ""),
    "hand graph fused": lambda X, y, b, e: (*hand_graph(X, y, b, e, fused=True), ""),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", default="256,4096")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_graphs: no CUDA GPU here; nothing to measure", file=sys.stderr)
        return 1
    X, y = workload(args.rows)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": args.rows,
               "epochs": args.epochs, "runs": []}
    for batch in (int(b) for b in args.batches.split(",")):
        for name, loop in LOOPS.items():
            times, accuracy, note = loop(X, y, batch, args.epochs)
            timed = times[1:] or times
            rate = args.rows / statistics.median(timed)
            results["runs"].append({"loop": name, "batch": batch, "samples_per_s": rate, "epoch_s": times,
                                    "train_accuracy": accuracy, "note": note})
            print(f"batch {batch:>5}  {name:<20} {rate / 1e6:7.3f}M samples/s  acc {accuracy:.4f}  "
                  f"epochs {' '.join(f'{t:.3f}' for t in times)} s  {note}", flush=True)
    print("\n| batch | loop | samples/s | vs eager loop | vs hand graph | train accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in results["runs"]:
        same = {r["loop"]: r["samples_per_s"] for r in results["runs"] if r["batch"] == run["batch"]}
        print(f"| {run['batch']} | {run['loop']} | {run['samples_per_s'] / 1e6:.3f}M | "
              f"{run['samples_per_s'] / same['eager loop']:.2f}x | {run['samples_per_s'] / same['hand graph']:.2f}x | "
              f"{run['train_accuracy']:.4f} |")
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

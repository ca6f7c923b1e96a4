"""Benchmark 1: training throughput of an MLP 32->256->256->4 (Adam, batch 256) against the alternatives.

Every contender trains a freshly seeded network of the same shape on the same
rows for the same number of epochs, one after another in one process, and
the rounds are interleaved so that a burst of load elsewhere on the machine
hits all of them alike. Training accuracy is measured afterwards on all rows.
"""

from __future__ import annotations

import warnings

import numpy as np

from benchmarks.common import Series, clock

LR = 1e-3
BATCH = 256


def make_data(rows: int, seed: int = 0):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=32, n_informative=16, n_classes=4, random_state=seed)
    return X.astype(np.float32), y.astype(np.int64)


def _mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))


def _torch_accuracy(model, X, y) -> float:
    import torch

    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(chunk).argmax(1) for chunk in torch.split(X, 65536)])
    return float((pred == y).float().mean())


# ----- the contenders ------------------------------------------------------------
def torchclf_engine(X, y, epochs, **train):
    """torchclf's training loop (``engine.fit``) on tensors in memory."""
    import torch

    from torchclf import engine
    from torchclf.config import ModelConfig, TrainConfig
    from torchclf.model import build_model
    from torchclf.task import Task

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(0)
    model = build_model(32, 4, ModelConfig(hidden=(256, 256), activation="relu", dropout=0.0))
    config = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=LR, weight_decay=0.0,
                         schedule="none", patience=0, **train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with clock() as c:
            state = engine.fit(model, Task("multiclass", 4), engine.TensorData(Xt, yt), None, config)
    seconds = [row["seconds"] for row in state.history]
    note = ""
    if train.get("compile") and len(seconds) > 1:
        note = f"first epoch {seconds[0]:.1f}s incl. compiling, then {np.median(seconds[1:]):.1f}s/epoch"
    return c, _torch_accuracy(model, Xt, yt), note


def dataloader_loop(X, y, epochs):
    """The plain PyTorch loop: TensorDataset + DataLoader(shuffle=True), default Adam."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    with clock() as c:
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
    return c, _torch_accuracy(model, Xt, yt), ""


def randperm_loop(X, y, epochs, fused: bool = False):
    """The same loop slicing in-memory tensors after ``torch.randperm``.

    ``fused`` adds the two cheap engine settings (fused Adam, denormals
    flushed to zero) to show what they alone are worth.
    """
    import torch
    from torch import nn

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, **({"fused": True} if fused else {}))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    flushed = torch.set_flush_denormal(True) if fused else False
    try:
        with clock() as c:
            for _ in range(epochs):
                model.train()
                for idx in torch.randperm(len(Xt), generator=generator).split(BATCH):
                    optimizer.zero_grad()
                    loss_fn(model(Xt[idx]), yt[idx]).backward()
                    optimizer.step()
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    return c, _torch_accuracy(model, Xt, yt), ""


def skorch_net(X, y, epochs):
    """skorch's NeuralNetClassifier with the same module, loss and optimizer."""
    import torch
    from skorch import NeuralNetClassifier

    net = NeuralNetClassifier(_mlp(), criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=LR,
                              max_epochs=epochs, batch_size=BATCH, train_split=None,
                              iterator_train__shuffle=True, device="cpu", verbose=0)
    with clock() as c:
        net.fit(X, y)
    return c, float((net.predict(X) == y).mean()), ""


def sklearn_mlp(X, y, epochs):
    """scikit-learn's MLPClassifier (Adam, same sizes, no regularisation, no early stop)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(256, 256), solver="adam", alpha=0.0, batch_size=BATCH,
                        learning_rate_init=LR, max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
                        shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with clock() as c:
            clf.fit(X, y)
    return c, float(clf.score(X, y)), ""


def contenders(include_compile: bool, include_bf16: bool) -> dict:
    """Name -> callable(X, y, epochs); alternatives that are not installed are left out."""
    out = {
        "torchclf engine": torchclf_engine,
        "plain DataLoader loop": dataloader_loop,
        "in-memory randperm loop": randperm_loop,
        "randperm loop + fused Adam + flush denormals": lambda X, y, e: randperm_loop(X, y, e, fused=True),
    }
    if include_compile:
        out["torchclf engine, compile=True"] = lambda X, y, e: torchclf_engine(X, y, e, compile=True)
    if include_bf16:
        out["torchclf engine, precision=bfloat16"] = lambda X, y, e: torchclf_engine(X, y, e, precision="bfloat16")
    try:
        import skorch  # noqa: F401

        out["skorch NeuralNetClassifier"] = skorch_net
    except ImportError:
        pass
    out["scikit-learn MLPClassifier"] = sklearn_mlp
    return out


def run(rows: int, epochs: int, repeats: int, include_compile: bool, include_bf16: bool, log=print) -> dict:
    X, y = make_data(rows)
    runs = contenders(include_compile, include_bf16)
    results = {name: Series(name) for name in runs}
    for fn in runs.values():  # one-time costs (lazy imports, first allocations) stay out of the timings
        fn(X[:2048], y[:2048], 1)
    for r in range(repeats):
        for name, fn in runs.items():
            c, acc, note = fn(X, y, epochs)
            s = results[name]
            s.add(c)
            s.extra.setdefault("accuracy", []).append(acc)
            if note:
                s.extra["note"] = note
            log(f"  [train {r + 1}/{repeats}] {name}: {rows * epochs / c.wall:,.0f} samples/s wall, "
                f"{rows * epochs / c.cpu:,.0f} per CPU-second, accuracy {acc:.4f}")
    samples = rows * epochs
    table = []
    for name, s in results.items():
        table.append({"name": name, "samples_per_s_wall": samples / s.wall_median,
                      "samples_per_s_cpu": samples / s.cpu_median,
                      "accuracy": float(np.median(s.extra["accuracy"])), "note": s.extra.get("note", ""),
                      "wall": s.wall, "cpu": s.cpu})
    return {"rows": rows, "epochs": epochs, "repeats": repeats, "results": table}

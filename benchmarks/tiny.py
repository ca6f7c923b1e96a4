"""Benchmark 2: the tutorial's tiny workload, 1000 full-batch epochs of circles.

The tutorial's own loop (CircleModelV2, BCEWithLogitsLoss, SGD lr 0.1, an
evaluation on the 200 test rows every epoch, accuracy read with ``.item()``)
against torchclf's engine with the ``circle-v2`` preset on the very same
800/200 tensors, and against ``torchclf.train`` end to end (split,
preprocessing, metrics).
"""

from __future__ import annotations

import warnings

from benchmarks.common import Series, clock


def make_data():
    import torch
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    X, y = make_circles(1000, noise=0.03, random_state=42)
    X = torch.from_numpy(X).type(torch.float)
    y = torch.from_numpy(y).type(torch.float)
    return train_test_split(X, y, test_size=0.2, random_state=42)


def tutorial_loop(data, epochs):
    """The tutorial's loop for model_3, as printed there (printing left out)."""
    import torch
    from torch import nn

    X_train, X_test, y_train, y_test = data

    class CircleModelV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_1 = nn.Linear(in_features=2, out_features=10)
            self.layer_2 = nn.Linear(in_features=10, out_features=10)
            self.layer_3 = nn.Linear(in_features=10, out_features=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.layer_3(self.relu(self.layer_2(self.relu(self.layer_1(x)))))

    def accuracy_fn(y_true, y_pred):
        correct = torch.eq(y_true, y_pred).sum().item()
        return (correct / len(y_pred)) * 100

    torch.manual_seed(42)
    model_3 = CircleModelV2()
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model_3.parameters(), lr=0.1)
    torch.manual_seed(42)
    with clock() as c:
        for _ in range(epochs):
            model_3.train()
            y_logits = model_3(X_train).squeeze()
            y_pred = torch.round(torch.sigmoid(y_logits))
            loss = loss_fn(y_logits, y_train)
            acc = accuracy_fn(y_true=y_train, y_pred=y_pred)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model_3.eval()
            with torch.inference_mode():
                test_logits = model_3(X_test).squeeze()
                test_pred = torch.round(torch.sigmoid(test_logits))
                test_loss = loss_fn(test_logits, y_test)  # noqa: F841  (the tutorial computes it every epoch)
                test_acc = accuracy_fn(y_true=y_test, y_pred=test_pred)
    return c, acc / 100, test_acc / 100


def engine_preset(data, epochs, **overrides):
    """torchclf's engine with the circle-v2 preset's model and training settings on the same tensors."""
    import torch

    from torchclf import engine
    from torchclf.api import make_config
    from torchclf.model import build_model
    from torchclf.task import Task

    X_train, X_test, y_train, y_test = data
    config = make_config("circle-v2", train={"epochs": epochs, "seed": 42, **overrides})
    torch.manual_seed(42)
    model = build_model(2, 1, config.model)
    train = engine.TensorData(X_train, y_train.reshape(-1, 1))
    test = engine.TensorData(X_test, y_test.reshape(-1, 1))
    task = Task("binary", 2)
    with clock() as c:
        engine.fit(model, task, train, test, config.train)
    loss_fn = task.loss_function()
    return c, engine.evaluate(model, task, loss_fn, train)[1], engine.evaluate(model, task, loss_fn, test)[1]


def api_train(epochs):
    """``torchclf.train("circles", preset circle-v2)``: split, preprocessing, training and metrics.

    Like the tutorial it holds out 20% for test; it keeps no validation rows,
    so it evaluates nothing during training.
    """
    from torchclf.api import make_config, train

    config = make_config("circle-v2", train={"epochs": epochs}, data={"test_size": 0.2, "validation_size": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with clock() as c:
            result = train("circles", config=config)
    return c, result.metrics["train"]["accuracy"], result.metrics["test"]["accuracy"]


def run(epochs: int, repeats: int, log=print) -> dict:
    data = make_data()
    runs = {
        "tutorial loop (eval every epoch)": lambda: tutorial_loop(data, epochs),
        "torchclf engine, circle-v2 (eval every epoch)": lambda: engine_preset(data, epochs),
        "torchclf engine, circle-v2, eval_every=10": lambda: engine_preset(data, epochs, eval_every=10),
        "torchclf.train('circles', preset circle-v2), end to end, no validation split": lambda: api_train(epochs),
    }
    results = {name: Series(name) for name in runs}
    tutorial_loop(data, 5), engine_preset(data, 5), api_train(5)  # one-time costs stay out of the timings
    for r in range(repeats):
        for name, fn in runs.items():
            c, train_acc, test_acc = fn()
            results[name].add(c)
            results[name].extra.update(train_accuracy=train_acc, test_accuracy=test_acc)
            log(f"  [tiny {r + 1}/{repeats}] {name}: {c.wall:.3f}s wall, {c.cpu:.3f}s CPU, "
                f"train {train_acc:.3f} test {test_acc:.3f}")
    from torchclf.api import make_config

    preset = make_config("circle-v2")
    return {"epochs": epochs, "repeats": repeats, "preset_model": repr(preset.model),
            "results": [{"name": n, "wall": s.wall_median, "cpu": s.cpu_median, **s.extra} for n, s in results.items()]}

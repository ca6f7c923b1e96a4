"""Child process of benchmark 6: train on N rows x F float64 features and print memory facts as JSON.

Run by :mod:`benchmarks.memory` (``python -m benchmarks.memory_child ROWS FEATURES WHO``) so
that each contender's peak resident memory is its own.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import warnings


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_data(rows: int, features: int):
    """Float64 features written in place (no temporaries) and a label from a linear rule."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = np.empty((rows, features))
    step = 100_000
    for start in range(0, rows, step):
        X[start:start + step] = rng.standard_normal((min(step, rows - start), features))
    w = rng.standard_normal(features)
    y = (X @ w > 0).astype(np.int64)
    return X, y


def main(rows: int, features: int, who: str) -> None:
    import torch

    torch.set_num_threads(1)
    warm_X, warm_y = make_data(2000, features)
    train(warm_X, warm_y, who)  # loads every module first: the peak that follows is the data's
    X, y = make_data(rows, features)
    facts = {"rows": rows, "features": features, "who": who, "data_mb": X.nbytes / 2**20,
             "rss_after_data_mb": rss_mb(), "peak_before_training_mb": peak_mb()}
    train(X, y, who)
    facts["peak_mb"] = peak_mb()
    facts["rss_end_mb"] = rss_mb()
    print(json.dumps(facts))


def train(X, y, who: str) -> None:
    import torch

    rows, features = X.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if who == "torchclf":
            import torchclf
            from torchclf.api import make_config

            config = make_config(model={"hidden": (64,), "dropout": 0.0},
                                 train={"epochs": 1, "batch_size": 4096, "patience": 0})
            torchclf.train(X, y, config=config)
        else:  # the floor: a float32 tensor copy and a plain loop, nothing else
            from torch import nn

            Xt, yt = torch.from_numpy(X).float(), torch.from_numpy(y)
            model = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 2))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for idx in torch.randperm(rows).split(4096):
                opt.zero_grad()
                nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
                opt.step()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

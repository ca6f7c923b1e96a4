"""A user's training script, run under ``torchrun`` by tests/test_distributed.py.

It calls the public Python API exactly as it would in one process, and dumps
each rank's final weights and history so the test can compare ranks with
each other and with a single-process run.

Usage: python -m torch.distributed.run ... tests/distributed_script.py MODE DUMP_DIR [OUT]

MODE ``train`` trains normally (and, when DUMP_DIR holds ``table.parquet``,
trains again reading only each rank's part of it); ``crash`` raises on rank 1
in epoch 2; ``hang`` stalls rank 1 in epoch 2 far beyond the job's timeout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import torchclf  # noqa: E402
from torchclf.callbacks import Callback  # noqa: E402

# Shared with the test: a 2-process run with local batch 8 covers the same
# global batches as one process with batch 16.
DATA = "circles:n_samples=200,noise=0.1"
# Everything explicit, so that changes to the library's defaults keep the
# conditions of equivalence (no dropout, no batch norm) in place.
MODEL = {"hidden": (16, 16), "activation": "relu", "dropout": 0.0, "norm": "none"}
TRAIN = {"epochs": 4, "optimizer": "adamw", "lr": 0.01, "weight_decay": 1e-4, "schedule": "plateau",
         "patience": 0, "device": "cpu", "seed": 3, "precision": "float32"}
LOCAL_BATCH = 8


def config(batch_size: int):
    return torchclf.make_config(model=MODEL, train={**TRAIN, "batch_size": batch_size})


class Misbehave(Callback):
    """Fails or stalls on rank 1 at epoch 2: the failures a real job can meet."""

    def __init__(self, mode: str):
        self.mode = mode

    def on_epoch_end(self, state) -> None:
        if os.environ.get("RANK") != "1" or state.epoch != 2:
            return
        if self.mode == "crash":
            raise RuntimeError("injected failure on rank 1")
        if self.mode == "hang":
            print("rank 1 stalls in epoch 2", file=sys.stderr, flush=True)
            time.sleep(600)


def main(mode: str, dump: Path, out: str | None) -> None:
    callbacks = None
    if mode != "train":
        callbacks = [Misbehave(mode)]  # after the standard ones
    result = torchclf.train(DATA, config=config(LOCAL_BATCH), out=out, callbacks=callbacks)
    rank = os.environ["RANK"]
    state = {k: v.tolist() for k, v in result.predictor.model.state_dict().items()}
    payload = {"state": state, "history": result.history, "metrics_test_accuracy": result.metrics["test"]["accuracy"],
               "threads": torch.get_num_threads(), "world": int(os.environ["WORLD_SIZE"])}
    try:
        from torchclf.estimator import NeuralNetClassifier
    except ImportError:
        payload["estimator"] = None
    else:
        from sklearn.datasets import make_moons

        X, y = make_moons(n_samples=120, noise=0.1, random_state=0)
        clf = NeuralNetClassifier()
        # Keep the fit short whatever the estimator calls its parameters.
        wanted = {"hidden_layer_sizes": (8,), "max_iter": 3, "batch_size": 8, "device": "cpu"}
        clf.set_params(**{k: v for k, v in wanted.items() if k in clf.get_params()})
        payload["estimator"] = clf.fit(X, y).predict_proba(X).tolist()
    table = dump / "table.parquet"
    if mode == "train" and table.exists():
        # The same API on a Parquet file that each rank reads only a part of.
        os.environ["TORCHCLF_SHARD_PARQUET"] = "1"
        part = torchclf.train(str(table), "label", config=config(LOCAL_BATCH))
        payload["parquet"] = {
            "rows": part.data_summary["rows"],
            "classes": [str(c) for c in part.predictor.classes],
            "state": {k: v.tolist() for k, v in part.predictor.model.state_dict().items()},
            "test_confusion": part.metrics["test"]["confusion_matrix"],
            "test_rows": part.splits.test.n_rows,
        }
    tmp = dump / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.replace(dump / f"rank{rank}.json")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)

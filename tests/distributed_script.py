"""A user's training script, run under ``torchrun`` by tests/test_distributed.py.

It calls the public Python API exactly as it would in one process, and dumps
each rank's final weights and history so the test can compare ranks with
each other and with a single-process run.

Usage: python -m torch.distributed.run ... tests/distributed_script.py MODE DUMP_DIR [OUT [CRASH_OUT]]
(or :func:`run` with those arguments, in a process with torchrun's environment).

MODE ``train`` trains normally, then, when OUT is given, runs the command line
``torchclf train`` with the same settings into OUT (in this process, without
the pictures), and, when DUMP_DIR holds ``table.parquet``, trains again reading
only each rank's part of it; it dumps what it got to DUMP_DIR/rank<RANK>.json.
With CRASH_OUT it then trains once more into CRASH_OUT, and rank 1 raises in
epoch 2 (crash-start-rank<RANK>.txt beside CRASH_OUT holds the time that run began).
``crash`` raises on rank 1 in epoch 2; ``hang`` stalls rank 1 in epoch 2 far
beyond the job's timeout; in ``hang`` every rank first writes its torch thread
count to DUMP_DIR/threads-rank<RANK>.txt at the end of epoch 1.
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


def cli_args(out: str) -> list[str]:
    """``torchclf train`` with the settings of :func:`config` at the local batch size, into ``out``."""
    m, t = MODEL, TRAIN
    return ["train", DATA, "--hidden", ",".join(map(str, m["hidden"])), "--activation", m["activation"],
            "--dropout", str(m["dropout"]), "--norm", m["norm"], "--epochs", str(t["epochs"]),
            "--optimizer", t["optimizer"], "--lr", str(t["lr"]), "--weight-decay", str(t["weight_decay"]),
            "--schedule", t["schedule"], "--patience", str(t["patience"]), "--device", t["device"],
            "--seed", str(t["seed"]), "--precision", t["precision"], "--batch-size", str(LOCAL_BATCH),
            "--out", out, "--quiet"]


def run_cli_without_pictures(args: list[str]) -> int:
    """The command line in this process, without plots and report.html (seconds on rank 0 that no test reads)."""
    import torchclf.api
    import torchclf.report
    from torchclf.cli import main as cli_main

    plots, report = torchclf.api.write_plots, torchclf.report.write_report
    torchclf.api.write_plots = lambda *a, **k: []
    torchclf.report.write_report = lambda *a, **k: None
    try:
        return cli_main(args)
    finally:
        torchclf.api.write_plots, torchclf.report.write_report = plots, report


class Misbehave(Callback):
    """Fails or stalls on rank 1 at epoch 2: the failures a real job can meet.

    With ``threads_to``, every rank writes its thread count (set when it joined the job) there at epoch 1.
    """

    def __init__(self, mode: str, threads_to: Path | None = None):
        self.mode = mode
        self.threads_to = threads_to

    def on_epoch_end(self, state) -> None:
        if state.epoch == 1 and self.threads_to is not None:
            (self.threads_to / f"threads-rank{os.environ['RANK']}.txt").write_text(str(torch.get_num_threads()))
        if os.environ.get("RANK") != "1" or state.epoch != 2:
            return
        if self.mode == "crash":
            raise RuntimeError("injected failure on rank 1")
        if self.mode == "hang":
            print("rank 1 stalls in epoch 2", file=sys.stderr, flush=True)
            time.sleep(600)


def main(mode: str, dump: Path, out: str | None, crash_out: str | None = None) -> None:
    callbacks = None
    if mode != "train":
        callbacks = [Misbehave(mode, dump if mode == "hang" else None)]  # after the standard ones
    result = torchclf.train(DATA, config=config(LOCAL_BATCH), out=out if mode != "train" else None,
                            callbacks=callbacks)
    rank = os.environ["RANK"]
    state = {k: v.tolist() for k, v in result.predictor.model.state_dict().items()}
    payload = {"state": state, "history": result.history, "metrics_test_accuracy": result.metrics["test"]["accuracy"],
               "world": int(os.environ["WORLD_SIZE"])}
    if mode == "train" and out is not None:
        payload["cli_exit"] = run_cli_without_pictures(cli_args(out))
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
    if mode == "train" and crash_out is not None:
        beside = Path(crash_out).parent
        (beside / f"crash-start-rank{rank}.txt").write_text(repr(time.time()))
        torchclf.train(DATA, config=config(LOCAL_BATCH), out=crash_out, callbacks=[Misbehave("crash")])
        (beside / f"after-crash-rank{rank}.txt").write_text("the run that should have crashed ended")


def exit_like_the_command(code: int) -> None:
    """End as the ``torchclf`` command does (``cli.run``): atexit handlers, flushed output, then ``os._exit``.

    Python's own teardown would free torch's, pandas' and scikit-learn's modules one by one: about 2 s
    of CPU per process, which checks nothing here.
    """
    import atexit
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str]) -> int:
    """:func:`main` on the command line's arguments; the exit status a torchrun worker would have."""
    try:
        main(args[0], Path(args[1]), *args[2:4])
    except SystemExit as stop:  # torchrun's SIGTERM, turned into SystemExit(143) by torchclf
        return stop.code if isinstance(stop.code, int) else 1
    except Exception:  # noqa: BLE001 (reported as Python reports an uncaught exception)
        import traceback

        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    exit_like_the_command(run(sys.argv[1:]))

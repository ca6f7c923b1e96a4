"""Benchmark 3: time to a target validation accuracy with default settings.

``torchclf.train(name)`` with every default, stopped at the end of the first
epoch whose validation accuracy reaches the target, against scikit-learn's
MLPClassifier with its defaults on the same split (standardised the same way),
trained one epoch at a time with ``partial_fit`` and checked after each epoch.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from benchmarks.common import median

TARGETS = {"circles": 0.99, "digits": 0.97}


def _torchclf(name: str, target: float, max_epochs: int | None):
    from torchclf import engine
    from torchclf.api import make_config, train
    from torchclf.callbacks import Callback

    class StopAtTarget(Callback):
        def __init__(self):
            self.t0 = None
            self.reached: tuple[float, int] | None = None

        def on_train_begin(self, state):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, state):
            acc = state.last.get("val_accuracy")
            if acc is not None and acc >= target and self.reached is None:
                self.reached = (time.perf_counter() - self.t0, state.epoch)
                state.stop = True

    config = make_config(train={} if max_epochs is None else {"epochs": max_epochs})
    stopper = StopAtTarget()
    callbacks = engine.default_callbacks(config.train, False, True) + [stopper]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(name, config=config, callbacks=callbacks)
    total = time.perf_counter() - t0
    best = max((row["val_accuracy"] or 0.0) for row in result.history)
    return {"reached": stopper.reached is not None,
            "seconds_in_training": stopper.reached[0] if stopper.reached else None,
            "epochs": stopper.reached[1] if stopper.reached else len(result.history),
            "seconds_end_to_end": total, "best_val_accuracy": best,
            "test_accuracy": result.metrics["test"]["accuracy"]}, result.splits


def _sklearn(splits, target: float, max_epochs: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    def xy(part):
        return part.features.to_numpy(dtype=np.float64), part.target.to_numpy()

    (Xtr, ytr), (Xva, yva), (Xte, yte) = xy(splits.train), xy(splits.validation), xy(splits.test)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xva, Xte = scaler.transform(Xtr), scaler.transform(Xva), scaler.transform(Xte)
    clf = MLPClassifier(random_state=0)
    classes = np.unique(ytr)
    t0 = time.perf_counter()
    reached, best, epoch = None, 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for epoch in range(1, max_epochs + 1):
            clf.partial_fit(Xtr, ytr, classes=classes)
            acc = clf.score(Xva, yva)
            best = max(best, acc)
            if acc >= target:
                reached = time.perf_counter() - t0
                break
    return {"reached": reached is not None, "seconds_in_training": reached, "epochs": epoch,
            "seconds_end_to_end": time.perf_counter() - t0, "best_val_accuracy": best,
            "test_accuracy": clf.score(Xte, yte)}


def run(repeats: int, max_epochs: int | None, log=print) -> dict:
    rows = []
    for name, target in TARGETS.items():
        runs: dict[str, list[dict]] = {"torchclf (defaults)": [], "scikit-learn MLPClassifier (defaults)": []}
        for r in range(repeats):
            ours, splits = _torchclf(name, target, max_epochs)
            theirs = _sklearn(splits, target, max_epochs or 300)
            runs["torchclf (defaults)"].append(ours)
            runs["scikit-learn MLPClassifier (defaults)"].append(theirs)
            for who, res in (("torchclf", ours), ("sklearn", theirs)):
                log(f"  [target {name} {r + 1}/{repeats}] {who}: reached={res['reached']} "
                    f"after {res['epochs']} epochs, {res['seconds_in_training']}s; best {res['best_val_accuracy']:.4f}")
        for who, results in runs.items():
            rows.append({"dataset": name, "target": target, "who": who,
                         "reached": sum(r["reached"] for r in results), "of": len(results),
                         "seconds": median(r["seconds_in_training"] for r in results),
                         "epochs": median(r["epochs"] for r in results),
                         "best_val_accuracy": median(r["best_val_accuracy"] for r in results),
                         "test_accuracy": median(r["test_accuracy"] for r in results)})
    return {"repeats": repeats, "results": rows}

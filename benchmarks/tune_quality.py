"""``torchclf tune`` on the quality benchmark's tables: does tuning beat the defaults on the test rows, and how
much time does pruning save? (docs/tune.md, "Measurements").

For each table: the default recipe trained once (``torchclf.train``, the same split and seed as the study),
then one 30-trial study per pruner with ``tune``'s defaults (space, seed, split, epochs, patience). Recorded:
trials by state, epochs trained, seconds in trials and of the whole call, the best and the defaults' validation
loss, which trial was saved and why, and the test scores of the saved run, of the best trial by validation
loss and of the defaults. The pictures of ``tune/`` and the run's report are not drawn (they are the same work
with or without pruning).

    OMP_NUM_THREADS=1 python benchmarks/tune_quality.py --tables breast_cancer,mixed --pruners median,none \
        --results /tmp/tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_scores(result) -> dict:
    """Test accuracy (subset accuracy for multilabel) and log loss of the calibrated probabilities."""
    test = result.metrics["test"]
    calibration = test["calibration"]
    log_loss = (calibration.get("calibrated") or calibration["uncalibrated"])["log_loss"]
    return {"accuracy": test["accuracy"], "log_loss": log_loss, "rows": test["n_samples"]}


def trained(dataset, config) -> dict:
    from torchclf import api

    t0, c0 = time.perf_counter(), time.process_time()
    result = api.run(api.RunSpec(dataset, config=config))
    calibration = result.metrics["validation"]["calibration"]
    return {**test_scores(result), "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "epochs": len(result.history),
            "validation_log_loss": (calibration.get("calibrated") or calibration["uncalibrated"])["log_loss"]}


def one_study(name: str, dataset, pruner: str, trials: int, folder: Path, default_scores: dict, config) -> dict:
    import torchclf
    from torchclf import api
    from torchclf.config import with_values

    out = folder / f"{name}-{pruner}"
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    tuned = torchclf.tune(dataset, trials=trials, out=out, pruner=pruner, config=config)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    study = tuned.study
    every = study.get_trials(deepcopy=False)
    complete = [t for t in every if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    raw_best = min(complete, key=lambda t: min(v for _, v in t.user_attrs["curve"]))
    space = torchclf.tune.DEFAULT_SPACE

    def scores_of(trial):
        if trial.number == tuned.best_trial:
            return test_scores(tuned.result)
        if trial.user_attrs.get("defaults"):
            return {k: default_scores[k] for k in ("accuracy", "log_loss", "rows")}
        return test_scores(api.run(api.RunSpec(dataset, config=with_values(config, space.settings(trial.params)))))

    record = {
        "table": name, "pruner": pruner, "trials": trials, "counts": tuned.counts,
        "epochs": sum(t.user_attrs.get("epochs", 0) for t in every),
        "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in every
                             if t.datetime_complete is not None),
        "wall_seconds": wall, "cpu_seconds": cpu, "load": [load, os.getloadavg()[0]],
        "validation_rows": len(torchclf.tune.unpack_losses(best.user_attrs["row_losses"])),
        "best_trial": best.number, "best_value": best.value, "choice": tuned.choice,
        "saved_trial": tuned.best_trial, "saved": test_scores(tuned.result),
        "best": scores_of(best), "best_params": best.params,
        "raw_best_trial": raw_best.number, "raw_best": scores_of(raw_best),
        "per_trial": [[t.number, t.state.name.lower(), t.user_attrs.get("epochs"),
                       None if t.datetime_complete is None else
                       round((t.datetime_complete - t.datetime_start).total_seconds(), 3),
                       t.params.get("batch_size"), t.params.get("width"), t.params.get("depth")] for t in every],
    }
    shutil.rmtree(out, ignore_errors=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="breast_cancer,seattle_weather,mixed")
    parser.add_argument("--pruners", default="quartile,none")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--val-size", type=float, default=None, help="tune's --val-size (default: the table's)")
    parser.add_argument("--results", type=Path, required=True, help="JSON file; tables already in it are kept")
    args = parser.parse_args(argv)

    import torchclf.api
    import torchclf.report
    import torchclf.tune
    from benchmarks.quality_tables import load
    from torchclf.config import RunConfig, with_values

    torchclf.api.write_plots = lambda *a, **k: []
    torchclf.report.write_report = lambda *a, **k: None
    torchclf.tune.PICTURES = ()
    config = RunConfig() if args.val_size is None else with_values(RunConfig(), {"validation_size": args.val_size})
    suffix = "" if args.val_size is None else f"@val{args.val_size:g}"
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables.split(","):
            dataset = load(name)
            key = f"{name}/default{suffix}"
            if key not in results:
                results[key] = {"table": name, **trained(dataset, config)}
                args.results.write_text(json.dumps(results, indent=1))
            for pruner in args.pruners.split(","):
                key = f"{name}/{pruner}{suffix}"
                if key in results:
                    continue
                results[key] = one_study(name, dataset, pruner, args.trials, Path(tmp), results[f"{name}/default{suffix}"],
                                         config)
                args.results.write_text(json.dumps(results, indent=1))
                r = results[key]
                print(f"{name} {pruner}: {r['counts']} epochs {r['epochs']} trials {r['trial_seconds']:.1f}s "
                      f"wall {r['wall_seconds']:.1f}s cpu {r['cpu_seconds']:.1f}s best #{r['best_trial']} {r['best_value']:.4f} saved "
                      f"#{r['saved_trial']} {r['saved']} default {results[f'{name}/default{suffix}']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

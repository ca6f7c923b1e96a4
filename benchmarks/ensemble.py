"""Would an ensemble of default networks pay for itself? A probe on the quality benchmark's tables.

For each seed s (the benchmark's split and seed), K default networks are trained on the same rows (the
split of seed s) with the seeds s, s + 1000, ..., s + 1000 (K - 1) for initialisation, dropout and
shuffling, and their calibrated probabilities averaged over the test rows. Member 0 is the benchmark's
torchclf run itself. Printed per table: mean accuracy and log loss over the seeds of member 0 and of the
ensemble, and the training time of both.

    OMP_NUM_THREADS=1 python -m benchmarks.ensemble --tables breast_cancer,cars --members 5
"""

from __future__ import annotations

import argparse
import contextlib

from benchmarks.common import clock, set_threads, table


@contextlib.contextmanager
def split_seed(seed: int):
    """``torchclf.api`` splits the rows by ``seed`` inside the block, whatever the run's own seed."""
    from torchclf import api

    split = api.split_dataset
    api.split_dataset = lambda *args, **kwargs: split(*args, **{**kwargs, "seed": seed})
    try:
        yield
    finally:
        api.split_dataset = split


def probe(name: str, members: int, seeds: list[int]) -> list:
    import numpy as np

    import torchclf
    from benchmarks.quality import score
    from benchmarks.quality_tables import load
    from torchclf import api

    dataset = load(name)
    single, ensemble, seconds = [], [], [0.0, 0.0]
    for seed in seeds:
        probabilities = []
        for member in range(members):
            config = api.make_config(train={"seed": seed + 1000 * member, "threads": 1})
            with split_seed(seed), clock() as took:
                result = torchclf.train(dataset, config=config)
            seconds[0] += took.cpu if member == 0 else 0.0
            seconds[1] += took.cpu
            test, predictor = result.splits.test, result.predictor
            probabilities.append(predictor.predict_proba(test.features))
        if test.multilabel:
            raise SystemExit(f"{name}: the probe scores single-label tables only")
        classes = np.asarray(predictor.classes, dtype=object)
        for probability, scores in ((probabilities[0], single), (np.mean(probabilities, axis=0), ensemble)):
            scores.append(score(test.target, probability, classes[probability.argmax(axis=1)], classes))
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return [name, f"{mean(single, 'accuracy'):.4f} / {mean(single, 'log_loss'):.3f}",
            f"{mean(ensemble, 'accuracy'):.4f} / {mean(ensemble, 'log_loss'):.3f}",
            f"{seconds[0] / len(seeds):.1f}", f"{seconds[1] / len(seeds):.1f}"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="iris,wine,penguins,breast_cancer,cars")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args(argv)
    set_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [probe(name, args.members, seeds) for name in args.tables.split(",")]
    print(table(["table", "one network: accuracy / log loss", f"{args.members} networks averaged",
                 "CPU s (one)", f"CPU s ({args.members})"], rows))


if __name__ == "__main__":
    main()

"""Accuracy of torchclf's defaults against scikit-learn's MLP and gradient boosting.

Every model sees the same seeded splits (torchclf's own train/validation/test
split; the scikit-learn models train on train+validation, since they do their
own early stopping or none). Prints a Markdown table of mean (min) test
accuracy over seeds, and writes it to docs/quality.md with ``--write``.

    OMP_NUM_THREADS=1 python benchmarks/quality.py --seeds 5 --write
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def mixed_table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A practitioner-style table: numbers, categories, missing values, string labels."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = np.exp(rng.normal(10, 0.6, n))
    city = rng.choice(["north", "south", "east", "west", "centre"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], n)
    visits = rng.poisson(3, n).astype(float)
    score = (0.04 * (age - 50) + 0.8 * np.log(income / 20000) + (city == "north") * 0.7
             - (plan == "basic") * 0.9 + 0.25 * visits + 0.5 * np.sin(age / 7) + rng.normal(0, 0.8, n))
    label = np.where(score > 0.6, "churn", np.where(score > -0.6, "stay", "upgrade"))
    frame = pd.DataFrame({"age": age, "income": income, "city": city, "plan": plan, "visits": visits, "label": label})
    for col, rate in (("income", 0.1), ("city", 0.05), ("visits", 0.08)):
        frame.loc[rng.random(n) < rate, col] = None
    return frame


def sklearn_models():
    from sklearn.compose import make_column_selector, make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = make_column_selector(dtype_include="number")
    text = make_column_selector(dtype_exclude="number")
    mlp = make_pipeline(
        make_column_transformer(
            (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (make_pipeline(SimpleImputer(strategy="constant", fill_value="<missing>"),
                           OneHotEncoder(handle_unknown="ignore")), text),
        ),
        MLPClassifier(max_iter=500, early_stopping=False, random_state=0),
    )
    hgb = make_pipeline(
        make_column_transformer(
            (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1), text),
            remainder="passthrough",
        ),
        HistGradientBoostingClassifier(random_state=0),
    )
    return {"sklearn MLPClassifier": mlp, "sklearn HistGradientBoosting": hgb}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default="iris,wine,breast_cancer,digits,mixed")
    parser.add_argument("--write", action="store_true", help="write docs/quality.md")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import sklearn
    import torch

    torch.set_num_threads(1)
    import torchclf
    from torchclf import api
    from torchclf.data import split_dataset

    rows = []
    for name in args.datasets.split(","):
        source = mixed_table() if name == "mixed" else name
        dataset = api.as_dataset(source, "label" if name == "mixed" else None)
        scores: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            result = torchclf.train(dataset, config=api.make_config(train={"seed": seed}))
            scores.setdefault("torchclf (defaults)", []).append(result.metrics["test"]["accuracy"])
            splits = split_dataset(dataset, seed=seed)
            X = pd.concat([splits.train.features, splits.validation.features])
            y = pd.concat([splits.train.target, splits.validation.target])
            for label, model in sklearn_models().items():
                model.fit(X, y)
                scores.setdefault(label, []).append(model.score(splits.test.features, splits.test.target))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in scores.items())
                  + f" ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
        rows.append((name, dataset.n_rows, scores))

    models = list(rows[0][2])
    lines = ["| dataset | rows | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 2)]
    for name, n, scores in rows:
        lines.append(f"| {name} | {n} | " + " | ".join(
            f"{np.mean(scores[m]):.3f} ({np.min(scores[m]):.3f})" for m in models) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        header = (
            "# Accuracy of the defaults\n\n"
            "Test accuracy of `torchclf train` with no flags against scikit-learn's MLPClassifier and\n"
            "HistGradientBoostingClassifier (imputation, scaling and one-hot encoding in a pipeline),\n"
            f"mean (minimum) over seeds 0-{args.seeds - 1}. Each seed is one train/validation/test split\n"
            "(70/10/20, stratified); scikit-learn's models train on train+validation.\n"
            "`mixed` is a generated practitioner table (benchmarks/quality.py: numbers, categories,\n"
            "missing values, three string labels, 4000 rows).\n\n"
            f"Produced by `OMP_NUM_THREADS=1 python benchmarks/quality.py --seeds {args.seeds} --write` with "
            f"torchclf {torchclf.__version__}, torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
            f"Python {platform.python_version()}, 1 thread.\n\n"
        )
        Path(__file__).resolve().parent.parent.joinpath("docs", "quality.md").write_text(header + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

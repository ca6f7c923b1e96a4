"""Side-by-side experiments: several configurations trained on the same split and seed.

:func:`compare` trains each :class:`Variant` through :func:`torchclf.api.run`
(the one training loop) on one dataset and writes a folder with a metrics
table (``metrics.csv``), the learning curves overlaid (``learning_curves.png``),
for two plotted features a grid of decision boundaries
(``decision_boundaries.png``), and each variant's own run folder under
``runs/``. With no variants it runs the tutorial's improvement study
(:data:`TUTORIAL_STUDY`): a straight line, then more layers, units and epochs,
then ReLU, then torchclf's default model.

Like the command line, this module is a front door over :mod:`torchclf.api`;
nothing else imports it.
"""

from __future__ import annotations

import csv
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torchclf import api
from torchclf.config import PARAMS, RunConfig, read_toml
from torchclf.errors import TorchclfError, warn

#: The tutorial's path from a model that draws a straight line to one that bends.
TUTORIAL_STUDY: tuple[tuple[str, str], ...] = (
    ("circle-v0", "--preset circle-v0"),
    ("circle-v1", "--preset circle-v1"),
    ("circle-v2", "--preset circle-v2"),
    ("default", "--preset default"),
)

#: The tutorial's "ways to improve a model" and the train/compare flag each maps to.
IMPROVEMENTS: tuple[tuple[str, str, str], ...] = (
    ("add more layers", "--hidden 10,10,10", "one number per hidden layer"),
    ("add more hidden units", "--hidden 64,64", "a bigger number per layer"),
    ("fit for longer", "--epochs 1000", "with --patience 0 early stopping never cuts it short"),
    ("change the activation functions", "--activation relu", "linear, relu, tanh, sigmoid, gelu, ..."),
    ("change the learning rate", "--lr 0.01", "also --optimizer sgd|adam|adamw and --schedule"),
    ("change the loss function", "--task multiclass",
     "the loss follows the problem type, so it is chosen through --task: binary trains one logit with "
     "sigmoid + binary cross-entropy, multiclass one logit per class with softmax + cross-entropy; "
     "--class-weight balanced reweights either loss"),
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
METRIC_COLUMNS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss")


@dataclass(frozen=True)
class Variant:
    """One configuration to compare.

    Attributes
    ----------
    name : str
        Letters, digits and ``_ . + -``; names the variant's run folder.
    config : RunConfig
    flags : str
        The command-line flags it came from, for the table.
    """

    name: str
    config: RunConfig
    flags: str = ""


@dataclass
class Comparison:
    """What :func:`compare` returns: one table row and one training result per variant."""

    rows: list[dict]
    results: dict = field(default_factory=dict)
    folder: Path | None = None
    split: str = "test"


# ----- describing variants ------------------------------------------------------
def check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise TorchclfError(f"{where}: variant name {name!r} must be letters, digits or _.+- "
                            "(example: --variant \"deeper:--hidden 64,64,64\")")
    return name


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME:FLAGS"`` -> (name, list of flag words), e.g. ``"deeper:--hidden 64,64,64 --epochs 200"``."""
    name, sep, flags = text.partition(":")
    if not sep:
        raise TorchclfError(f"--variant {text!r}: expected NAME:FLAGS such as \"deeper:--hidden 64,64,64\"")
    try:
        words = shlex.split(flags)
    except ValueError as exc:
        raise TorchclfError(f"--variant {text!r}: cannot split the flags ({exc})") from None
    return check_name(name.strip(), "--variant"), words


def read_variants_file(path: str | Path) -> list[tuple[str, list[str]]]:
    """Variants from a TOML file: a ``[variants]`` table of ``name = "flags"`` lines, in order.

    Example::

        [variants]
        linear = "--preset circle-v1"
        relu = "--preset circle-v2"
        deeper = "--hidden 64,64,64 --epochs 200"
    """
    path = Path(path)
    doc = read_toml(path, "variants file", "--file")
    table = doc.get("variants")
    if not isinstance(table, dict) or not table:
        raise TorchclfError(f"{path}: expected a [variants] table of name = \"flags\" lines")
    out = []
    for name, flags in table.items():
        if not isinstance(flags, str):
            raise TorchclfError(f"{path}: variant {name!r} must be a string of flags, got {type(flags).__name__}")
        out.append((check_name(name, str(path)), shlex.split(flags)))
    return out


# ----- running ------------------------------------------------------------------
def _row(variant: Variant, result: api.TrainResult, split: str) -> dict:
    metrics = result.metrics.get(split, {})
    model = variant.config.model
    row = {
        "variant": variant.name,
        "flags": variant.flags,
        "hidden": ",".join(map(str, model.hidden)) or "none",
        "activation": model.activation,
        "optimizer": variant.config.train.optimizer,
        "lr": variant.config.train.lr,
        "epochs": len(result.history),
        "parameters": sum(p.numel() for p in result.predictor.model.parameters()),
        "seconds": round(result.seconds, 3),
    }
    row.update({f"{split}_{m}": metrics.get(m) for m in METRIC_COLUMNS})
    return row


def _check_same_split(variants: list[Variant]) -> None:
    def shared(config: RunConfig) -> dict:
        return {p.name: config.value(p.name) for p in PARAMS if p.shared}

    first = shared(variants[0].config)
    for v in variants[1:]:
        if shared(v.config) != first:
            raise TorchclfError(
                f"variant {v.name!r}: its seed or split sizes differ from {variants[0].name!r}; a comparison "
                "keeps one split, so set --seed/--test-size/--val-size on compare, not on a variant")


def compare(
    data,
    variants: list[Variant],
    out: str | Path | None = None,
    *,
    target=None,
    label_sep: str | None = None,
    features: tuple[str, str] | None = None,
    resolution: int = 150,
    save_runs: bool = True,
    verbose: bool = False,
    on_start: Callable[[int, Variant], None] | None = None,
) -> Comparison:
    """Train every variant on the same split and seed, and write the comparison folder.

    Parameters
    ----------
    data : str, Path, DataFrame or Dataset
        As for :func:`torchclf.api.train`.
    variants : list of Variant
        In the order to train and show them; all with the same seed and split sizes.
    out : path, optional
        The folder to create (atomically; never overwritten). None writes nothing.
    features : (str, str), optional
        Two numeric columns for the boundary grid (others held at their
        training medians); two-column data needs none.
    resolution : int
        Boundary grid points per axis.
    save_runs : bool
        Also write each variant's run folder (with its report) under ``runs/``.
    on_start : callable, optional
        Called as ``on_start(index, variant)`` before each variant trains.

    Returns
    -------
    Comparison
    """
    if not variants:
        raise TorchclfError("compare: no variants given")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TorchclfError(f"compare: variant names must be unique, repeated: {dupes}")
    _check_same_split(variants)
    # PyTorch imports its compiler stack the first time an optimizer is built (seconds);
    # pay that before timing, so the first variant's time is comparable with the rest.
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    comparison = Comparison(rows=[])
    said = set()  # every variant trains on the same rows: a warning about them is given once, not per variant
    for i, variant in enumerate(variants):
        if on_start is not None:
            on_start(i, variant)
        with warnings.catch_warnings(record=True) as caught:  # under the caller's filters, then given on
            result = api.run(api.RunSpec(data, target, None, label_sep, variant.config), verbose=verbose)
        for w in caught:
            if (w.category, str(w.message)) not in said:
                said.add((w.category, str(w.message)))
                warn(str(w.message), w.category)
        comparison.results[variant.name] = result
    first = next(iter(comparison.results.values()))
    comparison.split = "test" if "test" in first.metrics else ("validation" if "validation" in first.metrics else "train")
    comparison.rows = [_row(v, comparison.results[v.name], comparison.split) for v in variants]
    if out is not None:
        comparison.folder = write_comparison(comparison, out, features=features, resolution=resolution,
                                             save_runs=save_runs)
    return comparison


def write_comparison(comparison: Comparison, out: str | Path, *, features=None, resolution: int = 150,
                     save_runs: bool = True) -> Path:
    """Write ``metrics.csv``, ``learning_curves.png``, ``decision_boundaries.png`` and ``runs/`` atomically."""
    from torchclf import plots
    from torchclf.artifact import atomic_folder
    from torchclf.report import check_boundary_features

    results = comparison.results
    first = next(iter(results.values())).predictor
    chosen = None
    if first.task.kind != "multilabel":
        chosen = check_boundary_features(first, features)  # fails before anything is written
    with atomic_folder(out) as folder:
        with open(folder / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(comparison.rows[0]))
            writer.writeheader()
            writer.writerows(comparison.rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plotting chatter is not the user's concern
            plots.compare_learning_curves({n: r.history for n, r in results.items()}, folder / "learning_curves.png")
            if chosen is not None:
                boundary_grid(comparison, chosen, folder / "decision_boundaries.png", resolution=resolution)
        if save_runs:
            for name, result in results.items():
                api.write_run(result, folder / "runs" / name)
    return Path(out)


def boundary_grid(comparison: Comparison, features: tuple[str, str], path: Path, *, resolution: int = 150) -> Path:
    """One decision-boundary panel per variant over the shared held-out rows."""
    from torchclf import plots
    from torchclf.report import boundary_fixed_values

    results = comparison.results
    result = next(iter(results.values()))
    split = getattr(result.splits, comparison.split) or result.splits.train
    predictor = result.predictor
    labels = predictor.labels.encode(split.target, "comparison rows")
    acc_key = f"{comparison.split}_accuracy"
    models = []
    for row in comparison.rows:
        acc = row.get(acc_key)
        title = row["variant"] + (f": {acc:.1%} {comparison.split}" if acc is not None else "")
        models.append((title, results[row["variant"]].predictor.predict_proba))
    fixed = boundary_fixed_values(predictor, features)
    return plots.decision_boundary_grid(models, split.features, labels, features, predictor.task.kind,
                                        [str(c) for c in predictor.classes], path, fixed=fixed or None,
                                        resolution=resolution)


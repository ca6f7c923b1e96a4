"""What the page asks for: validated settings, the RunConfig they mean, and the same run as a command.

The page sends its controls as one JSON object. :func:`parse_settings` checks
every field against the limits below and names the field in its one-line
error. :func:`run_config` turns settings into the exact
:class:`~torchclf.config.RunConfig` that ``torchclf train`` builds from the
flags :func:`train_command` prints, so a saved playground run and the command
shown beside it describe the same training.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from torchclf.config import ACTIVATIONS, OPTIMIZERS, RunConfig
from torchclf.errors import TorchclfError, closest
from torchclf.model import PRESETS

# Built-in datasets offered on the page: which generator parameter the noise
# slider drives, its default and the slider's top.
DATASETS: dict[str, dict] = {
    "circles": {"noise_param": "noise", "noise": 0.03, "noise_max": 0.3},
    "moons": {"noise_param": "noise", "noise": 0.2, "noise_max": 0.5},
    "blobs": {"noise_param": "cluster_std", "noise": 1.5, "noise_max": 4.0},
    "spirals": {"noise_param": "noise", "noise": 0.2, "noise_max": 1.0},
    "xor": {"noise_param": "noise", "noise": 0.05, "noise_max": 0.5},
    "checkerboard": {"noise_param": "noise", "noise": 0.02, "noise_max": 0.3},
}
UPLOAD = "upload"
SPIRAL_ARMS = 3  # the spirals generator's default number of classes

LIMITS = {
    "points": (50, 5000),
    "test_size": (0.05, 0.5),
    "seed": (0, 2**31 - 1),
    "layers": (0, 6),
    "units": (1, 256),
    "dropout": (0.0, 0.9),
    "lr": (1e-6, 10.0),
    "batch_size": (1, 4096),
    "epochs": (1, 10000),
}

DEFAULTS = {
    "dataset": "circles",
    "noise": None,  # the dataset's own default
    "points": 1000,
    "test_size": 0.2,
    "seed": 0,
    "preset": None,
    "hidden": [8, 8],
    "activation": "relu",
    "dropout": 0.0,
    "optimizer": "adamw",
    "lr": 0.01,
    "batch_size": 32,
    "epochs": 200,
    "upload": None,
    "x": None,
    "y": None,
    "target": None,
}


@dataclass(frozen=True)
class Settings:
    """One page's choices, validated. ``batch_size`` None means full batch."""

    dataset: str
    noise: float
    points: int
    test_size: float
    seed: int
    preset: str | None
    hidden: tuple[int, ...]
    activation: str
    dropout: float
    optimizer: str
    lr: float
    batch_size: int | None
    epochs: int
    upload: str | None = None
    x: str | None = None
    y: str | None = None
    target: str | None = None


def _bad(key: str, value, expected: str) -> TorchclfError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return TorchclfError(f"setting {key!r}: got {shown}, expected {expected}; change it on the page")


def _number(raw: dict, key: str, kind: type):
    value = raw[key]
    lo, hi = LIMITS[key]
    # bool is an int in Python; a checkbox value is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _bad(key, raw[key], f"a number from {lo} to {hi}") from None
        else:
            raise _bad(key, value, f"a number from {lo} to {hi}")
    if value != value or not lo <= value <= hi:  # NaN fails both
        raise _bad(key, raw[key], f"a number from {lo} to {hi}")
    if kind is int:
        if float(value) != int(value):
            raise _bad(key, raw[key], f"a whole number from {lo} to {hi}")
        return int(value)
    return float(value)


def _choice(raw: dict, key: str, options) -> str:
    value = raw[key]
    if value not in options:
        hint = closest(str(value), options, n=1) if isinstance(value, str) else []
        expected = "one of " + ", ".join(options) + (f" (did you mean {hint[0]!r}?)" if hint else "")
        raise _bad(key, value, expected)
    return value


def parse_settings(raw) -> Settings:
    """Check the page's settings object and fill in defaults.

    Raises
    ------
    TorchclfError
        Naming the first bad field, with what was received and what is allowed.
    """
    if not isinstance(raw, dict):
        raise TorchclfError(f"settings: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        hint = closest(unknown[0], DEFAULTS, n=1)
        raise TorchclfError(
            f"settings: unknown field {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known fields are {', '.join(DEFAULTS)}"
        )
    raw = {**DEFAULTS, **raw}
    dataset = _choice(raw, "dataset", [*DATASETS, UPLOAD])
    noise = 0.0
    if dataset != UPLOAD:
        info = DATASETS[dataset]
        value = info["noise"] if raw["noise"] is None else raw["noise"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= info["noise_max"]:
            raise _bad("noise", value, f"a number from 0 to {info['noise_max']} for {dataset}")
        noise = round(float(value), 4)
    preset = raw["preset"]
    if preset is not None:
        preset = _choice(raw, "preset", list(PRESETS))
    hidden = raw["hidden"]
    lo_layers, hi_layers = LIMITS["layers"]
    lo_units, hi_units = LIMITS["units"]
    if (not isinstance(hidden, (list, tuple)) or len(hidden) > hi_layers
            or any(isinstance(h, bool) or not isinstance(h, int) or not lo_units <= h <= hi_units for h in hidden)):
        raise _bad("hidden", hidden, f"a list of at most {hi_layers} layer sizes, each {lo_units} to {hi_units}")
    batch_size = None if raw["batch_size"] in (None, "full") else _number(raw, "batch_size", int)
    upload = x = y = target = None
    if dataset == UPLOAD:
        for key in ("upload", "x", "y", "target"):
            if not isinstance(raw[key], str) or not raw[key]:
                raise _bad(key, raw[key], "a value: upload a CSV file and pick its columns first")
        upload, x, y, target = raw["upload"], raw["x"], raw["y"], raw["target"]
        if len({x, y, target}) != 3:
            raise TorchclfError(
                f"settings: the two feature columns and the target must be three different columns, "
                f"got x={x!r}, y={y!r}, target={target!r}; pick other columns on the page"
            )
    return Settings(
        dataset=dataset,
        noise=noise,
        points=_number(raw, "points", int),
        test_size=_number(raw, "test_size", float),
        seed=_number(raw, "seed", int),
        preset=preset,
        hidden=tuple(hidden),
        activation=_choice(raw, "activation", ACTIVATIONS),
        dropout=_number(raw, "dropout", float),
        optimizer=_choice(raw, "optimizer", OPTIMIZERS),
        lr=_number(raw, "lr", float),
        batch_size=batch_size,
        epochs=_number(raw, "epochs", int),
        upload=upload,
        x=x,
        y=y,
        target=target,
    )


def builtin_spec(s: Settings) -> str:
    """The dataset spec ``torchclf train`` reads, e.g. ``circles:n_samples=1000,noise=0.03,seed=0``."""
    info = DATASETS[s.dataset]
    size = f"points_per_class={max(1, s.points // SPIRAL_ARMS)}" if s.dataset == "spirals" else f"n_samples={s.points}"
    return f"{s.dataset}:{size},{info['noise_param']}={s.noise:g},seed={s.seed}"


def run_config(s: Settings, epochs: int | None = None) -> RunConfig:
    """The RunConfig ``torchclf train`` builds from :func:`train_command`'s flags.

    No validation part is cut (the page shows train and test only), training
    runs on the CPU with one thread, and ``epochs`` (default: the settings')
    replaces the epoch count, for a run saved before it finished.
    """
    from torchclf.api import make_config

    return make_config(
        s.preset,
        model={"hidden": s.hidden, "activation": s.activation, "dropout": s.dropout},
        train={"optimizer": s.optimizer, "lr": s.lr, "batch_size": s.batch_size,
               "epochs": s.epochs if epochs is None else epochs, "seed": s.seed, "device": "cpu", "threads": 1},
        data={"test_size": s.test_size, "validation_size": 0.0},
    )


def train_command(s: Settings, data: str, epochs: int, out: str | None = None) -> str:
    """The ``torchclf train ...`` line that trains the same model as the page did.

    ``data`` is the dataset spec or the CSV path; ``epochs`` the epochs run.
    """
    args = ["torchclf", "train", data]
    if s.dataset == UPLOAD:
        args += ["--target", str(s.target)]
    if s.preset is not None:
        args += ["--preset", s.preset]
    args += [
        "--hidden", ",".join(map(str, s.hidden)) or "none",
        "--activation", s.activation,
        "--dropout", f"{s.dropout:g}",
        "--optimizer", s.optimizer,
        "--lr", f"{s.lr:g}",
        "--batch-size", "full" if s.batch_size is None else str(s.batch_size),
        "--epochs", str(epochs),
        "--seed", str(s.seed),
        "--test-size", f"{s.test_size:g}",
        "--val-size", "0",
        "--device", "cpu",
        "--threads", "1",
    ]
    if out is not None:
        args += ["--out", out]
    return shlex.join(args)


def options() -> dict:
    """Everything the page needs to build its controls: choices, defaults, limits, presets."""
    presets = {}
    for name, p in PRESETS.items():
        presets[name] = {
            "description": p.description,
            "hidden": list(p.model.hidden),
            "activation": p.model.activation,
            "dropout": p.model.dropout,
            **{k: p.train[k] for k in ("optimizer", "lr", "batch_size", "epochs") if k in p.train},
        }
        default_train = RunConfig().train
        for key in ("optimizer", "lr", "batch_size", "epochs"):
            presets[name].setdefault(key, getattr(default_train, key))
    return {
        "datasets": DATASETS,
        "presets": presets,
        "activations": list(ACTIVATIONS),
        "optimizers": list(OPTIMIZERS),
        "limits": LIMITS,
        "defaults": DEFAULTS,
    }

"""What the page asks for: validated settings, the RunConfig they mean, and the same run as a command.

The page sends its controls as one JSON object. :func:`parse_settings` checks
every field against the limits below and names the field in its one-line
error. :func:`run_config` turns settings into the exact
:class:`~torchclf.config.RunConfig` that ``torchclf train`` builds from the
flags :func:`train_command` prints, so a saved playground run and the command
shown beside it describe the same training.

The model and training settings come from :data:`torchclf.config.PARAMS`:
every parameter with ``page`` limits is a setting, with those limits, its
``page_value`` default, the table's checks and its command-line flag. Only
what the command line has no flag for (the dataset and its noise and points,
the number of layers, an upload's columns, the feature inputs, the preset) is
defined here. :data:`LIVE` names the settings a running model takes at its
next step; any other change needs a new network.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, make_dataclass

from torchclf.config import PARAM, PARAMS, Param, RunConfig, by_section
from torchclf.data.features import FEATURES, RAW, format_features
from torchclf.errors import TorchclfError, closest
from torchclf.model import PRESETS

# Built-in datasets offered on the page: which generator parameter the noise
# slider drives, its default, the slider's top and its step (the default lies
# on the slider's steps, so the slider shows the value that is used).
DATASETS: dict[str, dict] = {
    "circles": {"noise_param": "noise", "noise": 0.03, "noise_max": 0.3, "noise_step": 0.01},
    "moons": {"noise_param": "noise", "noise": 0.2, "noise_max": 0.5, "noise_step": 0.01},
    "blobs": {"noise_param": "cluster_std", "noise": 1.5, "noise_max": 4.0, "noise_step": 0.05},
    "spirals": {"noise_param": "noise", "noise": 0.2, "noise_max": 1.0, "noise_step": 0.01},
    "xor": {"noise_param": "noise", "noise": 0.05, "noise_max": 0.5, "noise_step": 0.01},
    "checkerboard": {"noise_param": "noise", "noise": 0.02, "noise_max": 0.3, "noise_step": 0.01},
}
# The feature inputs' names on the page, by token of torchclf.data.features.
FEATURE_LABELS = {"x": "x", "y": "y", "x2": "x²", "y2": "y²", "xy": "x·y", "sinx": "sin x",
                  "siny": "sin y"}
UPLOAD = "upload"
SPIRAL_ARMS = 3  # the spirals generator's default number of classes

# The table's parameters on the page, in the table's (--help) order: those with
# page limits, and two lists of choices, which have no limits to give.
TABLE_SETTINGS: tuple[Param, ...] = tuple(
    p for p in PARAMS if p.page is not None or p.name in ("activation", "optimizer"))

# What every page run fixes: no validation part (the page shows train and test
# only), the CPU with one thread, so that tabs share the machine fairly, and the
# tutorial's plain inputs (each feature straight into the first layer, whose
# neurons the page draws over the plane).
FIXED = {"validation_size": 0.0, "device": "cpu", "threads": 1, "numeric_embedding": "none"}

# Settings a running model takes at its next step (the optimizer and batch size
# at its next epoch), through a callback of the running engine: no new network.
LIVE = ("lr", "optimizer", "weight_decay", "l1", "dropout", "batch_size", "epochs")

# Each setting's control on the page, for messages that name what to change.
LABELS = {"dataset": "Dataset", "noise": "Noise", "points": "Points", "preset": "Preset",
          "features": "Features", "upload": "CSV file", "x": "x column", "y": "y column",
          "target": "target column", "hidden": "Hidden layers", "activation": "Activation", "dropout": "Dropout",
          "epochs": "Epochs", "batch_size": "Batch size", "optimizer": "Optimizer", "lr": "Learning rate",
          "weight_decay": "L2 (weight decay)", "l1": "L1", "label_smoothing": "Label smoothing", "seed": "Seed",
          "test_size": "Test part", "layers": "Hidden layers"}

# Limits of the page's own settings, then the table's; a layer-size parameter's
# page limits are its units per layer.
LIMITS = {
    "points": (50, 5000),
    "layers": (0, 6),
    **{p.name: p.page for p in TABLE_SETTINGS if p.page is not None},
}

DEFAULTS = {
    "dataset": "circles",
    "noise": None,  # the dataset's own default
    "points": 1000,
    "features": list(RAW),
    "preset": None,
    **{p.name: list(p.page_value) if p.kind == "sizes" else p.page_value for p in TABLE_SETTINGS},
    "upload": None,
    "x": None,
    "y": None,
    "target": None,
}


@dataclass(frozen=True)
class _PageSettings:
    """The settings that have no command-line flag of their own."""

    dataset: str
    noise: float
    points: int
    preset: str | None
    features: tuple[str, ...] = RAW
    upload: str | None = None
    x: str | None = None
    y: str | None = None
    target: str | None = None

    def values(self) -> dict:
        """The table parameters' values, by name."""
        return {p.name: getattr(self, p.name) for p in TABLE_SETTINGS}


Settings = make_dataclass(
    "Settings",
    [(p.name, p.annotation, field(default=p.page_value)) for p in TABLE_SETTINGS],
    bases=(_PageSettings,),
    frozen=True,
    namespace={"__doc__": "One page's choices, validated: the page's own fields, then one per table setting "
                          "(``batch_size`` None means full batch)."},
)
Settings.__module__ = __name__


class SettingError(TorchclfError):
    """A bad setting; ``field`` names it, so the page can mark its control."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def _bad(key: str, value, expected: str) -> TorchclfError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    label = LABELS.get(key, key)
    return SettingError(f"setting {key!r}: got {shown}, expected {expected}; change “{label}” on the page",
                        key)


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


def _sizes(p: Param, value) -> tuple[int, ...]:
    hi_layers = LIMITS["layers"][1]
    lo_units, hi_units = p.page
    if (not isinstance(value, (list, tuple)) or len(value) > hi_layers
            or any(isinstance(h, bool) or not isinstance(h, int) or not lo_units <= h <= hi_units for h in value)):
        raise _bad(p.name, value, f"a list of at most {hi_layers} layer sizes, each {lo_units} to {hi_units}")
    return tuple(value)


def _table_setting(raw: dict, p: Param):
    """A table parameter's page value, checked against the page's limits and then the table's own rules."""
    value = raw[p.name]
    if p.none is not None and (value is None or value == p.none):
        return None
    if p.kind == "sizes":
        return _sizes(p, value)
    if p.kind == "str":
        if p.choices is None:
            if not isinstance(value, str):
                raise _bad(p.name, value, p.expected())
            return value
        return _choice(raw, p.name, p.choices)
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise _bad(p.name, value, "true or false")
        return value
    number = _number(raw, p.name, int if p.kind == "int" else float)
    try:
        # The command shows numbers as Param.format writes them (6 significant
        # digits): the page trains on that value, so the command repeats it.
        return p.check(p.parse(p.format(number)), "settings")
    except TorchclfError:
        raise _bad(p.name, raw[p.name], p.expected()) from None


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
    features = raw["features"]
    if (not isinstance(features, (list, tuple)) or not features
            or any(not isinstance(f, str) or f not in FEATURES for f in features)):
        raise _bad("features", features, f"a non-empty list of {', '.join(FEATURES)}")
    features = tuple(f for f in FEATURES if f in features)
    table = {p.name: _table_setting(raw, p) for p in TABLE_SETTINGS}
    upload = x = y = target = None
    if dataset == UPLOAD:
        for key in ("upload", "x", "y", "target"):
            if not isinstance(raw[key], str) or not raw[key]:
                raise _bad(key, raw[key], "a value: upload a CSV file and pick its columns first")
        upload, x, y, target = raw["upload"], raw["x"], raw["y"], raw["target"]
        if len({x, y, target}) != 3:
            raise SettingError(
                f"settings: the two feature columns and the target must be three different columns, "
                f"got x={x!r}, y={y!r}, target={target!r}; pick other columns on the page", "target"
            )
    return Settings(dataset=dataset, noise=noise, points=_number(raw, "points", int), preset=preset,
                    features=features, upload=upload, x=x, y=y, target=target, **table)


def builtin_spec(s: Settings) -> str:
    """The dataset spec ``torchclf train`` reads, e.g. ``circles:n_samples=1000,noise=0.03,seed=0``."""
    info = DATASETS[s.dataset]
    size = f"points_per_class={max(1, s.points // SPIRAL_ARMS)}" if s.dataset == "spirals" else f"n_samples={s.points}"
    spec = f"{s.dataset}:{size},{info['noise_param']}={s.noise:g},seed={s.seed}"
    return spec if s.features == RAW else f"{spec},features={format_features(s.features)}"


def run_config(s: Settings, epochs: int | None = None) -> RunConfig:
    """The RunConfig ``torchclf train`` builds from :func:`train_command`'s flags.

    The preset's values, then every table setting of the page and :data:`FIXED`;
    ``epochs`` (default: the settings') replaces the epoch count, for a run
    saved before it finished.
    """
    from torchclf.api import make_config

    values = {**s.values(), **FIXED}
    if epochs is not None:
        values["epochs"] = epochs
    return make_config(s.preset, **by_section(values))


def _flag(p: Param, value) -> list[str]:
    if p.kind == "bool":  # a "--name/--no-name" pair
        on, _, off = p.cli_flag.partition("/")
        return [on if value else (off or "--no-" + on[2:])]
    return [p.cli_flag, p.format(value)]


def train_command(s: Settings, data: str, epochs: int, out: str | None = None) -> str:
    """The ``torchclf train ...`` line that trains the same model as the page did.

    ``data`` is the dataset spec or the CSV path; ``epochs`` the epochs run.
    """
    args = ["torchclf", "train", data]
    if s.dataset == UPLOAD:
        args += ["--target", str(s.target)]
    if s.preset is not None:
        args += ["--preset", s.preset]
    values = {**s.values(), **FIXED, "epochs": epochs}
    for p in PARAMS:  # in --help's order
        if p.name in values:
            args += _flag(p, values[p.name])
    if out is not None:
        args += ["--out", out]
    return shlex.join(args)


def _json(p: Param, value):
    return list(value) if p.kind == "sizes" else value


def options() -> dict:
    """Everything the page needs to build its controls: choices, defaults, limits, presets.

    A preset carries the values of the model and training settings it sets
    (every table setting but the split and seed, which stay the page's).
    """
    from torchclf.api import make_config

    presets = {}
    for name, preset in PRESETS.items():
        config = make_config(name)
        presets[name] = {"description": preset.description,
                         **{p.name: _json(p, config.value(p.name)) for p in TABLE_SETTINGS if not p.shared}}
    return {
        "datasets": DATASETS,
        "presets": presets,
        "activations": list(PARAM["activation"].choices),
        "optimizers": list(PARAM["optimizer"].choices),
        "features": FEATURE_LABELS,
        "limits": LIMITS,
        "defaults": DEFAULTS,
        "live": list(LIVE),
        "labels": LABELS,
    }

"""The one table of parameters, and the frozen, validated configuration built from it.

Every setting of a training run is one :class:`Param` row in :data:`PARAMS`:
its name, section, default, bounds or choices, help text, and how each front
door shows it. Everything else is derived from the table:

- the dataclasses :class:`ModelConfig`, :class:`TrainConfig` and
  :class:`DataConfig` (their fields, defaults and validation);
- the command line's flags, help texts and defaults (``torchclf.cli``);
- the scikit-learn estimator's parameters and constraints (``torchclf.estimator``);
- the playground's settings, defaults and limits (``torchclf.playground.settings``).

A bad value raises :class:`~torchclf.errors.TorchclfError` naming the field as
soon as a config is built, before any work starts. The whole
:class:`RunConfig` is saved with the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from typing import Any

from torchclf.errors import TorchclfError

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "linear")
NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("none", "plateau", "cosine")
PRECISIONS = ("float32", "bfloat16", "float16")
CALIBRATIONS = ("temperature", "isotonic")
TASKS = ("auto", "binary", "multiclass", "multilabel")
# `torchclf tune`'s pruners (docs/tune.md); the first is the default. Here, a leaf module, for the help.
PRUNERS = ("quartile", "median", "halving", "none")
# `torchclf tune --confirm`: folds of the cross-validation that confirms a trial beating the defaults.
CONFIRM_FOLDS = 5
NUMERIC_EMBEDDINGS = ("none", "periodic")
SCALINGS = ("standard", "robust")
SECTIONS = ("model", "train", "data")

_SAME = object()  # "as the main default" for the front doors' own defaults


@dataclass(frozen=True)
class Param:
    """One setting of a run: the single place its name, default, bounds and help live.

    Attributes
    ----------
    name : str
        The field name in its section (``RunConfig.<section>.<name>``).
    section : {"model", "train", "data"}
    default : object
        The value ``torchclf train`` uses.
    help : str
        One sentence for ``--help``; the default is appended automatically.
    kind : {"int", "float", "str", "bool", "sizes", "names"}
        ``sizes`` is a tuple of positive ints such as hidden layer widths;
        ``names`` a tuple of column names (a repeatable flag, also taking
        names separated by commas).
    choices : tuple of str, optional
        The allowed values of a ``str`` parameter.
    low, high : float, optional
        Bounds of a number; ``low_open``/``high_open`` exclude them.
    none : str, optional
        The command-line word that means None (``"full"`` for batch_size);
        a parameter with a ``none`` word accepts None.
    flag : str, optional
        The command-line flag (default ``--`` + name with dashes).
    estimator : str or None
        The parameter's name on ``NeuralNetClassifier`` (``""``: the same
        name; None: not an estimator parameter).
    estimator_default : object
        The estimator's default, where it differs from ``default``.
    page : tuple, optional
        The playground's (low, high) limits, where the page shows this setting.
    page_default : object
        The playground's default, where it differs from ``default``.
    shared : bool
        Set once for all variants of ``torchclf compare`` (the split and seed).
    expected_text : str, optional
        What a valid value looks like, for a ``str`` parameter checked by its
        section's own rule rather than by ``choices``.
    absent : object
        The value for a saved configuration that predates this parameter,
        where it differs from ``default`` (what such runs did, so that they
        load as they were trained).
    """

    name: str
    section: str
    default: Any
    help: str
    kind: str = "float"
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: str | None = None
    flag: str | None = None
    estimator: str | None = ""
    estimator_default: Any = _SAME
    page: tuple | None = None
    page_default: Any = _SAME
    shared: bool = False
    expected_text: str | None = None
    absent: Any = _SAME

    # ----- derived names and defaults ------------------------------------------
    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def estimator_name(self) -> str | None:
        return None if self.estimator is None else (self.estimator or self.name)

    @property
    def estimator_value(self):
        return self.default if self.estimator_default is _SAME else self.estimator_default

    @property
    def page_value(self):
        return self.default if self.page_default is _SAME else self.page_default

    @property
    def annotation(self) -> type:
        base = {"int": int, "float": float, "str": str, "bool": bool, "sizes": tuple, "names": tuple}[self.kind]
        return base if self.none is None else base | None

    # ----- checking ------------------------------------------------------------
    def bounds_text(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_bound(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_bound(self.high)}")
        return " and ".join(parts)

    def expected(self, python: bool = False) -> str:
        """What a valid value looks like, for error messages: as typed on the command line, or as a Python
        value (``python``)."""
        if self.expected_text is not None:
            text = self.expected_text
        elif self.kind == "sizes":
            text = ("positive layer sizes such as (64, 64)" if python
                    else "comma-separated positive layer sizes such as 64,64")
        elif self.kind == "names":
            text = ("a column name or a list of them" if python
                    else "column names (repeat the flag, or separate them with commas)")
        elif self.choices is not None:
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "text"
        else:
            noun = "a whole number" if self.kind == "int" else "a number"
            text = f"{noun} {self.bounds_text()}".strip()
        return text + (f", or {self.none!r}" if self.none is not None else "")

    def in_bounds(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def check(self, value, owner: str | None = None, name: str | None = None):
        """``value`` validated and normalised (ints as int, sizes as a tuple); raises naming ``owner.name``
        (``name`` where the owner spells the parameter otherwise, as the estimator does), or the command-line
        flag without an ``owner`` (a value the user typed)."""

        def bad():
            if owner is None:  # as typed: --hidden 64,0, not (64, 0)
                shown = self.format(value) if self.kind == "sizes" else value
                return TorchclfError(f"{self.cli_flag.split('/')[0]}: got {shown!r}, expected {self.expected()}")
            return TorchclfError(f"{owner}.{name or self.name}: got {value!r}, expected {self.expected(True)}")

        if value is None:
            if self.none is None:
                raise bad()
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad()
            return value
        if self.kind == "sizes":
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise bad()
            sizes = tuple(value)
            if any(isinstance(h, bool) or not _is_whole(h) or int(h) < 1 for h in sizes):
                raise bad()
            return tuple(int(h) for h in sizes)
        if self.kind == "names":
            names = (value,) if isinstance(value, str) else value  # one column by itself
            if isinstance(names, (bytes, dict)) or not hasattr(names, "__iter__"):
                raise bad()
            names = tuple(names)
            if any(not isinstance(n, str) or not n for n in names):
                raise bad()
            return tuple(dict.fromkeys(str(n) for n in names))
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise bad()
        if self.kind == "int":
            if not _is_whole(value):
                raise bad()
            value = int(value)
        else:
            value = float(value)
            if value != value:  # NaN
                raise bad()
        if not self.in_bounds(value):
            raise bad()
        return value

    # ----- text <-> value (command line, compare, shown commands) ---------------
    def parse(self, text):
        """A value from command-line text (``"64,64"``, ``"full"``, ``"0.01"``); raises naming the flag."""
        if self.kind == "names":  # one text, or a repeated flag's list of them, each possibly "a,b"
            texts = [text] if isinstance(text, str) else list(text)
            return tuple(dict.fromkeys(part.strip() for t in texts for part in str(t).split(",") if part.strip()))
        if not isinstance(text, str):
            return text  # typer already converted ints, floats and bools
        word = text.strip()
        if self.none is not None and word.lower() == self.none:
            return None
        try:
            if self.kind == "sizes":
                if word.lower() in ("", "none"):
                    return ()
                return tuple(int(part) for part in word.replace(" ", "").split(",") if part)
            if self.kind == "int":
                return int(word)
            if self.kind == "float":
                return float(word)
            if self.kind == "bool":
                return {"true": True, "false": False}[word.lower()]
        except (ValueError, KeyError):
            raise TorchclfError(f"{self.cli_flag}: got {text!r}, expected {self.expected()}") from None
        return word

    def format(self, value) -> str:
        """The command-line text for ``value`` (inverse of :meth:`parse`)."""
        if value is None:
            return self.none or "none"
        if self.kind == "sizes":
            return ",".join(str(h) for h in value) or "none"
        if self.kind == "names":
            return ",".join(value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value).lower() if isinstance(value, bool) else str(value)

    def help_text(self) -> str:
        """The help sentence with the default taken from the table."""
        options = f"{', '.join(self.choices)}; " if self.choices else ""
        return f"{self.help} ({options}default: {self.format(self.default) or 'none'})"


def _is_whole(value) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        return False


# batch_size 0 ("auto"): about this fraction of the training rows per step, as a power of two within bounds.
# Small tables keep small, noisy steps (a regulariser); large ones get fewer, cheaper steps per epoch.
AUTO_BATCH_FRACTION = 1 / 64
AUTO_BATCH_LIMITS = (64, 512)
# A column over onehot_max categories whose categories average fewer than embed_rows training rows stays
# one-hot up to this many categories; past it, one-hot's memory (rows x categories) would outweigh its gain.
ONEHOT_RARE_MAX = 1024

# The table. Order is the order of --help.
PARAMS: tuple[Param, ...] = (
    # the network
    Param("hidden", "model", (256, 256), "Hidden layer sizes, e.g. 64,64 ('none' for a linear model).",
          kind="sizes", estimator="hidden_layer_sizes", page=(1, 256), page_default=(8, 8)),
    Param("activation", "model", "relu", "Activation between hidden layers.", kind="str", choices=ACTIVATIONS),
    Param("dropout", "model", 0.2, "Dropout probability after each hidden layer.", low=0.0, high=1.0,
          high_open=True, page=(0.0, 0.9), page_default=0.0),
    Param("norm", "model", "none", "Normalisation inside hidden layers.", kind="str", choices=NORMS),
    Param("numeric_embedding", "model", "periodic", "How each numeric column enters the network: as it is "
          "('none'), or also through learnt periodic features (sin and cos of learnt frequencies, then a "
          "small linear layer per column), which let the network bend its boundary along each column.",
          kind="str", choices=NUMERIC_EMBEDDINGS, absent="none"),
    Param("periodic_max", "model", 32, "Periodic numeric embeddings only on tables with at most this many numeric "
          "columns: their cost grows with the columns while their gain fades (on 64 columns they more than "
          "doubled the training time for no accuracy); 'none' embeds any number.", kind="int", low=1, none="none",
          absent=None),
    Param("embedding_dim", "model", 8, "Width of each learnt embedding: per embedded categorical column, "
          "and per numeric column with --numeric-embedding periodic.", kind="int", low=1, high=256),
    # training
    Param("epochs", "train", 300, "Maximum epochs.", kind="int", low=1, estimator="max_iter",
          page=(1, 10000), page_default=200),
    Param("batch_size", "train", 0, "Rows per step; 0 chooses from the training rows (about "
          f"1/{round(1 / AUTO_BATCH_FRACTION)} of them, a power of two from {AUTO_BATCH_LIMITS[0]} to "
          f"{AUTO_BATCH_LIMITS[1]}); 'full' for full-batch.", kind="int", low=0, none="full",
          page=(1, 4096), page_default=32),
    Param("optimizer", "train", "adamw", "Optimizer.", kind="str", choices=OPTIMIZERS),
    Param("lr", "train", 1e-3, "Learning rate.", low=0.0, low_open=True, page=(1e-6, 10.0), page_default=0.01),
    Param("weight_decay", "train", 1e-2, "Weight decay (L2 penalty; decoupled for adamw).", low=0.0,
          page=(0.0, 1.0)),
    Param("l1", "train", 0.0, "L1 penalty: adds l1 * sum(|w|) over the layers' weights (not biases) to the "
          "training loss, pushing small weights to zero.", low=0.0, page=(0.0, 1.0)),
    Param("momentum", "train", 0.0, "SGD momentum.", low=0.0, high=1.0, high_open=True),
    Param("label_smoothing", "train", 0.1, "Label smoothing: train towards 1 - e on the true class and e spread "
          "over the classes (0/1 targets towards e/2 and 1 - e/2); the validation loss stays unsmoothed.",
          low=0.0, high=0.5, high_open=True, page=(0.0, 0.3), page_default=0.0),
    Param("schedule", "train", "plateau", "Learning-rate schedule.", kind="str", choices=SCHEDULES),
    Param("warmup", "train", 0, "Learning-rate warm-up: epoch e of the first N trains at e/(N+1) of the "
          "scheduled rate; 0 = none.", kind="int", low=0),
    Param("patience", "train", 30, "Stop after this many evaluations without improvement; 0 = off.",
          kind="int", low=0, estimator="n_iter_no_change"),
    Param("patience_min", "train", 15, "An early best waits less: stop after as many evaluations without "
          "improvement as it took to reach the best, but at least this many (and at most the patience); 'none' "
          "for a fixed wait of the patience.", kind="int", low=1, none="none", estimator="n_iter_no_change_min",
          absent=None),
    Param("seed", "train", 2, "Seed for the split, initialisation and shuffling.", kind="int", low=0,
          high=2**32 - 1, estimator=None, page=(0, 2**31 - 1), page_default=0, shared=True),
    Param("device", "train", "auto", "Where to train.", kind="str", choices=DEVICES),
    Param("refit", "train", False, "Once early stopping has chosen the number of epochs, train a fresh network on "
          "the training and validation rows together for that many epochs, replaying the learning rates; the "
          "calibration and threshold stay those chosen on the validation rows. About doubles training time.",
          kind="bool", flag="--refit/--no-refit"),
    Param("eval_every", "train", 1, "Validate every N epochs.", kind="int", low=1),
    Param("log_every", "train", 0, "Print a log line every N epochs (0 = ten lines per run).", kind="int",
          low=0, estimator=None),
    Param("threads", "train", None, "CPU threads for torch ('auto': from the model's work per step and the "
          "cores other processes leave free, so it may differ between runs on a busy machine; a number pins it).",
          kind="int", low=1, none="auto"),
    Param("class_weight", "train", None, "'balanced' to reweight rare classes, or none.", kind="str",
          choices=("balanced",), none="none"),
    Param("precision", "train", "float32", "Training precision: bfloat16 (CPUs with AMX/AVX512-BF16, GPUs) "
          "or float16 (CUDA).", kind="str", choices=PRECISIONS),
    Param("compile", "train", False, "Compile the model with torch.compile (pays off on long runs).",
          kind="bool", flag="--compile/--no-compile"),
    Param("cuda_graphs", "train", True, "On a CUDA GPU, replay each training step from a CUDA graph (one launch "
          "instead of dozens; see docs/benchmarks.md); it falls back to eager steps, saying why with --verbose, "
          "under torchrun, --compile, float16 or an L1 penalty.", kind="bool", flag="--cuda-graphs/--no-cuda-graphs"),
    # after training, on the validation rows (torchclf.calibration)
    Param("calibration", "train", "temperature", "Calibrate the probabilities on the validation rows, or "
          "'none'.", kind="str", choices=CALIBRATIONS, none="none",
          # scikit-learn users calibrate with CalibratedClassifierCV; predict_proba stays the network's own
          estimator_default=None),
    Param("threshold", "train", None, "Choose the decision threshold of binary and multilabel models on the "
          "validation rows for an objective: f1, balanced_accuracy, precision>=X, recall>=X or cost:FP/FN "
          "(e.g. cost:1/5); 'none' keeps 0.5.", kind="str", none="none",
          expected_text="f1, balanced_accuracy, precision>=X, recall>=X or cost:FP/FN"),
    # rows and columns
    Param("test_size", "data", 0.2, "Fraction of rows held out for test.", low=0.0, high=1.0, high_open=True,
          estimator=None, page=(0.05, 0.5), shared=True),
    Param("validation_size", "data", 0.1, "Fraction of rows held out for validation (early stopping).",
          low=0.0, high=1.0, high_open=True, flag="--val-size", estimator=None, shared=True),
    Param("drop", "data", (), "A column to leave out of the features; repeat the flag, or separate names with "
          "commas. Identifier and free-text columns are left out without it, with a warning.", kind="names"),
    Param("max_categories", "data", 100_000, "Most categories kept per categorical column; rarer ones share "
          "one '<other>' slot with categories never seen in training.", kind="int", low=1),
    Param("onehot_max", "data", 16, "Categorical columns with more categories than this enter the network "
          "as a learnt embedding of the category (memory grows with rows, not rows x categories); 'none' "
          "one-hot encodes every column.", kind="int", low=1, none="none"),
    Param("embed_rows", "data", 8, "A column with more categories than onehot_max is embedded only when "
          "they average at least this many training rows; one of rarer categories (names, "
          f"say) stays one-hot up to {ONEHOT_RARE_MAX:,} categories, as an embedding learnt from a row or two is "
          "noise; 'none' embeds by the number of categories alone.", kind="int", low=1, none="none", absent=None),
    Param("scaling", "data", "standard", "Numeric columns: 'standard' (mean and standard deviation) or "
          "'robust' (median and interquartile range, then a smooth clip that tames outliers).",
          kind="str", choices=SCALINGS),
)

PARAM: dict[str, Param] = {p.name: p for p in PARAMS}



def batch_rows(batch_size: int | None, n_rows: int) -> int | None:
    """The rows per step ``batch_size`` means for ``n_rows`` training rows (None: all of them at once)."""
    if batch_size != 0:
        return batch_size
    low, high = AUTO_BATCH_LIMITS
    target = max(1.0, n_rows * AUTO_BATCH_FRACTION)
    return int(min(high, max(low, 2 ** round(math.log2(target)))))


def section_params(section: str) -> tuple[Param, ...]:
    return tuple(p for p in PARAMS if p.section == section)


def _bound(x: float) -> str:
    """A bound as a user reads it: 4294967295, not 4.29497e+09; 1e-08 stays short."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


class _Section:
    """Validation shared by the generated section dataclasses: every field checked against its table row."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for p in section_params(self._section):
            object.__setattr__(self, p.name, p.check(getattr(self, p.name), owner))
        self._check_together()

    def _check_together(self) -> None:
        """Rules that involve several fields of the section."""


def _section_class(name: str, section: str, doc: str, check_together=None) -> type:
    namespace = {"_section": section, "__doc__": doc}
    if check_together is not None:
        namespace["_check_together"] = check_together
    cls = make_dataclass(
        name,
        [(p.name, p.annotation, field(default=p.default)) for p in section_params(section)],
        bases=(_Section,),
        namespace=namespace,
        frozen=True,
    )
    cls.__module__ = __name__
    return cls


MAX_HELD_OUT = 0.9  # test and validation fractions together: the rest, at least a tenth, trains


def check_held_out(test_size: float, validation_size: float, names=("DataConfig.test_size",
                                                                   "DataConfig.validation_size")) -> None:
    """The one rule over two fields of the data section, named as the caller's user spells them."""
    if test_size + validation_size >= MAX_HELD_OUT:
        raise TorchclfError(f"{names[0]} {test_size:g} and {names[1]} {validation_size:g} hold out "
                            f"{test_size + validation_size:g} of the rows; together they must stay below "
                            f"{MAX_HELD_OUT:g}, so that rows are left to train on")


def _check_data(self) -> None:
    check_held_out(self.test_size, self.validation_size)


ModelConfig = _section_class(
    "ModelConfig", "model", "The network: hidden layer sizes, activation, dropout and normalisation.")


def _check_train(self) -> None:
    if self.threshold is not None:
        from torchclf.calibration import parse_objective  # needs only errors.py; keeps this module a leaf

        object.__setattr__(self, "threshold", parse_objective(self.threshold, "TrainConfig.threshold").text)


TrainConfig = _section_class(
    "TrainConfig", "train",
    "How the engine trains: epochs, batches, optimizer, stopping, device, seed.\n\n"
    "``batch_size`` None means full batch (the tutorial's loop); ``patience`` 0 turns early stopping off;\n"
    "``threads`` None lets the engine choose. ``calibration`` and ``threshold`` are fitted on the validation\n"
    "rows once training ends.", _check_train)
DataConfig = _section_class("DataConfig", "data", "How rows are split and columns encoded.", _check_data)
_SECTION_CLASSES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; saved in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "auto"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise TorchclfError(f"RunConfig.task: got {self.task!r}, expected one of {', '.join(TASKS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        d["data"]["drop"] = list(self.data.drop)
        return d

    def value(self, name: str):
        """A parameter's value by its table name."""
        return getattr(getattr(self, PARAM[name].section), name)

    def values(self) -> dict:
        """Every table parameter's value, by name."""
        return {p.name: self.value(p.name) for p in PARAMS}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Inverse of :meth:`to_dict`; fields missing from an older file take today's defaults, or their
        row's ``absent`` value where today's default would change what a saved run was."""
        if not isinstance(d, dict):
            raise TorchclfError(f"invalid configuration: expected a mapping, got {type(d).__name__}")

        def build(section: str):
            kind = _SECTION_CLASSES[section]
            values = d.get(section, {})
            if not isinstance(values, dict):
                raise TorchclfError(f"{kind.__name__}: expected a mapping, got {type(values).__name__}")
            unknown = set(values) - {f.name for f in fields(kind)}
            if unknown:
                raise TorchclfError(f"{kind.__name__}: unknown field(s) {sorted(unknown)}")
            older = {p.name: p.absent for p in section_params(section)
                     if p.name not in values and p.absent is not _SAME}
            return kind(**older, **values)

        unknown = set(d) - {"model", "train", "data", "task", "preset"}
        if unknown:
            raise TorchclfError(f"RunConfig: unknown field(s) {sorted(unknown)}")
        return cls(model=build("model"), train=build("train"), data=build("data"),
                   task=d.get("task", "auto"), preset=d.get("preset"))


def by_section(values: dict) -> dict[str, dict]:
    """``{"lr": 0.1, "hidden": (8,)}`` -> ``{"train": {"lr": 0.1}, "model": {"hidden": (8,)}}``."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in PARAM:
            raise TorchclfError(f"unknown parameter {name!r}; known: {', '.join(PARAM)}")
        out[PARAM[name].section][name] = value
    return out


def with_overrides(config: RunConfig, **sections: dict) -> RunConfig:
    """A copy of ``config`` with fields of ``model``/``train``/``data`` replaced."""
    parts = {name: replace(getattr(config, name), **values) for name, values in sections.items() if values}
    return replace(config, **parts)


def with_values(config: RunConfig, values: dict) -> RunConfig:
    """A copy of ``config`` with table parameters replaced by name (see :func:`by_section`)."""
    return with_overrides(config, **by_section(values))


def read_toml(path, what: str, flag: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is one line naming ``flag`` and the ``what``."""
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser is the tomli package
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise TorchclfError(f"{flag}: reading TOML needs Python 3.11+ or `pip install tomli`") from None
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TorchclfError(f"{path}: no such {what}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TorchclfError(f"{path}: not valid TOML ({exc})") from None

"""``torchclf tune``: hyperparameter search with Optuna, a front door that builds many run specifications.

Every trial is one :class:`~torchclf.spec.RunSpec` trained by
:func:`torchclf.api.prepare` and :func:`torchclf.api.fit` (the one training
loop); trials whose settings leave the preprocessing alone share the study's
split and fitted preprocessing. A callback follows the best validation loss
so far each epoch, reports it to the study at the pruner's epochs, and stops
the run when the pruner says so. The objective is the validation log loss of
the run's calibrated probabilities: the test rows are never looked at. A new
study's first trial is the defaults; the best trial replaces them only when it
still beats them when cross-validated on the training and validation rows
(:func:`confirm_trial`), or, without that, by more than the noise of the
validation rows (:func:`choose_trial`).
Trials are proposed by Optuna's TPE sampler, seeded from ``--seed`` and the
trial's number, so that a study is reproducible, resumed studies propose what
an uninterrupted one would, and workers sharing a study never propose the same
random start.

The study lives in a relational database (SQLite beside the run folder by
default), so a killed ``tune`` continues with the same command and several
processes on one storage share the work: each asks for trials until the study
holds N finished (complete or pruned) ones, counting those of the others.
Finally the chosen configuration is trained again through :func:`torchclf.api.run`
and saved as a normal run folder; its ``model.json`` records the study, the
trial, its settings and the ``torchclf train`` command that gives the same
weights, and its ``tune/`` folder holds the study summary (``trials.csv``,
``summary.json`` and pictures) that ``report.html`` shows.

The search space (:data:`DEFAULT_SPACE`, overridable with a TOML file, see
:func:`read_space`) names parameters of the table in :mod:`torchclf.config`,
plus ``width`` and ``depth``, which together make ``hidden``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchclf.callbacks import Callback
from torchclf.config import CONFIRM_FOLDS, PARAM, PARAMS, PRUNERS, RunConfig, batch_rows, read_toml, with_values
from torchclf.data.sources import DataWarning
from torchclf.errors import TorchclfError
from torchclf.spec import RunSpec

INSTALL = "pip install 'torchclf[tune]'"
#: Parameters that make up ``hidden``: ``depth`` layers of ``width`` units each.
SHAPE = ("width", "depth")
# Table parameters that are never searched. The split and seed define the rows the objective is measured
# on, and class weights the loss it is measured in, so trials that changed them would not be comparable;
# calibration is fitted on the validation rows the objective scores (a search would favour the one that
# fits them closest), and the threshold acts after the probabilities; the others change where and how fast
# a run trains, not the model.
NOT_SEARCHED = {p.name for p in PARAMS if p.shared} | {"class_weight", "calibration", "threshold", "device",
                                                       "threads", "log_every", "compile", "precision", "cuda_graphs",
                                                       "drop",  # which columns to use is the data's, not a search's
                                                       "refit"}  # a trial is scored on its validation rows
# Trials never refit on train + validation (they are scored on the validation rows); the saved run does
# when asked.
TRIAL_SETTINGS = {"refit": False}
# Seconds between a running trial's heartbeats in the database; a trial silent for GRACE_BEATS of them
# belongs to a process that died, and is marked failed so that its place in the study is freed.
HEARTBEAT_SECONDS = 5
GRACE_BEATS = 4
FAILURES_IN_A_ROW = 5


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TorchclfError(f"torchclf tune needs Optuna, which is not installed; {INSTALL}") from None
    return optuna


# ----- the search space ------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a range (``low``..``high``, optionally ``log``/``step``) or ``choices``.

    ``kind`` is ``"int"``, ``"float"`` or ``"choice"``; a choice's values are
    as written in the space (``"full"`` for a full-batch ``batch_size``).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial):
        """The trial's value of this parameter, drawn by the study's sampler."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        """``"log-uniform in [0.0001, 0.03]"``, ``"one of 32, 64, 128"``."""
        if self.kind == "choice":
            texts = [str(c) for c in self.choices]
            return "one of " + (" | " if any("," in t for t in texts) else ", ").join(texts)
        how = ("log-uniform " if self.log else "uniform ") + ("integer " if self.kind == "int" else "")
        step = f" in steps of {self.step:g}" if self.step else ""
        return f"{how}in [{self.low:g}, {self.high:g}]{step}"

    def find(self, value) -> tuple[bool, Any]:
        """Whether the table value ``value`` lies in this dimension, and the value as the space writes it
        (a choice such as ``"full"`` or ``"64,64"`` for ``None`` or ``(64, 64)``)."""
        if self.kind == "choice":
            row = PARAM.get(self.name)
            for choice in self.choices:
                parsed = row.parse(choice) if isinstance(choice, str) and row is not None and row.kind != "str" \
                    else choice
                if parsed == value and isinstance(parsed, bool) == isinstance(value, bool):
                    return True, choice
            return False, None
        if not _number(value) or not self.low <= value <= self.high:
            return False, None
        if self.kind == "int" and value != int(value):
            return False, None
        if self.step and not math.isclose((value - self.low) / self.step, round((value - self.low) / self.step)):
            return False, None
        return True, int(value) if self.kind == "int" else float(value)

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high, "log": self.log}
        return {**out, "step": self.step} if self.step else out


@dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions and the values a space file fixes instead of searching.

    Attributes
    ----------
    dimensions : tuple of Dimension
    fixed : dict
        Table parameter -> value, applied to every trial (and the final run).
    """

    dimensions: tuple[Dimension, ...]
    fixed: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def without(self, names) -> SearchSpace:
        """The space with these table parameters taken out (the user fixed them); ``hidden`` takes the shape."""
        names = set(names)
        if "hidden" in names:
            names |= set(SHAPE)
        return SearchSpace(tuple(d for d in self.dimensions if d.name not in names),
                           {k: v for k, v in self.fixed.items() if k not in names})

    def settings(self, params: dict | None = None) -> dict:
        """Table values for :func:`~torchclf.config.with_values`: the fixed ones, then a trial's ``params``.

        ``width`` and ``depth`` become ``hidden``; choices written as text
        (``"full"``, ``"64,64"``) are parsed by their table row.
        """
        merged = {**self.fixed, **(params or {})}
        values = {name: PARAM[name].parse(value) if isinstance(value, str) else value
                  for name, value in merged.items() if name not in SHAPE}
        if set(SHAPE) & set(merged):
            width = int(merged.get("width", _shape_default("width")))
            values["hidden"] = (width,) * int(merged.get("depth", _shape_default("depth")))
        return values

    def to_dict(self) -> dict:
        """Plain JSON, stored with the study so that a resumed or shared study is checked to be the same."""
        return {"dimensions": {d.name: d.to_dict() for d in self.dimensions},
                "fixed": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.fixed.items()}}


def _shape_default(name: str) -> int:
    hidden = PARAM["hidden"].default
    return (hidden[0] if hidden else 1) if name == "width" else len(hidden)


#: The default space in the words of a space file; :data:`DEFAULT_SPACE` is parsed from it, so every range
#: and choice is checked against its parameter's row of :data:`torchclf.config.PARAMS` like a user's file,
#: and a test checks that each table default lies inside (the defaults are a study's first trial). What
#: matters most for the default recipe: optimisation (lr, weight_decay, batch_size), capacity and
#: regularisation (width, depth, dropout, label_smoothing) and the inputs (numeric_embedding,
#: embedding_dim, scaling, onehot_max). The automatic batch size is 64 to 512 rows, all among the choices.
DEFAULT_TABLE = {
    "lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "batch_size": [32, 64, 128, 256, 512],
    "width": {"low": 16, "high": 512, "log": True},
    "depth": {"low": 1, "high": 3},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "numeric_embedding": ["periodic", "none"],
    "embedding_dim": {"low": 4, "high": 32, "log": True},
    "scaling": ["standard", "robust"],
    "onehot_max": [4, 16, 64],
}


def searchable() -> list[str]:
    """Names a space may use: ``width``, ``depth`` and the table's model and training parameters."""
    return [*SHAPE, *(p.name for p in PARAMS if p.name not in NOT_SEARCHED)]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dimension(name: str, entry, where: str) -> Dimension | None:
    """A space entry -> Dimension (None: a fixed value, checked by the caller)."""
    if name in SHAPE:
        row = None
        kind, low_bound = "int", (1 if name == "width" else 0)
    else:
        row = PARAM[name]
        kind = row.kind
    if isinstance(entry, list):
        if row is not None and row.kind == "sizes":  # TOML arrays of layer sizes -> the flag's text, "64,64"
            entry = [",".join(map(str, v)) if isinstance(v, list) else v for v in entry]
        if not entry:
            raise TorchclfError(f"{where}: {name}: an empty list of choices; give at least one value")
        for value in entry:
            if row is None:
                if not isinstance(value, int) or isinstance(value, bool) or value < low_bound:
                    raise TorchclfError(f"{where}: {name}: choice {value!r} is not a whole number >= {low_bound}")
            else:
                _check_value(row, value, where)
        if len(set(map(repr, entry))) != len(entry):
            raise TorchclfError(f"{where}: {name}: the choices {entry} repeat a value")
        return Dimension(name, "choice", choices=tuple(entry))
    if not isinstance(entry, dict):
        return None
    unknown = set(entry) - {"low", "high", "log", "step"}
    if unknown or "low" not in entry or "high" not in entry:
        raise TorchclfError(f"{where}: {name}: expected a range such as {{low = 1, high = 10, log = false}} "
                            f"(keys low, high, log, step){f'; unknown key(s) {sorted(unknown)}' if unknown else ''}")
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    if kind not in ("int", "float"):
        raise TorchclfError(f"{where}: {name}: a {kind} parameter has no range; give a list of choices"
                            + (f" from {', '.join(row.choices)}" if row is not None and row.choices else ""))
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is None:
            continue
        if not _number(value) or (kind == "int" and not isinstance(value, int)):
            noun = "a whole number" if kind == "int" else "a number"
            raise TorchclfError(f"{where}: {name}: {key} {value!r} is not {noun}")
    if not isinstance(log, bool):
        raise TorchclfError(f"{where}: {name}: log {log!r} is not true or false")
    if not low < high:
        raise TorchclfError(f"{where}: {name}: low {low!r} is not below high {high!r}")
    if log and low <= 0:
        raise TorchclfError(f"{where}: {name}: a log range needs low above 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        raise TorchclfError(f"{where}: {name}: step {step!r} must be above 0 and cannot go with log = true")
    for key, value in (("low", low), ("high", high)):
        ok = value >= low_bound if row is None else row.in_bounds(value)
        if not ok:
            expected = f">= {low_bound}" if row is None else row.bounds_text()
            raise TorchclfError(f"{where}: {name}: {key} {value!r} is outside the parameter's bounds ({expected})")
    if kind == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Dimension(name, kind, low, high, log=log, step=step)


def _check_value(row, value, where: str):
    """A fixed value or choice, checked by the parameter's table row; returns the table value."""
    try:
        parsed = row.parse(value) if isinstance(value, str) and row.kind != "str" else value
        if row.kind == "sizes" and isinstance(value, list):
            parsed = tuple(value)
        return row.check(parsed, "space")
    except TorchclfError:
        raise TorchclfError(f"{where}: {row.name}: got {value!r}, expected {row.expected()}") from None


def parse_space(table: dict, where: str = "space", base: SearchSpace | None = None) -> SearchSpace:
    """A space from a mapping of name -> range, list of choices, or fixed value, over ``base``.

    Entries replace ``base``'s dimension of the same name; a plain value fixes
    the parameter instead of searching it (``dropout = 0.1``). ``hidden`` takes
    a list of layer-size texts (``["64", "128,128"]``) or one value, and then
    replaces ``width`` and ``depth``. ``base`` defaults to :data:`DEFAULT_SPACE`.
    """
    if not isinstance(table, dict):
        raise TorchclfError(f"{where}: expected a table of parameters, got {type(table).__name__}")
    base = DEFAULT_SPACE if base is None else base
    known = searchable()
    dims = {d.name: d for d in base.dimensions}
    fixed = dict(base.fixed)
    if "hidden" in table and set(SHAPE) & set(table):
        raise TorchclfError(f"{where}: give hidden or width/depth, not both (width and depth make hidden)")
    if "hidden" in table:
        for name in SHAPE:
            dims.pop(name, None)
    for name, entry in table.items():
        if name not in known:
            raise TorchclfError(f"{where}: unknown parameter {name!r}; known: {', '.join(known)}")
        dims.pop(name, None)
        fixed.pop(name, None)
        dim = _dimension(name, entry, where)
        if dim is not None:
            dims[name] = dim
        elif name in SHAPE:
            if not isinstance(entry, int) or isinstance(entry, bool) or entry < (1 if name == "width" else 0):
                raise TorchclfError(f"{where}: {name}: got {entry!r}, expected a whole number")
            fixed[name] = entry
        else:
            fixed[name] = _check_value(PARAM[name], entry, where)
    return SearchSpace(tuple(dims.values()), fixed)


#: What ``torchclf tune`` searches unless a space file or a flag says otherwise (see :data:`DEFAULT_TABLE`).
DEFAULT_SPACE = parse_space(DEFAULT_TABLE, "the default search space", SearchSpace(()))


def read_space(path: str | Path) -> SearchSpace:
    """The search space of a TOML file: a ``[space]`` table over :data:`DEFAULT_SPACE`.

    Example::

        [space]
        lr = { low = 1e-4, high = 1e-1, log = true }   # a range (log: sampled uniformly in log space)
        depth = { low = 1, high = 4 }                   # whole numbers for whole-number parameters
        batch_size = [32, 128, "full"]                  # a list of choices
        optimizer = ["adam", "adamw", "sgd"]            # any model or training parameter of the table
        dropout = 0.1                                   # a plain value: fixed, not searched
    """
    path = Path(path)
    doc = read_toml(path, "search-space file", "--space")
    extra = set(doc) - {"space"}
    if extra or not isinstance(doc.get("space"), dict):
        raise TorchclfError(f"{path}: expected one [space] table of parameters (see docs/tune.md)"
                            + (f", found {sorted(extra)}" if extra else ""))
    space = parse_space(doc["space"], str(path))
    if not space.dimensions:
        raise TorchclfError(f"{path}: every parameter is fixed, so there is nothing to search")
    return space


def fit_to_data(space: SearchSpace, preprocessor, config: RunConfig, rows: int) -> SearchSpace:
    """``space`` without the default dimensions that cannot change the model on these columns.

    ``onehot_max`` goes when every choice one-hot encodes and embeds the same
    columns (by the number of categories and, through ``embed_rows``, the
    ``rows`` training rows per category, as :func:`torchclf.preprocess.embeds`
    decides; a column that the fitted preprocessor embeds counts the
    categories it kept); ``scaling`` when there is no numeric column;
    ``numeric_embedding`` when no numeric column can be embedded (none, or
    more than ``periodic_max``); ``embedding_dim`` when nothing can be
    embedded. A dimension that a space file set is kept as written.
    ``preprocessor`` is fitted with ``config`` (the fixed settings) on the
    training rows.
    """
    from torchclf.preprocess import embeds

    dims = {d.name: d for d in space.dimensions}
    default = {d.name: d for d in DEFAULT_SPACE.dimensions}

    def choices(name):
        return list(dims[name].choices) if name in dims and dims[name].kind == "choice" else [config.value(name)]

    def number(value):
        return None if value is None or value == "none" else int(value)

    numeric = any(c.kind == "numeric" for c in preprocessor.columns)
    counts = [len(c.categories) for c in preprocessor.columns if c.kind != "numeric"]
    # The columns each onehot_max choice embeds, under each embed_rows choice (one, unless a space file
    # searches it too).
    plans = {e: {tuple(embeds(k, k, rows, number(v), e) for k in counts) for v in choices("onehot_max")}
             for e in map(number, choices("embed_rows"))}
    useless = set()
    if all(len(p) == 1 for p in plans.values()):
        useless.add("onehot_max")
    if not numeric:
        useless.add("scaling")
    from torchclf.model import periodic_columns

    embeddable = periodic_columns(preprocessor.layout(), replace(config.model, numeric_embedding="periodic"))
    if not embeddable:
        useless.add("numeric_embedding")
    periodic = bool(embeddable) and "periodic" in choices("numeric_embedding")
    if not periodic and not any(any(plan) for p in plans.values() for plan in p):
        useless.add("embedding_dim")
    drop = {name for name in useless if name in dims and dims[name] == default.get(name)}
    return SearchSpace(tuple(d for d in space.dimensions if d.name not in drop), space.fixed)


def default_params(space: SearchSpace, config: RunConfig, train_rows: int) -> dict | None:
    """The searched parameters' values in ``config`` (fixed settings, else the table's defaults) as a trial's
    ``params``, or None when one lies outside ``space`` (then the defaults cannot be a trial of the study).

    The automatic batch size stands for the rows per step it picks for ``train_rows`` training rows,
    which trains the same network.
    """
    hidden = config.model.hidden
    params = {}
    for d in space.dimensions:
        if d.name in SHAPE:
            if not hidden or len(set(hidden)) != 1:
                return None
            value = hidden[0] if d.name == "width" else len(hidden)
        elif d.name == "batch_size":
            value = batch_rows(config.train.batch_size, train_rows)
        else:
            value = config.value(d.name)
        inside, written = d.find(value)
        if not inside:
            return None
        params[d.name] = written
    return params


# ----- the study -------------------------------------------------------------------
def _trial_seeded_sampler(seed: int):
    """Optuna's TPE sampler, seeded afresh for each trial from ``seed`` and the trial's number.

    One TPE sampler seeded once per process would draw the same random start
    in every worker of a shared study, and draw again, in a resumed study,
    what the killed process already drew. TPE keeps no state but its random
    generator (it reads the finished trials from the storage), so a sampler
    per trial number changes nothing else.

    Multivariate: one joint density over every parameter (learning rate and
    batch size, width and dropout interact), fitted once per trial rather
    than once per parameter (a third less sampling time with 11 parameters).
    """
    optuna = _optuna()
    import numpy as np

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self._current: tuple[int, Any] | None = None

        def _for(self, trial):
            if self._current is None or self._current[0] != trial.number:
                mixed = int(np.random.SeedSequence([seed, trial.number]).generate_state(1)[0])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # constant_liar is "experimental" in Optuna 3
                    # constant_liar: workers see each other's running trials as bad, and so spread out.
                    sampler = optuna.samplers.TPESampler(seed=mixed, constant_liar=True, multivariate=True)
                self._current = (trial.number, sampler)
            return self._current[1]

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE()


# The named pruners ask at epoch PRUNE_FROM and every PRUNE_EVERY epochs after (quartile, median), or at
# HALVING_FIRST, x HALVING_RATE, ... (successive halving's rungs): early, since a pruned trial costs the epochs
# before its first question, and sparse, since each question is a database round trip. Quartile and median
# judge a trial once PRUNE_STARTUP trials completed: the defaults and two random ones.
PRUNE_FROM, PRUNE_EVERY, PRUNE_STARTUP = 5, 5, 3
HALVING_FIRST, HALVING_RATE = 5, 3


def make_pruner(name):
    """``"quartile"``, ``"median"``, ``"halving"`` or ``"none"`` -> (an Optuna pruner, when to ask it).

    quartile: stop a trial whose best validation loss so far is not among the
    best quarter of the complete trials' at the same epoch; median: not better
    than their median; both once 3 trials completed, asked at epochs 5, 10,
    15, ... TPE models its good trials on the best few (10%), so a trial
    outside the best quarter early on rarely becomes one. halving:
    asynchronous successive halving (keep the best third of the trials that
    reached epochs 5, 15, 45, ...). An Optuna pruner passes through and is
    asked every epoch.

    Each question to a pruner writes the trial's loss to the database and
    reads the study back, which costs more than an epoch of a small table; the
    second value, ``next_ask(epoch)``, is the next epoch to ask at (None:
    never), the same for every trial so that they are compared at the same
    epochs.
    """
    optuna = _optuna()
    if not isinstance(name, str):
        return name, lambda epoch: epoch + 1

    def every(epoch):
        return PRUNE_FROM if epoch < PRUNE_FROM else epoch + PRUNE_EVERY

    if name == "quartile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=PRUNE_STARTUP, n_warmup_steps=PRUNE_FROM), every
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=PRUNE_FROM), every
    if name == "halving":
        def next_rung(epoch):
            rung = HALVING_FIRST
            while rung <= epoch:
                rung *= HALVING_RATE
            return rung

        return optuna.pruners.SuccessiveHalvingPruner(min_resource=HALVING_FIRST, reduction_factor=HALVING_RATE), \
            next_rung
    if name == "none":
        return optuna.pruners.NopPruner(), None
    raise TorchclfError(f"--pruner: got {name!r}, expected one of {', '.join(PRUNERS)}")


def storage_url(storage: str | None, out: Path) -> str:
    """The database URL: ``storage`` as given (a plain path means an SQLite file), else ``OUT.optuna.db``."""
    if storage is None:
        return f"sqlite:///{Path(str(out.resolve()) + '.optuna.db')}"
    return storage if "://" in storage else f"sqlite:///{Path(storage).resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password, for messages and model.json."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  an unparsable URL is reported where it is opened
        return url


def heartbeat_seconds() -> int:
    """:data:`HEARTBEAT_SECONDS`, or the environment's ``TORCHCLF_TUNE_HEARTBEAT`` (whole seconds)."""
    text = os.environ.get("TORCHCLF_TUNE_HEARTBEAT", str(HEARTBEAT_SECONDS))
    if not text.isdigit() or int(text) < 1:
        raise TorchclfError(f"TORCHCLF_TUNE_HEARTBEAT: got {text!r}, expected whole seconds >= 1")
    return int(text)


def open_storage(url: str, heartbeat: int):
    """An Optuna database storage with heartbeats every ``heartbeat`` seconds; SQLite waits for other
    workers' locks instead of failing."""
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    logged = False
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        logged = _write_ahead_log(path)
    last = None
    for attempt in range(5):  # workers starting together race to create the tables; the loser retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats are "experimental"
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                                     grace_period=heartbeat * GRACE_BEATS)
            if logged:
                _sync_at_checkpoints(storage.engine)
            return storage
        except ImportError as exc:
            raise TorchclfError(f"--storage {shown_url(url)}: its database driver is missing ({exc}); install it, "
                                "or use an SQLite file such as sqlite:///study.db") from None
        except Exception as exc:  # noqa: BLE001  SQLAlchemy's errors: a bad URL, an unreachable server
            if type(exc).__name__ in ("OperationalError", "IntegrityError") and attempt < 4:
                last = exc
                time.sleep(0.5 + attempt)
                continue
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TorchclfError(f"--storage {shown_url(url)}: cannot open the study database ({first}); "
                                "give a URL such as sqlite:///study.db or postgresql://user@host/db") from None
    raise TorchclfError(f"--storage {shown_url(url)}: cannot open the study database ({last})")


def _write_ahead_log(path: Path) -> bool:
    """Switch an SQLite file to write-ahead logging (kept in the file), so that a commit costs about half as
    much and readers in other workers no longer wait for writers; False where that is not possible."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower() == "wal"
    except sqlite3.Error:
        return False  # a file system without shared memory (NFS): the default journal still works, only slower


def _sync_at_checkpoints(engine) -> None:
    """Every connection of ``engine`` (an SQLite file in write-ahead-log mode) flushes to disk when the log
    is checkpointed, not at each commit (``synchronous=NORMAL``).

    A flush took 5 ms of the shared test machine's disk, and a trial commits a dozen times (its draws, its
    pruner's questions, its result). A killed process loses no committed trial this way (the log is in the
    operating system's hands); only a power cut or a kernel crash can lose the last few commits, never the
    database.
    """
    import sqlalchemy

    def on_connect(connection, _record):
        connection.execute("PRAGMA synchronous=NORMAL")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connection that created the tables was opened before the listener


def _same_study(study, record: dict, where: str) -> None:
    """Refuse to add trials to a study that searched another space, data or fixed settings."""
    stored = study.user_attrs.get("torchclf")
    if stored is None:  # a new study (workers starting together all write the same record)
        study.set_user_attr("torchclf", record)
        return
    for key, what in (("data", "data"), ("space", "search space"), ("config", "fixed settings")):
        if stored.get(key) != record[key]:
            raise TorchclfError(f"{where}: the study was started with another {what}; continue it with the same "
                                "command, or start a new one with another --study name or --storage")


class Pruning(Callback):
    """Follow a trial's best validation loss so far each epoch; report it to the Optuna trial and stop the run
    when the pruner says so.

    ``next_ask(epoch)``: the next epoch to ask the pruner at (None: never);
    see :func:`make_pruner`. Only those epochs' losses go to the database (a
    write each); ``curve`` keeps every epoch's, stored once with the trial.
    """

    def __init__(self, trial, next_ask: Callable[[int], int] | None = lambda epoch: epoch + 1):
        self.trial = trial
        self.next_ask = next_ask
        self.due = next_ask(0) if next_ask is not None else None
        self.best = math.inf
        self.curve: list[list] = []  # [epoch, best validation loss so far]
        self.pruned_at: int | None = None

    def on_epoch_end(self, state) -> None:
        loss = state.last.get("val_loss")
        if loss is None or not math.isfinite(loss):
            return
        self.best = min(self.best, float(loss))
        self.curve.append([state.epoch, self.best])
        if self.due is None or state.epoch < self.due or state.stop:
            return
        self.due = self.next_ask(state.epoch)
        self.trial.report(self.best, state.epoch)
        if self.trial.should_prune():
            self.pruned_at = state.epoch
            state.stop = True
            state.stop_reason = f"pruned by the study at epoch {state.epoch}"


def validation_losses(predictor, rows):
    """Each validation row's log loss under the probabilities ``predictor`` gives (calibrated when it has a
    calibration, as ``metrics.json`` reports them): ndarray of shape (n_rows,); its mean is a trial's value."""
    from torchclf.metrics import row_log_loss

    where = f"{rows.name} (validation)"
    y = predictor.labels.encode(rows.target, where)
    return row_log_loss(predictor.task, y, predictor.predict_proba(rows.features, where))


def pack_losses(losses) -> str:
    """Per-row losses as short text for the study's database: float32, deflated, base64."""
    import base64
    import zlib

    import numpy as np

    return base64.b64encode(zlib.compress(np.asarray(losses, dtype="<f4").tobytes())).decode("ascii")


def unpack_losses(text: str):
    """The ndarray of shape (n_rows,) that :func:`pack_losses` wrote."""
    import base64
    import zlib

    import numpy as np

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<f4").astype(np.float64)


#: The best trial replaces the defaults (the study's first trial) only when its validation loss is lower by
#: more than this many standard errors of the per-row difference; 0 takes the best trial as it is. Two, since
#: the best of some 30 trials is about two standard errors ahead by chance alone (the expected largest of 30
#: independent standard normal draws is 2.04; the trials are correlated, which lowers it).
KEEP_DEFAULTS_WITHIN = 2.0


def choose_trial(study, within: float = KEEP_DEFAULTS_WITHIN) -> tuple[Any, dict]:
    """The complete trial to train and save, and why: the best, unless it does not clearly beat the defaults.

    Each complete trial keeps its validation rows' losses, so the best and
    the defaults trial are compared row by row on the same rows (a paired
    comparison): the mean difference against its standard error. With a few
    hundred validation rows, 30 trials' best beats the defaults by chance; a
    difference within ``within`` standard errors keeps the defaults.

    Returns
    -------
    trial : optuna.trial.FrozenTrial
    choice : dict
        ``rule``, ``best_trial``, ``best_value``; with a defaults trial also
        ``defaults_trial``, ``defaults_value``, ``difference`` (best minus
        defaults) and ``standard_error``.
    """
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    choice = {"rule": f"the best trial, unless within {within:g} standard error(s) of the defaults",
              "best_trial": best.number, "best_value": best.value}
    base = next((t for t in complete if t.user_attrs.get("defaults")), None)
    if base is None or base.number == best.number or within <= 0:
        return best, choice
    ours, theirs = best.user_attrs.get("row_losses"), base.user_attrs.get("row_losses")
    if ours is None or theirs is None:
        return best, choice
    _, se = _paired(unpack_losses(ours), unpack_losses(theirs))
    choice.update(defaults_trial=base.number, defaults_value=base.value, difference=best.value - base.value,
                  standard_error=se)
    return (base if best.value - base.value > -within * se else best), choice


#: The confirmation (``--confirm``, CONFIRM_FOLDS folds by default, in torchclf.config): when a trial other
#: than the defaults has the lowest validation loss, the defaults and the best CONFIRM_FINALISTS other trials
#: are trained again on k folds of the training and validation rows together (the test rows stay unseen), and
#: each is scored on the rows it did not train on. Every row then has a loss under every finalist, eight
#: times as many paired rows as the validation rows alone (with the default split), so the comparison's
#: standard error is about a third as large; and each finalist is measured mostly on rows that did not choose
#: it (the validation rows are an eighth of them). A finalist replaces the defaults when its cross-validated
#: loss is lower by more than CONFIRM_WITHIN standard errors of the per-row difference: one, since the noise
#: to beat is that of picking the better of two finalists, not the best of some 30 trials.
CONFIRM_FINALISTS = 2
CONFIRM_WITHIN = 1.0


def _joined(first, second):
    """The rows of two Datasets of the same table, one after the other."""
    import numpy as np
    import pandas as pd

    weight = None if first.weight is None else np.concatenate([first.weight, second.weight])
    return replace(first, features=pd.concat([first.features, second.features], ignore_index=True),
                   target=pd.concat([first.target, second.target], ignore_index=True), weight=weight)


def _paired(ours, theirs) -> tuple[float, float]:
    """Mean and standard error of the per-row difference ``ours - theirs``."""
    diff = ours - theirs
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return float(diff.mean()), se


def cross_validated_losses(pool, rows: RunSpec, settings: dict, labels, folds: int):
    """Each row of ``pool`` (a Dataset)'s log loss under a network with ``settings`` trained, as a trial is, on
    the other folds (its validation rows cut from them): ndarray of shape (pool.n_rows,)."""
    import numpy as np

    from torchclf import accel, api
    from torchclf.data.split import fold_numbers

    config = with_values(rows.config, {**settings, **TRIAL_SETTINGS})
    numbers = fold_numbers(pool, folds, config.train.seed)
    losses = np.empty(pool.n_rows)
    for k in range(folds):
        held = np.flatnonzero(numbers == k)
        spec = RunSpec(pool.take(np.flatnonzero(numbers != k)), None, pool.take(held), rows.label_sep, config)
        prepared = api.prepare(spec, labels=labels)
        with accel.threads(config.train.threads):
            result = api.fit(prepared, scores=False)
        losses[held] = validation_losses(result.predictor, prepared.splits.test)
    return losses


def _claim(study, key: str, me: str, stale: float) -> bool:
    """Whether this worker (``me``) now holds ``key``, a finalist's cross-validation: it does when nobody
    else's claim was refreshed within ``stale`` seconds, and its own claim, read back, is still its own (of
    two workers claiming at once, the later write wins and the other yields)."""
    claim = study.user_attrs.get(key)
    if claim and claim.get("worker") != me and time.time() - claim.get("at", 0.0) < stale:
        return False
    study.set_user_attr(key, {"worker": me, "at": time.time()})
    return study.user_attrs[key].get("worker") == me


@contextlib.contextmanager
def _holding(study, key: str, me: str, every: float):
    """Refresh this worker's claim on ``key`` every ``every`` seconds while the block runs (a thread, as
    Optuna's trial heartbeats), so that the other workers wait for it rather than take it over."""
    import threading

    done = threading.Event()

    def beat():
        while not done.wait(every):
            with contextlib.suppress(Exception):  # a missed beat: the claim may go stale, the work is not lost
                study.set_user_attr(key, {"worker": me, "at": time.time()})

    beating = threading.Thread(target=beat, name=f"torchclf-{key}", daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()


def confirm_trial(study, space: SearchSpace, pool, rows: RunSpec, labels, folds: int = CONFIRM_FOLDS,
                  finalists: int = CONFIRM_FINALISTS, within: float = CONFIRM_WITHIN, say=lambda line: None,
                  heartbeat: float = HEARTBEAT_SECONDS):
    """The trial to save when the best by validation loss is not the defaults: the finalists cross-validated
    on ``pool`` (the training and validation rows), see :data:`CONFIRM_FINALISTS`.

    Each finalist's out-of-fold losses are kept among the study's user attributes (``cv_losses_K_N`` for K
    folds and trial N), so a resumed tune, or a worker that ends after another has confirmed, does not train
    them again. Workers that end together share the finalists: a worker claims one (``cv_claim_K_N``, its
    claim refreshed every ``heartbeat`` seconds) before training it, leaves those that another worker claimed
    to it, waits for their losses, and takes over a claim left unrefreshed for GRACE_BEATS heartbeats (its
    worker died). Returns the trial and the ``choice`` record, as :func:`choose_trial`, whose validation-row
    comparison this replaces; with no defaults trial, or when the defaults have the lowest validation loss,
    that is :func:`choose_trial`'s answer.
    """
    import uuid

    import numpy as np

    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: t.value)
    base = next((t for t in complete if t.user_attrs.get("defaults")), None)
    if base is None or complete[0].number == base.number or folds < 2:
        return choose_trial(study)
    others = [t for t in complete if t.number != base.number][:finalists]
    say(f"confirming: {folds}-fold cross-validation of the defaults (trial {base.number}) and trial(s) "
        + ", ".join(str(t.number) for t in others) + f" on the {pool.n_rows} training and validation rows")
    me, stale = uuid.uuid4().hex, heartbeat * GRACE_BEATS
    cv, waiting, told = {}, [base, *others], set()
    while waiting:
        for t in list(waiting):
            key = f"cv_losses_{folds}_{t.number}"
            stored = study.user_attrs.get(key)
            if stored is None:
                claim = f"cv_claim_{folds}_{t.number}"
                if not _claim(study, claim, me, stale):
                    if t.number not in told:
                        say(f"trial {t.number}: another worker is cross-validating it; waiting for its losses")
                        told.add(t.number)
                    continue
                try:
                    with _holding(study, claim, me, heartbeat):
                        losses = cross_validated_losses(pool, rows, space.settings(t.params), labels, folds)
                    if not np.isfinite(losses).all():
                        raise TorchclfError("no finite cross-validated loss")
                except Exception as exc:  # noqa: BLE001  the trials are all there: choose on the validation rows
                    # rather than end a long search with nothing (an error of torchclf's own is one line, any
                    # other is named by its type).
                    why = str(exc) if isinstance(exc, TorchclfError) else f"{type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):  # free it for a worker that may fare better
                        study.set_user_attr(claim, {"worker": me, "at": 0.0})
                    say(f"confirming trial {t.number} failed ({why}); choosing on the validation rows instead")
                    trial, choice = choose_trial(study)
                    return trial, {**choice, "confirmation": f"failed on trial {t.number}: {why}"}
                stored = pack_losses(losses)
                study.set_user_attr(key, stored)
            cv[t.number] = unpack_losses(stored)  # as stored (float32), so that every worker compares the same
            waiting.remove(t)
        if waiting:
            time.sleep(min(1.0, heartbeat / 2))
    cv = {t.number: cv[t.number] for t in [base, *others]}
    best = min(others, key=lambda t: cv[t.number].mean())
    difference, se = _paired(cv[best.number], cv[base.number])
    chosen = best if difference < -within * se else base
    choice = {"rule": f"the finalist with the lowest {folds}-fold cross-validated loss, unless within {within:g} "
                      "standard error(s) of the defaults'",
              "best_trial": complete[0].number, "best_value": complete[0].value,
              "defaults_trial": base.number, "defaults_value": base.value,
              "cross_validated": {str(n): float(v.mean()) for n, v in cv.items()}, "folds": folds,
              "rows": pool.n_rows, "finalist": best.number, "difference": difference, "standard_error": se}
    say(f"cross-validated loss: trial {best.number} {cv[best.number].mean():.4f}, the defaults "
        f"{cv[base.number].mean():.4f} (difference {difference:+.4f}, standard error {se:.4f}); "
        + (f"saving trial {best.number}" if chosen is best else "keeping the defaults"))
    return chosen, choice


class _Surplus(Exception):
    """The study already had its N trials when this worker asked for one."""


@dataclass
class TuneResult:
    """What :func:`tune` returns.

    Attributes
    ----------
    study : optuna.Study
    storage : str
        The database URL (without a password).
    best_trial : int
        The number of the trial trained and saved: the one with the lowest
        validation loss, or a finalist confirmed by cross-validation, or the
        defaults when neither clearly beats them (see :func:`confirm_trial`
        and :func:`choose_trial`).
    value : float
        Its validation loss (the objective: the log loss of its calibrated
        probabilities on the validation rows).
    params : dict
        Its values of the searched parameters.
    settings : dict
        The table values they stand for (``hidden`` for ``width``/``depth``).
    train_command : str
        The ``torchclf train`` command that trains the same weights.
    counts : dict
        Trials in the study by state (``complete``, ``pruned``, ``fail``, ``running``).
    seconds : float
        This process's wall time.
    result : TrainResult or None
        The best configuration trained again (None when another worker saved it).
    run_dir : Path
    choice : dict
        How the trial was chosen (see :func:`confirm_trial` and :func:`choose_trial`).
    """

    study: Any
    storage: str
    best_trial: int
    value: float
    params: dict
    settings: dict
    train_command: str
    counts: dict
    seconds: float
    result: Any = None
    run_dir: Path | None = None
    choice: dict = field(default_factory=dict)


def _counts(study, trials=None) -> dict:
    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        key = t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts


def _seconds(trial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(trial, study, n: int) -> str:
    """One progress line for a finished trial."""
    trials = study.get_trials(deepcopy=False)  # one read of the database for the counts and the best
    counts = _counts(study, trials)
    done = counts["complete"] + counts["pruned"]
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    epochs = trial.user_attrs.get("epochs")
    secs = _seconds(trial)
    tail = f"{epochs} epochs " if epochs is not None else ""
    tail += f"{secs:.1f}s" if secs is not None else ""
    if trial.user_attrs.get("defaults"):
        tail = "(the defaults)  " + tail
    if trial.state.name == "COMPLETE":
        best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value, default=trial)
        what = f"complete  val_loss {trial.value:.4f}  best {best.value:.4f} (#{best.number})"
    elif trial.state.name == "PRUNED":
        last = trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None
        what = f"pruned    at epoch {trial.last_step}" + (f", val_loss {last:.4f}" if last is not None else "")
    else:
        what = f"failed    {trial.user_attrs.get('error', '')}"
    return f"trial {trial.number:>3} [{done}/{n}] {what}  {params}  {tail}".rstrip()


def _train_command(spec: RunSpec, config: RunConfig) -> str:
    """``torchclf train`` with every setting of ``config`` that differs from the table's default."""
    words = ["torchclf", "train"]
    words.append(str(spec.data) if isinstance(spec.data, (str, Path)) else "DATA")
    for t in spec.targets() or []:
        words += ["--target", t]
    if spec.label_sep is not None:
        words += ["--label-sep", spec.label_sep]
    if spec.test is not None:
        words += ["--test", str(spec.test) if isinstance(spec.test, (str, Path)) else "TEST"]
    if config.task != "auto":
        words += ["--task", config.task]
    for p in PARAMS:
        value = config.value(p.name)
        if value == p.default:
            continue
        if p.kind == "bool":
            on, off = p.cli_flag.split("/")
            words.append(on if value else off)
            continue
        # repr, not the table's %g: the command must give the very same float, or the weights differ.
        words += [p.cli_flag, repr(value) if isinstance(value, float) else p.format(value)]
    return shlex.join(words)


# ----- the study summary in the run folder -----------------------------------------
def write_summary(study, folder: Path, best: int, n: int, choice: dict | None = None) -> list[Path]:
    """``tune/``: trials.csv, summary.json, history.png, importance.png, curves.png.

    ``best`` is the trial saved, ``choice`` how it was chosen (:func:`choose_trial`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    with open(folder / "trials.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "state", "value", *names, "epochs", "seconds", "note"])
        for t in trials:
            secs = _seconds(t)
            writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else repr(t.value),
                             *[t.params.get(k, "") for k in names], t.user_attrs.get("epochs", ""),
                             "" if secs is None else f"{secs:.3f}",
                             t.user_attrs.get("error", "the defaults" if t.user_attrs.get("defaults") else "")])
    counts = _counts(study, trials)
    spent = [s for s in map(_seconds, trials) if s is not None]
    saved = next(t for t in trials if t.number == best)
    summary = {"study": study.study_name, "trials_wanted": n, "counts": counts, "best_trial": best,
               "best_value": saved.value, "best_params": saved.params, "choice": choice or {},
               "trial_seconds": round(sum(spent), 3),
               "space": study.user_attrs.get("torchclf", {}).get("space")}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    written = [folder / "trials.csv", folder / "summary.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib layout chatter is not the user's concern
        for draw in PICTURES:
            try:
                path = draw(study, folder)
            except Exception:  # noqa: BLE001  the study is saved; a picture that cannot be drawn is left out
                path = None
            if path is not None:
                written.append(path)
    return written


def _history_plot(study, folder: Path) -> Path:
    from torchclf.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="complete")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned], marker="x",
                   color="0.6", s=18, label="pruned (last reported)")
    order = sorted(done, key=lambda t: t.number)
    best, xs, ys = math.inf, [], []
    for t in order:
        best = min(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, folder / "history.png")


def _importance_plot(study, folder: Path) -> Path | None:
    optuna = _optuna()
    from torchclf.plots import _pyplot, _save

    # The default evaluator (fANOVA on a random forest, scikit-learn's) needs no plotly; seeded to be repeatable.
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    if not importances:
        return None
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.2))
    ax.barh(names, [importances[k] for k in names], color="C0")
    ax.set_xlabel("importance (fANOVA, share of the variance of the validation loss)")
    ax.set_title("Parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, folder / "importance.png")


def _curve(trial) -> list:
    """[epoch, best validation loss so far] of every epoch the trial trained (the database holds only the
    epochs its pruner was asked at)."""
    return trial.user_attrs.get("curve") or [[s, trial.intermediate_values[s]] for s in
                                             sorted(trial.intermediate_values)]


def _curves_plot(study, folder: Path) -> Path | None:
    from torchclf.plots import _pyplot, _save

    trials = [t for t in study.get_trials(deepcopy=False) if _curve(t)]
    if not trials:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    best = study.best_trial.number
    for t in trials:
        steps, losses = zip(*_curve(t))
        style = {"color": "C3", "lw": 2, "zorder": 3, "label": f"best (#{best})"} if t.number == best else (
            {"color": "0.7", "lw": 0.8, "ls": "--"} if t.state.name == "PRUNED" else {"color": "C0", "lw": 0.8,
                                                                                     "alpha": 0.6})
        ax.plot(steps, losses, **style)
    ax.plot([], [], color="C0", lw=0.8, label="complete")
    ax.plot([], [], color="0.7", lw=0.8, ls="--", label="pruned")
    ax.set_xlabel("epoch")
    ax.set_ylabel("best validation loss so far")
    ax.set_yscale("log")
    ax.set_title("Every trial's validation loss (before calibration)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, folder / "curves.png")


#: The pictures of ``tune/`` (tests that are about something else set this to ``()``).
PICTURES = (_history_plot, _importance_plot, _curves_plot)


# ----- tune ----------------------------------------------------------------------
def tune(
    data,
    target=None,
    *,
    trials: int = 30,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    space: SearchSpace | dict | str | Path | None = None,
    out: str | Path | None = None,
    config: RunConfig | None = None,
    test=None,
    label_sep: str | None = None,
    pruner=PRUNERS[0],
    confirm: int = CONFIRM_FOLDS,
    verbose: bool = False,
    write: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search hyperparameters on the validation rows, then train and save the best configuration.

    Parameters
    ----------
    data, target, test, label_sep
        As for :func:`torchclf.train`.
    trials : int
        Finish when the study holds this many complete or pruned trials, those
        of other processes on the same storage included.
    timeout : float, optional
        Start no trial after this many seconds of searching (the running one
        finishes; then the best so far is saved).
    storage : str, optional
        A database URL (``sqlite:///study.db``, ``postgresql://...``) or an
        SQLite file path; default ``sqlite:///OUT.optuna.db``.
    study : str, optional
        The study's name in the storage (default: OUT's folder name).
    space : SearchSpace, dict, or path of a TOML file, optional
        Over :data:`DEFAULT_SPACE` (see :func:`parse_space`, :func:`read_space`).
    out : path, optional
        The run folder of the best configuration (default ``runs/NAME-tuned``).
    config : RunConfig, optional
        Fixed settings of every trial (its values of searched parameters are
        not used); its seed seeds the split, the training and the sampler.
    pruner : {"quartile", "median", "halving", "none"} or an Optuna pruner
    confirm : int
        Folds of the confirmation (:func:`confirm_trial`) when a trial beats the
        defaults on the validation rows; 0 compares them on those rows alone
        (:func:`choose_trial`).
    verbose : bool
        One line per trial (on ``write``, default standard error).

    Returns
    -------
    TuneResult
    """
    optuna = _optuna()
    from torchclf import api

    started = time.monotonic()
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise TorchclfError(f"--trials: got {trials!r}, expected a whole number of trials >= 1")
    if timeout is not None and not (_number(timeout) and timeout > 0):
        raise TorchclfError(f"--timeout: got {timeout!r}, expected a number of seconds above 0")
    if not isinstance(confirm, int) or isinstance(confirm, bool) or confirm < 0 or confirm == 1:
        raise TorchclfError(f"--confirm: got {confirm!r}, expected 0 (no confirmation) or a number of folds >= 2")
    if space is None or isinstance(space, SearchSpace):
        space = space or DEFAULT_SPACE
    elif isinstance(space, dict):
        space = parse_space(space)
    else:
        space = read_space(space)
    pruner, next_ask = make_pruner(pruner)
    say = (write or (lambda line: print(line, file=sys.stderr, flush=True))) if verbose else (lambda line: None)
    config = with_values(config or RunConfig(), space.settings())
    spec = RunSpec(data, target, test, label_sep, config)
    out = Path(out) if out is not None else Path("runs") / f"{spec.name}-tuned"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TorchclfError(f"{out}: already exists and is not empty; choose another --out or remove it")
    if config.data.validation_size == 0:
        raise TorchclfError("tune: needs validation rows to score trials on (the test rows are never used); "
                            "give --val-size above 0")

    # Read the rows once, and fail on the data before any trial: every trial trains on these same rows.
    dataset = spec.dataset()
    rows = RunSpec(dataset, target, spec.test_dataset(dataset), label_sep, config)
    probe = api.prepare(rows)
    if probe.splits.validation is None or probe.splits.validation.n_rows == 0:
        raise TorchclfError(f"{spec.name}: too few rows for a validation split; give more rows or a larger --val-size")
    api.check_decisions(probe.predictor, probe.splits.validation, config)
    space = fit_to_data(space, probe.predictor.preprocessor, config, probe.splits.train.n_rows)
    if not space.dimensions:
        raise TorchclfError(f"{spec.name}: the parameters left to search cannot change a model of these columns; "
                            "search others (--space) or fewer fixed flags")

    url = storage_url(storage, out)
    name = study or out.name
    # Where and how fast trials run may change between workers and resumptions; what they compute may not.
    fixed = config.to_dict()
    fixed["train"] = {k: v for k, v in fixed["train"].items() if k not in ("device", "threads", "log_every")}
    record = {"data": {k: v for k, v in spec.describe().items() if k != "config"}, "space": space.to_dict(),
              "config": fixed}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trial lines below say what its log would
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", DataWarning)  # said once, by the probe above: trials train on its rows
            heartbeat = heartbeat_seconds()
            storage = open_storage(url, heartbeat)
            the_study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                            sampler=_trial_seeded_sampler(config.train.seed), pruner=pruner,
                                            load_if_exists=True)
            _same_study(the_study, record, f"study {name!r} in {shown_url(url)}")
            if not the_study.get_trials(deepcopy=False):
                # The defaults first: the search then ends no worse than them on the validation rows, and the
                # final choice is measured against them (see choose_trial).
                params = default_params(space, config, probe.splits.train.n_rows)
                if params is not None:
                    the_study.enqueue_trial(params, user_attrs={"defaults": True}, skip_if_exists=True)
            before = _counts(the_study)
            if before["complete"] + before["pruned"]:
                say(f"study {name!r} in {shown_url(url)}: continuing with {before['complete']} complete and "
                    f"{before['pruned']} pruned trial(s) of {trials}")
            else:
                say(f"study {name!r} in {shown_url(url)}: {trials} trials over "
                    + ", ".join(f"{d.name} {d.describe()}" for d in space.dimensions))
            # The clock starts with the search: reading the data and opening the study are not trial time.
            _optimize(the_study, space, rows, trials, None if timeout is None else time.monotonic() + timeout, say,
                      grace=heartbeat * GRACE_BEATS, next_ask=next_ask, prepared=probe, storage=storage)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"study {name!r} in {shown_url(url)} keeps every finished trial; run the same "
                                "command to continue") from None
    finally:
        optuna.logging.set_verbosity(verbosity)

    counts = _counts(the_study)
    if not counts["complete"]:
        raise TorchclfError(f"study {name!r}: no trial completed ({counts['pruned']} pruned, {counts['fail']} "
                            "failed); allow more --trials or a longer --timeout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the folds and the final run train on the probe's rows too
        if confirm:
            pool = _joined(probe.splits.train, probe.splits.validation)
            best, choice = confirm_trial(the_study, space, pool, rows, probe.predictor.labels, confirm, say=say,
                                         heartbeat=heartbeat)
            del pool
        else:
            best, choice = choose_trial(the_study)
        del probe
        settings = space.settings(best.params)
        best_config = with_values(config, settings)
        best_spec = spec.with_config(best_config)
        command = _train_command(spec, best_config)
        tuned = TuneResult(the_study, shown_url(url), best.number, best.value, dict(best.params),
                           {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}, command, counts,
                           0.0, run_dir=out, choice=choice)
        if "cross_validated" in choice:
            say(f"training trial {best.number} again into {out}")
        elif best.number != choice["best_trial"]:
            say(f"best: trial {choice['best_trial']}, validation loss {choice['best_value']:.4f}, only "
                f"{-choice['difference']:.4f} below the defaults' {best.value:.4f} (standard error "
                f"{choice['standard_error']:.4f}); keeping the defaults, trial {best.number}; training it again "
                f"into {out}")
        else:
            say(f"best: trial {best.number}, validation loss {best.value:.4f}; training it again into {out}")
        tuned.result = _save_best(the_study, tuned, best_spec, out, trials, say)
    tuned.seconds = time.monotonic() - started
    return tuned


def _optimize(study, space: SearchSpace, rows: RunSpec, n: int, deadline: float | None, say, grace: float,
              next_ask, prepared=None, storage=None) -> None:
    """Run trials until the study holds ``n`` complete or pruned ones (any process's) or the deadline passes.

    ``grace``: seconds after which a running trial without a heartbeat belongs to a dead worker;
    ``next_ask``: when to ask the pruner (see :func:`make_pruner`); ``prepared``: ``rows`` already
    prepared (``api.prepare``), whose split and fitted preprocessing the trials with the same data
    settings reuse; ``storage``: the study's database storage with heartbeats (see :func:`_first_beat`).
    """
    optuna = _optuna()
    import numpy as np

    from torchclf import accel, api

    finished, live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED), \
        (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    failures = []
    # A trial's settings change its split and preprocessing only through the data settings (scaling,
    # onehot_max): the trials that share them share one fitted preprocessing, and api.prepare builds
    # and seeds only their network.
    prepared_for = {} if prepared is None else {prepared.config.data: prepared}

    def objective(trial):
        # Workers asking at the same moment may overshoot N: the trials beyond the first N give way.
        ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(ahead) >= n:
            trial.set_user_attr("error", "surplus: the study already had its trials")
            raise _Surplus()
        _first_beat(storage, study, trial)
        params = {d.name: d.suggest(trial) for d in space.dimensions}
        pruning = Pruning(trial, next_ask)
        losses = None
        try:
            config = with_values(rows.config, {**space.settings(params), **TRIAL_SETTINGS})
            prepared = api.prepare(rows.with_config(config), reuse=prepared_for.get(config.data))
            prepared_for.setdefault(config.data, prepared)
            with accel.threads(config.train.threads):
                result = api.fit(prepared, callbacks=[pruning], scores=False)
            if pruning.pruned_at is None and math.isfinite(pruning.best):
                losses = validation_losses(result.predictor, prepared.splits.validation)
        except TorchclfError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("curve", pruning.curve)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"at epoch {pruning.pruned_at}")
        if losses is None or not np.isfinite(losses).all():
            trial.set_user_attr("error", "no finite validation loss")
            raise TorchclfError("no finite validation loss")
        trial.set_user_attr("row_losses", pack_losses(losses))
        return float(losses.mean())

    def report(_study, trial):
        if trial.state.name == "FAIL" and not trial.user_attrs.get("error", "").startswith("surplus"):
            failures.append(trial.user_attrs.get("error", "failed"))
        elif trial.state.name != "FAIL":
            failures.clear()
        if not trial.user_attrs.get("error", "").startswith("surplus"):
            say(trial_line(trial, study, n))

    while True:
        trials = study.get_trials(deepcopy=False, states=live)
        done = sum(t.state in finished for t in trials)
        if done >= n or (deadline is not None and time.monotonic() >= deadline):
            return
        if len(failures) >= FAILURES_IN_A_ROW:
            raise TorchclfError(f"{len(failures)} trials in a row failed; the last: {failures[-1]}")
        if len(trials) >= n:
            # The rest are running elsewhere, or in a process that died: wait, and free the places of the dead.
            optuna.storages.fail_stale_trials(study)
            _fail_unstarted(study, grace)
            time.sleep(1.0)
            continue
        study.optimize(objective, n_trials=1, catch=(TorchclfError, _Surplus), callbacks=[report],
                       gc_after_trial=False)


def _first_beat(storage, study, trial) -> None:
    """Record the trial's first heartbeat before it draws its parameters.

    Optuna's heartbeat thread records its first beat while the trial already
    runs, so a worker killed in between left a trial with parameters and no
    heartbeat: Optuna's check never saw it go stale, :func:`_fail_unstarted`
    skips trials with parameters, and a resumed tune waited for it forever.
    With this beat, a trial that drew parameters always has a heartbeat.
    """
    if storage is None or not hasattr(storage, "record_heartbeat"):
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))


def _fail_unstarted(study, grace: float) -> None:
    """Fail running trials that drew no parameters within ``grace`` seconds.

    A live worker draws them a moment after asking for the trial; one killed
    in that moment, before :func:`_first_beat`, leaves a trial that Optuna's
    heartbeat check never sees as stale, and that would hold its place forever.
    """
    optuna = _optuna()
    from datetime import datetime

    now = datetime.now()  # Optuna stamps trials with the local time too
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not t.params and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace:
            with contextlib.suppress(Exception):  # another worker failed it first
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _save_best(study, tuned: TuneResult, spec: RunSpec, out: Path, n: int, say):
    """Train the best configuration again through api.run and write it, with the study summary, to ``out``."""
    from torchclf import api, artifact

    try:
        artifact.claim_run_folder(out)
    except TorchclfError:
        # Workers sharing the study end together: one saves, the others say where.
        if not out.exists():
            say(f"another process is saving the best configuration to {out}")
            return None
        saved = (artifact.read_manifest(out).get("extra") or {}).get("tune") or {}
        if saved.get("study") == tuned.study.study_name and saved.get("trial") == tuned.best_trial:
            say(f"{out} already holds the best configuration, saved by another process")
            return None
        raise
    try:
        result = api.run(spec)
        result.predictor.extra["tune"] = {
            "study": tuned.study.study_name, "storage": tuned.storage, "trial": tuned.best_trial,
            "value": tuned.value, "params": tuned.params, "settings": tuned.settings,
            "train_command": tuned.train_command, "counts": _counts(study), "choice": tuned.choice,
        }
        api.write_run(result, out, extra_files=lambda folder: write_summary(study, folder / "tune",
                                                                            tuned.best_trial, n, tuned.choice))
    except BaseException:
        artifact.release_run_folder(out)
        raise
    return result


class _CallableModule(type(sys)):
    """``torchclf.tune`` is both this module and the function: importing the module replaces the package's
    lazy attribute with the module, so the module calls the function."""

    def __call__(self, *args, **kwargs):
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

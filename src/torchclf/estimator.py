"""scikit-learn's classifier interface over torchclf's one workflow.

:class:`NeuralNetClassifier` only translates scikit-learn conventions (input
validation, parameters, tags, ``classes_``) into a :class:`~torchclf.config.RunConfig`
and a :class:`~torchclf.data.Dataset`, that is a :class:`~torchclf.spec.RunSpec`;
the set-up (validation split, preprocessing, task, seeded network) and the
training loop are those of ``torchclf train``, through :func:`torchclf.api.prepare`
and :func:`torchclf.api.fit`. A fitted estimator saves to, and loads from, the
same run folder as the command line.
"""

from __future__ import annotations

import csv
import inspect
import math
import sys
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from torchclf import api
from torchclf.callbacks import EarlyStopping
from torchclf.config import AUTO_BATCH_FRACTION, AUTO_BATCH_LIMITS, PARAM, PARAMS, Param, RunConfig, with_values
from torchclf.data import Dataset
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder
from torchclf.spec import RunSpec

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The estimator's parameters that come from the table (torchclf.config.PARAMS), in table order.
TABLE_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.estimator_name is not None)

# Parameters of the estimator alone, with their constraints: scikit-learn's conventions (tol, random_state,
# warm_start, verbose), the network's floating type, and early stopping as a switch (the command line holds
# out validation rows with --val-size instead). Every other parameter comes from the table. Early stopping
# is on by default with the command line's validation fraction, so that both front doors train the same
# recipe; "auto" (as HistGradientBoostingClassifier's early_stopping) leaves it off on tables too small to
# hold out MIN_VALIDATION_ROWS, where True would train on a handful of rows and stop on a handful.
ESTIMATOR_ONLY_DEFAULTS: dict = {
    "early_stopping": "auto", "validation_fraction": PARAM["validation_size"].default, "tol": 1e-4,
    "dtype": None, "random_state": None, "warm_start": False, "verbose": False,
}
ESTIMATOR_ONLY: dict[str, list] = {
    "early_stopping": ["boolean", StrOptions({"auto"})],
    "validation_fraction": [Interval(Real, 0, 0.5, closed="right")],  # the workflow holds out at most half
    "tol": [Interval(Real, 0, None, closed="left")],
    "dtype": [StrOptions(set(_DTYPES)), None],
    "random_state": ["random_state"],
    "warm_start": ["boolean"],
    "verbose": ["verbose"],
}

# early_stopping="auto" holds out validation rows only when there would be at least this many of them
# (100 rows at the default fraction); smaller tables train on every row and stop on the training loss.
MIN_VALIDATION_ROWS = 10

# Values the estimator accepts beyond the table's, by table name: a single int for one hidden layer, and a
# {label: weight} dict (applied to the sample weights) as scikit-learn's class_weight allows.
_EXTENSIONS: dict[str, list] = {
    "hidden": [Interval(Integral, 1, None, closed="left")],
    "class_weight": [dict],
}


def _constraints(p: Param) -> list:
    """scikit-learn's constraints for a table parameter, from its kind, bounds, choices and ``none``."""
    if p.kind == "sizes":
        found: list = ["array-like"]
    elif p.kind == "names":
        found = ["array-like", str]  # the names themselves are checked by the table in fit
    elif p.kind == "bool":
        found = ["boolean"]
    elif p.choices is not None:
        found = [StrOptions(set(p.choices))]
    elif p.kind == "str":
        found = [str]
    else:
        number = Integral if p.kind == "int" else Real
        cast = int if p.kind == "int" else float
        left = p.low is not None and not p.low_open
        right = p.high is not None and not p.high_open
        closed = {(True, True): "both", (True, False): "left", (False, True): "right"}.get((left, right), "neither")
        found = [Interval(number, None if p.low is None else cast(p.low), None if p.high is None else cast(p.high),
                          closed=closed)]
    return found + _EXTENSIONS.get(p.name, []) + ([None] if p.none is not None else [])


# The estimator's wording, by table name, where the command line's help text does not fit: (type, text),
# a None type meaning "derived from the table".
_DOC: dict[str, tuple[str | None, str]] = {
    "hidden": ("int or tuple of int", "Units per hidden layer; ``()`` for no hidden layer (a linear model)."),
    "dropout": (None, "Dropout probability after each hidden layer. Each copy of a repeated row draws its own "
                "dropout mask, so with dropout a sample weight of k is close to, not exactly, k copies of "
                "the row; 0.0 makes them the same."),
    "epochs": (None, "Epochs (passes over the training rows) per call to ``fit``."),
    "batch_size": (None, f"Rows per step; 0 chooses from the training rows (about 1/{round(1 / AUTO_BATCH_FRACTION)} "
                   f"of them, a power of two from {AUTO_BATCH_LIMITS[0]} to {AUTO_BATCH_LIMITS[1]}); None trains "
                   "on all rows at once."),
    "patience": (None, "Evaluations without an improvement of at least ``tol`` after which training stops: "
                 "in the validation loss with early stopping (keeping the best weights), else in the training "
                 "loss, as MLPClassifier does. 0 never stops early."),
    "patience_min": (None, "With early stopping, an early best waits less: training stops after as many "
                     "evaluations without improvement as it took to reach the best, at least this many and at "
                     "most ``n_iter_no_change``; None for a fixed wait of ``n_iter_no_change``."),
    "threads": (None, "CPU threads for torch while fitting (None: the engine's choice); torch's own setting "
                "is the same after ``fit`` as before."),
    "drop": ("str or tuple of str", "Columns of X to leave out (by name; x0, x1, ... for arrays). Identifier "
             "and free-text columns are left out without it, with a warning, and date columns become numeric "
             "parts."),
    "class_weight": ('dict, "balanced" or None', '"balanced" reweights the loss by n_samples / (n_classes * '
                     "count), or the positive examples of each label for multilabel targets, as ``torchclf "
                     "train --class-weight balanced`` does; a dict ``{label: weight}`` multiplies the sample "
                     "weights (single-label only)."),
}


def _table_parameters_doc() -> str:
    """The numpydoc entries of the table parameters, from :data:`torchclf.config.PARAMS`."""
    import textwrap

    entries = []
    for p in TABLE_PARAMS:
        kind, text = _DOC.get(p.name, (None, p.help))
        if kind is None:
            if p.choices is not None:
                kind = "{" + ", ".join(f'"{c}"' for c in p.choices) + "}"
            else:
                kind = "bool" if p.kind == "bool" else f"{p.kind} {p.bounds_text()}".strip()
            kind += " or None" if p.none is not None else ""
        entries.append(f"    {p.estimator_name} : {kind}, default={p.estimator_value!r}\n")
        entries.append(textwrap.fill(f"{text} ``torchclf train {p.cli_flag}``.", width=79,
                                     initial_indent=" " * 8, subsequent_indent=" " * 8,
                                     break_on_hyphens=False, break_long_words=False) + "\n")
    return "".join(entries)


class NeuralNetClassifier(ClassifierMixin, BaseEstimator):
    """A PyTorch multilayer perceptron as a scikit-learn classifier.

    Binary, multiclass (labels of any type, returned as given) and multilabel
    (0/1 indicator matrix ``y``) problems. Rows go through torchclf's
    preprocessing: numeric columns are imputed and standardised, text and
    categorical columns of a DataFrame are one-hot encoded. Missing values
    (NaN) are imputed; sparse input is refused.

    The parameters shared with ``torchclf train`` come from the one table of
    parameters, :data:`torchclf.config.PARAMS`: their defaults, their bounds
    and choices (checked in ``fit``) and their entries below are derived from
    it, so that both front doors train the same network unless told otherwise;
    a parameter added to the table needs only its line in ``__init__`` (a test
    fails until it has one). The estimator's own parameters are those of
    :data:`ESTIMATOR_ONLY`.

    Parameters
    ----------
    {table_parameters}
    early_stopping : bool or "auto", default="auto"
        True holds out ``validation_fraction`` of the rows (stratified), stops
        when their loss has not improved for ``n_iter_no_change``
        evaluations, and keeps the best weights, as ``torchclf train`` does.
        "auto" does the same when that holds out at least
        ``MIN_VALIDATION_ROWS`` (10) rows, and otherwise trains on every row
        as False does (``history_`` then has no ``val_loss``). Ignored by
        ``partial_fit``.
    validation_fraction : float in (0, 0.5], default=0.1
        Held out with early stopping, stratified where every class has two
        rows or more; the default is ``torchclf train --val-size``'s.
    tol : float >= 0, default=1e-4
        The improvement of the training loss that counts, without early stopping.
    dtype : {"float32", "float64"} or None, default=None
        Floating type of the network. None follows the input as scikit-learn's
        MLPClassifier does: float32 input trains in float32, anything else in
        float64 (float32 when ``precision`` is reduced). Choose "float32" for
        speed on a GPU.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and the validation split; an int
        gives the same model on the same machine and thread count.
    warm_start : bool, default=False
        ``fit`` continues from the current weights (and optimizer state)
        instead of starting anew.
    verbose : bool, default=False
        Print a line per tenth of the epochs to standard error.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels; for multilabel targets, the label indices (or the
        column names of a DataFrame ``y``).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` had string column names.
    history_ : list of dict
        One row per epoch run: ``epoch``, ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``.
    n_iter_ : int
        Epochs run in all, across warm starts and ``partial_fit`` calls.
    predictor_ : torchclf.Predictor
        The fitted network with its preprocessing and labels.
    """

    _parameter_constraints: dict = {
        **{p.estimator_name: _constraints(p) for p in TABLE_PARAMS},
        **ESTIMATOR_ONLY,
    }

    # scikit-learn reads the parameters from __init__'s signature, which is built from the table (see
    # _make_init below): a parameter added to torchclf.config.PARAMS becomes an estimator parameter as it is.
    __init__ = None  # replaced below, once the class exists

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.allow_nan = True  # the preprocessing imputes (and flags) missing values
        return tags

    # ----- fitting -------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train on ``X`` (n_samples, n_features) and ``y`` (n_samples,) or (n_samples, n_labels).

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels of any type, or a 0/1 indicator matrix for multilabel.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative; a row of weight k counts as k copies of it (rows of
            weight 0 are left out), in the loss and in the preprocessing.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, incremental=False, classes=None)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train for exactly one epoch on this batch, continuing from earlier calls.

        The first call fits the preprocessing on its rows and needs
        ``classes`` (all labels ``y`` will ever hold) unless ``y`` is a
        multilabel indicator matrix.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        classes : array-like of shape (n_classes,), optional
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _fit(self, X, y, sample_weight, *, incremental: bool, classes):
        name = type(self).__name__
        method = "partial_fit" if incremental else "fit"
        continuing = hasattr(self, "predictor_") and (incremental or self.warm_start)
        if y is None:
            raise ValueError(f"This {name} estimator requires y to be passed, but the target y is None.")
        frame = self._frame(X, reset=not continuing)
        y, label_names = _validate_target(y)
        check_consistent_length(frame, y)
        multilabel = y.ndim == 2
        weight = None
        if sample_weight is not None:
            weight = _check_sample_weight(sample_weight, frame, dtype=np.float64, ensure_non_negative=True)
            if not weight.any():
                raise ValueError("Sample weights must contain at least one non-zero number.")
        if isinstance(self.class_weight, dict):
            if multilabel:
                raise ValueError(f"{name}.{method}: a class_weight dict needs single-label y; "
                                 "use class_weight='balanced' for multilabel targets")
            by_class = compute_sample_weight(self.class_weight, y)
            weight = by_class if weight is None else weight * by_class
        if weight is not None and not (weight > 0).all():
            # A row of weight 0 is a row that is not there, for the preprocessing and the classes alike.
            keep = weight > 0
            frame, y, weight = frame[keep].reset_index(drop=True), y[keep], weight[keep]

        if continuing:
            labels, fitted_classes = self.predictor_.labels, self.classes_
            self._check_same_target(y, multilabel, classes, method)
        else:
            labels, fitted_classes = self._new_labels(y, multilabel, label_names, classes, method)

        held_out = not incremental and self._holds_out(len(frame))
        seed = self._seed()
        config = self._config(seed, held_out=held_out)
        dtype = self.predictor_.dtype if continuing else self._torch_dtype(frame)
        if dtype == torch.float64 and config.train.precision != "float32":
            # autocast leaves float64 arithmetic alone, so the request would silently do nothing
            raise ValueError(f"{name}.{method}: precision={self.precision!r} needs a float32 network, this one is "
                             "float64; set dtype='float32' (or None, with a new model)")
        run = with_values(config, {
            "epochs": 1 if incremental else config.train.epochs,
            # A continued run shuffles differently from the run it continues, except with early stopping:
            # the seed also draws the validation rows, which must stay the rows the model never trained on.
            "seed": seed + (self.n_iter_ if continuing and not held_out else 0),
        })
        optimizer_state = None
        if continuing and self._optimizer_kind == self.optimizer:
            optimizer_state = self._optimizer_state
        spec = RunSpec(self._dataset(frame, y, weight, labels), config=run)
        # api.prepare holds out the validation rows and, for a new model, fits the preprocessing on the
        # others and seeds and builds the network; `start` continues from this estimator's network instead.
        prepared = api.prepare(spec, labels=labels, dtype=None if continuing else dtype,
                               start=self.predictor_ if continuing else None)
        if continuing:
            torch.manual_seed(run.train.seed)  # prepare does not seed a continued run; dropout draws from this
        callbacks = None
        if prepared.splits.validation is None and not incremental and run.train.patience:
            # MLPClassifier's convergence rule without a validation set: stop once the training loss stalls.
            callbacks = [EarlyStopping(run.train.patience, min_delta=float(self.tol), restore_best=False,
                                       monitor="train_loss")]
        result = api.fit(prepared, callbacks=callbacks, verbose=bool(self.verbose), optimizer_state=optimizer_state,
                         scores=False)
        predictor = result.predictor
        predictor.config = config
        done = self.n_iter_ if continuing else 0
        history = [{**row, "epoch": row["epoch"] + done} for row in result.history]
        self.predictor_ = predictor
        self.history_ = (list(self.history_) if continuing else []) + history
        self.n_iter_ = len(self.history_)
        self._optimizer_state = result.optimizer_state
        self._optimizer_kind = self.optimizer
        self.classes_ = fitted_classes
        if not continuing:
            self._indicator_dtype = y.dtype if multilabel else None
        return self

    def _new_labels(self, y, multilabel: bool, label_names, classes, method: str) -> tuple[LabelCoder, np.ndarray]:
        """The label coder of a new model and its ``classes_``."""
        name = type(self).__name__
        if multilabel:
            names = label_names or [str(j) for j in range(y.shape[1])]
            if classes is not None and len(classes) != len(names):
                raise ValueError(f"{name}.{method}: classes has {len(classes)} entries but y has {len(names)} labels")
            found = np.arange(len(names)) if label_names is None else np.asarray(label_names, dtype=object)
            return LabelCoder(names, multilabel=True), found
        if method == "partial_fit":
            if classes is None:
                raise ValueError(f"{name}.partial_fit: classes must be passed on the first call to partial_fit "
                                 "(all labels y may hold), e.g. classes=np.unique(y_all)")
            found = np.unique(column_or_1d(classes))
            unseen = np.setdiff1d(np.unique(y), found)
            if len(unseen):
                raise ValueError(f"{name}.partial_fit: y holds label(s) {unseen.tolist()[:5]} that are not in "
                                 f"classes {found.tolist()[:20]}")
        else:
            found = np.unique(y)
        if len(found) < 2:
            raise ValueError(f"{name}.{method}: y has only one class ({found[0]!r}) among rows with a positive "
                             "sample weight; a classifier needs at least two classes")
        return LabelCoder(found.tolist()), found

    def _check_same_target(self, y, multilabel: bool, classes, method: str) -> None:
        name = type(self).__name__
        labels = self.predictor_.labels
        if multilabel != labels.multilabel or (multilabel and y.shape[1] != labels.n_classes):
            kind = (f"{labels.n_classes} labels (multilabel)" if labels.multilabel
                    else f"classes {self.classes_.tolist()[:20]}")
            raise ValueError(f"{name}.{method}: y does not match the target the model was fitted on ({kind}); "
                             "set warm_start=False (or clone the estimator) to fit a new one")
        if classes is not None and not multilabel and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"{name}.partial_fit: classes={np.unique(classes).tolist()[:20]} is not the same as on "
                             f"the first call ({self.classes_.tolist()[:20]})")

    def _dataset(self, frame: pd.DataFrame, y: np.ndarray, weight, labels: LabelCoder) -> Dataset:
        """The rows to train on, with the target as labels (n_samples,) or an indicator frame (n_samples, n_labels)."""
        if labels.multilabel:
            target = pd.DataFrame(y, columns=labels.classes)
        else:
            target = pd.Series(y, name="label")
        return Dataset(frame, target, name=type(self).__name__, weight=weight)

    def _seed(self) -> int:
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _holds_out(self, n_rows: int) -> bool:
        """Whether ``fit`` on ``n_rows`` rows holds out validation rows (see ``early_stopping``)."""
        if not isinstance(self.early_stopping, str):  # True or False, numpy's bools too
            return bool(self.early_stopping)
        # The validation part's size by scikit-learn's train_test_split rule, which the workflow's split uses.
        enough = math.ceil(self.validation_fraction * n_rows) >= MIN_VALIDATION_ROWS
        if not enough and self.verbose:
            print(f"{type(self).__name__}: early_stopping='auto': {n_rows} rows are too few to hold out "
                  f"{MIN_VALIDATION_ROWS} for validation; training on all of them", file=sys.stderr)
        return enough

    def _config(self, seed: int, *, held_out: bool) -> RunConfig:
        """The run this estimator describes: its table parameters by table name, plus the seed and splits."""
        values = {p.name: getattr(self, p.estimator_name) for p in TABLE_PARAMS}
        hidden = values["hidden"]
        values["hidden"] = (hidden,) if isinstance(hidden, Integral) else tuple(hidden)
        if isinstance(values["class_weight"], dict):
            values["class_weight"] = None  # a dict is applied to the sample weights, see _fit
        for p in TABLE_PARAMS:
            if p.kind == "bool" and isinstance(values[p.name], np.bool_):
                values[p.name] = bool(values[p.name])  # scikit-learn's "boolean" allows numpy's bool too
        for p in TABLE_PARAMS:  # what scikit-learn's constraints leave to the table, named as this class spells it
            p.check(values[p.name], type(self).__name__, p.estimator_name)
        if values["threshold"] is not None:  # and the train section's own rule for it
            from torchclf.calibration import parse_objective

            parse_objective(values["threshold"], f"{type(self).__name__}.threshold")
        values.update(
            seed=seed,
            test_size=0.0,  # the caller holds out its own test rows
            validation_size=float(self.validation_fraction) if held_out else 0.0,
        )
        return with_values(RunConfig(), values)

    def _torch_dtype(self, frame: pd.DataFrame) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
        if self.precision != "float32":
            return torch.float32  # reduced precision autocasts from float32 only
        single = len(frame.columns) and all(t == np.float32 for t in frame.dtypes)
        return torch.float32 if single else torch.float64

    # ----- input ---------------------------------------------------------------
    def _frame(self, X, *, reset: bool) -> pd.DataFrame:
        """``X`` as the raw-column frame the preprocessing expects, checked the scikit-learn way."""
        name = type(self).__name__
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, skip_check_array=True, reset=reset)
            if X.shape[1] == 0:
                raise ValueError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required by {name}.")
            if X.shape[0] == 0:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is "
                                 f"required by {name}.")
            frame = X.reset_index(drop=True)
            frame.columns = self._column_names()
            return frame
        if not reset and not self._numeric_inputs():
            # Categorical columns were fitted from a DataFrame; rows without names are taken in that order.
            validate_data(self, X, skip_check_array=True, reset=False)
            array = check_array(X, dtype=None, ensure_all_finite=False, estimator=self)
            return pd.DataFrame(array, columns=self._column_names())
        array = validate_data(self, X, reset=reset, accept_sparse=False, dtype=(np.float64, np.float32),
                              ensure_all_finite="allow-nan")
        return pd.DataFrame(array, columns=self._column_names(), copy=False)

    def _column_names(self) -> list[str]:
        if hasattr(self, "feature_names_in_"):
            return [str(c) for c in self.feature_names_in_]
        return [f"x{i}" for i in range(self.n_features_in_)]

    def _numeric_inputs(self) -> bool:
        pre = self.predictor_.preprocessor
        return pre.plan.keeps_all and all(c.kind == "numeric" for c in pre.columns)

    # ----- prediction ----------------------------------------------------------
    def _logits(self, X, method: str) -> np.ndarray:
        check_is_fitted(self)
        return self.predictor_.predict_logits(self._frame(X, reset=False), f"{type(self).__name__}.{method}")

    def decision_function(self, X):
        """Logits: shape (n_samples,) for binary, else (n_samples, n_classes) or (n_samples, n_labels)."""
        logits = self._logits(X, "decision_function")
        return logits.ravel() if self.predictor_.task.kind == "binary" else logits

    def predict_proba(self, X):
        """Probabilities of shape (n_samples, n_classes); for multilabel, (n_samples, n_labels), one per label."""
        check_is_fitted(self)
        return self.predictor_.predict_proba(self._frame(X, reset=False), f"{type(self).__name__}.predict_proba")

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, of the same shape."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Labels of shape (n_samples,) as given in ``y``, or a 0/1 matrix (n_samples, n_labels) for multilabel."""
        proba = self.predict_proba(X)
        indices = self.predictor_.decide(proba)
        if self.predictor_.task.kind == "multilabel":
            return indices.astype(getattr(self, "_indicator_dtype", None) or np.int64)
        return np.asarray(self.classes_)[indices]

    # ----- persistence ---------------------------------------------------------
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns the live __dict__
        predictor = state.get("predictor_")
        if predictor is not None:
            # The same plain data as a run folder, with the weights on the CPU so
            # that a model trained on a GPU unpickles anywhere.
            state["predictor_"] = {"manifest": predictor.manifest(), "weights": _to_cpu(predictor.model.state_dict())}
        if state.get("_optimizer_state") is not None:
            state["_optimizer_state"] = _to_cpu(state["_optimizer_state"])
        return state

    def __setstate__(self, state):
        packed = state.get("predictor_")
        if isinstance(packed, dict):
            state = {**state, "predictor_": _predictor_from(packed["manifest"], packed["weights"])}
        super().__setstate__(state)

    def save(self, path) -> Path:
        """Write a run folder (``model.safetensors``, ``model.json``, ``history.csv``) that
        ``torchclf predict``/``evaluate`` and :meth:`load` read. The folder must not exist or be empty."""
        from torchclf.artifact import atomic_folder

        check_is_fitted(self)
        p = self.predictor_
        multilabel = p.task.kind == "multilabel"
        extra = {
            **p.extra,
            "epochs_run": self.n_iter_,
            "estimator": {
                "params": _json_params(self.get_params()),
                "feature_names_in": hasattr(self, "feature_names_in_"),
                "label_indices": bool(multilabel and np.issubdtype(np.asarray(self.classes_).dtype, np.integer)),
                "indicator_dtype": str(np.dtype(getattr(self, "_indicator_dtype", None) or np.int64)),
            },
        }
        record = Predictor(p.model, p.task, p.preprocessor, p.labels, p.config, label_sep=p.label_sep,
                           target_columns=p.target_columns, extra=extra, calibration=p.calibration,
                           threshold=p.threshold, threshold_objective=p.threshold_objective)
        with atomic_folder(path) as folder:
            record.save_model(folder)
            api.write_history(folder / "history.csv", self.history_)
        return Path(path)

    @classmethod
    def load(cls, path) -> NeuralNetClassifier:
        """A fitted estimator from a run folder written by ``torchclf train`` or :meth:`save`."""
        predictor = api.load(path)
        info = predictor.extra.get("estimator") or {}
        params = info.get("params")
        estimator = cls(**(_params_from_json(params, cls) if params else _params_from_config(predictor.config)))
        # Every column fitted on, those the model left out too: X is checked against them.
        names = predictor.preprocessor.plan.columns or predictor.preprocessor.feature_names
        estimator.n_features_in_ = len(names)
        if info.get("feature_names_in", True):
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        if predictor.task.kind == "multilabel":
            estimator._indicator_dtype = np.dtype(info.get("indicator_dtype", "int64"))
            estimator.classes_ = (np.arange(predictor.labels.n_classes) if info.get("label_indices")
                                  else np.asarray(predictor.labels.classes, dtype=object))
        else:
            estimator.classes_ = np.asarray(predictor.labels.classes)
        estimator.predictor_ = predictor
        estimator.history_ = _read_history(Path(path) / "history.csv")
        estimator.n_iter_ = len(estimator.history_)
        estimator._optimizer_state = None
        estimator._optimizer_kind = None
        return estimator


if NeuralNetClassifier.__doc__:  # None under python -OO
    NeuralNetClassifier.__doc__ = NeuralNetClassifier.__doc__.replace("    {table_parameters}\n",
                                                                      _table_parameters_doc())


def _make_init(defaults: dict):
    """An ``__init__`` that stores its keyword arguments (or their defaults) and nothing else.

    Its signature lists every parameter with its default, as scikit-learn's
    ``get_params``, ``clone`` and ``repr`` read it; no ``**kwargs`` shows.
    """

    def __init__(self, **params):
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    keyword = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, keyword, default=value) for name, value in defaults.items()])
    return __init__


NeuralNetClassifier.__init__ = _make_init(
    {**{p.estimator_name: p.estimator_value for p in TABLE_PARAMS}, **ESTIMATOR_ONLY_DEFAULTS})


# ----- helpers -------------------------------------------------------------------
def _validate_target(y) -> tuple[np.ndarray, list[str] | None]:
    """``y`` as (n_samples,) labels or an (n_samples, n_labels) indicator, plus label column names."""
    names = None
    if isinstance(y, pd.DataFrame) and y.shape[1] > 1:
        names = [str(c) for c in y.columns]
    y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim == 2:
        if type_of_target(y, input_name="y") != "multilabel-indicator":
            raise ValueError(f"y of shape {y.shape} is {type_of_target(y)}; a 2-D y must be a 0/1 label "
                             "indicator matrix (multilabel)")
        return y, names
    check_classification_targets(y)
    return y, None


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _predictor_from(manifest: dict, weights: dict) -> Predictor:
    from torchclf.artifact import decisions, rebuild

    model, task, pre, labels, config = rebuild(manifest, weights, "pickled NeuralNetClassifier")
    calibration, threshold, objective = decisions(manifest, task, "pickled NeuralNetClassifier")
    return Predictor(model, task, pre, labels, config, label_sep=manifest.get("label_sep"),
                     target_columns=manifest.get("target_columns") or [], extra=manifest.get("extra") or {},
                     calibration=calibration, threshold=threshold, threshold_objective=objective)


def _json_params(params: dict) -> dict:
    """Parameters as JSON values (a class_weight dict as [label, weight] pairs; a RandomState as None)."""
    out = dict(params)
    if isinstance(out.get("class_weight"), dict):
        out["class_weight"] = [[_plain(k), float(v)] for k, v in out["class_weight"].items()]
    if not isinstance(out.get("random_state"), (Integral, type(None))):
        out["random_state"] = None
    hidden = out.get("hidden_layer_sizes")
    out["hidden_layer_sizes"] = [int(hidden)] if isinstance(hidden, Integral) else [int(h) for h in hidden]
    return {k: _plain(v) for k, v in out.items()}


def _params_from_json(params: dict, cls) -> dict:
    known = set(cls._get_param_names())
    out = {k: v for k, v in params.items() if k in known}
    if isinstance(out.get("class_weight"), list):
        out["class_weight"] = {k: v for k, v in out["class_weight"]}
    if isinstance(out.get("hidden_layer_sizes"), list):
        out["hidden_layer_sizes"] = tuple(out["hidden_layer_sizes"])
    if isinstance(out.get("drop"), list):
        out["drop"] = tuple(out["drop"])
    return out


def _params_from_config(config: RunConfig) -> dict:
    """Estimator parameters that describe a run of ``torchclf train``."""
    params = {p.estimator_name: config.value(p.name) for p in TABLE_PARAMS}
    validation = config.data.validation_size
    params.update(early_stopping=validation > 0, random_state=config.train.seed)
    if validation > 0:
        params["validation_fraction"] = min(validation, 0.5)  # the split holds out at most half the rows
    return params


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in row.items()})
    return rows

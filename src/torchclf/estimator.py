"""scikit-learn's classifier interface over torchclf's one workflow.

:class:`NeuralNetClassifier` only translates scikit-learn conventions (input
validation, parameters, tags, ``classes_``) into a :class:`~torchclf.config.RunConfig`
and a :class:`~torchclf.data.Dataset`; the preprocessing, the task and the
training loop are those of ``torchclf train``, through
:func:`torchclf.api.fit_predictor`. A fitted estimator saves to, and loads
from, the same run folder as the command line.
"""

from __future__ import annotations

import csv
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
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

from torchclf import api, engine
from torchclf.callbacks import Callback
from torchclf.config import (
    ACTIVATIONS,
    DEVICES,
    NORMS,
    OPTIMIZERS,
    SCHEDULES,
    ModelConfig,
    RunConfig,
    TrainConfig,
    with_overrides,
)
from torchclf.data import Dataset
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NeuralNetClassifier(ClassifierMixin, BaseEstimator):
    """A PyTorch multilayer perceptron as a scikit-learn classifier.

    Binary, multiclass (labels of any type, returned as given) and multilabel
    (0/1 indicator matrix ``y``) problems. Rows go through torchclf's
    preprocessing: numeric columns are imputed and standardised, text and
    categorical columns of a DataFrame are one-hot encoded. Missing values
    (NaN) are imputed; sparse input is refused.

    Parameters marked "CLI default" take the default of the same setting of
    ``torchclf train`` (:class:`~torchclf.config.ModelConfig` and
    :class:`~torchclf.config.TrainConfig`), so that both front doors train the
    same network unless told otherwise.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, CLI default
        Units per hidden layer; ``()`` for no hidden layer (a linear model).
    activation : {"relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "linear"}, CLI default
    dropout : float in [0, 1), default=0.0
        Dropout probability after each hidden layer. Off by default (unlike
        ``torchclf train``) because each copy of a repeated row draws its own
        dropout mask, so with dropout a sample weight of k is no longer the
        same as k copies of the row.
    norm : {"none", "batch", "layer"}, CLI default
        Normalisation inside each hidden layer.
    optimizer : {"adam", "adamw", "sgd"}, CLI default
    lr : float > 0, CLI default
        Learning rate.
    weight_decay : float >= 0, CLI default
    momentum : float in [0, 1), CLI default
        Momentum of the "sgd" optimizer.
    schedule : {"none", "plateau", "cosine"}, CLI default
        Learning-rate schedule; "plateau" halves the rate when the
        validation loss (the training loss without early stopping) stalls.
    batch_size : int or None, CLI default
        Rows per step; None trains on all rows at once.
    max_iter : int, CLI default (``--epochs``)
        Epochs (passes over the training rows) per call to ``fit``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (stratified), stop when
        their loss has not improved for ``n_iter_no_change`` epochs, and keep
        the best weights. Ignored by ``partial_fit``.
    validation_fraction : float in (0, 0.9), default=0.1
    n_iter_no_change : int, CLI default (``--patience``)
        Epochs without an improvement of at least ``tol`` after which
        training stops: in the validation loss with early stopping (keeping
        the best weights), else in the training loss, as MLPClassifier does.
        0 never stops early.
    tol : float >= 0, default=1e-4
        The improvement of the training loss that counts, without early stopping.
    class_weight : dict, "balanced" or None, default=None
        "balanced" reweights the loss by n_samples / (n_classes * count), or
        the positive examples of each label for multilabel targets, as
        ``torchclf train --class-weight balanced`` does; a dict
        ``{label: weight}`` multiplies the sample weights (single-label only).
    max_categories : int, default=50
        Most one-hot columns per categorical column; rarer values share one.
    dtype : {"float32", "float64"} or None, default=None
        Floating type of the network. None follows the input as scikit-learn's
        MLPClassifier does: float32 input trains in float32, anything else in
        float64. Choose "float32" for speed on a GPU.
    device : {"auto", "cpu", "cuda", "mps"}, CLI default
    threads : int or None, default=None
        CPU threads for torch (None leaves torch's setting alone).
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
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "norm": [StrOptions(set(NORMS))],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "schedule": [StrOptions(set(SCHEDULES))],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 0.9, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "max_categories": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions(set(_DTYPES)), None],
        "device": [StrOptions(set(DEVICES))],
        "threads": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        hidden_layer_sizes=ModelConfig.hidden,
        activation=ModelConfig.activation,
        dropout=0.0,
        norm=ModelConfig.norm,
        optimizer=TrainConfig.optimizer,
        lr=TrainConfig.lr,
        weight_decay=TrainConfig.weight_decay,
        momentum=TrainConfig.momentum,
        schedule=TrainConfig.schedule,
        batch_size=TrainConfig.batch_size,
        max_iter=TrainConfig.epochs,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=TrainConfig.patience,
        tol=1e-4,
        class_weight=None,
        max_categories=50,
        dtype=None,
        device=TrainConfig.device,
        threads=None,
        random_state=None,
        warm_start=False,
        verbose=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.norm = norm
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.schedule = schedule
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.class_weight = class_weight
        self.max_categories = max_categories
        self.dtype = dtype
        self.device = device
        self.threads = threads
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

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

        seed = self._seed()
        config = self._config(seed)
        train, validation, train_weight = self._datasets(frame, y, weight, labels, seed, incremental)
        run = with_overrides(config, train={
            "epochs": 1 if incremental else self.max_iter,
            # a continued run shuffles differently from the run it continues
            "seed": seed + (self.n_iter_ if continuing else 0),
        })
        optimizer_state = None
        if continuing and self._optimizer_kind == self.optimizer:
            optimizer_state = self._optimizer_state
        if continuing:
            torch.manual_seed(run.train.seed)  # dropout in a continued run draws from the seed too
        callbacks = None
        if validation is None and not incremental and self.n_iter_no_change:
            callbacks = [_LossPlateau(float(self.tol), int(self.n_iter_no_change)),
                         *engine.default_callbacks(run.train, bool(self.verbose), has_validation=False)]
        predictor, state = api.fit_predictor(
            train, validation, run,
            labels=labels,
            sample_weight=train_weight,
            verbose=bool(self.verbose),
            callbacks=callbacks,
            warm_start=self.predictor_ if continuing else None,
            dtype=None if continuing else self._torch_dtype(frame),
            optimizer_state=optimizer_state,
        )
        predictor.config = config
        done = self.n_iter_ if continuing else 0
        history = [{**row, "epoch": row["epoch"] + done} for row in state.history]
        self.predictor_ = predictor
        self.history_ = (list(self.history_) if continuing else []) + history
        self.n_iter_ = len(self.history_)
        self._optimizer_state = state.optimizer.state_dict()
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

    def _datasets(self, frame, y, weight, labels: LabelCoder, seed: int, incremental: bool):
        """Training rows, validation rows (early stopping only) and the training rows' weights."""
        if labels.multilabel:
            target = pd.DataFrame(y, columns=labels.classes)
        else:
            target = pd.Series(y, name="label")
        data = Dataset(frame, target, name=type(self).__name__)
        if not self.early_stopping or incremental:
            return data, None, weight
        index = np.arange(len(frame))
        try:
            fit_rows, val_rows = train_test_split(index, test_size=self.validation_fraction, random_state=seed,
                                                  stratify=None if labels.multilabel else y)
        except ValueError:  # a class too rare to appear on both sides: split without strata
            fit_rows, val_rows = train_test_split(index, test_size=self.validation_fraction, random_state=seed)
        return data.take(np.sort(fit_rows)), data.take(np.sort(val_rows)), \
            None if weight is None else weight[np.sort(fit_rows)]

    def _seed(self) -> int:
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _config(self, seed: int) -> RunConfig:
        hidden = self.hidden_layer_sizes
        hidden = (hidden,) if isinstance(hidden, Integral) else tuple(int(h) for h in hidden)
        return api.make_config(
            model={"hidden": hidden, "activation": self.activation, "dropout": float(self.dropout), "norm": self.norm},
            train={
                "epochs": int(self.max_iter),
                "batch_size": None if self.batch_size is None else int(self.batch_size),
                "optimizer": self.optimizer,
                "lr": float(self.lr),
                "weight_decay": float(self.weight_decay),
                "momentum": float(self.momentum),
                "schedule": self.schedule,
                "patience": int(self.n_iter_no_change),
                "seed": seed,
                "device": self.device,
                "threads": self.threads,
                "class_weight": "balanced" if self.class_weight == "balanced" else None,
            },
            data={
                "test_size": 0.0,
                "validation_size": float(self.validation_fraction) if self.early_stopping else 0.0,
                "max_categories": int(self.max_categories),
            },
        )

    def _torch_dtype(self, frame: pd.DataFrame) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
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
        return all(c.kind == "numeric" for c in self.predictor_.preprocessor.columns)

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
        indices = self.predictor_.task.labels(torch.from_numpy(proba)).numpy()
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
                           target_columns=p.target_columns, extra=extra)
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
        names = predictor.preprocessor.feature_names
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


# ----- helpers -------------------------------------------------------------------
class _LossPlateau(Callback):
    """Stop when the training loss has not fallen by ``tol`` for ``patience`` epochs.

    MLPClassifier's convergence rule without early stopping; it keeps
    long runs on separable or heavily weighted data from drifting once the
    loss is spent.
    """

    def __init__(self, tol: float, patience: int):
        self.tol = tol
        self.patience = patience
        self.best = float("inf")
        self.bad = 0

    def on_epoch_end(self, state) -> None:
        loss = state.last["train_loss"]
        self.bad = self.bad + 1 if not loss < self.best - self.tol else 0
        self.best = min(self.best, loss)
        if self.bad >= self.patience:
            state.stop = True
            state.stop_reason = (f"converged: the training loss has not improved by {self.tol:g} "
                                 f"for {self.patience} epochs")


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
    from torchclf.artifact import rebuild

    model, task, pre, labels, config = rebuild(manifest, weights, "pickled NeuralNetClassifier")
    return Predictor(model, task, pre, labels, config, label_sep=manifest.get("label_sep"),
                     target_columns=manifest.get("target_columns") or [], extra=manifest.get("extra") or {})


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
    return out


def _params_from_config(config: RunConfig) -> dict:
    """Estimator parameters that describe a run of ``torchclf train``."""
    m, t, d = config.model, config.train, config.data
    return {
        "hidden_layer_sizes": tuple(m.hidden), "activation": m.activation, "dropout": m.dropout, "norm": m.norm,
        "optimizer": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay, "momentum": t.momentum,
        "schedule": t.schedule, "batch_size": t.batch_size, "max_iter": t.epochs,
        "early_stopping": d.validation_size > 0, "validation_fraction": d.validation_size or 0.1,
        "n_iter_no_change": t.patience, "class_weight": t.class_weight, "max_categories": d.max_categories,
        "device": t.device, "threads": t.threads, "random_state": t.seed,
    }


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

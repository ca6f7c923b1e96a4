"""Calibrated probabilities and decision thresholds, fitted on validation rows.

:class:`Calibration` maps a network's logits to calibrated probabilities:
temperature scaling (one temperature for a softmax head, one per output column
for a sigmoid head, so one for binary and one per label for multilabel) or
isotonic regression per output. Calibrated outputs are returned as logits
again (``transform``) so that :class:`~torchclf.task.Task` alone turns them into
probabilities of the task's shape (``apply``).

:func:`choose_threshold` picks the probability cut of a binary problem, or of
each label of a multilabel problem, for a named objective.

Everything saved is plain JSON (``to_dict``); ``from_dict`` checks it strictly,
because a manifest is untrusted input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from torchclf.errors import TorchclfError

METHODS = ("temperature", "isotonic")
# Temperatures are searched (and accepted from a file) in this range: dividing logits by 0.05 already
# sharpens any sensible model to 0/1 probabilities, and by 20 flattens it to near-uniform ones.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# Bounds on what a manifest may hold: output columns, and knots of one isotonic curve (a fitted curve
# with more knots is thinned to this many; interpolating a monotone curve through a subset stays monotone).
MAX_OUTPUTS = 1 << 16
MAX_KNOTS = 4096
OBJECTIVES_HELP = "f1, balanced_accuracy, precision>=X, recall>=X or cost:FP/FN (e.g. precision>=0.9, cost:1/5)"


# ----- calibration --------------------------------------------------------------------------------------


class Calibration:
    """A fitted map from logits to calibrated probabilities.

    Parameters
    ----------
    task : Task
        The problem type; it turns calibrated logits into probabilities.
    method : {"temperature", "isotonic"}
    temperatures : list of float, optional
        One for a softmax head, one per output column for a sigmoid head
        (``method="temperature"``).
    knots : list of (x, y) pairs or None, optional
        Per output column, an isotonic curve as increasing ``x`` (logits for a
        sigmoid head, log-probabilities for a softmax head) and non-decreasing
        ``y`` in [0, 1]; None leaves that column uncalibrated
        (``method="isotonic"``).
    """

    def __init__(self, task, method: str, temperatures=None, knots=None, notes=None):
        self.task = task
        self.method = method
        self.temperatures = None if temperatures is None else [float(t) for t in temperatures]
        self.knots = knots
        self.notes = list(notes or [])  # why some outputs were left as they were; not saved

    @property
    def softmax(self) -> bool:
        """Whether the outputs are coupled (one softmax) rather than independent sigmoids."""
        return self.task.output_activation == "softmax"

    # ----- fitting -----------------------------------------------------------
    @classmethod
    def fit(cls, task, logits: np.ndarray, y: np.ndarray, method: str = "temperature") -> Calibration:
        """Fit on validation rows.

        Parameters
        ----------
        task : Task
        logits : ndarray of shape (n_samples, n_outputs)
        y : ndarray of shape (n_samples,) or (n_samples, n_labels)
            Class indices, or a 0/1 indicator matrix for multilabel.
        method : {"temperature", "isotonic"}
        """
        if method not in METHODS:
            raise TorchclfError(f"calibration: got {method!r}, expected one of {', '.join(METHODS)}")
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != task.n_outputs or len(z) == 0:
            raise TorchclfError(f"calibration: expected logits of shape (n_samples>0, {task.n_outputs}), "
                                f"got {z.shape}")
        if not np.isfinite(z).all():
            raise TorchclfError("calibration: the validation logits hold NaN or infinite values; "
                                "train a model that does not diverge first")
        target = _indicator(task, y, z)
        if method == "temperature":
            return cls._fit_temperature(task, z, target)
        return cls._fit_isotonic(task, z, target)

    @classmethod
    def _fit_temperature(cls, task, z: np.ndarray, target: np.ndarray) -> Calibration:
        # When every validation row is on the right side of the decision, the likelihood keeps growing as
        # the temperature falls to 0: these rows cannot say how confident to be, and the first wrong test
        # row would cost a huge loss. Such outputs are sharpened only as far as n correct rows out of n
        # support (see _separated_temperature), and never softened.
        separated = "every validation row is classified correctly, so they cannot measure over-confidence"
        n = len(z)
        if task.output_activation == "softmax":
            true = (z * target).sum(axis=1)
            others = np.where(target > 0, -np.inf, z).max(axis=1)
            if np.all(true > others):
                t = _separated_temperature(
                    lambda t: float(np.exp((_log_softmax(z / t) * target).sum(axis=1)).mean()), n)
                return cls(task, "temperature", [t], notes=[_separated_note(separated, t, n)])
            return cls(task, "temperature", [_best_temperature(lambda t: _softmax_nll(z, target, t))])
        temps, notes = [], []
        for j in range(z.shape[1]):
            yj, zj = target[:, j], z[:, j]
            if yj.min() == yj.max():  # one class only: nothing says how confident to be
                temps.append(1.0)
                notes.append(f"output {j}: only one class among the validation rows; temperature left at 1")
            elif np.all(np.where(yj > 0, zj > 0, zj < 0)):
                margin = np.abs(zj)  # every row is right: its probability of the true side is sigmoid(|z|)
                temps.append(_separated_temperature(lambda t, m=margin: float(np.mean(_sigmoid(m / t))), n))
                notes.append(f"output {j}: {_separated_note(separated, temps[-1], n)}")
            else:
                temps.append(_best_temperature(lambda t, zj=zj, yj=yj: _sigmoid_nll(zj, yj, t)))
        return cls(task, "temperature", temps, notes=notes)

    @classmethod
    def _fit_isotonic(cls, task, z: np.ndarray, target: np.ndarray) -> Calibration:
        from sklearn.isotonic import IsotonicRegression

        inputs = _log_softmax(z) if task.output_activation == "softmax" else z
        knots, notes = [], []
        for j in range(z.shape[1]):
            yj = target[:, j]
            if yj.min() == yj.max():
                knots.append(None)
                notes.append(f"output {j}: only one class among the validation rows; left uncalibrated")
                continue
            # No probability more extreme than n validation rows can support: 1/(n+1) to n/(n+1). Without
            # this bound a step to exactly 0 or 1 makes one surprising test row cost an infinite log loss.
            n = len(yj)
            iso = IsotonicRegression(y_min=1 / (n + 1), y_max=n / (n + 1), increasing=True, out_of_bounds="clip")
            iso.fit(inputs[:, j], yj)
            knots.append(_thin(np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)))
        return cls(task, "isotonic", knots=knots, notes=notes)

    # ----- applying ----------------------------------------------------------
    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits of shape (n_samples, n_outputs), float64.

        Isotonic outputs are probabilities written back as logits (log-odds for
        a sigmoid head, log-probabilities for a softmax head), so 0 and 1 become
        -inf and +inf.
        """
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.task.n_outputs:
            raise TorchclfError(f"calibration: expected logits with {self.task.n_outputs} columns, got {z.shape}")
        if self.method == "temperature":
            # Dividing every logit of a row by one positive number keeps their order: the argmax is unchanged.
            return z / np.asarray(self.temperatures, dtype=np.float64)
        with np.errstate(divide="ignore"):
            if not self.softmax:
                p = self._interp(z)
                return np.log(p) - np.log1p(-p)
            raw = np.exp(_log_softmax(z))
            p = self._interp(_log_softmax(z), fallback=raw)
            total = p.sum(axis=1, keepdims=True)
            # A row that every curve sends to 0 has no calibrated mass: keep its uncalibrated probabilities.
            p = np.where(total > 0, p / np.where(total > 0, total, 1.0), raw)
            return np.log(p)

    def _interp(self, inputs: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        from scipy.special import expit

        out = np.empty_like(inputs)
        for j, curve in enumerate(self.knots):
            if curve is None:
                out[:, j] = fallback[:, j] if fallback is not None else expit(inputs[:, j])
            else:
                out[:, j] = np.interp(inputs[:, j], curve[0], curve[1])
        return out

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of shape (n_samples, n_classes), float64, as :meth:`Task.probabilities`."""
        import torch

        z = np.asarray(logits)
        p = self.task.probabilities(torch.from_numpy(self.transform(z))).numpy()
        if self.method == "temperature" and self.softmax and len(z):
            # exp() rounds logits that differ by less than about 1e-16 to one probability, and argmax then
            # takes the first of the tied classes. Lift the model's top class by one step so that scaling
            # never changes a label.
            rows, top = np.arange(len(z)), z.argmax(axis=1)
            moved = p.argmax(axis=1) != top
            p[rows[moved], top[moved]] = np.nextafter(p[rows[moved], top[moved]], 2.0)
        return p

    # ----- persistence -------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON values: the method and its temperatures or isotonic knots."""
        if self.method == "temperature":
            return {"method": "temperature", "temperatures": list(self.temperatures)}
        return {"method": "isotonic",
                "knots": [None if k is None else {"x": k[0].tolist(), "y": k[1].tolist()} for k in self.knots]}

    @classmethod
    def from_dict(cls, d, task, where: str = "calibration") -> Calibration:
        """Rebuild from :meth:`to_dict` output, checking every value (a manifest is untrusted)."""
        if not isinstance(d, dict):
            raise TorchclfError(f"{where}: expected an object, got {type(d).__name__}")
        method = d.get("method")
        if method not in METHODS:
            raise TorchclfError(f"{where}.method: got {method!r}, expected one of {', '.join(METHODS)}")
        expected = {"method", "temperatures" if method == "temperature" else "knots"}
        if set(d) != expected:
            raise TorchclfError(f"{where}: expected the keys {sorted(expected)}, got {sorted(d)}")
        n_out = task.n_outputs
        if method == "temperature":
            n = 1 if task.output_activation == "softmax" else n_out
            temps = _numbers(d["temperatures"], f"{where}.temperatures", n)
            if any(not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE for t in temps):
                raise TorchclfError(f"{where}.temperatures: expected values in "
                                    f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {temps[:8]}")
            return cls(task, "temperature", temps)
        raw = d["knots"]
        if not isinstance(raw, list) or len(raw) != n_out:
            raise TorchclfError(f"{where}.knots: expected a list of {n_out} curves")
        knots = []
        for j, curve in enumerate(raw):
            if curve is None:
                knots.append(None)
                continue
            here = f"{where}.knots[{j}]"
            if not isinstance(curve, dict) or set(curve) != {"x", "y"}:
                raise TorchclfError(f"{here}: expected an object with the keys x and y")
            x = np.asarray(_numbers(curve["x"], f"{here}.x", None), dtype=np.float64)
            y = np.asarray(_numbers(curve["y"], f"{here}.y", len(x)), dtype=np.float64)
            if not 1 <= len(x) <= MAX_KNOTS:
                raise TorchclfError(f"{here}: expected 1 to {MAX_KNOTS} knots, got {len(x)}")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise TorchclfError(f"{here}: expected increasing x and non-decreasing y in [0, 1]")
            knots.append((x, y))
        return cls(task, "isotonic", knots=knots)


def _indicator(task, y, z: np.ndarray) -> np.ndarray:
    """Targets as a 0/1 matrix of shape (n_samples, n_outputs) (one-hot for a softmax head)."""
    y = np.asarray(y)
    if len(y) != len(z):
        raise TorchclfError(f"calibration: {len(z)} rows of logits but {len(y)} targets")
    if y.ndim == 2:
        return y.astype(np.float64)
    if task.output_activation == "softmax":
        return np.eye(z.shape[1])[y.astype(np.int64)]
    return y.reshape(-1, 1).astype(np.float64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _softmax_nll(z: np.ndarray, onehot: np.ndarray, t: float) -> float:
    return float(-(_log_softmax(z / t) * onehot).sum(axis=1).mean())


def _sigmoid_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))  # -log sigmoid(s) for y=1, -log(1-sigmoid(s)) for y=0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def _separated_temperature(confidence, n: int) -> float:
    """The temperature at which the mean probability of the true class, ``confidence(t)``, is (n+1)/(n+2).

    With n of n rows right, (n+1)/(n+2) (Laplace's rule of succession) is
    how often the next row can be expected right. A network less confident
    than that (label smoothing keeps it so) is sharpened up to it; one already
    as confident keeps temperature 1. ``confidence`` falls as t grows.
    """
    target = (n + 1) / (n + 2)
    if confidence(1.0) >= target:
        return 1.0
    low, high = math.log(MIN_TEMPERATURE), 0.0  # confidence(exp(low)) >= target, or the bound is the answer
    if confidence(MIN_TEMPERATURE) <= target:
        return MIN_TEMPERATURE
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if confidence(math.exp(mid)) >= target else (low, mid)
    return float(math.exp(low))


def _separated_note(separated: str, t: float, n: int) -> str:
    if t == 1.0:
        return f"{separated}; temperature left at 1"
    return (f"{separated}; temperature {t:.3g} sharpens the probabilities until their mean confidence is "
            f"{n + 1}/{n + 2} (what {n} of {n} right supports)")


def _minimize_bounded(f, low: float, high: float, tol: float = 1e-6, max_evaluations: int = 200) -> float:
    """A minimiser of the unimodal ``f`` on [low, high], to within about ``tol``: Brent's method.

    Each step fits a parabola through the three best points seen and moves to
    its vertex when that lies inside the bracket and the step is shrinking;
    otherwise it takes a golden-section step into the larger part. A smooth
    function takes a dozen or so evaluations where golden sections alone take
    about forty. (scipy.optimize's bounded search does the same, and importing
    it cost 0.6 s, more than the search, on the path of every `train`.)
    """
    golden = (3.0 - math.sqrt(5.0)) / 2.0
    a, b = low, high
    x = w = v = a + golden * (b - a)
    fx = fw = fv = f(x)
    step = before = 0.0  # the last step, and the one before it
    for _ in range(max_evaluations):
        middle = (a + b) / 2.0
        tol1 = 1.5e-8 * abs(x) + tol / 3.0
        if abs(x - middle) <= 2.0 * tol1 - (b - a) / 2.0:
            break
        parabolic = False
        if abs(before) > tol1:
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            # Accept the vertex only inside the bracket and for a step under half the one before last.
            if q != 0.0 and abs(p) < abs(0.5 * q * before) and q * (a - x) < p < q * (b - x):
                before, step = step, p / q
                parabolic = True
                if (x + step) - a < 2.0 * tol1 or b - (x + step) < 2.0 * tol1:
                    step = tol1 if x < middle else -tol1
        if not parabolic:
            before = (b - x) if x < middle else (a - x)
            step = golden * before
        u = x + (step if abs(step) >= tol1 else math.copysign(tol1, step))
        fu = f(u)
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return x


def _best_temperature(nll) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises ``nll(t)``.

    The NLL is convex in 1/t, hence unimodal in log t, which a bounded scalar search handles.
    """
    u = _minimize_bounded(lambda u: nll(math.exp(u)), math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE))
    t = float(min(max(math.exp(u), MIN_TEMPERATURE), MAX_TEMPERATURE))
    # The search stops within its tolerance of the optimum; never return something worse than no scaling.
    return t if nll(t) <= nll(1.0) else 1.0


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_KNOTS knots, evenly spaced by index and keeping both ends."""
    if len(x) <= MAX_KNOTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(np.int64))
    return x[keep], y[keep]


def _numbers(values, where: str, n: int | None) -> list[float]:
    """A list of finite numbers (``n`` of them when given), or TorchclfError."""
    if not isinstance(values, list):
        raise TorchclfError(f"{where}: expected a list of numbers, got {type(values).__name__}")
    if n is not None and len(values) != n:
        raise TorchclfError(f"{where}: expected {n} values, got {len(values)}")
    if len(values) > max(MAX_KNOTS, MAX_OUTPUTS):
        raise TorchclfError(f"{where}: too many values ({len(values)})")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TorchclfError(f"{where}: expected finite numbers, got {v!r}")
        out.append(float(v))
    return out


# ----- thresholds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A parsed threshold objective: ``kind`` plus its floor or costs."""

    text: str
    kind: str  # "f1", "balanced_accuracy", "precision", "recall" (a floor on it) or "cost"
    floor: float = 0.0
    cost_fp: float = 0.0
    cost_fn: float = 0.0


_FLOOR = re.compile(r"^(precision|recall)>=(.+)$")
_COST = re.compile(r"^cost:([^/]+)/([^/]+)$")


def parse_objective(text: str, where: str = "threshold") -> Objective:
    """Parse ``f1``, ``balanced_accuracy``, ``precision>=X``, ``recall>=X`` or ``cost:FP/FN``."""
    s = str(text).strip().replace(" ", "")
    if s in ("f1", "balanced_accuracy"):
        return Objective(s, s)
    m = _FLOOR.match(s)
    if m:
        floor = _number(m.group(2))
        if floor is not None and 0 < floor <= 1:
            return Objective(s, m.group(1), floor=floor)
        raise TorchclfError(f"{where}: {text!r} needs a floor in (0, 1], such as {m.group(1)}>=0.9")
    m = _COST.match(s)
    if m:
        fp, fn = _number(m.group(1)), _number(m.group(2))
        if fp is not None and fn is not None and fp >= 0 and fn >= 0 and fp + fn > 0:
            return Objective(s, "cost", cost_fp=fp, cost_fn=fn)
        raise TorchclfError(f"{where}: {text!r} needs two costs of 0 or more, not both 0, such as cost:1/5")
    raise TorchclfError(f"{where}: got {text!r}, expected {OBJECTIVES_HELP}")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@dataclass
class ThresholdChoice:
    """The chosen cut(s) and the metrics against the threshold.

    ``threshold`` is a float for binary problems and an ndarray of shape
    (n_labels,) for multilabel ones. ``curve`` maps ``"threshold"`` to the
    grid, shape (n_points,), and ``"precision"``, ``"recall"``, ``"f1"``,
    ``"balanced_accuracy"`` and ``"objective"`` to arrays of shape
    (n_points,) or (n_points, n_labels); NaN where a value is undefined
    (precision with no positive prediction, a floor not met).
    ``met`` says per output whether a floor objective was reachable.
    """

    objective: str
    threshold: float | np.ndarray
    curve: dict
    met: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


CURVE_POINTS = 99  # the plotted grid: thresholds 0.01, 0.02, ..., 0.99


def choose_threshold(y_true: np.ndarray, proba: np.ndarray, objective: str | Objective) -> ThresholdChoice:
    """Choose the probability cut (predict positive when p >= cut) that best meets ``objective``.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,) or (n_samples, n_labels)
        0/1 targets of a binary problem, or a multilabel indicator matrix.
    proba : ndarray of shape (n_samples, 2) or (n_samples, n_labels)
        Probabilities as :meth:`Task.probabilities` gives them (binary: negative, positive).
    objective : str or Objective
        See :func:`parse_objective`.

    Every cut between two neighbouring validation probabilities gives the same
    labels on these rows; the midpoint is returned. Ties go to the cut nearest
    0.5. A label whose rows hold one class only keeps 0.5.
    """
    obj = objective if isinstance(objective, Objective) else parse_objective(objective)
    y, p, binary = _columns(y_true, proba)
    cuts, met, notes = [], [], []
    for j in range(y.shape[1]):
        cut, ok, note = _best_cut(y[:, j], p[:, j], obj)
        cuts.append(cut)
        met.append(ok)
        if note:
            notes.append(note if binary else f"label {j}: {note}")
    threshold = cuts[0] if binary else np.asarray(cuts)
    return ThresholdChoice(obj.text, threshold, threshold_curve(y_true, proba, obj), met, notes)


def threshold_curve(y_true: np.ndarray, proba: np.ndarray, objective: str | Objective | None = None) -> dict:
    """Metrics against the threshold on a grid of CURVE_POINTS thresholds (see :class:`ThresholdChoice`).

    Without ``objective`` there is no ``"objective"`` entry.
    """
    obj = None if objective is None else (
        objective if isinstance(objective, Objective) else parse_objective(objective))
    y, p, binary = _columns(y_true, proba)
    grid = np.linspace(0.01, 0.99, CURVE_POINTS)
    columns: dict[str, list] = {}
    for j in range(y.shape[1]):
        for name, values in _scores(y[:, j], p[:, j], grid, obj).items():
            columns.setdefault(name, []).append(values)
    curve = {"threshold": grid}
    curve.update({k: v[0] if binary else np.stack(v, axis=1) for k, v in columns.items()})
    return curve


def _columns(y_true, proba) -> tuple[np.ndarray, np.ndarray, bool]:
    """Targets as bool and probabilities of the positive class, both (n_samples, n_outputs); and whether binary."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    binary = y.ndim == 1
    if binary:
        if p.ndim != 2 or p.shape[1] != 2:
            raise TorchclfError(f"threshold: a binary problem needs probabilities of shape (n, 2), got {p.shape}; "
                                "multiclass labels are the most probable class and take no threshold")
        y, p = y.reshape(-1, 1), p[:, 1:2]
    if p.shape != y.shape or len(y) == 0:
        raise TorchclfError(f"threshold: targets of shape {y.shape} do not match probabilities of shape {p.shape}")
    return y.astype(bool), p, binary


def _counts(y: np.ndarray, p: np.ndarray, cuts: np.ndarray):
    """True and false positives when predicting ``p >= cut``, for each cut; plus the class totals."""
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    tp = len(pos) - np.searchsorted(pos, cuts, side="left")
    fp = len(neg) - np.searchsorted(neg, cuts, side="left")
    return tp.astype(np.float64), fp.astype(np.float64), float(len(pos)), float(len(neg))


def _scores(y: np.ndarray, p: np.ndarray, cuts: np.ndarray, obj: Objective | None) -> dict[str, np.ndarray]:
    """Precision, recall, F1, balanced accuracy and the objective's value at each cut (NaN: undefined)."""
    tp, fp, n_pos, n_neg = _counts(y, p, cuts)
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = tp / n_pos if n_pos else np.full_like(tp, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        specificity = tn / n_neg if n_neg else np.full_like(tp, np.nan)
        balanced = (recall + specificity) / 2
    out = {"precision": precision, "recall": recall, "f1": f1, "balanced_accuracy": balanced}
    if obj is None:
        return out
    if obj.kind == "f1":
        value = f1
    elif obj.kind == "balanced_accuracy":
        value = balanced
    elif obj.kind == "precision":
        value = np.where(precision >= obj.floor, recall, np.nan)
    elif obj.kind == "recall":
        value = np.where(recall >= obj.floor, precision, np.nan)
    else:  # cost per row, lower is better
        value = (obj.cost_fp * fp + obj.cost_fn * fn) / len(y)
    return {**out, "objective": value}


def _best_cut(y: np.ndarray, p: np.ndarray, obj: Objective) -> tuple[float, bool, str]:
    """The chosen cut for one output, whether a floor was met, and a note when something was given up."""
    if y.all() or not y.any():
        return 0.5, False, "only one class among the validation rows; threshold left at 0.5"
    values = np.unique(p)
    # Candidate cuts: each distinct probability (predict it and everything above positive) and one above
    # them all (predict nothing positive). Each is represented by the midpoint of its interval of cuts.
    lower = np.concatenate([[0.0], values])
    upper = np.concatenate([values, [1.0 if values[-1] < 1.0 else np.inf]])
    mids = (lower + upper) / 2
    # A midpoint that rounds onto the lower neighbour would move that neighbour across the cut.
    mids = np.where(mids > lower, mids, upper)
    valid = (mids > 0) & (mids < 1)
    mids = mids[valid]
    s = _scores(y, p, mids, obj)
    value = s["objective"]
    if obj.kind == "cost":
        primary, secondary = -value, np.zeros_like(value)
    elif obj.kind in ("precision", "recall"):
        other = s["precision"] if obj.kind == "precision" else s["recall"]
        primary, secondary = value, other
    else:
        primary, secondary = value, np.zeros_like(value)
    met = bool(np.isfinite(primary).any())
    note = ""
    if not met:  # no cut reaches the floor: take the one that comes closest to it
        floored = np.nan_to_num(s[obj.kind], nan=-1.0)
        best = float(floored.max())
        primary, secondary = floored, np.zeros_like(floored)
        note = f"{obj.text} is not reached on the validation rows (best {obj.kind} {best:.3f}); using the closest cut"
    primary = np.nan_to_num(primary, nan=-np.inf)
    secondary = np.nan_to_num(secondary, nan=-np.inf)
    # lexsort: the last key is the primary one; ties go to the largest secondary, then to the cut nearest 0.5.
    order = np.lexsort((-np.abs(mids - 0.5), secondary, primary))
    return float(mids[order[-1]]), met, note

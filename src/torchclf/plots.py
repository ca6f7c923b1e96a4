"""Pictures from histories and predictions: learning curves, confusion matrix,
decision boundaries. Rendered off-screen (Agg) to PNG; nothing here trains.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

# Past these many classes the confusion matrix drops its per-cell counts (drawing
# k*k texts takes minutes for hundreds of classes) and labels only some ticks.
MAX_ANNOTATED_CLASSES = 20
MAX_TICK_LABELS = 40


def _plain_text(draw):
    """Draw with matplotlib's mathtext off, so that class and column names are shown as typed.

    A label such as ``$\\frac{a}{$`` would otherwise be parsed as TeX and fail
    the whole picture. Every drawing function here is wrapped in this.
    """

    @functools.wraps(draw)
    def plain(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return plain


def _legend_label(name) -> str:
    """``name`` as a legend entry: matplotlib hides labels that start with ``_``."""
    text = str(name)
    return f" {text}" if text.startswith("_") else text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


@_plain_text
def learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation, in two panels."""
    plt = _pyplot()
    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy (fraction)")):
        ax.plot(frame["epoch"], frame[f"train_{metric}"], label="train")
        val = frame[["epoch", f"val_{metric}"]].dropna()
        if len(val):
            ax.plot(val["epoch"], val[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss")
    axes[1].set_title("Accuracy")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@_plain_text
def confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str = "Confusion matrix (test)") -> Path:
    """A heat map of counts, true classes as rows, predicted as columns.

    Up to ``MAX_ANNOTATED_CLASSES`` classes each cell shows its count; beyond
    ``MAX_TICK_LABELS`` only every n-th class is named on the axes.
    """
    plt = _pyplot()
    cm = np.asarray(matrix)
    k = len(class_names)
    # Room for each cell's count up to MAX_ANNOTATED_CLASSES; past that the cells are colour only and a
    # smaller picture shows them as well, drawn and compressed in half the time.
    size = max(4.0, min(12.0, 0.6 * k + 2)) if k <= MAX_ANNOTATED_CLASSES else 8.0
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    ticks = range(0, k, -(-k // MAX_TICK_LABELS))
    ax.set_xticks(ticks, [str(class_names[i]) for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [str(class_names[i]) for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k > MAX_ANNOTATED_CLASSES:
        fig.colorbar(image, ax=ax, shrink=0.8, label="rows")  # the counts, since the cells carry none
        return _save(fig, path)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > threshold else "black", fontsize=9)
    return _save(fig, path)


def boundary_grid(x: np.ndarray, y: np.ndarray, resolution: int = 200, margin: float = 0.1):
    """A ``resolution`` x ``resolution`` mesh covering the points, with a margin."""
    xr = x.max() - x.min() or 1.0
    yr = y.max() - y.min() or 1.0
    xs = np.linspace(x.min() - margin * xr, x.max() + margin * xr, resolution)
    ys = np.linspace(y.min() - margin * yr, y.max() + margin * yr, resolution)
    return np.meshgrid(xs, ys)


@_plain_text
def decision_boundary(
    predict_proba: Callable[[pd.DataFrame], np.ndarray],
    panels: list[tuple[str, pd.DataFrame, np.ndarray]],
    features: tuple[str, str],
    kind: str,
    class_names: list[str],
    path: Path,
    *,
    fixed: dict | None = None,
    resolution: int = 200,
) -> Path:
    """Decision regions over two features, one panel per (title, rows, label index) set.

    ``predict_proba`` maps a raw frame to probabilities of shape (n, n_classes).
    Columns other than ``features`` are held at the values in ``fixed`` (for
    example the training medians), which the plot says. Binary problems show
    the probability of the positive class; multiclass the most likely class.
    """
    plt = _pyplot()
    fx, fy = features
    all_x = np.concatenate([p[1][fx].to_numpy(dtype=float) for p in panels])
    all_y = np.concatenate([p[1][fy].to_numpy(dtype=float) for p in panels])
    gx, gy = boundary_grid(all_x, all_y, resolution)
    grid = pd.DataFrame({fx: gx.ravel(), fy: gy.ravel()})
    for name, value in (fixed or {}).items():
        grid[name] = value
    proba = np.asarray(predict_proba(grid))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("RdYlBu" if kind == "binary" else "tab10")
    for ax, (title, rows, labels) in zip(axes[0], panels):
        if kind == "binary":
            surface = proba[:, 1].reshape(gx.shape)
            filled = ax.contourf(gx, gy, surface, levels=np.linspace(0, 1, 21), cmap=cmap, alpha=0.7)
            ax.contour(gx, gy, surface, levels=[0.5], colors="k", linewidths=1)
            fig.colorbar(filled, ax=ax, label=f"P({class_names[1]})")
            colors = cmap(np.asarray(labels, dtype=float))
        else:
            k = proba.shape[1]
            surface = proba.argmax(axis=1).reshape(gx.shape)
            ax.contourf(gx, gy, surface, levels=np.arange(k + 1) - 0.5, cmap=cmap, alpha=0.35, vmin=0, vmax=9)
            colors = cmap(np.asarray(labels) % 10)
        ax.scatter(rows[fx], rows[fy], c=colors, s=14, edgecolors="k", linewidths=0.4)
        ax.set_xlabel(fx)
        ax.set_ylabel(fy)
        ax.set_title(title)
    if fixed:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(fixed.items())[:6])
        fig.text(0.5, -0.02, f"other columns held at their training median/mode: {shown}"
                 + (" ..." if len(fixed) > 6 else ""), ha="center", fontsize=8)
    return _save(fig, path)


# ----- the lab: curves, overlays, grids of boundaries, activation functions ---------
def _indicator(y_true: np.ndarray, n_columns: int) -> np.ndarray:
    """Class indices (n_samples,) as a 0/1 matrix (n_samples, n_columns); a matrix passes through."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        return y.astype(int)
    return (y[:, None] == np.arange(n_columns)[None, :]).astype(int)


# A curve drawn in a few hundred pixels needs no more points than this; a curve of every row of a
# large split (tens of thousands of steps) costs seconds to draw and hundreds of kB of PNG.
MAX_CURVE_POINTS = 1000


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of the curve (x, y), first and last kept."""
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
    return x[keep], y[keep]


@_plain_text
def roc_pr_curves(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], path: Path,
                  title: str = "") -> Path | None:
    """ROC and precision-recall curves in two panels, one curve per class (one-vs-rest) or label.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,) or (n_samples, n_labels)
        Class indices, or a 0/1 matrix for multilabel.
    proba : ndarray of shape (n_samples, n_classes)
    class_names : list of str

    Returns
    -------
    Path, or None when no class has both positive and negative rows (curves undefined).
    """
    from torchclf.metrics import precision_recall_curve, roc_curve

    proba = np.asarray(proba, dtype=float)
    Y = _indicator(y_true, proba.shape[1])
    columns = range(proba.shape[1])
    if np.asarray(y_true).ndim == 1 and proba.shape[1] == 2:
        columns = [1]  # class 0's curves mirror class 1's in a two-class problem
    drawable = [j for j in columns if 0 < Y[:, j].sum() < len(Y)]
    if not drawable:
        return None
    plt = _pyplot()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("tab10")
    for j in drawable[:10]:
        fpr, tpr = roc_curve(Y[:, j], proba[:, j])
        precision, recall = precision_recall_curve(Y[:, j], proba[:, j])
        color = cmap(j % 10)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        roc_ax.plot(*_thin(fpr, tpr), color=color, label=_legend_label(f"{class_names[j]} (AUC {area:.3f})"))
        ap = float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))  # as metrics.average_precision
        pr_ax.plot(*_thin(recall, precision), color=color, label=_legend_label(f"{class_names[j]} (AP {ap:.3f})"))
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    if len(drawable) > 10:
        fig.text(0.5, -0.02, f"showing 10 of {len(drawable)} classes", ha="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@_plain_text
def compare_learning_curves(histories: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Several runs' loss and accuracy per epoch overlaid: two panels, one colour per run.

    Training curves are solid, validation curves dashed.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for k, (name, history) in enumerate(histories.items()):
        frame = pd.DataFrame(history)
        color = cmap(k % 10)
        for ax, metric in ((axes[0], "loss"), (axes[1], "accuracy")):
            ax.plot(frame["epoch"], frame[f"train_{metric}"], color=color)
            val = frame[["epoch", f"val_{metric}"]].dropna() if f"val_{metric}" in frame else frame.iloc[:0]
            if len(val):
                ax.plot(val["epoch"], val[f"val_{metric}"], color=color, linestyle="--")
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (fraction)", title="Accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    # One entry per run plus the two line styles, outside the axes so no curve is hidden.
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=cmap(k % 10), linewidth=2, label=_legend_label(name))
               for k, name in enumerate(histories)]
    handles += [Line2D([], [], color="grey", label="train"), Line2D([], [], color="grey", linestyle="--", label="validation")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _region(ax, fig, gx, gy, proba, kind, class_names, cmap, colorbar: bool):
    if kind == "binary":
        surface = proba[:, 1].reshape(gx.shape)
        filled = ax.contourf(gx, gy, surface, levels=np.linspace(0, 1, 21), cmap=cmap, alpha=0.7)
        ax.contour(gx, gy, surface, levels=[0.5], colors="k", linewidths=1)
        if colorbar:
            fig.colorbar(filled, ax=ax, label=f"P({class_names[1]})")
    else:
        k = proba.shape[1]
        surface = proba.argmax(axis=1).reshape(gx.shape)
        ax.contourf(gx, gy, surface, levels=np.arange(k + 1) - 0.5, cmap=cmap, alpha=0.35, vmin=0, vmax=9)


@_plain_text
def decision_boundary_grid(
    models: list[tuple[str, Callable[[pd.DataFrame], np.ndarray]]],
    rows: pd.DataFrame,
    labels: np.ndarray,
    features: tuple[str, str],
    kind: str,
    class_names: list[str],
    path: Path,
    *,
    fixed: dict | None = None,
    resolution: int = 150,
    columns: int = 4,
) -> Path:
    """One decision-boundary panel per model, over the same rows, in a grid.

    Parameters
    ----------
    models : list of (title, predict_proba)
        ``predict_proba`` maps a raw frame to probabilities (n, n_classes).
    rows : DataFrame of shape (n_samples, n_columns)
        The points drawn on every panel (for example the shared test rows).
    labels : ndarray of shape (n_samples,)
        Class indices of ``rows``, for the points' colours.
    fixed : dict, optional
        Values for columns other than ``features`` (say, training medians).
    """
    plt = _pyplot()
    fx, fy = features
    gx, gy = boundary_grid(rows[fx].to_numpy(dtype=float), rows[fy].to_numpy(dtype=float), resolution)
    grid = pd.DataFrame({fx: gx.ravel(), fy: gy.ravel()})
    for name, value in (fixed or {}).items():
        grid[name] = value
    n_cols = min(columns, len(models))
    n_rows = -(-len(models) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 4.0 * n_rows), squeeze=False)
    cmap = plt.get_cmap("RdYlBu" if kind == "binary" else "tab10")
    colors = cmap(np.asarray(labels, dtype=float)) if kind == "binary" else cmap(np.asarray(labels) % 10)
    for ax, (title, predict_proba) in zip(axes.ravel(), models):
        _region(ax, fig, gx, gy, np.asarray(predict_proba(grid)), kind, class_names, cmap, colorbar=False)
        ax.scatter(rows[fx], rows[fy], c=colors, s=10, edgecolors="k", linewidths=0.3)
        ax.set(xlabel=fx, ylabel=fy, title=title)
    for ax in axes.ravel()[len(models):]:
        fig.delaxes(ax)
    if fixed:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(fixed.items())[:6])
        fig.text(0.5, -0.02, f"other columns held at their training median/mode: {shown}"
                 + (" ..." if len(fixed) > 6 else ""), ha="center", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


@_plain_text
def activation_functions(path: Path) -> Path:
    """The hand-written ReLU, sigmoid and tanh over [-5, 5], and softmax of example logits: four panels."""
    import torch

    from torchclf import activations

    plt = _pyplot()
    x = torch.linspace(-5, 5, 201)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, name in zip(axes[:3], ("relu", "sigmoid", "tanh")):
        ax.plot(x.numpy(), activations.FUNCTIONS[name](x).numpy(), linewidth=2)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set(title=name, xlabel="x")
        ax.grid(alpha=0.3)
    logits = torch.tensor([1.3, -0.8, 2.4, 0.2])
    probs = activations.softmax(logits, dim=0)
    positions = np.arange(len(logits))
    axes[3].bar(positions - 0.2, logits.numpy(), width=0.4, label="logits")
    axes[3].bar(positions + 0.2, probs.numpy(), width=0.4, label="softmax (sums to 1)")
    axes[3].set(title="softmax", xlabel="class", xticks=positions)
    axes[3].legend(fontsize=8)
    axes[3].grid(alpha=0.3)
    return _save(fig, path)


# ----- calibration and thresholds -------------------------------------------------
def reliability_dot_sizes(counts, most: int) -> np.ndarray:
    """Marker areas (points squared) for bins of ``counts`` rows: 6, plus 84 in proportion to the rows, so
    that the picture's largest bin (``most`` rows) gets 90."""
    return 6.0 + 84.0 * np.asarray(counts, dtype=float) / max(most, 1)


@_plain_text
def reliability_diagram(series: dict[str, dict], path: Path, title: str = "", what: str = "predicted probability",
                        observed: str = "observed frequency") -> Path:
    """Observed frequency against mean predicted probability per equal-width bin, one line per series.

    Parameters
    ----------
    series : dict of str to dict
        Name (e.g. "uncalibrated (ECE 0.041)") -> :func:`torchclf.metrics.reliability_bins` output.
    what, observed : str
        Axis labels (for multiclass: the top class's probability and accuracy).
    """
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    width = None
    most = max((int(np.max(bins["count"], initial=0)) for bins in series.values()), default=0) or 1
    for k, (name, bins) in enumerate(series.items()):
        full = bins["count"] > 0
        # A dot's area grows with its bin's rows, so that a bin of one or two rows, whose frequency can
        # only be 0 or 1, reads as the small sample it is rather than as a swing of the whole curve.
        line, = ax.plot(bins["confidence"][full], bins["frequency"][full], linewidth=1, alpha=0.6, label=name)
        ax.scatter(bins["confidence"][full], bins["frequency"][full], color=line.get_color(), zorder=3,
                   s=reliability_dot_sizes(bins["count"][full], most))
        n_bins = len(bins["count"])
        width = 1.0 / n_bins / max(len(series), 1)
        centers = (np.arange(n_bins) + 0.5) / n_bins
        hist.bar(centers - 0.5 / n_bins + (k + 0.5) * width, bins["count"], width=width, label=name)
    ax.set(ylabel=observed, xlim=(0, 1), ylim=(0, 1.02), title=title or "Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", title="dot area: the bin's rows", title_fontsize=8)
    hist.set(xlabel=what, ylabel="rows")
    hist.grid(alpha=0.3)
    return _save(fig, path)


@_plain_text
def threshold_curves(curve: dict, chosen, names: list[str], path: Path, title: str = "",
                     max_panels: int = 8) -> Path:
    """Precision, recall, F1 and balanced accuracy against the decision threshold, the chosen one marked.

    Parameters
    ----------
    curve : dict
        :attr:`torchclf.calibration.ThresholdChoice.curve`: ``threshold`` of shape
        (n_points,) and the metrics of shape (n_points,) or (n_points, n_labels).
    chosen : float or ndarray of shape (n_labels,)
        The threshold in use (per label for multilabel).
    names : list of str
        One title per panel (the positive class, or each label).
    """
    plt = _pyplot()
    t = np.asarray(curve["threshold"])
    metrics = ("precision", "recall", "f1", "balanced_accuracy")
    columns = {m: np.asarray(curve[m]).reshape(len(t), -1) for m in metrics}
    n = columns["f1"].shape[1]
    shown = min(n, max_panels)
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    cuts = np.broadcast_to(np.asarray(chosen, dtype=float), (n,))
    for j in range(rows * cols):
        ax = axes.flat[j]
        if j >= shown:
            ax.axis("off")
            continue
        for m in metrics:
            ax.plot(t, columns[m][:, j], label=m.replace("_", " "))
        ax.axvline(cuts[j], color="k", linestyle="--", linewidth=1, label=f"threshold {cuts[j]:.3f}")
        ax.set(xlabel="threshold", xlim=(0, 1), ylim=(0, 1.02), title=names[j])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    if n > shown:
        fig.text(0.5, -0.02, f"showing {shown} of {n} labels", ha="center", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)

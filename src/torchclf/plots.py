"""Pictures from histories and predictions: learning curves, confusion matrix,
decision boundaries. Rendered off-screen (Agg) to PNG; nothing here trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


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


def confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str = "Confusion matrix (test)") -> Path:
    """A heat map of counts, true classes as rows, predicted as columns."""
    plt = _pyplot()
    cm = np.asarray(matrix)
    k = len(class_names)
    size = max(4.0, min(12.0, 0.6 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
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
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
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

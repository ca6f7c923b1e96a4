"""Each picture in torchclf.plots: a PNG at 110 dpi of the figure's tight size, its axes and what they draw.

A spy on ``plots._save`` keeps each figure, so the test can read back the
lines, images and texts that were drawn and compare them with the data given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from torchclf import plots

DPI = 110


@pytest.fixture
def figures(monkeypatch) -> dict:
    """File name -> the matplotlib figure saved under it."""
    seen: dict = {}
    original = plots._save

    def spy(fig, path):
        seen[Path(path).name] = fig
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def check_png(path: Path, fig, figsize: tuple[float, float], n_axes: int, exact: bool = False) -> None:
    """The file is this figure's PNG: its size in inches, axes count, dpi, pixel size, not blank.

    ``bbox_inches="tight"`` crops the margins and takes in labels outside the
    axes, so the pixel size is the figure's size at 110 dpi give or take a
    margin; ``exact`` recomputes matplotlib's tight box instead (a second
    drawing, so only where it is worth it).
    """
    assert tuple(np.round(fig.get_size_inches(), 6)) == pytest.approx(figsize)
    assert len(fig.axes) == n_axes
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
    if exact:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig.set_dpi(DPI)
        box = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).padded(0.1)  # savefig's default pad
        expected = (box.width * DPI, box.height * DPI)
        assert image.size == pytest.approx(expected, abs=1.5)
    else:
        nominal = (figsize[0] * DPI, figsize[1] * DPI)
        assert image.size == pytest.approx(nominal, rel=0.25)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    inked = (rgb < 245).any(axis=2).mean()
    assert inked > 0.03, f"only {inked:.1%} of the picture is drawn"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20


@pytest.fixture
def unsaved(monkeypatch) -> dict:
    """Like ``figures``, but nothing is rendered: for tests about a figure's layout only."""
    seen: dict = {}

    def keep(fig, path):
        seen[Path(path).name] = fig
        plots._pyplot().close(fig)  # closed as _save would, still readable
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def line_data(ax) -> list[tuple[list, list]]:
    return [(list(map(float, line.get_xdata())), list(map(float, line.get_ydata()))) for line in ax.get_lines()]


HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 40,
            "val_loss": 1.2 / e if e % 2 == 0 else None, "val_accuracy": 0.4 + e / 50 if e % 2 == 0 else None}
           for e in range(1, 11)]


# ----- learning curves ------------------------------------------------------------------------
def test_learning_curves_draw_every_epoch_and_validation_where_measured(tmp_path, figures):
    path = plots.learning_curves(HISTORY, tmp_path / "curves.png", title="a run")
    fig = figures["curves.png"]
    check_png(path, fig, (10, 4), 2, exact=True)
    loss, acc = fig.axes
    epochs = [float(e) for e in range(1, 11)]
    even = [float(e) for e in range(2, 11, 2)]
    assert line_data(loss) == [(epochs, [r["train_loss"] for r in HISTORY]),
                               (even, [r["val_loss"] for r in HISTORY if r["val_loss"] is not None])]
    assert line_data(acc) == [(epochs, [r["train_accuracy"] for r in HISTORY]),
                              (even, [r["val_accuracy"] for r in HISTORY if r["val_accuracy"] is not None])]
    assert (loss.get_title(), acc.get_title()) == ("Loss", "Accuracy")
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "validation"]
    assert acc.get_ylabel() == "accuracy (fraction)" and fig._suptitle.get_text() == "a run"


def test_learning_curves_without_validation_have_one_line_per_panel(tmp_path, unsaved):
    history = [{**r, "val_loss": None, "val_accuracy": None} for r in HISTORY]
    plots.learning_curves(history, tmp_path / "train-only.png")
    fig = unsaved["train-only.png"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert fig._suptitle is None


# ----- confusion matrix -------------------------------------------------------------------------
def test_confusion_matrix_shows_every_count_in_its_cell(tmp_path, figures):
    matrix = [[5, 1, 0], [2, 7, 1], [0, 3, 9]]
    path = plots.confusion_matrix(matrix, ["cat", "dog", "eel"], tmp_path / "cm.png", title="held out")
    fig = figures["cm.png"]
    check_png(path, fig, (4, 4), 1)
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), np.asarray(matrix))
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(matrix[i][j]) for i in range(3) for j in range(3)}
    # Dark cells (above half the largest count) get white text.
    assert {t.get_text(): t.get_color() for t in ax.texts if t.get_text() in ("9", "7", "1")} == {
        "9": "white", "7": "white", "1": "black"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "eel"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "held out")


@pytest.mark.parametrize("k, side", [(2, 4.0), (10, 8.0), (17, 12.0)])
def test_confusion_matrix_grows_with_the_classes_up_to_a_cap(tmp_path, unsaved, k, side):
    plots.confusion_matrix(np.eye(k, dtype=int).tolist(), [f"c{i}" for i in range(k)], tmp_path / "cm.png")
    fig = unsaved["cm.png"]
    assert tuple(fig.get_size_inches()) == pytest.approx((side, side))
    assert len(fig.axes[0].texts) == k * k


# ----- decision boundaries ----------------------------------------------------------------------
def test_boundary_grid_covers_the_points_with_a_margin():
    gx, gy = plots.boundary_grid(np.array([0.0, 2.0, 1.0]), np.array([-1.0, 3.0, 0.0]), resolution=5, margin=0.25)
    assert gx.shape == gy.shape == (5, 5)
    np.testing.assert_allclose(gx[0], np.linspace(-0.5, 2.5, 5))
    np.testing.assert_allclose(gy[:, 0], np.linspace(-2.0, 4.0, 5))
    # A single point still gets a non-empty grid.
    flat_x, _ = plots.boundary_grid(np.array([3.0]), np.array([3.0]), resolution=3, margin=0.5)
    np.testing.assert_allclose(flat_x[0], [2.5, 3.0, 3.5])


def two_feature_rows(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({"u": rng.normal(size=n), "v": rng.normal(size=n)})
    return rows, (rows["u"] > 0).to_numpy().astype(int)


def test_binary_decision_boundary_has_a_panel_and_colorbar_per_part(tmp_path, figures):
    train, y_train = two_feature_rows(40, 0)
    test, y_test = two_feature_rows(15, 1)
    asked = []

    def predict_proba(frame):
        asked.append(frame.copy())
        p = 1 / (1 + np.exp(-3 * frame["u"].to_numpy()))
        return np.column_stack([1 - p, p])

    path = plots.decision_boundary(predict_proba, [("Train", train, y_train), ("Test", test, y_test)], ("u", "v"),
                                   "binary", ["no", "yes"], tmp_path / "boundary.png",
                                   fixed={"w": 0.5, "colour": "red"}, resolution=30)
    fig = figures["boundary.png"]
    check_png(path, fig, (12, 5), 4)  # two panels, each with its colour bar
    (grid,) = asked
    assert list(grid.columns) == ["u", "v", "w", "colour"] and len(grid) == 30 * 30
    assert (grid["w"] == 0.5).all() and (grid["colour"] == "red").all()
    all_u = np.concatenate([train["u"], test["u"]])
    assert grid["u"].min() == pytest.approx(all_u.min() - 0.1 * np.ptp(all_u))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Train", "Test"]
    assert [len(ax.collections[-1].get_offsets()) for ax in panels] == [40, 15]
    assert [ax.get_ylabel() for ax in fig.axes if not ax.get_title()] == ["P(yes)", "P(yes)"]
    assert "other columns held at their training median/mode: w=0.5, colour=red" in [t.get_text() for t in fig.texts]


def test_multiclass_decision_boundary_has_one_panel_per_part_and_no_colorbar(tmp_path, unsaved):
    rows, _ = two_feature_rows(30)
    labels = np.arange(30) % 3

    def predict_proba(frame):
        scores = np.column_stack([frame["u"], frame["v"], -frame["u"]]).astype(float)
        return np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)

    plots.decision_boundary(predict_proba, [("Test", rows, labels)], ("u", "v"), "multiclass",
                            ["a", "b", "c"], tmp_path / "mc.png", resolution=25)
    fig = unsaved["mc.png"]
    assert tuple(fig.get_size_inches()) == pytest.approx((6, 5)) and len(fig.axes) == 1
    (ax,) = fig.axes
    assert ax.get_title() == "Test" and len(ax.collections[-1].get_offsets()) == 30
    assert fig.texts == []  # no held-constant columns to mention


def test_decision_boundary_grid_lays_out_one_panel_per_model(tmp_path, figures):
    rows, labels = two_feature_rows(30)

    def model(shift):
        return lambda frame: np.column_stack([1 - (frame["u"] > shift), frame["u"] > shift]).astype(float)

    models = [(f"m{i}", model(i / 10)) for i in range(3)]
    path = plots.decision_boundary_grid(models, rows, labels, ("u", "v"), "binary", ["0", "1"],
                                        tmp_path / "grid.png", resolution=20, columns=2)
    fig = figures["grid.png"]
    check_png(path, fig, (4.2 * 2, 4.0 * 2), 3)  # a 2 x 2 grid with its spare panel removed
    assert [ax.get_title() for ax in fig.axes] == ["m0", "m1", "m2"]
    assert all(len(ax.collections[-1].get_offsets()) == 30 for ax in fig.axes)


# ----- ROC / precision-recall --------------------------------------------------------------------
def test_roc_pr_curves_one_curve_per_class_with_sklearn_scores(tmp_path, figures):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    proba = rng.dirichlet(np.ones(3), 150) * 0.5 + np.eye(3)[y] * 0.5
    path = plots.roc_pr_curves(y, proba, ["a", "b", "c"], tmp_path / "curves.png", title="three classes")
    fig = figures["curves.png"]
    check_png(path, fig, (10, 4.2), 2)
    roc, pr = fig.axes
    assert len(roc.get_lines()) == 4 and len(pr.get_lines()) == 3  # one per class, plus chance on the ROC side
    expected_roc = [f"{n} (AUC {roc_auc_score(y == j, proba[:, j]):.3f})" for j, n in enumerate("abc")] + ["chance"]
    expected_pr = [f"{n} (AP {average_precision_score(y == j, proba[:, j]):.3f})" for j, n in enumerate("abc")]
    assert [t.get_text() for t in roc.get_legend().get_texts()] == expected_roc
    assert [t.get_text() for t in pr.get_legend().get_texts()] == expected_pr


def test_roc_pr_curves_two_classes_draw_the_positive_class_only(tmp_path, unsaved):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    plots.roc_pr_curves(y, np.column_stack([1 - p1, p1]), ["neg", "pos"], tmp_path / "binary.png")
    roc, pr = unsaved["binary.png"].axes
    assert [t.get_text() for t in roc.get_legend().get_texts()] == [f"pos (AUC {roc_auc_score(y, p1):.3f})", "chance"]
    assert len(pr.get_lines()) == 1


def test_roc_pr_curves_skip_multilabel_labels_with_one_value(tmp_path, unsaved):
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, (60, 3))
    Y[:, 1] = 0
    plots.roc_pr_curves(Y, rng.random((60, 3)), ["x", "y", "z"], tmp_path / "ml.png")
    roc, _ = unsaved["ml.png"].axes
    assert [t.get_text().split(" ")[0] for t in roc.get_legend().get_texts()] == ["x", "z", "chance"]
    assert plots.roc_pr_curves(np.zeros((5, 2), int), np.full((5, 2), 0.5), ["p", "q"], tmp_path / "no.png") is None
    assert not (tmp_path / "no.png").exists()


def test_roc_pr_curves_of_many_rows_are_thinned_to_a_drawable_size(tmp_path, unsaved):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 20_000)
    p1 = np.clip(0.2 * y + rng.random(20_000) * 0.8, 0, 1)  # about 20,000 distinct thresholds
    plots.roc_pr_curves(y, np.column_stack([1 - p1, p1]), ["neg", "pos"], tmp_path / "many.png")
    roc, pr = unsaved["many.png"].axes
    curve, _chance = roc.get_lines()
    assert len(curve.get_xdata()) == plots.MAX_CURVE_POINTS == len(pr.get_lines()[0].get_xdata())
    assert (curve.get_xdata()[0], curve.get_xdata()[-1]) == (0.0, 1.0)  # both ends kept
    assert roc.get_legend().get_texts()[0].get_text() == f"pos (AUC {roc_auc_score(y, p1):.3f})"
    assert pr.get_legend().get_texts()[0].get_text() == f"pos (AP {average_precision_score(y, p1):.3f})"


@pytest.mark.parametrize("k, side", [(21, 8.0), (100, 8.0)])
def test_confusion_matrix_past_the_annotated_classes_is_colour_only_and_smaller(tmp_path, unsaved, k, side):
    plots.confusion_matrix(np.eye(k, dtype=int).tolist(), [f"c{i}" for i in range(k)], tmp_path / "cm.png")
    fig = unsaved["cm.png"]
    assert tuple(fig.get_size_inches()) == pytest.approx((side, side))
    assert len(fig.axes[0].texts) == 0 and len(fig.axes) == 2  # the colour bar carries the counts


# ----- the lab's overlays ------------------------------------------------------------------------
def test_compare_learning_curves_overlays_every_run(tmp_path, figures):
    other = [{**r, "train_loss": r["train_loss"] / 2} for r in HISTORY]
    train_only = [{"epoch": e, "train_loss": 0.3, "train_accuracy": 0.9} for e in range(1, 4)]
    path = plots.compare_learning_curves({"linear": HISTORY, "relu": other, "short": train_only},
                                         tmp_path / "compare.png", title="study")
    fig = figures["compare.png"]
    check_png(path, fig, (11, 4.2), 2)
    loss, acc = fig.axes
    # Train and validation for the first two runs, train only for the third.
    assert [len(line.get_xdata()) for line in loss.get_lines()] == [10, 5, 10, 5, 3]
    assert list(loss.get_lines()[2].get_ydata()) == [r["train_loss"] / 2 for r in HISTORY]
    assert [line.get_linestyle() for line in acc.get_lines()] == ["-", "--", "-", "--", "-"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["linear", "relu", "short", "train", "validation"]


def test_activation_functions_four_panels(tmp_path, unsaved):
    # tests/test_activations.py checks the saved picture itself.
    plots.activation_functions(tmp_path / "act.png")
    fig = unsaved["act.png"]
    assert tuple(fig.get_size_inches()) == pytest.approx((15, 3.4)) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["relu", "sigmoid", "tanh", "softmax"]
    relu_x, relu_y = line_data(fig.axes[0])[0]
    assert relu_y == pytest.approx([max(0.0, x) for x in relu_x])


def test_reliability_diagram_dots_grow_with_their_bins_rows(tmp_path, figures):
    """Each series is a line through its non-empty bins, with a dot per bin whose area grows with the bin's
    rows (a one-row bin is a small dot, not a swing of the curve); below, the rows per bin as bars."""
    from torchclf.metrics import reliability_bins

    rng = np.random.default_rng(0)
    score = np.r_[rng.uniform(0.9, 1.0, 200), 0.35, 0.72]  # two bins of a single row each, both wrong
    outcome = np.r_[np.ones(200), 0, 0]
    sharper = reliability_bins(np.minimum(score * 1.02, 1.0), outcome, n_bins=10)
    series = {"uncalibrated": reliability_bins(score, outcome, n_bins=10), "calibrated": sharper}
    path = plots.reliability_diagram(series, tmp_path / "rel.png", title="t")
    fig = figures["rel.png"]
    check_png(path, fig, (5.5, 6.2), 2)
    ax, hist = fig.axes
    most = max(int(b["count"].max()) for b in series.values())
    for (name, bins), line, dots in zip(series.items(), ax.get_lines()[1:], ax.collections, strict=True):
        full = bins["count"] > 0
        assert list(line.get_xdata()) == list(bins["confidence"][full]) and line.get_label() == name
        np.testing.assert_array_equal(dots.get_offsets(), np.c_[bins["confidence"][full], bins["frequency"][full]])
        np.testing.assert_allclose(dots.get_sizes(), 6 + 84 * bins["count"][full] / most)
    sizes = ax.collections[0].get_sizes()
    assert sizes.min() == pytest.approx(6 + 84 / most) and sizes.max() == pytest.approx(90.0)
    assert [int(p.get_height()) for p in hist.patches[:10]] == list(series["uncalibrated"]["count"])

"""``report.html``: one self-contained page per run folder, readable offline.

The page holds the metrics of every split, per-class precision/recall/F1, the
confusion matrix, learning curves, ROC and precision-recall curves where they
are defined, the decision boundary over two features, a few rows followed
from logits to labels, the configuration and a summary of the data. Pictures
are embedded as base64 ``data:`` URIs and the styling is inline, so the file
needs no network and no other file.

Everything is rebuilt from the run folder (``model.json``, ``metrics.json``,
``history.csv``, ``plots/``) plus, for the curves, the boundary and the
explained rows, labelled rows passed in (the test split when called while
training; see :func:`torchclf.explain.held_out_rows` when rebuilding).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from torchclf.errors import TorchclfError

REPORT = "report.html"
MAX_TABLE_CLASSES = 20  # beyond this many classes the confusion matrix is a picture only

#: (id, heading) of every section, in page order; each is always present.
SECTIONS = (
    ("summary", "Summary"),
    ("metrics", "Metrics"),
    ("per-class", "Per-class precision, recall and F1"),
    ("confusion-matrix", "Confusion matrix"),
    ("learning-curves", "Learning curves"),
    ("roc-pr", "ROC and precision-recall curves"),
    ("calibration", "Calibration and thresholds"),
    ("decision-boundary", "Decision boundary"),
    ("explain", "Logits -> probabilities -> labels"),
    ("configuration", "Configuration"),
    ("data", "Data"),
)

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#666;font-style:italic}.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
nav a{margin-right:.8rem}
"""


# ----- small HTML helpers ----------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "nan" if np.isnan(value) else f"{float(value):.4f}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table: numbers right-aligned to 4 decimals, text left-aligned and escaped."""
    first = rows[0] if rows else []
    align = [("" if j < len(first) and _is_number(first[j]) else ' class="l"') for j in range(len(header))]
    head = "".join(f"<th{align[j]}>{_e(h)}</th>" for j, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td>{_num(v)}</td>" if _is_number(v) else f'<td class="l">{_e("-" if v is None else v)}</td>'
                         for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(path: Path, alt: str) -> str:
    """An ``<img>`` holding the PNG at ``path`` as a base64 data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# ----- reading the run folder ----------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TorchclfError(f"{path}: damaged JSON ({type(exc).__name__}); re-train the run") from None


def read_history(path: Path) -> list[dict]:
    """``history.csv`` back into the engine's list of per-epoch dicts (empty cells -> None)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (None if v in ("", None) else float(v)) for k, v in row.items()} for row in rows]


# ----- pictures the report needs beyond plots/ -------------------------------------
def boundary_fixed_values(predictor, features: tuple[str, str]) -> dict:
    """Values for every other column: the training median (numeric) or most frequent category."""
    fixed = {}
    for spec in predictor.preprocessor.columns:
        if spec.name in features:
            continue
        fixed[spec.name] = spec.median if spec.kind == "numeric" else (spec.categories[0] if spec.categories else "")
    return fixed


def check_boundary_features(predictor, features) -> tuple[str, str] | None:
    """The two numeric columns to draw over, or None when the model cannot be drawn so.

    ``features`` None picks the only two columns of two-column data.
    """
    numeric = [c.name for c in predictor.preprocessor.columns if c.kind == "numeric"]
    if features is None:
        names = predictor.preprocessor.feature_names
        return (names[0], names[1]) if len(names) == 2 and len(numeric) == 2 else None
    features = tuple(features)
    if len(features) != 2 or features[0] == features[1]:
        raise TorchclfError(f"--features: expected two different column names such as x0,x1, got {','.join(features)}")
    bad = [f for f in features if f not in numeric]
    if bad:
        raise TorchclfError(f"--features: {bad} not numeric feature column(s) of this model; "
                            f"choose from {', '.join(numeric[:30]) or '(none)'}")
    return features


def boundary_plot(predictor, rows, features: tuple[str, str], path: Path, *, resolution: int = 200,
                  title: str = "held-out rows") -> Path:
    """Decision regions over two columns with the others held at their training median/mode.

    Parameters
    ----------
    rows : Dataset
        Labelled rows drawn as points (and setting the plotted range).
    resolution : int
        Grid points per axis (the picture evaluates resolution**2 rows).
    """
    from torchclf import plots

    if not 10 <= resolution <= 1000:
        raise TorchclfError(f"--resolution: expected 10 to 1000 grid points per axis, got {resolution}")
    fixed = boundary_fixed_values(predictor, features)
    labels = predictor.labels.encode(rows.target, "decision boundary rows")
    return plots.decision_boundary(predictor.predict_proba, [(title, rows.features, labels)], features,
                                   predictor.task.kind, [str(c) for c in predictor.classes], path,
                                   fixed=fixed or None, resolution=resolution)


# ----- sections -------------------------------------------------------------------
def _metrics_section(metrics: dict, kind: str) -> str:
    from torchclf.task import default_metric_names

    if not metrics:
        return note("metrics.json is missing")
    names = [n for n in ["n_samples", *default_metric_names(kind)] if any(n in m for m in metrics.values())]
    rows = [[split, *[m.get(n) for n in names]] for split, m in metrics.items()]
    sampled = [f"{split}: scored on a seeded sample of {m['sampled']['rows']:,} of its {m['sampled']['of']:,} rows"
               for split, m in metrics.items() if isinstance(m, dict) and isinstance(m.get("sampled"), dict)]
    return table(["split", *names], rows) + note("accuracies are fractions in [0, 1]") + "".join(map(note, sampled))


def _final_split(metrics: dict) -> tuple[str, dict]:
    for split in ("test", "validation", "train"):
        if split in metrics:
            return split, metrics[split]
    return "", {}


def _per_class_section(metrics: dict) -> str:
    split, m = _final_split(metrics)
    per_class = m.get("per_class") or {}
    if not per_class:
        return note("no per-class metrics recorded")
    rows = [[name, v["precision"], v["recall"], v["f1"], v["support"]] for name, v in per_class.items()]
    return f"<p>On the {_e(split)} rows.</p>" + table(["class", "precision", "recall", "F1", "support"], rows)


def _confusion_section(metrics: dict, classes: list[str], folder: Path, tmp: Path) -> str:
    from torchclf import plots

    split, m = _final_split(metrics)
    cm = m.get("confusion_matrix")
    if cm is None:
        return note("not defined for multilabel problems (see the per-label scores above)")
    png = folder / "plots" / "confusion_matrix.png"
    if not png.is_file():
        png = plots.confusion_matrix(cm, classes, tmp / "confusion_matrix.png", title=f"Confusion matrix ({split})")
    intro = f"<p>On the {_e(split)} rows: true classes as rows, predicted as columns.</p>"
    if len(classes) > MAX_TABLE_CLASSES:  # k*k cells of HTML would outweigh the rest of the page
        return (intro + image(png, "confusion matrix")
                + note(f"{len(classes)} classes: the counts are in metrics.json ({split}.confusion_matrix), "
                       f"shown as a table up to {MAX_TABLE_CLASSES} classes"))
    rows = [[f"true {classes[i]}", *row] for i, row in enumerate(cm)]
    return intro + table(["", *[f"pred {c}" for c in classes]], rows) + image(png, "confusion matrix")


def _learning_section(folder: Path, tmp: Path, predictor) -> str:
    from torchclf import plots

    png = folder / "plots" / "learning_curves.png"
    if not png.is_file():
        history = read_history(folder / "history.csv")
        if not history:
            return note("history.csv is missing")
        png = plots.learning_curves(history, tmp / "learning_curves.png")
    return image(png, "learning curves") + _learning_caption(predictor)


def _learning_caption(predictor) -> str:
    """Why the training curve may lie above the validation curve: what the training loss includes."""
    model, train = predictor.config.model, predictor.config.train
    parts, lacks = [], []
    if train.label_smoothing:
        floor = predictor.task.smoothed_loss_floor(train.label_smoothing)
        parts.append(f"it is computed against targets smoothed by {train.label_smoothing:g}, so it cannot fall "
                     f"below {floor:.3f} (their entropy)")
        lacks.append("smoothing")
    if model.dropout:
        parts.append(f"it is averaged over each epoch's steps with dropout {model.dropout:g} on")
        lacks.append("dropout")
    if not parts:
        return ""
    return note("The training loss is what the network learns from: " + ", and ".join(parts) + ". The validation "
                f"loss, measured after each epoch, has {'neither' if len(lacks) == 2 else 'no ' + lacks[0]}, so the "
                "training curve can lie above it with nothing wrong.")


def _scored(predictor, rows, rows_name: str):
    """A function returning (labels, logits) of ``rows``, predicted on its first call only (sections share it)."""
    memo = []

    def get():
        if not memo:
            memo.append((predictor.labels.encode(rows.target, rows_name), predictor.predict_logits(rows.features, rows_name)))
        return memo[0]

    return get


def _curves_section(predictor, rows, rows_name: str, tmp: Path, scored=None) -> str:
    from torchclf import plots

    y, logits = (scored or _scored(predictor, rows, rows_name))()
    proba = predictor.probabilities(logits)
    png = plots.roc_pr_curves(y, proba, [str(c) for c in predictor.classes], tmp / "roc_pr.png",
                              title=f"on {rows_name}")
    if png is None:
        return note(f"undefined: no class has both positive and negative rows in {rows_name}")
    return f"<p>One-vs-rest per class (per label for multilabel), on {_e(rows_name)}.</p>" + image(png, "ROC and PR curves")


def _calibration_table(metrics: dict) -> str:
    """ECE, Brier score and log loss before and after calibration, per split, from metrics.json."""
    found = [(split, m["calibration"]) for split, m in metrics.items()
             if isinstance(m, dict) and isinstance(m.get("calibration"), dict)]
    if not found:
        return note("metrics.json holds no calibration scores (a run saved before calibration existed)")
    names = ("ece", "brier", "log_loss")
    header = ["split", "method"] + [f"{n} {when}" for n in names for when in ("before", "after")]
    rows = []
    for split, c in found:
        before, after = c.get("uncalibrated") or {}, c.get("calibrated") or {}
        rows.append([split, c.get("method") or "none",
                     *[v for n in names for v in (before.get(n), after.get(n))]])
    notes = sorted({n for _, c in found for n in c.get("notes") or []})
    return table(header, rows) + "".join(note(n) for n in notes)


def _calibration_section(predictor, metrics: dict, rows, rows_name: str, tmp: Path, scored=None) -> str:
    from torchclf import metrics as scores
    from torchclf import plots
    from torchclf.calibration import threshold_curve

    cal = predictor.calibration
    text = ("<p>Calibration: " + (f"{_e(cal.method)} scaling fitted on the validation rows"
                                  if cal is not None else "none") + ". Expected calibration error (ECE) over "
            f"{scores.ECE_BINS} equal-width bins; Brier score and log loss as in metrics.json.</p>")
    parts = [text, _calibration_table(metrics)]
    if rows is None:
        parts.append(note("no labelled rows: run `torchclf report RUN DATA` to draw the reliability diagram"))
        return "".join(parts)
    task = predictor.task
    y, logits = (scored or _scored(predictor, rows, rows_name))()
    series = {}
    for name, proba in (("uncalibrated", predictor.probabilities(logits, False)),
                        *((("calibrated", predictor.probabilities(logits)),) if cal is not None else ())):
        score, outcome = scores.calibration_pairs(task, y, proba)
        ece = scores.expected_calibration_error(score, outcome)
        series[f"{name} (ECE {ece:.4f})"] = scores.reliability_bins(score, outcome)
    multiclass = not task.takes_threshold
    png = plots.reliability_diagram(series, tmp / "reliability.png", title=f"Reliability on {rows_name}",
                                    what="top class probability" if multiclass else "predicted probability",
                                    observed="accuracy" if multiclass else "fraction positive")
    parts.append(image(png, "reliability diagram"))
    if multiclass:
        parts.append(note("multiclass labels are the most probable class: no threshold"))
        return "".join(parts)
    chosen = task.threshold if predictor.threshold is None else predictor.threshold
    how = (f"chosen for {predictor.threshold_objective} on the validation rows"
           if predictor.threshold is not None else "the default; choose one with `torchclf train --threshold f1`")
    shown = np.round(np.atleast_1d(chosen), 4).tolist()
    parts.append(f"<p>Decision threshold {_e(shown[0] if len(shown) == 1 else shown)}: {_e(how)}. "
                 f"Metrics against the threshold on {_e(rows_name)}:</p>")
    names = [str(predictor.classes[-1])] if task.n_outputs == 1 else [str(c) for c in predictor.classes]
    curve = threshold_curve(y, predictor.probabilities(logits))
    png = plots.threshold_curves(curve, chosen, names, tmp / "thresholds.png")
    parts.append(image(png, "metrics against the threshold"))
    return "".join(parts)


def _boundary_section(predictor, rows, rows_name, folder, tmp, features, resolution) -> str:
    if predictor.task.kind == "multilabel":
        return note("not drawn for multilabel problems")
    chosen = check_boundary_features(predictor, features)
    if chosen is None:
        numeric = [c.name for c in predictor.preprocessor.columns if c.kind == "numeric"]
        return note("the data has more than two features: pick two numeric columns with "
                    f"`torchclf report RUN --features a,b` (numeric columns: {', '.join(numeric[:20])})")
    existing = folder / "plots" / "decision_boundary.png"
    if features is None and existing.is_file():
        return "<p>Train and test rows.</p>" + image(existing, "decision boundary")
    if rows is None:
        return note("no labelled rows to draw; pass DATA to `torchclf report`")
    png = boundary_plot(predictor, rows, chosen, tmp / "decision_boundary.png", resolution=resolution,
                        title=rows_name)
    others = len(predictor.preprocessor.columns) - 2
    text = f"Over {chosen[0]} and {chosen[1]} at {resolution}x{resolution} grid points"
    text += f"; the other {others} column(s) are held at their training median (or most frequent category)." if others else "."
    return f"<p>{_e(text)}</p>" + image(png, "decision boundary")


def _explain_section(predictor, rows, rows_name: str, n_rows: int) -> str:
    from torchclf.explain import explain_rows, pick_rows

    features, target = pick_rows(rows, n_rows)
    ex = explain_rows(predictor, features, target)
    frame = ex.to_frame()
    rows_html = table(list(frame.columns), [list(r) for r in frame.itertuples(index=False)])
    return (f"<p>{len(frame)} rows of {_e(rows_name)}. Rule: <span class=\"mono\">{_e(ex.rule)}</span>.</p>"
            + rows_html)


def _flatten(prefix: str, value) -> list[list]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    if isinstance(value, (list, tuple)):
        return [[prefix, ",".join(map(str, value)) or "(none)"]]
    return [[prefix, "-" if value is None else value]]


def _config_section(manifest: dict) -> str:
    rows = _flatten("", manifest.get("config") or {})
    rows += _flatten("task", manifest.get("task") or {})
    extra = manifest.get("extra") or {}
    for key in ("epochs_run", "best_epoch", "stop_reason", "train_seconds"):
        if key in extra:
            rows.append([key, extra[key] if extra[key] not in ("", None) else "-"])
    threads = extra.get("threads")
    if isinstance(threads, dict):  # the CPU threads training used, and why
        rows.append(["threads", f"{threads.get('threads')} ({threads.get('reason')})"])
    rows += _flatten("versions", manifest.get("versions") or {})
    return table(["setting", "value"], [[k, str(v)] for k, v in rows])


def _data_section(manifest: dict) -> str:
    summary = (manifest.get("extra") or {}).get("data") or {}
    if not summary:
        return note("no data summary recorded")
    columns = summary.get("columns") or []
    plan = (manifest.get("preprocess") or {}).get("plan")
    if plan is None:  # runs from before columns could be left out: every column was a feature
        parts = [table(["", "value"], [["source", str(summary.get("name", "-"))], ["rows", summary.get("rows")],
                                       ["feature columns", len(columns)]])]
        parts.append(f"<p>Columns: <span class=\"mono\">{_e(_listed(columns))}</span></p>")
    else:
        used = list(manifest.get("feature_names") or [])
        dates = {d["name"]: d["parts"] for d in plan.get("dates") or []}
        parts = [table(["", "value"], [["source", str(summary.get("name", "-"))], ["rows", summary.get("rows")],
                                       ["input columns", len(columns)], ["used by the model", len(used)]])]
        shown = [f"{c} (a date, as {len(dates[c])} numbers: {', '.join(dates[c])})" if c in dates else c
                 for c in used]
        parts.append(f"<p>Used: <span class=\"mono\">{_e(_listed(shown))}</span></p>")
        left = [f"{d['name']} ({'free text' if d['reason'] == 'text' else d['reason']})"
                for d in plan.get("left_out") or []]
        if left:
            parts.append("<p>Left out (a value per row, or free text: nothing a model can learn from): "
                         f"<span class=\"mono\">{_e(_listed(left))}</span></p>")
        if plan.get("drop"):
            parts.append(f"<p>Dropped as asked: <span class=\"mono\">{_e(_listed(plan['drop']))}</span></p>")
    counts = summary.get("class_counts") or {}
    if counts:
        total = sum(counts.values()) or 1
        parts.append("<h3>Class balance</h3>" + table(
            ["class", "rows", "fraction"], [[k, v, v / total] for k, v in counts.items()]))
    split_rows = summary.get("split_rows") or {}
    if split_rows:
        parts.append("<h3>Split</h3>" + table(["part", "rows"], [[k, v] for k, v in split_rows.items()]))
    return "".join(parts)


def _listed(names: list[str], most: int = 40) -> str:
    return ", ".join(names[:most]) + (f" ... ({len(names)} in all)" if len(names) > most else "")


def _tuning_choice(choice: dict) -> list[list]:
    """Rows saying how ``tune`` chose the saved trial (``choice`` of its summary)."""
    rows = [["how it was chosen", str(choice["rule"])]] if choice.get("rule") else []
    if choice.get("cross_validated"):
        losses = ", ".join(f"trial {n} {float(v):.4f}" + (" (the defaults)" if int(n) == choice.get("defaults_trial")
                                                           else "") for n, v in choice["cross_validated"].items())
        rows.append([f"{choice.get('folds')}-fold cross-validated loss on {choice.get('rows')} rows", losses])
    return rows


def _with_tuning(folder: Path, nav: str, sections: str) -> tuple[str, str]:
    """Add a "Tuning" section when the run came from ``torchclf tune`` (its ``tune/`` folder is there)."""
    tune = folder / "tune"
    if not tune.is_dir():
        return nav, sections
    try:
        summary = _read_json(tune / "summary.json")
        counts = summary.get("counts") or {}
        parts = [table(["", "value"], [
            ["study", str(summary.get("study", "-"))],
            ["trials (complete / pruned / failed)",
             f"{counts.get('complete', 0)} / {counts.get('pruned', 0)} / {counts.get('fail', 0)}"],
            ["time in trials (s)", summary.get("trial_seconds")],
            ["best trial (this run's settings)", str(summary.get("best_trial", "-"))],
            ["its validation loss", summary.get("best_value")],
            *_tuning_choice(summary.get("choice") or {}),
        ])]
        with open(tune / "trials.csv", newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["state"] == "complete" and r["value"]]
        rows.sort(key=lambda r: float(r["value"]))
        names = [k for k in (rows[0] if rows else {}) if k not in ("number", "state", "value", "note")]

        def short(text: str) -> str:  # 0.000123456789 -> 0.0001235; words and whole numbers as written
            try:
                return text if float(text).is_integer() else f"{float(text):.4g}"
            except ValueError:
                return text

        if rows:
            parts.append("<h3>Best trials</h3>" + table(
                ["trial", "validation loss", *names],
                [[int(r["number"]), float(r["value"]), *[short(r[k]) for k in names]] for r in rows[:10]]))
        for png, alt in (("history.png", "optimisation history"), ("importance.png", "parameter importances"),
                         ("curves.png", "validation loss of every trial")):
            if (tune / png).is_file():
                parts.append(image(tune / png, alt))
        parts.append(note("Trials are scored on the validation rows only; tune/trials.csv lists every trial."))
        body = "".join(parts)
    except Exception as exc:  # noqa: BLE001  a damaged summary must not cost the rest of the page
        body = note(f"could not be built ({type(exc).__name__}: {exc})")
    return (nav + '<a href="#tuning">Tuning</a>',
            sections + f'\n<section id="tuning"><h2>Tuning</h2>{body}</section>')


# ----- the page ---------------------------------------------------------------------
def build_html(folder: str | Path, predictor=None, rows=None, rows_name: str = "test rows", *,
               features: tuple[str, str] | None = None, resolution: int = 200, explain_rows: int = 5,
               name: str | None = None) -> str:
    """The report page for the run folder ``folder``, as a string.

    Parameters
    ----------
    predictor : Predictor, optional
        The run's model; loaded from ``folder`` when not given.
    rows : Dataset, optional
        Labelled held-out rows for the ROC/PR curves, the boundary points and
        the explained rows; without them those sections say what to pass.
    features : (str, str), optional
        Two numeric columns for the decision boundary (needed beyond two features).
    resolution : int
        Decision-boundary grid points per axis.
    explain_rows : int
        How many rows the logits -> probabilities -> labels table shows.
    name : str, optional
        The run's name for the title (default: the folder's name).
    """
    from torchclf.artifact import read_manifest
    from torchclf.predictor import Predictor

    folder = Path(folder)
    name = name or folder.name
    predictor = predictor or Predictor.load(folder)
    manifest = read_manifest(folder)
    metrics = _read_json(folder / "metrics.json")
    classes = [str(c) for c in predictor.classes]
    kind = predictor.task.kind
    bodies: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="torchclf-report-") as tmp_name, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib layout chatter is not the user's concern
        tmp = Path(tmp_name)
        split, final = _final_split(metrics)
        headline = f"{final.get('accuracy', float('nan')):.4f}" if "accuracy" in final else "-"
        bodies["summary"] = table(["", "value"], [
            ["run", name], ["task", f"{kind}, {len(classes)} {'labels' if kind == 'multilabel' else 'classes'}"],
            ["network", f"{manifest['n_inputs']} inputs -> hidden {list(predictor.config.model.hidden) or 'none'} "
                        f"({predictor.config.model.activation}) -> {predictor.task.n_outputs} output(s)"],
            [f"{split or 'final'} accuracy", headline],
        ])
        missing = note("no labelled rows: run `torchclf report RUN DATA` to add this section")
        scored = None if rows is None else _scored(predictor, rows, rows_name)
        builders = {
            "metrics": lambda: _metrics_section(metrics, kind),
            "per-class": lambda: _per_class_section(metrics),
            "confusion-matrix": lambda: _confusion_section(metrics, classes, folder, tmp),
            "learning-curves": lambda: _learning_section(folder, tmp, predictor),
            "roc-pr": lambda: missing if rows is None else _curves_section(predictor, rows, rows_name, tmp, scored),
            "calibration": lambda: _calibration_section(predictor, metrics, rows, rows_name, tmp, scored),
            "decision-boundary": lambda: _boundary_section(predictor, rows, rows_name, folder, tmp, features, resolution),
            "explain": lambda: missing if rows is None else _explain_section(predictor, rows, rows_name, explain_rows),
            "configuration": lambda: _config_section(manifest),
            "data": lambda: _data_section(manifest),
        }
        for sid, build in builders.items():
            try:
                bodies[sid] = build()
            except TorchclfError:
                raise  # the user's options (say, --features) are wrong: say so instead of a page
            except Exception as exc:  # noqa: BLE001  one broken picture must not cost the rest
                bodies[sid] = note(f"could not be built ({type(exc).__name__}: {exc})")
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    nav, sections = _with_tuning(folder, nav, sections)
    title = f"torchclf report: {name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body><h1>{_e(title)}</h1>"
            f"<nav>{nav}</nav>\n{sections}\n</body></html>\n")


def write_report(folder: str | Path, predictor=None, rows=None, rows_name: str = "test rows", **options) -> Path:
    """Write ``report.html`` into the run folder (to a temporary name, then renamed).

    Takes the same arguments as :func:`build_html`; returns the report's path.
    A failed write (a full disk) leaves no temporary file in the run folder
    and raises an OSError naming the report.
    """
    from torchclf.artifact import atomic_file

    folder = Path(folder)
    page = build_html(folder, predictor, rows, rows_name, **options)
    path = folder / REPORT
    with atomic_file(path, newline=None) as fh:
        fh.write(page)
    return path

"""Turn the suite's results into Markdown tables, a target check and a plot."""

from __future__ import annotations

import os
import re
from pathlib import Path

from benchmarks.common import table

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _engine(train: dict) -> dict:
    return next(r for r in train["results"] if r["name"] == "torchclf engine")


def training_section(train: dict) -> str:
    ours = _engine(train)
    rows = []
    for r in train["results"]:
        rows.append([r["name"], r["samples_per_s_wall"], r["samples_per_s_cpu"],
                     f"{ours['samples_per_s_wall'] / r['samples_per_s_wall']:.2f}x",
                     f"{ours['samples_per_s_cpu'] / r['samples_per_s_cpu']:.2f}x",
                     f"{r['accuracy']:.4f}", r["note"]])
    return (f"### 1. Training throughput: MLP 32-256-256-4, Adam, batch 256, {train['rows']:,} rows, "
            f"{train['epochs']} epoch(s), median of {train['repeats']}\n\n"
            + table(["contender", "samples/s (wall)", "samples/s (CPU time)", "torchclf is (wall)",
                     "torchclf is (CPU)", "train accuracy", "note"], rows))


def tiny_section(tiny: dict) -> str:
    base = tiny["results"][0]
    rows = [[r["name"], r["wall"], r["cpu"], f"{base['wall'] / r['wall']:.2f}x", f"{base['cpu'] / r['cpu']:.2f}x",
             f"{r['train_accuracy']:.3f}", f"{r['test_accuracy']:.3f}"] for r in tiny["results"]]
    return (f"### 2. The tutorial's tiny workload: circles, {tiny['epochs']} full-batch epochs, "
            f"median of {tiny['repeats']}\n\nThe circle-v2 preset's model here: `{tiny['preset_model']}`.\n\n"
            + table(["loop", "seconds (wall)", "seconds (CPU)", "speed-up vs tutorial (wall)",
                     "speed-up (CPU)", "train accuracy", "test accuracy"], rows))


def target_section(target: dict) -> str:
    rows = [[r["dataset"], f"{r['target']:.0%}", r["who"], f"{r['reached']}/{r['of']}", r["seconds"], r["epochs"],
             f"{r['best_val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}"] for r in target["results"]]
    return (f"### 3. Time to a target validation accuracy with defaults, median of {target['repeats']}\n\n"
            "Seconds are training time until the end of the first epoch at or above the target "
            "(preprocessing and the split excluded for both).\n\n"
            + table(["dataset", "target", "who", "reached", "seconds", "epochs", "best val. accuracy",
                     "test accuracy"], rows))


def predict_section(p: dict) -> str:
    rows = [["torchclf.load(run).predict_proba(DataFrame)", p["predict_proba_rows_per_s_wall"],
             p["predict_proba_rows_per_s_cpu"]],
            ["bare network on a ready tensor in 65,536-row chunks (reference)", p["bare_rows_per_s_wall"], p["bare_rows_per_s_cpu"]]]
    return (f"### 4. Prediction, {p['rows']:,} rows, median of {p['repeats']}\n\n"
            + table(["path", "rows/s (wall)", "rows/s (CPU time)"], rows)
            + f"\n\nSingle row through `predict_proba` (one-row DataFrame, preprocessing included), "
            f"{p['single_calls']} calls: median **{p['single_row_ms_median']:.2f} ms**, "
            f"95th percentile {p['single_row_ms_p95']:.2f} ms.")


def startup_section(s: dict) -> str:
    rows = [[f"`{s['command']} --help`", s["help_wall"], s["help_cpu"]],
            [f"`{s['command']} train {s['train_args'] if s['train_args'] != '(none)' else ''}`".replace(" `", "`"),
             s["train_wall"], s["train_cpu"]]]
    return (f"### 5. Command start-up (child processes), median of {s['help_repeats']} / {s['train_repeats']}\n\n"
            + table(["command", "seconds (wall)", "seconds (CPU)"], rows)
            + f"\n\n`python -X importtime -c 'import torchclf.cli'`: {s['import_cli_seconds']:.3f} s cumulative.")


def memory_section(m: dict) -> str:
    rows = [[r["name"], r["data_mb"], r["rss_after_data_mb"], r["peak_mb"], r["extra_mb"],
             f"{r['extra_copies']:.2f}", r["seconds"]] for r in m["results"]]
    return (f"### 6. Peak memory training on {m['rows']:,} rows x {m['features']} float64 features (1 epoch)\n\n"
            + table(["contender", "data (MB)", "RSS with data loaded (MB)", "peak RSS (MB)",
                     "peak above data (MB)", "... in copies of the float64 data", "seconds"], rows))


def precision_section(p: dict) -> str:
    rows = [[r["device"], r["precision"], r["batch_size"], "yes" if r["compile"] else "no", r["samples_per_s"],
             f"{r['held_out_accuracy']:.4f}", r["first_round_seconds"]] for r in p["results"]]
    return (f"### 7. Precision and compile flags: benchmark 1's model, {p['rows']:,} rows, {p['epochs']} epochs, "
            f"median of {p['repeats']} after one uncounted round\n\n"
            + table(["device", "precision", "batch", "compile", "samples/s (wall)", "held-out accuracy",
                     "first round (s)"], rows))


def targets_section(res: dict) -> str:
    rows = []
    if "training" in res:
        t = res["training"]
        ours = _engine(t)
        for name in ("plain DataLoader loop", "skorch NeuralNetClassifier", "scikit-learn MLPClassifier"):
            other = next((r for r in t["results"] if r["name"] == name), None)
            if other is None:
                rows.append([f"training >= 2x {name}", "not measured (not installed)", ""])
                continue
            ratio = ours["samples_per_s_cpu"] / other["samples_per_s_cpu"]
            gap = abs(ours["accuracy"] - other["accuracy"]) * 100
            rows.append([f"training >= 2x {name}, accuracy within 0.5 point",
                         f"{ratio:.2f}x (CPU time), accuracy gap {gap:.2f} point",
                         "met" if ratio >= 2 and gap <= 0.5 else "not met"])
    if "tiny" in res:
        base, ours = res["tiny"]["results"][0], res["tiny"]["results"][1]
        ratio = base["cpu"] / ours["cpu"]
        gap = abs(base["train_accuracy"] - ours["train_accuracy"]) * 100
        rows.append(["tiny workload >= 2x the tutorial's loop, same accuracy",
                     f"{ratio:.2f}x (CPU time), accuracy gap {gap:.1f} point",
                     "met" if ratio >= 2 and gap <= 0.5 else "not met"])
    if "predict" in res:
        p = res["predict"]
        rows.append([">= 500k rows/s prediction", f"{p['predict_proba_rows_per_s_cpu']:,.0f} rows/s (CPU time)",
                     "met" if p["predict_proba_rows_per_s_cpu"] >= 500_000 else "not met"])
        rows.append(["single row < 2 ms", f"{p['single_row_ms_median']:.2f} ms median",
                     "met" if p["single_row_ms_median"] < 2 else "not met"])
    if "startup" in res:
        s = res["startup"]
        rows.append(["`torchclf --help` < 0.3 s", f"{s['help_wall']:.2f} s wall, {s['help_cpu']:.2f} s CPU",
                     "met" if s["help_wall"] < 0.3 else ("met in CPU time" if s["help_cpu"] < 0.3 else "not met")])
    return "### Targets\n\n" + table(["target", "measured", "verdict"], rows)


def machine_section(info: dict, mode: str) -> str:
    facts = ", ".join(f"{k}: {v}" for k, v in info.items())
    return f"Run: `python -m benchmarks.run {mode}`. {facts}."


def markdown(res: dict, mode: str, plot_name: str | None) -> str:
    parts = [machine_section(res["machine"], mode), targets_section(res)]
    for key, fn in (("training", training_section), ("tiny", tiny_section), ("target", target_section),
                    ("predict", predict_section), ("startup", startup_section), ("memory", memory_section),
                    ("precision", precision_section)):
        if key in res:
            parts.append(fn(res[key]))
    if plot_name:
        parts.append(f"![training throughput and the tiny workload]({plot_name})")
    return "\n\n".join(parts) + "\n"


def plot(res: dict, path: Path) -> Path | None:
    """Bars: training samples per CPU-second, and seconds for the tiny workload."""
    if "training" not in res and "tiny" not in res:
        return None
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("training", "tiny") if k in res]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        rows = res[key]["results"]
        names = [r["name"] for r in rows]
        values = [r["samples_per_s_cpu"] for r in rows] if key == "training" else [r["cpu"] for r in rows]
        colors = ["tab:orange" if n.startswith("torchclf") else "tab:gray" for n in names]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), [re.sub(r"(.{28}\S*) ", r"\1\n", n) for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("samples per CPU-second (higher is better)" if key == "training"
                      else "CPU seconds (lower is better)")
        ax.set_title("MLP 32-256-256-4 training, 1 thread" if key == "training"
                     else f"tutorial workload, {res['tiny']['epochs']} epochs")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_docs(doc: Path, generated: str) -> None:
    """Replace the text between the results markers of ``doc`` (or append the markers)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n\n"
    block = f"{START}\n{generated}{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_name(f".{doc.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)

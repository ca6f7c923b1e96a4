"""The ``torchclf`` command: argument handling only; the work happens in :mod:`torchclf.api`.

Heavy libraries are imported inside the commands so that ``torchclf --help``
starts quickly. Errors meant for the user (:class:`TorchclfError`) print as one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from torchclf.config import CONFIRM_FOLDS, PRUNERS, TASKS  # a leaf module: the help texts take their names from it

# The files DATA may name, for the help texts (torchclf.data.sources reads them; a test checks that every
# suffix it reads is named here, without importing pandas for --help).
TABLE_FILE = "a CSV (also .csv.gz/.bz2/.xz/.zip) or Parquet file"

app = typer.Typer(
    name="torchclf",
    help="Train, evaluate and use PyTorch neural-network classifiers on tabular data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich imports ~0.3 s of modules
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from torchclf import __version__

        typer.echo(f"torchclf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _STATE["debug"] = debug


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_whole(printer, table) -> None:
    """Print ``table``; into a file or a pipe as wide as its cells need (a terminal's width cuts cells short
    with "…", a file has no width to keep to), on a terminal at the terminal's width."""
    if not printer.is_terminal:
        from rich.measure import Measurement

        needed = Measurement.get(printer, printer.options.update_width(100_000), table).maximum
        printer.width = max(printer.width, needed)
    printer.print(table)


class Interrupted(Exception):
    """Ctrl-C, carried past typer (which would turn a KeyboardInterrupt into a bare exit code) to :func:`main`."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def table_options(fn):
    """Give a command one option per parameter of :data:`torchclf.config.PARAMS`.

    The flags, their help texts and defaults come from the table, so a
    parameter added there reaches the command line without editing this
    file. The command receives the given ones (None: not given) as its
    ``settings`` argument.
    """
    import functools
    import inspect

    from torchclf.config import PARAMS

    def annotation(p):
        if p.kind == "bool":
            return Optional[bool]
        if p.kind == "names":
            return Optional[List[str]]  # a repeatable flag: --drop a --drop b
        if p.none is None and p.kind in ("int", "float"):
            return Optional[int] if p.kind == "int" else Optional[float]
        return Optional[str]  # layer sizes, choices, and numbers with a word for None ("full", "auto")

    signature = inspect.signature(fn, eval_str=True)
    own = [q for q in signature.parameters.values() if q.name != "settings"]
    added = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation(p),
                               default=typer.Option(None, p.cli_flag, help=p.help_text(), show_default=False,
                                                    **({"metavar": "COL"} if p.kind == "names" else {})))
             for p in PARAMS]

    @functools.wraps(fn)
    def command(**kwargs):
        settings = {p.name: kwargs.pop(p.name) for p in PARAMS}
        # A repeatable flag that was not given arrives as an empty list: not given, like the others.
        settings = {name: None if value in ([], ()) else value for name, value in settings.items()}
        return fn(**kwargs, settings=settings)

    command.__signature__ = signature.replace(parameters=own + added)
    command.__annotations__ = {q.name: q.annotation for q in own + added}
    return command


def _default(name: str) -> str:
    """A parameter's default as command-line text, for help texts of options outside the table."""
    from torchclf.config import PARAM

    return PARAM[name].format(PARAM[name].default)


def build_config(preset: str | None, task: str, settings: dict):
    """Flags -> RunConfig: the preset's values, then every flag that was given (parsed by its table row)."""
    from torchclf.api import make_config
    from torchclf.config import PARAM, by_section, check_held_out

    # Checked here as well as by the configuration, so that a value out of range names the flag that gave it.
    given = {name: PARAM[name].check(PARAM[name].parse(value)) for name, value in settings.items() if value is not None}
    if {"test_size", "validation_size"} & given.keys():  # the rule over both, naming the flags as typed
        base = make_config(preset, task=task).data
        check_held_out(given.get("test_size", base.test_size), given.get("validation_size", base.validation_size),
                       (PARAM["test_size"].cli_flag, PARAM["validation_size"].cli_flag))
    sections = by_section(given)
    return make_config(preset, task=task, model=sections["model"], train=sections["train"], data=sections["data"])


def print_metrics(metrics: dict, kind: str, title: str = "Metrics") -> None:
    from rich.table import Table

    from torchclf.metrics import headline

    table = Table(title=title)
    table.add_column("split")
    names = list(headline(next(iter(metrics.values())), kind))
    for name in names:
        table.add_column(name, justify="right")
    for split, values in metrics.items():
        table.add_row(split, *[f"{values[n]:.4f}" if n in values else "-" for n in names])
    _print_whole(_console(), table)


# ----- commands --------------------------------------------------------------------
@app.command()
@table_options
def train(
    data: Optional[str] = typer.Argument(None, help=f"Rows to train on: {TABLE_FILE} or a built-in dataset (see `torchclf datasets`); spec options like moons:noise=0.07. (default: circles)"),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column; repeat for several 0/1 columns (multilabel)."),
    task: str = typer.Option("auto", help=", ".join(TASKS) + "."),
    label_sep: Optional[str] = typer.Option(None, help="The target column holds labels joined by this separator (multilabel)."),
    test: Optional[Path] = typer.Option(None, help="A separate labelled test file (otherwise a seeded part of DATA)."),
    out: Optional[Path] = typer.Option(None, help="Run folder to create (default: a new folder under runs/)."),
    preset: Optional[str] = typer.Option(None, help="circle-v0, circle-v1, circle-v2, blob or default; other flags override it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or log lines."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=0, help="Save a resumable checkpoint every N epochs in OUT.checkpoints/ (0: only when Ctrl-C is pressed). (default: 0)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run (its --out folder) from its newest checkpoint, with its own data and settings."),
    settings: dict = None,
) -> None:
    """Train a classifier, print its metrics and write a run folder."""
    from torchclf.errors import TorchclfError

    if resume is None:
        from torchclf.data.sources import check_source

        data = data or "circles"
        check_source(data)  # a mistyped name fails before torch is imported
    from torchclf import api, distributed

    if resume is not None:
        given = [target, label_sep, test, out, preset, *settings.values()]
        if data is not None or task != "auto" or any(v not in (None, [], ()) for v in given):
            raise TorchclfError("--resume RUN continues with the run's own data and settings; "
                                "drop the other options (only --quiet and --checkpoint-every may be given)")
        out_dir = resume
        result = _interruptible(lambda: api.resume(resume, checkpoint_every=checkpoint_every, verbose=not quiet))
        data = result.data_summary.get("name", str(resume))
    else:
        spec = api.RunSpec(data, list(target) if target else None, str(test) if test else None, label_sep,
                           build_config(preset, task, settings))
        out_dir = out or api.default_run_dir(spec.name)
        result = _interruptible(lambda: api.run(spec, out=out_dir, verbose=not quiet,
                                                checkpoint_every=checkpoint_every or 0))
    if quiet and result.stop_reason.startswith("training diverged"):
        warnings.warn(result.stop_reason)
    if not distributed.is_main():
        return  # under torchrun, rank 0 reports for the whole job
    kind = result.predictor.task.kind
    print_metrics(result.metrics, kind, title=f"{data}: {kind}, {len(result.history)} epochs, {result.seconds:.1f}s")
    typer.echo(f"run folder: {out_dir}")


def _interruptible(work):
    """Run ``work``; Ctrl-C becomes :class:`Interrupted` carrying how to resume, if a checkpoint was saved."""
    from torchclf.checkpoint import TrainingInterrupted

    try:
        return work()
    except TrainingInterrupted as exc:
        raise Interrupted(str(exc)) from None


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    data: str = typer.Argument(..., help=f"Labelled rows: {TABLE_FILE} or a built-in dataset."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s) (default: the run's)."),
    json_out: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
) -> None:
    """Print the metrics of a saved run on labelled data."""
    import json

    from torchclf import api

    predictor = api.load(run)
    dataset = api.as_dataset(data, list(target or predictor.target_columns), label_sep=predictor.label_sep)
    metrics = api.evaluate(predictor, dataset)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        print_metrics({Path(data).name: metrics}, predictor.task.kind, title=f"{run} on {data}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    data: str = typer.Argument(..., help=f"Rows to predict: {TABLE_FILE} or a built-in dataset."),
    out: Optional[Path] = typer.Option(None, help="File to write: Parquet for .parquet/.pq, compressed CSV for "
                                       ".csv.gz/.csv.bz2/.csv.xz, else CSV; or - for CSV on standard output (the "
                                       "default)."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold in (0, 1) for binary and multilabel "
                                              "models, instead of the one saved with the run (default 0.5)."),
    keep: Optional[List[str]] = typer.Option(None, "--keep", metavar="COL", help="Input column to copy into the "
                                             "output first, such as an identifier; repeat for several."),
    label_only: bool = typer.Option(False, "--label-only", help="Write only the prediction column (and --keep's)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K", help="Multiclass: write the K most probable "
                                        "classes and their probabilities (top1, top1_proba, ...) instead of every "
                                        "class's."),
    decimals: Optional[int] = typer.Option(None, "--decimals", metavar="N",
                                           help="Round the probabilities to N decimals."),
) -> None:
    """Predict labels and probabilities for new rows, in input order, a chunk of rows at a time."""
    import os

    from torchclf import api
    from torchclf.errors import TorchclfError
    from torchclf.predict_file import Output, PredictionWriter

    to_stdout = out is None or str(out) == "-"
    if not to_stdout:
        # Where the predictions would really land (through symlinks): never onto what this command reads.
        real = Path(os.path.realpath(out))
        if Path(data).is_file() and (real == Path(os.path.realpath(data))
                                     or (real.exists() and os.path.samefile(real, data))):
            raise TorchclfError(f"--out {out}: is the input file {data}; writing the predictions there would "
                                "destroy it; choose another file")
        folder = Path(os.path.realpath(run))
        if real == folder or folder in real.parents:
            raise TorchclfError(f"--out {out}: lies inside the run folder {run}, whose files the model is; "
                                "choose a file outside it")
    target = "standard output" if to_stdout else str(out)
    writer = None
    try:
        predictor = api.load(run)
        if threshold is not None:
            predictor.set_threshold(threshold)
        output = Output(keep=tuple(keep or ()), label_only=label_only, top_k=top_k, decimals=decimals)
        writer = PredictionWriter(predictor, data, output)
        # A file is replaced in one step, when complete; a pipe or a device such as /dev/null is written directly.
        rows = writer.write(None if to_stdout else out)
    except (KeyboardInterrupt, Terminated) as exc:
        printing = to_stdout and writer is not None and writer.started
        what = "standard output holds only part of the predictions" if printing else f"nothing was written to {target}"
        raise (Interrupted(what) if isinstance(exc, KeyboardInterrupt) else Terminated(what)) from None
    if not to_stdout:
        typer.echo(f"wrote {rows} predictions to {out}", err=True)


@app.command()
def datasets() -> None:
    """List the built-in datasets (generated or bundled; nothing is downloaded)."""
    from rich.table import Table

    from torchclf.data.builtin import describe_builtin

    table = Table(title="Built-in datasets")
    for col in ("name", "description", "parameters (name:key=value,...)"):
        table.add_column(col)
    for row in describe_builtin():
        table.add_row(*row)
    _print_whole(_console(), table)


# ----- the lab: compare, report, explain -------------------------------------------
def parse_features(text: str | None) -> tuple[str, str] | None:
    """``"a,b"`` -> ("a", "b"): the two columns a decision boundary is drawn over."""
    if text is None:
        return None
    from torchclf.errors import TorchclfError

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if len(parts) != 2:
        raise TorchclfError(f"--features: expected two column names such as x0,x1, got {text!r}")
    return parts


def variant_config(name: str, words: list[str], shared: dict):
    """A variant's flags, parsed by the ``train`` command's own parser, -> RunConfig.

    Every table parameter is honoured; ``shared`` holds the compare-level
    values of the parameters set once for all variants (the seed and split
    sizes), which a variant may not set itself.
    """
    from torchclf.config import PARAMS
    from torchclf.errors import TorchclfError

    command = typer.main.get_command(app).commands["train"]
    try:
        params = command.make_context("train", list(words), resilient_parsing=False).params
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # a usage error of typer's bundled click
            raise
        raise TorchclfError(f"variant {name!r}: {exc.format_message()} (variants take train's model and "
                            "training flags, see `torchclf train --help`)") from None
    defaults = {p.name: p.default for p in command.params}
    once = {"data": "DATA", "target": "--target", "label_sep": "--label-sep", "test": "--test", "out": "--out",
            "resume": "--resume", "checkpoint_every": "--checkpoint-every",
            **{p.name: p.cli_flag for p in PARAMS if p.shared}}
    for key, flag in once.items():
        if params.get(key) not in (None, (), []) and params.get(key) != defaults.get(key):
            raise TorchclfError(f"variant {name!r}: {flag} is set once for the whole comparison (on compare), "
                                "so that every variant sees the same rows and seed")
    settings = {p.name: params.get(p.name) for p in PARAMS}
    settings.update(shared)
    try:
        return build_config(params.get("preset"), params.get("task") or "auto", settings)
    except TorchclfError as exc:
        raise TorchclfError(f"variant {name!r}: {exc}") from None


@app.command()
def compare(
    data: str = typer.Argument("circles", help=f"Labelled rows: {TABLE_FILE} or a built-in dataset, as for train."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="NAME:FLAGS with train's model/training flags, e.g. \"deeper:--hidden 64,64,64 --epochs 200\"; repeat. Default: the tutorial's study circle-v0 -> circle-v1 -> circle-v2 -> default."),
    variants_file: Optional[Path] = typer.Option(None, "--file", help="A TOML file with a [variants] table of name = \"flags\" lines (after any --variant)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s), as for train."),
    label_sep: Optional[str] = typer.Option(None, help="Multilabel separator, as for train."),
    out: Optional[Path] = typer.Option(None, help="Folder to create (default: a new folder under runs/)."),
    seed: Optional[int] = typer.Option(None, help=f"One seed for every variant's split, initialisation and shuffling. (default: {_default('seed')})"),
    test_size: Optional[float] = typer.Option(None, help=f"Fraction held out for test, shared. (default: {_default('test_size')})"),
    val_size: Optional[float] = typer.Option(None, help=f"Fraction held out for validation, shared. (default: {_default('validation_size')})"),
    features: Optional[str] = typer.Option(None, help="Two numeric columns a,b for the boundary grid when the data has more than two."),
    resolution: int = typer.Option(150, help="Decision-boundary grid points per axis."),
    runs: bool = typer.Option(True, "--runs/--no-runs", help="Also write each variant's run folder (with report.html) under runs/."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch log lines."),
) -> None:
    """Train several configurations on the same split and seed and compare them side by side."""
    from rich import box
    from rich.table import Table

    from torchclf import api, lab
    from torchclf.errors import TorchclfError

    specs = [lab.parse_variant(v) for v in variant or []]
    if variants_file is not None:
        specs += lab.read_variants_file(variants_file)
    if not specs:
        specs = [(name, flags.split()) for name, flags in lab.TUTORIAL_STUDY]
    shared = {k: v for k, v in (("seed", seed), ("test_size", test_size), ("validation_size", val_size)) if v is not None}
    variants = [lab.Variant(name, variant_config(name, words, shared), " ".join(words)) for name, words in specs]
    out_dir = out or api.default_run_dir(f"compare-{data}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TorchclfError(f"{out_dir}: already exists and is not empty; choose another --out or remove it")
    console = _console(stderr=True)
    result = lab.compare(
        data, variants, out_dir, target=target or None, label_sep=label_sep, features=parse_features(features),
        resolution=resolution, save_runs=runs, verbose=not quiet,
        on_start=lambda i, v: console.print(f"[bold]variant {i + 1}/{len(variants)}: {v.name}[/] {v.flags}",
                                            soft_wrap=True),
    )
    split = result.split
    table = Table(title=f"{data}: same split and seed; {split} metrics (all in metrics.csv)", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = {"variant": "variant", "model": "hidden act", "optim": "optim lr", "epochs": "epochs",
               "parameters": "params", "seconds": "sec", f"{split}_accuracy": "acc", f"{split}_log_loss": "loss"}
    for key, title in columns.items():
        table.add_column(title, justify="left" if key in ("variant", "model", "optim") else "right", no_wrap=True)

    def cell(key, value) -> str:
        if value is None:
            return "-"
        if key == "seconds":
            return f"{value:.1f}"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    for row in result.rows:
        model = "none" if row["hidden"] == "none" else f"{row['hidden']} {row['activation']}"
        row = {**row, "model": model, "optim": f"{row['optimizer']} {row['lr']:g}"}
        table.add_row(*[cell(k, row.get(k)) for k in columns])
    printer = _console()
    _print_whole(printer, table)  # files and pipes: each variant on one line
    kind = next(iter(result.results.values())).predictor.task.kind
    if kind != "multilabel" and not (out_dir / "decision_boundaries.png").exists():
        typer.echo("no decision-boundary grid: the data has more than two features; pick two with --features a,b",
                   err=True)
    typer.echo(f"comparison folder: {out_dir}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    data: Optional[str] = typer.Argument(None, help="Labelled rows for the curves and examples (default: the run's own test split, rebuilt from its source)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s) (default: the run's)."),
    features: Optional[str] = typer.Option(None, help="Two numeric columns a,b to draw the decision boundary over; the others are held at their training median."),
    resolution: int = typer.Option(200, help="Decision-boundary grid points per axis."),
    rows: int = typer.Option(5, help="Rows shown from logits to probabilities to labels."),
) -> None:
    """(Re)write a run folder's self-contained report.html."""
    from torchclf import api
    from torchclf.errors import TorchclfError
    from torchclf.explain import held_out_rows
    from torchclf.report import write_report

    predictor = api.load(run)
    try:
        labelled, where = held_out_rows(predictor, data, list(target) if target else None)
    except TorchclfError as exc:
        if data is not None:
            raise
        warnings.warn(f"{exc}; the report leaves out the curves and examples")
        labelled, where = None, ""
    path = write_report(run, predictor, labelled, where, features=parse_features(features),
                        resolution=resolution, explain_rows=rows)
    typer.echo(f"report: {path}")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    data: Optional[str] = typer.Argument(None, help="Rows to explain: a file or built-in dataset (default: the run's own test split)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s) (default: the run's)."),
    rows: int = typer.Option(5, help="How many rows to show."),
    seed: int = typer.Option(0, help="Which rows: a seed for drawing them."),
) -> None:
    """Show a few rows going from raw logits to probabilities to labels."""
    from rich.table import Table

    from torchclf import api
    from torchclf.explain import explain_rows, rows_to_explain

    predictor = api.load(run)
    features, truth, where = rows_to_explain(predictor, data, list(target) if target else None, rows, seed)
    ex = explain_rows(predictor, features, truth)
    printer = _console()
    n = len(ex.predicted)
    printer.print(f"[bold]{run}[/]: {n} row{'s' if n != 1 else ''} of {where}", soft_wrap=True)
    printer.print(f"rule: {ex.rule}", soft_wrap=True)
    if len(ex.logit_names) <= 2:
        # Few outputs: one line per row, inputs and every step side by side.
        frame = ex.to_frame()
        table = Table()
        for col in frame.columns:
            table.add_column(str(col), justify="left" if col in ("predicted", "true") else "right")
        for values in frame.itertuples(index=False):
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in values])
        _print_whole(printer, table)
        return
    # Many classes or labels: one small table per row, a line per class.
    for i in range(len(ex.predicted)):
        inputs = ", ".join(f"{c}={v:.4g}" if isinstance(v, float) else f"{c}={v}"
                           for c, v in list(ex.features.iloc[i].items())[:6])
        truth_text = f"; true: {ex.true[i]}" if ex.true is not None else ""
        printer.print(f"\nrow {i + 1}: {inputs}{' ...' if ex.features.shape[1] > 6 else ''}", soft_wrap=True)
        table = Table()
        for col in ("label" if predictor.task.kind == "multilabel" else "class", "logit", "probability"):
            table.add_column(col, justify="right" if col in ("logit", "probability") else "left")
        for j, name in enumerate(ex.class_names):
            table.add_row(name, f"{ex.logits[i, j]:.4f}", f"{ex.probabilities[i, j]:.4f}")
        _print_whole(printer, table)
        printer.print(f"predicted: {ex.predicted[i]}{truth_text}", soft_wrap=True)


@app.command()
@table_options
def tune(
    data: str = typer.Argument(..., help=f"Labelled rows: {TABLE_FILE} or a built-in dataset, as for train."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s), as for train."),
    trials: int = typer.Option(30, "--trials", min=1, help="Finish when the study holds this many complete or pruned trials, other processes' included."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Start no new trial after this many seconds."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study database: a URL such as sqlite:///study.db or postgresql://..., or an SQLite file (default: OUT.optuna.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="The study's name in the storage (default: OUT's folder name)."),
    space: Optional[Path] = typer.Option(None, "--space", help="A TOML file with a [space] table over the default search space (see docs/tune.md)."),
    pruner: str = typer.Option(PRUNERS[0], "--pruner", help=f"Stop hopeless trials early: {', '.join(PRUNERS)} (see docs/tune.md)."),
    confirm: int = typer.Option(CONFIRM_FOLDS, "--confirm", help="When a trial beats the defaults on the validation rows, cross-validate it, the runner-up and the defaults on this many folds of the training and validation rows before saving it; 0: no confirmation (see docs/tune.md)."),
    task: str = typer.Option("auto", help=", ".join(TASKS) + "."),
    label_sep: Optional[str] = typer.Option(None, help="Multilabel separator, as for train."),
    test: Optional[Path] = typer.Option(None, help="A separate labelled test file, as for train (never used to tune)."),
    out: Optional[Path] = typer.Option(None, help="Run folder for the best configuration (default: runs/NAME-tuned)."),
    preset: Optional[str] = typer.Option(None, help="Fixed settings from a preset, as for train."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
    settings: dict = None,
) -> None:
    """Search hyperparameters on the validation rows with Optuna, then train and save the best configuration.

    Training flags given here are fixed for every trial and taken out of the search.
    """
    from torchclf.errors import TorchclfError
    from torchclf.tune import DEFAULT_SPACE, read_space
    from torchclf.tune import tune as run_tune

    given = [name for name, value in settings.items() if value is not None]
    searched = (read_space(space) if space is not None else DEFAULT_SPACE).without(given)
    if not searched.dimensions:
        raise TorchclfError(f"tune: the flags {', '.join(given)} fix every searched parameter, so there is "
                            "nothing to search; drop some, or search others with --space")
    config = build_config(preset, task, settings)
    try:
        tuned = run_tune(data, list(target) if target else None, trials=trials, timeout=timeout, storage=storage,
                         study=study, space=searched, out=out, config=config, test=str(test) if test else None,
                         label_sep=label_sep, pruner=pruner, confirm=confirm, verbose=not quiet)
    except KeyboardInterrupt as exc:
        raise Interrupted(str(exc) or "the study keeps every finished trial; run the same command to continue") from None
    if tuned.result is not None:
        kind = tuned.result.predictor.task.kind
        finished = tuned.counts["complete"] + tuned.counts["pruned"]
        print_metrics(tuned.result.metrics, kind, title=f"{data}: trial {tuned.best_trial} of {finished}, "
                      f"{kind}, {len(tuned.result.history)} epochs")
    typer.echo(f"saved trial {tuned.best_trial}: validation loss {tuned.value:.4f}; the same weights: "
               f"{tuned.train_command}")
    typer.echo(f"run folder: {tuned.run_dir}")


@app.command()
def playground(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; only loopback addresses unless --allow-remote."),
    port: int = typer.Option(0, help="Port to listen on (0 picks a free one)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where 'Save run' writes run folders."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --host: anyone who can reach it can train and save runs here."),
    max_upload_mb: float = typer.Option(2.0, help="Largest CSV file the page may upload, in MiB."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default web browser."),
) -> None:
    """Start the live playground: train on toy or uploaded data in the browser and watch the boundary learn."""
    from torchclf.errors import TorchclfError
    from torchclf.playground.server import serve

    if not max_upload_mb > 0:
        raise TorchclfError(f"--max-upload-mb: got {max_upload_mb}, expected a positive size such as 2")
    serve(host, port, runs_dir=runs_dir, allow_remote=allow_remote, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
          open_browser=open_browser, announce=lambda line: typer.echo(line, err=True))


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    format: str = typer.Option("onnx", "--format", help="File format: onnx (one graph from raw columns to labels and probabilities)."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: the run folder's name + .onnx, here)."),
    data: Optional[str] = typer.Option(None, "--data", help=f"Rows to check the file on: {TABLE_FILE} or built-in dataset (default: the run's own test split)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime's results with torchclf's on the check rows (needs onnxruntime)."),
) -> None:
    """Export a run for serving without torchclf: raw feature columns in, labels and probabilities out."""
    from torchclf import api
    from torchclf import export as exporter
    from torchclf.data.sources import read_rows
    from torchclf.errors import TorchclfError
    from torchclf.explain import held_out_rows

    if format != "onnx":
        raise TorchclfError(f"--format {format}: not a format torchclf exports; use --format onnx")
    predictor = api.load(run)
    path = exporter.export_onnx(predictor, out or Path(f"{run.resolve().name}.onnx"))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB): inputs "
               f"{', '.join(predictor.preprocessor.feature_names[:8])}"
               f"{' ...' if len(predictor.preprocessor.feature_names) > 8 else ''}; outputs label, probabilities",
               err=True)
    if not check:
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        warnings.warn(f"{path} not checked: onnxruntime is not installed ({exporter.INSTALL})")
        return
    try:
        frame, where = (read_rows(data), data) if data is not None else (held_out_rows(predictor)[0].features, "test rows")
    except TorchclfError as exc:
        if data is not None:
            raise
        warnings.warn(f"{path} not checked: {exc}")
        return
    result = exporter.check_rows(predictor, path, frame)
    if not result.ok:
        path.unlink(missing_ok=True)
        raise TorchclfError(f"{path}: onnxruntime and torchclf disagree on {where} (largest probability difference "
                            f"{result.max_difference:.1e}, {result.label_mismatches} different labels), so the file "
                            "was removed; please report this with the run folder")
    typer.echo(f"checked with onnxruntime on {len(frame)} {where}, as given and with gaps and unseen categories: "
               f"largest probability difference {result.max_difference:.1e}, labels identical", err=True)


@app.command()
def serve(
    runs: List[str] = typer.Argument(..., help="Run folders to serve; NAME=FOLDER names one (default: the folder's name), as in /models/NAME/predict."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; only loopback addresses unless --allow-remote."),
    port: int = typer.Option(8000, help="Port to listen on (0 picks a free one)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --host: anyone who can reach it can query the models."),
    max_request_mb: float = typer.Option(16.0, help="Largest request body, in MiB."),
    backend: str = typer.Option("auto", help="Predict with onnx (onnxruntime: fastest, needs torchclf[deploy]), torch (the run's predictor), or auto (onnx where it is installed and the run exports)."),
) -> None:
    """Serve predictions over HTTP as JSON: POST /predict, GET /schema, GET /health."""
    from torchclf.errors import TorchclfError
    from torchclf.serve import serve as serve_runs

    if not max_request_mb > 0:
        raise TorchclfError(f"--max-request-mb: got {max_request_mb}, expected a positive size such as 16")
    serve_runs(list(runs), host, port, allow_remote=allow_remote, max_request_bytes=int(max_request_mb * 1024 * 1024),
               backend=backend, announce=lambda line: typer.echo(line, err=True))


def _click_exceptions() -> tuple[type, type]:
    """(Abort, ClickException) of the click that typer runs on: recent typer
    releases carry their own copy of click, older ones use the installed one."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException
    return typer.Abort, ClickException


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that `finally` blocks remove what is half-written; not an
    Exception, so that nothing on the way swallows it."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line and exit status 2.

    SIGTERM (as sent by ``kill``, a job scheduler or torchrun) stops the
    command the same way: temporary files are removed, one line is printed
    and the status is 143.
    """
    import signal
    import threading

    from torchclf.errors import TorchclfError

    warnings.showwarning = _show_warning
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # Only in the main thread (the one Python delivers signals to), and never over a handler the caller set.
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = app(args=args, standalone_mode=False)
    except Terminated as exc:
        print(f"terminated; {str(exc) or 'stopped before finishing, and removed what was half-written'}",
              file=sys.stderr)
        return 143
    except Interrupted as exc:
        print(f"interrupted; {exc}", file=sys.stderr)
        return 130
    except TorchclfError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused: permissions, a full disk, a missing folder
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted; {exc or 'nothing was written'}", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except MemoryError as exc:  # more than this machine holds (numpy says how much): a limit, not a bug
        if debug:
            raise
        detail = f" ({exc})" if str(exc) else ""
        print(f"error: out of memory{detail}; use fewer rows or columns, a smaller --batch-size, or a machine with "
              "more memory", file=sys.stderr)
        return 1
    except Exception as exc:  # usage errors and anything unexpected
        abort, usage = _click_exceptions()
        if isinstance(exc, abort):
            print("aborted", file=sys.stderr)
            return 130
        if isinstance(exc, usage):
            exc.show()
            return exc.exit_code
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback and report it)",
              file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0  # typer returns Ctrl-C elsewhere as exit code 130


def run() -> None:
    """Console-script entry point: exit with :func:`main`'s status, without tearing the interpreter down.

    Once the command is done, the ``atexit`` handlers run (they release run
    folder claims and leave a torchrun process group) and the output is
    flushed; then the process ends with ``os._exit``. Python's own teardown
    would free every module of torch, pandas and matplotlib one by one, which
    took 1.7 s after a tiny ``train`` and writes nothing. Library code never
    does this: only this entry point, and only when no other Python thread is
    still running.
    """
    import atexit
    import os
    import threading

    code = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if others or run_handlers is None:
        sys.exit(code)
    run_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: there is no one left to tell
        pass
    os._exit(code)


if __name__ == "__main__":
    run()

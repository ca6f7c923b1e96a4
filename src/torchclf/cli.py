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


class Interrupted(Exception):
    """Ctrl-C, carried past typer (which would turn a KeyboardInterrupt into a bare exit code) to :func:`main`."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _dflt(name: str) -> str:
    """A config field's default, for help texts (config.py is light to import)."""
    from torchclf.config import ModelConfig, TrainConfig

    for cls in (ModelConfig, TrainConfig):
        if name in cls.__dataclass_fields__:
            value = cls.__dataclass_fields__[name].default
            return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    raise KeyError(name)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"64,64"`` -> (64, 64); ``""`` or ``"none"`` -> () (no hidden layer)."""
    from torchclf.errors import TorchclfError

    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise TorchclfError(f"--hidden: expected comma-separated layer sizes such as 64,64, got {text!r}") from None


def parse_batch_size(text: str) -> int | None:
    from torchclf.errors import TorchclfError

    if text.strip().lower() == "full":
        return None
    try:
        return int(text)
    except ValueError:
        raise TorchclfError(f"--batch-size: expected a number or 'full', got {text!r}") from None


def build_config(preset, task, hidden, activation, dropout, norm, epochs, batch_size, optimizer, lr,
                 weight_decay, momentum, schedule, patience, seed, device, eval_every, log_every, threads,
                 class_weight, test_size, val_size, max_categories):
    """Flags -> RunConfig: the preset's values, then every flag the user gave."""
    from torchclf.api import make_config

    def given(**kw):
        return {k: v for k, v in kw.items() if v is not None}

    model = given(hidden=None if hidden is None else parse_hidden(hidden), activation=activation,
                  dropout=dropout, norm=norm)
    train = given(epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                  schedule=schedule, patience=patience, seed=seed, device=device, eval_every=eval_every,
                  log_every=log_every, threads=threads)
    if batch_size is not None:
        train["batch_size"] = parse_batch_size(batch_size)
    if class_weight is not None:
        train["class_weight"] = None if class_weight == "none" else class_weight
    data = given(test_size=test_size, validation_size=val_size, max_categories=max_categories)
    return make_config(preset, task=task, model=model, train=train, data=data)


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
    _console().print(table)


# ----- commands --------------------------------------------------------------------
@app.command()
def train(
    data: Optional[str] = typer.Argument(None, help="A .csv/.parquet file or a built-in dataset (see `torchclf datasets`); spec options like moons:noise=0.07. (default: circles)"),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column; repeat for several 0/1 columns (multilabel)."),
    task: str = typer.Option("auto", help="auto, binary, multiclass or multilabel."),
    label_sep: Optional[str] = typer.Option(None, help="The target column holds labels joined by this separator (multilabel)."),
    test: Optional[Path] = typer.Option(None, help="A separate labelled test file (otherwise a seeded part of DATA)."),
    out: Optional[Path] = typer.Option(None, help="Run folder to create (default: a new folder under runs/)."),
    preset: Optional[str] = typer.Option(None, help="circle-v0, circle-v1, circle-v2, blob or default; other flags override it."),
    hidden: Optional[str] = typer.Option(None, help=f"Hidden layer sizes, e.g. 64,64 ('none' for a linear model). (default: {_dflt('hidden')})"),
    activation: Optional[str] = typer.Option(None, help="relu, leaky_relu, gelu, silu, elu, tanh, sigmoid or linear. (default: relu)"),
    dropout: Optional[float] = typer.Option(None, help=f"Dropout probability after each hidden layer. (default: {_dflt('dropout')})"),
    norm: Optional[str] = typer.Option(None, help="none, batch or layer normalisation in hidden layers. (default: none)"),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. (default: 300)"),
    batch_size: Optional[str] = typer.Option(None, help="Rows per step, or 'full' for full-batch. (default: 64)"),
    optimizer: Optional[str] = typer.Option(None, help="adam, adamw or sgd. (default: adamw)"),
    lr: Optional[float] = typer.Option(None, help=f"Learning rate. (default: {_dflt('lr')})"),
    weight_decay: Optional[float] = typer.Option(None, help=f"Weight decay. (default: {_dflt('weight_decay')})"),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum. (default: 0)"),
    schedule: Optional[str] = typer.Option(None, help="Learning-rate schedule: none, plateau or cosine. (default: plateau)"),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without validation improvement; 0 = off. (default: 30)"),
    seed: Optional[int] = typer.Option(None, help=f"Seed for the split, initialisation and shuffling. (default: {_dflt('seed')})"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps. (default: auto)"),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N epochs. (default: 1)"),
    log_every: Optional[int] = typer.Option(None, help="Print a log line every N epochs (0 = ten lines per run)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: 1 for small models, else all cores)."),
    precision: Optional[str] = typer.Option(None, help="float32, bfloat16 (CPUs with AMX/AVX512-BF16, GPUs) or float16 (CUDA). (default: float32)"),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Compile the model with torch.compile (pays off on long runs). (default: no)"),
    class_weight: Optional[str] = typer.Option(None, help="'balanced' to reweight rare classes, or none."),
    test_size: Optional[float] = typer.Option(None, help="Fraction of rows held out for test. (default: 0.2)"),
    val_size: Optional[float] = typer.Option(None, help="Fraction of rows held out for validation. (default: 0.1)"),
    max_categories: Optional[int] = typer.Option(None, help="Most one-hot columns per categorical column. (default: 50)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or log lines."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=0, help="Save a resumable checkpoint every N epochs in OUT.checkpoints/ (0: only when Ctrl-C is pressed). (default: 0)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run (its --out folder) from its newest checkpoint, with its own data and settings."),
) -> None:
    """Train a classifier, print its metrics and write a run folder."""
    from torchclf import api, checkpoint, engine
    from torchclf.config import with_overrides
    from torchclf.errors import TorchclfError

    if resume is not None:
        others = [target, label_sep, test, out, preset, hidden, activation, dropout, norm, epochs, batch_size,
                  optimizer, lr, weight_decay, momentum, schedule, patience, seed, device, eval_every, log_every,
                  threads, class_weight, test_size, val_size, max_categories, precision, compile_model]
        if data is not None or task != "auto" or any(v not in (None, [], ()) for v in others):
            raise TorchclfError("--resume RUN continues with the run's own data and settings; "
                                "drop the other options (only --quiet and --checkpoint-every may be given)")
        data, target, test, label_sep, config, out_dir, checkpoint_every, start = \
            checkpoint.resume_plan(resume, checkpoint_every)
    else:
        data = data or "circles"
        config = build_config(preset, task, hidden, activation, dropout, norm, epochs, batch_size, optimizer, lr,
                              weight_decay, momentum, schedule, patience, seed, device, eval_every, log_every,
                              threads, class_weight, test_size, val_size, max_categories)
        speed = {k: v for k, v in (("precision", precision), ("compile", compile_model)) if v is not None}
        config = with_overrides(config, train=speed) if speed else config
        out_dir = out or api.default_run_dir(data)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise TorchclfError(f"{out_dir}: already exists and is not empty; choose another --out or remove it")
        if checkpoint.latest(checkpoint.folder_for(out_dir)) is not None:
            raise TorchclfError(f"{out_dir}: an interrupted run left checkpoints in {checkpoint.folder_for(out_dir)}; "
                                f"continue it with `torchclf train --resume {out_dir}` or remove that folder")
        checkpoint_every, start = checkpoint_every or 0, None
    run_info = {**checkpoint.describe_run(data, target, test, label_sep, config, out_dir),
                "checkpoint_every": checkpoint_every}
    saver = checkpoint.Checkpointer(checkpoint.folder_for(out_dir), checkpoint_every, run_info, resume=start)
    callbacks = engine.default_callbacks(config.train, not quiet, config.data.validation_size > 0) + [saver]
    if checkpoint_every and not quiet:
        typer.echo(f"checkpoints every {checkpoint_every} epoch(s) in {saver.folder} "
                   f"(if stopped, continue with: torchclf train --resume {out_dir})", err=True)
    try:
        result = api.train(data, target, config=config, test=str(test) if test else None, label_sep=label_sep,
                           verbose=not quiet, callbacks=callbacks)
        api.write_run(result, out_dir)
    except KeyboardInterrupt as exc:
        raise Interrupted(str(exc) if isinstance(exc, checkpoint.TrainingInterrupted) else saver.resume_hint()) from None
    finally:
        saver.close()
    saver.cleanup()
    if quiet and result.stop_reason.startswith("training diverged"):
        warnings.warn(result.stop_reason)
    from torchclf import distributed

    if not distributed.is_main():
        return  # under torchrun, rank 0 reports for the whole job
    kind = result.predictor.task.kind
    print_metrics(result.metrics, kind, title=f"{data}: {kind}, {len(result.history)} epochs, {result.seconds:.1f}s")
    typer.echo(f"run folder: {out_dir}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by `torchclf train`."),
    data: str = typer.Argument(..., help="Labelled rows: a .csv/.parquet file or a built-in dataset."),
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
    data: str = typer.Argument(..., help="Rows to predict: a .csv/.parquet file or a built-in dataset."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: standard output)."),
) -> None:
    """Predict labels and probabilities for new rows, in input order."""
    from torchclf import api
    from torchclf.data.sources import read_rows

    predictor = api.load(run)
    frame = read_rows(data)
    for note in predictor.preprocessor.input_notes(frame, ignore=predictor.target_columns):
        warnings.warn(f"{data}: {note}")
    result = predictor.predict_frame(frame, where=data)
    if out is None:
        result.to_csv(sys.stdout, index=False)
        return
    if out.exists() and out.is_dir():
        from torchclf.errors import TorchclfError

        raise TorchclfError(f"--out {out}: is a folder; give a file name such as predictions.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        result.to_csv(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write; gone already after the rename
    typer.echo(f"wrote {len(result)} predictions to {out}", err=True)


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
    _console().print(table)


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

    ``shared`` holds the compare-level seed and split sizes, which every variant uses.
    """
    import inspect

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
    for key, flag in (("data", "DATA"), ("target", "--target"), ("label_sep", "--label-sep"), ("test", "--test"),
                      ("out", "--out"), ("seed", "--seed"), ("test_size", "--test-size"), ("val_size", "--val-size")):
        if params.get(key) not in (None, (), []) and params.get(key) != defaults.get(key):
            raise TorchclfError(f"variant {name!r}: {flag} is set once for the whole comparison (on compare), "
                                "so that every variant sees the same rows and seed")
    wanted = inspect.signature(build_config).parameters
    values = {k: params.get(k) for k in wanted}
    values.update(shared)
    return build_config(**values)


@app.command()
def compare(
    data: str = typer.Argument("circles", help="A .csv/.parquet file or a built-in dataset, as for train."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="NAME:FLAGS with train's model/training flags, e.g. \"deeper:--hidden 64,64,64 --epochs 200\"; repeat. Default: the tutorial's study circle-v0 -> circle-v1 -> circle-v2 -> default."),
    variants_file: Optional[Path] = typer.Option(None, "--file", help="A TOML file with a [variants] table of name = \"flags\" lines (after any --variant)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column(s), as for train."),
    label_sep: Optional[str] = typer.Option(None, help="Multilabel separator, as for train."),
    out: Optional[Path] = typer.Option(None, help="Folder to create (default: a new folder under runs/)."),
    seed: Optional[int] = typer.Option(None, help="One seed for every variant's split, initialisation and shuffling. (default: 0)"),
    test_size: Optional[float] = typer.Option(None, help="Fraction held out for test, shared. (default: 0.2)"),
    val_size: Optional[float] = typer.Option(None, help="Fraction held out for validation, shared. (default: 0.1)"),
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
    shared = {k: v for k, v in (("seed", seed), ("test_size", test_size), ("val_size", val_size)) if v is not None}
    variants = [lab.Variant(name, variant_config(name, words, shared), " ".join(words)) for name, words in specs]
    out_dir = out or api.default_run_dir(f"compare-{data}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TorchclfError(f"{out_dir}: already exists and is not empty; choose another --out or remove it")
    console = _console(stderr=True)
    result = lab.compare(
        data, variants, out_dir, target=target or None, label_sep=label_sep, features=parse_features(features),
        resolution=resolution, save_runs=runs, verbose=not quiet,
        on_start=lambda i, v: console.print(f"[bold]variant {i + 1}/{len(variants)}: {v.name}[/] {v.flags}"),
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
    if not printer.is_terminal:
        printer.width = max(printer.width, 100)  # files and pipes: keep each variant on one line
    printer.print(table)
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
    if not printer.is_terminal:
        printer.width = max(printer.width, 100)
    n = len(ex.predicted)
    printer.print(f"[bold]{run}[/]: {n} row{'s' if n != 1 else ''} of {where}")
    printer.print(f"rule: {ex.rule}")
    if len(ex.logit_names) <= 2:
        # Few outputs: one line per row, inputs and every step side by side.
        frame = ex.to_frame()
        table = Table()
        for col in frame.columns:
            table.add_column(str(col), justify="left" if col in ("predicted", "true") else "right")
        for values in frame.itertuples(index=False):
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in values])
        printer.print(table)
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
        printer.print(table)
        printer.print(f"predicted: {ex.predicted[i]}{truth_text}")


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


def _click_exceptions() -> tuple[type, type]:
    """(Abort, ClickException) of the click that typer runs on: recent typer
    releases carry their own copy of click, older ones use the installed one."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException
    return typer.Abort, ClickException


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    from torchclf.errors import TorchclfError

    warnings.showwarning = _show_warning
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, standalone_mode=False)
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
    return code if isinstance(code, int) else 0  # typer returns Ctrl-C elsewhere as exit code 130


def run() -> None:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()

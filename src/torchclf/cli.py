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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
    data: str = typer.Argument("circles", help="A .csv/.parquet file or a built-in dataset (see `torchclf datasets`); spec options like moons:noise=0.07."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Label column; repeat for several 0/1 columns (multilabel)."),
    task: str = typer.Option("auto", help="auto, binary, multiclass or multilabel."),
    label_sep: Optional[str] = typer.Option(None, help="The target column holds labels joined by this separator (multilabel)."),
    test: Optional[Path] = typer.Option(None, help="A separate labelled test file (otherwise a seeded part of DATA)."),
    out: Optional[Path] = typer.Option(None, help="Run folder to create (default: a new folder under runs/)."),
    preset: Optional[str] = typer.Option(None, help="circle-v0, circle-v1, circle-v2, blob or default; other flags override it."),
    hidden: Optional[str] = typer.Option(None, help="Hidden layer sizes, e.g. 64,64 ('none' for a linear model). [default: 128,128]"),
    activation: Optional[str] = typer.Option(None, help="relu, leaky_relu, gelu, silu, elu, tanh, sigmoid or linear. [default: relu]"),
    dropout: Optional[float] = typer.Option(None, help="Dropout probability after each hidden layer. [default: 0]"),
    norm: Optional[str] = typer.Option(None, help="none, batch or layer normalisation in hidden layers. [default: none]"),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. [default: 300]"),
    batch_size: Optional[str] = typer.Option(None, help="Rows per step, or 'full' for full-batch. [default: 64]"),
    optimizer: Optional[str] = typer.Option(None, help="adam, adamw or sgd. [default: adamw]"),
    lr: Optional[float] = typer.Option(None, help="Learning rate. [default: 0.003]"),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay. [default: 0.0001]"),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum. [default: 0]"),
    schedule: Optional[str] = typer.Option(None, help="Learning-rate schedule: none, plateau or cosine. [default: plateau]"),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without validation improvement; 0 = off. [default: 30]"),
    seed: Optional[int] = typer.Option(None, help="Seed for the split, initialisation and shuffling. [default: 0]"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps. [default: auto]"),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N epochs. [default: 1]"),
    log_every: Optional[int] = typer.Option(None, help="Print a log line every N epochs (0 = ten lines per run)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's choice)."),
    class_weight: Optional[str] = typer.Option(None, help="'balanced' to reweight rare classes, or none."),
    test_size: Optional[float] = typer.Option(None, help="Fraction of rows held out for test. [default: 0.2]"),
    val_size: Optional[float] = typer.Option(None, help="Fraction of rows held out for validation. [default: 0.1]"),
    max_categories: Optional[int] = typer.Option(None, help="Most one-hot columns per categorical column. [default: 50]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or log lines."),
) -> None:
    """Train a classifier, print its metrics and write a run folder."""
    from torchclf import api
    from torchclf.artifact import atomic_folder  # noqa: F401  (checks --out before training)
    from torchclf.errors import TorchclfError

    config = build_config(preset, task, hidden, activation, dropout, norm, epochs, batch_size, optimizer, lr,
                          weight_decay, momentum, schedule, patience, seed, device, eval_every, log_every,
                          threads, class_weight, test_size, val_size, max_categories)
    out_dir = out or api.default_run_dir(data)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TorchclfError(f"{out_dir}: already exists and is not empty; choose another --out or remove it")
    result = api.train(data, target, config=config, test=str(test) if test else None, label_sep=label_sep,
                       verbose=not quiet)
    api.write_run(result, out_dir)
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
    from torchclf.data import read_table
    from torchclf.data.builtin import is_builtin, load_builtin
    from torchclf.data.sources import looks_like_file

    predictor = api.load(run)
    if not looks_like_file(data) and is_builtin(data):
        frame = load_builtin(data)[0]
    else:
        frame = read_table(data)
    result = predictor.predict_frame(frame, where=data)
    if out is None:
        result.to_csv(sys.stdout, index=False)
        return
    if out.exists() and out.is_dir():
        from torchclf.errors import TorchclfError

        raise TorchclfError(f"--out {out}: is a folder; give a file name such as predictions.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    result.to_csv(tmp, index=False)
    tmp.replace(out)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    from torchclf.errors import TorchclfError

    warnings.showwarning = _show_warning
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except TorchclfError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # click's usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            return 130
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback and report it)",
              file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()

"""Reading CSV/Parquet files and DataFrames into a :class:`Dataset`."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from torchclf.data import shards
from torchclf.data.builtin import is_builtin, load_builtin
from torchclf.data.dataset import Dataset
from torchclf.data.memory import release_arrow_memory
from torchclf.errors import TorchclfError, closest, warn

PARQUET_SUFFIXES = (".parquet", ".pq")
#: A CSV file compressed as its last suffix says (``table.csv.gz``): read with the standard library's
#: decompressors (pandas' for the rows), and, but for zip archives, written so by ``torchclf predict``.
CSV_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
FORMATS = ".csv, .csv.gz, .csv.bz2, .csv.xz, .csv.zip, .parquet or .pq"
OTHER_DELIMITERS = (";", "\t", "|")  # tried, in this order, when a CSV header has no comma
SNIFF_CHARS = 64 * 1024  # the start of a CSV file that decides its delimiter


class DataWarning(UserWarning):
    """Something about the data was fixed up on the user's behalf (rows dropped, ...)."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV file (``.csv``, or compressed: ``.csv.gz``, ``.csv.bz2``, ``.csv.xz``, ``.csv.zip``) or a
    Parquet file (``.parquet``, ``.pq``) into a DataFrame, with one-line errors."""
    path = Path(path)
    require_path(path)
    if shards.reads_part(path):
        # Under torchrun with TORCHCLF_SHARD_PARQUET=1 each rank reads only its row groups / files.
        return shards.read_rank_part(path)
    if path.is_dir():
        raise TorchclfError(f"{path}: is a folder, expected a .csv or .parquet file")
    kind = table_format(path)
    if kind is None:
        suffix = path.suffix.lower()
        raise TorchclfError(f"{path}: unsupported file type {suffix or '(none)'!r}; use a {FORMATS} file")
    what, compression = kind
    try:
        if what == "csv":
            frame = _read_csv(path, compression)
        else:
            frame = _read_parquet(path)
    except Exception as exc:
        error = read_error(path, compression or what, exc)
        if error is None:
            raise
        raise error from None
    refuse_duplicate_columns(frame, path)
    if len(frame) == 0:
        raise TorchclfError(f"{path}: has a header but no data rows")
    return frame


def read_error(path: Path, kind: str, exc: BaseException) -> TorchclfError | None:
    """The one line naming ``path`` for what pandas, pyarrow or a decompressor raise on a malformed ``kind``
    file (a TorchclfError as it is); None for any other exception."""
    if isinstance(exc, TorchclfError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return TorchclfError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8")
    if isinstance(exc, pd.errors.EmptyDataError):
        return TorchclfError(f"{path}: the file is empty; expected a header row and data rows")
    if isinstance(exc, (pd.errors.ParserError, OSError, ValueError, *DECOMPRESSION_ERRORS)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TorchclfError(f"{path}: cannot be read as {kind}: {first}")
    return None


def _read_parquet(path: Path) -> pd.DataFrame:
    """``pd.read_parquet`` with the peak memory near the table's own size where pandas allows it.

    Arrow's buffers are freed column by column as they become pandas columns
    (``self_destruct``), each column stays its own block instead of being
    copied into one 2-D block per type (``split_blocks``), and column chunks
    are read as they are decoded rather than all buffered first
    (``pre_buffer=False``). Measured on 5,000,000 rows x 33 float64 columns
    (1.32 GB in memory), separate processes: 4.24 GB peak in 3.8 to 10.9 s
    plain, 2.4 to 2.6 GB in 1.8 to 2.3 s so. pandas before 3.0 has no
    ``to_pandas_kwargs``: there the plain read.
    """
    import inspect

    if "to_pandas_kwargs" not in inspect.signature(pd.read_parquet).parameters:
        return pd.read_parquet(path)
    frame = pd.read_parquet(path, pre_buffer=False, to_pandas_kwargs={"self_destruct": True, "split_blocks": True})
    release_arrow_memory()  # the decoding's scratch buffers (0.4 GB of the 5M-row table's 1.9 GB after reading)
    return frame


def sniff_delimiter(sample: str) -> str:
    """The field separator of CSV text: ``","`` unless the header has no comma
    and one of ``;``, tab or ``|`` splits the header and every line of
    ``sample`` into the same number (two or more) of fields.

    A fixed rule rather than :class:`csv.Sniffer`, whose guesses on short
    samples are unstable (it may pick a letter or a space).
    """
    import csv
    import io

    sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines only; a cut-off last line would not count

    def rows(sep: str) -> list[list[str]]:
        # newline="" splits lines as the file itself is split (a lone "\r" ends a line, as for pandas)
        return [row for row in csv.reader(io.StringIO(sample, newline=""), delimiter=sep) if row]

    try:
        header = next(iter(rows(",")), None)
        if header is None or len(header) > 1:
            return ","
        for sep in OTHER_DELIMITERS:
            lines = rows(sep)
            if len(lines[0]) > 1 and all(len(line) == len(lines[0]) for line in lines):
                return sep
    except csv.Error:  # malformed text: leave the verdict to pandas, which reports it with the file name
        pass
    return ","


def sniff_decimal(sample: str, sep: str) -> str:
    """``","`` when a ``;``-separated sample writes its fractions with a decimal comma
    (``1,5`` and never ``1.5``), as spreadsheets in many locales export; else ``"."``."""
    import re

    if sep != ";":
        return "."
    fields = [f.strip().strip('"') for line in sample.splitlines()[1:] for f in line.split(sep)]
    comma = sum(bool(re.fullmatch(r"[+-]?\d+,\d+", f)) for f in fields)
    dot = sum(bool(re.fullmatch(r"[+-]?\d*\.\d+([eE][+-]?\d+)?", f)) for f in fields)
    return "," if comma and not dot else "."


def table_format(path: str | Path) -> tuple[str, str | None] | None:
    """``("csv", compression)`` (None, or a value of :data:`CSV_COMPRESSIONS`) or ``("parquet", None)`` for a
    table file's name, from its suffixes; None for any other name."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if not suffixes:
        return None
    if suffixes[-1] == ".csv":
        return "csv", None
    if suffixes[-1] in PARQUET_SUFFIXES:
        return "parquet", None
    if suffixes[-1] in CSV_COMPRESSIONS and suffixes[-2:-1] == [".csv"]:
        return "csv", CSV_COMPRESSIONS[suffixes[-1]]
    return None


def _decompression_errors() -> tuple:
    """What a damaged compressed file raises besides OSError: a truncated stream, bad data, a bad archive."""
    import lzma
    import zipfile
    import zlib

    return EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile


DECOMPRESSION_ERRORS = _decompression_errors()


@contextlib.contextmanager
def open_csv_text(path: Path, compression: str | None):
    """The CSV file ``path`` as UTF-8 text, decompressed as ``compression`` says (see :func:`table_format`).

    A zip archive must hold one file, as pandas reads it."""
    if compression is None:
        with open(path, newline="", encoding="utf-8") as fh:
            yield fh
        return
    if compression == "zip":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            files = [m for m in archive.infolist() if not m.is_dir()]
            if len(files) != 1:
                raise TorchclfError(f"{path}: a zip archive of {len(files)} files; torchclf reads an archive "
                                    "that holds one CSV file")
            try:
                raw = archive.open(files[0])
            except (RuntimeError, NotImplementedError) as exc:  # encrypted, or a compression zipfile lacks
                raise TorchclfError(f"{path}: cannot be read as zip: {exc}; re-save it as a plain zip archive, "
                                    "or as .csv.gz") from None
            with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
                yield fh
        return
    import bz2
    import gzip
    import lzma

    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        yield fh


def csv_layout(path: Path, compression: str | None) -> tuple[str, str, list[str]]:
    """A CSV file's delimiter, decimal mark and header, checked for duplicate column names (pandas would
    silently rename them "a", "a.1"): what every reader of the file passes to pandas."""
    import csv

    with open_csv_text(path, compression) as fh:
        sample = fh.read(SNIFF_CHARS)
        sep = sniff_delimiter(sample)
        decimal = sniff_decimal(sample, sep)
        fh.seek(0)
        header = next(csv.reader(fh, delimiter=sep), None)
    if not header:
        raise pd.errors.EmptyDataError("empty")
    seen: set[str] = set()
    dupes = sorted({h for h in header if h in seen or seen.add(h)})
    if dupes:
        raise TorchclfError(f"{path}: duplicate column names {dupes}; rename them so each is unique")
    return sep, decimal, header


def _read_csv(path: Path, compression: str | None = None) -> pd.DataFrame:
    sep, decimal, _ = csv_layout(path, compression)
    return pd.read_csv(path, encoding="utf-8", low_memory=False, sep=sep, decimal=decimal, compression=compression)


def _missing_columns_error(missing: list[str], available, where: str) -> TorchclfError:
    hints = {m: closest(m, available) for m in missing}
    hint_text = "; ".join(f"{m!r}: did you mean {h[0]!r}?" for m, h in hints.items() if h)
    cols = ", ".join(map(str, list(available)[:30])) + (" ..." if len(available) > 30 else "")
    one_column = ""
    if len(available) == 1:  # most often a file separated by something torchclf did not recognise
        one_column = (f"; the table was read as one column {str(available[0])[:80]!r}: CSV fields must be separated "
                      "by ',' (or by ';', a tab or '|', used the same number of times on every line)")
    return TorchclfError(
        f"{where}: target column(s) {missing} not found"
        + (f" ({hint_text})" if hint_text else "")
        + f"; columns are: {cols}" + one_column
    )


# Values of a Parquet list, struct or map column (as pyarrow hands them to pandas).
NESTED_TYPES = (list, tuple, dict, set, np.ndarray)


def nested_columns(frame: pd.DataFrame) -> list:
    """Columns holding lists, arrays, structs or maps rather than single values.

    They come from Parquet files (list, struct and map types) or from user
    DataFrames; no column of one value per row can be made of them.
    """
    found = []
    for col in frame.columns:
        dtype = frame[col].dtype
        if isinstance(dtype, pd.ArrowDtype):
            import pyarrow as pa

            if pa.types.is_nested(dtype.pyarrow_dtype):
                found.append(col)
        elif dtype == object and any(isinstance(v, NESTED_TYPES) for v in frame[col].to_numpy()):
            found.append(col)
    return found


def drop_nested_columns(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` without its list/struct/map columns, with one warning naming them."""
    nested = nested_columns(frame)
    if not nested:
        return frame
    shown = ", ".join(repr(str(c)) for c in nested[:10]) + (" ..." if len(nested) > 10 else "")
    warn(f"{where}: column(s) {shown} hold lists or structs, not single values, so they cannot be features; "
         "ignoring them (flatten them into columns of numbers or text to use them)", DataWarning)
    return frame.drop(columns=nested)


def refuse_duplicate_columns(frame: pd.DataFrame, name) -> None:
    if frame.columns.duplicated().any():
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise TorchclfError(f"{name}: duplicate column names {dupes}; rename them so each is unique")


def target_names(target) -> list:
    """``--target`` as a list: one column is its name, a string or any other label a DataFrame allows (3, say);
    several are a list of them; None is none."""
    if target is None:
        return []
    return [target] if isinstance(target, str) or pd.api.types.is_scalar(target) else list(target)


def from_frame(
    frame: pd.DataFrame,
    target: str | list[str] | None,
    *,
    label_sep: str | None = None,
    name: str = "DataFrame",
) -> Dataset:
    """Split a frame into features and target.

    Parameters
    ----------
    frame : DataFrame
        The whole table, target column(s) included.
    target : str or list of str
        One label column, or several 0/1 columns (a multilabel problem).
    label_sep : str, optional
        If given, the single target column holds labels joined by this
        separator (``"sports|music"``; empty means no label): multilabel.
    """
    if isinstance(frame.columns, pd.MultiIndex):
        # Columns are named by text in a run (its manifest, --target, predict's lookup); a tuple target would
        # read as several columns.
        raise TorchclfError(
            f"{name}: the columns are a MultiIndex of {frame.columns.nlevels} levels; give one name per column, "
            "e.g. frame.columns = ['_'.join(map(str, c)) for c in frame.columns]")
    targets = target_names(target)
    refuse_duplicate_columns(frame, name)
    if len(frame) == 0:
        raise TorchclfError(f"{name}: has no rows; nothing to learn from")
    if not targets:
        cols = ", ".join(map(str, frame.columns[:30]))
        raise TorchclfError(f"{name}: no target column given; pass --target COL (columns are: {cols})")
    # A run saves its target's name as text: "3" finds a DataFrame's column 3 again, and 3 a file's "3".
    as_text = {str(c): c for c in frame.columns}
    targets = [t if t in frame.columns else as_text.get(str(t), t) for t in targets]
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise _missing_columns_error(missing, list(frame.columns), name)
    if len(set(targets)) != len(targets):
        raise TorchclfError(f"{name}: a target column is named twice in {targets}")
    if label_sep is not None and len(targets) != 1:
        raise TorchclfError(f"{name}: --label-sep needs exactly one --target column, got {len(targets)}")
    if label_sep == "":
        raise TorchclfError(f"{name}: --label-sep is empty; give the text that joins the labels, such as '|'")

    nested_targets = nested_columns(frame[targets])
    if nested_targets:
        raise TorchclfError(
            f"{name}: target column {str(nested_targets[0])!r} holds lists or structs, not one label per row; "
            "for several labels per row join them into text and pass --label-sep (e.g. 'a|b' with --label-sep '|'), "
            "or give one 0/1 --target column per label"
        )
    features = frame.drop(columns=targets)
    if features.shape[1] == 0:
        raise TorchclfError(f"{name}: no feature columns left after removing the target {targets}")
    features = drop_nested_columns(features, name)
    if features.shape[1] == 0:
        raise TorchclfError(f"{name}: every feature column holds lists or structs; flatten them into columns "
                            "of numbers or text")

    if len(targets) > 1:
        y = _indicator_columns(frame[targets], name)
        keep = y.notna().all(axis=1).to_numpy()
    elif label_sep is not None:
        raw = frame[targets[0]]
        y = _split_labels(raw, label_sep)
        if y.shape[1] == 0:
            shown = ["" if pd.isna(v) else str(v) for v in raw.head(3).tolist()]
            raise TorchclfError(
                f"{name}: target column {targets[0]!r} has no labels: split on --label-sep {label_sep!r}, every "
                f"row is empty (first values: {shown}); check the column and the separator"
            )
        keep = np.ones(len(frame), dtype=bool)
    else:
        y = frame[targets[0]]
        keep = y.notna().to_numpy()
    if not keep.all():
        dropped = int((~keep).sum())
        if dropped == len(frame):
            raise TorchclfError(f"{name}: every row's target {targets} is missing; nothing to learn from")
        warn(f"{name}: dropped {dropped} row(s) with a missing target", DataWarning)
        features, y = features[keep], y[keep]
    return Dataset(
        features=features.reset_index(drop=True),
        target=y.reset_index(drop=True).astype("int64") if len(targets) > 1 else y.reset_index(drop=True),
        name=name,
        label_sep=label_sep,
        target_columns=[str(t) for t in targets],
    )


def _indicator_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    for col in frame.columns:
        values = set(pd.unique(frame[col].dropna()))
        if not values <= {0, 1}:
            sample = sorted(map(str, values - {0, 1}))[:5]
            raise TorchclfError(
                f"{name}: target column {col!r} must hold 0/1 for a multilabel problem with several "
                f"--target columns, found {sample}; or give one --target with --label-sep"
            )
    return frame.astype("float64")


def _split_labels(raw: pd.Series, sep: str) -> pd.DataFrame:
    lists = [
        sorted({part.strip() for part in str(v).split(sep) if part.strip()})
        if not (isinstance(v, float) and np.isnan(v)) and v is not None
        else []
        for v in raw.tolist()
    ]
    labels = sorted({label for row in lists for label in row})
    index = {label: j for j, label in enumerate(labels)}
    Y = np.zeros((len(lists), len(labels)), dtype=np.int64)
    for i, row in enumerate(lists):
        for label in row:
            Y[i, index[label]] = 1
    return pd.DataFrame(Y, columns=labels)


def names_builtin(spec: str) -> bool:
    """Whether ``spec`` names a built-in dataset rather than a file.

    A name wins over a same-named folder or extensionless file in the working
    folder; anything with a table suffix or a path separator is a file.
    """
    return table_format(spec) is None and "/" not in spec and is_builtin(spec)


def load_table(
    path: str | Path, target: str | list[str] | None, *, label_sep: str | None = None
) -> Dataset:
    """Read a file and split it into features and target."""
    return from_frame(read_table(path), target, label_sep=label_sep, name=str(path))


def resolve_source(
    spec: str, target: str | list[str] | None = None, *, label_sep: str | None = None
) -> Dataset:
    """Turn a command-line ``DATA`` argument into a Dataset.

    A path to a CSV (compressed or not) or Parquet file is read; otherwise ``spec`` names a
    built-in dataset (see :func:`torchclf.data.load_builtin`).
    """
    if names_builtin(spec):
        features, y, _ = load_builtin(spec)
        cols = list(y.columns) if isinstance(y, pd.DataFrame) else [str(y.name)]
        wanted = [str(t) for t in target_names(target)]
        if wanted and wanted != cols:  # once silently ignored: the run trained on another target
            raise TorchclfError(f"{spec}: a built-in dataset brings its own target ({', '.join(cols)}), not "
                                f"{', '.join(wanted)}; drop --target, or give a file with that column")
        if label_sep is not None:
            raise TorchclfError(f"{spec}: a built-in dataset's labels are not joined text; drop --label-sep, or "
                                "give a file whose labels are")
        return Dataset(features=features, target=y, name=spec, target_columns=cols)
    check_source(spec)
    return load_table(spec, target, label_sep=label_sep)


def require_path(path: Path) -> None:
    if not path.exists():
        raise TorchclfError(f"{path}: no such file (check the path)")


def check_source(spec: str) -> None:
    """Raise the error :func:`resolve_source` would give for a ``DATA`` that is neither a built-in dataset
    nor an existing path, without reading anything: the command line calls it before importing torch, so a
    mistyped name fails in a fraction of a second."""
    if names_builtin(spec):
        return
    if "/" in spec or Path(spec).exists() or (":" not in spec and Path(spec).suffix):
        # "data.xlsx" is a file name, not a dataset: report the file (its type is checked when it is read).
        require_path(Path(spec))
        return
    load_builtin(spec)  # raises the "unknown dataset" error with a suggestion
    raise AssertionError("unreachable")


def read_rows(spec: str) -> pd.DataFrame:
    """The raw rows of a file or built-in dataset, every column kept (for prediction)."""
    if names_builtin(spec):
        return load_builtin(spec)[0]
    return read_table(spec)

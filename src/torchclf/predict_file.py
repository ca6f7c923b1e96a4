"""Predictions from a table to a CSV or Parquet file, a bounded chunk of rows at a time.

Memory stays that of one chunk whatever the file's length: CSV input is read
with pandas' ``read_csv(chunksize=...)``, Parquet input with pyarrow's
``ParquetFile.iter_batches``, and each chunk's predictions are written before
the next is read (pyarrow's CSV writer, which formats floats more than ten
times faster than pandas, or its ``ParquetWriter``). A file is written under a
temporary name and renamed into place at the end (:func:`torchclf.artifact.atomic_file`),
so an error or Ctrl-C leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from torchclf.errors import TorchclfError, closest, warn

# A chunk holds about this many values, input columns plus output columns per row (1M: 8 MB of float64
# input, or 10 MB of CSV text for 100 probabilities a row), so neither wide inputs nor many classes make it
# big. Reading a chunk of CSV takes about 3x its values' bytes in pandas' parser; twice this size measured
# 45 MB more peak memory on 1M rows x 32 columns (+137 MB against +93 MB), for about 5% less time.
CHUNK_VALUES = 1 << 20


@dataclass(frozen=True)
class Output:
    """What a prediction file holds per input row.

    Attributes
    ----------
    keep : tuple of str
        Input columns copied first, as they are (identifiers).
    label_only : bool
        Only the ``prediction`` column (after the kept ones).
    top_k : int or None
        Instead of ``prediction`` and every ``proba_<label>``, the K most probable
        classes and their probabilities (``top1``, ``top1_proba``, ...); multiclass only.
    decimals : int or None
        Probabilities rounded to this many decimals.
    """

    keep: tuple[str, ...] = ()
    label_only: bool = False
    top_k: int | None = None
    decimals: int | None = None


def check_output(predictor, output: Output) -> None:
    """Refuse options that do not fit the model, before any row is read."""
    if output.label_only and output.top_k is not None:
        raise TorchclfError("--label-only and --top-k ask for different columns; give one of them")
    if output.top_k is not None:
        kind, n = predictor.task.kind, len(predictor.labels.classes)
        if kind != "multiclass":
            raise TorchclfError(f"--top-k {output.top_k}: this model is {kind}; the most probable classes apply to "
                                "multiclass models only (the proba_ columns already give every "
                                f"{'class' if kind == 'binary' else 'label'}'s probability)")
        if not 1 <= output.top_k <= n:
            raise TorchclfError(f"--top-k {output.top_k}: the model has {n} classes; give a number from 1 to {n}")
    if output.decimals is not None and not 0 <= output.decimals <= 17:
        raise TorchclfError(f"--decimals {output.decimals}: give a number of decimals from 0 to 17")
    clash = [c for c in output.keep if c in output_names(predictor, output)]
    if clash:
        raise TorchclfError(f"--keep {clash[0]}: the predictions already have a column {clash[0]!r}; rename that "
                            "input column to keep it")


def output_names(predictor, output: Output) -> list[str]:
    """The prediction columns' names, after the kept columns."""
    if output.label_only:
        return ["prediction"]
    if output.top_k is not None:
        return [name for i in range(1, output.top_k + 1) for name in (f"top{i}", f"top{i}_proba")]
    return ["prediction"] + [f"proba_{name}" for name in predictor.labels.classes]


def chunk_rows(n_columns: int, multiple: int) -> int:
    """Rows per chunk for ``n_columns`` input plus output columns: about CHUNK_VALUES values, in a whole
    number of the engine's batches of ``multiple`` rows (at least one)."""
    rows = max(1, CHUNK_VALUES // max(1, n_columns))
    return max(multiple, rows - rows % multiple)


# ----- reading --------------------------------------------------------------------------------------------
class _Source:
    """A table read in chunks: ``columns`` first, then :meth:`chunks`."""

    columns: list[str]
    input_weight = 1  # how many values each input value counts for in a chunk (see chunk_rows)

    def chunks(self, rows: int, keep: list[str]) -> Iterator[tuple[pd.DataFrame, list]]:
        """Yield (raw rows as a DataFrame, the ``keep`` columns as pyarrow arrays) per chunk of ``rows`` rows."""
        raise NotImplementedError


class _FrameSource(_Source):
    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.columns = [str(c) for c in frame.columns]

    def chunks(self, rows, keep):
        import pyarrow as pa

        labels = {str(c): c for c in self.frame.columns}
        for start in range(0, len(self.frame), rows):
            part = self.frame.iloc[start:start + rows]
            yield part, [pa.Array.from_pandas(part[labels[c]]) for c in keep]


class _CsvSource(_Source):
    """A CSV file read as :func:`torchclf.data.sources.read_table` reads it (same delimiter and decimal
    guesses), a chunk at a time.

    pandas guesses each chunk's column types from that chunk alone, so a column of codes such as ``A7``,
    ``007`` and ``12`` would be numbers in a chunk that happens to hold only ``007`` and ``12`` (and ``007``
    would become ``7``). The model's categorical columns (``text_columns``), which were text in training,
    are therefore read as text, exactly as the whole file read at once gives them. So are kept columns the
    model does not read (``features`` are those it does): an identifier passes through as written, with one
    type in every chunk.
    """

    def __init__(self, path: Path, compression: str | None, features: set[str], text_columns: set[str]):
        from torchclf.data.sources import csv_layout

        self.path, self.compression, self.features, self.text_columns = path, compression, features, text_columns
        self.kind = compression or "csv"
        with _read_errors(path, self.kind):
            self.sep, self.decimal, self.columns = csv_layout(path, compression)

    def chunks(self, rows, keep):
        text = {c: str for c in self.columns if c in self.text_columns or (c in keep and c not in self.features)}
        with _read_errors(self.path, self.kind):
            reader = pd.read_csv(self.path, encoding="utf-8", low_memory=False, sep=self.sep, decimal=self.decimal,
                                 dtype=text or None, chunksize=rows, compression=self.compression)
        with reader:
            while True:
                with _read_errors(self.path, self.kind):
                    part = next(reader, None)
                if part is None:
                    return
                yield part, [_kept_column(part[c], c in text) for c in keep]


def _kept_column(values: pd.Series, as_text: bool):
    """A kept CSV column as an Arrow array of one type in every chunk: text, or float64 for numbers (pandas
    reads whole numbers as int64 in a chunk without gaps and as float64 in one with; the CSV writer writes
    35.0 as 35 either way)."""
    import pyarrow as pa

    if as_text:
        return pa.array(values, type=pa.string(), from_pandas=True)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return pa.array(values, type=pa.float64(), from_pandas=True)
    return pa.Array.from_pandas(values)


class _ParquetSource(_Source):
    """A Parquet file read a batch of rows at a time; kept columns come straight from Arrow, types intact."""

    # Arrow's reader holds a decoded page and dictionary, about 2 MB, per column whatever the chunk's length
    # (82 MB for 34 columns), and per row its buffers and the batch: reading 26,624 rows of 34 float64 columns
    # at a time took 36 MB more than 8,192 at a time, about 58 bytes a value. So an input value counts four
    # times in a Parquet chunk, which keeps its memory within a CSV chunk's: 1M rows x 34 columns (5 output
    # columns) peaked at 455 to 460 MB in chunks of a quarter the rows, 482 to 502 MB otherwise (3 runs each,
    # in one process). Output columns count once: wide outputs (many classes) keep their chunk's rows.
    input_weight = 4

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        with _read_errors(path, "parquet"):
            # Each column's pages through a small buffer, not its whole row group at once: a file written with
            # pyarrow's default row groups of a million rows would otherwise be read whole (measured reading
            # 1M rows x 34 columns: 449 MB above the imports, against 201 MB so; what is left is mostly a decoded
            # page and dictionary, about 2 MB, per column, whatever the file's length).
            self.file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 16)
        self.columns = list(self.file.schema_arrow.names)
        if len(set(self.columns)) != len(self.columns):
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise TorchclfError(f"{path}: duplicate column names {dupes}; rename them so each is unique")

    def chunks(self, rows, keep):
        # One thread: decoding columns in parallel holds a page per thread and a heap per thread in Arrow's
        # allocator, for no gain in a process that predicts on one core anyway.
        batches = self.file.iter_batches(batch_size=rows, use_threads=False)
        while True:
            with _read_errors(self.path, "parquet"):
                batch = next(batches, None)
                if batch is None:
                    return
                kept = [batch.column(c) for c in keep]
                # A column per block: numbers without gaps are views of Arrow's buffers instead of a copy into
                # one 2-D block; and the batch is let go before the rows are predicted.
                frame = batch.to_pandas(split_blocks=True)
                frame.index = pd.RangeIndex(len(frame))  # not reset_index, which copies every column in pandas 2
                del batch
            yield frame, kept
            del frame, kept


class _read_errors:
    """Turn what pandas and pyarrow raise on a malformed file into one line naming it (as ``read_table`` does)."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from torchclf.data.sources import read_error

        if exc is None or isinstance(exc, TorchclfError) or not isinstance(exc, Exception):
            return False
        error = read_error(self.path, self.kind, exc)
        if error is None:
            return False
        raise error from None


def open_source(spec: str, features: set[str] = frozenset(), text_columns: set[str] = frozenset()) -> _Source:
    """The rows of a CSV (compressed or not) or Parquet file or a built-in dataset, to be read in chunks (``features``: the
    columns the model reads, ``text_columns``: its categorical ones; see :class:`_CsvSource`)."""
    from torchclf.data.sources import names_builtin, read_rows, table_format

    if names_builtin(spec):
        return _FrameSource(read_rows(spec))
    path = Path(spec)
    kind = table_format(path)
    if path.is_file() and kind is not None:
        what, compression = kind
        return _ParquetSource(path) if what == "parquet" else _CsvSource(path, compression, features, text_columns)
    return _FrameSource(read_rows(spec))  # raises read_table's error for what cannot be read


# ----- one chunk's predictions ----------------------------------------------------------------------------
class _Columns:
    """Builds the output columns (pyarrow arrays) of one chunk of rows; ``text_labels`` for CSV output."""

    def __init__(self, predictor, output: Output, text_labels: bool):
        import pyarrow as pa

        self.predictor, self.output = predictor, output
        self.names = output_names(predictor, output)
        classes = list(predictor.labels.classes)
        # The text pandas wrote for each label (True, 1.0, ...), so a CSV's labels read as they always did.
        self.labels = pa.array([str(c) for c in classes])
        if not text_labels:
            try:
                self.labels = pa.array(classes)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # labels of mixed types: text
                pass

    def build(self, frame: pd.DataFrame, where: str) -> list:
        """Output arrays, one per name in ``self.names``, for the rows of ``frame``."""
        import pyarrow as pa

        p, out = self.predictor, self.output
        proba = p.predict_proba(frame, where)
        if out.top_k is not None:
            # A stable sort of -p: ties go to the lower class index, so top1 is the argmax label.
            order = np.argsort(-proba, axis=1, kind="stable")[:, : out.top_k]
            top = self._rounded(np.take_along_axis(proba, order, axis=1)).T.copy()
            columns = []
            for i in range(out.top_k):
                columns += [self.labels.take(pa.array(order[:, i])), pa.array(top[i])]
            return columns
        indices = p.decide(proba)
        if p.labels.multilabel:
            prediction = pa.array(p.labels.decode(indices, p.label_sep), type=pa.string())
        else:
            prediction = self.labels.take(pa.array(np.asarray(indices, dtype=np.int64)))
        if out.label_only:
            return [prediction]
        by_class = self._rounded(proba).T.copy()  # one contiguous row per class: each column without a copy
        return [prediction] + [pa.array(column) for column in by_class]

    def _rounded(self, values: np.ndarray) -> np.ndarray:
        return values if self.output.decimals is None else np.round(values, self.output.decimals)


# ----- writing --------------------------------------------------------------------------------------------
class _CsvSink:
    """CSV text, chunk after chunk, into a binary stream (or a text one, such as a test's captured stdout)."""

    def __init__(self, stream):
        self.stream = stream
        self.header = True
        self.quoting = "none"  # unquoted, as pandas writes; "needed" from the first value that must be quoted

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        if self.header:
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow(table.column_names)  # quoted only where needed
            self._put(line.getvalue().encode())
            self.header = False
        sink = pa.BufferOutputStream()
        try:
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style=self.quoting))
        except pa.ArrowInvalid:  # a value holds a comma, a quote or a line break: text is quoted from here on
            self.quoting, sink = "needed", pa.BufferOutputStream()
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style=self.quoting))
        self._put(sink.getvalue())

    def _put(self, data) -> None:
        if isinstance(self.stream, io.TextIOBase) and not hasattr(self.stream, "buffer"):
            self.stream.write(bytes(data).decode("utf-8"))
        else:
            self.stream.write(data)

    def close(self) -> None:
        self.stream.flush()

    def abort(self) -> None:
        """Stop after a failure (what was written stays where it went: a temporary file is removed by its owner)."""


def output_format(out: str | Path) -> tuple[str, str | None]:
    """What ``torchclf predict --out OUT`` writes: ``("parquet", None)`` for ``.parquet``/``.pq``, CSV
    compressed as a ``.csv.gz``, ``.csv.bz2`` or ``.csv.xz`` name says, else plain CSV (``("csv", None)``)."""
    from torchclf.data.sources import table_format

    what, compression = table_format(out) or ("csv", None)
    if compression == "zip":
        raise TorchclfError(f"--out {out}: torchclf does not write zip archives; write a .csv.gz, .csv.bz2, "
                            ".csv.xz, .csv or .parquet file")
    return what, compression


@contextlib.contextmanager
def compressed(stream, compression: str | None):
    """``stream`` (binary), or a compressor writing into it that is finished (its trailer written) when the
    block ends without an error."""
    if compression is None:
        yield stream
        return
    import bz2
    import gzip
    import lzma

    if compression == "gzip":
        # No file name or time in the header: the same predictions give the same bytes.
        writer = gzip.GzipFile(fileobj=stream, mode="wb", filename="", mtime=0)
    else:
        writer = (bz2.BZ2File if compression == "bz2" else lzma.LZMAFile)(stream, mode="wb")
    try:
        yield writer
    except BaseException:
        # Closed now, while ``stream`` is open: left to the collector, it would write its trailer into a
        # stream closed by then. The file is the owner's to remove.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()  # closes the compressor only: ``stream`` stays open for its owner


class _ParquetSink:
    """One Parquet file, a row group per chunk, its schema taken from the first chunk."""

    def __init__(self, stream):
        self.stream = stream
        self.writer = None

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.stream, table.schema)
        elif table.schema != self.writer.schema:
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                changed = next(f.name for f, g in zip(self.writer.schema, table.schema) if f.type != g.type)
                first = str(exc).strip().splitlines()[0]
                raise TorchclfError(f"--keep {changed}: its values change type part-way through the file ({first}); "
                                    "keep a column the model does not read, or write a CSV") from None
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        """Close the writer now, while its stream is open: left open, it would write its footer when collected,
        into a stream closed by then. The file itself is the owner's to remove; a second failure here is not news."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()


# ----- the whole file -------------------------------------------------------------------------------------
class PredictionWriter:
    """Predict every row of ``source`` and write the predictions, a chunk at a time.

    Parameters
    ----------
    predictor : Predictor
    source : str
        A ``.csv``/``.parquet`` file or a built-in dataset.
    output : Output
        The columns to write.

    Attributes
    ----------
    rows : int
        Rows predicted and written so far.
    started : bool
        Whether anything was written yet (the header comes with the first chunk).
    """

    def __init__(self, predictor, source: str, output: Output = Output()):
        check_output(predictor, output)
        self.predictor, self.where, self.output = predictor, source, output
        pre = predictor.preprocessor
        features = set(pre.plan.inputs(pre.feature_names)) | {str(n) for n in pre.feature_names}
        self.source = open_source(source, features, {c.name for c in pre.columns if c.kind == "categorical"})
        self.rows, self.started = 0, False
        missing = [c for c in dict.fromkeys(output.keep) if c not in self.source.columns]
        if missing:
            hints = closest(missing[0], self.source.columns)
            shown = ", ".join(map(repr, self.source.columns[:20])) + (" ..." if len(self.source.columns) > 20 else "")
            raise TorchclfError(f"--keep {missing[0]}: {source} has no such column"
                                + (f" (did you mean {' or '.join(map(repr, hints))}?)" if hints else "")
                                + f"; its columns are {shown}")

    def write(self, out: str | Path | None) -> int:
        """Write to the file ``out`` (Parquet for ``.parquet``/``.pq``, else CSV), or CSV to standard output
        for None or ``-``; returns the number of rows."""
        from torchclf import artifact

        if out is None or str(out) == "-":
            stdout = sys.stdout
            stdout.flush()  # what was printed before goes first: the rows go to the binary stream below it
            self._stream(_CsvSink(getattr(stdout, "buffer", stdout)), text_labels=True)
            return self.rows
        what, compression = output_format(out)
        parquet = what == "parquet"
        # A file is replaced in one step, never left half-written; a pipe or a device such as /dev/null is
        # written directly.
        with artifact.atomic_file(out) as fh:
            fh.flush()
            with compressed(fh.buffer, compression) as stream:
                self._stream(_ParquetSink(stream) if parquet else _CsvSink(stream), text_labels=not parquet)
        return self.rows

    def _stream(self, sink, text_labels: bool) -> None:
        import pyarrow as pa

        keep = list(dict.fromkeys(self.output.keep))
        columns = _Columns(self.predictor, self.output, text_labels)
        names = keep + columns.names
        # Whole multiples of the engine's batch (1,024 rows on a CPU), so that every row's logits come from the
        # same products as when the whole table is predicted at once (see Predictor._logits).
        from torchclf.engine import prediction_batch

        rows = chunk_rows(self.source.input_weight * len(self.source.columns) + len(columns.names),
                          prediction_batch(self.predictor.device))
        notes = _Notes(self.predictor, self.where, keep)
        try:
            for frame, kept in self.source.chunks(rows, keep):
                if len(frame) == 0:
                    continue
                first, last = self.rows + 1, self.rows + len(frame)
                where = self.where if self.rows == 0 else f"{self.where} (rows {first:,}-{last:,})"
                notes.check(frame, first, last, whole=first == 1 and len(frame) < rows)
                table = pa.Table.from_arrays(kept + columns.build(frame, where), names=names)
                self.started = True
                sink.write(table)
                self.rows = last
            if self.rows == 0:
                raise TorchclfError(f"{self.where}: has a header but no data rows")
        except BaseException:
            sink.abort()
            raise
        sink.close()


class _Notes:
    """The predictor's notes on new rows (unused columns, unseen categories, ...), each kind warned once,
    where it first appears; when the file is read in more than one chunk the note says which rows it counts."""

    def __init__(self, predictor, where: str, keep=()):
        self.predictor, self.where = predictor, where
        self.ignore = [*predictor.target_columns, *keep]  # columns the user knows are not features
        self.seen: set[str] = set()

    def check(self, frame: pd.DataFrame, first: int, last: int, whole: bool) -> None:
        """Warn the notes on ``frame``, rows ``first`` to ``last`` of the input (``whole``: all of it)."""
        for note in self.predictor.preprocessor.input_notes(frame, ignore=self.ignore):
            kind = re.sub(r"\d+", "#", re.sub(r"\(e\.g\. .*\)", "", note))  # counts and examples vary by chunk
            if kind not in self.seen:
                self.seen.add(kind)
                where = self.where if whole else f"{self.where} (rows {first:,}-{last:,})"
                warn(f"{where}: {note}")

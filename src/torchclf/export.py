"""A run as one ONNX graph: raw feature columns in, labels and probabilities out.

The graph is built by hand with the ``onnx`` package's helper API (no
``torch.onnx``, which needs more packages) and repeats, operator by
operator, what the run's own code does: :meth:`Preprocessor.transform`
(a date column's parts read from its text, as the column plan reads them;
imputation, missing flags, scaling, clipping and smooth clipping in
float64; one-hot with the ``<other>`` slot, or the category's code for an
embedded column), the :class:`~torchclf.model.MLP` in eval mode (with its
:class:`~torchclf.model.FeatureInputs`: periodic numeric embeddings and
category embeddings), and
:func:`decision_rule`'s logits -> probabilities -> labels (temperature
scaling and decision thresholds included). It has one input per raw column,
in training order: numeric columns as float64 of shape (n,) with NaN for a
missing value, categorical columns as strings of shape (n,) with
``"<missing>"`` for a missing value, date columns as their text of shape
(n,) (``"<missing>"``, or anything that is no date, a missing date). Its
outputs are ``label``, strings of shape (n,) (for multilabel the positive
labels joined by the run's separator), and ``probabilities``, float32 of
shape (n, n_classes).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from torchclf.artifact import as_the_target
from torchclf.data.columns import MOSTLY_NOT_DATES
from torchclf.errors import TorchclfError
from torchclf.preprocess import MAX_SCALED, MISSING, _as_float

# StringConcat (the multilabel label text), RegexFullMatch and StringSplit (dates) are in opset 20: onnx>=1.15,
# onnxruntime>=1.17
OPSET = 20
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder-2 (text <-> integer codes)
IR_VERSION = 9  # the newest IR that onnxruntime 1.17 reads
OUTPUTS = ("label", "probabilities")
TOLERANCE = 1e-5  # largest difference from Predictor.predict_proba that a check accepts
# Periodic embeddings of up to this many numeric columns take one MatMul by a block-diagonal weight (C times the
# multiply-adds of a batched MatMul, but fewer operators, fused: the cheaper for few columns); more, a batched MatMul.
BLOCK_DIAGONAL_COLUMNS = 4
INSTALL = "pip install 'torchclf[deploy]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TorchclfError(f"export: needs the {module} package; install it with {INSTALL}") from None


# ----- logits -> probabilities -> labels -------------------------------------------
@dataclass(frozen=True)
class DecisionRule:
    """How a run's logits become probabilities and labels, as plain numbers.

    ``temperature`` (shape (n_outputs,), or None) divides the logits before
    the sigmoid/softmax; ``threshold`` (shape (n_outputs,)) is the cut for
    binary and multilabel outputs (unused for multiclass, which takes the argmax).
    """

    kind: str
    temperature: np.ndarray | None
    threshold: np.ndarray


def _as_vector(value, n: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, n)
    if array.size != n or not np.isfinite(array).all():
        raise TorchclfError(f"export: the run's {what} must be {n} finite number(s), got {value!r}; "
                            "re-train or re-calibrate the run")
    return array


def decision_rule(predictor) -> DecisionRule:
    """The predictor's temperature scaling and decision threshold (``Predictor.calibration`` and
    ``Predictor.threshold``; without them, no scaling and the task's own threshold).

    Raises
    ------
    TorchclfError
        For a calibration other than temperature scaling (isotonic curves have no ONNX form here).
    """
    task = predictor.task
    n = task.n_outputs
    threshold = getattr(predictor, "threshold", None)
    threshold = _as_vector(task.threshold if threshold is None else threshold, n, "decision threshold")
    calibration = getattr(predictor, "calibration", None)
    temperature = None
    if calibration is not None:
        state = calibration.to_dict()
        if state.get("method") != "temperature":
            raise TorchclfError(f"export: the run's {state.get('method')!r} calibration cannot be exported to ONNX "
                                "(temperature scaling can); re-train with --calibration temperature or none")
        temperature = _as_vector(state["temperatures"], n, "temperatures")
        if (temperature <= 0).any():
            raise TorchclfError(f"export: the run's temperatures must be positive, got {temperature.tolist()}")
    return DecisionRule(task.kind, temperature, threshold)


# ----- a tiny graph builder ---------------------------------------------------------
class _Graph:
    """Nodes and constants of one graph, with internal names that cannot clash with a feature's."""

    def __init__(self, taken: set[str], dtype: int):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = dtype  # the network's element type (onnx.TensorProto.FLOAT or DOUBLE)
        self.prefix = "torchclf/"
        while any(name.startswith(self.prefix) for name in taken):
            self.prefix = "_" + self.prefix
        self.nodes, self.constants, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}.{self.count}"

    def const(self, value, hint: str = "const") -> str:
        name = self.name(hint)
        self.constants.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], domain=domain or None, **attrs))
        return out

    def ops(self, op_type: str, *inputs: str, n_out: int, **attrs) -> list[str]:
        """An operator with ``n_out`` outputs (StringSplit, Split)."""
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs


# ----- preprocessing ---------------------------------------------------------------
def _check_names(pre) -> None:
    for name in pre.feature_names:
        if name == "":
            raise TorchclfError("export: a feature column has an empty name, which ONNX reads as 'no input'; "
                                "rename the column and re-train")
        if name in OUTPUTS:
            raise TorchclfError(f"export: feature column {name!r} has the name of an output of the graph "
                                f"({', '.join(OUTPUTS)}); rename the column and re-train")


def _preprocess(g: _Graph, pre, dtype) -> str:
    """Graph inputs -> the encoded matrix of shape (n, n_inputs), as Preprocessor.transform makes it."""
    from onnx import TensorProto

    numeric = [c for c in pre.columns if c.kind == "numeric"]
    flagged = [k for k, c in enumerate(numeric) if c.missing_indicator]
    blocks, positions = [], {}  # positions: (column, slot) -> index in the concatenation below
    if numeric:
        columns = _numeric_blocks(g, pre, numeric)
        # Concat along axis 1 checks that every column has the same number of rows.
        x = g.op("Concat", *columns, axis=1) if len(columns) > 1 else columns[0]
        missing = g.op("Or", g.op("IsNaN", x), g.op("IsInf", x))
        filled = g.op("Where", missing, g.const(np.array([c.median for c in numeric])), x)
        z = g.op("Div", g.op("Sub", filled, g.const(np.array([c.mean for c in numeric]))),
                 g.const(np.array([c.scale for c in numeric])))
        z = g.op("Clip", z, g.const(np.float64(-MAX_SCALED)), g.const(np.float64(MAX_SCALED)))
        if any(c.clip > 0 for c in numeric):
            z = _smooth_clip(g, z, [c.clip for c in numeric])
        blocks.append(g.op("Cast", z, to=dtype))
        positions.update({(c.name, 0): k for k, c in enumerate(numeric)})
        if flagged:
            flags = g.op("Gather", missing, g.const(np.array(flagged, dtype=np.int64)), axis=1)
            blocks.append(g.op("Cast", flags, to=dtype))
            positions.update({(numeric[k].name, 1): len(numeric) + i for i, k in enumerate(flagged)})
    start = len(numeric) + len(flagged)
    for c in pre.columns:
        if c.kind != "categorical":
            continue
        codes = g.op("LabelEncoder", c.name, domain="ai.onnx.ml", keys_strings=list(c.categories),
                     values_int64s=list(range(len(c.categories))), default_int64=len(c.categories))
        if c.embed:  # one column holding the code as a number (exact in float32 below 2**24 codes)
            code = g.op("Cast", codes, to=dtype)
            blocks.append(g.op("Unsqueeze", code, g.const(np.array([1], dtype=np.int64), "axis1")))
            positions[(c.name, 0)] = start
            start += 1
            continue
        block = g.op("OneHot", codes, g.const(np.array([c.width], dtype=np.int64)),
                     g.const(np.array([0, 1], dtype=np.float32)))
        # onnxruntime's OneHot makes no float64, and 0/1 are exact in both types.
        blocks.append(block if dtype == TensorProto.FLOAT else g.op("Cast", block, to=dtype))
        positions.update({(c.name, k): start + k for k in range(c.width)})
        start += c.width
    x = g.op("Concat", *blocks, axis=1) if len(blocks) > 1 else blocks[0]
    order = [positions[(c.name, k)] for c in pre.columns for k in range(c.width)]
    if order != list(range(len(order))):  # back to the preprocessor's column order
        # As a MatMul by a 0/1 permutation matrix: exact for these values, all finite (clipped to +-MAX_SCALED,
        # flags, one-hot, codes): each output is one x times 1 plus zeros. Several times cheaper than
        # onnxruntime's Gather along axis 1.
        permutation = np.zeros((len(order), len(order)), dtype=np.float32 if dtype == TensorProto.FLOAT else np.float64)
        permutation[order, np.arange(len(order))] = 1
        x = g.op("MatMul", x, g.const(permutation, "permutation"))
    return x


def _numeric_blocks(g: _Graph, pre, numeric: list) -> list[str]:
    """The numeric columns as float64 blocks (n, k), in order: a raw column as the graph takes it (k = 1),
    the parts of a date column read from its text (k = its parts in a row)."""
    part_of = {out: (d, p) for d in pre.plan.dates for out, p in zip(d.output_names(), d.parts)}
    axis1 = g.const(np.array([1], dtype=np.int64), "axis1")
    blocks, start = [], 0
    while start < len(numeric):
        if numeric[start].name not in part_of:
            blocks.append(g.op("Unsqueeze", numeric[start].name, axis1))
            start += 1
            continue
        date, end = part_of[numeric[start].name][0], start + 1
        while end < len(numeric) and part_of.get(numeric[end].name, (None,))[0] is date:
            end += 1
        blocks.append(_date_parts(g, date.name, date.format, [part_of[c.name][1] for c in numeric[start:end]]))
        start = end
    return blocks


def _smooth_clip(g: _Graph, z: str, clips: list[float]) -> str:
    """z / sqrt(1 + (z / clip)^2) per column of the float64 matrix ``z`` (n, n_numeric), as
    ``Preprocessor._scale_block`` does.

    A column without clipping (clip 0) is divided by +inf instead: z / inf is 0 for the finite z
    that the Clip before leaves, so that column comes out bit for bit unchanged.
    """
    limits = g.const(np.array([c if c > 0 else np.inf for c in clips], dtype=np.float64), "clip")
    ratio = g.op("Div", z, limits)
    root = g.op("Sqrt", g.op("Add", g.const(np.float64(1.0)), g.op("Mul", ratio, ratio)))
    return g.op("Div", z, root)


# ----- date columns ----------------------------------------------------------------
# A date column enters as text and leaves as the parts ColumnPlan makes of it (data/columns.py, _part_values):
# the text is checked with a regular expression made from its strptime format, cut at the format's separators
# (StringSplit), read as whole numbers (Cast), and the calendar is worked out in integers. A value that is not
# such a date, or names a day that does not exist, is a missing date: NaN in every part, then the training
# medians as for any missing number.
# The fields read, as the digits pandas' strptime takes for each (their ranges are checked on the numbers).
DATE_FIELDS = {"Y": "[0-9]{4}", "y": "[0-9]{2}", "m": "[0-9]{1,2}", "d": "[0-9]{1,2}", "H": "[0-9]{1,2}",
               "M": "[0-9]{1,2}", "S": "[0-9]{1,2}", "f": "[0-9]{1,9}"}
DATE_EXAMPLE = {"Y": "1970", "y": "70", "m": "1", "d": "1", "H": "0", "M": "0", "S": "0", "f": "0"}
CALENDAR = ("Y", "m", "d", "H", "M", "S")  # the whole numbers every reading gives, in this order
CALENDAR_DEFAULT = np.array([0, 1, 1, 0, 0, 0], dtype=np.int64)  # strptime's, for a field the format lacks
CALENDAR_LOW = np.array([1, 1, 1, 0, 0, 0], dtype=np.int64)
# Second 60 or 61 (which strptime reads as the next minute and ISO 8601 refuses) is not read: a missing date.
CALENDAR_HIGH = np.array([9999, 12, 31, 23, 59, 59], dtype=np.int64)
# ISO 8601 as pandas reads format="ISO8601", the part read here: a date, then optionally a time after "T" or a
# space: two-digit hours alone, or hours and minutes, then seconds, then a fraction of a second.
ISO_TEXT = (r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
            r"(?:[T ](?:[0-9]{2}|[0-9]{1,2}:[0-9]{1,2}(?::[0-9]{1,2}(?:\.[0-9]{1,9})?)?))?")
# Rows put before the real ones, so that every StringSplit has its full width (a time after "T" and after a
# space) whatever the batch holds, also no rows at all.
ISO_EXAMPLES = ("1970-01-01T00:00:00.0", "1970-01-01 00:00:00.0")
DATES_READ = "export reads date formats made of %Y %y %m %d %H %M %S %f with text between the fields, and ISO 8601"
LEAP_DAYS_BEFORE_1970 = 1969 // 4 - 1969 // 100 + 1969 // 400  # leap years from 1 to 1969: 477


def _month_tables() -> tuple[np.ndarray, np.ndarray]:
    """Days in month m, and days of the year before it, at index m + 100 * leap (shape (200,); 0 for no month)."""
    length, before = np.zeros(200, dtype=np.int64), np.zeros(200, dtype=np.int64)
    for leap in (0, 1):
        days = np.array([31, 28 + leap, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
        length[100 * leap + 1:100 * leap + 13] = days
        before[100 * leap + 1:100 * leap + 13] = np.cumsum(days) - days
    return length, before


def _date_tokens(fmt: str) -> list[tuple[bool, str]]:
    """A strptime format as (is_field, text) tokens: ``(True, "Y")`` for %Y, ``(False, "/")`` for text.

    Raises
    ------
    ValueError
        Saying what of the format the graph cannot read.
    """
    tokens, text, i = [], "", 0
    while i < len(fmt):
        if fmt[i] != "%":
            text, i = text + fmt[i], i + 1
            continue
        code, i = fmt[i + 1:i + 2], i + 2
        if code == "%":
            text += "%"
            continue
        if code not in DATE_FIELDS:
            raise ValueError(f"%{code} is not read" if code else "a lone % is not read")
        if text:
            tokens.append((False, text))
        tokens.append((True, code))
        text = ""
    if text:
        tokens.append((False, text))
    fields = [t for is_field, t in tokens if is_field]
    if len(set(fields)) != len(fields) or {"Y", "y"} <= set(fields):
        raise ValueError("it gives a field twice")
    if not {"Y", "y"} & set(fields):
        raise ValueError("it has no year")
    if any(a[0] and b[0] for a, b in itertools.pairwise(tokens)):
        raise ValueError("two of its fields have no text between them")
    if any(not is_field and any(c.isdigit() for c in t) for is_field, t in tokens):
        raise ValueError("its text holds digits")
    return tokens


def _check_dates(pre) -> None:
    """Refuse, in one line, a date column whose values the graph cannot read."""
    for d in pre.plan.dates:
        if d.format is None:
            why = "training had date values, not text in a format"
        elif d.format == "ISO8601":
            continue
        else:
            try:
                _date_tokens(d.format)
                continue
            except ValueError as exc:
                why = f"format {d.format!r}: {exc}"
        raise TorchclfError(f"export: date column {d.name!r} cannot be read by the ONNX graph ({why}); {DATES_READ}; "
                            "predict with torchclf (or serve --backend torch), or re-train with the dates as text "
                            "in such a format (or --drop the column)")


def _text_pattern(text: str) -> str:
    """A regular expression (RE2) matching ``text`` exactly: letters and digits as they are, the rest by code."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def _spaces(text: str) -> bool:
    return text.strip(" ") == ""


def _format_pattern(tokens: list[tuple[bool, str]]) -> str:
    """The regular expression of a format's text; a separator of spaces matches any run of spaces (strptime
    reads a space in its format as any whitespace; StringSplit's "" cuts at runs of spaces)."""
    inner = [DATE_FIELDS[t] if is_field else " +" if 0 < k < len(tokens) - 1 and _spaces(t) else _text_pattern(t)
             for k, (is_field, t) in enumerate(tokens)]
    return "".join(inner)


def _iso_shaped(tokens: list[tuple[bool, str]]) -> bool:
    """Whether a format is ISO 8601's order and separators (%Y-%m-%d, optionally with %H, :%M, :%S, .%f after
    "T" or spaces): what it reads, :func:`_read_iso` cuts the same way."""
    fields = [t for is_field, t in tokens if is_field]
    separators = [t for is_field, t in tokens if not is_field]
    if not tokens[0][0] or not tokens[-1][0] or fields != list("YmdHMSf")[:len(fields)] or len(fields) < 3:
        return False
    expected = ["-", "-", None, ":", ":", "."][:len(separators)]
    return all(s == e if e is not None else s == "T" or _spaces(s) for s, e in zip(separators, expected))


def _take(g: _Graph, x: str, j: int) -> str:
    """Column ``j`` of the matrix ``x`` (n, m), shape (n,)."""
    return g.op("Gather", x, g.const(np.int64(j), "column"), axis=1)


def _drop_rows(g: _Graph, x: str, k: int) -> str:
    """``x`` without its first ``k`` rows (the example rows put before the real ones)."""
    return g.op("Slice", x, g.const(np.array([k], dtype=np.int64), "start"),
                g.const(np.array([2**62], dtype=np.int64), "end"), g.const(np.array([0], dtype=np.int64), "axis0"))


def _split(g: _Graph, text: str, delimiter: str, maxsplit: int) -> str:
    """Texts (n,) or (n, m) cut at their first ``maxsplit`` ``delimiter``\\ s ("": runs of spaces): one axis more,
    as wide as the most pieces of any text (shorter rows padded with "")."""
    return g.ops("StringSplit", text, n_out=2, delimiter=delimiter, maxsplit=maxsplit)[0]


def _with_examples(g: _Graph, x: str, pattern: str, examples: tuple[str, ...]) -> tuple[str, str]:
    """(matched (n,) bool, texts (len(examples) + n,)): ``examples``, then the column with every value that does
    not match ``pattern`` replaced by the first example. Cast then reads only digits, and every StringSplit
    has the width of the examples' pieces whatever the batch holds (no rows at all included)."""
    matched = g.op("RegexFullMatch", x, pattern=pattern)
    safe = g.op("Where", matched, x, g.const(np.array(examples[0], dtype=object), "date_example"))
    return matched, g.op("Concat", g.const(np.array(examples, dtype=object), "date_examples"), safe, axis=0)


def _numbers(g: _Graph, text: str, k: int, columns: list[int], fraction: int | None,
             prefix: bool) -> tuple[str, str | None]:
    """Pieces of text (k + n, m), examples first -> (the ``columns`` as int64 (n, len(columns)), the
    ``fraction`` column as a fraction of a second (n, 1) float64 or None). ``prefix``: a "0" before each
    number, so that a piece the text left out ("") reads as 0."""
    from onnx import TensorProto

    # The example rows leave after Cast: slicing numbers copies less than slicing text.
    pieces = _columns(g, text, np.array(columns), "pieces")
    if prefix:
        pieces = g.op("StringConcat", g.const(np.array("0", dtype=object)), pieces)
    ints = _drop_rows(g, g.op("Cast", pieces, to=TensorProto.INT64), k)
    if fraction is None:
        return ints, None
    digits = g.op("StringConcat", g.const(np.array("0.", dtype=object)), _columns(g, text, np.array([fraction]),
                                                                                   "fraction"))
    return ints, _drop_rows(g, g.op("Cast", digits, to=TensorProto.DOUBLE), k)


def _read_format(g: _Graph, x: str, tokens: list[tuple[bool, str]]) -> tuple[str, str, str | None]:
    """Text dates in a strptime format (shape (n,)) -> (matched (n,) bool, the CALENDAR fields (n, 6) int64,
    the fraction of a second (n, 1) float64 or None when the format has no %f). Rows that do not match
    hold the example's numbers."""
    from onnx import TensorProto

    prefix = tokens[0][1] if not tokens[0][0] else ""
    suffix = tokens[-1][1] if not tokens[-1][0] else ""
    inner = tokens[int(bool(prefix)):len(tokens) - int(bool(suffix))]
    fields = [t for is_field, t in inner if is_field]
    separators = [t for is_field, t in inner if not is_field]
    example = "".join(DATE_EXAMPLE[t] if is_field else t for is_field, t in tokens)
    matched, rest = _with_examples(g, x, _format_pattern(tokens), (example,))
    if prefix:
        rest = _take(g, _split(g, rest, prefix, 1), 1)
    # Each cut's pieces are kept whole (one Concat at the end picks the fields), the last one cut further.
    blocks, place, width, i = [], {}, 0, 0
    while i < len(separators):  # the fields are digits, so a separator's first place is after its field
        run = 1
        while i + run < len(separators) and separators[i + run] == separators[i]:
            run += 1  # both "-" of %Y-%m-%d in one cut
        cut = _split(g, rest, "" if _spaces(separators[i]) else separators[i], run)  # (n + 1, run + 1)
        place.update({fields[i + k]: width + k for k in range(run + 1)})  # the last one: the rest, for now
        blocks.append(cut)
        width, i = width + run + 1, i + run
        if i < len(separators) or suffix:
            rest = _take(g, cut, run)
    if suffix:
        blocks.append(_split(g, rest, suffix, 1))
        place[fields[-1]] = width
    elif not blocks:
        blocks.append(g.op("Unsqueeze", rest, g.const(np.array([1], dtype=np.int64), "axis1")))
        place[fields[-1]] = 0
    text = g.op("Concat", *blocks, axis=1) if len(blocks) > 1 else blocks[0]
    # The CALENDAR fields in order; one the format lacks reads the year, then takes strptime's default.
    source = ["y" if c == "Y" and "y" in fields else c for c in CALENDAR]
    ints, fraction = _numbers(g, text, 1, [place.get(c, place[source[0]]) for c in source], place.get("f"), False)
    present = np.array([c in fields for c in source], dtype=np.int64)
    if not present.all():
        ints = g.op("Add", g.op("Mul", ints, g.const(present)), g.const(CALENDAR_DEFAULT * (1 - present)))
    if "y" in fields:  # strptime's century: 69 to 99 are 1969 to 1999, 00 to 68 are 2000 to 2068
        early = g.op("Cast", g.op("Less", ints, g.const(np.array([69, 0, 0, 0, 0, 0], dtype=np.int64))),
                     to=TensorProto.INT64)
        century = g.op("Add", g.op("Mul", early, g.const(np.int64(100))),
                       g.const(np.array([1900, 0, 0, 0, 0, 0], dtype=np.int64)))
        ints = g.op("Add", ints, century)
    return matched, ints, fraction


def _read_iso(g: _Graph, x: str, pattern: str = ISO_TEXT) -> tuple[str, str, str]:
    """Text dates in ISO 8601 (those ``pattern`` matches, shape (n,)) -> (matched (n,) bool, the CALENDAR
    fields (n, 6) int64, the fraction of a second (n, 1) float64)."""
    matched, rows = _with_examples(g, x, pattern, ISO_EXAMPLES)
    ymd = _split(g, rows, "-", 2)  # 0 year, 1 month, 2 the rest
    after = _split(g, _take(g, ymd, 2), "T", 1)  # the day (with a time after spaces), a time after "T"
    # Each of those cut at spaces: 3 the day, 4 a time after spaces, 5 a time after "T", 6 "".
    cut = g.op("Reshape", _split(g, after, "", 1), g.const(np.array([0, 4], dtype=np.int64), "shape"))
    time = g.op("StringConcat", _take(g, cut, 1), _take(g, cut, 2))  # one of the two is ""
    hms = _split(g, time, ":", 2)  # 7 hours, 8 minutes, 9 seconds with their fraction ("" where none)
    second = _split(g, _take(g, hms, 2), ".", 1)  # 10 seconds, 11 the fraction
    text = g.op("Concat", ymd, cut, hms, second, axis=1)
    ints, fraction = _numbers(g, text, len(ISO_EXAMPLES), [0, 1, 3, 7, 8, 10], 11, True)
    return matched, ints, fraction


def _read_dates(g: _Graph, x: str, fmt: str) -> tuple[str, str | None, str]:
    """Text dates (n,) in the column's format -> (the CALENDAR fields (n, 6) int64, the fraction of a second
    (n, 1) float64 or None, whether the text is a date's (n, 1) bool), read as ColumnPlan's ``_read`` reads
    them: with the format, then, for a value the format misses, as ISO 8601 ("2024-03-31" in a column of
    "31/03/2024")."""
    axis1 = g.const(np.array([1], dtype=np.int64), "axis1")
    if fmt == "ISO8601":
        matched, fields, fraction = _read_iso(g, x)
        return fields, fraction, g.op("Unsqueeze", matched, axis1)
    tokens = _date_tokens(fmt)
    if _iso_shaped(tokens):  # its dates and ISO 8601's are cut the same way: one reading for both
        matched, fields, fraction = _read_iso(g, x, f"(?:{_format_pattern(tokens)})|(?:{ISO_TEXT})")
        return fields, fraction, g.op("Unsqueeze", matched, axis1)
    matched, fields, fraction = _read_format(g, x, tokens)
    iso_matched, iso_fields, iso_fraction = _read_iso(g, x)
    chosen = g.op("Unsqueeze", matched, axis1)
    if tokens[:2] == [(True, "Y"), (False, "-")]:
        # Text of both shapes can be: take the format's reading only where it names a real moment, as _read does.
        chosen = _calendar(g, fields, chosen)["valid"]
    fields = g.op("Where", chosen, fields, iso_fields)
    fraction = g.op("Where", chosen, fraction if fraction is not None else g.const(np.float64(0)), iso_fraction)
    return fields, fraction, g.op("Or", chosen, g.op("Unsqueeze", iso_matched, axis1))


def _calendar(g: _Graph, fields: str, matched: str) -> dict[str, str]:
    """The CALENDAR fields (n, 6) int64 -> each of them, ``leap`` (1 in a leap year), ``before`` (days of the
    year before the month) and ``valid``: (n, 1) each; valid where ``matched`` and each field is in its range,
    the day in its month."""
    from onnx import TensorProto

    out = dict(zip(CALENDAR, g.ops("Split", fields, n_out=6, axis=1, num_outputs=6)))
    # Gregorian: divisible by 4, not by 100 unless by 400.
    divisible = g.op("Cast", g.op("Equal", g.op("Mod", out["Y"], g.const(np.array([4, 100, 400], dtype=np.int64))),
                                  g.const(np.int64(0))), to=TensorProto.INT64)
    out["leap"] = g.op("MatMul", divisible, g.const(np.array([[1], [-1], [1]], dtype=np.int64), "leap"))
    key = g.op("Add", out["m"], g.op("Mul", out["leap"], g.const(np.int64(100))))  # a month 13 to 99: no days
    length, before = _month_tables()
    out["before"] = g.op("Gather", g.const(before, "days_before_month"), key, axis=0)
    length = g.op("Gather", g.const(length, "days_of_month"), key, axis=0)
    low, high = g.op("Sub", fields, g.const(CALENDAR_LOW)), g.op("Sub", g.const(CALENDAR_HIGH), fields)
    inside = g.op("ReduceMin", g.op("Min", low, high), g.const(np.array([1], dtype=np.int64)), keepdims=1)
    inside = g.op("GreaterOrEqual", inside, g.const(np.int64(0)))
    out["valid"] = g.op("And", g.op("And", matched, inside), g.op("LessOrEqual", out["d"], length))
    return out


def _date_parts(g: _Graph, x: str, fmt: str, parts: list[str]) -> str:
    """The text dates ``x`` (n,) -> float64 (n, len(parts)) of their ``parts`` (names from PARTS), as
    ``_part_values`` computes them; NaN in every part of a row without a date."""
    from onnx import TensorProto

    fields, fraction, matched = _read_dates(g, x, fmt)
    c = _calendar(g, fields, matched)

    def int64(v) -> str:
        return g.const(np.int64(v))

    dayofyear = g.op("Add", c["before"], c["d"])
    # Days since 1970-01-01: 365 a year, one more per leap year from year 1 to the year before, the day of the year.
    leap_years = g.op("MatMul", g.op("Div", g.op("Sub", c["Y"], int64(1)), g.const(np.array([4, 100, 400],
                                                                                           dtype=np.int64))),
                      g.const(np.array([[1], [-1], [1]], dtype=np.int64), "leap"))
    days = g.op("Add", g.op("Add", g.op("Mul", c["Y"], int64(365)), leap_years),
                g.op("Add", dayofyear, int64(-(365 * 1970 + LEAP_DAYS_BEFORE_1970 + 1))))
    weekday = g.op("Mod", g.op("Add", days, int64(3)), int64(7))  # 1970-01-01 was a Thursday; Monday is 0
    clock = g.op("MatMul", fields, g.const(np.array([[0, 0], [0, 0], [0, 0], [60, 3600], [1, 60], [0, 1]],
                                                    dtype=np.int64), "clock"))
    minutes, seconds = g.ops("Split", clock, n_out=2, axis=1, num_outputs=2)  # since midnight
    # The timestamp from whole microseconds, as numpy's datetime64[us] (which cuts nanoseconds off).
    micro = g.op("Add", g.op("Mul", days, int64(86_400_000_000)), g.op("Mul", seconds, int64(1_000_000)))
    if fraction is not None:
        scaled = g.op("Add", g.op("Mul", fraction, g.const(np.float64(1e6))), g.const(np.float64(1e-6)))
        micro = g.op("Add", micro, g.op("Cast", g.op("Floor", scaled), to=TensorProto.INT64))
    timestamp = g.op("Div", g.op("Cast", micro, to=TensorProto.DOUBLE), g.const(np.float64(86_400e6)))
    # 0 year, 1 month, 2 day, 3 hour, 4 minute, 5 second, 6 weekday, 7 day of the year, 8 minutes since midnight.
    numbers = g.op("Cast", g.op("Concat", fields, weekday, dayofyear, minutes, axis=1), to=TensorProto.DOUBLE)
    # The cycles turn as in _part_values: month - 1, weekday, hours with their minutes (minutes / 60); the angle
    # 2 pi times that, over the period; cos(a) as sin(a + pi/2), since onnxruntime has no float64 Cos (off by
    # the rounding of the sum, about 1e-16).
    position = g.op("Div", g.op("Sub", _columns(g, numbers, np.array([1, 6, 8]), "cycles"),
                                g.const(np.array([1.0, 0.0, 0.0]))), g.const(np.array([1.0, 1.0, 60.0])))
    angle = g.op("Div", g.op("Mul", position, g.const(np.float64(2 * np.pi))), g.const(np.array([12.0, 7.0, 24.0])))
    sines, cosines = g.op("Sin", angle), g.op("Sin", g.op("Add", angle, g.const(np.float64(np.pi / 2))))
    table = g.op("Concat", numbers, sines, cosines, timestamp, axis=1)  # (n, 16)
    where = {"year": 0, "month": 1, "day": 2, "hour": 3, "minute": 4, "weekday": 6, "dayofyear": 7,
             "month_sin": 9, "weekday_sin": 10, "hour_sin": 11, "month_cos": 12, "weekday_cos": 13,
             "hour_cos": 14, "timestamp": 15}
    index = np.array([where[p] for p in parts])
    if (np.diff(index) == 1).all():
        block = _columns(g, table, index, "parts")
    else:  # as in _preprocess: a MatMul by a 0/1 matrix is exact for these finite numbers, and cheaper than Gather
        choose = np.zeros((16, len(index)))
        choose[index, np.arange(len(index))] = 1
        block = g.op("MatMul", table, g.const(choose, "parts"))
    return g.op("Where", c["valid"], block, g.const(np.float64(np.nan)))


# ----- the network -----------------------------------------------------------------
def _array(tensor, dtype) -> np.ndarray:
    return tensor.detach().to("cpu").numpy().astype(dtype, copy=False)


def _network(g: _Graph, model, x: str, np_dtype) -> str:
    """The MLP's layers in eval mode (dropout is the identity), as ONNX operators."""
    from torch import nn

    double = np_dtype == np.float64
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper holds the module itself
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential):
        raise TorchclfError(f"export: the network is a {type(model).__name__}, not torchclf's MLP; "
                            "only networks built by torchclf can be exported")
    if getattr(model, "inputs", None) is not None:
        x = _feature_inputs(g, model.inputs, x, np_dtype)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            inputs = [x, g.const(_array(layer.weight, np_dtype), "weight")]
            if layer.bias is not None:
                inputs.append(g.const(_array(layer.bias, np_dtype), "bias"))
            x = g.op("Gemm", *inputs, transB=1)
        elif isinstance(layer, nn.BatchNorm1d):
            if layer.running_mean is None:
                raise TorchclfError(f"export: layer {i} (BatchNorm1d) keeps no running statistics; "
                                    "only batch norm with running statistics can be exported")
            n = layer.num_features
            scale = _array(layer.weight, np_dtype) if layer.weight is not None else np.ones(n, np_dtype)
            shift = _array(layer.bias, np_dtype) if layer.bias is not None else np.zeros(n, np_dtype)
            x = g.op("BatchNormalization", x, g.const(scale), g.const(shift),
                     g.const(_array(layer.running_mean, np_dtype)), g.const(_array(layer.running_var, np_dtype)),
                     epsilon=float(layer.eps))
        elif isinstance(layer, nn.LayerNorm):
            n = layer.normalized_shape[-1]
            scale = _array(layer.weight, np_dtype) if layer.weight is not None else np.ones(n, np_dtype)
            shift = _array(layer.bias, np_dtype) if layer.bias is not None else np.zeros(n, np_dtype)
            x = g.op("LayerNormalization", x, g.const(scale), g.const(shift), axis=-1, epsilon=float(layer.eps))
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        else:
            x = _activation(g, layer, x, np_dtype, double, i)
    return x


def _feature_inputs(g: _Graph, inputs, x: str, np_dtype) -> str:
    """:class:`~torchclf.model.FeatureInputs`: the encoded matrix (n, n_inputs) -> the first layer's
    input (n, inputs.width): the columns that are not codes, the periodic embeddings of the numeric
    columns, then one embedding per code column, in that order."""
    from onnx import TensorProto

    from torchclf.model import FeatureInputs

    if not isinstance(inputs, FeatureInputs):
        raise TorchclfError(f"export: the network's inputs module is a {type(inputs).__name__}, not torchclf's "
                            "FeatureInputs; only networks built by torchclf can be exported")
    parts = []
    if inputs.dense.numel():
        dense = inputs.dense.cpu().numpy().astype(np.int64)
        # Without code columns every column passes: x itself, not a copy (a Gather along axis 1 costs
        # about 1 ms per 10,000 rows in onnxruntime).
        parts.append(x if not inputs.code_columns else _columns(g, x, dense, "dense"))
    if inputs.periodic is not None:
        numeric = _columns(g, x, inputs.numeric.cpu().numpy().astype(np.int64), "numeric")
        parts.append(_periodic(g, inputs.periodic, numeric, np_dtype))
    for j, table in zip(inputs.code_columns, inputs.embeddings):
        code = g.op("Cast", g.op("Gather", x, g.const(np.int64(j), "code"), axis=1), to=TensorProto.INT64)
        # As FeatureInputs' clamp: a code outside the table (none comes from the graph's own encoding) stays in it.
        code = g.op("Clip", code, g.const(np.int64(0)), g.const(np.int64(table.num_embeddings - 1)))
        parts.append(g.op("Gather", g.const(_array(table.weight, np_dtype), "embedding"), code, axis=0))
    return g.op("Concat", *parts, axis=1) if len(parts) > 1 else parts[0]


def _columns(g: _Graph, x: str, index: np.ndarray, hint: str) -> str:
    """Columns ``index`` of the matrix ``x`` (n, m): a Slice (one copy) when they are consecutive, else a Gather."""
    if len(index) and (np.diff(index) == 1).all():
        return g.op("Slice", x, g.const(index[:1], f"{hint}_start"), g.const(index[-1:] + 1, f"{hint}_end"),
                    g.const(np.array([1], dtype=np.int64), "axis1"))
    return g.op("Gather", x, g.const(index, hint), axis=1)


def _periodic(g: _Graph, periodic, x: str, np_dtype) -> str:
    """:class:`~torchclf.model.PeriodicEmbedding`: numeric columns (n, C) -> (n, C * dim), each
    column's ``dim`` values together (column 0's first), as its ``flatten(1)``."""
    n_columns, dim = periodic.bias.shape
    # (2 pi) x, then times the frequencies: the order and rounding of the module's forward.
    angle = g.op("Mul", g.op("Unsqueeze", x, g.const(np.array([2], dtype=np.int64), "axis2")),
                 g.const(np_dtype(2 * np.pi)))
    angle = g.op("Mul", angle, g.const(_array(periodic.frequencies, np_dtype), "frequencies"))  # (n, C, F)
    if np_dtype == np.float64:
        # onnxruntime has long had a float64 Sin but not a float64 Cos (its kernel list up to opset 22 has
        # float only): cos(a) is sin(a + pi/2), off by the rounding of the sum, about 1e-16 |a|.
        cos = g.op("Sin", g.op("Add", angle, g.const(np.float64(np.pi / 2))))
    else:
        cos = g.op("Cos", angle)
    features = g.op("Concat", cos, g.op("Sin", angle), axis=2)  # (n, C, 2F)
    if n_columns <= BLOCK_DIAGONAL_COLUMNS:
        # One MatMul with the columns' weights on the diagonal of a (C * 2F, C * dim) matrix: the products with
        # its zeros add exact zeros, and onnxruntime fuses it, the bias and the ReLU into one Gemm (no transposes).
        weight = _array(periodic.weight, np_dtype)
        block = np.zeros((n_columns * weight.shape[1], n_columns * dim), dtype=np_dtype)
        for c in range(n_columns):
            block[c * weight.shape[1]:(c + 1) * weight.shape[1], c * dim:(c + 1) * dim] = weight[c]
        flat = g.op("Reshape", features, g.const(np.array([0, block.shape[0]], dtype=np.int64), "shape"))
        out = g.op("MatMul", flat, g.const(block, "weight"))  # (n, C * dim), column 0's first
        return g.op("Relu", g.op("Add", out, g.const(_array(periodic.bias, np_dtype).reshape(-1), "bias")))
    # Columns first, so that one batched MatMul applies each column's own (2F, dim) weight.
    out = g.op("MatMul", g.op("Transpose", features, perm=[1, 0, 2]),
               g.const(_array(periodic.weight, np_dtype), "weight"))  # (C, n, dim)
    out = g.op("Relu", g.op("Add", out, g.const(_array(periodic.bias, np_dtype)[:, None, :], "bias")))
    # Shape (n, C * dim) with n copied from the input (0), which also holds for no rows.
    return g.op("Reshape", g.op("Transpose", out, perm=[1, 0, 2]),
                g.const(np.array([0, n_columns * dim], dtype=np.int64), "shape"))


def _activation(g: _Graph, layer, x: str, np_dtype, double: bool, i: int) -> str:
    from onnx import TensorProto
    from torch import nn

    if isinstance(layer, nn.ReLU):
        return g.op("Relu", x)
    if isinstance(layer, nn.Tanh):
        return g.op("Tanh", x)
    if isinstance(layer, nn.Sigmoid):
        return g.op("Sigmoid", x)
    if isinstance(layer, nn.SiLU):
        return g.op("Mul", x, g.op("Sigmoid", x))
    positive = g.op("Greater", x, g.const(np_dtype(0)))  # onnxruntime has no float64 LeakyRelu or Elu
    if isinstance(layer, nn.LeakyReLU):
        if not double:
            return g.op("LeakyRelu", x, alpha=float(layer.negative_slope))
        return g.op("Where", positive, x, g.op("Mul", x, g.const(np_dtype(layer.negative_slope))))
    if isinstance(layer, nn.ELU):
        if not double:
            return g.op("Elu", x, alpha=float(layer.alpha))
        below = g.op("Mul", g.op("Sub", g.op("Exp", x), g.const(np_dtype(1))), g.const(np_dtype(layer.alpha)))
        return g.op("Where", positive, x, below)
    if isinstance(layer, nn.GELU):
        half = g.op("Mul", x, g.const(np_dtype(0.5)))
        if layer.approximate == "tanh":
            cubic = g.op("Add", x, g.op("Mul", g.op("Mul", g.op("Mul", x, x), x), g.const(np_dtype(0.044715))))
            inner = g.op("Tanh", g.op("Mul", cubic, g.const(np_dtype(np.sqrt(2 / np.pi)))))
        else:
            scaled = g.op("Mul", x, g.const(np_dtype(1 / np.sqrt(2))))
            if double:  # onnxruntime's Erf is float32 only: about 1e-7 relative error in a float64 network
                scaled = g.op("Cast", scaled, to=TensorProto.FLOAT)
                inner = g.op("Cast", g.op("Erf", scaled), to=TensorProto.DOUBLE)
            else:
                inner = g.op("Erf", scaled)
        return g.op("Mul", half, g.op("Add", inner, g.const(np_dtype(1))))
    raise TorchclfError(f"export: layer {i} of the network ({type(layer).__name__}) has no ONNX form here; "
                        "export supports Linear, BatchNorm1d, LayerNorm, Dropout and torchclf's activations")


# ----- the decision ----------------------------------------------------------------
def _decision(g: _Graph, logits: str, rule: DecisionRule, classes: list, label_sep: str | None) -> None:
    """Logits -> ``probabilities`` and ``label``, in the steps and precision of the predictor.

    As :meth:`Predictor.probabilities` and :meth:`Predictor.decide`: a calibrated head (or a float64
    network) works in float64, an uncalibrated float32 one in float32; the threshold is compared in
    that type; a temperature-scaled multiclass label is the argmax of the logits (scaling never changes
    it). The ``probabilities`` output is float32 either way.
    """
    from onnx import TensorProto

    wide = rule.temperature is not None or g.dtype == TensorProto.DOUBLE
    kind, np_type = (TensorProto.DOUBLE, np.float64) if wide else (TensorProto.FLOAT, np.float32)
    z = logits if kind == g.dtype else g.op("Cast", logits, to=kind)
    if rule.temperature is not None:
        z = g.op("Div", z, g.const(rule.temperature.astype(np_type), "temperature"))
    names = [str(c) for c in classes]

    def output(p: str) -> None:
        g.op("Cast", p, to=TensorProto.FLOAT, out="probabilities")

    if rule.kind == "multiclass":
        proba = g.op("Softmax", z, axis=1)
        output(proba)
        index = g.op("ArgMax", z if rule.temperature is not None else proba, axis=1, keepdims=0)
        g.op("LabelEncoder", index, out="label", domain="ai.onnx.ml",
             keys_int64s=list(range(len(names))), values_strings=names, default_string="")
        return
    p = g.op("Sigmoid", z)
    threshold = g.const(rule.threshold.astype(np_type), "threshold")
    if rule.kind == "binary":
        output(g.op("Concat", g.op("Sub", g.const(np_type(1)), p), p, axis=1))
        positive = g.op("Cast", g.op("GreaterOrEqual", p, threshold), to=TensorProto.INT64)
        index = g.op("Reshape", positive, g.const(np.array([-1], dtype=np.int64)))
        g.op("LabelEncoder", index, out="label", domain="ai.onnx.ml",
             keys_int64s=[0, 1], values_strings=names, default_string="")
        return
    output(p)
    _joined_labels(g, p, threshold, names, "|" if label_sep is None else label_sep)


def _joined_labels(g: _Graph, p: str, threshold: str, names: list[str], sep: str) -> None:
    """Multilabel ``label``: the names of the positive labels joined by ``sep``, as LabelCoder.decode does."""
    from onnx import TensorProto

    positive = g.op("Cast", g.op("GreaterOrEqual", p, threshold), to=TensorProto.INT64)
    # Each cell becomes a code: 0 (negative), 1 (first positive of its row), 2 (a later positive),
    # offset by 3 per label so that one LabelEncoder turns all codes into "", "name" or "<sep>name".
    before = g.op("CumSum", positive, g.const(np.int64(1)), exclusive=1)
    later = g.op("Min", before, g.const(np.int64(1)))
    code = g.op("Mul", positive, g.op("Add", later, g.const(np.int64(1))))
    code = g.op("Add", code, g.const(np.arange(len(names), dtype=np.int64) * 3))
    keys = [3 * j + k for j in range(len(names)) for k in (1, 2)]
    values = [text for name in names for text in (name, sep + name)]
    pieces = g.op("LabelEncoder", code, domain="ai.onnx.ml", keys_int64s=keys, values_strings=values,
                  default_string="")
    columns = [g.op("Gather", pieces, g.const(np.int64(j)), axis=1) for j in range(len(names))]
    text = columns[0]
    for column in columns[1:]:
        text = g.op("StringConcat", text, column)
    g.op("Identity", text, out="label")


# ----- the whole graph -------------------------------------------------------------
def to_onnx(predictor):
    """The run as an ``onnx.ModelProto`` (raw columns -> ``label``, ``probabilities``).

    Raises
    ------
    TorchclfError
        When the onnx package is missing or a part of the run has no ONNX form.
    """
    import torch

    onnx = _require("onnx")
    from onnx import TensorProto, helper

    pre = predictor.preprocessor
    _check_names(pre)
    _check_dates(pre)
    dtype = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE}.get(predictor.dtype)
    if dtype is None:
        raise TorchclfError(f"export: the network's weights are {predictor.dtype}; only float32 and float64 "
                            "networks can be exported (re-train without a half-precision model)")
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    rule = decision_rule(predictor)
    g = _Graph(set(pre.feature_names), dtype)
    x = _preprocess(g, pre, dtype)
    logits = _network(g, predictor.model, x, np_dtype)
    _decision(g, logits, rule, predictor.classes, predictor.label_sep)
    n = "n"
    inputs = [helper.make_tensor_value_info(name, TensorProto.DOUBLE if kind == "number" else TensorProto.STRING,
                                            [n]) for name, kind in input_kinds(pre).items()]
    outputs = [helper.make_tensor_value_info("label", TensorProto.STRING, [n]),
               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [n, len(predictor.classes)])]
    graph = helper.make_graph(g.nodes, "torchclf", inputs, outputs, g.constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                              producer_name="torchclf", producer_version=_version())
    model.ir_version = IR_VERSION
    model.doc_string = (f"torchclf {rule.kind} classifier: raw columns (float64 with NaN for missing; text with "
                        f"{MISSING!r} for missing; dates as text) -> label, probabilities")
    helper.set_model_props(model, metadata(predictor, rule))
    onnx.checker.check_model(model, full_check=True)
    return model


def _version() -> str:
    from torchclf import __version__

    return __version__


def metadata(predictor, rule: DecisionRule | None = None) -> dict[str, str]:
    """What a caller without torchclf needs to know, as the graph's metadata (JSON texts)."""
    rule = rule or decision_rule(predictor)
    formats = {d.name: d.format for d in predictor.preprocessor.plan.dates}

    def feature(name: str, kind: str) -> dict:
        if kind == "date":  # text, in the column's strptime format (or ISO 8601)
            return {"name": name, "type": "string", "format": "date", "date_format": formats[name]}
        return {"name": name, "type": kind}

    features = [feature(name, kind) for name, kind in input_kinds(predictor.preprocessor).items()]
    return {
        "torchclf.task": rule.kind,
        "torchclf.classes": json.dumps([str(c) for c in predictor.classes]),
        "torchclf.features": json.dumps(features),
        "torchclf.missing_category": MISSING,
        "torchclf.label_sep": "|" if predictor.label_sep is None else predictor.label_sep,
        "torchclf.threshold": json.dumps(rule.threshold.tolist()),
        "torchclf.temperature": json.dumps(None if rule.temperature is None else rule.temperature.tolist()),
    }


def export_onnx(predictor, out: str | Path) -> Path:
    """Write the run's ONNX graph to ``out`` (atomically: a complete file or none)."""
    model = to_onnx(predictor)
    out = Path(out)
    if out.is_dir():
        raise TorchclfError(f"--out {out}: is a folder; give a file name such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with as_the_target(out):
            tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----- feeding and checking a graph ------------------------------------------------
def input_kinds(pre) -> dict[str, str]:
    """The graph's inputs in order: raw column name -> "number", "string" (a category) or "date" (text)."""
    dates = pre.plan.sources()
    return dict((dates[c.name], "date") if c.name in dates else (c.name, "number" if c.kind == "numeric" else "string")
                for c in pre.columns)


def _date_texts(series: pd.Series) -> np.ndarray:
    """A date column as the graph takes it: text, date values written in ISO 8601, ``"<missing>"`` for missing."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dtype, "tz", None) is not None:  # the graph's text has no time zone
            raise TorchclfError(f"column {series.name!r}: dates with a time zone cannot be given to the ONNX graph; "
                                "give them as text, or as dates without a time zone")
        series = series.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return series.astype("object").where(series.notna(), MISSING).astype(str).to_numpy(object)


def onnx_inputs(predictor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw rows as the graph's inputs: float64 columns with NaN, text columns with ``"<missing>"``, date
    columns as text."""
    predictor.preprocessor.check_columns(frame)
    lookup = {str(c): c for c in frame.columns}
    feeds = {}
    for name, kind in input_kinds(predictor.preprocessor).items():
        series = frame[lookup[name]]
        if kind == "number":
            feeds[name] = _as_float(series)
        elif kind == "date":
            feeds[name] = _date_texts(series)
        else:  # exactly the text Preprocessor.transform compares with the categories
            feeds[name] = series.astype("object").where(series.notna(), MISSING).astype(str).to_numpy(object)
    return feeds


def session(model, threads: int = 1):
    """An onnxruntime session on the CPU for a path, bytes or ``onnx.ModelProto``."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Check:
    """How an ONNX graph agrees with the predictor on some rows."""

    rows: int
    max_difference: float  # largest absolute probability difference
    label_mismatches: int

    @property
    def ok(self) -> bool:
        return self.max_difference <= TOLERANCE and self.label_mismatches == 0


def check(predictor, model, frame: pd.DataFrame) -> Check:
    """Run ``model`` in onnxruntime on ``frame`` and compare with ``predict_proba`` and ``predict``."""
    sess = model if hasattr(model, "run") else session(model)
    labels, proba = sess.run(list(OUTPUTS), onnx_inputs(predictor, frame))
    expected = predictor.predict_proba(frame)
    expected_labels = [str(v) for v in predictor.predict(frame)]
    diff = float(np.abs(proba.astype(np.float64) - expected).max()) if len(frame) else 0.0
    mismatches = int(sum(a != b for a, b in zip(labels.tolist(), expected_labels)))
    return Check(len(frame), diff, mismatches)


def with_gaps(predictor, frame: pd.DataFrame, unseen: str = "never seen in training") -> pd.DataFrame:
    """A copy of ``frame`` in which about a third of the feature cells are missing and, in text
    columns, another third hold a category the run never saw (for checks of those paths); in date
    columns, that text (no date) replaces dates only while at most half the values are not dates
    (more would make the predictor refuse the rows)."""
    out = frame.copy()
    lookup = {str(c): c for c in out.columns}
    n = len(out)
    for j, (name, kind) in enumerate(input_kinds(predictor.preprocessor).items()):
        col = lookup[name]
        where = (np.arange(n) + j) % 3
        if kind == "number":
            out[col] = _as_float(out[col])
            out.loc[where == 0, col] = np.nan
            continue
        out[col] = out[col].astype(object)
        out.loc[where == 0, col] = None
        unseen_rows = where == 1
        if kind == "date":
            dates = _reads_as_dates(predictor, name, out[col])
            # Non-dates stay under the share the predictor refuses: the gaps' unseen values among them.
            room = int(MOSTLY_NOT_DATES * int(out[col].notna().sum())) - int((out[col].notna() & ~dates).sum())
            unseen_rows &= dates
            unseen_rows &= np.cumsum(unseen_rows) <= room
        out.loc[unseen_rows, col] = unseen
    return out


def _reads_as_dates(predictor, name: str, series: pd.Series) -> np.ndarray:
    """Mask of shape (n_samples,): the values of the date column ``name`` that the predictor reads as dates
    (none when it refuses the column for holding mostly other things)."""
    plan = predictor.preprocessor.plan
    date = next(d for d in plan.dates if d.name == name)
    try:
        parts = plan.apply(pd.DataFrame({name: series.to_numpy()}))
    except TorchclfError:
        return np.zeros(len(series), dtype=bool)
    return parts[date.output_names()[0]].notna().to_numpy()


def check_rows(predictor, model, frame: pd.DataFrame) -> Check:
    """:func:`check` on ``frame`` and on :func:`with_gaps` of it, as one result (2 * len(frame) rows)."""
    sess = model if hasattr(model, "run") else session(model)
    plain, gaps = check(predictor, sess, frame), check(predictor, sess, with_gaps(predictor, frame))
    return Check(plain.rows + gaps.rows, max(plain.max_difference, gaps.max_difference),
                 plain.label_mismatches + gaps.label_mismatches)

"""The fitted transform from raw columns to a float matrix, and from labels to indices.

Fitted on training rows only. Every fitted parameter is a plain number or
string, so the whole state round-trips through JSON (:meth:`to_dict`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from torchclf.config import ONEHOT_RARE_MAX, PARAM, SCALINGS
from torchclf.data.columns import ColumnPlan
from torchclf.data.columns import expect_manifest as _expect
from torchclf.data.sources import DataWarning, drop_nested_columns
from torchclf.errors import TorchclfError, warn

SMALL_FRAME_ROWS = 4096  # up to this many rows, numeric columns are read in one block (see transform)
CHUNK_ROWS = 8192  # rows of a larger frame's numeric columns scaled at a time (see Preprocessor._scale_columns)
MISSING = "<missing>"
OTHER = "<other>"
MAX_SCALED = 1e6  # standardised inputs are clipped to +-this many standard deviations
# New rows whose numeric column holds more than this fraction of values that are not numbers are
# refused: the column is text (or dates) where training had numbers, and every row would get the median.
MOSTLY_NOT_NUMBERS = 0.5
# The encoded matrix may take at most this fraction of the memory available; the rest is for the
# frame it comes from, the network, and the other splits.
MEMORY_FRACTION = 0.75
SMALL_MATRIX_BYTES = 8 * 2**20  # encodings smaller than this are never checked against memory
# Robust scaling divides by the interquartile range over this (the IQR of a normal distribution in
# standard deviations), so that both scalings agree on normally distributed columns.
IQR_PER_STD = 1.349
# Robust scaling then clips smoothly: z / sqrt(1 + (z / SMOOTH_CLIP)^2) keeps the middle of the
# distribution (|z| < 1 moves by under 3%) and squeezes outliers towards +-SMOOTH_CLIP.
SMOOTH_CLIP = 4.0
# Categories seen in fewer training rows than this share the <other> slot when a column is embedded:
# an embedding learnt from one row is noise, and <other> then learns what unseen categories need.
MIN_EMBEDDED_ROWS = 2


def available_memory() -> int | None:
    """Bytes of memory this process can still expect to get, or None when unknown.

    Linux's MemAvailable, capped by a container's (cgroup) memory limit; else
    the free physical memory the C library reports.
    """
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            found += [int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            found.append(int(text))
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # not on this platform
            pass
    return min(found) if found else None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _not_numbers(series: pd.Series, values: np.ndarray) -> np.ndarray:
    """Mask of shape (n_samples,): present values of ``series`` that ``values`` (its parse) could not read."""
    if _is_numeric(series):
        return np.zeros(len(series), dtype=bool)
    return series.notna().to_numpy() & np.isnan(values)


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    if _is_numeric(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _quantiles(values: np.ndarray, weight: np.ndarray | None, qs: tuple[float, ...]) -> list[float]:
    """The ``qs`` quantiles of the non-NaN ``values``, each counted ``weight`` times (0.0 if none).

    The inverse of the empirical distribution (no interpolation), so that
    integer weights give exactly the quantiles of the rows repeated.
    """
    present = ~np.isnan(values) if weight is None else ~np.isnan(values) & (weight > 0)
    if not present.any():
        return [0.0] * len(qs)
    if weight is None:
        return [float(v) for v in np.quantile(values[present], qs, method="inverted_cdf")]
    order = np.argsort(values[present], kind="stable")
    v, cum = values[present][order], np.cumsum(weight[present][order])
    return [float(v[min(int(np.searchsorted(cum, q * cum[-1])), len(v) - 1)]) for q in qs]


def _smooth_clip(z: np.ndarray, limit: float) -> np.ndarray:
    """``z`` squeezed into (-limit, limit): nearly unchanged near 0, outliers pulled in smoothly."""
    with np.errstate(over="ignore"):
        return z / np.sqrt(1.0 + np.square(z / limit))


def _weighted_median(values: np.ndarray, weight: np.ndarray) -> float:
    """The median of the non-NaN ``values`` with each counted ``weight`` times (0.0 if none).

    For integer weights it equals ``np.median`` of the values repeated.
    """
    present = ~np.isnan(values) & (weight > 0)
    if not present.any():
        return 0.0
    order = np.argsort(values[present], kind="stable")
    v, cum = values[present][order], np.cumsum(weight[present][order])
    i = int(np.searchsorted(cum, cum[-1] / 2))
    if cum[i] == cum[-1] / 2 and i + 1 < len(v):  # an even total: average the two middle values
        return float((v[i] + v[i + 1]) / 2)
    return float(v[i])


def embeds(kept: int, distinct: int, rows: float, onehot_max: int | None, embed_rows: int | None) -> bool:
    """Whether a categorical column enters the network as a learnt embedding rather than one-hot: it keeps
    more than ``onehot_max`` categories (``kept``, of ``distinct`` in ``rows`` training rows or their
    weights), and, up to ONEHOT_RARE_MAX of them, they average at least ``embed_rows`` rows each.

    Categories of a row or two each (a car's model name) make an embedding learnt from noise, while one-hot
    keeps even the single-row categories, each with its own weights (benchmarks/quality.py's cars table,
    mean of 10 seeds: 0.834 one-hot, 0.810 embedded).
    """
    if onehot_max is None or kept <= onehot_max:
        return False
    return embed_rows is None or kept > ONEHOT_RARE_MAX or rows >= embed_rows * distinct


def _distinct_texts(series: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's index among the distinct values of ``series``, and those values as text (missing values
    as ``MISSING``): the categories' text, for fitting and encoding alike.

    The rows are hashed once; only the distinct values are made text (as ``str`` makes each row's).
    """
    rows, uniques = pd.factorize(series, use_na_sentinel=False)
    return rows, [MISSING if pd.isna(value) else str(value) for value in uniques]


def _category_counts(series: pd.Series, weight: np.ndarray | None = None) -> dict[str, float]:
    """Rows (or summed weights) per category as text, missing values counted as ``MISSING``.

    Values that read the same as text (``1`` and ``"1"``) are one category.
    """
    rows, texts = _distinct_texts(series)
    per_value = np.bincount(rows, weights=weight, minlength=len(texts))
    counts: dict[str, float] = {}
    for key, count in zip(texts, per_value.tolist()):
        counts[key] = counts.get(key, 0) + count
    return counts


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _python(value):
    """A numpy scalar as the plain Python value JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value


def _column_lookup(frame: pd.DataFrame, where: str) -> dict:
    """Column names as text -> the frame's own labels (which may be numbers)."""
    lookup = {}
    for col in frame.columns:
        name = str(col)
        if name in lookup:
            raise TorchclfError(f"{where}: duplicate column name {name!r}; rename the columns so each is unique")
        lookup[name] = col
    return lookup


# ----- checking state read from a file -------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _is_nan(value) -> bool:
    return isinstance(value, float) and not np.isfinite(value)


def _column_from_dict(c, i: int) -> ColumnSpec:
    where = f"preprocess.columns[{i}]"
    _expect(isinstance(c, dict), where, "an object")
    unknown = set(c) - {f for f in ColumnSpec.__dataclass_fields__}
    _expect(not unknown, where, f"free of unknown fields (found {sorted(unknown)[:3]})")
    _expect(isinstance(c.get("name"), str), f"{where}.name", "text")
    _expect(c.get("kind") in ("numeric", "categorical"), f"{where}.kind", "'numeric' or 'categorical'")
    for key in ("median", "mean", "scale", "clip"):
        _expect(_is_number(c.get(key, 0.0)), f"{where}.{key}", "a finite number")
    _expect(c.get("scale", 1.0) > 0, f"{where}.scale", "positive")
    _expect(c.get("clip", 0.0) >= 0, f"{where}.clip", "0 (off) or positive")
    for key in ("missing_indicator", "embed"):
        _expect(isinstance(c.get(key, False), bool), f"{where}.{key}", "true or false")
    categories = c.get("categories", [])
    _expect(isinstance(categories, list) and all(isinstance(v, str) for v in categories),
            f"{where}.categories", "a list of text values")
    _expect(len(set(categories)) == len(categories), f"{where}.categories", "distinct values")
    return ColumnSpec(**c)


@dataclass
class ColumnSpec:
    """How one raw column becomes model inputs."""

    name: str
    kind: str  # "numeric" or "categorical"
    # numeric
    median: float = 0.0
    mean: float = 0.0
    scale: float = 1.0
    missing_indicator: bool = False
    clip: float = 0.0  # > 0: the scaled value is smoothly clipped to +-clip (robust scaling)
    # categorical
    categories: list[str] = field(default_factory=list)
    embed: bool = False  # one input holding the category's code (for nn.Embedding) instead of one-hot

    @property
    def width(self) -> int:
        if self.kind == "numeric":
            return 1 + int(self.missing_indicator)
        if self.embed:
            return 1
        return len(self.categories) + 1  # + the <other> slot for unseen values

    @property
    def n_codes(self) -> int:
        """Codes of an embedded column: one per category and one for <other> (unseen, rare)."""
        return len(self.categories) + 1

    def output_names(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name}__missing"] if self.missing_indicator else [])
        if self.embed:
            return [f"{self.name}#code"]
        return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}={OTHER}"]

    def codes(self, series: pd.Series) -> np.ndarray:
        """Category codes of shape (n_samples,): the index in ``categories``, or len(categories) for <other>."""
        rows, texts = _distinct_texts(series)
        per_value = pd.Index(self.categories).get_indexer(texts).astype(np.int64)
        per_value[per_value < 0] = len(self.categories)
        return per_value[rows]


@dataclass(frozen=True)
class InputLayout:
    """The encoded matrix's columns as the network sees them.

    Attributes
    ----------
    width : int
        Columns of the encoded matrix.
    numeric : tuple of int
        Columns holding a scaled number (not missing flags or one-hot slots).
    codes : tuple of (int, int)
        (column, number of codes) of each embedded categorical column.
    """

    width: int
    numeric: tuple[int, ...] = ()
    codes: tuple[tuple[int, int], ...] = ()


class Preprocessor:
    """Numeric columns: median-imputed then standardised (plus a missing flag
    when training rows had gaps); text columns: one-hot over the most frequent
    categories with one slot for anything else, missing values included as
    their own category.

    Parameters
    ----------
    max_categories : int
        Most one-hot columns per categorical column; rarer values share the
        ``<other>`` slot.
    numeric_text_ratio : float
        A text column whose values parse as numbers at least this often is
        treated as numeric, the stray text becoming missing values.
    scaling : {"standard", "robust"}
        ``standard``: subtract the mean, divide by the standard deviation.
        ``robust``: subtract the median, divide by the interquartile range
        (in standard-deviation units), then clip smoothly at +-``SMOOTH_CLIP``,
        so that outliers and skewed columns do not swamp the others.
    onehot_max : int, optional
        A categorical column with more categories than this becomes one
        input holding the category's code, which the network embeds
        (memory grows with rows, not rows x categories); categories seen in
        fewer than ``MIN_EMBEDDED_ROWS`` training rows then share ``<other>``.
        None one-hot encodes every column.
    embed_rows : int, optional
        Such a column is embedded only when its categories average at least
        this many training rows; a column of rarer categories (up to
        ``ONEHOT_RARE_MAX`` of them) stays one-hot. None: the number of
        categories alone decides.
    drop : sequence of str
        Columns to leave out (``--drop``). Before anything is encoded a
        :class:`~torchclf.data.columns.ColumnPlan` also leaves out identifier
        and free-text columns and turns date columns into numeric parts.

    The defaults are the parameter table's (``config.PARAMS``), as ``torchclf train`` uses them.
    """

    def __init__(self, max_categories: int = PARAM["max_categories"].default, numeric_text_ratio: float = 0.95,
                 scaling: str = PARAM["scaling"].default, onehot_max: int | None = PARAM["onehot_max"].default,
                 drop=(), embed_rows: int | None = PARAM["embed_rows"].default):
        self.max_categories = max_categories
        self.numeric_text_ratio = numeric_text_ratio
        self.scaling = scaling
        self.onehot_max = onehot_max
        self.embed_rows = embed_rows
        self.plan = ColumnPlan(drop)  # fitted first: the raw columns that reach the per-column loop
        self.columns: list[ColumnSpec] = []

    # ----- fitting -----------------------------------------------------------
    def fit(self, frame: pd.DataFrame, sample_weight=None) -> Preprocessor:
        """Learn column types, imputation values, scales and categories.

        ``sample_weight`` (shape (n_samples,), non-negative) makes each row
        count that many times in the medians, means, scales and category
        counts, so that integer weights match repeating the rows; rows of
        weight 0 are left out.
        """
        if frame.shape[1] == 0:
            raise TorchclfError("no feature columns to train on")
        weight = None
        if sample_weight is not None:
            weight = np.asarray(sample_weight, dtype=np.float64)
            frame, weight = frame[weight > 0], weight[weight > 0]
        _column_lookup(frame, "training rows")  # rejects names that clash once made text
        frame = self.plan.fit(frame)  # dropped, identifier and free-text columns out; dates as numeric parts
        # Reading a file already drops these (see from_frame); a DataFrame given directly may still hold them.
        frame = drop_nested_columns(frame, "training rows")
        if frame.shape[1] == 0:
            raise TorchclfError("training rows: every feature column holds lists or structs; flatten them into "
                                "columns of numbers or text")
        self.columns, constant = [], []
        for name in frame.columns:
            spec, single = self._fit_column(str(name), frame[name], weight)
            self.columns.append(spec)
            if single:
                constant.append(str(name))
        if constant:
            shown = ", ".join(map(repr, constant[:10])) + (" ..." if len(constant) > 10 else "")
            warn(
                f"constant column(s) {shown}: one value in every training row, so they cannot help "
                "the model; drop them",
                DataWarning,
            )
        return self

    def _fit_column(self, name: str, series: pd.Series, weight: np.ndarray | None = None) -> tuple[ColumnSpec, bool]:
        """The column's fitted spec, and whether it holds one value (or only missing ones) in every row.

        Linear in rows: the one-value check reads the values already parsed
        (a hashed count of distinct values, as ``nunique``, grew faster than
        the rows: 35 s of 5M rows).
        """
        if not _is_numeric(series):
            present = series.dropna()
            parsed = pd.to_numeric(present, errors="coerce")
            if len(present) and parsed.notna().mean() >= self.numeric_text_ratio and parsed.notna().any():
                stray = sorted(map(str, present[parsed.isna()].unique()))[:3]
                if stray:
                    warn(
                        f"column {name!r}: treating as numeric; {int(parsed.isna().sum())} value(s) "
                        f"that are not numbers (e.g. {stray}) become missing",
                        DataWarning,
                    )
            else:
                return self._fit_categorical(name, series, weight)
        values = _as_float(series)
        if np.isinf(values).any():
            warn(
                f"column {name!r}: {int(np.isinf(values).sum())} infinite value(s) treated as missing",
                DataWarning,
            )
            values = np.where(np.isinf(values), np.nan, values)
        missing = np.isnan(values)
        has_missing = bool(missing.any())
        single = bool(missing.all() or (not has_missing and np.all(values == values[0])))
        if self.scaling == "robust":
            return self._robust_spec(name, values, weight, has_missing), single
        with np.errstate(over="ignore", invalid="ignore"):
            if weight is None:
                median = float(np.nanmedian(values)) if not np.isnan(values).all() else 0.0
                filled = np.where(np.isnan(values), median, values)
                mean, std = float(filled.mean()), float(filled.std())
            else:
                median = _weighted_median(values, weight)
                filled = np.where(np.isnan(values), median, values)
                mean = float(np.average(filled, weights=weight))
                std = float(np.sqrt(np.average((filled - mean) ** 2, weights=weight)))
        if not (np.isfinite(mean) and np.isfinite(std)):
            # Values near float64's limit overflow the sums; work in units of the largest one instead.
            big = float(np.abs(filled).max())
            mean = float(np.average(filled / big, weights=weight)) * big
            std = float(np.sqrt(np.average((filled / big - mean / big) ** 2, weights=weight))) * big
        return ColumnSpec(
            name=name,
            kind="numeric",
            median=median,
            mean=mean,
            scale=std if std > 1e-12 else 1.0,
            missing_indicator=has_missing,
        ), single

    def _robust_spec(self, name: str, values: np.ndarray, weight: np.ndarray | None,
                     has_missing: bool) -> ColumnSpec:
        """Median-centred, scaled by the interquartile range and smoothly clipped (see ``scaling``).

        A column whose middle half is one value (a 0/1 column with a rare 1,
        counts mostly 0) has no interquartile range; it is scaled by its
        standard deviation, or by 1 when it is constant.
        """
        q25, median, q75 = _quantiles(values, weight, (0.25, 0.5, 0.75))
        scale = (q75 - q25) / IQR_PER_STD
        if not (np.isfinite(scale) and scale > 1e-12):
            present = ~np.isnan(values)
            big = float(np.abs(values[present]).max()) if present.any() else 0.0
            w = None if weight is None else weight[present]
            if big > 0 and (w is None or w.sum() > 0):  # in units of the largest value: no overflow
                unit = values[present] / big
                std = big * float(np.sqrt(np.average((unit - np.average(unit, weights=w)) ** 2, weights=w)))
            else:
                std = 0.0
            scale = std if std > 1e-12 else 1.0
        return ColumnSpec(name=name, kind="numeric", median=median, mean=median, scale=float(scale),
                          missing_indicator=has_missing, clip=SMOOTH_CLIP)

    def _fit_categorical(self, name: str, series: pd.Series,
                         weight: np.ndarray | None = None) -> tuple[ColumnSpec, bool]:
        counts = _category_counts(series, weight)
        if len(counts) > self.max_categories:
            warn(
                f"column {name!r}: {len(counts)} distinct values; keeping the {self.max_categories} "
                f"most frequent, the rest share {OTHER!r}",
                DataWarning,
            )
        # Sort by count, then name, so the encoding does not depend on row order.
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_categories]
        embed = embeds(len(ordered), len(counts), sum(counts.values()), self.onehot_max, self.embed_rows)
        if embed:
            ordered = [(k, n) for k, n in ordered if n >= MIN_EMBEDDED_ROWS] or ordered[:1]
        return (ColumnSpec(name=name, kind="categorical", categories=[k for k, _ in ordered], embed=embed),
                len(counts) <= 1)

    # ----- transforming ------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Raw column names the preprocessor expects, in training order (a date column, not its parts;
        not the columns left out)."""
        return self.plan.inputs([c.name for c in self.columns])

    @property
    def output_names(self) -> list[str]:
        """Names of the model's input columns, after encoding."""
        return [n for c in self.columns for n in c.output_names()]

    @property
    def n_outputs(self) -> int:
        return sum(c.width for c in self.columns)

    def layout(self) -> InputLayout:
        """Which of the encoded columns hold scaled numbers and which hold category codes."""
        numeric, codes, j = [], [], 0
        for spec in self.columns:
            if spec.kind == "numeric":
                numeric.append(j)
            elif spec.embed:
                codes.append((j, spec.n_codes))
            j += spec.width
        return InputLayout(j, tuple(numeric), tuple(codes))

    def check_columns(self, frame: pd.DataFrame, where: str = "input") -> None:
        lookup = _column_lookup(frame, where)
        missing = [n for n in self.feature_names if n not in lookup]
        if missing:
            shown = ", ".join(map(repr, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise TorchclfError(
                f"{where}: missing feature column(s) {shown} that the model was trained on; "
                "add them (extra columns are ignored)"
            )

    def transform(self, frame: pd.DataFrame, where: str = "input", dtype=np.float32) -> np.ndarray:
        """Encode raw rows.

        Returns
        -------
        ndarray of shape (n_samples, n_outputs), float32 (or ``dtype``)
        """
        self.check_columns(frame, where)
        frame = self.plan.apply(frame, where)  # date columns -> their parts
        lookup = _column_lookup(frame, where)
        self.check_memory(len(frame), np.dtype(dtype).itemsize, where)
        out = np.empty((len(frame), self.n_outputs), dtype=dtype)
        numeric = self._small_numeric_block(frame, lookup)
        if numeric is not None:
            self._scale_block(numeric, out)
        else:
            self._scale_columns(frame, lookup, out, where)
        j, row_starts = 0, None
        for spec in self.columns:
            if spec.kind == "categorical":
                codes = spec.codes(frame[lookup[spec.name]])
                if spec.embed:
                    out[:, j] = codes  # exact in float32 below 2**24 codes
                    j += spec.width
                    continue
                out[:, j : j + spec.width] = 0.0
                # Each row's 1 through the flat index of the (C-ordered) matrix: indexing the column block with
                # (rows, codes) pairs was 0.24 s for 3.5M rows against 0.02 s for 1M (not linear); this is 0.08.
                if row_starts is None:
                    row_starts = np.arange(len(frame), dtype=np.int64) * out.shape[1]
                out.reshape(-1)[row_starts + (j + codes)] = 1.0
            j += spec.width
        return out

    def check_memory(self, n_rows: int, itemsize: int, where: str = "input") -> None:
        """Refuse to encode ``n_rows`` rows when the matrix would not fit in memory.

        A one-hot column with tens of thousands of categories makes the dense
        matrix (n_rows, n_outputs) tens of GiB; allocating it would end in a
        MemoryError or the kernel's out-of-memory killer.
        """
        need = n_rows * self.n_outputs * itemsize
        if need < SMALL_MATRIX_BYTES:
            return  # not worth reading the system's files for (predicting one row must stay fast)
        available = available_memory()
        if available is None or need <= MEMORY_FRACTION * available:
            return
        widest = max(self.columns, key=lambda c: c.width if c.kind == "categorical" else 0)
        if widest.kind == "categorical" and widest.width > 100:
            embed = (f"--onehot-max {PARAM['onehot_max'].default} (onehot_max)" if self.onehot_max is None
                     else "--embed-rows none (embed_rows), which embeds it although its categories are rare")
            fix = (f"column {widest.name!r} alone has {widest.width:,} one-hot inputs: embed it with {embed}, "
                   "lower --max-categories (max_categories) or drop that column")
        else:
            fix = "encode fewer rows at a time, or use fewer columns"
        raise TorchclfError(
            f"{where}: the encoded rows would take {_gib(need)} ({n_rows:,} rows x {self.n_outputs:,} inputs x "
            f"{itemsize} bytes), more than {MEMORY_FRACTION:.0%} of the {_gib(available)} of memory available; {fix}"
        )

    def _check_numbers(self, name: str, series: pd.Series, values: np.ndarray, where: str) -> None:
        """Refuse a column that was numeric in training but whose values are mostly not numbers now."""
        bad = _not_numbers(series, values)
        present = int(series.notna().sum())
        if present and bad.sum() > MOSTLY_NOT_NUMBERS * present:
            examples = sorted(map(str, pd.unique(series[bad])))[:3]
            raise TorchclfError(
                f"{where}: column {name!r} held numbers in training, but {int(bad.sum())} of {present} value(s) "
                f"here are not numbers (e.g. {examples}); convert the column to numbers as in the training data "
                "(dates to the same numeric form), or fix the values"
            )

    def _small_numeric_block(self, frame: pd.DataFrame, lookup: dict) -> np.ndarray | None:
        """All numeric columns of a small frame as one float64 array, or None.

        Taking a column from a DataFrame costs tens of microseconds whatever its
        length, which dominates predicting one row; one ``to_numpy`` over the
        numeric columns avoids that. Large frames keep the column-by-column
        path, which is faster for them (no row-major copy of the whole frame).
        """
        names = [lookup[spec.name] for spec in self.columns if spec.kind == "numeric"]
        if len(frame) > SMALL_FRAME_ROWS or not names:
            return None
        sub = frame[names]
        if not all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in sub.dtypes):
            return None
        return sub.to_numpy(dtype="float64", na_value=np.nan)

    def _scale_columns(self, frame: pd.DataFrame, lookup: dict, out: np.ndarray, where: str) -> None:
        """The numeric columns of a large frame: each read and checked whole, then scaled into ``out``
        ``CHUNK_ROWS`` rows at a time through :meth:`_scale_block` (the same numbers).

        Scaled whole, each column made several temporaries of its full length (fresh memory, page by page)
        and was written into the row-major ``out`` one strided column at a time, passing over all of its
        memory once per column; a chunk's rows of every column stay in the cache instead (docs/benchmarks.md,
        "The pipeline around the loop").
        """
        columns = []
        for spec in self.columns:
            if spec.kind == "numeric":
                series = frame[lookup[spec.name]]
                values = _as_float(series)
                self._check_numbers(spec.name, series, values, where)
                columns.append(values)
        if not columns:
            return
        n, plan = len(frame), self._numeric_plan()
        block = np.empty((min(CHUNK_ROWS, n), len(columns)))
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            part = block[: stop - start]
            for k, values in enumerate(columns):
                part[:, k] = values[start:stop]
            self._scale_block(part, out[start:stop], plan)

    def _numeric_plan(self) -> dict:
        """What :meth:`_scale_block` needs of the numeric columns, worked out once per transform: their
        medians, means, scales and clips; the encoded columns they go to (one slice when consecutive, that
        is when no missing flag lies between them); and the flags' (numeric column, encoded column) pairs."""
        specs, positions, j = [], [], 0
        for spec in self.columns:
            if spec.kind == "numeric":
                specs.append(spec)
                positions.append(j)
            j += spec.width
        plan = {a: np.array([getattr(s, a) for s in specs]) for a in ("median", "mean", "scale", "clip")}
        consecutive = positions[-1] - positions[0] == len(positions) - 1
        plan["columns"] = slice(positions[0], positions[-1] + 1) if consecutive else positions
        plan["flags"] = [(k, positions[k] + 1) for k, spec in enumerate(specs) if spec.missing_indicator]
        return plan

    def _scale_block(self, values: np.ndarray, out: np.ndarray, plan: dict | None = None) -> None:
        """The numeric columns' imputation (the median), scaling, smooth clipping and missing flags for a
        block of rows (n_rows, n_numeric) at once, into those rows of ``out``."""
        plan = plan or self._numeric_plan()
        missing = ~np.isfinite(values)
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.where(missing, plan["median"], values)
            z -= plan["mean"]
            z /= plan["scale"]
            # However far out a new value lies, the network's input must stay a finite float32.
            np.clip(z, -MAX_SCALED, MAX_SCALED, out=z)
        clips = plan["clip"]
        clipped = clips > 0
        if clipped.all():
            z = _smooth_clip(z, clips)
        elif clipped.any():
            z[:, clipped] = _smooth_clip(z[:, clipped], clips[clipped])
        out[:, plan["columns"]] = z
        if plan["flags"]:
            numeric, encoded = zip(*plan["flags"])
            out[:, list(encoded)] = missing[:, list(numeric)]

    def input_notes(self, frame: pd.DataFrame, ignore=()) -> list[str]:
        """One line per thing in new rows the model will quietly work around.

        Extra columns (other than ``ignore``, e.g. the target) are not used,
        categories never seen in training share the ``<other>`` slot, and
        values of a numeric column that are not numbers get the training median
        (when they are most of the column, :meth:`transform` refuses instead).
        """
        notes: list[str] = []
        frame = self.plan.apply(frame, "input", notes)  # the dates' notes come from the same reading
        lookup = _column_lookup(frame, "input")
        used = set(self.feature_names) | {c.name for c in self.columns} | {str(c) for c in ignore}
        extra = [name for name in lookup if name not in used]
        if extra:
            shown = ", ".join(map(repr, extra[:10])) + (" ..." if len(extra) > 10 else "")
            notes.append(f"column(s) {shown} are not used by the model and are ignored")
        for spec in self.columns:
            if spec.kind == "numeric" and spec.name in lookup:
                series = frame[lookup[spec.name]]
                bad = _not_numbers(series, _as_float(series))
                present = int(series.notna().sum())
                if 0 < bad.sum() <= MOSTLY_NOT_NUMBERS * present:
                    examples = sorted(map(str, pd.unique(series[bad])))[:3]
                    notes.append(f"column {spec.name!r}: {int(bad.sum())} of {present} value(s) are not numbers "
                                 f"(e.g. {examples}) and are treated as missing (the training median)")
            if spec.kind != "categorical" or spec.name not in lookup:
                continue
            series = frame[lookup[spec.name]]
            strings = series.astype("object").where(series.notna(), MISSING).astype(str)
            unseen = strings[~strings.isin(spec.categories)]
            if len(unseen):
                examples = sorted(unseen.unique())[:3]
                notes.append(f"column {spec.name!r}: {len(unseen)} row(s) with categories not seen in training "
                             f"(e.g. {examples}) use the {OTHER!r} slot")
        return notes

    # ----- persistence -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "max_categories": self.max_categories,
            "numeric_text_ratio": self.numeric_text_ratio,
            "scaling": self.scaling,
            "onehot_max": self.onehot_max,
            "embed_rows": self.embed_rows,
            "columns": [vars(c) for c in self.columns],
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        """Rebuild from :meth:`to_dict`'s output, checking every type (the dict may come from a file)."""
        _expect(isinstance(d, dict), "preprocess", "an object")
        max_categories, ratio = d.get("max_categories"), d.get("numeric_text_ratio")
        _expect(_is_int(max_categories) and max_categories >= 1, "preprocess.max_categories", "a positive integer")
        _expect(_is_number(ratio) and 0 <= ratio <= 1, "preprocess.numeric_text_ratio", "a number in [0, 1]")
        columns = d.get("columns")
        _expect(isinstance(columns, list) and len(columns) > 0, "preprocess.columns", "a non-empty list")
        scaling, onehot_max = d.get("scaling", "standard"), d.get("onehot_max")  # absent before 0.2
        _expect(scaling in SCALINGS, "preprocess.scaling", f"one of {', '.join(SCALINGS)}")
        _expect(onehot_max is None or _is_int(onehot_max) and onehot_max >= 1, "preprocess.onehot_max",
                "a positive integer or null")
        embed_rows = d.get("embed_rows")  # absent before the rows-per-category rule
        _expect(embed_rows is None or _is_int(embed_rows) and embed_rows >= 1, "preprocess.embed_rows",
                "a positive integer or null")
        pre = cls(int(max_categories), float(ratio), scaling, onehot_max, embed_rows=embed_rows)
        pre.columns = [_column_from_dict(c, i) for i, c in enumerate(columns)]
        # A manifest from before the column plan: every column as it was, nothing dropped, no dates.
        pre.plan = ColumnPlan.from_dict(d["plan"]) if "plan" in d else ColumnPlan()
        pre.plan.check_outputs([c.name for c in pre.columns])
        names = pre.feature_names
        _expect(len(set(names)) == len(names), "preprocess.columns", "unique column names")
        return pre


class LabelCoder:
    """Maps original labels (strings, ints, bools) to class indices and back.

    For multilabel problems ``classes`` are the label names (the indicator
    columns) and targets are 0/1 matrices.
    """

    def __init__(self, classes: list | None = None, multilabel: bool = False):
        self.classes = list(classes or [])
        self.multilabel = multilabel

    def fit(self, target: pd.Series | pd.DataFrame) -> LabelCoder:
        if isinstance(target, pd.DataFrame):
            self.multilabel = True
            self.classes = [str(c) for c in target.columns]
            return self
        values = pd.unique(target.dropna())
        try:
            ordered = sorted(values)
        except TypeError:  # mixed types: order by their text
            ordered = sorted(values, key=str)
        self.classes = [_python(v) for v in ordered]
        return self

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode(self, target: pd.Series | pd.DataFrame, where: str = "target") -> np.ndarray:
        """Class indices of shape (n_samples,), or a 0/1 matrix (n_samples, n_labels)."""
        if self.multilabel:
            if not isinstance(target, pd.DataFrame):
                raise TorchclfError(f"{where}: this model is multilabel; give the label columns {self.classes}")
            missing = [c for c in self.classes if c not in target.columns]
            if missing:
                raise TorchclfError(f"{where}: missing label column(s) {missing}")
            return target[self.classes].to_numpy(dtype=np.int64)
        lookup = {c: i for i, c in enumerate(self.classes)}
        lookup.update({str(c): i for i, c in enumerate(self.classes)})
        # Each distinct label is looked up once and the rows take its index: linear in rows, a hash each.
        codes, uniques = pd.factorize(pd.Series(target, copy=False), use_na_sentinel=False)
        found = np.empty(len(uniques), dtype=np.int64)
        unseen = set()
        for j, value in enumerate(_python(v) for v in uniques):
            index = lookup.get(value, lookup.get(str(value))) if _hashable(value) else lookup.get(str(value))
            if index is None:
                unseen.add(str(value))
            else:
                found[j] = index
        if unseen:
            raise TorchclfError(
                f"{where}: label(s) {sorted(unseen)[:5]} were not seen in training; known classes are "
                f"{[str(c) for c in self.classes][:20]}"
            )
        return found[codes] if len(codes) else np.empty(0, dtype=np.int64)

    def decode(self, indices: np.ndarray, sep: str | None = None) -> list:
        """Original labels; for multilabel, the positive labels joined by ``sep``."""
        if self.multilabel:
            sep = "|" if sep is None else sep
            names = np.asarray(self.classes, dtype=object)
            return [sep.join(names[row.astype(bool)]) for row in np.asarray(indices)]
        return [self.classes[i] for i in np.asarray(indices).tolist()]

    def to_dict(self) -> dict:
        return {"classes": self.classes, "multilabel": self.multilabel}

    @classmethod
    def from_dict(cls, d: dict) -> LabelCoder:
        """Rebuild from :meth:`to_dict`'s output, checking every type (the dict may come from a file)."""
        _expect(isinstance(d, dict), "labels", "an object")
        classes, multilabel = d.get("classes"), d.get("multilabel")
        _expect(isinstance(multilabel, bool), "labels.multilabel", "true or false")
        _expect(isinstance(classes, list) and len(classes) > 0, "labels.classes", "a non-empty list")
        scalar = (str,) if multilabel else (str, int, float, bool)
        _expect(all(isinstance(c, scalar) and not _is_nan(c) for c in classes), "labels.classes",
                "label names" if multilabel else "text, number or true/false labels")
        _expect(len({(type(c), c) for c in classes}) == len(classes), "labels.classes", "distinct labels")
        return cls(list(classes), multilabel)

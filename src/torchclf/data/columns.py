"""Which raw columns become features: the user's drops, identifiers and free text left out, dates expanded.

:class:`ColumnPlan` is fitted on the training rows before the preprocessing
encodes anything, and saved with it. It leaves out the columns the user
dropped, columns holding an identifier (a distinct value in every row) and
columns of free text (prose, nearly every value different), each group with
one warning; and it turns date/time columns into numbers: year, month, day,
day of week, day of year, hour and minute where they vary, sine and cosine of
the cyclical ones, and the time itself in days since 1970-01-01. New rows get
the same expansion; the columns left out need not be there.
"""

from __future__ import annotations

import re
import shlex
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from torchclf.data.sources import DataWarning
from torchclf.errors import TorchclfError, closest, warn

# Below this many rows (with a value), a column of distinct values is as likely a small sample as an
# identifier, so nothing is left out of small tables.
MIN_ROWS = 50
# A whole-number column that rises in every row counts as a row counter when its values span at most this
# many times its rows: training rows are a random part (about 70%) of a counter's rows, so they span about
# 1.4 times their number, while a measurement rising in every row over such a narrow span is implausible.
COUNTER_SPAN = 2.0
# Whole-number columns with all values distinct and one of these names are identifiers whatever their
# order: "id", "user_id", "row-index", "key" as the last word, or camel case such as "PassengerId".
ID_WORD = re.compile(r"(?:^|[^A-Za-z0-9])(?:id|key|uuid|guid|index|idx)$", re.IGNORECASE)
ID_CAMEL = re.compile(r"[a-z0-9](?:Id|ID|Key|Uuid|UUID|Index)$")
# Free text: at least this share of the present values distinct ...
TEXT_DISTINCT_SHARE = 0.5
# ... and a typical (median) value of at least this many words and characters: prose, where names of
# people ("Braund, Mr. Owen Harris") and codes ("A/5 21171") are shorter.
TEXT_MIN_WORDS = 4
TEXT_MIN_CHARS = 30
# Values a text column is tried on before it is read in full, so that deciding a column is not dates or
# prose costs this many parses, not one per row.
SAMPLE = 200
# A text column is dates when at least this share of its present values parse with one format (the rest
# become missing); the same share as the preprocessing's numeric_text_ratio for numbers written as text.
DATE_SHARE = 0.95
NUMERIC_TEXT = 0.95
# New rows whose date column holds more than this share of values that are not dates are refused (a
# column of something else where training had dates); fewer become missing values, with a note.
MOSTLY_NOT_DATES = 0.5
MAX_FORMAT_CHARS = 64  # a date format read from a manifest is a short strptime pattern
# The parts a date column can become, in output order. A part enters only when it varies in the training
# rows (all dates at midnight: no hour or minute); sine and cosine go with their part, so that December
# sits next to January and Sunday next to Monday; the timestamp always enters.
PARTS = ("year", "month", "month_sin", "month_cos", "day", "weekday", "weekday_sin", "weekday_cos",
         "dayofyear", "hour", "hour_sin", "hour_cos", "minute", "timestamp")
CYCLES = {"month": 12, "weekday": 7, "hour": 24}
REASONS = ("identifier", "text")
EXAMPLE_TIME = pd.Timestamp("2024-03-31 14:30:00")  # a date shown in messages, written in the column's format


@dataclass
class DateSpec:
    """How one date/time column becomes numeric parts.

    ``format`` is the strptime pattern its text was read with ("ISO8601" for
    ISO dates of varying precision), or None when training had date values
    (new text is then read the way pandas guesses).
    """

    name: str
    format: str | None
    parts: list[str]

    def output_names(self) -> list[str]:
        return [f"{self.name}__{p}" for p in self.parts]

    def example(self) -> str:
        """A date as this column's text, for messages and example requests."""
        if self.format in (None, "ISO8601") or "%z" in self.format or "%Z" in self.format:
            return EXAMPLE_TIME.isoformat(sep=" ")
        return EXAMPLE_TIME.strftime(self.format)


@dataclass
class LeftOut:
    """A column the plan left out on its own, and why (``"identifier"`` or ``"text"``)."""

    name: str
    reason: str


def _parse(series: pd.Series, fmt: str | None) -> pd.Series:
    """Date values of shape (n_samples,) (NaT where a value is missing or is not a date in ``fmt``)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return series
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")  # numbers are not dates here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' notes on guessing a format; a miss is NaT either way
        for utc in (False, True):  # mixed time-zone offsets need one zone: UTC
            try:
                parsed = pd.to_datetime(series, format=fmt, errors="coerce", utc=utc)
            except (ValueError, TypeError, OverflowError):
                continue
            if pd.api.types.is_datetime64_any_dtype(parsed):
                return parsed
    return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")


def _read(series: pd.Series, fmt: str | None) -> pd.Series:
    """:func:`_parse` with ``fmt``, then ISO 8601 for the values it missed ("2024-03-31" in a column of
    "31/03/2024 14:30"): new rows may write a date the unambiguous way."""
    when = _parse(series, fmt)
    if fmt in (None, "ISO8601"):
        return when
    missed = series.notna().to_numpy() & when.isna().to_numpy()
    if missed.any():
        again = _parse(series[missed], "ISO8601")
        if again.notna().any():
            try:
                # In the finer of the two units: a batch with no value in ``fmt`` parses to whole seconds,
                # and the ISO values' fractions must not depend on what else is in the batch.
                unit = max(when.dt.unit, again.dt.unit, key=("s", "ms", "us", "ns").index)
                when = when.dt.as_unit(unit)  # a copy
                when[missed] = again.dt.as_unit(unit).astype(when.dtype).to_numpy()
            except (TypeError, ValueError):  # time zones that do not mix: those values stay missing
                pass
    return when


def _part_values(when: pd.Series) -> dict[str, np.ndarray]:
    """Every part of :data:`PARTS` as float64 of shape (n_samples,), NaN where the date is missing.

    Worked out with numpy's calendar units rather than pandas' ``.dt`` fields,
    which cost about a millisecond each: predicting one row must stay fast.
    Parts are of the wall-clock time (a time zone's own hours); the
    timestamp is of the instant (UTC).
    """
    tz = getattr(when.dtype, "tz", None)
    wall = when.dt.tz_localize(None) if tz is not None else when
    instant = when.dt.tz_convert("UTC").dt.tz_localize(None) if tz is not None else when
    t = wall.to_numpy(dtype="datetime64[us]")
    missing = np.isnat(t)
    t = np.where(missing, np.datetime64(0, "us"), t)
    years, months, days = t.astype("datetime64[Y]"), t.astype("datetime64[M]"), t.astype("datetime64[D]")
    minutes = (t - days).astype("timedelta64[m]").astype(np.int64)  # minutes since midnight
    out = {
        "year": years.astype(np.int64) + 1970.0,
        "month": (months - years).astype(np.int64) + 1.0,
        "day": (days - months).astype(np.int64) + 1.0,
        "weekday": (days.astype(np.int64) + 3) % 7 + 0.0,  # 1970-01-01 was a Thursday; Monday is 0
        "dayofyear": (days - years).astype(np.int64) + 1.0,
        "hour": minutes // 60 + 0.0,
        "minute": minutes % 60 + 0.0,
    }
    # The cycles turn on the exact position (month 1 and weekday 0 at angle 0; hours with their minutes).
    position = {"month": out["month"] - 1, "weekday": out["weekday"], "hour": minutes / 60}
    for part, period in CYCLES.items():
        angle = 2 * np.pi * position[part] / period
        out[f"{part}_sin"], out[f"{part}_cos"] = np.sin(angle), np.cos(angle)
    stamp = instant.to_numpy(dtype="datetime64[us]")
    out["timestamp"] = np.where(missing, np.datetime64(0, "us"), stamp).astype(np.int64) / 86_400e6
    for values in out.values():
        values[missing] = np.nan
    return out


def _date_format(sample: pd.Series) -> str | None:
    """The format that reads at least DATE_SHARE of ``sample`` (text) as dates with a year, or None."""
    from pandas.tseries.api import guess_datetime_format

    candidates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in dict.fromkeys(sample.iloc[:10].tolist()):
            for dayfirst in (False, True):
                fmt = guess_datetime_format(str(text).strip(), dayfirst=dayfirst)
                # Without a year, "1/2" or "10:30" would read as days of 1900.
                if fmt and ("%Y" in fmt or "%y" in fmt) and fmt not in candidates:
                    candidates.append(fmt)
    if not candidates:
        return None
    candidates.append("ISO8601")  # dates with and without a time of day in one column
    shares = [float(_parse(sample, fmt).notna().mean()) for fmt in candidates]
    best = int(np.argmax(shares))
    return candidates[best] if shares[best] >= DATE_SHARE else None


def _spread(positions: int, n: int) -> np.ndarray:
    """Up to ``positions`` row positions spread evenly over ``n`` rows (the same ones every time)."""
    return np.unique(np.linspace(0, n - 1, min(positions, n)).astype(np.int64))


def _rows_text(distinct: int, present: int, n: int) -> str:
    where = f"{present} rows" + (f" with a value (of {n})" if present < n else "")
    return f"{distinct} distinct values in {where}"


class ColumnPlan:
    """The raw columns a model reads, fitted on the training rows.

    Parameters
    ----------
    drop : sequence of str
        Columns to leave out (``--drop``); each must be a column of the
        training rows.
    """

    def __init__(self, drop=()):
        self.drop: list[str] = list(dict.fromkeys(str(name) for name in drop))
        self.columns: list[str] = []  # every raw column of the training rows; empty: not fitted (keeps all)
        self.left_out: list[LeftOut] = []
        self.dates: list[DateSpec] = []

    # ----- what the plan decided -----------------------------------------------
    @property
    def keeps_all(self) -> bool:
        """Whether every column reaches the preprocessing as it is (nothing dropped, left out or expanded)."""
        return not (self.drop or self.left_out or self.dates)

    def sources(self) -> dict[str, str]:
        """Output name -> the date column it is a part of, for every date part."""
        return {out: d.name for d in self.dates for out in d.output_names()}

    def inputs(self, names: list[str]) -> list[str]:
        """The raw columns that the output columns ``names`` are made from, in order (a date once)."""
        source = self.sources()
        return list(dict.fromkeys(source.get(n, n) for n in names))

    def example(self, name: str) -> str:
        """A value of the date column ``name`` as its text is written, for messages and example requests."""
        return next(d for d in self.dates if d.name == name).example()

    def outputs(self) -> list[str]:
        """The columns :meth:`fit` passes on, in order (empty when not fitted)."""
        gone = set(self.drop) | {c.name for c in self.left_out}
        dates = {d.name: d for d in self.dates}
        out = []
        for name in self.columns:
            if name in dates:
                out += dates[name].output_names()
            elif name not in gone:
                out.append(name)
        return out

    # ----- fitting ---------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, where: str = "training rows") -> pd.DataFrame:
        """Decide what happens to each column of the training rows and return the columns to encode.

        Returns
        -------
        DataFrame of shape (n_samples, n_kept)
            The rows without the dropped and left-out columns, each date
            column replaced in place by its numeric parts.
        """
        names = [str(c) for c in frame.columns]
        if len(set(names)) != len(names):
            raise TorchclfError(f"{where}: duplicate column names; rename the columns so each is unique")
        unknown = [d for d in self.drop if d not in names]
        if unknown:
            similar = closest(unknown[0], names)
            hint = f"similar: {', '.join(map(repr, similar))}" if similar else \
                f"the columns are {', '.join(map(repr, names[:10]))}{' ...' if len(names) > 10 else ''}"
            raise TorchclfError(f"cannot drop {unknown[0]!r}: no such column in the {where}; {hint}")
        self.columns, self.left_out, self.dates = names, [], []
        labels = dict(zip(names, frame.columns))
        said, values = [], {}  # values: date column -> its parts, worked out once while fitting
        for name in names:
            if name in self.drop:
                continue
            found = self._classify(name, frame[labels[name]], values)
            if isinstance(found, DateSpec):
                self.dates.append(found)
            elif found is not None:
                self.left_out.append(LeftOut(name, found[0]))
                said.append((name, found))
        self._warn(said)
        kept = self.outputs()
        if not kept:
            gone = [*self.drop, *(c.name for c in self.left_out)]
            raise TorchclfError(f"{where}: every feature column is dropped or left out "
                                f"({', '.join(map(repr, gone[:10]))}); keep at least one column to learn from")
        taken = set(names) - {d.name for d in self.dates}
        for d in self.dates:
            clash = [o for o in d.output_names() if o in taken]
            if clash:
                raise TorchclfError(f"{where}: column {clash[0]!r} has the name of a part of the date column "
                                    f"{d.name!r}; rename it")
        if kept == names:
            return frame
        parts = {out: values[d.name][p] for d in self.dates for out, p in zip(d.output_names(), d.parts)}
        if parts:
            frame = pd.concat([frame, pd.DataFrame(parts, index=frame.index)], axis=1)
        return frame.loc[:, [labels.get(n, n) for n in kept]]

    def _classify(self, name: str, series: pd.Series, values: dict):
        """A DateSpec, ("identifier" | "text", what it is, counts) for a column to leave out, or None to keep it.

        A date column's parts are put in ``values`` under its name.
        """
        if pd.api.types.is_datetime64_any_dtype(series):
            return self._date(name, series, None, values)
        if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series):
            return None  # a category the user declared, or a flag
        if pd.api.types.is_integer_dtype(series):
            return self._counter(name, series.dropna().to_numpy(dtype=np.float64))  # no overflow of uint64
        if pd.api.types.is_numeric_dtype(series):
            return None  # measurements: distinct values in every row are normal for floats
        present = series.dropna()
        if len(present) == 0:
            return None
        sample = present.iloc[_spread(SAMPLE, len(present))]
        kind = pd.api.types.infer_dtype(sample, skipna=True)
        if kind in ("datetime", "datetime64", "date"):
            return self._date(name, series, None, values)
        if kind != "string":
            return None  # numbers, mixed values, lists: the preprocessing's own rules apply
        numbers = pd.to_numeric(sample, errors="coerce")
        if numbers.notna().mean() >= NUMERIC_TEXT:  # numbers written as text: read as numbers
            read = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype=np.float64)
            whole = len(read) and np.isfinite(read).all() and (read == np.round(read)).all()
            return self._counter(name, read) if whole else None
        fmt = _date_format(sample)
        if fmt is not None:
            found = self._date(name, series, fmt, values)
            if found is not None:
                return found
        if len(present) < MIN_ROWS:
            return None
        strings = sample.astype(str)
        words = float(strings.str.split().str.len().median())
        chars = float(strings.str.len().median())
        prose = words >= TEXT_MIN_WORDS and chars >= TEXT_MIN_CHARS
        sample_distinct = strings.nunique()
        if not prose and sample_distinct < len(sample):
            return None  # a repeat in the sample: not an identifier, and not prose
        if prose and sample_distinct < TEXT_DISTINCT_SHARE * len(sample):
            return None
        distinct = int(present.nunique())
        rows = _rows_text(distinct, len(present), len(series))
        if prose and distinct >= TEXT_DISTINCT_SHARE * len(present):
            return "text", "free text", f"{rows}, typically {words:.0f} words"
        if distinct == len(present):
            return "identifier", "an identifier", rows
        return None

    def _counter(self, name: str, values: np.ndarray):
        """("identifier", what, counts) for whole numbers ``values`` (float64, in row order) that are a row
        counter or a named identifier, else None."""
        n = len(values)
        if n < MIN_ROWS:
            return None
        named = bool(ID_WORD.search(name) or ID_CAMEL.search(name))
        rising = bool(np.all(values[1:] > values[:-1]))
        counter = rising and values[-1] - values[0] + 1 <= COUNTER_SPAN * n
        if not (counter or named and len(np.unique(values)) == n):
            return None
        what = "a row number" if counter else "an identifier"
        return "identifier", what, f"{n} distinct whole numbers in {n} rows"

    def _date(self, name: str, series: pd.Series, fmt: str | None, found: dict) -> DateSpec | None:
        when = _read(series, fmt)
        present = int(series.notna().sum())
        if present == 0 or int(when.notna().sum()) < DATE_SHARE * present:
            return None
        values = found[name] = _part_values(when)
        varies = {p: bool(np.nanmin(v) != np.nanmax(v)) for p, v in values.items() if not np.isnan(v).all()}
        parts = [p for p in PARTS
                 if p == "timestamp" or varies.get(p.rsplit("_", 1)[0] if p.endswith(("_sin", "_cos")) else p)]
        return DateSpec(name, fmt, parts)

    @staticmethod
    def _warn(found: list) -> None:
        """One DataWarning per reason, naming its columns."""
        for reason in REASONS:
            group = [(name, what, counts) for name, (why, what, counts) in found if why == reason]
            if not group:
                continue
            # Both front doors' spelling of the `drop` parameter (config.PARAM["drop"]; a test checks them).
            names = [name for name, _, _ in group]
            how = " ".join(f"--drop {shlex.quote(name)}" for name in names) + f"; drop={names!r} in Python"
            if len(group) == 1:
                (name, what, counts), = group
                text = (f"column {name!r}: {counts} ({what}); left out — to silence this, drop it yourself "
                        f"({how}) or convert it")
            else:
                listed = ", ".join(f"{name!r} ({what}: {counts})" for name, what, counts in group)
                text = f"columns {listed}; left out — to silence this, drop them yourself ({how}) or convert them"
            warn(text, DataWarning)

    # ----- new rows --------------------------------------------------------------
    def apply(self, frame: pd.DataFrame, where: str = "input", notes: list[str] | None = None) -> pd.DataFrame:
        """New rows with each date column present replaced by its parts.

        Other columns, the date columns themselves included, are passed on as
        they are: the preprocessing ignores the columns it does not use, so
        the dropped and left-out ones may be there or not (the frame itself is
        returned when there are no dates). ``notes``, when given, receives one
        line per date column with some values that are not dates (treated as
        missing), from the same reading.

        Raises
        ------
        TorchclfError
            When most present values of a date column are not dates.
        """
        if not self.dates:
            return frame
        labels = {str(c): c for c in frame.columns}
        found = [d for d in self.dates if d.name in labels]
        if not found:
            return frame
        parts = {}
        for d in found:
            series = frame[labels[d.name]]
            when = _read(series, d.format)
            self._check_dates(d, series, when, where, notes)
            values = _part_values(when)
            parts.update(zip(d.output_names(), (values[p] for p in d.parts)))
        # One block and one concatenation: inserting the parts, or dropping the date columns (which
        # the preprocessing ignores), costs about a millisecond each, and predicting one row must stay fast.
        clash = [labels[p] for p in parts if p in labels]
        block = pd.DataFrame(np.column_stack(list(parts.values())), columns=list(parts), index=frame.index)
        return pd.concat([frame.drop(columns=clash) if clash else frame, block], axis=1)

    @staticmethod
    def _not_dates(series: pd.Series, when: pd.Series) -> np.ndarray:
        """Mask of shape (n_samples,): values present in ``series`` that did not read as dates."""
        return series.notna().to_numpy() & when.isna().to_numpy()

    def _check_dates(self, d: DateSpec, series: pd.Series, when: pd.Series, where: str,
                     notes: list[str] | None) -> None:
        """Refuse a column of mostly non-dates; note a few (in ``notes``, when given)."""
        bad = self._not_dates(series, when)
        if not bad.any():
            return
        present = int(series.notna().sum())
        examples = sorted(map(str, pd.unique(series[bad])))[:3]
        if present and bad.sum() > MOSTLY_NOT_DATES * present:
            raise TorchclfError(
                f"{where}: column {d.name!r} held dates in training, but {int(bad.sum())} of {present} value(s) "
                f"here are not dates (e.g. {examples}); give dates as in training, such as {d.example()!r}")
        if notes is not None:
            notes.append(f"column {d.name!r}: {int(bad.sum())} of {present} value(s) are not dates "
                         f"(e.g. {examples}) and are treated as missing (the training median)")

    # ----- persistence -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "columns": list(self.columns),
            "drop": list(self.drop),
            "left_out": [{"name": c.name, "reason": c.reason} for c in self.left_out],
            "dates": [{"name": d.name, "format": d.format, "parts": list(d.parts)} for d in self.dates],
        }

    @classmethod
    def from_dict(cls, d, where: str = "preprocess.plan") -> ColumnPlan:
        """Rebuild from :meth:`to_dict`'s output, checking every field (the dict may come from a file)."""
        expect_manifest(isinstance(d, dict), where, "an object")
        expect_manifest(not set(d) - {"columns", "drop", "left_out", "dates"}, where,
                f"free of unknown fields (found {sorted(set(d) - {'columns', 'drop', 'left_out', 'dates'})[:3]})")
        columns = d.get("columns", [])
        expect_manifest(_names(columns), f"{where}.columns", "a list of distinct column names")
        known = set(columns)
        drop = d.get("drop", [])
        expect_manifest(_names(drop) and set(drop) <= known, f"{where}.drop", "a list of distinct names from its columns")
        plan = cls(drop)
        plan.columns = list(columns)
        left_out, dates = d.get("left_out", []), d.get("dates", [])
        expect_manifest(isinstance(left_out, list), f"{where}.left_out", "a list")
        expect_manifest(isinstance(dates, list), f"{where}.dates", "a list")
        for i, c in enumerate(left_out):
            at = f"{where}.left_out[{i}]"
            expect_manifest(isinstance(c, dict) and set(c) == {"name", "reason"}, at, "an object with a name and a reason")
            expect_manifest(c["name"] in known, f"{at}.name", "one of its columns")
            expect_manifest(c["reason"] in REASONS, f"{at}.reason", f"one of {', '.join(REASONS)}")
            plan.left_out.append(LeftOut(c["name"], c["reason"]))
        for i, c in enumerate(dates):
            at = f"{where}.dates[{i}]"
            expect_manifest(isinstance(c, dict) and set(c) == {"name", "format", "parts"}, at,
                    "an object with a name, a format and parts")
            expect_manifest(c["name"] in known, f"{at}.name", "one of its columns")
            fmt = c["format"]
            expect_manifest(fmt is None or isinstance(fmt, str) and 0 < len(fmt) <= MAX_FORMAT_CHARS
                    and ("%" in fmt or fmt == "ISO8601"), f"{at}.format",
                    "null, 'ISO8601' or a short strptime pattern such as '%Y-%m-%d'")
            parts = c["parts"]
            expect_manifest(isinstance(parts, list) and len(parts) > 0 and all(p in PARTS for p in parts)
                    and len(set(parts)) == len(parts), f"{at}.parts", f"a non-empty list of distinct parts from "
                    f"{', '.join(PARTS)}")
            plan.dates.append(DateSpec(c["name"], fmt, list(parts)))
        chosen = [*plan.drop, *(c.name for c in plan.left_out), *(c.name for c in plan.dates)]
        expect_manifest(len(set(chosen)) == len(chosen), where, "a plan naming each column at most once")
        return plan

    def check_outputs(self, names: list[str], where: str = "preprocess.columns") -> None:
        """Refuse encoded columns ``names`` that this plan cannot give (a manifest whose parts disagree)."""
        expect_manifest(len(set(names)) == len(names), where, "unique column names")
        if not self.columns:  # a manifest from before the plan: every column is as it was
            return
        given = set(self.outputs())
        stray = [n for n in names if n not in given]
        expect_manifest(not stray, where, f"columns the column plan passes on (found {stray[:3]})")


def check_not_target(drop, targets) -> None:
    """Refuse a ``--drop`` that names a target column (the target is never a feature)."""
    both = [name for name in drop if name in {str(t) for t in targets}]
    if both:
        raise TorchclfError(f"--drop {both[0]!r}: that is the target column, which is never a feature; "
                            "leave it out of --drop")


def _names(value) -> bool:
    return (isinstance(value, list) and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value))


def expect_manifest(ok: bool, field: str, expected: str) -> None:
    """Refuse a manifest whose ``field`` is not ``expected``, in one line (the preprocessing's checks use it too)."""
    if not ok:
        raise TorchclfError(f"invalid manifest: {field} must be {expected}; re-train or restore the model")

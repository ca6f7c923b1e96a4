"""CSV files uploaded from the page: checked, read by the library's own reader, kept in memory.

An upload is refused with a one-line message when it is not a ``.csv`` file,
is larger than the limit, is not UTF-8 CSV, has too many rows or columns, or
has fewer than two numeric columns to plot. Accepted tables are kept (a
bounded number and a bounded total of memory, oldest dropped first) under an
unguessable id that the page sends back in its settings. Reading costs time
per column, so the header's width is checked before the file is read, and one
file is read at a time.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from torchclf.errors import TorchclfError

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_ROWS = 20000
MAX_CLASSES = 10
KEEP_UPLOADS = 32
MAX_COLUMNS = 1000  # about 0.3 s to read; 170,000 columns took a minute
MAX_KEPT_BYTES = 128 * 1024 * 1024  # memory of all kept tables together (at least 4 uploads of the size limit)
DELIMITERS = b",;\t|"


@dataclass(frozen=True)
class Upload:
    """An accepted table and what the page needs to offer its columns."""

    id: str
    name: str
    frame: pd.DataFrame
    numeric: list[str]
    nbytes: int = 0  # the table's memory, counted against the store's limit

    def describe(self) -> dict:
        columns = [str(c) for c in self.frame.columns]
        counters = {c for c in columns if _row_number(self.frame[c], c)}
        features = [c for c in self.numeric if c not in counters]
        x, y = (features if len(features) >= 2 else self.numeric)[:2]
        others = [c for c in columns if c not in (x, y) and c not in counters]
        return {
            "id": self.id,
            "name": self.name,
            "rows": int(len(self.frame)),
            "columns": columns,
            "numeric": self.numeric,
            # A guess the user can change: the first two numeric columns that are
            # not row numbers as features, and the last remaining column as the target.
            "suggested": {"x": x, "y": y, "target": others[-1] if others else None},
        }


def _row_number(column: pd.Series, name: str) -> bool:
    """Whether a column looks like a row number or id (named so, or counting up by one), not a measurement."""
    if name.strip().lower() in ("id", "index", "row", "unnamed: 0", "") or name.lower().endswith("_id"):
        return True
    values = column.to_numpy()
    return (pd.api.types.is_integer_dtype(column) and len(values) > 2
            and bool((values[1:] - values[:-1] == 1).all()))


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def safe_name(name: str) -> str:
    """A file name reduced to letters, digits, ``-``, ``_`` and ``.`` (for messages and paths)."""
    base = Path(str(name)).name
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)[:80] or "upload.csv"


def _header_width(body: bytes) -> int:
    """At most this many fields in the first non-blank line, whichever delimiter the reader settles on."""
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    return 1 + max(line.count(d) for d in DELIMITERS)


class UploadStore:
    """Accepted uploads by id, thread-safe: at most ``keep`` of them and ``kept_limit`` bytes of tables."""

    def __init__(self, max_bytes: int = MAX_UPLOAD_BYTES, max_rows: int = MAX_ROWS, keep: int = KEEP_UPLOADS,
                 max_columns: int = MAX_COLUMNS, max_kept_bytes: int | None = None):
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.keep = keep
        self.max_columns = max_columns
        self.max_kept_bytes = max_kept_bytes
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one file parsed at a time bounds the memory reading takes

    @property
    def kept_limit(self) -> int:
        """Bytes all kept tables may take together (grows with a raised upload limit)."""
        if self.max_kept_bytes is not None:
            return self.max_kept_bytes
        return max(MAX_KEPT_BYTES, 4 * self.max_bytes)

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(u.nbytes for u in self._items.values())

    def too_large(self, size: int) -> TorchclfError:
        return TorchclfError(
            f"upload: the file is larger than the limit of {_size(self.max_bytes)} ({_size(size)} or more); "
            "upload a smaller CSV, or start the playground with a larger --max-upload-mb"
        )

    def add(self, name: str, body: bytes) -> Upload:
        """Check and read one uploaded file.

        Raises
        ------
        TorchclfError
            When the file is refused; the message names the file and the fix.
        """
        from torchclf.data import read_table

        shown = safe_name(name)
        if not shown.lower().endswith(".csv"):
            raise TorchclfError(f"upload {shown}: not a .csv file; upload a CSV table with a header row")
        if len(body) > self.max_bytes:
            raise self.too_large(len(body))
        if b"\x00" in body[:8192]:
            raise TorchclfError(f"upload {shown}: looks like a binary file, not CSV text; upload a CSV table")
        width = _header_width(body)
        if width > self.max_columns:
            raise self._too_wide(shown, f"its header row has up to {width} fields")
        with self._reading, tempfile.TemporaryDirectory(prefix="torchclf-upload-") as tmp:
            path = Path(tmp) / "upload.csv"
            path.write_bytes(body)
            try:
                frame = read_table(path)
            except TorchclfError as exc:
                raise TorchclfError(str(exc).replace(str(path), f"upload {shown}")) from None
        if frame.shape[1] > self.max_columns:  # a header the quick count above misjudged
            raise self._too_wide(shown, f"{frame.shape[1]} columns")
        if len(frame) > self.max_rows:
            raise TorchclfError(
                f"upload {shown}: {len(frame)} rows, more than the playground's limit of {self.max_rows}; "
                "upload a sample of the rows"
            )
        numeric = [str(c) for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
                   and not pd.api.types.is_bool_dtype(frame[c]) and frame[c].notna().any()]
        if len(numeric) < 2:
            found = ", ".join(map(str, frame.columns[:10]))
            raise TorchclfError(
                f"upload {shown}: needs at least two numeric columns to plot as features, found "
                f"{len(numeric)} (columns: {found}); upload a table with two number columns and a label column"
            )
        if frame.shape[1] < 3:
            raise TorchclfError(
                f"upload {shown}: needs two feature columns and a target column, found only "
                f"{frame.shape[1]} columns; add the label column"
            )
        frame.columns = [str(c) for c in frame.columns]
        nbytes = int(frame.memory_usage(index=True, deep=True).sum())
        limit = self.kept_limit
        if nbytes > limit:
            raise TorchclfError(
                f"upload {shown}: the table takes {_size(nbytes)} in memory once read, more than the "
                f"{_size(limit)} the playground keeps for uploads; upload fewer rows or columns"
            )
        upload = Upload(secrets.token_urlsafe(12), shown, frame, numeric, nbytes)
        with self._lock:
            self._items[upload.id] = upload
            # Oldest first, until both the count and the memory fit.
            while len(self._items) > self.keep or sum(u.nbytes for u in self._items.values()) > limit:
                self._items.popitem(last=False)
        return upload

    def _too_wide(self, shown: str, found: str) -> TorchclfError:
        return TorchclfError(
            f"upload {shown}: {found}, more than the playground's limit of {self.max_columns} columns; "
            "upload only the columns to plot and the label column"
        )

    def get(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._items.get(upload_id)
        if upload is None:
            raise TorchclfError("upload: that file is no longer on the server (it may have restarted); upload it again")
        return upload

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def subset(upload: Upload, x: str, y: str, target: str) -> pd.DataFrame:
    """The chosen columns, rows with a missing value dropped, checked as a 2-to-10-class problem."""
    for role, col in (("x", x), ("y", y), ("target", target)):
        if col not in upload.frame.columns:
            raise TorchclfError(f"upload {upload.name}: no column {col!r} for {role}; pick one of its columns")
    for role, col in (("x", x), ("y", y)):
        if col not in upload.numeric:
            raise TorchclfError(
                f"upload {upload.name}: feature column {col!r} ({role}) is not numeric; "
                f"pick one of {', '.join(upload.numeric)}"
            )
    frame = upload.frame[[x, y, target]].dropna().reset_index(drop=True)
    n_classes = frame[target].nunique()
    if not 2 <= n_classes <= MAX_CLASSES:
        raise TorchclfError(
            f"upload {upload.name}: target {target!r} has {n_classes} distinct values in the rows with all "
            f"three columns filled; the playground needs 2 to {MAX_CLASSES} classes, pick another target column"
        )
    if frame[target].value_counts().min() < 2:
        raise TorchclfError(
            f"upload {upload.name}: a class of target {target!r} has a single row; "
            "each class needs at least two rows to be split into train and test"
        )
    return frame

"""Reading only this process's part of a Parquet source under ``torchrun``.

A Parquet file is made of row groups, and a folder of Parquet files of
files; both are units that can be read without touching the rest. Under
``torchrun`` with ``TORCHCLF_SHARD_PARQUET=1`` each rank reads a balanced,
deterministic subset of those units, so that no process holds the whole
table. Every rank computes the same assignment from the files' metadata, so
the parts are disjoint and together cover every row once.

Nothing here imports torch: the rank comes from the RANK and WORLD_SIZE
variables that ``torchrun`` sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from torchclf.errors import TorchclfError

SHARD_ENV = "TORCHCLF_SHARD_PARQUET"
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Part:
    """One row group of one Parquet file."""

    file: Path
    row_group: int
    rows: int


def rank_and_world(environ=None) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when sharded reading is switched on in a job of several processes."""
    env = os.environ if environ is None else environ
    if env.get(SHARD_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 else None


def is_parquet_source(path: str | Path) -> bool:
    """A ``.parquet``/``.pq`` file, or a folder holding such files."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in PARQUET_SUFFIXES for p in path.iterdir())
    return path.suffix.lower() in PARQUET_SUFFIXES


def reads_part(spec, environ=None) -> bool:
    """True when reading ``spec`` in this process yields only this rank's part of it."""
    return (isinstance(spec, (str, Path)) and rank_and_world(environ) is not None
            and Path(spec).exists() and is_parquet_source(spec))


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files of a source: the file itself, or a folder's files in name order."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
    if not files:
        raise TorchclfError(f"{path}: a folder with no .parquet files; point at a Parquet file or folder")
    return files


def parquet_parts(path: str | Path) -> list[Part]:
    """Every row group of every file of the source, from the files' metadata only."""
    import pyarrow.parquet as pq

    parts = []
    for file in parquet_files(path):
        try:
            meta = pq.ParquetFile(file).metadata
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise TorchclfError(f"{file}: cannot be read as parquet: {str(exc).splitlines()[0]}") from None
        parts += [Part(file, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return [p for p in parts if p.rows > 0]


def assign_parts(rows: list[int], world: int) -> list[list[int]]:
    """Indices of ``rows`` (part sizes) for each of ``world`` ranks, balanced by rows.

    Largest parts first, each to the rank with the fewest rows so far (the
    lowest rank on ties); each rank's indices come back in source order. The
    result depends only on the sizes, so every rank computes the same one.
    """
    loads = [0] * world
    owned: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owned[r].append(i)
        loads[r] += rows[i]
    return [sorted(idx) for idx in owned]


def read_parquet_part(path: str | Path, rank: int, world: int) -> pd.DataFrame:
    """Rank ``rank``'s rows of a Parquet file or folder, reading only its row groups.

    Returns
    -------
    DataFrame of shape (n_rows_of_this_part, n_columns)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = parquet_parts(path)
    if len(parts) < world:
        raise TorchclfError(
            f"{path}: {len(parts)} non-empty row group(s) for {world} processes; write the data with more "
            "row groups (pyarrow's row_group_size) or more files, or run fewer processes"
        )
    mine = [parts[i] for i in assign_parts([p.rows for p in parts], world)[rank]]
    tables = []
    for file in dict.fromkeys(p.file for p in mine):
        groups = [p.row_group for p in mine if p.file == file]
        tables.append(pq.ParquetFile(file).read_row_groups(groups))
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise TorchclfError(f"{path}: the Parquet files have different columns or types ({exc}); "
                            "write them with one schema") from None
    return table.to_pandas()


def read_rank_part(path: str | Path, environ=None) -> pd.DataFrame:
    """This process's part of a Parquet source (see :func:`rank_and_world`)."""
    place = rank_and_world(environ)
    assert place is not None, "read_rank_part needs a torchrun job with sharded reading on"
    return read_parquet_part(path, *place)

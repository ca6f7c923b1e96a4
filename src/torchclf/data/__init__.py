"""Reading sources into a :class:`Dataset` and splitting it.

Nothing here imports the rest of torchclf except :mod:`torchclf.errors`.
"""

from torchclf.data.builtin import BUILTIN_DATASETS, describe_builtin, load_builtin
from torchclf.data.dataset import Dataset
from torchclf.data.sources import from_frame, load_table, read_table, resolve_source
from torchclf.data.split import Splits, split_dataset
from torchclf.data.target import check_target

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "Splits",
    "check_target",
    "describe_builtin",
    "from_frame",
    "load_builtin",
    "load_table",
    "read_table",
    "resolve_source",
    "split_dataset",
]

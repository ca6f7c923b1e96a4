"""The tables of the quality benchmark: torchclf's built-ins, generated practitioner tables, and real
public tables read from files that ship inside PyPI packages (nothing is downloaded at run time).

Each table is a :class:`Table` row of ``TABLES``; ``load(name)`` turns it into a torchclf ``Dataset``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BUILTIN, GENERATED, REAL = "built-in", "generated", "real"

# The generated high-cardinality tables: 50,000 rows keeps one RealMLP-TD fit in minutes on one thread
# while a K = 10,000 column still has about 3.5 training rows per category on average (Zipf-like: many fewer
# for the rare ones), which is what makes it hard.
HIGHCARD_ROWS = 50_000


# ----- generated tables -----------------------------------------------------------------------
def mixed_table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A practitioner-style table of shape (n, 6): numbers, categories, missing values, string labels."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = np.exp(rng.normal(10, 0.6, n))
    city = rng.choice(["north", "south", "east", "west", "centre"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], n)
    visits = rng.poisson(3, n).astype(float)
    score = (0.04 * (age - 50) + 0.8 * np.log(income / 20000) + (city == "north") * 0.7
             - (plan == "basic") * 0.9 + 0.25 * visits + 0.5 * np.sin(age / 7) + rng.normal(0, 0.8, n))
    label = np.where(score > 0.6, "churn", np.where(score > -0.6, "stay", "upgrade"))
    frame = pd.DataFrame({"age": age, "income": income, "city": city, "plan": plan, "visits": visits, "label": label})
    for col, rate in (("income", 0.1), ("city", 0.05), ("visits", 0.08)):
        frame.loc[rng.random(n) < rate, col] = None
    return frame


def highcard_table(k: int, n: int = HIGHCARD_ROWS, seed: int = 0) -> pd.DataFrame:
    """One string column ``item`` with ``k`` categories that carry most of the signal, four numeric columns
    and a binary string label ``bought`` (yes/no); shape (n, 6).

    Category frequencies fall as rank**-0.5 (a long tail, as product or city names do), and the names are
    shuffled so that their sort order says nothing. Each category has its own effect on the label; the
    numeric columns add a linear, an interaction and a periodic term. 2% of ``item`` and 5% of ``x3`` are missing.
    """
    rng = np.random.default_rng(seed)
    weights = np.arange(1, k + 1) ** -0.5
    rank = rng.choice(k, n, p=weights / weights.sum())
    names = np.array([f"item{j:05d}" for j in rng.permutation(k)])
    effect = rng.normal(0.0, 1.5, k)
    x = rng.normal(size=(n, 4))
    logit = effect[rank] + 1.0 * x[:, 0] - 0.8 * x[:, 1] * x[:, 2] + 0.7 * np.sin(2.0 * x[:, 3])
    bought = np.where(logit + rng.logistic(0.0, 0.5, n) > 0, "yes", "no")
    frame = pd.DataFrame({"item": names[rank], **{f"x{j}": x[:, j] for j in range(4)}, "bought": bought})
    frame.loc[rng.random(n) < 0.02, "item"] = None
    frame.loc[rng.random(n) < 0.05, "x3"] = np.nan
    return frame


MULTILABEL_TAGS = ["sports", "news", "music", "games"]


def multilabel_mixed_table(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A mixed-type table with four 0/1 label columns (``MULTILABEL_TAGS``, correlated through shared
    causes) and five feature columns (numbers, two categorical, missing values); shape (n, 9)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(16, 75, n).astype(float)
    hours = rng.gamma(2.0, 1.5, n)
    region = rng.choice(["north", "south", "east", "west", "islands", "capital"], n)
    device = rng.choice(["phone", "tablet", "desktop"], n, p=[0.6, 0.15, 0.25])
    sessions = rng.poisson(4, n).astype(float)
    young = (age < 30).astype(float)
    shared = rng.normal(0, 0.7, n)  # one hidden taste that makes the labels co-occur
    logits = {
        "sports": 0.9 * (region == "north") + 0.3 * sessions - 1.5 + shared,
        "news": 0.04 * (age - 45) + 0.8 * (device == "desktop") - 0.2,
        "music": 1.4 * young + 0.4 * np.log1p(hours) - 1.0 - 0.5 * shared,
        "games": 1.2 * young * (device != "desktop") + 0.25 * hours - 1.6 + 0.8 * (region == "capital"),
    }
    frame = pd.DataFrame({"age": age, "hours": hours, "region": region, "device": device, "sessions": sessions})
    for tag, z in logits.items():
        frame[tag] = (z + rng.logistic(0.0, 0.6, n) > 0).astype(np.int64)
    for col, rate in (("hours", 0.07), ("region", 0.05)):
        frame.loc[rng.random(n) < rate, col] = None
    return frame


# ----- real tables shipped inside packages ------------------------------------------------------
def package_file(package: str, relative: str) -> Path:
    """The path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed (pip install -e '.[bench]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed {package}")
    return path


def read_package_table(package: str, relative: str) -> pd.DataFrame:
    path = package_file(package, relative)
    return pd.read_json(path) if path.suffix == ".json" else pd.read_csv(path)


# ----- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """One benchmark table: how to build it and what it is."""

    name: str
    kind: str  # BUILTIN, GENERATED or REAL
    source: str  # where the rows come from, as shown in the docs
    about: str
    frame: Callable[[], pd.DataFrame] | None = None  # the whole table, target included (None: a built-in)
    target: str | list[str] | None = None
    package: str | None = None  # the PyPI package that has to be installed (REAL tables)

    def available(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None


def _builtin(name: str, about: str) -> Table:
    return Table(name, BUILTIN, "torchclf built-in", about)


def _real(name: str, package: str, relative: str, target: str, about: str) -> Table:
    return Table(name, REAL, f"{package}: {relative}", about, lambda: read_package_table(package, relative),
                 target, package)


TABLES: dict[str, Table] = {t.name: t for t in [
    _builtin("iris", "scikit-learn's iris"),
    _builtin("wine", "scikit-learn's wine"),
    _builtin("breast_cancer", "scikit-learn's breast cancer"),
    _builtin("digits", "scikit-learn's 8x8 digits"),
    _builtin("checkerboard", "a 4x4 checkerboard, two numeric columns"),
    _builtin("xor", "four quadrants labelled by XOR"),
    _builtin("spirals", "three spiral arms"),
    _builtin("multilabel", "scikit-learn's multilabel generator, 5 labels"),
    Table("mixed", GENERATED, "benchmarks/quality_tables.py", "numbers, categories, missing values, 3 string labels",
          mixed_table, "label"),
    Table("highcard1k", GENERATED, "benchmarks/quality_tables.py",
          "one string column of 1,000 categories carrying the signal, 4 numeric columns",
          lambda: highcard_table(1_000), "bought"),
    Table("highcard10k", GENERATED, "benchmarks/quality_tables.py",
          "one string column of 10,000 categories (9,659 occur) carrying the signal, 4 numeric columns",
          lambda: highcard_table(10_000, seed=1), "bought"),
    Table("multilabel_mixed", GENERATED, "benchmarks/quality_tables.py",
          "numbers, categories, missing values, 4 correlated 0/1 labels", multilabel_mixed_table, MULTILABEL_TAGS),
    _real("penguins", "palmerpenguins", "data/penguins.csv", "species",
          "Palmer penguins' species from measurements, island, sex (missing values)"),
    _real("diamonds", "plotnine", "data/diamonds.csv", "cut",
          "a diamond's cut (5 grades) from carat, colour, clarity, proportions and price"),
    _real("cars", "vega_datasets", "_data/cars.json", "Origin",
          "a car's origin from its name (311 distinct), measurements (missing values) and a date"),
    _real("seattle_weather", "vega_datasets", "_data/seattle-weather.csv", "weather",
          "Seattle's weather (5 kinds) from a date, precipitation, temperatures and wind"),
]}


def load(name: str):
    """The table ``name`` as a torchclf ``Dataset`` (features of any dtype, target Series or 0/1 frame)."""
    from torchclf import api

    table = TABLES[name]
    if table.frame is None:
        dataset = api.as_dataset(name)
    else:
        dataset = api.as_dataset(table.frame(), table.target)
    dataset.name = name
    return dataset

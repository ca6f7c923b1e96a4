"""Shared fixtures: one torch thread (CI has 2 cores), quiet warnings, small data."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import signal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import pandas as pd

# A shell starts a background job (`pytest ... &`, nohup, some CI runners) with Ctrl-C ignored, and an ignored
# signal stays ignored across fork and exec: the tests that interrupt torchclf (in this process or a child) would
# then wait for nothing. Give this process, and through it the children, Python's usual Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """One torch thread in every process that runs tests; pytest-xdist's controller runs none and does not
    import torch (2 s of CPU while the workers start)."""
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", default=None):
        return
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Put the modules with the most slow tests first, each module's tests staying together and in order.

    With two workers each module runs on one worker (``--dist loadfile`` in pyproject.toml, so that a
    module-scoped run is computed once) and modules are handed out in this order: the long ones start
    first and the last to run are short, so neither worker waits idle at the end.
    """
    slow = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        slow[module] = slow.get(module, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])  # a stable sort: modules stay whole


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """A small table with numbers, categories, missing values and string labels."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 240
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 + (color == "red") * 1.5 > 0.3, "yes", "no")
    x2[rng.random(n) < 0.1] = np.nan
    color = color.astype(object)
    color[rng.random(n) < 0.05] = None
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from torchclf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def no_pictures():
    """Skip plots and the HTML report in tests that are about something else (they cost seconds per run)."""
    import torchclf.api
    import torchclf.report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torchclf.api, "write_plots", lambda *a, **k: [])
        mp.setattr(torchclf.report, "write_report", lambda *a, **k: None)
        yield


@pytest.fixture
def no_pictures_here(monkeypatch):
    """``no_pictures`` for one test, where a module's other tests keep their pictures."""
    import torchclf.api
    import torchclf.report

    monkeypatch.setattr(torchclf.api, "write_plots", lambda *a, **k: [])
    monkeypatch.setattr(torchclf.report, "write_report", lambda *a, **k: None)


def count_axes(monkeypatch) -> dict:
    """Record how many axes each figure saved by torchclf.plots had, by file name."""
    from torchclf import plots

    seen: dict = {}
    original = plots._save

    def spy(fig, path):
        seen[path.name] = len(fig.axes)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen

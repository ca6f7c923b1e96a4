"""Property tests: random tables at train and predict, random damage at the model loader.

Every case must either work or fail with :class:`TorchclfError`; any other
exception is a defect. Example counts are small so the file stays fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from torchclf import api
from torchclf.errors import TorchclfError
from torchclf.predictor import Predictor

# Fixed examples (derandomize) keep CI repeatable; no shrinking phase, because shrinking a failing
# training case can take minutes on two cores, and the unshrunk example is printed anyway.
SETTINGS = dict(
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TINY = api.make_config(model={"hidden": (3,)}, train={"epochs": 1, "threads": 1, "batch_size": 8})

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=6)
words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=4)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
cells = {
    "float": floats,
    "int": st.integers(-(2**40), 2**40),
    "bool": st.booleans(),
    "text": st.one_of(st.none(), words),
    "mixed": st.one_of(st.none(), floats, st.integers(-5, 5), words, st.booleans()),
    "empty": st.none(),
}


@st.composite
def tables(draw, min_rows=1, max_rows=30):
    """A DataFrame of 1-4 feature columns of random kinds and odd names, plus a ``target`` column name."""
    n = draw(st.integers(min_rows, max_rows))
    n_cols = draw(st.integers(1, 4))
    column_names = draw(st.lists(names, min_size=n_cols + 1, max_size=n_cols + 1, unique=True))
    data = {}
    for name in column_names[:-1]:
        kind = draw(st.sampled_from(sorted(cells)))
        data[name] = pd.Series(draw(st.lists(cells[kind], min_size=n, max_size=n)), dtype=object)
        if kind in ("float", "int", "bool") and draw(st.booleans()):
            data[name] = pd.to_numeric(data[name], errors="coerce") if kind != "bool" else data[name].astype(bool)
    labels = draw(st.lists(st.one_of(st.sampled_from(["a", "b", "ü"]), st.integers(0, 2), st.none()),
                           min_size=2, max_size=4, unique=True))
    data[column_names[-1]] = pd.Series(draw(st.lists(st.sampled_from(labels), min_size=n, max_size=n)), dtype=object)
    return pd.DataFrame(data), column_names[-1]


def _works_or_says_why(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except TorchclfError as exc:
            assert str(exc) and "\n" not in str(exc)
            event(f"{fn.__name__}: refused")
            return None


@settings(max_examples=40, **SETTINGS)
@given(tables(), tables(max_rows=10), st.data())
def test_random_tables_train_and_predict_or_fail_cleanly(table, other, data):
    frame, target = table
    result = _works_or_says_why(api.train, frame, target, config=TINY)
    if result is None:
        return
    event("trained")
    predictor = result.predictor
    # The training rows themselves, shuffled columns, then a different random table.
    features = frame.drop(columns=[target])
    shuffled = features[data.draw(st.permutations(list(features.columns)))]
    for rows in (features, shuffled, other[0]):
        out = _works_or_says_why(predictor.predict_frame, rows)
        if out is not None:
            assert len(out) == len(rows)
            assert np.isfinite(out.drop(columns=["prediction"]).to_numpy(dtype=float)).all()


@settings(max_examples=8, **SETTINGS)
@given(tables(min_rows=2, max_rows=20))
def test_random_csv_files_through_the_command_line_exit_0_or_2(table):
    frame, target = table
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "write_plots", lambda *a, **k: [])
        import torchclf.report

        mp.setattr(torchclf.report, "write_report", lambda *a, **k: None)
        path = Path(tmp) / "rows.csv"
        frame.to_csv(path, index=False)
        code, _, err = run_cli("train", str(path), "--target", target, "--epochs", "1", "--hidden", "2",
                               "--threads", "1", "-q", "--out", str(Path(tmp) / "run"))
        assert code in (0, 2), err
        if code == 0:
            code, _, err = run_cli("predict", str(Path(tmp) / "run"), str(path))
            assert code in (0, 2), err
        else:
            assert err.splitlines()[-1].startswith("error: ") and not (Path(tmp) / "run").exists()


# ----- the model loader -----------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "c": rng.choice(["a", "b", "c"], 60)})
    frame["y"] = np.where(frame["x"] > 0, "p", "q")
    result = api.train(frame, "y", config=TINY)
    folder = tmp_path_factory.mktemp("damage") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "write_plots", lambda *a, **k: [])
        api.write_run(result, folder)
    return folder, frame.drop(columns=["y"])


damage = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert"]), st.floats(0, 1), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def _damaged(blob: bytes, edits) -> bytes:
    out = bytearray(blob)
    for op, where, value in edits:
        i = min(int(where * len(out)), max(len(out) - 1, 0))
        if op == "flip" and out:
            out[i] ^= 1 << (value % 8)
        elif op == "set" and out:
            out[i] = value
        elif op == "cut":
            del out[i:]
        elif op == "insert":
            out[i:i] = bytes([value]) * (1 + value % 7)
    return bytes(out)


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(["model.json", "model.safetensors"]), damage, st.booleans())
def test_random_byte_damage_loads_or_fails_cleanly(saved_run, name, edits, rehash):
    folder, rows = saved_run
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(folder, run)
        path = run / name
        path.write_bytes(_damaged(path.read_bytes(), edits))
        if rehash and name == "model.safetensors":
            # An attacker who edits the weights records their new hash too: the parser must still hold.
            manifest = json.loads((run / "model.json").read_text())
            manifest["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            (run / "model.json").write_text(json.dumps(manifest))
        predictor = _works_or_says_why(Predictor.load, run)
        if predictor is not None:
            event("loaded despite the damage")
            _works_or_says_why(predictor.predict_frame, rows)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Every place in a JSON document a value could be swapped."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _paths(inner, (*prefix, i))


@settings(max_examples=60, **SETTINGS)
@given(st.data(), json_values)
def test_any_manifest_value_swapped_for_any_json_loads_or_fails_cleanly(saved_run, data, replacement):
    folder, rows = saved_run
    manifest = json.loads((folder / "model.json").read_text())
    path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = replacement
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(folder, run)
        (run / "model.json").write_text(json.dumps(manifest))
        predictor = _works_or_says_why(Predictor.load, run)
        if predictor is not None:
            event("loaded with the swapped value")
            _works_or_says_why(predictor.predict_frame, rows)

"""Model folders from someone else: loading validates everything and never unpickles or imports."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

from torchclf import api
from torchclf.errors import TorchclfError
from torchclf.predictor import Predictor


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrusted")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=80), "c": rng.choice(["a", "b"], 80)})
    frame["y"] = np.where(frame["x"] > 0, "p", "q")
    config = api.make_config(model={"hidden": (4,), "norm": "batch"}, train={"epochs": 2, "threads": 1})
    result = api.train(frame, "y", config=config)
    with pytest.MonkeyPatch.context() as mp:  # pictures are not under test here
        mp.setattr(api, "write_plots", lambda *a, **k: [])
        api.write_run(result, folder / "run")
    return folder / "run", frame


def _copy(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run[0], run)
    return run


def _edit_manifest(run, change):
    manifest = json.loads((run / "model.json").read_text())
    change(manifest)
    (run / "model.json").write_text(json.dumps(manifest))


def _rehash(run):
    """What an attacker who edits the weights would do: record the new file's hash."""
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    _edit_manifest(run, lambda m: m.update(weights_sha256=digest))


def _load_error(run) -> str:
    with pytest.raises(TorchclfError) as info:
        Predictor.load(run)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_intact_run_loads_and_predicts(good_run):
    predictor = Predictor.load(good_run[0])
    assert len(predictor.predict(good_run[1])) == len(good_run[1])


def test_loading_and_predicting_do_not_import_torch_dynamo(good_run, tmp_path):
    """Checking the weights works the network's shapes out from the manifest: building it on the meta device
    imported torch._dynamo (about 70 MB and a second) in every process that loads a run."""
    import subprocess
    import sys

    good_run[1].to_csv(tmp_path / "rows.csv", index=False)
    code = ("import sys\nimport pandas as pd\nimport torchclf\n"
            f"p = torchclf.load({str(good_run[0])!r})\n"
            f"print(''.join(p.predict(pd.read_csv({str(tmp_path / 'rows.csv')!r}))), 'torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["".join(Predictor.load(good_run[0]).predict(good_run[1])), "False"]


def test_truncated_weights(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    assert "SHA-256 does not match the manifest; the file is damaged or was changed" in _load_error(run)


def test_tampered_weights(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[-3] ^= 0x40
    (run / "model.safetensors").write_bytes(bytes(blob))
    assert "SHA-256 does not match" in _load_error(run)


def test_oversized_weights_are_refused_before_they_are_read(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    with open(run / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * (2 << 20))
    assert "is more than the network in the manifest needs" in _load_error(run)


def test_truncated_manifest(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    text = (run / "model.json").read_text()
    (run / "model.json").write_text(text[: len(text) // 2])
    assert "damaged manifest (JSONDecodeError)" in _load_error(run)


def test_manifest_with_nan_is_refused(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    text = (run / "model.json").read_text().replace('"median": ', '"median": NaN, "was": ', 1)
    (run / "model.json").write_text(text)
    assert "damaged manifest" in _load_error(run)


def test_newer_or_nonsense_format_version(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    _edit_manifest(run, lambda m: m.update(format_version=99))
    assert "is newer than this torchclf reads (1); upgrade torchclf" in _load_error(run)
    _edit_manifest(run, lambda m: m.update(format_version=True))
    assert "invalid format version True" in _load_error(run)


def test_unknown_activation_is_refused_and_nothing_is_imported(good_run, tmp_path, monkeypatch):
    import importlib

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    run = _copy(good_run, tmp_path)
    _edit_manifest(run, lambda m: m["config"]["model"].update(activation="os.system"))
    message = _load_error(run)
    assert "ModelConfig.activation: got 'os.system', expected one of relu" in message
    assert "os" not in imported


def test_huge_layer_sizes_are_refused_without_allocating(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    _edit_manifest(run, lambda m: m["config"]["model"].update(hidden=[10**9, 10**9]))
    assert "config.model.hidden must be a list of at most 64 layer sizes" in _load_error(run)
    _edit_manifest(run, lambda m: m["config"]["model"].update(hidden=[4096, 4096]))
    # A network that size is sized from the manifest only; the small weights file then does not fit it.
    assert "weights do not fit the network in the manifest" in _load_error(run)


def test_wrong_shapes(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    _edit_manifest(run, lambda m: m["config"]["model"].update(hidden=[5]))
    assert "weights do not fit the network in the manifest" in _load_error(run)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["preprocess"]["columns"][0].update(scale=0.0), "preprocess.columns[0].scale must be positive"),
    (lambda m: m["preprocess"]["columns"][0].update(kind="pickle"), "preprocess.columns[0].kind must be"),
    (lambda m: m["preprocess"]["columns"][1].update(categories=[1, 2]), "categories must be a list of text values"),
    (lambda m: m["preprocess"]["columns"][0].update(__reduce__="os.system"), "free of unknown fields"),
    (lambda m: m["labels"].update(classes=["p", "p"]), "labels.classes must be distinct labels"),
    (lambda m: m["labels"].update(classes=[["nested"], "q"]), "labels.classes must be text, number"),
    (lambda m: m.update(config=[]), "invalid manifest: config must be an object"),
    (lambda m: m.update(n_inputs="5"), "n_inputs must be an integer"),
    (lambda m: m["task"].update(kind="multiclass", n_classes=3), "manifest is inconsistent"),
    (lambda m: m["task"].update(n_classes=3), "a binary task has 2 classes, got 3"),
    (lambda m: m.update(feature_names=["x", "other"]), "feature_names differ"),
])
def test_manifest_contents_are_validated(good_run, tmp_path, change, message):
    run = _copy(good_run, tmp_path)
    _edit_manifest(run, change)
    assert message in _load_error(run)


def test_weights_with_nan_are_refused_even_with_a_matching_hash(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    tensors = load_file(str(run / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(run / "model.safetensors"))
    _rehash(run)
    assert f"weight {name!r} holds NaN or infinite values" in _load_error(run)


def test_weights_of_the_wrong_dtype_are_refused(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    tensors = load_file(str(run / "model.safetensors"))
    tensors = {k: (v.to(torch.int32) if k.endswith("bias") else v) for k, v in tensors.items()}
    save_file(tensors, str(run / "model.safetensors"))
    _rehash(run)
    assert "dtype" in _load_error(run)


def test_a_pickle_in_the_folder_is_never_opened(good_run, tmp_path, monkeypatch):
    run = _copy(good_run, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("model.pt", "model.pkl", "model.bin"):
        (run / name).write_bytes(pickle.dumps(Payload()))

    def refuse(*args, **kwargs):
        raise AssertionError("loading a run folder must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    predictor = Predictor.load(run)
    assert len(predictor.predict(good_run[1])) == len(good_run[1])
    assert not marker.exists()


def test_cli_reports_a_damaged_model_in_one_line(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    (run / "model.safetensors").write_bytes(b"\x00" * 10)
    rows = tmp_path / "rows.csv"
    good_run[1].to_csv(rows, index=False)
    code, out, err = run_cli("predict", str(run), str(rows))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "SHA-256 does not match" in err and err.count("\n") == 1

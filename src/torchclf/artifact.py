"""Saving and loading a trained model folder; the only module that reads one.

A run folder holds plain files: ``model.safetensors`` (weights),
``model.json`` (everything needed to rebuild the network, its preprocessing
and its labels, plus the versions that made it and the weights' SHA-256),
and, written by the workflow, ``metrics.json``, ``history.csv`` and
``plots/``. Loading never unpickles and never imports anything a file names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from torchclf.errors import TorchclfError

FORMAT = "torchclf-run"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "model.safetensors"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# Bounds that keep a hostile manifest from sizing a network (or a file read) without limit.
MAX_UNITS = 1 << 24
MAX_LAYERS = 64
MAX_HEADER_BYTES = 1 << 20


def versions() -> dict[str, str]:
    """Versions of torchclf and the libraries that shape a model's numbers."""
    import numpy
    import pandas
    import sklearn
    import torch

    from torchclf import __version__

    return {
        "torchclf": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, payload) -> None:
    """Write JSON to a temporary name beside ``path`` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there; never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_partials(out: str | Path) -> list[Path]:
    """Delete ``.NAME.PID-*.partial`` folders beside ``out`` left by writers that no longer run.

    A process killed while writing ``out`` leaves its hidden temporary folder
    behind; the next write to the same place removes it. Folders whose writer
    is still running are left alone.
    """
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = f".{out.name}."
    for path in out.parent.iterdir():
        name = path.name
        if not (name.startswith(prefix) and name.endswith(".partial") and path.is_dir()):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_folder(out: str | Path):
    """Yield a temporary folder that becomes ``out`` only if the block succeeds.

    The temporary folder sits beside ``out`` (same file system) and is renamed
    in one step, so an interrupted run leaves either nothing or a complete
    folder. An existing non-empty ``out`` is never overwritten.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TorchclfError(f"{out}: already exists and is not empty; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    # The writer's process id in the name lets a later run tell a dead writer's leftovers from a live one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(folder: Path, manifest: dict, state_dict: dict) -> None:
    """Write the weights and the manifest (with format, versions and weight hash)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        **manifest,
    }
    write_json(folder / MANIFEST, full)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a run folder, checked for format and version."""
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise TorchclfError(f"{folder}: is a file, not a run folder; give the folder `torchclf train` wrote")
    if not folder.is_dir():
        raise TorchclfError(f"{folder}: no such run folder (train one with `torchclf train`)")
    if not path.is_file():
        if any(folder.glob("epoch-*/checkpoint.json")):
            raise TorchclfError(f"{folder}: holds training checkpoints, not a finished run; "
                                f"finish it with `torchclf train --resume {folder}`")
        raise TorchclfError(f"{folder}: not a torchclf run folder (no {MANIFEST}); give a folder `torchclf train` wrote")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TorchclfError(f"{path}: too large to be a torchclf manifest")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TorchclfError(f"{path}: not a torchclf manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise TorchclfError(f"{path}: invalid format version {version!r}; re-train or restore the model")
    if version > FORMAT_VERSION:
        raise TorchclfError(
            f"{path}: format version {version!r} is newer than this torchclf reads ({FORMAT_VERSION}); upgrade torchclf"
        )
    return manifest


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def read_json(path: Path, what: str):
    """Parse a JSON file strictly: UTF-8, no NaN/Infinity, a readable one-line error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise TorchclfError(
            f"{path}: damaged {what} ({type(exc).__name__}); re-train or restore the file"
        ) from None


def _parts(manifest: dict, where: str):
    """Validate a manifest's contents and build its plain parts (no network yet)."""
    from torchclf.config import RunConfig
    from torchclf.preprocess import LabelCoder, Preprocessor
    from torchclf.task import Task

    def expect(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise TorchclfError(f"{where}: invalid manifest: {field} must be {expected}; re-train or restore the model")

    for key in ("config", "task", "preprocess", "labels"):
        expect(isinstance(manifest.get(key), dict), key, "an object")
    config_d = manifest["config"]
    for key in ("model", "train", "data"):
        expect(isinstance(config_d.get(key, {}), dict), f"config.{key}", "an object")
    hidden = config_d.get("model", {}).get("hidden", [])
    expect(isinstance(hidden, list) and len(hidden) <= MAX_LAYERS
           and all(type(h) is int and 1 <= h <= MAX_UNITS for h in hidden),
           "config.model.hidden", f"a list of at most {MAX_LAYERS} layer sizes in [1, {MAX_UNITS}]")
    n_inputs = manifest.get("n_inputs")
    expect(type(n_inputs) is int and 1 <= n_inputs <= MAX_UNITS, "n_inputs", f"an integer in [1, {MAX_UNITS}]")
    expect(manifest.get("label_sep") is None or isinstance(manifest.get("label_sep"), str), "label_sep", "text or null")
    for key in ("target_columns", "feature_names"):
        value = manifest.get(key, [])
        expect(isinstance(value, list) and all(isinstance(v, str) for v in value), key, "a list of column names")
    expect(isinstance(manifest.get("extra", {}), dict), "extra", "an object")
    try:
        config = RunConfig.from_dict(config_d)
        task = Task.from_dict(manifest["task"])
        preprocessor = Preprocessor.from_dict(manifest["preprocess"])
        labels = LabelCoder.from_dict(manifest["labels"])
    except TorchclfError as exc:
        raise TorchclfError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TorchclfError(f"{where}: invalid manifest ({type(exc).__name__}: {exc}); re-train the model") from None
    if "feature_names" in manifest and manifest["feature_names"] != preprocessor.feature_names:
        raise TorchclfError(f"{where}: manifest is inconsistent (feature_names differ from the preprocessing's columns)")
    if preprocessor.n_outputs != n_inputs:
        raise TorchclfError(f"{where}: manifest is inconsistent (preprocessing gives {preprocessor.n_outputs} inputs, network expects {n_inputs})")
    if labels.n_classes != task.n_classes or labels.multilabel != (task.kind == "multilabel"):
        raise TorchclfError(f"{where}: manifest is inconsistent ({labels.n_classes} labels for a {task.kind} task with {task.n_classes} classes)")
    return config, task, preprocessor, labels, n_inputs


def _expected_tensors(config, task, n_inputs: int) -> dict:
    """Name -> (shape, dtype) of the network a manifest describes, built without allocating memory."""
    import torch

    from torchclf.model import build_model

    with torch.device("meta"):
        meta = build_model(n_inputs, task.n_outputs, config.model)
    return {k: (tuple(v.shape), v.dtype) for k, v in meta.state_dict().items()}


def _check_weights(expected: dict, state_dict: dict, where: str) -> None:
    """The loaded tensors must be exactly the network's: names, shapes, one float dtype, finite values."""
    import torch

    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    shapes = {k: shape for k, (shape, _) in expected.items()}
    if shapes != found:
        diff = sorted(set(shapes.items()) ^ set(found.items()))[:3]
        raise TorchclfError(f"{where}: weights do not fit the network in the manifest (first differences: {diff})")
    floating = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(floating) > 1 or not floating <= {torch.float16, torch.bfloat16, torch.float32, torch.float64}:
        raise TorchclfError(f"{where}: weights have unexpected dtypes {sorted(map(str, floating))}; re-train the model")
    for name, (_, dtype) in expected.items():
        if dtype.is_floating_point != state_dict[name].is_floating_point() or (
            not dtype.is_floating_point and state_dict[name].dtype != dtype
        ):
            raise TorchclfError(f"{where}: weight {name!r} has dtype {state_dict[name].dtype}, expected {dtype}")
        if state_dict[name].is_floating_point() and not bool(torch.isfinite(state_dict[name]).all()):
            raise TorchclfError(f"{where}: weight {name!r} holds NaN or infinite values; re-train the model")


def load_model(folder: str | Path) -> tuple[dict, dict]:
    """Read a run folder's manifest and weights, verifying them before use.

    The manifest is validated and the network it describes is sized without
    allocating it; the weights file must not be larger than that network
    needs, must match the SHA-256 recorded at save time, and must hold exactly
    the expected tensors. Nothing is unpickled or imported.

    Returns
    -------
    manifest : dict
    state_dict : dict of str to Tensor
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    config, task, _, _, n_inputs = _parts(manifest, str(folder))
    expected = _expected_tensors(config, task, n_inputs)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TorchclfError(f"{folder}: the weights file {WEIGHTS} is missing; re-train or restore it")
    limit = 8 * sum(math.prod(shape) for shape, _ in expected.values()) + MAX_HEADER_BYTES
    if weights.stat().st_size > limit:
        raise TorchclfError(
            f"{weights}: {weights.stat().st_size} bytes is more than the network in the manifest needs "
            f"(at most {limit}); the file is not this model's weights"
        )
    digest = manifest.get("weights_sha256")
    if not isinstance(digest, str) or sha256_file(weights) != digest:
        raise TorchclfError(
            f"{weights}: SHA-256 does not match the manifest; the file is damaged or was changed"
        )
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TorchclfError(f"{weights}: cannot be read as safetensors: {first}") from None
    _check_weights(expected, state_dict, str(folder))
    return manifest, state_dict


def rebuild(manifest: dict, state_dict: dict, where: str = "model"):
    """Rebuild the network, task, preprocessing and labels a manifest describes.

    Returns
    -------
    model : torch.nn.Module, in eval mode, weights loaded
    task : Task
    preprocessor : Preprocessor
    labels : LabelCoder
    config : RunConfig
    """
    from torchclf.model import build_model

    config, task, preprocessor, labels, n_inputs = _parts(manifest, where)
    _check_weights(_expected_tensors(config, task, n_inputs), state_dict, where)
    model = build_model(n_inputs, task.n_outputs, config.model)
    floating = [v.dtype for v in state_dict.values() if v.is_floating_point()]
    if floating:
        model.to(floating[0])  # keep the precision the weights were saved in (float64 from the estimator)
    model.load_state_dict(state_dict)
    model.eval()
    return model, task, preprocessor, labels, config

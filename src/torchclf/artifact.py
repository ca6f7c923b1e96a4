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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
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
    if not folder.is_dir():
        raise TorchclfError(f"{folder}: no such run folder (train one with `torchclf train`)")
    if not path.is_file():
        raise TorchclfError(f"{folder}: not a torchclf run folder (no {MANIFEST})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TorchclfError(f"{path}: too large to be a torchclf manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TorchclfError(f"{path}: damaged manifest ({type(exc).__name__}); re-train or restore the file") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TorchclfError(f"{path}: not a torchclf manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TorchclfError(
            f"{path}: format version {version!r} is newer than this torchclf reads ({FORMAT_VERSION}); upgrade torchclf"
        )
    return manifest


def load_model(folder: str | Path) -> tuple[dict, dict]:
    """Read a run folder's manifest and weights, verifying the weights' hash.

    Returns
    -------
    manifest : dict
    state_dict : dict of str to Tensor
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TorchclfError(f"{folder}: the weights file {WEIGHTS} is missing")
    expected = manifest.get("weights_sha256")
    if not isinstance(expected, str) or sha256_file(weights) != expected:
        raise TorchclfError(
            f"{weights}: SHA-256 does not match the manifest; the file is damaged or was changed"
        )
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TorchclfError(f"{weights}: cannot be read as safetensors: {exc}") from None
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
    from torchclf.config import RunConfig
    from torchclf.model import build_model
    from torchclf.preprocess import LabelCoder, Preprocessor
    from torchclf.task import Task

    try:
        config = RunConfig.from_dict(manifest["config"])
        task = Task.from_dict(manifest["task"])
        preprocessor = Preprocessor.from_dict(manifest["preprocess"])
        labels = LabelCoder.from_dict(manifest["labels"])
        n_inputs = int(manifest["n_inputs"])
    except TorchclfError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise TorchclfError(f"{where}: invalid manifest ({type(exc).__name__}: {exc}); re-train the model") from None
    if preprocessor.n_outputs != n_inputs:
        raise TorchclfError(f"{where}: manifest is inconsistent (preprocessing gives {preprocessor.n_outputs} inputs, network expects {n_inputs})")
    if labels.n_classes != task.n_classes:
        raise TorchclfError(f"{where}: manifest is inconsistent ({labels.n_classes} labels for a {task.n_classes}-class task)")
    model = build_model(n_inputs, task.n_outputs, config.model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise TorchclfError(f"{where}: weights do not fit the network in the manifest (first differences: {diff})")
    model.load_state_dict(state_dict)
    model.eval()
    return model, task, preprocessor, labels, config

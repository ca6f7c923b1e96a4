"""Resumable training checkpoints, written without pickle and read without trusting them.

A run that will be written to ``OUT`` keeps its checkpoints in ``OUT.checkpoints/``,
one complete folder per saved epoch (older ones are removed once a newer one
is in place)::

    OUT.checkpoints/epoch-000010/
        checkpoint.safetensors   every tensor: model weights, optimizer moments,
                                 RNG states, the best weights early stopping keeps
        checkpoint.json          everything else: epoch, history, optimizer and
                                 scheduler settings, early-stopping counters, what
                                 the run trains on, and the tensors' SHA-256

Each epoch folder is built under a temporary name and renamed, so a kill at
any moment leaves the previous checkpoint intact. The JSON holds plain values;
tensors appear in it only as references (``{"$tensor": "model/layers.0.weight"}``),
so reading a checkpoint never unpickles or imports anything.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from torchclf.artifact import (
    atomic_folder,
    process_alive,
    read_json,
    save_tensors,
    sha256_file,
    versions,
    write_json,
)
from torchclf.errors import TorchclfError

FORMAT = "torchclf-checkpoint"
FORMAT_VERSION = 2  # 2: the run is described by its RunSpec (torchclf.spec)
SUFFIX = ".checkpoints"
JSON_NAME = "checkpoint.json"
TENSORS_NAME = "checkpoint.safetensors"
MAX_JSON_BYTES = 256 * 1024 * 1024


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at an epoch boundary; the message says how to resume."""


def folder_for(out: str | Path) -> Path:
    """The checkpoint folder of a run that will be written to ``out``."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def run_for(folder: str | Path) -> Path:
    """The run folder a checkpoint folder belongs to (inverse of :func:`folder_for`)."""
    folder = Path(folder)
    return folder.with_name(folder.name[: -len(SUFFIX)]) if folder.name.endswith(SUFFIX) else folder


# ----- plain values + tensors <-> JSON + safetensors ---------------------------
def _encode(value, path: str, tensors: dict):
    """A JSON-able copy of ``value`` with tensors moved into ``tensors`` under their path."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu").contiguous().clone()
        return {"$tensor": path}
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            return {"$items": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store {type(value).__name__} at {path} in a checkpoint")


def _decode(value, tensors: dict, where: str):
    """Inverse of :func:`_encode`; anything unexpected is a damaged checkpoint."""
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, inner), = value.items()
        if key == "$tensor":
            if not isinstance(inner, str) or inner not in tensors:
                raise TorchclfError(f"{where}: damaged checkpoint (tensor {inner!r} is missing)")
            return tensors[inner]
        if key == "$float":
            if inner not in ("inf", "-inf", "nan"):
                raise TorchclfError(f"{where}: damaged checkpoint (bad number {inner!r})")
            return float(inner)
        if key == "$tuple" and isinstance(inner, list):
            return tuple(_decode(v, tensors, where) for v in inner)
        if key == "$items" and isinstance(inner, list):
            if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int)) for kv in inner):
                raise TorchclfError(f"{where}: damaged checkpoint (bad mapping)")
            return {k: _decode(v, tensors, where) for k, v in inner}
    if any(k.startswith("$") for k in value):
        raise TorchclfError(f"{where}: damaged checkpoint (unknown entry {sorted(value)[:3]})")
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def save(folder: str | Path, payload: dict, epoch: int) -> Path:
    """Write ``payload`` (plain values and tensors) as ``folder/epoch-NNNNNN``; return that folder.

    Older epoch folders are removed only after the new one is complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"epoch-{epoch:06d}"
    if target.exists():  # a resumed run reaching an epoch it had saved before
        shutil.rmtree(target)
    tensors: dict = {}
    body = _encode(payload, "", tensors)
    with atomic_folder(target) as tmp:
        save_tensors(tmp / TENSORS_NAME, tensors, {"format": FORMAT})
        write_json(tmp / JSON_NAME, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": versions(),
            "tensors_sha256": sha256_file(tmp / TENSORS_NAME),
            "payload": body,
        })
    for old in folder.iterdir():
        if old.name.startswith("epoch-") and old != target:
            shutil.rmtree(old, ignore_errors=True)
        elif old.name.startswith(".epoch-") and old.name.endswith(".partial"):
            pid = old.name.split(".", 3)[2].split("-", 1)[0]  # .epoch-NNNNNN.PID-xxxx.partial
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    return target


def latest(folder: str | Path) -> Path | None:
    """The newest complete epoch folder in a checkpoint folder, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("epoch-*") if p.is_dir() and (p / JSON_NAME).is_file())
    return done[-1] if done else None


def load(path: str | Path) -> dict:
    """Read an epoch folder written by :func:`save`, verifying its format and tensors' hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta, weights = path / JSON_NAME, path / TENSORS_NAME
    if not meta.is_file() or not weights.is_file():
        raise TorchclfError(f"{path}: incomplete checkpoint ({JSON_NAME} and {TENSORS_NAME} are both needed)")
    if meta.stat().st_size > MAX_JSON_BYTES:
        raise TorchclfError(f"{meta}: too large to be a torchclf checkpoint")
    doc = read_json(meta, "checkpoint")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TorchclfError(f"{meta}: not a torchclf checkpoint (format is not {FORMAT!r})")
    version = doc.get("format_version")
    if version == 1:
        raise TorchclfError(f"{meta}: a checkpoint of torchclf 0.1 (format 1), which this version cannot resume; "
                            "finish the run with torchclf 0.1 or train it again")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise TorchclfError(f"{meta}: checkpoint format version {version!r} is not one this torchclf reads "
                            f"({FORMAT_VERSION}); use the torchclf that wrote it")
    if not isinstance(doc.get("tensors_sha256"), str) or sha256_file(weights) != doc["tensors_sha256"]:
        raise TorchclfError(f"{weights}: SHA-256 does not match {JSON_NAME}; the checkpoint is damaged or was changed")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TorchclfError(f"{weights}: cannot be read as safetensors: {exc}") from None
    payload = _decode(doc.get("payload"), tensors, str(path))
    if not isinstance(payload, dict) or type(payload.get("epoch")) is not int or not isinstance(payload.get("run"), dict):
        raise TorchclfError(f"{meta}: damaged checkpoint (no epoch or run description)")
    return payload


def find(run: str | Path) -> Path:
    """The newest checkpoint for ``--resume RUN`` (the run folder or its ``.checkpoints`` folder)."""
    run = Path(run)
    folder = run if run.name.endswith(SUFFIX) else folder_for(run)
    if (run_for(folder) / "model.json").is_file():
        raise TorchclfError(f"{run_for(folder)}: this run already finished; train a new one with another --out")
    path = latest(folder)
    if path is None:
        raise TorchclfError(f"{run}: no checkpoint to resume (looked in {folder}); "
                            "train with --checkpoint-every N to write them")
    return path


__all__ = [
    "TrainingInterrupted", "find", "folder_for", "latest", "load", "run_for", "save",
]

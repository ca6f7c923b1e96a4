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
import signal
import sys
import threading
import warnings
from pathlib import Path

import torch

from torchclf.artifact import (
    _process_alive,
    atomic_folder,
    read_json,
    sha256_file,
    versions,
    write_json,
)
from torchclf.callbacks import Callback
from torchclf.errors import TorchclfError

FORMAT = "torchclf-checkpoint"
FORMAT_VERSION = 1
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
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"epoch-{epoch:06d}"
    if target.exists():  # a resumed run reaching an epoch it had saved before
        shutil.rmtree(target)
    tensors: dict = {}
    body = _encode(payload, "", tensors)
    with atomic_folder(target) as tmp:
        save_file(tensors, str(tmp / TENSORS_NAME), metadata={"format": FORMAT})
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
            if pid.isdigit() and not _process_alive(int(pid)):
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


# ----- what a run trains on ------------------------------------------------------
def describe_run(data: str, target, test, label_sep, config, out: str | Path) -> dict:
    """The command-line inputs of a run, with file hashes so a resume can tell the data changed."""

    def source(spec):
        if spec is None:
            return None, None
        path = Path(str(spec))
        if path.is_file():
            return str(path.resolve()), sha256_file(path)
        return str(spec), None

    data_spec, data_hash = source(data)
    test_spec, test_hash = source(test)
    return {
        "data": data_spec, "data_sha256": data_hash, "target": list(target) if target else None,
        "test": test_spec, "test_sha256": test_hash, "label_sep": label_sep,
        "out": str(Path(out).resolve()), "config": config.to_dict(), "threads": None,
    }


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


def check_inputs(run: dict, where: str) -> None:
    """Fail if the files a checkpointed run trained on have changed or gone."""
    for key in ("data", "test"):
        spec, digest = run.get(key), run.get(f"{key}_sha256")
        if digest is None:
            continue
        path = Path(spec)
        if not path.is_file():
            raise TorchclfError(f"{where}: the run trained on {path}, which is gone; restore it to resume")
        if sha256_file(path) != digest:
            raise TorchclfError(f"{where}: {path} has changed since the checkpoint; "
                                "resuming needs the same data (train a new run instead)")


def resume_plan(run: str | Path, every: int | None = None):
    """What ``torchclf train --resume RUN`` trains: the interrupted run's own inputs and settings.

    Returns
    -------
    data, target, test, label_sep : the run's command-line inputs
    config : RunConfig
    out : Path, the run folder it will write
    every : int, the checkpoint interval (``every`` if given, else the run's)
    path : Path, the epoch folder to start from
    """
    from torchclf.config import RunConfig

    path = find(run)
    info = load(path)["run"]
    check_inputs(info, str(path))
    try:
        config = RunConfig.from_dict(info["config"])
        out = Path(info["out"])
        saved_every = int(info.get("checkpoint_every") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise TorchclfError(f"{path}: damaged checkpoint (run description: {exc})") from None
    return (info.get("data"), info.get("target"), info.get("test"), info.get("label_sep"), config, out,
            saved_every if every is None else every, path)


# ----- the callback ----------------------------------------------------------------
def _is_main_rank() -> bool:
    try:
        from torchclf import distributed
    except ImportError:  # pragma: no cover
        return True
    return distributed.is_main()


class Checkpointer(Callback):
    """Save a resumable checkpoint every ``every`` epochs and when Ctrl-C is pressed.

    The first Ctrl-C lets the current epoch finish, saves a checkpoint and
    raises :class:`TrainingInterrupted`; a second one stops at once. With
    ``resume`` (an epoch folder), training state is restored before the first
    epoch, so the run continues as if it had not stopped.

    Parameters
    ----------
    folder : path
        The checkpoint folder (see :func:`folder_for`).
    every : int
        Save every N epochs; 0 saves only on Ctrl-C.
    run : dict
        What the run trains on (:func:`describe_run`), stored for ``--resume``.
    resume : path, optional
        An epoch folder to continue from.
    """

    def __init__(self, folder: str | Path, every: int, run: dict, resume: str | Path | None = None):
        self.folder = Path(folder)
        self.every = every
        self.run = run
        self.resume = None if resume is None else Path(resume)
        self.saved_epoch: int | None = None
        self.interrupted = False
        self._previous_handler = None

    # Ctrl-C -------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:
            self.close()
            raise KeyboardInterrupt
        self.interrupted = True
        print("stopping after this epoch to save a checkpoint (press Ctrl-C again to stop at once)",
              file=sys.stderr)

    def close(self) -> None:
        """Give Ctrl-C back its usual meaning."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    # hooks -------------------------------------------------------------------------------
    def on_train_begin(self, state) -> None:
        if self.resume is not None:
            payload = load(self.resume)
            self.restore(state, payload)
            self.saved_epoch = state.epoch
            used, now = payload["run"].get("threads"), torch.get_num_threads()
            if used not in (None, now):
                warnings.warn(f"{self.resume}: the run used {used} CPU thread(s), this process {now}; the result "
                              "may differ in the last bits from an uninterrupted run (pass the same --threads)")
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_epoch_end(self, state) -> None:
        last = state.last
        finite = all(v is None or math.isfinite(v) for v in (last.get("train_loss"), last.get("val_loss")))
        due = self.every and state.epoch % self.every == 0
        # A stopping epoch is not saved: resuming from it would train on past the stop.
        if finite and not state.stop and (due or self.interrupted):
            self.save(state)
        if self.interrupted and not state.stop:
            self.close()
            raise TrainingInterrupted(self.resume_hint(state.epoch))

    def on_train_end(self, state) -> None:
        self.close()

    # saving and restoring ----------------------------------------------------------------
    def save(self, state) -> None:
        if not _is_main_rank():
            return
        save(self.folder, self.payload(state), state.epoch)
        self.saved_epoch = state.epoch

    def payload(self, state) -> dict:
        self.run["threads"] = torch.get_num_threads()  # what training really used, known only once it runs
        rng = {"torch": torch.get_rng_state()}
        if state.generator is not None:
            rng["shuffle"] = state.generator.get_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = list(torch.cuda.get_rng_state_all())
        return {
            "epoch": state.epoch,
            "history": list(state.history),
            "best_epoch": state.best_epoch,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
            "rng": rng,
            "callbacks": {key: cb.state_dict() for key, cb in _stateful(state.callbacks, self).items()},
            "run": self.run,
        }

    def restore(self, state, payload: dict) -> None:
        where = str(self.resume)
        try:
            state.model.load_state_dict(payload["model"])
            state.optimizer.load_state_dict(payload["optimizer"])
            if state.scheduler is not None:
                state.scheduler.load_state_dict(payload["scheduler"])
            ours = _stateful(state.callbacks, self)
            if set(ours) != set(payload["callbacks"]):
                raise ValueError(f"callbacks differ: {sorted(ours)} vs {sorted(payload['callbacks'])}")
            for key, cb in ours.items():
                cb.load_state_dict(payload["callbacks"][key])
            rng = payload["rng"]
            torch.set_rng_state(rng["torch"])
            if state.generator is not None:
                state.generator.set_state(rng["shuffle"])
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
            history = payload["history"]
            if not isinstance(history, list) or len(history) != payload["epoch"]:
                raise ValueError("history does not match the epoch")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TorchclfError(f"{where}: the checkpoint does not fit this run ({first}); "
                                "resume with the same data and settings") from None
        state.epoch = payload["epoch"]
        state.history = history
        state.best_epoch = payload.get("best_epoch")

    def resume_hint(self, epoch: int | None = None) -> str:
        """How to continue, for the message printed after an interruption."""
        if self.saved_epoch is None:
            return "nothing was saved (add --checkpoint-every N to be able to resume)"
        if epoch == self.saved_epoch:
            what = f"stopped after epoch {epoch} and saved a checkpoint in {self.folder}"
        else:
            what = f"the newest checkpoint (epoch {self.saved_epoch}) is in {self.folder}"
        return f"{what}; continue with: torchclf train --resume {run_for(self.folder)}"

    def cleanup(self) -> None:
        """Remove the checkpoint folder once the run folder is complete."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _stateful(callbacks, skip) -> dict:
    """Callbacks with state to save, keyed by class name and rank among their class."""
    out, seen = {}, {}
    for cb in callbacks:
        if cb is skip or not hasattr(cb, "state_dict"):
            continue
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        out[f"{name}:{seen[name]}"] = cb
    return out


__all__ = [
    "Checkpointer", "TrainingInterrupted", "check_inputs", "describe_run", "find", "folder_for",
    "latest", "load", "run_for", "save",
]

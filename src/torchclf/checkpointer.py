"""The callback that saves resumable checkpoints during training and restores one before it.

The files themselves (format, writing, reading without trusting them) are
:mod:`torchclf.checkpoint`; continuing a run is :func:`torchclf.api.resume`.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import threading
from pathlib import Path

import torch

from torchclf import distributed
from torchclf.callbacks import Callback
from torchclf.checkpoint import TrainingInterrupted, load, run_for, save
from torchclf.errors import TorchclfError, warn


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
        ``{"spec": RunSpec.describe(), "checkpoint_every": N}``: what the run
        trains on, stored for :func:`torchclf.api.resume`.
    resume : path, optional
        An epoch folder to continue from.
    payload : dict, optional
        That folder's contents as :func:`torchclf.checkpoint.load` read them,
        when the caller has read them already (they are verified and read once).
    """

    def __init__(self, folder: str | Path, every: int, run: dict, resume: str | Path | None = None,
                 payload: dict | None = None):
        self.folder = Path(folder)
        self.every = every
        self.run = run
        self.resume = None if resume is None else Path(resume)
        self._payload = payload
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
            payload = self._payload if self._payload is not None else load(self.resume)
            self._payload = None  # the tensors are the model's now; do not keep a second copy
            self.restore(state, payload)
            self.saved_epoch = state.epoch
            used, now = payload["run"].get("threads"), torch.get_num_threads()
            if used not in (None, now):
                warn(f"{self.resume}: the run used {used} CPU thread(s), this process {now}; the result "
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
        if not distributed.is_main():
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
        """Remove the checkpoints this run wrote, once the run folder is complete.

        Only ``epoch-*`` folders (and dead writers' partial ones) are removed,
        and the folder itself only when that leaves it empty: anything else a
        user keeps there stays.
        """
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.is_dir() and not path.is_symlink() and (
                    path.name.startswith("epoch-") or (path.name.startswith(".epoch-") and path.name.endswith(".partial"))):
                shutil.rmtree(path, ignore_errors=True)
        try:
            self.folder.rmdir()
        except OSError:  # not empty: something of the user's is in it
            pass


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


__all__ = ["Checkpointer", "TrainingInterrupted"]

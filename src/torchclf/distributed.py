"""Data-parallel training under ``torchrun``: joining the job, sharding rows, combining sums.

Outside ``torchrun`` (or with a world of one process) every function here is
a no-op or an identity, so the engine calls them unconditionally. Under
``torchrun`` the process group is joined on first use (gloo for CPU tensors,
NCCL for CUDA tensors) with an explicit timeout, each rank takes an
equal-sized, seeded share of every epoch's row permutation, gradients are
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and loss and
accuracy sums are all-reduced so that every rank sees, and rank 0 prints, the
numbers a single process would print.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from torchclf import accel
from torchclf.errors import TorchclfError, warn

TIMEOUT_ENV = "TORCHCLF_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0

_OWNED = {"group": False}
# True while a run trains on rank-local rows (a sharded Parquet read) rather
# than on the same rows on every rank.
_ROWS = {"local": False}


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` job, read from its environment."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_from_env(environ=None) -> Launch | None:
    """The ``torchrun`` coordinates of this process, or None when not launched by it.

    ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE for
    every worker; a world of one process is treated as no launch at all.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        launch = Launch(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        )
    except ValueError:
        raise TorchclfError(
            "RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE: not integers; launch with torchrun "
            "or unset these variables"
        ) from None
    if not 0 <= launch.rank < launch.world_size or not 0 <= launch.local_rank < launch.local_world_size:
        raise TorchclfError(
            f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}, LOCAL_RANK={launch.local_rank}, "
            f"LOCAL_WORLD_SIZE={launch.local_world_size}: inconsistent; launch with torchrun"
        )
    return launch if launch.world_size > 1 else None


def is_distributed() -> bool:
    """True inside a joined process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a job; read from RANK before joining)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    launch = launch_from_env()
    return 0 if launch is None else launch.rank


def world_size() -> int:
    """Processes in the job (1 outside one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the one process that prints and writes files (rank 0)."""
    return rank() == 0


# ----- joining and leaving -------------------------------------------------------
def timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks (``TORCHCLF_DIST_TIMEOUT`` seconds)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise TorchclfError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, such as 600")
    return datetime.timedelta(seconds=seconds)


def _uses_cuda(device: str | None) -> bool:
    return device in (None, "auto", "cuda") and torch.cuda.is_available()


SIGTERM_GRACE_S = 3.0  # how long a SIGTERM may wait for the main thread before the process ends anyway


def _exit_on_sigterm(signum, frame):
    # torchrun stops the surviving ranks with SIGTERM when one fails; raising
    # lets `finally` blocks (such as the run folder's temporary-folder cleanup) run.
    raise SystemExit(128 + signum)


def _handle_sigterm() -> None:
    """End this process promptly on SIGTERM, through ``finally`` blocks when the main thread can run them.

    A Python signal handler runs only when the main thread next executes
    Python code. A rank waiting in a collective, or in joining the group, for
    a rank that already failed sits in C++ until the job's timeout, and
    torchrun kills it 30 s after its SIGTERM. So the signal also wakes a
    watcher thread (through :func:`signal.set_wakeup_fd`); if the main thread
    then stays at the same place for ``SIGTERM_GRACE_S`` seconds, it is stuck
    there, and the watcher ends the process. A handler the program installed
    itself (the command line's) is kept; without one, SIGTERM raises
    SystemExit; an ignored SIGTERM stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals and the wakeup fd belong to the main thread
    handler = signal.getsignal(signal.SIGTERM)
    if handler is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    elif not callable(handler):
        return  # ignored, or handled outside Python: nothing wakes the watcher
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd's rule: a full pipe must never block the signal
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # unsupported, or already taken (an event loop, an earlier setup): leave it as it was
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    threading.Thread(target=_watch_for_sigterm, args=(read_fd,), name="torchclf-sigterm", daemon=True).start()


def _main_thread_place():
    """Where the main thread is now: its innermost frame and instruction, or None."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return None if frame is None else (id(frame), frame.f_code, frame.f_lasti)


def _watch_for_sigterm(read_fd: int) -> None:
    while True:
        try:
            received = os.read(read_fd, 64)  # one byte per signal handled in Python: its number
        except OSError:
            return
        if not received:
            return
        if int(signal.SIGTERM) in received:
            break
    step, still, place = 0.1, 0.0, _main_thread_place()
    while still < SIGTERM_GRACE_S:  # a main thread that moves is running the handler or cleaning up
        time.sleep(step)
        now = _main_thread_place()
        still, place = (still + step, place) if now == place else (0.0, now)
    # The environment, not rank(): nothing here may wait on the process group.
    os.write(2, f"torchrun rank {os.environ.get('RANK', '?')}: stopped by SIGTERM while waiting for the other "
                "processes (another rank failed or was stopped: see its message above)\n".encode())
    os._exit(128 + int(signal.SIGTERM))


def setup(threads: int | None = None, device: str | None = None) -> bool:
    """Join the ``torchrun`` job if this process belongs to one; returns :func:`is_distributed`.

    Idempotent. A process group created by the caller is used as it is and
    left to the caller to destroy. ``device`` is the configured device name:
    with CUDA each rank uses the GPU numbered by its LOCAL_RANK.
    """
    launch = launch_from_env()
    if launch is None or not dist.is_available():
        return False
    if dist.is_initialized():
        return is_distributed()
    torch.set_num_threads(accel.thread_count(threads, accel.available_cores(), launch.local_world_size))
    if threads is not None and torch.get_num_threads() < threads and launch.rank == 0:
        warn(f"threads={threads}: capped at {torch.get_num_threads()} per process "
             f"({accel.available_cores()} cores shared by {launch.local_world_size} processes)")
    backend = "gloo"
    if _uses_cuda(device):
        if launch.local_world_size > torch.cuda.device_count():
            raise TorchclfError(
                f"torchrun: {launch.local_world_size} processes per node but {torch.cuda.device_count()} "
                "GPU(s); use --nproc-per-node at most the GPU count, or --device cpu"
            )
        torch.cuda.set_device(launch.local_rank)
        # Collectives on CPU tensors (flags, barriers) go through gloo, CUDA tensors through NCCL.
        backend = "cpu:gloo,cuda:nccl"
    _handle_sigterm()
    dist.init_process_group(backend=backend, timeout=timeout())
    _OWNED["group"] = True
    atexit.register(teardown)
    return is_distributed()


def teardown() -> None:
    """Leave the process group if :func:`setup` created it."""
    if _OWNED["group"] and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED["group"] = False


def begin_run(spec, train_config) -> bool:
    """Join the job (if launched by torchrun) and note whether ``spec`` gives each rank its own rows; returns that.

    ``spec`` is the data argument of :func:`torchclf.train`; with
    ``TORCHCLF_SHARD_PARQUET=1`` a Parquet file or folder is read in parts,
    one per rank (see :mod:`torchclf.data.shards`).
    """
    from torchclf.data.shards import reads_part

    joined = setup(train_config.threads, train_config.device)
    _ROWS["local"] = joined and reads_part(spec)
    return _ROWS["local"]


def rows_are_local() -> bool:
    """True when each rank trains on rows that only it holds."""
    return _ROWS["local"] and is_distributed()


# ----- the model and the rows ----------------------------------------------------
def wrap(model: nn.Module) -> nn.Module:
    """The model in DistributedDataParallel inside a job, else the model itself.

    The wrapper averages gradients across ranks during ``backward`` and starts
    every rank from rank 0's weights.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard_permutation(order: torch.Tensor) -> torch.Tensor:
    """This rank's equal-sized share of a row permutation of shape (n_rows,).

    Every rank draws the same permutation from the same seed; rank ``r``
    keeps positions ``r, r + W, r + 2W, ...`` of its first ``n - n % W``
    entries, so that local batch ``k`` of every rank together form rows
    ``k*b*W`` to ``(k+1)*b*W`` of the permutation: the batch a single process
    with batch size ``b*W`` would take. Up to ``W - 1`` rows (different ones
    each epoch) are left out so that all ranks take the same number of steps.

    Returns
    -------
    Tensor of shape (n_rows // world_size,)
    """
    world = world_size()
    if world == 1:
        return order
    if rows_are_local():  # every rank takes the same number of steps through its own rows
        return order[:shard_size(order.shape[0])]
    return strided_share(order, rank(), world)


def strided_share(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Positions ``rank, rank + world, ...`` of ``order``'s first ``n - n % world`` entries."""
    if order.shape[0] < world:
        raise TorchclfError(
            f"training rows: {order.shape[0]} row(s) for {world} processes; every process needs at least "
            "one row: use more data or fewer processes (--nproc-per-node/--nnodes)"
        )
    usable = order.shape[0] - order.shape[0] % world
    return order[:usable].view(-1, world)[:, rank].contiguous()


def shard_size(n_rows: int) -> int:
    """Rows each rank trains on per epoch (see :func:`shard_permutation`).

    With rank-local rows this is a collective: the fewest rows any rank holds.
    """
    world = world_size()
    if world == 1:
        return n_rows
    if rows_are_local():
        fewest = torch.tensor([n_rows], dtype=torch.int64)
        with _collective("counting every rank's rows"):
            dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
        if fewest.item() == 0:
            raise TorchclfError("training rows: a process has no training rows of its own; "
                                "write the data with more, smaller row groups or run fewer processes")
        return int(fewest.item())
    return n_rows // world


def shard_range(n_rows: int) -> slice:
    """A contiguous block of rows for this rank to score; blocks cover all rows once."""
    world = world_size()
    if world == 1 or rows_are_local():
        return slice(None)
    r = rank()
    return slice(r * n_rows // world, (r + 1) * n_rows // world)


# ----- combining numbers across ranks ------------------------------------------
@contextlib.contextmanager
def _collective(what: str):
    """Turn a collective that fails because another rank died or stalled into a one-line error."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL failures, DistBackendError included
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchclfError(
            f"torchrun rank {rank()}: {what} failed ({first}); another rank crashed or stalled for longer "
            f"than {TIMEOUT_ENV}={timeout().total_seconds():g}s: see its message above"
        ) from exc


def sum_across_ranks(*values) -> list[float]:
    """Sums over all ranks of scalars (0-d tensors or numbers), in one collective.

    The values travel as one float64 tensor on the first tensor's device, so
    counts stay exact below 2**53. Outside a job the values come back as floats.
    """
    if not is_distributed():
        return [float(v) for v in values]
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    packed = torch.stack([torch.as_tensor(v, device=device).to(torch.float64).reshape(()) for v in values])
    with _collective("summing across ranks"):
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. "stop training")."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    with _collective("agreeing on stopping"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait until every rank arrives (bounded by the job's timeout)."""
    if is_distributed():
        sum_across_ranks(0)


def end_run() -> None:
    """Wait for every rank to finish a run, then forget its rank-local-rows mode."""
    barrier()
    _ROWS["local"] = False


def check_same(payload, what: str) -> None:
    """Raise on every rank unless ``payload`` (JSON-able) is the same on all ranks.

    Used for state every rank computes for itself, such as the fitted
    preprocessing, which must agree for the ranks to train one model.
    """
    if not is_distributed():
        return
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    digests = gather(digest)
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise TorchclfError(
            f"{what}: rank(s) {differing} computed different values from rank 0; every process must read "
            "the same data (on several machines, the same file contents at the same path)"
        )


def broadcast(payload):
    """Rank 0's ``payload`` (any picklable value) on every rank."""
    if not is_distributed():
        return payload
    box = [payload if rank() == 0 else None]
    with _collective("receiving rank 0's state"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(payload) -> list:
    """Every rank's ``payload``, in rank order, on every rank."""
    if not is_distributed():
        return [payload]
    out: list = [None] * world_size()
    with _collective("gathering from every rank"):
        dist.all_gather_object(out, payload)
    return out


def concat_rows(array):
    """All ranks' arrays of shape (n_i, ...) stacked in rank order: shape (sum n_i, ...)."""
    import numpy as np

    return np.concatenate(gather(array)) if is_distributed() else array


def all_labels(target):
    """``target`` with every rank's distinct labels, for fitting one label coding everywhere.

    A Series comes back as the distinct labels of all ranks; a label-indicator
    frame (multilabel) comes back unchanged, its columns being the labels.
    """
    import pandas as pd

    if isinstance(target, pd.DataFrame) or not is_distributed():
        return target
    return pd.Series([v for part in gather(pd.unique(target.dropna()).tolist()) for v in part])

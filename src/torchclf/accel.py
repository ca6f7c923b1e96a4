"""Speed settings of the training loop: threads, fused optimizers, precision, compilation.

:func:`torchclf.engine.fit` asks this module how to run and leaves the loop
itself unchanged: how many CPU threads a model of this size should use, which
optimizer implementation is fastest here, whether to autocast to a 16-bit
type (and scale the loss for float16), and whether to hand the model to
``torch.compile``. Process-wide settings are applied inside :func:`cpu_settings`
and restored when training ends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import threading
import time

import torch
from torch import nn

from torchclf.config import batch_rows
from torchclf.errors import TorchclfError, warn

# Each thread needs this many multiply-adds of a step's work: below it, OpenMP's fork/join on each of a
# step's few dozen operations costs what the extra core gains. Measured in docs/benchmarks.md on the
# default 256-256 network, 1 against 2 threads on a quiet 2-core machine: no gain at 4.6M to 13.7M per
# step (batch 64 to 192), 1.2x to 1.5x from 18M (batch 256) up.
MACS_PER_THREAD = 8_000_000


def step_macs(model: nn.Module, batch_rows: int) -> int:
    """Multiply-adds of one forward pass: weights times rows (an MLP's cost, roughly)."""
    return batch_rows * sum(p.numel() for p in model.parameters() if p.dim() > 1)


def choose_threads(model: nn.Module, batch_rows: int, available: int, requested: int | None,
                   free: float | None = None) -> int:
    """CPU threads for training (see :func:`decide_threads`; ``free`` None: every core counts as free)."""
    return decide_threads(step_macs(model, batch_rows), available, requested, free)[0]


def decide_threads(macs: int, available: int, requested: int | None, free: float | None) -> tuple[int, str]:
    """CPU threads for steps of ``macs`` multiply-adds, and why, from measured facts.

    Parameters
    ----------
    macs : int
        Multiply-adds of one forward pass (:func:`step_macs`).
    available : int
        This process's share of the cores (under ``torchrun`` the cores divided
        by the local processes, and never more than torch's thread count).
    requested : int or None
        An explicit ``threads``: honoured exactly, capped at ``available``.
    free : float or None
        Cores that other processes leave idle (:func:`free_cores`); None when
        unknown, then every available core counts as free.

    Returns
    -------
    (threads, reason)
        One thread per ``MACS_PER_THREAD`` of a step's work (so one for small
        steps), at most the available cores and at most the free ones (rounded
        to the nearest whole core, at least one). On a busy machine a waiting
        OpenMP thread holds up every operation of a step until the scheduler
        gives it a core again, so a thread without a free core of its own costs
        far more than it gains.
    """
    if requested is not None:
        n = max(1, min(requested, available))
        return n, f"requested {requested}" + (f", capped at this process's {available} core(s)" if n < requested else "")
    if available <= 1:
        return 1, "one core available to this process"
    by_work = macs // MACS_PER_THREAD
    if by_work < 2:
        return 1, f"small steps ({macs / 1e6:.2g}M multiply-adds)"
    n, reason = min(available, by_work), f"{min(available, by_work)} of {available} cores"
    if free is not None and math.floor(free + 0.5) < n:
        n = max(1, math.floor(free + 0.5))
        reason = f"{n} of {available} cores: other processes leave {max(free, 0.0):.1f} free"
    return n, reason


# Free cores are measured over a window: from the previous measurement (at import, or the last training's
# start) to now, when that is between these bounds, else over a fresh MIN window (a short sleep).
_MIN_WINDOW_S = 0.1
_MAX_WINDOW_S = 30.0
_SAMPLE_LOCK = threading.Lock()


def _cpu_sample() -> tuple[float, int, int, int, float] | None:
    """(monotonic seconds, machine busy ticks, all ticks, online CPUs, this process's CPU seconds), or None.

    From Linux's ``/proc/stat``: every CPU's time in ticks since boot; busy is
    everything but idle and waiting for I/O (``steal``, time a virtual CPU
    wanted but the host gave to others, counts as busy).
    """
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
        fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    total = sum(fields)
    return time.monotonic(), total - fields[3] - fields[4], total, max(cpus, 1), time.process_time()


_LAST_SAMPLE = [_cpu_sample()]


def others_busy_cores(start=None, end=None) -> float | None:
    """Cores' worth of CPU that other processes used between two :func:`_cpu_sample`s (None: unknown).

    The machine's busy time minus this process's own CPU time (all its
    threads) over the same wall time.
    """
    if start is None or end is None or end[2] <= start[2] or end[0] <= start[0]:
        return None
    machine = (end[1] - start[1]) / (end[2] - start[2]) * end[3]
    own = (end[4] - start[4]) / (end[0] - start[0])
    return max(0.0, machine - own)


def free_cores(cores: int | None = None) -> float | None:
    """Cores that other processes leave idle now: measured, with the load average as a floor on their use.

    ``/proc/stat`` over a short window gives what other processes use now;
    the one-minute load average, less this process's own threads at most
    (torch's thread count), gives what they have been asking for, which
    catches load that paused for the window. None where neither is readable.
    """
    cores = available_cores() if cores is None else cores
    with _SAMPLE_LOCK:
        start, end = _LAST_SAMPLE[0], _cpu_sample()
        if end is not None and (start is None or not _MIN_WINDOW_S <= end[0] - start[0] <= _MAX_WINDOW_S):
            if start is None or end[0] - start[0] > _MAX_WINDOW_S:
                start = end
            time.sleep(max(0.0, _MIN_WINDOW_S - (end[0] - start[0])))
            end = _cpu_sample()
        _LAST_SAMPLE[0] = end
    measured = others_busy_cores(start, end)
    try:
        asked = max(0.0, os.getloadavg()[0] - torch.get_num_threads())
    except (AttributeError, OSError):  # Windows has no load average
        asked = None
    known = [v for v in (measured, asked) if v is not None]
    return None if not known else cores - max(known)


_CHOICE = threading.local()


def last_thread_choice() -> dict | None:
    """``{"threads", "reason"}`` of the latest CPU training started in this thread (None: none yet)."""
    return getattr(_CHOICE, "value", None)


# torch's thread count belongs to the whole process, while training runs may overlap (nested calls, or
# several playground tabs in threads): each holder is stacked, and the count follows the newest holder
# still running, back to what it was before the first once all have finished.
_THREAD_HOLDERS: list[tuple[object, int]] = []
_THREAD_LOCK = threading.Lock()
_THREADS_BEFORE: list[int] = []


@contextlib.contextmanager
def threads(n: int | None):
    """Run the block with ``n`` torch threads (None: leave the count alone); the count is restored after."""
    if n is None:
        yield
        return
    token = object()
    with _THREAD_LOCK:
        if not _THREAD_HOLDERS:
            _THREADS_BEFORE[:] = [torch.get_num_threads()]
        _THREAD_HOLDERS.append((token, n))
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREAD_LOCK:
            _THREAD_HOLDERS[:] = [h for h in _THREAD_HOLDERS if h[0] is not token]
            wanted = _THREAD_HOLDERS[-1][1] if _THREAD_HOLDERS else _THREADS_BEFORE[0]
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)


@contextlib.contextmanager
def cpu_settings(n_threads: int | None):
    """Run the block with ``n_threads`` torch threads and denormal floats flushed to zero.

    Adam's second moments of tiny gradients fall into the denormal range,
    where x86 arithmetic is many times slower; flushing them to zero changes
    no accuracy we can measure and restores the speed. Both settings are
    process-wide, so they are put back afterwards.
    """
    flushed = torch.set_flush_denormal(True)
    try:
        with threads(n_threads):
            yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def thread_count(requested: int | None, cores: int, local_world_size: int) -> int:
    """Torch threads for one of ``local_world_size`` processes sharing ``cores``.

    The machine's cores are divided between the local processes, at least one
    each; an explicit request is honoured up to that share, so that the
    processes together never ask for more threads than there are cores.
    """
    share = max(1, cores // max(1, local_world_size))
    return share if requested is None else max(1, min(requested, share))


def local_processes() -> int:
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def available_threads() -> int:
    """Threads this process may use: torch's current count, capped at its share of the cores."""
    return max(1, min(torch.get_num_threads(), thread_count(None, available_cores(), local_processes())))


def speed_settings(fit):
    """Wrap :func:`torchclf.engine.fit` so that it trains under :func:`cpu_settings`.

    On the CPU the thread count comes from :func:`decide_threads` for the
    model and batch at hand and the cores other processes leave free
    (recorded for :func:`last_thread_choice`); on a GPU only the process's
    settings are kept.
    """

    @functools.wraps(fit)
    def wrapper(model, task, train, validation, config, *args, **kwargs):
        threads, _CHOICE.value = None, None
        if train.X.device.type == "cpu":
            rows = min(batch_rows(config.batch_size, len(train)) or len(train), len(train))
            available, macs = available_threads(), step_macs(model, rows)
            # Measuring free cores matters only where more than one thread could pay.
            free = None
            if config.threads is None and available > 1 and macs >= 2 * MACS_PER_THREAD:
                free = free_cores()
            threads, reason = decide_threads(macs, available, config.threads, free)
            _CHOICE.value = {"threads": threads, "reason": reason}
        with cpu_settings(threads):
            return fit(model, task, train, validation, config, *args, **kwargs)

    return wrapper


def make_optimizer(kind: type[torch.optim.Optimizer], params, **settings) -> torch.optim.Optimizer:
    """``kind(params, **settings)`` with the fused implementation where this torch and device have one.

    A fused optimizer updates every parameter in one kernel; older torch
    versions and some devices lack it, and then the multi-tensor
    (``foreach``) implementation is used instead.
    """
    params = list(params)
    try:
        return kind(params, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, foreach=True, **settings)


def _cpu_has_native_bfloat16() -> bool:
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class Precision:
    """Autocast and loss scaling for one training run.

    ``float32`` does nothing. ``bfloat16`` autocasts matrix products on the
    CPU or a GPU. ``float16`` needs a CUDA GPU and scales the loss so that
    small gradients survive the narrow range.

    Parameters
    ----------
    name : {"float32", "bfloat16", "float16"}
    device : torch.device
    autocast_cache : bool
        Keep autocast's cache of weights cast within one forward pass; a CUDA graph capture needs it off.
    """

    def __init__(self, name: str, device: torch.device, autocast_cache: bool = True):
        self.name = name
        self.device = device
        self.autocast_cache = autocast_cache
        self.dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
        self.scaler = None
        if name == "float16":
            if device.type != "cuda":
                raise TorchclfError(f"precision=float16: needs a CUDA GPU, training is on {device.type}; "
                                    "use --precision bfloat16 (or float32)")
            self.scaler = torch.amp.GradScaler("cuda")
        if name == "bfloat16" and device.type == "cpu" and not _cpu_has_native_bfloat16():
            warn("precision=bfloat16: this CPU has no native bfloat16 arithmetic (AMX or AVX512-BF16), "
                 "so it is emulated and slower than float32")

    def autocast(self):
        """A context that runs the forward pass in the reduced type (or does nothing)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=self.autocast_cache)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skips the step when a gradient overflowed
            self.scaler.update()


FULL_PRECISION = Precision("float32", torch.device("cpu"))


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` when ``enabled``; the module shares the original's parameters."""
    if not enabled:
        return model
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise TorchclfError("compile=True: torch.compile needs a C++ compiler on the CPU and none was found; "
                            "install g++ or train without --compile")
    return torch.compile(model)

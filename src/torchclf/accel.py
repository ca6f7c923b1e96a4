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
import shutil
import warnings

import torch
from torch import nn

from torchclf.errors import TorchclfError

# Below this many multiply-adds per step, OpenMP's fork/join on each of a
# step's few dozen operations costs more than a second core gains (measured in
# docs/benchmarks.md: the tutorial's 2-10-10-1 model on 800 rows).
SMALL_STEP_MACS = 2_000_000


def step_macs(model: nn.Module, batch_rows: int) -> int:
    """Multiply-adds of one forward pass: weights times rows (an MLP's cost, roughly)."""
    return batch_rows * sum(p.numel() for p in model.parameters() if p.dim() > 1)


def choose_threads(model: nn.Module, batch_rows: int, available: int, requested: int | None) -> int:
    """CPU threads for training: the request if given, one for small steps, else all ``available``.

    ``available`` is this process's share of the cores (under ``torchrun`` the
    cores divided by the local processes), so the result never oversubscribes.
    """
    if requested is not None:
        return max(1, min(requested, available))
    return 1 if step_macs(model, batch_rows) < SMALL_STEP_MACS else max(1, available)


@contextlib.contextmanager
def cpu_settings(threads: int | None):
    """Run the block with ``threads`` torch threads and denormal floats flushed to zero.

    Adam's second moments of tiny gradients fall into the denormal range,
    where x86 arithmetic is many times slower; flushing them to zero changes
    no accuracy we can measure and restores the speed. Both settings are
    process-wide, so they are put back afterwards.
    """
    old_threads = torch.get_num_threads()
    if threads is not None and threads != old_threads:
        torch.set_num_threads(threads)
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


def available_threads() -> int:
    """Threads this process may use: torch's current count, capped at its share of the cores."""
    from torchclf import distributed

    launch = distributed.launch_from_env()
    share = distributed.thread_count(None, distributed.available_cores(), launch.local_world_size if launch else 1)
    return max(1, min(torch.get_num_threads(), share))


def speed_settings(fit):
    """Wrap :func:`torchclf.engine.fit` so that it trains under :func:`cpu_settings`.

    On the CPU the thread count comes from :func:`choose_threads` for the
    model and batch at hand; on a GPU only the process's settings are kept.
    """

    @functools.wraps(fit)
    def wrapper(model, task, train, validation, config, *args, **kwargs):
        threads = None
        if train.X.device.type == "cpu":
            rows = config.batch_size or len(train)
            threads = choose_threads(model, min(rows, len(train)), available_threads(), config.threads)
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
    """

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device = device
        self.dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
        self.scaler = None
        if name == "float16":
            if device.type != "cuda":
                raise TorchclfError(f"precision=float16: needs a CUDA GPU, training is on {device.type}; "
                                    "use --precision bfloat16 (or float32)")
            self.scaler = torch.amp.GradScaler("cuda")
        if name == "bfloat16" and device.type == "cpu" and not _cpu_has_native_bfloat16():
            warnings.warn("precision=bfloat16: this CPU has no native bfloat16 arithmetic (AMX or AVX512-BF16), "
                          "so it is emulated and slower than float32", stacklevel=4)

    def autocast(self):
        """A context that runs the forward pass in the reduced type (or does nothing)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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

"""The whole training step replayed from a CUDA graph.

A small network on a GPU is bound by kernel launches, not arithmetic: the
32-256-256-4 MLP's step (forward, loss, backward, Adam) is a few dozen
kernels of a few microseconds each, and Python launching them one by one is
the bottleneck (``docs/benchmarks.md`` has the measurements). PyTorch can
record the step's kernels once into a CUDA graph and launch them all with
one call, which is what :class:`GraphedSteps` does for
:func:`torchclf.engine.fit`:

- the batch is gathered inside the graph, by ``index_select`` from the
  training tensors (already on the device) through a static index buffer
  that each step refills from the epoch's shuffled order, so every row is
  still seen exactly once per epoch;
- one graph per batch size: the epoch's last, smaller batch gets its own;
- the optimizer runs with ``capturable=True`` (its step counts live on the
  device) and, for Adam and AdamW, with the learning rate in a device tensor
  that schedulers and callbacks update between epochs; SGD's learning rate is
  a number, so its graphs are captured again when it changes;
- loss and correct counts are summed into device buffers that the engine
  reads once per epoch;
- each batch size's first :data:`WARMUP_STEPS` steps run eagerly on a side
  stream (lazy set-up must happen outside a capture); they are real steps of
  the run, so the run sees the same batches in the same order as the eager
  loop and, without dropout, ends with the same weights within float
  rounding. Dropout draws its masks from the graph-safe generator, so a
  seeded run is reproducible but its masks are not the eager loop's.

:func:`plan` says where capture cannot work (the engine then trains eagerly
and, in verbose output, says why in one line).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from torchclf import accel, distributed

# Eager steps of each batch size before it is captured. PyTorch's recipe warms up on a side stream before
# capturing, so that lazily created state (the optimizer's moments, cuBLAS handles and workspaces) exists
# and is not allocated inside the graph.
WARMUP_STEPS = 3


class CudaBackend:
    """Side-stream eager steps and graph capture on the current CUDA device."""

    capturable = True

    def __init__(self):
        self.stream = torch.cuda.Stream()

    def eager(self, fn: Callable[[], None]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            fn()
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a playground's server, say) do not break the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
        return graph.replay


def plan(config, device: torch.device, precision: accel.Precision, callbacks) -> tuple[object | None, str]:
    """(backend, "") where the step can be captured, else (None, why not); why is "" where graphs do not apply."""
    from torchclf.callbacks import L1Penalty

    if device.type != "cuda" or not getattr(config, "cuda_graphs", False):
        return None, ""
    if distributed.is_distributed():
        why = "under torchrun, DistributedDataParallel's gradient all-reduce runs outside the graph"
    elif config.compile:
        why = "compile=True hands the model to torch.compile, which makes its own graphs"
    elif precision.scaler is not None:
        why = "float16's loss scaling checks every step's gradients on the host (bfloat16 needs no scaling)"
    elif any(isinstance(cb, L1Penalty) for cb in callbacks):
        why = "the L1 penalty's gradient hooks read their strength on the host at every step"
    else:
        return CudaBackend(), ""
    return None, why


@dataclass
class _Graph:
    index: torch.Tensor | None  # the static batch index the step gathers rows through (None: every row)
    replay: Callable[[], None] | None = None
    eager_steps: int = 0


@dataclass
class GraphStats:
    """What the stepper did: graphs captured, steps replayed and run eagerly, and why it stopped capturing."""

    captured: int = 0
    replayed: int = 0
    eager: int = 0
    failed: str = ""
    sizes: list = field(default_factory=list)


class GraphedSteps:
    """Training epochs whose steps replay CUDA graphs of ``step_fn`` (see the module's docstring).

    Parameters
    ----------
    model, task, loss_fn :
        As for :func:`torchclf.engine.train_step`.
    data : TensorData
        The training rows, on the device; the graphs read them in place.
    precision : accel.Precision
        Autocast settings; the graphs autocast without the weight-cast cache, which capture forbids.
    step_fn :
        :func:`torchclf.engine.train_step` (passed in to keep this module below the engine).
    backend :
        :class:`CudaBackend`, or a stand-in with the same ``eager``, ``capture`` and ``capturable``.
    say :
        Called with one line when a capture fails and training goes on eagerly.
    """

    def __init__(self, model, task, loss_fn, data, precision: accel.Precision, step_fn, backend,
                 say: Callable[[str], None] | None = None):
        self.model, self.task, self.loss_fn, self.data, self.step_fn = model, task, loss_fn, data, step_fn
        self.precision = copy.copy(precision)
        self.precision.autocast_cache = False
        self.backend = backend
        self.say = say or (lambda line: None)
        device = data.X.device
        # Allocated once, outside any capture: the graphs add into them, the engine reads them per epoch.
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.graphs: dict[int, _Graph] = {}
        self.stats = GraphStats()
        self._owner: tuple | None = None  # (optimizer, its state) the graphs were captured with
        self._lr_tensors: list[torch.Tensor] = []
        self._lr_numbers: tuple = ()  # an SGD's learning rates baked into its graphs
        self._saved: list[tuple] = []  # per group: (number lr, capturable) to put back after the epoch

    # ----- the optimizer, made capture-safe for the epoch and put back after ----------------------
    def _tensor_lr(self, optimizer) -> bool:
        return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))

    def _begin(self, optimizer) -> None:
        # A new optimizer or a restored state: the graphs hold stale addresses. Compared by identity, with the
        # objects held (an id alone could be reused by a new object once the old one is freed).
        if self._owner is None or self._owner[0] is not optimizer or self._owner[1] is not optimizer.state:
            self.graphs.clear()
            self._owner, self._lr_tensors, self._lr_numbers = (optimizer, optimizer.state), [], ()
        groups = optimizer.param_groups
        self._saved = [(g["lr"], g.get("capturable")) for g in groups]
        if self.backend.capturable:
            device = self.data.X.device
            for group in groups:
                if "capturable" in group:
                    group["capturable"] = True
                for p in group["params"]:  # step counts kept on the host (a resumed state) move to the device
                    step = optimizer.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor) and step.device != device:
                        optimizer.state[p]["step"] = step.to(device=device, dtype=torch.float32)
        self._sync_lr(optimizer)

    def _sync_lr(self, optimizer) -> None:
        groups = optimizer.param_groups
        if not self._tensor_lr(optimizer):
            numbers = tuple(float(g["lr"]) for g in groups)
            if numbers != self._lr_numbers:
                self.graphs = {rows: _Graph(g.index, None, g.eager_steps) for rows, g in self.graphs.items()}
                self._lr_numbers = numbers
            return
        if not self._lr_tensors:
            self._lr_tensors = [torch.tensor(float(g["lr"]), device=self.data.X.device) for g in groups]
        for i, (tensor, group) in enumerate(zip(self._lr_tensors, groups)):
            if group["lr"] is not tensor:  # a number set by a callback or a scheduler: into the graph's tensor
                self._saved[i] = (group["lr"], self._saved[i][1])
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor

    def _end(self, optimizer) -> None:
        for group, (number, capturable), tensor in zip(optimizer.param_groups, self._saved,
                                                       self._lr_tensors or [None] * len(self._saved)):
            if capturable is not None:
                group["capturable"] = capturable
            if tensor is not None and group["lr"] is tensor:
                value = float(tensor)
                # The number it came from, unless a scheduler changed the tensor during the epoch.
                kept = isinstance(number, float) and value == float(torch.tensor(number, dtype=tensor.dtype))
                group["lr"] = number if kept else value

    # ----- steps ----------------------------------------------------------------------------------
    def _body(self, optimizer, index: torch.Tensor | None) -> None:
        d = self.data
        if index is None:
            X, y, w = d.X, d.y, d.weight
        else:
            X, y = d.X.index_select(0, index), d.y.index_select(0, index)
            w = None if d.weight is None else d.weight.index_select(0, index)
        loss, correct = self.step_fn(self.model, self.task, self.loss_fn, optimizer, X, y, w, self.precision)
        self.loss_sum += loss
        self.correct += correct

    def _eager(self, optimizer, graph: _Graph) -> None:
        with warnings.catch_warnings():  # a capturable optimizer warns when it steps outside a graph
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self.backend.eager(lambda: self._body(optimizer, graph.index))
        graph.eager_steps += 1
        self.stats.eager += 1

    def _step(self, optimizer, index: torch.Tensor | None) -> None:
        rows = len(self.data) if index is None else index.shape[0]
        graph = self.graphs.get(rows)
        if graph is None:
            static = None if index is None else torch.empty(rows, dtype=index.dtype, device=index.device)
            graph = self.graphs[rows] = _Graph(static)
        if index is not None:
            graph.index.copy_(index)
        if graph.replay is None:
            if self.stats.failed or graph.eager_steps < WARMUP_STEPS:
                self._eager(optimizer, graph)
                return
            try:
                graph.replay = self.backend.capture(lambda: self._body(optimizer, graph.index))
            except RuntimeError as err:
                self.stats.failed = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                self.say(f"CUDA graphs: capturing the training step failed ({self.stats.failed}); "
                         "training on eagerly")
                optimizer.zero_grad(set_to_none=True)
                self._eager(optimizer, graph)
                return
            self.stats.captured += 1
            self.stats.sizes.append(rows)
        graph.replay()
        self.stats.replayed += 1

    def run_epoch(self, optimizer, batches: list[torch.Tensor] | None,
                  after_step: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the rows in ``batches`` (index tensors on the device; None: one full batch).

        Returns the summed loss (each batch's mean times its rows) and the correct count, as new
        0-d tensors on the device.
        """
        self._begin(optimizer)
        try:
            self.loss_sum.zero_()
            self.correct.zero_()
            steps = [None] if batches is None else batches
            for i, index in enumerate(steps, 1):
                self._step(optimizer, index)
                if after_step is not None:
                    after_step(i, len(steps))
                    self._sync_lr(optimizer)  # a step hook may have set a learning rate
        finally:
            self._end(optimizer)
        return self.loss_sum.clone(), self.correct.clone()

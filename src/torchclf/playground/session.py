"""One browser tab's training: data, model, play/pause/step, live settings, snapshots for the page, saving.

Set-up is :func:`torchclf.api.prepare`, once per network; each run (and
reset) trains a copy of its seeded network with :func:`torchclf.api.fit` (and
so :func:`torchclf.engine.fit`) in a worker thread with a :class:`Streamer`
callback. The callback waits before each optimizer step for the page's
permission (play at a chosen number of steps per second, or one step at a
time), applies settings changed while training (learning rate, L1, L2,
dropout at the next step; optimizer and batch size at the next epoch; more
epochs once the last one is done), measures the test part after each epoch,
and redraws the decision boundary and the network's neurons when due.
Nothing here trains by itself.

Locks: the worker holds ``Run.model`` (a :class:`ModelLock`) while it steps
and lets anyone waiting to read the model (a redraw, a chosen point, a save)
go first between two steps; ``Run.data_lock`` guards the numbers the page is
sent and is only held for copying, so the event loop never waits on a step.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import itertools
import re
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from torchclf import api, engine
from torchclf.callbacks import Callback, L1Penalty
from torchclf.config import RunConfig, TrainConfig
from torchclf.data import Dataset, Splits, split_dataset
from torchclf.data.builtin import load_builtin
from torchclf.data.features import RAW, derive
from torchclf.errors import TorchclfError
from torchclf.model import build_model, dropout
from torchclf.playground import settings as page_settings
from torchclf.playground.settings import (
    UPLOAD,
    Settings,
    builtin_spec,
    parse_settings,
    run_config,
    train_command,
)
from torchclf.playground.uploads import UploadStore, subset
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder, Preprocessor
from torchclf.task import Task

GRID = 64  # heat-map cells per side
NEURON_GRID = 24  # cells per side of each neuron's picture
NEURONS_SHOWN = 8  # neurons drawn per layer (the first ones); wider layers say how many more they have
REDRAW_SECONDS = 0.1  # while playing fast, redraw at most this often ...
REDRAW_SHARE = 0.2  # ... and spend at most this share of the time redrawing
SLOW_STEPS = 30  # at this many steps per second or fewer, redraw after every step
NOTIFY_SECONDS = 0.05  # step progress wakes the sender at most this often
MAX_POINTS_SHOWN = 3000  # rows per part drawn on the page
# \A and \Z, not ^ and $: "$" also matches before a trailing newline, which let "nl\n" through.
RUN_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,79}\Z")
# Settings taken at an epoch's start (the engine reads the optimizer and batch size once per epoch).
AT_EPOCH = ("optimizer", "batch_size")

# Model initialisation reads torch's global generator: two tabs seeding and
# building at the same moment would otherwise get each other's weights.
_INIT_LOCK = threading.Lock()
# matplotlib's pyplot (used for a run folder's plots) is not thread-safe.
_SAVE_LOCK = threading.Lock()


def _num(value, digits: int = 5):
    """A float for JSON: rounded, and None for NaN or infinity (JSON has neither)."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


def _bytes(values: np.ndarray) -> str:
    """Numbers from 0 to 255 as base64 text: a 64 x 64 map is 5.5 KB instead of about 16 KB of JSON."""
    return base64.b64encode(np.asarray(values, dtype=np.uint8).tobytes()).decode("ascii")


def warm_up() -> None:
    """Load what the first training needs ahead of the first Play.

    Building the first optimizer imports ``torch._dynamo``, about 3 seconds
    that a fresh server's first Play would otherwise spend at epoch 0.
    """
    engine.make_optimizer(nn.Linear(1, 1), TrainConfig())


@dataclass
class Prepared:
    """A settings' data, split and encoded by :func:`torchclf.api.prepare`, with what the page's views need."""

    settings: Settings
    setup: api.Prepared  # splits, labels, task, preprocessing and the seeded network, never trained itself
    data_arg: str  # the DATA argument of the equivalent command
    data_file: tuple[Path, bytes] | None  # an upload's chosen (and computed) columns, written on save
    raw: Splits  # the same rows' two plotted columns (the model's inputs may be computed from them)
    grid_frame: pd.DataFrame  # (GRID * GRID, n_inputs) the model's inputs at the cell centres, top-left first
    neuron_frame: pd.DataFrame  # (NEURON_GRID ** 2, n_inputs) the same for the neurons' pictures
    bounds: tuple[float, float, float, float]  # x0, x1, y0, y1 in raw feature units
    axes: list[str]  # the two plotted columns
    features: list[str]  # the model's input columns

    @property
    def config(self) -> RunConfig:
        return self.setup.config

    @property
    def splits(self) -> Splits:
        return self.setup.splits

    @property
    def labels(self) -> LabelCoder:
        return self.setup.predictor.labels

    @property
    def task(self) -> Task:
        return self.setup.predictor.task

    @property
    def preprocessor(self) -> Preprocessor:
        return self.setup.predictor.preprocessor

    @property
    def dataset_summary(self) -> dict:
        return self.setup.data_summary

    def fresh(self) -> api.Prepared:
        """The set-up for one run: a copy of the seeded initial network, so that every run (and reset) starts there."""
        start = self.setup.predictor
        predictor = Predictor(copy.deepcopy(start.model), start.task, start.preprocessor, start.labels, start.config,
                              label_sep=start.label_sep, target_columns=start.target_columns)
        return replace(self.setup, predictor=predictor)

    def spec(self, settings: Settings, epochs: int) -> api.RunSpec:
        """The run specification of ``torchclf train``'s command for ``settings`` and ``epochs`` (the saved run's)."""
        target = settings.target if settings.dataset == UPLOAD else None
        return api.RunSpec(self.data_arg, target, config=run_config(settings, epochs=epochs))

    def network_shape(self) -> dict:
        """Layer widths, the input names and which neurons are drawn."""
        sizes = [len(self.features), *self.settings.hidden, self.task.n_outputs]
        return {"sizes": sizes, "inputs": self.features, "shown": [min(n, NEURONS_SHOWN) for n in sizes],
                "size": NEURON_GRID}

    def page_data(self) -> dict:
        """The points to draw and what the page needs to colour them."""
        def part(raw, ds):
            X = raw.features.to_numpy(dtype="float64")[:MAX_POINTS_SHOWN]
            y = self.labels.encode(ds.target)[:MAX_POINTS_SHOWN]
            return {"x": [_num(v, 4) for v in X[:, 0]], "y": [_num(v, 4) for v in X[:, 1]],
                    "label": [int(v) for v in y]}

        return {
            "classes": [str(c) for c in self.labels.classes],
            "task": self.task.kind,
            "axes": self.axes,
            "features": self.features,
            "bounds": list(self.bounds),
            "grid": GRID,
            "network": self.network_shape(),
            "train": part(self.raw.train, self.splits.train),
            "test": part(self.raw.test, self.splits.test),
            "rows": {"train": self.splits.train.n_rows, "test": self.splits.test.n_rows},
        }


def _plane(x0: float, x1: float, y0: float, y1: float, n: int, names: list[str]) -> pd.DataFrame:
    """(n * n, 2) cell centres of an n x n grid over the plane, top row (largest y) first, as the page paints."""
    gx = x0 + (np.arange(n) + 0.5) * (x1 - x0) / n
    gy = y1 - (np.arange(n) + 0.5) * (y1 - y0) / n
    mx, my = np.meshgrid(gx, gy)
    return pd.DataFrame({names[0]: mx.ravel(), names[1]: my.ravel()})


def prepare(settings: Settings, uploads: UploadStore, runs_dir: Path) -> Prepared:
    """Read and split the data, fit preprocessing and seed the network with :func:`torchclf.api.prepare`.

    The set-up is the one ``torchclf train`` does for :func:`train_command`'s
    line, so the command reproduces the page's weights. The model's inputs may
    be computed from the two plotted columns (``settings.features``); those two
    columns are split the same way to draw the points.
    """
    data_file = None
    if settings.dataset == UPLOAD:
        upload = uploads.get(settings.upload)
        frame = subset(upload, settings.x, settings.y, settings.target)
        plotted = frame[[settings.x, settings.y]]
        if settings.features != RAW:
            frame = pd.concat([derive(plotted, settings.features, "features"), frame[[settings.target]]], axis=1)
        body = frame.to_csv(index=False).encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()[:10]
        path = runs_dir / "playground-data" / f"{Path(upload.name).stem}-{digest}.csv"
        data_file = (path, body)
        data_arg = str(path)
        # Read the columns back through the same CSV file the command will
        # read, so the page and the command train on identical numbers. The
        # file itself is only written when the run is saved.
        with tempfile.TemporaryDirectory(prefix="torchclf-playground-") as tmp:
            tmp_csv = Path(tmp) / "data.csv"
            tmp_csv.write_bytes(body)
            data = api.as_dataset(str(tmp_csv), settings.target)
        data.name = data_arg
        raw = Dataset(plotted.reset_index(drop=True), data.target, name=data_arg)
    else:
        data = data_arg = builtin_spec(settings)
        plain = builtin_spec(replace(settings, features=RAW))
        features, target, _ = load_builtin(plain)
        raw = Dataset(features, target, name=plain)
    with _INIT_LOCK:
        setup = api.prepare(api.RunSpec(data, config=run_config(settings)))
    config = setup.config
    raw_splits = split_dataset(raw, test_size=config.data.test_size, validation_size=config.data.validation_size,
                               seed=config.train.seed)
    for part in ("train", "test"):
        # The split depends only on the target and the seed, so the plotted rows are the model's rows.
        if not getattr(raw_splits, part).target.astype(str).equals(getattr(setup.splits, part).target.astype(str)):
            raise TorchclfError(f"{data_arg}: the plotted rows do not match the {part} rows; reload the page")
    rows = pd.concat([ds.features for ds in (raw_splits.train, raw_splits.test) if ds is not None])
    if rows.shape[1] != 2:
        raise TorchclfError(f"{setup.splits.train.name}: the playground draws two feature columns, found {rows.shape[1]}")
    X = rows.to_numpy(dtype="float64")
    lo, hi = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
    pad = (hi - lo) * 0.08 + 1e-6
    x0, x1, y0, y1 = lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]
    axes = [str(c) for c in rows.columns]
    features = [str(c) for c in setup.splits.train.features.columns]

    def inputs(n: int) -> pd.DataFrame:
        plane = _plane(x0, x1, y0, y1, n, axes)
        return plane if settings.features == RAW else derive(plane, settings.features)[features]

    return Prepared(settings, setup, data_arg, data_file, raw_splits, inputs(GRID), inputs(NEURON_GRID),
                    (float(x0), float(x1), float(y0), float(y1)), axes, features)


class ModelLock:
    """The lock on a run's model, fair to readers.

    The worker takes it again after every step; a reader (a redraw, a chosen
    point, a save) that is waiting gets it first, so it never waits for a
    whole run at full speed.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._waiting = 0

    @contextlib.contextmanager
    def reading(self):
        with self._cond:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    def take(self) -> None:
        """The worker's side: wait for waiting readers to have their turn, then hold the model."""
        with self._cond:
            while self._waiting:
                self._cond.wait(0.1)
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


class Streamer(Callback):
    """The engine callback that paces a :class:`Run`, reports its progress and applies its live settings."""

    def __init__(self, run: Run):
        self.run = run

    def on_train_begin(self, state) -> None:
        self.run.begin(state)
        self.run.gate(state)

    def on_epoch_begin(self, state) -> None:
        self.run.take_model()
        self.run.apply(state, epoch_start=True)

    def on_step_end(self, state) -> None:
        run = self.run
        run.stepped(state)
        if state.step < state.steps:  # the epoch's last step is followed by its record, then the gate
            run.release_model()
            try:
                run.gate(state)
            finally:
                run.take_model()
            run.apply(state)

    def on_epoch_end(self, state) -> None:
        try:
            self.run.record(state)
        finally:
            self.run.release_model()
        with self.run.cond:
            self.run.to_epoch_end = False
        if not state.stop and self.run.hold_at_limit(state):
            self.run.gate(state)

    def on_train_end(self, state) -> None:
        self.run.finished = True
        self.run.notify()


class _StoppedBeforeStart(BaseException):
    """Raised by :meth:`Run.gate` to leave ``engine.fit`` before its first epoch.

    A BaseException, so that ``Run._train``'s ``except Exception`` (which shows
    training errors on the page) lets it through to ``Run.start``'s worker.
    """


def _hidden_outputs(model: nn.Module) -> list[nn.Module]:
    """The module after which each hidden layer's output is ready (where :class:`~torchclf.model.MLP` puts dropout)."""
    last, outputs = None, []
    for module in model.layers:
        if isinstance(module, nn.Linear) and last is not None:
            outputs.append(last)
        last = module
    return outputs


class Run:
    """One model trained from its initial weights, its live settings and what the page is sent; a reset starts a new Run."""

    ids = itertools.count(1)

    def __init__(self, prepared: Prepared, notify: Callable[[], None]):
        self.id = next(Run.ids)
        self.prepared = prepared
        self.settings = prepared.settings  # the page's settings now, live changes included
        self.notify = notify
        self.setup = prepared.fresh()
        self.predictor = self.setup.predictor
        model = self.predictor.model
        self.loss_fn = prepared.task.loss_function()
        self.test_t = api.tensors(self.predictor, prepared.splits.test, "test part", torch.device("cpu"))
        dtype = next(model.parameters()).dtype
        self.grid_x = torch.from_numpy(prepared.preprocessor.transform(prepared.grid_frame, "heat-map grid")).to(dtype)
        self.neuron_x = torch.from_numpy(
            prepared.preprocessor.transform(prepared.neuron_frame, "neuron pictures")).to(dtype)
        self.model = ModelLock()
        self.holding = False
        self.data_lock = threading.Lock()
        self.cond = threading.Condition()
        self.playing = False
        self.budget = 0  # steps allowed while paused (one per "step")
        self.to_epoch_end = False  # steps allowed while paused until the current epoch ends
        self.speed: float | None = None  # steps per second while playing; None: as fast as it goes
        self.next_step = 0.0  # when a paced run may take its next step (time.monotonic)
        self.stopped = False
        self.started = False
        self.finished = False  # the worker is done
        self.at_limit = False  # the last epoch is done; more epochs continue the run
        self.error: str | None = None
        self.state = None
        self.future: Future | None = None
        self.pending: dict = {}  # live settings not applied yet
        self.changes: list[dict] = []  # live settings applied after training began
        self.penalty = L1Penalty(0.0)
        self._dropout_p = 0.0
        self._dropout_hooks: list = []
        self.steps = 0  # optimizer steps taken
        self.step_in_epoch = (0, 0)
        self.epoch_weights: dict | None = None  # the weights after the last whole epoch (what a save writes)
        self.rows: list[list] = []  # epoch, train loss, train acc, test loss, test acc, learning rate
        self.grid: dict | None = None
        self.net: dict | None = None
        self.grid_version = 0
        self.draw_time = 0.0
        self.draw_cost = 0.0
        self.notify_time = 0.0
        self.changes_version = 0
        self.point_index = 0
        self.point: dict | None = None
        self.point_version = 0
        self.saving = threading.Lock()
        self.saved: tuple | None = None  # ((epochs, settings, name), reply) of the last save
        self.refresh()

    # ----- control (called from the page's handler thread) --------------------
    def start(self, executor: Workers) -> None:
        """Hand the training to a worker thread; a refusal (too many runs) leaves the run ready to start."""
        if self.started:
            return

        def work() -> None:
            # A run stopped while it waited (a reset, a closed tab) never trains.
            if self.stopped:
                self.finished = True
                self.notify()
                return
            try:
                self._train()
            except _StoppedBeforeStart:
                pass

        self.started = True
        try:
            # Runs are counted per tab by the tab's notify callback, which all its runs share.
            self.future = executor.submit(work, owner=self.notify)
        except TorchclfError:
            self.started = False
            with self.cond:
                self.playing = False
                self.budget = 0
            raise

    def _train(self) -> None:
        try:
            # The page measures the test part itself after each epoch, and save scores the run.
            api.fit(self.setup, callbacks=[Streamer(self)], scores=False)
        except Exception as exc:  # reported on the page; the server keeps serving other tabs
            self.error = f"training stopped: {type(exc).__name__}: {exc}"
        finally:
            self.penalty.detach()
            if self.holding:
                self.release_model()
            self.finished = True
            self.notify()

    def play(self, executor) -> None:
        with self.cond:
            self.playing = True
            self.next_step = 0.0
            self.cond.notify_all()
        self.start(executor)

    def pause(self) -> None:
        with self.cond:
            self.playing = False
            self.budget = 0
            self.to_epoch_end = False
        self.refresh()

    def step(self, executor, unit: str = "epoch") -> None:
        """Train one optimizer step (``unit`` "step"), or on to the end of the current epoch ("epoch")."""
        if unit not in ("step", "epoch"):
            raise TorchclfError(f"step: unit {unit!r} is not one of step, epoch")
        with self.cond:
            self.playing = False
            if unit == "epoch":
                self.to_epoch_end = True
            else:
                self.budget += 1
            self.cond.notify_all()
        self.start(executor)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def set_speed(self, speed: float | None) -> None:
        """Steps per second while playing (None: as fast as it goes); see :func:`parse_speed`."""
        with self.cond:
            self.speed = speed
            self.next_step = 0.0
            self.cond.notify_all()
        self.notify()

    def change(self, settings: Settings, names: list[str]) -> None:
        """Take new values of live settings: the worker applies them before its next step (or epoch)."""
        with self.cond:
            for name in names:
                self.pending[name] = getattr(settings, name)
            self.settings = settings
            self.at_limit = self.at_limit and self.state is not None and self.state.epoch >= settings.epochs
            self.cond.notify_all()
        self.notify()

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.finished or self.at_limit:
            return "finished"
        if self.playing:
            return "playing"
        return "paused" if self.started else "ready"

    # ----- the worker's side ---------------------------------------------------
    def take_model(self) -> None:
        self.model.take()
        self.holding = True

    def release_model(self) -> None:
        self.holding = False
        self.model.release()

    def begin(self, state) -> None:
        """At the engine's start: keep its state, and hook the L1 penalty in when the engine has none."""
        self.state = state
        engine_penalty = next((cb for cb in state.callbacks if isinstance(cb, L1Penalty)), None)
        if engine_penalty is not None:  # the run's L1 is above 0: change that one
            self.penalty = engine_penalty
        else:
            self.penalty.attach(state.model)

    def gate(self, state) -> None:
        """Wait until the page plays, steps or stops; consume one step's permit (at the page's speed when playing)."""
        with self.cond:
            while True:
                while not self.stopped and not self.playing and self.budget == 0 and not self.to_epoch_end:
                    self.cond.wait()
                if self.stopped:
                    if not state.history and not self.steps:
                        # engine.fit only looks at state.stop after an epoch; leave before the first one.
                        raise _StoppedBeforeStart
                    state.stop = True
                    state.stop_reason = "stopped from the playground"
                    return
                if not self.playing:
                    if not self.to_epoch_end:
                        self.budget -= 1
                    return
                if self.speed is None:
                    return
                now, interval = time.monotonic(), 1.0 / self.speed
                if now >= self.next_step:
                    # On the beat; a run that fell more than a beat behind starts a new beat instead of hurrying.
                    self.next_step = now + interval if now - self.next_step > interval else self.next_step + interval
                    return
                self.cond.wait(self.next_step - now)

    def hold_at_limit(self, state) -> bool:
        """After an epoch: at the last one, wait until the page asks for more epochs (True) or stops (False)."""
        with self.cond:
            while not self.stopped:
                self._apply_epochs(state)
                if state.epoch < state.config.epochs:
                    self.at_limit = False
                    return True
                if not self.at_limit:
                    self.at_limit = True
                    self.playing = False
                    self.budget = 0
                    self.notify()
                self.cond.wait()
            state.stop = True
            state.stop_reason = "stopped from the playground"
            return False

    def _apply_epochs(self, state) -> None:
        epochs = self.pending.pop("epochs", None)
        if epochs is not None and epochs != state.config.epochs:
            self._log_change(state, "epochs", state.config.epochs, epochs)
            state.config = replace(state.config, epochs=epochs)

    def apply(self, state, epoch_start: bool = False) -> None:
        """Apply the live settings the page changed (model held): at the next step, or the next epoch for some."""
        with self.cond:
            if not self.pending:
                return
            names = [n for n in self.pending if epoch_start or n not in AT_EPOCH]
            values = {n: self.pending.pop(n) for n in names}
            if "epochs" in values:
                self.pending["epochs"] = values.pop("epochs")
                self._apply_epochs(state)
        config = state.config
        changed = {n: v for n, v in values.items() if v != (self._dropout_now() if n == "dropout" else getattr(config, n))}
        if not changed:
            return
        for name, value in changed.items():
            self._log_change(state, name, self._dropout_now() if name == "dropout" else getattr(config, name), value)
        new = replace(config, **{n: v for n, v in changed.items() if n != "dropout"})
        if "optimizer" in changed:
            # Another kind of optimizer starts without moments; the schedule starts again with it.
            state.optimizer = engine.make_optimizer(state.model, new)
            state.scheduler = engine.make_scheduler(state.optimizer, new)
        else:
            keys = {"lr": "lr", "weight_decay": "weight_decay"}
            for group in state.optimizer.param_groups:
                group.update({keys[n]: v for n, v in changed.items() if n in keys})
        state.config = new
        if "l1" in changed:
            self.penalty.strength = new.l1
        if "dropout" in changed:
            self._set_dropout(changed["dropout"])

    def _log_change(self, state, name: str, old, new) -> None:
        with self.data_lock:
            self.changes.append({"setting": name, "from": old, "to": new, "epoch": state.epoch,
                                 "step": self.steps})
            self.changes_version += 1

    def _dropout_now(self) -> float:
        drops = [m for m in self.predictor.model.modules() if isinstance(m, nn.Dropout)]
        return float(drops[0].p) if drops else self._dropout_p

    def _set_dropout(self, p: float) -> None:
        """Change the dropout probability of the running network."""
        model = self.predictor.model
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        if drops:
            for m in drops:
                m.p = p
            return
        # A network built without dropout has no Dropout modules: apply it where MLP would, after each hidden
        # layer's output, by forward hooks (the weights and their names stay as they are).
        self._dropout_p = p
        if not self._dropout_hooks:
            def drop(module, inputs, output):
                return dropout(output, self._dropout_p, module.training) if self._dropout_p else None

            self._dropout_hooks = [m.register_forward_hook(drop) for m in _hidden_outputs(model)]

    def stepped(self, state) -> None:
        """After a step (model held): count it, and redraw when due."""
        self.steps += 1
        self.step_in_epoch = (state.step, state.steps)
        now = time.perf_counter()
        if state.step < state.steps and self._draw_due(now):
            self._draw()
        elif now - self.notify_time >= NOTIFY_SECONDS:
            self.notify_time = now
            self.notify()

    def _draw_due(self, now: float) -> bool:
        if (not self.playing and not self.to_epoch_end) or (self.speed is not None and self.speed <= SLOW_STEPS):
            return True
        return now - self.draw_time >= max(REDRAW_SECONDS, self.draw_cost / REDRAW_SHARE)

    def record(self, state) -> None:
        """After an epoch (model held): test metrics, the weights to save, and the pictures when due."""
        if self.stopped:
            state.stop = True
            return
        model = self.predictor.model
        test_loss, test_acc = engine.evaluate(model, self.prepared.task, self.loss_fn, self.test_t)
        last = state.last
        row = [state.epoch, _num(last["train_loss"]), _num(last["train_accuracy"]), _num(test_loss), _num(test_acc),
               _num(last["lr"], 8)]
        if self.epoch_weights is None:
            self.epoch_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    self.epoch_weights[k].copy_(v)
        with self.data_lock:
            self.rows.append(row)
            self.step_in_epoch = (0, state.steps)
        at_end = state.epoch >= state.config.epochs or state.stop
        if at_end or self._draw_due(time.perf_counter()):
            self._draw()
        else:
            self.notify()

    def _draw(self) -> None:
        """Compute the heat map, the neurons' pictures and the chosen point, and tell the page (model held)."""
        t0 = time.perf_counter()
        grid, net, point = self._grid(), self._network(), self._point()
        now = time.perf_counter()
        with self.data_lock:
            self.grid, self.net, self.point = grid, net, point
            self.grid_version += 1
            self.point_version += 1
        self.draw_time, self.draw_cost, self.notify_time = now, now - t0, now
        self.notify()

    def _grid(self) -> dict:
        logits = engine.predict_logits(self.predictor.model, self.grid_x)
        proba = self.prepared.task.probabilities(logits).numpy()
        if self.prepared.task.kind == "binary":
            return {"kind": "binary", "planes": 1, "p": _bytes(np.rint(proba[:, 1] * 255))}
        # Every class's probability, so the page can blend colours into smooth edges between classes.
        return {"kind": "multiclass", "planes": proba.shape[1], "p": _bytes(np.rint(proba.T * 255))}

    @torch.inference_mode()
    def _network(self) -> dict:
        """Each drawn neuron's output over the plane (scaled to -1..1, as bytes) and the drawn edges' weights."""
        model = self.predictor.model
        shown = self.prepared.network_shape()["shown"]
        training = model.training
        model.eval()
        try:
            h, outputs, weights = self.neuron_x, [self.neuron_x], []
            for module in model.layers:
                if isinstance(module, nn.Linear):
                    if weights:
                        outputs.append(h)
                    weights.append(module.weight)
                h = module(h)
            outputs.append(h)
        finally:
            model.train(training)
        pictures, scales = [], []
        for out, n in zip(outputs, shown, strict=True):
            values = out[:, :n].double().numpy()
            scale = np.abs(values).max(axis=0)
            scales.append([_num(s, 4) for s in scale])
            pictures.append(np.rint(values / np.where(scale > 0, scale, 1) * 127 + 128).T.ravel())
        return {
            "pictures": _bytes(np.concatenate(pictures)),
            "scales": scales,
            "weights": [[[_num(w, 4) for w in row] for row in W[:n_out, :n_in].tolist()]
                        for W, n_in, n_out in zip(weights, shown, shown[1:], strict=False)],
        }

    def _point(self) -> dict:
        i = self.point_index
        test = self.prepared.splits.test
        logits = engine.predict_logits(self.predictor.model, self.test_t.X[i:i + 1])
        task = self.prepared.task
        proba = task.probabilities(logits)
        predicted = int(task.labels(proba)[0])
        classes = [str(c) for c in self.prepared.labels.classes]
        features = test.features.iloc[i]
        return {
            "index": i,
            "features": {str(k): _num(v, 4) for k, v in features.items()},
            "label": str(test.target.iloc[i]),
            "logits": [_num(v, 4) for v in logits[0].tolist()],
            "proba": {c: _num(p, 4) for c, p in zip(classes, proba[0].tolist())},
            "predicted": classes[predicted],
        }

    def refresh(self) -> None:
        """Redraw the heat map, the neurons and the chosen point now (after a pause, a pick, or at the start)."""
        with self.model.reading():
            self._draw()

    def select(self, index) -> None:
        n = self.prepared.splits.test.n_rows
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise TorchclfError(f"select: test point {index!r} does not exist; pick one of the {n} test points")
        self.point_index = index
        self.refresh()

    # ----- what the page is sent ----------------------------------------------
    def exact(self) -> bool:
        """Whether the command for the current settings repeats this training (no setting changed on the way)."""
        cosine = self.prepared.config.train.schedule == "cosine"  # its length is the epoch count
        return not any(c["setting"] != "epochs" or cosine for c in self.changes)

    def changes_text(self) -> list[str]:
        """The live changes in words, such as "Learning rate 0.01 -> 0.1 at step 57 (epoch 3)"."""
        def shown(name, value):
            return "full" if name == "batch_size" and value is None else f"{value:g}" if isinstance(value, float) \
                else str(value)

        with self.data_lock:
            changes = list(self.changes)
        return [f"{page_settings.LABELS.get(c['setting'], c['setting'])} {shown(c['setting'], c['from'])} \u2192 "
                f"{shown(c['setting'], c['to'])} after step {c['step']} (epoch {c['epoch']})" for c in changes]

    def tick(self, cursor: dict) -> dict | None:
        """The news since ``cursor`` (rows, pictures, point and changes sent), or None; updates ``cursor``."""
        with self.data_lock:
            rows = self.rows[cursor.get("rows", 0):]
            grid = self.grid_version > cursor.get("grid", 0)
            point = self.point if self.point_version > cursor.get("point", 0) else None
            changed = self.changes_version != cursor.get("changes", 0)
            progress = (self.steps, *self.step_in_epoch)
            cursor.update(rows=len(self.rows), grid=self.grid_version, point=self.point_version,
                          changes=self.changes_version)
            grid_message, net = (self.grid, self.net) if grid else (None, None)
        status = self.status
        if (not rows and not grid and point is None and not changed and cursor.get("status") == status
                and cursor.get("progress") == progress):
            return None
        cursor["status"], cursor["progress"] = status, progress
        epoch = cursor["rows"]
        s = self.settings
        message = {"type": "tick", "run": self.id, "status": status, "epoch": epoch, "rows": rows,
                   "steps": progress[0], "step": progress[1], "steps_per_epoch": progress[2],
                   "command": train_command(s, self.prepared.data_arg, epoch or s.epochs), "exact": self.exact(),
                   "changes": self.changes_text()}
        if grid_message is not None:
            message["grid"], message["net"] = grid_message, net
        if point is not None:
            message["point"] = point
        if self.error:
            message["error"] = self.error
        if self.state is not None and self.state.stop_reason and self.finished:
            message["stop_reason"] = self.state.stop_reason
        return message

    # ----- saving --------------------------------------------------------------
    def save(self, runs_dir: Path, name: str | None) -> dict:
        """Write a run folder with :func:`torchclf.api.write_run` and return where, the command and how exact it is.

        The weights written are those after the last whole epoch. Saving again
        without a name and without training in between answers with the first
        save instead of writing a second folder (a double click).
        """
        if not self.saving.acquire(blocking=False):
            raise TorchclfError("save: this run is already being saved; wait for it to finish")
        try:
            return self._save(runs_dir, name)
        finally:
            self.saving.release()

    def _save(self, runs_dir: Path, name: str | None) -> dict:
        p = self.prepared
        if name:
            if not RUN_NAME.match(name):
                raise TorchclfError(
                    f"save: run name {name!r} may hold letters, digits, '.', '-' and '_' only "
                    "(no folders); choose another name"
                )
            out = runs_dir / name
        else:
            out = None
        if self.saved is not None and self.saved[0] == (len(self.rows), self.settings, name):
            return {**self.saved[1], "again": True}
        if out is None:
            out = api.default_run_dir(p.data_arg if p.settings.dataset != UPLOAD else Path(p.data_arg).stem, runs_dir)
        if out.exists():
            raise TorchclfError(f"save: {out} already exists; choose another run name")
        with self.model.reading():
            history = [dict(row) for row in (self.state.history if self.state is not None else [])]
            if not history or self.epoch_weights is None:
                raise TorchclfError("save: no whole epoch trained yet; press play, or step to the end of an epoch, "
                                    "then save")
            weights = [v.detach().clone() for v in self.epoch_weights.values()]
            steps_after = self.step_in_epoch[0]
        epochs = len(history)
        settings = self.settings
        exact, changes = self.exact(), self.changes_text()
        config = run_config(settings, epochs=epochs)
        # The network the saved settings describe, holding the trained weights in their order: a dropout
        # changed during training adds (or drops) Dropout modules, which shifts the layers' names.
        model = build_model(p.preprocessor.layout(), p.task.n_outputs, config.model)
        model.load_state_dict(dict(zip(model.state_dict(), weights, strict=True)))
        model.eval()
        predictor = Predictor(model, p.task, p.preprocessor, p.labels, config,
                              label_sep=self.predictor.label_sep, target_columns=self.predictor.target_columns)
        predictor.extra["playground"] = {"command_repeats_training": exact, "changes": changes}
        with _SAVE_LOCK:
            if p.data_file is not None:
                _write_once(*p.data_file)
            metrics = {"train": api.evaluate(predictor, p.splits.train), "test": api.evaluate(predictor, p.splits.test)}
            # The spec names the data file just written (with its hash), so `explain` and `report` find the rows.
            result = api.TrainResult(predictor, history, metrics, p.splits, sum(r.get("seconds", 0.0) for r in history),
                                     data_summary=dict(p.dataset_summary), spec=p.spec(settings, epochs))
            api.write_run(result, out)
        reply = {
            "type": "saved",
            "path": str(out.resolve()),
            "epochs": epochs,
            "files": sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()),
            "command": train_command(settings, p.data_arg, epochs, out=str(out)),
            "exact": exact,
            "changes": changes,
            "steps_left_out": steps_after,
            "test_accuracy": _num(metrics["test"].get("accuracy", float("nan")), 4),
        }
        self.saved = ((epochs, settings, name), reply)
        return reply


def parse_speed(value) -> float | None:
    """The page's steps per second: a number from 0.1 to 1000, or None (or 0) for as fast as it goes."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 1000:
        raise TorchclfError(f"speed: got {value!r}, expected steps per second from 0.1 to 1000, or none")
    return float(value)


def _write_once(path: Path, body: bytes) -> None:
    """Write ``body`` to ``path`` unless it is already there (the name carries the content's hash)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(body)
    tmp.replace(path)


class Session:
    """One tab: its settings, its current :class:`Run`, and the page's commands."""

    ids = itertools.count(1)

    def __init__(self, hub: Hub, notify: Callable[[], None]):
        self.id = next(Session.ids)
        self.hub = hub
        self.notify = notify
        self.run: Run | None = None
        self.speed: float | None = None  # steps per second while playing; None: as fast as it goes

    def handle(self, message) -> list[dict]:
        """Act on one message from the page; returns the replies (errors as ``{"type": "error"}``)."""
        try:
            return self._handle(message)
        except TorchclfError as exc:
            reply = {"type": "error", "message": str(exc)}
            if getattr(exc, "field", None):
                reply["field"] = exc.field
            return [reply]

    def _handle(self, message) -> list[dict]:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TorchclfError('message: expected a JSON object with a "type" such as "configure" or "play"')
        kind = message["type"]
        if kind == "configure":
            return self._configure(parse_settings(message.get("settings", {})))
        if kind == "speed":  # the tab's, kept for its later runs
            self.speed = parse_speed(message.get("steps_per_second"))
            if self.run is not None:
                self.run.set_speed(self.speed)
            return []
        if kind not in ("play", "pause", "step", "reset", "select", "save"):
            raise TorchclfError(
                f"message: unknown type {kind!r}; expected configure, play, pause, step, speed, reset, select or save"
            )
        if self.run is None:
            raise TorchclfError(f"{kind}: choose a dataset and network first (no data is loaded yet)")
        run = self.run
        if kind == "reset":
            settings = run.settings
            prepared = run.prepared if settings == run.prepared.settings else self._prepare(settings)
            self._replace(Run(prepared, self.notify))
            return [self._data_message()]
        if kind == "select":
            run.select(message.get("index"))
            return []
        if kind == "save":
            name = message.get("name") or None
            if name is not None and not isinstance(name, str):
                raise TorchclfError(f"save: run name must be text, got {name!r}")
            return [run.save(self.hub.runs_dir, name)]
        if kind in ("play", "step"):
            if run.finished:
                raise TorchclfError(f"{kind}: this run has stopped ({run.error or 'training ended'}); press reset to "
                                    "train again")
            if run.at_limit:
                raise TorchclfError(f"{kind}: this run has finished its {run.state.config.epochs} epochs; raise "
                                    "Epochs to continue it, or press reset to train again")
        if kind == "play":
            run.play(self.hub.executor)
        elif kind == "pause":
            run.pause()
        else:
            run.step(self.hub.executor, message.get("unit", "epoch"))
        self.notify()
        return []

    def _prepare(self, settings: Settings) -> Prepared:
        return prepare(settings, self.hub.uploads, self.hub.runs_dir)

    def _configure(self, settings: Settings) -> list[dict]:
        """New settings: live ones change the running model; any other change (or an untrained run) starts anew."""
        run = self.run
        if run is not None and run.steps and not run.finished:
            names = [f for f in Settings.__dataclass_fields__ if getattr(settings, f) != getattr(run.settings, f)]
            if not names:
                return []
            if all(name in page_settings.LIVE for name in names):
                run.change(settings, names)
                return [{"type": "changed", "run": run.id, "settings": names,
                         "command": train_command(settings, run.prepared.data_arg, len(run.rows) or settings.epochs)}]
        self._replace(Run(self._prepare(settings), self.notify))
        return [self._data_message()]

    def _data_message(self) -> dict:
        p = self.run.prepared
        return {"type": "data", "run": self.run.id, **p.page_data(),
                "command": train_command(p.settings, p.data_arg, p.settings.epochs)}

    def _replace(self, run: Run) -> None:
        if self.run is not None:
            self.run.stop()
        run.speed = self.speed
        self.run = run

    def close(self) -> None:
        """Stop training: the tab is gone."""
        if self.run is not None:
            self.run.stop()


class Workers:
    """The training threads: a pool that refuses a run rather than queue it, per tab and in total.

    Every accepted run gets a thread at once, so nothing waits in a queue for
    minutes after its tab has moved on or closed; a stopped run gives its
    thread back after its current epoch (or before its first one).
    """

    def __init__(self, threads: int, per_tab: int):
        self.threads = threads
        self.per_tab = per_tab
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="torchclf-playground")
        self._live: dict[object, int] = {}  # owner -> runs submitted and not yet done
        self._lock = threading.Lock()

    @property
    def live(self) -> int:
        """Runs submitted and not yet done, all tabs together."""
        with self._lock:
            return sum(self._live.values())

    def submit(self, fn: Callable[[], None], *, owner: object = None) -> Future:
        """Run ``fn`` on a free thread now.

        Raises
        ------
        TorchclfError
            When ``owner`` (a tab) already has ``per_tab`` runs going, or all threads are taken.
        """
        with self._lock:
            mine = self._live.get(owner, 0)
            if mine >= self.per_tab:
                raise TorchclfError(
                    f"training: this tab's {mine} earlier runs are still finishing their current epoch; "
                    "press play or step again in a moment"
                )
            if sum(self._live.values()) >= self.threads:
                raise TorchclfError(
                    f"training: all {self.threads} training threads of this playground are busy (other tabs, "
                    "or tabs closed during an epoch); try again in a moment, or close another tab"
                )
            self._live[owner] = mine + 1
        try:
            future = self._pool.submit(fn)
        except BaseException:
            self._done(owner)
            raise
        future.add_done_callback(lambda _: self._done(owner))
        return future

    def _done(self, owner: object) -> None:
        with self._lock:
            left = self._live.get(owner, 0) - 1
            if left > 0:
                self._live[owner] = left
            else:
                self._live.pop(owner, None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class Hub:
    """The server's shared parts: sessions, the worker threads, uploads and the runs folder."""

    def __init__(self, runs_dir: str | Path = "runs", *, max_sessions: int = 8, uploads: UploadStore | None = None,
                 runs_per_tab: int = 2):
        self.runs_dir = Path(runs_dir)
        self.max_sessions = max_sessions
        self.uploads = uploads if uploads is not None else UploadStore()
        # Two runs per tab: a reset's old run may still be finishing its epoch while the new one starts.
        self.executor = Workers(threads=runs_per_tab * max_sessions, per_tab=runs_per_tab)
        self.sessions: dict[int, Session] = {}
        self._lock = threading.Lock()

    def open(self, notify: Callable[[], None]) -> Session:
        with self._lock:
            if len(self.sessions) >= self.max_sessions:
                raise TorchclfError(
                    f"playground: {self.max_sessions} tabs are already open; close one and reload this page"
                )
            session = Session(self, notify)
            self.sessions[session.id] = session
        return session

    def close(self, session: Session) -> None:
        session.close()
        with self._lock:
            self.sessions.pop(session.id, None)

    def shutdown(self) -> None:
        with self._lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for s in sessions:
            s.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

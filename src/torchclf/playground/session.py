"""One browser tab's training: data, model, play/pause/step, snapshots for the page, saving.

Training is :func:`torchclf.api.fit_predictor` (and so :func:`torchclf.engine.fit`)
running in a worker thread with a :class:`Streamer` callback. After each epoch
the callback measures the test part, redraws the decision boundary every few
epochs, and then waits while the page has paused. Nothing here trains by
itself.

Locks: ``Run.model_lock`` is held by the worker for each epoch and by anyone
else who reads the model (a redraw, a chosen point, a save); ``Run.data_lock``
guards the numbers the page is sent and is only held for copying, so the event
loop never waits on an epoch.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from torchclf import api, engine
from torchclf.callbacks import Callback
from torchclf.config import RunConfig
from torchclf.data import Splits, split_dataset
from torchclf.errors import TorchclfError
from torchclf.model import build_model
from torchclf.playground.settings import UPLOAD, Settings, builtin_spec, parse_settings, run_config, train_command
from torchclf.playground.uploads import UploadStore, subset
from torchclf.predictor import Predictor
from torchclf.preprocess import LabelCoder, Preprocessor
from torchclf.task import Task

GRID = 64  # heat-map cells per side
REDRAW_EVERY = 5  # epochs between heat-map redraws while playing
REDRAW_SECONDS = 0.1  # ... and at most this often
MAX_POINTS_SHOWN = 3000  # rows per part drawn on the page
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

# Model initialisation reads torch's global generator: two tabs seeding and
# building at the same moment would otherwise get each other's weights.
_INIT_LOCK = threading.Lock()
# matplotlib's pyplot (used for a run folder's plots) is not thread-safe.
_SAVE_LOCK = threading.Lock()


def _num(value, digits: int = 5):
    """A float for JSON: rounded, and None for NaN or infinity (JSON has neither)."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


@dataclass
class Prepared:
    """A settings' data, split and encoded, with the tensors the page's views need."""

    settings: Settings
    config: RunConfig
    data_arg: str  # the DATA argument of the equivalent command
    data_file: tuple[Path, bytes] | None  # an upload's chosen columns, written on save
    dataset_summary: dict
    splits: Splits
    labels: LabelCoder
    task: Task
    preprocessor: Preprocessor
    grid_frame: pd.DataFrame  # (GRID * GRID, 2) cell centres, row-major from the top-left cell
    bounds: tuple[float, float, float, float]  # x0, x1, y0, y1 in raw feature units
    features: list[str]

    def page_data(self) -> dict:
        """The points to draw and what the page needs to colour them."""
        def part(ds):
            X = ds.features.to_numpy(dtype="float64")[:MAX_POINTS_SHOWN]
            y = self.labels.encode(ds.target)[:MAX_POINTS_SHOWN]
            return {"x": [_num(v, 4) for v in X[:, 0]], "y": [_num(v, 4) for v in X[:, 1]],
                    "label": [int(v) for v in y]}

        return {
            "classes": [str(c) for c in self.labels.classes],
            "task": self.task.kind,
            "features": self.features,
            "bounds": list(self.bounds),
            "grid": GRID,
            "train": part(self.splits.train),
            "test": part(self.splits.test),
            "rows": {"train": self.splits.train.n_rows, "test": self.splits.test.n_rows},
        }


def prepare(settings: Settings, uploads: UploadStore, runs_dir: Path) -> Prepared:
    """Build the dataset, split it and fit preprocessing exactly as ``torchclf train`` would."""
    data_file = None
    if settings.dataset == UPLOAD:
        upload = uploads.get(settings.upload)
        frame = subset(upload, settings.x, settings.y, settings.target)
        body = frame.to_csv(index=False).encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()[:10]
        path = runs_dir / "playground-data" / f"{Path(upload.name).stem}-{digest}.csv"
        data_file = (path, body)
        data_arg = str(path)
        # Read the columns back through the same CSV file the command will
        # read, so the page and the command train on identical numbers.
        with tempfile.TemporaryDirectory(prefix="torchclf-playground-") as tmp:
            tmp_csv = Path(tmp) / "data.csv"
            tmp_csv.write_bytes(body)
            dataset = api.as_dataset(str(tmp_csv), settings.target)
        dataset.name = data_arg
    else:
        data_arg = builtin_spec(settings)
        dataset = api.as_dataset(data_arg)
    if dataset.features.shape[1] != 2:
        raise TorchclfError(
            f"{dataset.name}: the playground draws two feature columns, found {dataset.features.shape[1]}"
        )
    config = run_config(settings)
    labels = LabelCoder().fit(dataset.target)
    splits = split_dataset(dataset, test_size=config.data.test_size, validation_size=0.0, seed=config.train.seed)
    task = api.resolve_task(config, labels, dataset.name)
    preprocessor = Preprocessor(config.data.max_categories).fit(splits.train.features)
    X = dataset.features.to_numpy(dtype="float64")
    lo, hi = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
    pad = (hi - lo) * 0.08 + 1e-6
    x0, x1, y0, y1 = lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]
    # Cell centres, top row first (largest y), as the page paints them.
    gx = x0 + (np.arange(GRID) + 0.5) * (x1 - x0) / GRID
    gy = y1 - (np.arange(GRID) + 0.5) * (y1 - y0) / GRID
    mx, my = np.meshgrid(gx, gy)
    names = [str(c) for c in dataset.features.columns]
    grid_frame = pd.DataFrame({names[0]: mx.ravel(), names[1]: my.ravel()})
    summary = dataset.summary()
    summary["split_rows"] = {k: (0 if v is None else v.n_rows) for k, v in vars(splits).items()}
    return Prepared(settings, config, data_arg, data_file, summary, splits, labels, task, preprocessor,
                    grid_frame, (float(x0), float(x1), float(y0), float(y1)), names)


class Streamer(Callback):
    """The engine callback that reports each epoch to a :class:`Run` and honours pause and stop."""

    def __init__(self, run: Run):
        self.run = run

    def on_train_begin(self, state) -> None:
        self.run.state = state
        self.run.gate(state)

    def on_epoch_begin(self, state) -> None:
        self.run.model_lock.acquire()
        self.run.holding = True

    def on_epoch_end(self, state) -> None:
        try:
            self.run.record(state)
        finally:
            self.run.holding = False
            self.run.model_lock.release()
        if state.epoch < state.config.epochs:
            self.run.gate(state)

    def on_train_end(self, state) -> None:
        self.run.finished = True
        self.run.notify()


class Run:
    """One model trained from its initial weights; a reset starts a new Run."""

    ids = itertools.count(1)

    def __init__(self, prepared: Prepared, notify: Callable[[], None]):
        self.id = next(Run.ids)
        self.prepared = prepared
        self.notify = notify
        config = prepared.config
        with _INIT_LOCK:
            # The same seeding as api.fit_predictor, so the command reproduces these weights.
            torch.manual_seed(config.train.seed)
            model = build_model(prepared.preprocessor.n_outputs, prepared.task.n_outputs, config.model)
        self.predictor = Predictor(model, prepared.task, prepared.preprocessor, prepared.labels, config,
                                   target_columns=prepared.splits.train.target_columns)
        self.loss_fn = prepared.task.loss_function()
        self.test_t = api.tensors(self.predictor, prepared.splits.test, "test part", torch.device("cpu"))
        self.grid_x = torch.from_numpy(prepared.preprocessor.transform(prepared.grid_frame, "heat-map grid")).to(
            next(model.parameters()).dtype)
        self.model_lock = threading.RLock()
        self.data_lock = threading.Lock()
        self.cond = threading.Condition()
        self.playing = False
        self.budget = 0  # epochs allowed while paused (one per "step")
        self.stopped = False
        self.started = False
        self.finished = False
        self.holding = False
        self.error: str | None = None
        self.state = None
        self.future: Future | None = None
        self.rows: list[list] = []  # epoch, train loss, train acc, test loss, test acc
        self.grid: dict | None = None
        self.grid_version = 0
        self.grid_epoch = -1
        self.grid_time = 0.0
        self.point_index = 0
        self.point: dict | None = None
        self.point_version = 0
        self.point_time = 0.0
        self.refresh()

    # ----- control (called from the page's handler thread) --------------------
    def start(self, executor: ThreadPoolExecutor) -> None:
        if not self.started:
            self.started = True
            self.future = executor.submit(self._train)

    def _train(self) -> None:
        try:
            api.fit_predictor(self.prepared.splits.train, None, self.prepared.config, warm_start=self.predictor,
                              callbacks=[Streamer(self)])
        except Exception as exc:  # reported on the page; the server keeps serving other tabs
            self.error = f"training stopped: {type(exc).__name__}: {exc}"
        finally:
            if self.holding:
                self.holding = False
                self.model_lock.release()
            self.finished = True
            self.notify()

    def play(self, executor) -> None:
        with self.cond:
            self.playing = True
            self.cond.notify_all()
        self.start(executor)

    def pause(self) -> None:
        with self.cond:
            self.playing = False
            self.budget = 0
        self.refresh()

    def step(self, executor) -> None:
        with self.cond:
            self.playing = False
            self.budget += 1
            self.cond.notify_all()
        self.start(executor)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.finished:
            return "finished"
        if self.playing:
            return "playing"
        return "paused" if self.started else "ready"

    # ----- the worker's side ---------------------------------------------------
    def gate(self, state) -> None:
        """Wait until the page plays, steps or stops; consume one step's permit."""
        with self.cond:
            while not self.stopped and not self.playing and self.budget == 0:
                self.cond.wait()
            if self.stopped:
                state.stop = True
                state.stop_reason = "stopped from the playground"
                return
            if not self.playing:
                self.budget -= 1

    def record(self, state) -> None:
        """After an epoch (model lock held): test metrics, and the heat map when due."""
        if self.stopped:
            state.stop = True
            return
        model = self.predictor.model
        test_loss, test_acc = engine.evaluate(model, self.prepared.task, self.loss_fn, self.test_t)
        last = state.last
        row = [state.epoch, _num(last["train_loss"]), _num(last["train_accuracy"]), _num(test_loss), _num(test_acc)]
        now = time.perf_counter()
        due = (state.epoch - self.grid_epoch >= REDRAW_EVERY and now - self.grid_time >= REDRAW_SECONDS)
        pausing = not self.playing or state.epoch == state.config.epochs
        grid = self._grid() if (due or pausing) else None
        point = self._point() if (pausing or now - self.point_time >= REDRAW_SECONDS) else None
        with self.data_lock:
            self.rows.append(row)
            if grid is not None:
                self.grid, self.grid_epoch, self.grid_time = grid, state.epoch, now
                self.grid_version += 1
            if point is not None:
                self.point, self.point_version, self.point_time = point, self.point_version + 1, now
        self.notify()

    def _grid(self) -> dict:
        logits = engine.predict_logits(self.predictor.model, self.grid_x)
        proba = self.prepared.task.probabilities(logits).numpy()
        if self.prepared.task.kind == "binary":
            return {"kind": "binary", "p": np.rint(proba[:, 1] * 255).astype(int).tolist()}
        return {"kind": "multiclass", "cls": proba.argmax(axis=1).tolist(),
                "p": np.rint(proba.max(axis=1) * 255).astype(int).tolist()}

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
        """Redraw the heat map and the chosen point now (after a pause, a pick, or at the start)."""
        with self.model_lock:
            grid, point = self._grid(), self._point()
            epoch = len(self.rows)
        with self.data_lock:
            self.grid, self.grid_version, self.grid_epoch = grid, self.grid_version + 1, epoch
            self.point, self.point_version = point, self.point_version + 1
        self.notify()

    def select(self, index) -> None:
        n = self.prepared.splits.test.n_rows
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise TorchclfError(f"select: test point {index!r} does not exist; pick one of the {n} test points")
        self.point_index = index
        self.refresh()

    # ----- what the page is sent ----------------------------------------------
    def tick(self, cursor: dict) -> dict | None:
        """The news since ``cursor`` (rows, heat map, point versions sent), or None; updates ``cursor``."""
        with self.data_lock:
            rows = self.rows[cursor.get("rows", 0):]
            grid = self.grid if self.grid_version > cursor.get("grid", 0) else None
            point = self.point if self.point_version > cursor.get("point", 0) else None
            cursor.update(rows=len(self.rows), grid=self.grid_version, point=self.point_version)
        status = self.status
        if not rows and grid is None and point is None and cursor.get("status") == status:
            return None
        cursor["status"] = status
        epoch = cursor["rows"]
        s = self.prepared.settings
        message = {"type": "tick", "run": self.id, "status": status, "epoch": epoch, "rows": rows,
                   "command": train_command(s, self.prepared.data_arg, epoch or s.epochs)}
        if grid is not None:
            message["grid"] = grid
        if point is not None:
            message["point"] = point
        if self.error:
            message["error"] = self.error
        return message

    # ----- saving --------------------------------------------------------------
    def save(self, runs_dir: Path, name: str | None) -> dict:
        """Write a run folder with :func:`torchclf.api.write_run` and return where and the command."""
        p = self.prepared
        if name:
            if not RUN_NAME.match(name):
                raise TorchclfError(
                    f"save: run name {name!r} may hold letters, digits, '.', '-' and '_' only "
                    "(no folders); choose another name"
                )
            out = runs_dir / name
        else:
            out = api.default_run_dir(p.data_arg if p.settings.dataset != UPLOAD else Path(p.data_arg).stem, runs_dir)
        if out.exists():
            raise TorchclfError(f"save: {out} already exists; choose another run name")
        with self.model_lock:
            history = [dict(row) for row in (self.state.history if self.state is not None else [])]
            if not history:
                raise TorchclfError("save: nothing trained yet; press play or step first, then save")
            model = copy.deepcopy(self.predictor.model)
        model.eval()
        epochs = len(history)
        config = run_config(p.settings, epochs=epochs)
        predictor = Predictor(model, p.task, p.preprocessor, p.labels, config,
                              target_columns=p.splits.train.target_columns)
        with _SAVE_LOCK:
            if p.data_file is not None:
                _write_once(*p.data_file)
            metrics = {"train": api.evaluate(predictor, p.splits.train), "test": api.evaluate(predictor, p.splits.test)}
            result = api.TrainResult(predictor, history, metrics, p.splits, sum(r.get("seconds", 0.0) for r in history),
                                     data_summary=dict(p.dataset_summary))
            api.write_run(result, out)
        return {
            "type": "saved",
            "path": str(out.resolve()),
            "epochs": epochs,
            "files": sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()),
            "command": train_command(p.settings, p.data_arg, epochs, out=str(out)),
            "test_accuracy": _num(metrics["test"].get("accuracy", float("nan")), 4),
        }


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
        self.closed = False

    def handle(self, message) -> list[dict]:
        """Act on one message from the page; returns the replies (errors as ``{"type": "error"}``)."""
        try:
            return self._handle(message)
        except TorchclfError as exc:
            return [{"type": "error", "message": str(exc)}]

    def _handle(self, message) -> list[dict]:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TorchclfError('message: expected a JSON object with a "type" such as "configure" or "play"')
        kind = message["type"]
        if kind == "configure":
            settings = parse_settings(message.get("settings", {}))
            prepared = prepare(settings, self.hub.uploads, self.hub.runs_dir)
            self._replace(Run(prepared, self.notify))
            return [self._data_message()]
        if kind not in ("play", "pause", "step", "reset", "select", "save"):
            raise TorchclfError(
                f"message: unknown type {kind!r}; expected configure, play, pause, step, reset, select or save"
            )
        if self.run is None:
            raise TorchclfError(f"{kind}: choose a dataset and network first (no data is loaded yet)")
        run = self.run
        if kind == "reset":
            self._replace(Run(run.prepared, self.notify))
            return [self._data_message()]
        if kind == "select":
            run.select(message.get("index"))
            return []
        if kind == "save":
            name = message.get("name") or None
            if name is not None and not isinstance(name, str):
                raise TorchclfError(f"save: run name must be text, got {name!r}")
            return [run.save(self.hub.runs_dir, name)]
        if run.finished and kind in ("play", "step"):
            raise TorchclfError(f"{kind}: this run has finished its {run.prepared.config.train.epochs} epochs; "
                                "press reset to train again, or raise the epochs")
        if kind == "play":
            run.play(self.hub.executor)
        elif kind == "pause":
            run.pause()
        else:
            run.step(self.hub.executor)
        self.notify()
        return []

    def _data_message(self) -> dict:
        p = self.run.prepared
        return {"type": "data", "run": self.run.id, **p.page_data(),
                "command": train_command(p.settings, p.data_arg, p.settings.epochs)}

    def _replace(self, run: Run) -> None:
        if self.run is not None:
            self.run.stop()
        self.run = run

    def close(self) -> None:
        """Stop training: the tab is gone."""
        self.closed = True
        if self.run is not None:
            self.run.stop()


class Hub:
    """The server's shared parts: sessions, the worker threads, uploads and the runs folder."""

    def __init__(self, runs_dir: str | Path = "runs", *, max_sessions: int = 8, uploads: UploadStore | None = None):
        self.runs_dir = Path(runs_dir)
        self.max_sessions = max_sessions
        self.uploads = uploads if uploads is not None else UploadStore()
        # Twice the sessions: a reset's old run may still be finishing its last epoch.
        self.executor = ThreadPoolExecutor(max_workers=2 * max_sessions, thread_name_prefix="torchclf-playground")
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

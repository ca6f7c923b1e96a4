"""Predictions over HTTP: a JSON API in front of one or more run folders.

Starlette serves the routes and uvicorn runs them. Each run is loaded once,
at start, into a :class:`~torchclf.predictor.Predictor`; requests name a
served model (``/models/NAME/predict``), never a file. A request body holds
rows as ``{"records": [{feature: value, ...}, ...]}`` or as
``{"columns": {feature: [value, ...], ...}}``, with ``null`` for a missing
value; a bad one is answered with a 4xx JSON ``{"error": ..., "field": ...}``
naming the offending field. Only loopback addresses are served unless the
caller allows others, and bodies are limited in size.

A model predicts through its ONNX graph in onnxruntime when that is
installed and the run exports (checked against the predictor at start):
that skips the per-call cost of building a DataFrame, which dominates
requests of a few rows. Otherwise, or with ``backend="torch"``, the
predictor itself answers.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd

from torchclf import listen
from torchclf.errors import TorchclfError
from torchclf.listen import is_loopback  # noqa: F401  (part of this module's interface)
from torchclf.preprocess import MISSING

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # about 80,000 rows of ten features as JSON records
INLINE_ROWS = 256  # up to this many rows a request is answered on the event loop (a thread hop costs more)
BACKENDS = ("auto", "onnx", "torch")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ABSENT = object()


def _require_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TorchclfError(
            "serve: its web server is an optional extra; install it with pip install 'torchclf[playground]'"
        ) from None


# ----- the served models -----------------------------------------------------------
class Served:
    """A loaded run: the features its requests must hold, and how it predicts.

    Parameters
    ----------
    name : str
    predictor : Predictor
    backend : {"auto", "onnx", "torch"}
        "onnx" predicts with the run's ONNX graph in onnxruntime, "torch" with
        the predictor; "auto" takes onnx when it is installed and the run exports.
    """

    def __init__(self, name: str, predictor, backend: str = "auto"):
        if backend not in BACKENDS:
            raise TorchclfError(f"serve --backend {backend}: expected one of {', '.join(BACKENDS)}")
        self.name, self.predictor = name, predictor
        dates = predictor.preprocessor.plan.sources()  # a date's parts -> the date column, sent as text
        self.features = list(dict.fromkeys(
            (dates.get(c.name, c.name), "number" if c.kind == "numeric" and c.name not in dates else "string")
            for c in predictor.preprocessor.columns))
        self.classes = list(predictor.classes)
        self.session, self.backend, self.note = None, "torch", ""
        if backend != "torch":
            self._use_onnx(required=backend == "onnx")
        self.predict(self._probe())  # the first call pays one-time set-up, not the first caller

    def _probe(self) -> dict[str, np.ndarray]:
        """Four rows that reach every path: typical, far out, missing, unseen category."""
        columns = {}
        plan = self.predictor.preprocessor.plan
        dates = plan.sources()
        for c in self.predictor.preprocessor.columns:
            if c.name in dates:  # a part of a date column: the column itself, as text
                text = plan.example(dates[c.name])
                columns[dates[c.name]] = np.array([text, text, None, "never a date"], dtype=object)
            elif c.kind == "numeric":
                columns[c.name] = np.array([c.median, c.mean + 3 * c.scale, np.nan, c.mean - 1e9 * c.scale])
            else:
                known = c.categories or ["?"]
                columns[c.name] = np.array([known[0], known[-1], None, "never seen in training"], dtype=object)
        return columns

    def _use_onnx(self, required: bool) -> None:
        from torchclf import export

        try:
            session = export.session(export.to_onnx(self.predictor))
            check = export.check_rows(self.predictor, session, pd.DataFrame(self._probe()))
            by_text = {str(c): c for c in self.classes}
            if not check.ok or len(by_text) != len(self.classes):
                raise TorchclfError(f"its ONNX graph does not reproduce the predictor (difference "
                                    f"{check.max_difference:.1e}, {check.label_mismatches} labels, classes "
                                    f"{self.classes[:5]})")
        except TorchclfError as exc:
            if required:
                raise TorchclfError(f"serve {self.name} --backend onnx: {exc}") from None
            self.note = str(exc)
            return
        self.session, self.backend, self._by_text = session, "onnx", by_text

    def predict(self, columns: dict[str, np.ndarray]) -> tuple[list, np.ndarray]:
        """Labels (original class values; joined text for multilabel) and probabilities (n_rows, n_classes)."""
        if self.session is None:
            # predict_frame is the predictor's one way to both labels and probabilities (thresholds included).
            result = self.predictor.predict_frame(pd.DataFrame(columns), where="request")
            return result["prediction"].tolist(), result.iloc[:, 1:].to_numpy()
        feeds = {name: columns[name] if kind == "number" else _texts(columns[name]) for name, kind in self.features}
        labels, proba = self.session.run(["label", "probabilities"], feeds)
        if self.predictor.task.kind == "multilabel":
            return labels.tolist(), proba
        return [self._by_text[text] for text in labels.tolist()], proba

    def schema(self, path: str) -> dict:
        """Feature names, types and known categories, the classes, and an example request."""
        pre, task = self.predictor.preprocessor, self.predictor.task
        features, example = [], {}
        dates = pre.plan.sources()
        for c in pre.columns:
            if c.name in dates:  # a date column is sent as text, as in training
                if dates[c.name] not in example:
                    features.append({"name": dates[c.name], "type": "string", "format": "date"})
                    example[dates[c.name]] = pre.plan.example(dates[c.name])
            elif c.kind == "numeric":
                features.append({"name": c.name, "type": "number"})
                example[c.name] = c.median
            else:  # a missing value is sent as null, not as the "<missing>" category it is kept as
                known = [v for v in c.categories if v != MISSING]
                features.append({"name": c.name, "type": "string", "categories": known})
                example[c.name] = known[0] if known else None
        sep = self.predictor.label_sep
        return {
            "name": self.name,
            "task": task.kind,
            "classes": self.classes,
            "label_sep": ("|" if sep is None else sep) if task.kind == "multilabel" else None,
            "features": features,
            "missing": "null",
            "backend": self.backend,
            "predict": path,
            "example": {"records": [example]},
        }


def _texts(values: np.ndarray) -> np.ndarray:
    """Text features as the ONNX graph takes them: the text the predictor would compare (``str(v)``; null is
    ``"<missing>"``)."""
    return np.array([MISSING if v is None else v if type(v) is str else str(v) for v in values.tolist()],
                    dtype=object)


def parse_runs(runs: list[str]) -> dict[str, Path]:
    """``FOLDER`` or ``NAME=FOLDER`` arguments -> {name: folder}; a name defaults to the folder's own name."""
    named: dict[str, Path] = {}
    for text in runs:
        name, sep, folder = str(text).partition("=")
        if not sep or Path(text).exists():
            name, folder = Path(text).resolve().name, text
        if not _NAME.fullmatch(name):
            raise TorchclfError(f"serve {text}: {name!r} cannot name a model in a URL; use NAME=FOLDER with "
                                "a name of letters, digits, '.', '_' or '-'")
        if name in named:
            raise TorchclfError(f"serve {text}: two runs are named {name!r}; give each its own name with NAME=FOLDER")
        named[name] = Path(folder)
    if not named:
        raise TorchclfError("serve: give at least one run folder")
    return named


def load_models(runs: dict[str, Path], backend: str = "auto") -> dict[str, Served]:
    """Load each run once (name -> :class:`Served`)."""
    from torchclf.predictor import Predictor

    return {name: Served(name, Predictor.load(folder), backend) for name, folder in runs.items()}


# ----- reading requests ------------------------------------------------------------
class BadRequest(Exception):
    """A request the server refuses: HTTP status, message and the offending field (or None)."""

    def __init__(self, field_name: str | None, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.message, self.status = field_name, message, status

    def payload(self) -> dict:
        text = f"{self.field}: {self.message}" if self.field else self.message
        return {"error": text, "field": self.field}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> dict:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(None, f"the body is not valid JSON ({exc}); send {{\"records\": [...]}} "
                               "or {\"columns\": {...}}", status=400) from None
    if not isinstance(payload, dict) or ("records" in payload) == ("columns" in payload):
        raise BadRequest(None, "the body must be a JSON object with either \"records\" (a list of rows) or "
                               "\"columns\" (feature name -> list of values)")
    return payload


def _number_column(values: list, where) -> np.ndarray:
    """JSON numbers and nulls -> float64 with NaN for null."""
    if set(map(type, values)) <= {int, float, type(None)}:
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:
            pass
    for i, v in enumerate(values):
        if type(v) not in (int, float, type(None)):
            raise BadRequest(where(i), f"expected a number or null, got {json.dumps(v)[:40]}")
        if type(v) is int:
            try:
                float(v)
            except OverflowError:
                raise BadRequest(where(i), f"{str(v)[:20]}... is too large for a float64") from None
    raise AssertionError("unreachable: every value converts")  # pragma: no cover


def _text_column(values: list, where) -> np.ndarray:
    """JSON strings (numbers and booleans are read as their text, as for a CSV file) and nulls."""
    if not set(map(type, values)) <= {str, type(None), int, float, bool}:
        for i, v in enumerate(values):
            if isinstance(v, (list, dict)):
                raise BadRequest(where(i), f"expected text or null, got {json.dumps(v)[:40]}")
    return np.array(values, dtype=object)


def _convert(kind: str, values: list, where) -> np.ndarray:
    return (_number_column if kind == "number" else _text_column)(values, where)


def request_columns(served: Served, payload: dict) -> dict[str, np.ndarray]:
    """The request's rows as the run's feature columns: float64 (NaN for null) or object arrays.

    Extra fields are ignored.

    Features are checked in training order, so the error names the first bad one.
    """
    out = {}
    if "records" in payload:
        records = payload["records"]
        if not isinstance(records, list):
            raise BadRequest("records", "expected a list of objects, one per row")
        for i, record in enumerate(records):
            if type(record) is not dict:
                raise BadRequest(f"records[{i}]", "expected an object of feature name -> value")
        for name, kind in served.features:
            values = [record.get(name, _ABSENT) for record in records]
            if _ABSENT in values:
                raise BadRequest(f"records[{values.index(_ABSENT)}].{name}",
                                 "missing feature; give null for a missing value")
            out[name] = _convert(kind, values, lambda i, name=name: f"records[{i}].{name}")
        return out
    columns = payload["columns"]
    if not isinstance(columns, dict):
        raise BadRequest("columns", "expected an object of feature name -> list of values")
    first = None
    for name, kind in served.features:
        values = columns.get(name, _ABSENT)
        if values is _ABSENT:
            raise BadRequest(f"columns.{name}", "missing feature; give a list with null for missing values")
        if not isinstance(values, list):
            raise BadRequest(f"columns.{name}", "expected a list of values, one per row")
        first = first or (name, len(values))
        if len(values) != first[1]:
            raise BadRequest(f"columns.{name}", f"has {len(values)} values but columns.{first[0]} has {first[1]}; "
                                                "give every feature the same number of values")
        out[name] = _convert(kind, values, lambda i, name=name: f"columns.{name}[{i}]")
    return out


def answer(served: Served, columns: dict[str, np.ndarray]) -> dict:
    """The response to a request's rows: labels and probabilities as JSON values."""
    labels, proba = served.predict(columns)
    return {"model": served.name, "classes": served.classes, "labels": labels, "probabilities": proba.tolist()}


# ----- the app -----------------------------------------------------------------------
def create_app(models: dict[str, Served], *, max_request_bytes: int = MAX_REQUEST_BYTES):
    """The Starlette app serving ``models`` (name -> :class:`Served`)."""
    _require_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    names = ", ".join(models)
    single = next(iter(models.values())) if len(models) == 1 else None

    def error(exc: BadRequest) -> JSONResponse:
        return JSONResponse(exc.payload(), status_code=exc.status)

    def find(name: str) -> Served:
        if name not in models:
            raise BadRequest(None, f"no model named {name[:64]!r}; this server has: {names}", status=404)
        return models[name]

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_large = BadRequest(None, f"the body is larger than the limit of {max_request_bytes} bytes; send fewer "
                                     "rows per request, or start the server with a larger --max-request-mb",
                               status=413)
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():  # at most one chunk past the limit, whatever the headers said
            body += chunk
            if len(body) > max_request_bytes:
                raise too_large
        return bytes(body)

    async def respond(served: Served, request: Request) -> JSONResponse:
        try:
            columns = request_columns(served, parse_body(await read_body(request)))
            rows = len(next(iter(columns.values())))
            if rows <= INLINE_ROWS:
                result = answer(served, columns)
            else:  # a big batch in a worker thread, so health checks and small requests are not held up
                result = await run_in_threadpool(answer, served, columns)
        except BadRequest as exc:
            return error(exc)
        except TorchclfError as exc:
            return error(BadRequest(None, str(exc)))
        return JSONResponse(result)

    async def predict_one(request: Request) -> JSONResponse:
        if single is None:
            return error(BadRequest(None, f"several models are served ({names}); POST to /models/NAME/predict",
                                    status=404))
        return await respond(single, request)

    async def predict_named(request: Request) -> JSONResponse:
        try:
            served = find(request.path_params["name"])
        except BadRequest as exc:
            return error(exc)
        return await respond(served, request)

    async def schema(request: Request) -> JSONResponse:
        if single is not None:
            return JSONResponse(single.schema("/predict"))
        return JSONResponse({"models": {n: m.schema(f"/models/{n}/predict") for n, m in models.items()}})

    async def schema_named(request: Request) -> JSONResponse:
        try:
            served = find(request.path_params["name"])
        except BadRequest as exc:
            return error(exc)
        return JSONResponse(served.schema(f"/models/{served.name}/predict"))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "models": {n: {"backend": m.backend} for n, m in models.items()}})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        hint = "; routes: GET /health, GET /schema, POST /predict, POST /models/NAME/predict"
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}{hint}", "field": None},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details",
                             "field": None}, status_code=500)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/schema", schema),
            Route("/predict", predict_one, methods=["POST"]),
            Route("/models/{name}/schema", schema_named),
            Route("/models/{name}/predict", predict_named, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


# ----- listening ---------------------------------------------------------------------
def bind(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening socket for ``serve`` (see :func:`torchclf.listen.bind`)."""
    return listen.bind(host, port, command="serve", exposure="query the models", allow_remote=allow_remote,
                       backlog=256)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def make_server(app):
    """A uvicorn server for ``app`` (quiet: no access log, warnings only); ``run(sockets=[sock])`` starts it."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, *, allow_remote: bool = False,
          max_request_bytes: int = MAX_REQUEST_BYTES, backend: str = "auto", announce=print) -> None:
    """Load the runs, then answer requests until interrupted, printing the address first."""
    _require_extra()
    named = parse_runs(runs)
    sock = bind(host, port, allow_remote=allow_remote)  # before loading: a taken port fails fast
    try:
        models = load_models(named, backend)
        app = create_app(models, max_request_bytes=max_request_bytes)
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    routes = f"POST {url}/predict" if len(models) == 1 else f"POST {url}/models/NAME/predict"
    for m in models.values():
        if m.note:
            announce(f"{m.name}: predicting with torch, not onnxruntime: {m.note}")
    shown = ", ".join(f"{m.name} ({m.backend})" for m in models.values())
    announce(f"torchclf serve: {url}  models: {shown}; {routes}, GET /schema, GET /health (Ctrl+C stops)")
    make_server(app).run(sockets=[sock])

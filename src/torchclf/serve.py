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

With orjson installed (the deploy extra) bodies are read and answers written
by it, several times faster than the standard library; anything it reads
otherwise than the standard library would is left to the standard library,
so requests get the same values and errors either way.
"""

from __future__ import annotations

import functools
import json
import operator
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
_WIDE = 2.0**63  # orjson reads an integer beyond 64 bits as a float, always at least this large


@functools.cache
def _orjson():
    """The orjson module (the deploy extra), or None: with the same values, it reads a 10,000-row body as
    ``columns`` 1.6 to 5 times faster than the standard library (as ``records`` 0.9 to 1.4 times) and writes
    the answer about 10 times faster (benchmarks/deploy.py, docs/deploy.md)."""
    try:
        import orjson
    except ImportError:
        return None
    return orjson


def _require_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TorchclfError(
            "serve: its web server is an optional extra; install it with pip install 'torchclf[deploy]'"
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
        # onnx itself is imported only to export
        from torchclf.export import input_kinds

        self.name, self.predictor = name, predictor
        # The raw columns, as the graph takes them: a date column is sent as text.
        self.features = [(column, "number" if kind == "number" else "string")
                         for column, kind in input_kinds(predictor.preprocessor).items()]
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
    """A request body -> its JSON object, read by the standard library (the reference reading)."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(None, f"the body is not valid JSON ({exc}); send {{\"records\": [...]}} "
                               "or {\"columns\": {...}}", status=400) from None
    return _checked(payload)


def _checked(payload) -> dict:
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


class _Reread(Exception):
    """orjson may have read a text feature's value otherwise than the standard library would."""


def _text_column(values: list, where, exact: bool = True) -> np.ndarray:
    """JSON strings (numbers and booleans are read as their text, as for a CSV file) and nulls.

    ``exact=False`` (values read by orjson) refuses, with :class:`_Reread`, a float as large as an
    integer beyond 64 bits, which orjson reads as a float: its text would differ (``1.8e+19``, not the digits).
    """
    types = set(map(type, values))
    if not types <= {str, type(None), int, float, bool}:
        for i, v in enumerate(values):
            if isinstance(v, (list, dict)):
                raise BadRequest(where(i), f"expected text or null, got {json.dumps(v)[:40]}")
    if not exact and float in types and any(type(v) is float and abs(v) >= _WIDE for v in values):
        raise _Reread
    return np.array(values, dtype=object)


def _convert(kind: str, values: list, where, exact: bool = True) -> np.ndarray:
    if kind == "number":  # a number is the same float64 whichever parser read it
        return _number_column(values, where)
    return _text_column(values, where, exact)


def request_columns(served: Served, payload: dict, exact: bool = True) -> dict[str, np.ndarray]:
    """The request's rows as the run's feature columns: float64 (NaN for null) or object arrays.

    Extra fields are ignored.

    Features are checked in training order, so the error names the first bad one. ``exact=False`` is for a
    payload read by orjson (see :func:`_text_column`).
    """
    out = {}
    if "records" in payload:
        records = payload["records"]
        if not isinstance(records, list):
            raise BadRequest("records", "expected a list of objects, one per row")
        names = [name for name, _ in served.features]
        get = operator.itemgetter(*names) if len(names) > 1 else lambda record: (record[names[0]],)
        try:  # every feature of every record in one pass; a record that is no object or lacks one is found below
            values = list(zip(*map(get, records))) if records else [()] * len(names)
        except (KeyError, TypeError):
            pass
        else:
            return {name: _convert(kind, column, lambda i, name=name: f"records[{i}].{name}", exact)
                    for (name, kind), column in zip(served.features, values)}
        for i, record in enumerate(records):
            if type(record) is not dict:
                raise BadRequest(f"records[{i}]", "expected an object of feature name -> value")
        for name, kind in served.features:
            values = [record.get(name, _ABSENT) for record in records]
            if _ABSENT in values:
                raise BadRequest(f"records[{values.index(_ABSENT)}].{name}",
                                 "missing feature; give null for a missing value")
            out[name] = _convert(kind, values, lambda i, name=name: f"records[{i}].{name}", exact)
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
        out[name] = _convert(kind, values, lambda i, name=name: f"columns.{name}[{i}]", exact)
    return out


def read_columns(served: Served, body: bytes) -> dict[str, np.ndarray]:
    """A request body -> the run's feature columns (:func:`request_columns` of :func:`parse_body`).

    With orjson installed it reads the body first. Whatever that reading does not accept (a bad
    request, NaN, 1e400, a byte-order mark, a lone surrogate, nesting deeper than 1,024, an integer beyond
    64 bits in a text feature) is read again by the standard library, which decides: the same columns,
    and the same errors, as without orjson.
    """
    fast = _orjson()
    if fast is not None:
        try:
            return request_columns(served, _checked(fast.loads(body)), exact=False)
        except (fast.JSONDecodeError, BadRequest, _Reread):
            pass
    return request_columns(served, parse_body(body))


def answer(served: Served, columns: dict[str, np.ndarray]) -> dict:
    """The response to a request's rows: model, classes and labels as JSON values, and the probabilities
    as an array of shape (n_rows, n_classes), written by :func:`encode`."""
    labels, proba = served.predict(columns)
    return {"model": served.name, "classes": served.classes, "labels": labels, "probabilities": proba}


def encode(content: dict) -> bytes:
    """An answer as JSON bytes, with the values Starlette's JSONResponse writes for it with the probabilities
    as nested lists: by orjson when installed (its text of a number may differ in form, ``1e-6`` for ``1e-06``,
    never in value), else by the standard library as JSONResponse does."""
    proba = content["probabilities"]
    fast = _orjson()
    if fast is not None:
        try:
            # The array straight to text, as float64 (each float32 value exactly, as its tolist() gives): no list
            # per row, whose 10,000 survivors a request had the garbage collector scan the whole process often.
            rows = fast.dumps(np.ascontiguousarray(proba, dtype=np.float64), option=fast.OPT_SERIALIZE_NUMPY)
            text = fast.dumps({**content, "probabilities": fast.Fragment(rows)})
        except TypeError:  # an integer beyond 64 bits, a key that is not text, a type orjson does not write
            pass
        else:
            # orjson writes NaN and infinities as null where the standard library refuses them. An answer has no
            # null, so one found (or the word inside a label) leaves the answer to the standard library.
            if b"null" not in text:
                return text
    content = {**content, "probabilities": proba.tolist()}
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


# ----- the app -----------------------------------------------------------------------
def create_app(models: dict[str, Served], *, max_request_bytes: int = MAX_REQUEST_BYTES):
    """The Starlette app serving ``models`` (name -> :class:`Served`)."""
    _require_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
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

    def encoded_answer(served: Served, columns: dict[str, np.ndarray]) -> bytes:
        return encode(answer(served, columns))

    async def respond(served: Served, request: Request) -> Response:
        try:
            columns = read_columns(served, await read_body(request))
            rows = len(next(iter(columns.values())))
            if rows <= INLINE_ROWS:
                body = encoded_answer(served, columns)
            else:  # a big batch in a worker thread, so health checks and small requests are not held up
                body = await run_in_threadpool(encoded_answer, served, columns)
        except BadRequest as exc:
            return error(exc)
        except TorchclfError as exc:
            return error(BadRequest(None, str(exc)))
        return Response(body, media_type=JSONResponse.media_type)

    async def predict_one(request: Request) -> Response:
        if single is None:
            return error(BadRequest(None, f"several models are served ({names}); POST to /models/NAME/predict",
                                    status=404))
        return await respond(single, request)

    async def predict_named(request: Request) -> Response:
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

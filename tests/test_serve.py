"""``torchclf serve``: real uvicorn servers on 127.0.0.1, called with a real HTTP client (http.client).

Health and schema; predictions from records and from columns equal the
predictor's (both backends: onnxruntime and torch); a 4xx JSON error naming
the field for each kind of bad input; the size limit with and without a
Content-Length; several runs side by side by name; a bounded load test
(2,000 requests at concurrency 8); the command line's guards and a real
``torchclf serve`` process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.client import HTTPConnection
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import torchclf
from torchclf import serve
from torchclf.api import make_config

FEATURES = ["x1", "total amount", "color"]
LIMIT = 64 * 1024  # bytes: the request limit of the servers under test


def table(n: int = 120, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    amount = rng.lognormal(2, 1, size=n)
    color = rng.choice(["red", "green", "blue"], size=n).astype(object)
    frame = pd.DataFrame({"x1": x1, "total amount": amount, "color": color})
    frame.loc[rng.random(n) < 0.15, "total amount"] = np.nan
    frame.loc[rng.random(n) < 0.15, "color"] = None
    frame["yes"] = np.where(x1 + (color == "red") > 0.3, "yes", "no")
    frame["level"] = np.digitize(x1 + 0.1 * amount, [0.0, 1.0])
    return frame


@pytest.fixture(scope="module")
def folders(tmp_path_factory, no_pictures) -> dict:
    out = {}
    for name, target in (("bin", "yes"), ("multi", "level")):
        folder = tmp_path_factory.mktemp(name) / name
        config = make_config(model={"hidden": (8,)}, train={"epochs": 5, "seed": 2})
        torchclf.train(table()[FEATURES + [target]], target=target, config=config, out=folder)
        out[name] = folder
    return out


@contextmanager
def running(models: dict, max_request_bytes: int = LIMIT):
    """A uvicorn server for ``models`` on a free loopback port, in a thread; yields (host, port)."""
    app = serve.create_app(models, max_request_bytes=max_request_bytes)
    sock = serve.bind("127.0.0.1", 0)
    server = serve.make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def call(address, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    conn = HTTPConnection(*address, timeout=30)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body  # else bytes or chunks
        conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def installed(*modules: str) -> bool:
    try:
        for module in modules:
            __import__(module)
    except ImportError:
        return False
    return True


BACKENDS = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    not installed("onnx", "onnxruntime"), reason="onnx and onnxruntime are not installed"))]


@pytest.fixture(scope="module", params=BACKENDS)
def single(request, folders):
    """One binary model served alone (/predict), with each backend."""
    models = serve.load_models({"bin": folders["bin"]}, backend=request.param)
    assert models["bin"].backend == request.param
    with running(models) as address:
        yield address, models["bin"].predictor, request.param


def json_rows(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]


def query_rows() -> pd.DataFrame:
    rows = table(n=12, seed=7)[FEATURES]
    rows.loc[3, "color"] = "purple"  # never seen in training
    rows.loc[4, "x1"] = np.nan
    rows.loc[5, "color"] = None
    return rows


def test_health_and_schema(single, folders):
    address, predictor, backend = single
    assert call(address, "GET", "/health") == (200, {"status": "ok", "models": {"bin": {"backend": backend}}})
    status, schema = call(address, "GET", "/schema")
    assert status == 200
    assert schema["features"] == [{"name": "x1", "type": "number"}, {"name": "total amount", "type": "number"},
                                  {"name": "color", "type": "string",
                                   "categories": ["red", "green", "blue"]}]
    assert predictor.preprocessor.columns[2].categories == ["red", "green", "blue", "<missing>"]
    assert (schema["task"], schema["classes"], schema["predict"], schema["backend"]) == (
        "binary", ["no", "yes"], "/predict", backend)
    status, answer = call(address, "POST", "/predict", schema["example"])
    assert status == 200 and len(answer["labels"]) == 1


def test_predictions_from_records_and_columns_equal_the_predictors(single):
    address, predictor, backend = single
    rows = query_rows()
    status, by_records = call(address, "POST", "/predict", {"records": json_rows(rows), "extra": 1})
    assert status == 200, by_records
    columns = {name: [r[name] for r in json_rows(rows)] for name in FEATURES}
    status, by_columns = call(address, "POST", "/predict", {"columns": columns})
    assert status == 200, by_columns
    assert by_records == by_columns
    assert by_records["model"] == "bin" and by_records["classes"] == ["no", "yes"]
    assert by_records["labels"] == predictor.predict(rows)
    np.testing.assert_allclose(by_records["probabilities"], predictor.predict_proba(rows),
                               rtol=0, atol=1e-5 if backend == "onnx" else 0)


def test_a_number_in_a_text_feature_is_read_as_its_text(single):
    address, predictor, _ = single
    status, answer = call(address, "POST", "/predict", {"records": [{"x1": 0.2, "total amount": 3, "color": 7}]})
    assert status == 200
    expected = pd.DataFrame({"x1": [0.2], "total amount": [3.0], "color": ["7"]})
    assert answer["labels"] == predictor.predict(expected)


def test_no_rows_give_empty_lists(single):
    address, _, _ = single
    assert call(address, "POST", "/predict", {"records": []})[1]["labels"] == []
    assert call(address, "POST", "/predict", {"columns": {n: [] for n in FEATURES}})[1]["probabilities"] == []


needs_orjson = pytest.mark.skipif(not installed("orjson"), reason="orjson is not installed")


def canonical(text: bytes) -> str:
    """JSON text -> the standard library's text of its values (floats exactly, -0.0 kept): equal iff the values are."""
    return json.dumps(json.loads(text))


@needs_orjson
def test_orjson_answers_hold_the_same_values_as_the_standard_librarys(single, monkeypatch):
    """Both readings and writings of the same requests, over HTTP; 300 rows go through the worker thread."""
    address, _, _ = single
    bodies = []
    for rows in (query_rows(), table(n=300, seed=5)[FEATURES]):
        records = json_rows(rows)
        bodies += [json.dumps({"records": records}).encode(),
                   json.dumps({"columns": {n: [r[n] for r in records] for n in FEATURES}}).encode()]
    assert serve._orjson() is not None

    def answers() -> list[str]:
        out = []
        for body in bodies:
            conn = HTTPConnection(*address, timeout=30)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert (response.status, response.getheader("content-type")) == (200, "application/json")
            out.append(canonical(response.read()))
            conn.close()
        return out

    fast = answers()
    monkeypatch.setattr(serve, "_orjson", lambda: None)
    assert fast == answers()
    assert [len(json.loads(a)["labels"]) for a in fast] == [12, 12, 300, 300]


def columns_or_error(read) -> tuple:
    """What reading a body gives: each column's dtype and values (as repr), or the error's status, field and text."""
    try:
        columns = read()
    except serve.BadRequest as exc:
        return exc.status, exc.field, exc.message
    return {name: (str(a.dtype), [repr(v) for v in a.tolist()]) for name, a in columns.items()}


@needs_orjson
@pytest.mark.parametrize("body", [
    # orjson refuses 1e400, which the standard library reads as infinity (a missing value here)
    b'{"records": [{"x1": 1e400, "total amount": -1e400, "color": "red"}]}',
    # integers beyond 64 bits, which orjson reads as floats: the same numbers, but another text
    b'{"records": [{"x1": 18446744073709551616, "total amount": -9223372036854775809, "color": 18446744073709551616}]}',
    b'{"columns": {"x1": [2.5, 1], "total amount": [1, null], "color": ["red", -12345678901234567890123]}}',
    b'{"records": [{"x1": 1, "total amount": 2, "color": [18446744073709551616]}]}',  # quoted in the error
    '\ufeff{"records": [{"x1": 1, "total amount": 2, "color": "red"}]}'.encode(),  # a byte-order mark
    '{"records": [{"x1": 1, "total amount": 2, "color": "\u00e9t\u00e9"}]}'.encode("utf-16"),
    b'{"records": [{"x1": 1, "total amount": 2, "color": "\\ud800"}]}',  # a lone surrogate
    b'{"records": [{"x1": 1, "total amount": 2, "color": 7, "color": "red"}]}',  # a repeated key: the last
    b'{"records": [{"x1": NaN, "total amount": 2, "color": "red"}]}',
    b'{"records": [{"x1": 1' + b"0" * 400 + b', "total amount": 2, "color": "red"}]}',
    b'{"columns": {"x1": [1, "2"], "total amount": [1, 2], "color": ["a", true]}}',
    b'{"columns": {"x1": [0.1, -0.0, 5e-324, 1e-7], "total amount": [3, null, 4, 5], "color": [1.5, null, false, "x"]}}',
    b"[" * 1100 + b"]" * 1100,
])
def test_a_body_reads_as_the_standard_library_reads_it(folders, body):
    served = serve.load_models({"bin": folders["bin"]}, backend="torch")["bin"]
    expected = columns_or_error(lambda: serve.request_columns(served, serve.parse_body(body)))
    assert columns_or_error(lambda: serve.read_columns(served, body)) == expected


@pytest.mark.parametrize("features", [[("x1", "number")], [("x1", "number"), ("color", "string")]])
def test_records_read_as_columns_with_one_feature_or_several(features):
    served = SimpleNamespace(features=features)  # all that reading a request needs of a served model
    records = [{"x1": 1.5, "color": "red", "extra": 1}, {"color": 7, "x1": None}, {"x1": 3, "color": None}]
    columns = {name: [r[name] for r in records] for name, _ in features}
    expected = {"x1": ("float64", ["1.5", "nan", "3.0"]), "color": ("object", ["'red'", "7", "None"])}
    expected = {name: expected[name] for name, _ in features}
    assert columns_or_error(lambda: serve.request_columns(served, {"records": records})) == expected
    assert columns_or_error(lambda: serve.request_columns(served, {"columns": columns})) == expected
    assert columns_or_error(lambda: serve.request_columns(served, {"records": records + [[]]})) == (
        422, "records[3]", "expected an object of feature name -> value")
    assert columns_or_error(lambda: serve.request_columns(served, {"records": [{"x1": "a"}, {}]})) == (
        422, "records[1].x1", "missing feature; give null for a missing value")


@needs_orjson
def test_an_ordinary_body_is_read_by_orjson_alone(folders, monkeypatch):
    served = serve.load_models({"bin": folders["bin"]}, backend="torch")["bin"]
    body = json.dumps({"records": json_rows(query_rows())}).encode()
    expected = columns_or_error(lambda: serve.request_columns(served, serve.parse_body(body)))

    def refuse(body):
        raise AssertionError("the standard library read the body")

    monkeypatch.setattr(serve, "parse_body", refuse)
    assert columns_or_error(lambda: serve.read_columns(served, body)) == expected


@pytest.mark.parametrize("fast", [pytest.param(True, marks=needs_orjson), False])
def test_encode_writes_the_values_jsonresponse_writes_for_the_lists(fast, monkeypatch):
    """The old answer was JSONResponse(content with probabilities.tolist()): the same values, whichever writes it."""
    from starlette.responses import JSONResponse

    if not fast:
        monkeypatch.setattr(serve, "_orjson", lambda: None)
    small = np.array([[1e-6, 1 - 1e-6], [0.3, 0.7]], dtype=np.float32)
    contents = [
        {"model": "m", "classes": ["no", "yes"], "labels": ["yes", "no"], "probabilities": small},
        {"model": "m", "classes": [0, 2**70], "labels": [2**70], "probabilities": small[:1]},  # orjson refuses
        {"model": "m", "classes": ["null", "x"], "labels": ["null"], "probabilities": np.array([[5e-324, 1.0]])},
        {"model": "\u00e9", "classes": [True, False], "labels": [False], "probabilities": np.array([[1.5e300, -0.0]])},
        {"model": "m", "classes": ["a\u2028b", "</script>", 3.5], "labels": ["</script>"],
         "probabilities": np.asfortranarray(np.array([[0.1, 0.2, 0.7]], dtype=np.float32))},
        {"model": "m", "classes": ["a", "b"], "labels": [], "probabilities": np.zeros((0, 2), dtype=np.float32)},
        {"model": "m", "classes": ["a", "b"], "labels": ["a", "b"], "probabilities": small[:, ::-1]},  # a view
    ]

    def before(content) -> bytes:
        return JSONResponse({**content, "probabilities": content["probabilities"].tolist()}).body

    for content in contents:
        assert canonical(serve.encode(content)) == canonical(before(content))
    # orjson wrote it (9.999999974752427e-7, not e-07), or the standard library, byte for byte as before
    assert (serve.encode(contents[0]) == before(contents[0])) is not fast
    for bad in (np.nan, np.inf):  # refused as before (the server answers 500)
        content = {**contents[0], "probabilities": np.array([[bad, 0.5]], dtype=np.float32)}
        with pytest.raises(ValueError, match="not JSON compliant"):
            serve.encode(content)
        with pytest.raises(ValueError, match="not JSON compliant"):
            before(content)


GOOD = {"x1": 1.0, "total amount": None, "color": "red"}


@pytest.mark.parametrize("body, status, field, words", [
    (b"{not json", 400, None, "not valid JSON"),
    (b'{"records": [{"x1": NaN, "total amount": 1, "color": "red"}]}', 400, None, "not valid JSON"),
    ({"rows": [GOOD]}, 422, None, 'either "records"'),
    ({"records": [GOOD], "columns": {}}, 422, None, 'either "records"'),
    ({"records": {"x1": 1}}, 422, "records", "a list of objects"),
    ({"records": [GOOD, 5]}, 422, "records[1]", "an object"),
    ({"records": [GOOD, {"x1": 1.0, "color": "red"}]}, 422, "records[1].total amount", "missing feature"),
    ({"records": [GOOD, {**GOOD, "x1": "1.5"}]}, 422, "records[1].x1", 'a number or null, got "1.5"'),
    ({"records": [{**GOOD, "x1": True}]}, 422, "records[0].x1", "a number or null, got true"),
    ({"records": [{**GOOD, "x1": 10 ** 400}]}, 422, "records[0].x1", "too large"),
    ({"records": [{**GOOD, "color": ["red"]}]}, 422, "records[0].color", "text or null"),
    ({"columns": [1, 2]}, 422, "columns", "an object"),
    ({"columns": {"x1": [1.0], "color": ["red"]}}, 422, "columns.total amount", "missing feature"),
    ({"columns": {"x1": 1.0, "total amount": [1.0], "color": ["red"]}}, 422, "columns.x1", "a list of values"),
    ({"columns": {"x1": [1.0, 2.0], "total amount": [1.0], "color": ["a", "b"]}}, 422, "columns.total amount",
     "has 1 values but columns.x1 has 2"),
    ({"columns": {"x1": [1.0, {}], "total amount": [1, 2], "color": ["a", "b"]}}, 422, "columns.x1[1]",
     "a number or null"),
])
def test_bad_input_is_a_4xx_naming_the_field(single, body, status, field, words):
    address, _, _ = single
    got, answer = call(address, "POST", "/predict", body)
    assert (got, answer["field"]) == (status, field)
    assert words in answer["error"]
    assert field is None or answer["error"].startswith(f"{field}: ")


def test_request_size_limit_with_and_without_content_length(single):
    address, _, _ = single
    body = json.dumps({"records": [GOOD] * 2000}).encode()
    assert len(body) > LIMIT
    status, answer = call(address, "POST", "/predict", body)
    assert status == 413 and f"larger than the limit of {LIMIT} bytes" in answer["error"]
    chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))  # sent chunked: no Content-Length
    status, answer = call(address, "POST", "/predict", chunks)
    assert status == 413 and "--max-request-mb" in answer["error"]
    status, answer = call(address, "POST", "/predict", json.dumps({"records": [GOOD] * 100}).encode())
    assert status == 200 and len(answer["labels"]) == 100


def test_unknown_routes_and_methods_answer_json(single):
    address, _, _ = single
    status, answer = call(address, "GET", "/predict")
    assert status == 405 and answer["error"].startswith("GET /predict: Method Not Allowed; routes: GET /health")
    assert call(address, "GET", "/nothing")[0] == 404
    status, answer = call(address, "POST", "/models/other/predict", {"records": [GOOD]})
    assert (status, answer["error"]) == (404, "no model named 'other'; this server has: bin")


def test_several_runs_side_by_side_by_name(folders):
    models = serve.load_models(serve.parse_runs([f"bin={folders['bin']}", str(folders["multi"])]), backend="torch")
    rows = query_rows()
    with running(models) as address:
        for name in ("bin", "multi"):
            status, answer = call(address, "POST", f"/models/{name}/predict", {"records": json_rows(rows)})
            assert status == 200 and answer["model"] == name
            predictor = models[name].predictor
            assert answer["labels"] == predictor.predict(rows)
            np.testing.assert_array_equal(answer["probabilities"], predictor.predict_proba(rows))
            status, schema = call(address, "GET", f"/models/{name}/schema")
            assert status == 200 and schema["predict"] == f"/models/{name}/predict"
        assert models["multi"].classes == [0, 1, 2] and answer["labels"][0] in (0, 1, 2)
        status, answer = call(address, "POST", "/predict", {"records": json_rows(rows)})
        assert status == 404 and "several models are served (bin, multi)" in answer["error"]
        status, schema = call(address, "GET", "/schema")
        assert sorted(schema["models"]) == ["bin", "multi"]


# The 2,000 requests go to the default backend; the torch fallback, about 15 ms of CPU a request,
# gets the same check at a tenth of the count to keep the suite short.
LOAD_BACKENDS = [pytest.param("torch", 25, marks=pytest.mark.slow),
                 pytest.param("onnx", 250, marks=BACKENDS[1].marks)]


@pytest.mark.parametrize("backend, per_worker", LOAD_BACKENDS)
def test_load_2000_requests_at_concurrency_8_without_errors(folders, backend, per_worker):
    models = serve.load_models({"bin": folders["bin"]}, backend=backend)
    with running(models) as address:
        check_load(address, models["bin"].predictor, per_worker)


def check_load(address, predictor, per_worker: int = 250) -> None:
    rows = query_rows()
    bodies = [json.dumps({"records": json_rows(rows.iloc[[i]])}).encode() for i in range(len(rows))]
    expected = predictor.predict(rows)

    def worker(k: int) -> list:
        conn, seen = HTTPConnection(*address, timeout=30), []
        for i in range(per_worker):  # 8 workers x 250 = 2,000 requests over keep-alive connections
            j = (k + i) % len(rows)
            conn.request("POST", "/predict", body=bodies[j], headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            seen.append((response.status, j, json.loads(response.read())["labels"]))
        conn.close()
        return seen

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(worker, range(8)) for r in part]
    assert len(results) == 8 * per_worker
    assert [status for status, _, _ in results if status != 200] == []
    assert all(labels == [expected[j]] for _, j, labels in results)
    assert time.monotonic() - t0 < 120


def test_cli_serve_guards(folders, tmp_path):
    code, _, err = run_cli("serve", str(folders["bin"]), "--host", "0.0.0.0")
    assert code == 2 and "not a loopback address" in err and "--allow-remote" in err
    code, _, err = run_cli("serve", str(tmp_path / "nothing"), "--port", "0")
    assert code == 2 and "no such run folder" in err
    code, _, err = run_cli("serve", f"a={folders['bin']}", f"a={folders['multi']}", "--port", "0")
    assert code == 2 and "two runs are named 'a'" in err
    code, _, err = run_cli("serve", f"bad/name={folders['bin']}", "--port", "0")
    assert code == 2 and "cannot name a model in a URL" in err
    code, _, err = run_cli("serve", str(folders["bin"]), "--port", "0", "--backend", "tflite")
    assert code == 2 and "expected one of auto, onnx, torch" in err
    code, _, err = run_cli("serve", str(folders["bin"]), "--max-request-mb", "0")
    assert code == 2 and "--max-request-mb" in err
    assert [serve.is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "[::1]", "0.0.0.0", "10.0.0.1")] \
        == [True, True, True, True, False, False]
    with serve.bind("0.0.0.0", 0, allow_remote=True) as sock:  # listens, and no request is ever sent to it
        assert sock.getsockname()[1] > 0


@pytest.mark.slow
def test_torchclf_serve_process_answers_and_stops(folders):
    proc = subprocess.Popen([sys.executable, "-m", "torchclf", "serve", str(folders["bin"]), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stderr.readline() for _ in range(1)]
        while not lines[-1].startswith("torchclf serve: ") and lines[-1] and len(lines) < 20:
            lines.append(proc.stderr.readline())  # a note on the backend may come first
        line = lines[-1]
        assert line.startswith("torchclf serve: http://127.0.0.1:"), lines
        url = urlsplit(line.split()[2])
        status, health = call((url.hostname, url.port), "GET", "/health")
        assert status == 200 and list(health["models"]) == ["bin"]
        status, answer = call((url.hostname, url.port), "POST", "/predict", {"records": [GOOD]})
        assert status == 200 and answer["labels"] == torchclf.load(folders["bin"]).predict(
            pd.DataFrame({"x1": [1.0], "total amount": [np.nan], "color": ["red"]}))
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        proc.wait(timeout=30)
    assert proc.returncode == 130

"""The playground server's endpoints, in-process through Starlette's TestClient.

Covers the page and its assets, options, uploads (good, wrong type, binary,
no numeric columns, too large with and without a Content-Length), bad
settings and messages, step/play/pause, saving a run that ``torchclf predict``
loads and that the shown ``torchclf train`` command reproduces, several tabs
at once, a closed tab stopping its training, and the loopback guard.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from starlette.testclient import TestClient

from torchclf import api
from torchclf.data.builtin import load_builtin
from torchclf.errors import TorchclfError
from torchclf.model import PRESETS
from torchclf.playground.server import bind, create_app, is_loopback, url_of
from torchclf.playground.settings import parse_settings

SMALL = {"dataset": "circles", "points": 200, "hidden": [8], "activation": "relu", "optimizer": "adamw",
         "lr": 0.02, "batch_size": 32, "epochs": 12, "seed": 5, "test_size": 0.25}
LIMIT = 4096  # bytes: the upload limit of the app under test


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def client(runs_dir):
    app = create_app(runs_dir, max_upload_bytes=LIMIT, max_rows=500, max_sessions=3)
    with TestClient(app) as c:
        yield c


def receive_until(ws, predicate, limit: int = 5000) -> dict:
    """Read messages until one satisfies ``predicate`` (errors fail at once)."""
    for _ in range(limit):
        m = ws.receive_json()
        if m["type"] == "error" and not predicate(m):
            pytest.fail(f"server error: {m['message']}")
        if predicate(m):
            return m
    pytest.fail("no matching message")


def configure(ws, **settings) -> dict:
    ws.send_json({"type": "configure", "settings": {**SMALL, **settings}})
    return receive_until(ws, lambda m: m["type"] == "data")


def finish(ws) -> dict:
    ws.send_json({"type": "play"})
    return receive_until(ws, lambda m: m["type"] == "tick" and m["status"] == "finished")


def error_of(ws, message: dict) -> str:
    ws.send_json(message)
    return receive_until(ws, lambda m: m["type"] == "error")["message"]


def hello(ws) -> dict:
    return receive_until(ws, lambda m: m["type"] == "hello")


# ----- page, assets, options -------------------------------------------------------
def test_page_and_assets_are_served_and_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    bodies = [page.text]
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"', page.text):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        bodies.append(asset.text)
    assert len(bodies) == 3  # the page, its script and its style sheet
    for body in bodies:
        assert not re.search(r"https?://", body), "the page must not load anything from the network"
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_options_list_datasets_presets_and_limits(client):
    options = client.get("/api/options").json()
    assert set(options["datasets"]) == {"circles", "moons", "blobs", "spirals", "xor", "checkerboard"}
    assert set(options["presets"]) == set(PRESETS)
    v0 = options["presets"]["circle-v0"]
    assert v0["activation"] == "linear" and v0["hidden"] == list(PRESETS["circle-v0"].model.hidden)
    assert options["max_upload_bytes"] == LIMIT


def test_checkerboard_generator_colours_squares():
    X, y, params = load_builtin("checkerboard:cells=2,noise=0,n_samples=300")
    assert len(X) == 300 and params["cells"] == 2
    # Two cells per side: the colour is the XOR of the signs.
    np.testing.assert_array_equal(y.to_numpy(), ((X["x0"] > 0) ^ (X["x1"] > 0)).astype(int).to_numpy())
    _, y4, _ = load_builtin("checkerboard:cells=4,noise=0")
    assert 0.4 < y4.mean() < 0.6


# ----- uploads ---------------------------------------------------------------------
def _csv(rows: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    frame = pd.DataFrame({"a": a.round(4), "b": b.round(4), "note": ["n"] * rows,
                          "kind": np.where(a * b > 0, "same", "diff")})
    return frame.to_csv(index=False).encode()


def test_upload_accepts_a_csv_and_suggests_columns(client):
    reply = client.post("/api/upload?name=points.csv", content=_csv())
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["rows"] == 60 and body["numeric"] == ["a", "b"]
    assert body["suggested"] == {"x": "a", "y": "b", "target": "kind"}
    assert len(body["id"]) >= 16


@pytest.mark.parametrize(
    ("name", "content", "status", "words"),
    [
        ("points.txt", b"a,b,c\n1,2,3\n", 400, "not a .csv file"),
        ("picture.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00", 400, "binary"),
        ("words.csv", b"a,b,c\nx,y,z\nu,v,w\n", 400, "numeric"),
        ("two.csv", b"a,b\n1,2\n3,4\n", 400, "target"),
        ("empty.csv", b"", 400, "empty"),
        ("big.csv", b"a,b,c\n" + b"1,2,3\n" * 1000, 413, "larger than the limit"),
        ("rows.csv", b"a,b,c\n" + b"1,2,0\n" * 600, 400, "rows"),
    ],
)
def test_upload_refusals_have_clear_messages(client, name, content, status, words):
    reply = client.post(f"/api/upload?name={name}", content=content)
    assert reply.status_code == status
    message = reply.json()["error"]
    assert words in message and "\n" not in message


def test_upload_too_large_without_content_length(client):
    def chunks():  # a streamed body: no Content-Length header to trust
        for _ in range(50):
            yield b"1,2,3\n" * 20

    reply = client.post("/api/upload?name=stream.csv", content=chunks())
    assert reply.status_code == 413 and "larger than the limit" in reply.json()["error"]


# ----- settings and messages ---------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"lr": -1}, "'lr'"),
        ({"lr": "fast"}, "'lr'"),
        ({"epochs": 2.5}, "whole number"),
        ({"epochs": 0}, "'epochs'"),
        ({"hidden": [8] * 9}, "'hidden'"),
        ({"hidden": [0]}, "'hidden'"),
        ({"activation": "rellu"}, "did you mean 'relu'"),
        ({"dataset": "circle"}, "did you mean 'circles'"),
        ({"noise": 5}, "'noise'"),
        ({"preset": "v9"}, "'preset'"),
        ({"test_size": 0.9}, "'test_size'"),
        ({"learning_rate": 0.1}, "unknown field"),
        ({"dataset": "upload"}, "upload a CSV"),
        ({"dataset": "upload", "upload": "u", "x": "a", "y": "a", "target": "c"}, "three different"),
    ],
)
def test_bad_settings_name_the_field(raw, words):
    with pytest.raises(TorchclfError, match=re.escape(words)):
        parse_settings({**SMALL, **raw})


def test_bad_messages_get_error_replies(client):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        ws.send_text("{oops")
        assert "not valid JSON" in receive_until(ws, lambda m: m["type"] == "error")["message"]
        assert "unknown type" in error_of(ws, {"type": "explode"})
        assert "no data is loaded" in error_of(ws, {"type": "play"})
        assert "'lr'" in error_of(ws, {"type": "configure", "settings": {**SMALL, "lr": 0}})
        assert "no longer on the server" in error_of(
            ws, {"type": "configure", "settings": {**SMALL, "dataset": "upload", "upload": "gone", "x": "a", "y": "b",
                                                   "target": "c"}})
        configure(ws)
        assert "nothing trained yet" in error_of(ws, {"type": "save"})
        assert "does not exist" in error_of(ws, {"type": "select", "index": 10_000})
        assert "does not exist" in error_of(ws, {"type": "select", "index": "0"})


# ----- training, stepping, saving ----------------------------------------------------
def test_step_pause_play_and_inspect_a_point(client):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        data = configure(ws)
        assert data["rows"] == {"train": 150, "test": 50} and data["classes"] == ["0", "1"]
        assert len(data["test"]["x"]) == 50 and data["task"] == "binary"
        first = receive_until(ws, lambda m: m["type"] == "tick" and "grid" in m)
        assert first["epoch"] == 0 and first["status"] == "ready"
        assert len(first["grid"]["p"]) == data["grid"] ** 2

        ws.send_json({"type": "step"})
        one = receive_until(ws, lambda m: m["type"] == "tick" and m["epoch"] == 1)
        ws.send_json({"type": "step"})
        two = receive_until(ws, lambda m: m["type"] == "tick" and m["epoch"] == 2 and m["status"] == "paused")
        assert [r[0] for r in one["rows"] + two["rows"]] == [1, 2]
        assert "--epochs 2 " in two["command"]
        # A paused run stays at its epoch.
        time.sleep(0.3)
        ws.send_json({"type": "select", "index": 7})
        picked = receive_until(ws, lambda m: m["type"] == "tick" and m.get("point", {}).get("index") == 7)
        assert picked["epoch"] == 2
        point = picked["point"]
        logit = point["logits"][0]
        assert point["proba"]["1"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-3)
        assert point["predicted"] == ("1" if point["proba"]["1"] >= 0.5 else "0")
        assert point["label"] in ("0", "1")

        done = finish(ws)
        assert done["epoch"] == SMALL["epochs"]
        assert "finished" in error_of(ws, {"type": "play"})
        assert "finished" in error_of(ws, {"type": "step"})
        ws.send_json({"type": "reset"})
        again = receive_until(ws, lambda m: m["type"] == "data")
        assert again["run"] > data["run"]


def test_saved_run_loads_predicts_and_matches_the_command(client, runs_dir, tmp_path):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        configure(ws)
        finish(ws)
        ws.send_json({"type": "save", "name": "saved-small"})
        saved = receive_until(ws, lambda m: m["type"] == "saved")
        assert "already exists" in error_of(ws, {"type": "save", "name": "saved-small"})
        assert "letters, digits" in error_of(ws, {"type": "save", "name": "../escape"})
    folder = runs_dir / "saved-small"
    assert saved["path"] == str(folder.resolve()) and saved["epochs"] == SMALL["epochs"]
    for name in ("model.safetensors", "model.json", "metrics.json", "history.csv"):
        assert (folder / name).is_file()
    assert len(pd.read_csv(folder / "history.csv")) == SMALL["epochs"]

    spec = "circles:n_samples=50,noise=0.05,seed=9"
    code, out, err = run_cli("predict", str(folder), spec)
    assert code == 0, err
    predictions = pd.read_csv(io.StringIO(out))
    assert len(predictions) == 50

    # The command on the page, run as typed (to another folder), trains the same model.
    words = shlex.split(saved["command"])
    assert words[:2] == ["torchclf", "train"]
    out_at = words.index("--out")
    words[out_at + 1] = str(tmp_path / "from-cli")
    code, _, err = run_cli(*words[1:], "--quiet")
    assert code == 0, err
    page_metrics = json.loads((folder / "metrics.json").read_text())
    cli_metrics = json.loads((tmp_path / "from-cli" / "metrics.json").read_text())
    assert page_metrics["test"]["accuracy"] == pytest.approx(cli_metrics["test"]["accuracy"])
    assert page_metrics["test"]["log_loss"] == pytest.approx(cli_metrics["test"]["log_loss"], rel=1e-5)
    page_model, cli_model = api.load(folder).model, api.load(tmp_path / "from-cli").model
    for a, b in zip(page_model.state_dict().values(), cli_model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_uploaded_csv_trains_and_saves_with_its_data_file(client, runs_dir):
    upload = client.post("/api/upload?name=quadrants.csv", content=_csv(rows=120, seed=1)).json()
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        assert "not numeric" in error_of(ws, {"type": "configure", "settings": {
            **SMALL, "dataset": "upload", "upload": upload["id"], "x": "note", "y": "b", "target": "kind"}})
        data = configure(ws, dataset="upload", upload=upload["id"], x="a", y="b", target="kind", epochs=5)
        assert data["features"] == ["a", "b"] and data["classes"] == ["diff", "same"]
        finish(ws)
        ws.send_json({"type": "save", "name": "from-upload"})
        saved = receive_until(ws, lambda m: m["type"] == "saved")
    words = shlex.split(saved["command"])
    data_file = words[2]
    assert words[words.index("--target") + 1] == "kind"
    frame = pd.read_csv(data_file)
    assert list(frame.columns) == ["a", "b", "kind"] and len(frame) == 120
    code, out, err = run_cli("predict", saved["path"], data_file)
    assert code == 0, err
    assert "diff" in out or "same" in out


# ----- several tabs ------------------------------------------------------------------
def _hub(client):
    return client.app.state.hub


def test_tabs_train_independently_and_a_closed_tab_stops(client):
    hub = _hub(client)
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        sa, sb = hello(a)["session"], hello(b)["session"]
        assert sa != sb
        da = configure(a, dataset="moons", seed=1, epochs=10)
        db = configure(b, dataset="xor", seed=2, epochs=10000)
        assert da["train"]["x"] != db["train"]["x"]
        b.send_json({"type": "play"})
        receive_until(b, lambda m: m["type"] == "tick" and m["epoch"] >= 3)
        done_a = finish(a)
        assert done_a["epoch"] == 10
        run_b = hub.sessions[sb].run
        assert run_b.status == "playing" and len(run_b.rows) > 3
        # a's run is its own: resetting a leaves b's training going.
        a.send_json({"type": "reset"})
        receive_until(a, lambda m: m["type"] == "data")
        before = len(run_b.rows)
        receive_until(b, lambda m: m["type"] == "tick" and m["epoch"] > before)
    # Both tabs closed: their sessions go and b's long run stops early.
    deadline = time.monotonic() + 10
    while (hub.sessions or not run_b.future.done()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hub.sessions
    assert run_b.future.done() and run_b.stopped
    assert len(run_b.rows) < 10000


def test_session_limit_is_reported(client):
    sockets = [client.websocket_connect("/ws") for _ in range(3)]
    opened = [s.__enter__() for s in sockets]
    try:
        for ws in opened:
            hello(ws)
        with client.websocket_connect("/ws") as extra:
            m = extra.receive_json()
            assert m["type"] == "error" and "already open" in m["message"]
    finally:
        for s in sockets:
            s.__exit__(None, None, None)


# ----- the server's address ------------------------------------------------------------
@pytest.mark.parametrize(("host", "ok"), [("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True),
                                          ("::1", True), ("0.0.0.0", False), ("192.168.1.10", False),
                                          ("example.org", False), ("::", False)])
def test_loopback_detection(host, ok):
    assert is_loopback(host) is ok


def test_bind_picks_a_free_loopback_port_and_refuses_remote_hosts():
    sock = bind("127.0.0.1", 0)
    try:
        url = url_of(sock)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
    finally:
        sock.close()
    with pytest.raises(TorchclfError, match="--allow-remote"):
        bind("0.0.0.0", 0)
    code, _, err = run_cli("playground", "--host", "0.0.0.0")
    assert code == 2 and "--allow-remote" in err and "Traceback" not in err
    code, _, err = run_cli("playground", "--max-upload-mb", "0")
    assert code == 2 and "--max-upload-mb" in err


def test_the_command_prints_its_address_and_serves_the_page(tmp_path):
    """A real process: `python -m torchclf playground` on a free loopback port."""
    proc = subprocess.Popen([sys.executable, "-m", "torchclf", "playground", "--runs-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "http://" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url, f"no address printed: {line!r}"
        assert int(url.group(1)) > 0 and str(tmp_path) in line
        with urllib.request.urlopen(url.group(0), timeout=10) as reply:
            assert reply.status == 200 and b"torchclf playground" in reply.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)

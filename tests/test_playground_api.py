"""The playground server's endpoints, in-process through Starlette's TestClient.

Covers the page and its assets, options, uploads (good, wrong type, binary,
no numeric columns, too large with and without a Content-Length, a row-number
column), bad settings and messages, step (one optimizer step), play at a speed,
pause, live settings changing the running model, continuing past the last
epoch, feature inputs, the network's pictures, saving a run that ``torchclf
predict`` loads and that the shown ``torchclf train`` command reproduces (and
saying so when settings changed mid-run), several tabs at once, a closed tab
stopping its training, and the loopback guard. The engine's hooks that the
playground uses (a step hook, L1, dropout at MLP's places) are checked here too.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from forked import PIPE, Forked, cli
from starlette.testclient import TestClient

from torchclf import api, engine
from torchclf.callbacks import Callback
from torchclf.config import PARAMS, ModelConfig, TrainConfig
from torchclf.data.builtin import load_builtin
from torchclf.errors import TorchclfError
from torchclf.model import PRESETS, build_model, dropout
from torchclf.playground.server import bind, create_app, is_loopback, url_of
from torchclf.playground.session import _hidden_outputs
from torchclf.playground.settings import TABLE_SETTINGS, builtin_spec, parse_settings, run_config, train_command
from torchclf.task import resolve_task

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
    assert len(bodies) == 4  # the page, its two scripts and its style sheet
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
    for name, info in options["datasets"].items():
        # The default lies on the slider's steps, so the slider shows the value used (blobs showed 1.5, used 1.52).
        steps = info["noise"] / info["noise_step"]
        assert abs(steps - round(steps)) < 1e-9, name
    assert options["live"] == ["lr", "optimizer", "weight_decay", "l1", "dropout", "batch_size", "epochs"]
    assert list(options["features"]) == ["x", "y", "x2", "y2", "xy", "sinx", "siny"]


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


def test_upload_suggests_measurements_not_row_numbers(client):
    frame = pd.read_csv(io.BytesIO(_csv()))
    frame.insert(0, "id", range(1, len(frame) + 1))
    reply = client.post("/api/upload?name=with-id.csv", content=frame.to_csv(index=False).encode())
    assert reply.json()["suggested"] == {"x": "a", "y": "b", "target": "kind"}


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
        ({"hidden": [0, 0, 0]}, "change “Hidden layers” on the page"),
        ({"features": []}, "'features'"),
        ({"features": ["x", "z"]}, "'features'"),
        ({"l1": -0.1}, "change “L1” on the page"),
        ({"activation": "rellu"}, "did you mean 'relu'"),
        ({"dataset": "circle"}, "did you mean 'circles'"),
        ({"noise": 5}, "'noise'"),
        ({"preset": "v9"}, "'preset'"),
        ({"test_size": 0.9}, "'test_size'"),
        ({"weight_decay": 1.5}, "'weight_decay'"),
        ({"weight_decay": -0.01}, "'weight_decay'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"batch_size": "all"}, "'batch_size'"),
        ({"seed": 2**31}, "'seed'"),
        ({"learning_rate": 0.1}, "unknown field"),
        ({"dataset": "upload"}, "upload a CSV"),
        ({"dataset": "upload", "upload": "u", "x": "a", "y": "a", "target": "c"}, "three different"),
    ],
)
def test_bad_settings_name_the_field(raw, words):
    with pytest.raises(TorchclfError, match=re.escape(words)):
        parse_settings({**SMALL, **raw})


def test_page_settings_follow_the_parameter_table(client):
    """Every table parameter with page limits is a setting, with the table's limits and default."""
    options = client.get("/api/options").json()
    shown = [p for p in PARAMS if p.page is not None]
    assert {"hidden", "dropout", "epochs", "batch_size", "lr", "weight_decay", "seed", "test_size"} <= {
        p.name for p in shown}
    defaults = parse_settings({})
    for p in shown:
        assert options["limits"][p.name] == list(p.page), p.name
        page_default = list(p.page_value) if p.kind == "sizes" else p.page_value
        assert options["defaults"][p.name] == page_default, p.name
        assert getattr(defaults, p.name) == p.page_value, p.name
        # The page's limits and default are values the table itself accepts.
        for value in (*p.page, p.page_value):
            value = (value,) if p.kind == "sizes" and not isinstance(value, tuple) else value
            assert p.check(value, "page") == value, p.name
        # Just past a page limit is refused, naming the setting.
        lo, hi = p.page
        too_big = [hi + 1] if p.kind == "sizes" else hi * 2 + 1
        with pytest.raises(TorchclfError, match=re.escape(f"setting {p.name!r}")):
            parse_settings({**SMALL, p.name: too_big})
    # The preset fills every table setting but the split and seed.
    v1 = options["presets"]["circle-v1"]
    expected = api.make_config("circle-v1")
    assert {k: v for k, v in v1.items() if k != "description"} == {
        p.name: list(expected.value(p.name)) if p.kind == "sizes" else expected.value(p.name)
        for p in TABLE_SETTINGS if not p.shared}
    assert v1["weight_decay"] == 0.0 and v1["batch_size"] is None


# A value for every table setting of the page, none of them a default (the page's or the table's).
NON_DEFAULT = {"hidden": [5, 3], "activation": "tanh", "dropout": 0.15, "epochs": 3, "batch_size": 16,
               "optimizer": "sgd", "lr": 0.0123456789, "weight_decay": 0.003, "l1": 0.002, "label_smoothing": 0.05,
               "seed": 7, "test_size": 0.3}


@pytest.mark.parametrize(("page", "preset"), [
    ({}, "circle-v1"), ({"batch_size": None, "dataset": "moons", "features": ["x", "xy", "siny"]}, None)])
def test_the_shown_command_builds_exactly_the_run_config(monkeypatch, tmp_path, page, preset):
    """`torchclf train` run with the shown flags saves the RunConfig the page trains with."""
    import torchclf.report

    assert set(NON_DEFAULT) == {p.name for p in TABLE_SETTINGS}, "give the new page setting a value here"
    for p in TABLE_SETTINGS:
        value = tuple(NON_DEFAULT[p.name]) if p.kind == "sizes" else NON_DEFAULT[p.name]
        assert value not in (p.default, p.page_value), p.name
    monkeypatch.setattr(api, "write_plots", lambda *a, **k: [])  # the pictures are not what this checks
    monkeypatch.setattr(torchclf.report, "write_report", lambda *a, **k: None)
    settings = parse_settings({**NON_DEFAULT, "points": 80, "preset": preset, **page})
    assert settings.lr == 0.0123457  # what the command can say
    for epochs in (settings.epochs, 2):
        words = shlex.split(train_command(settings, builtin_spec(settings), epochs, out=str(tmp_path / f"e{epochs}")))
        code, _, err = run_cli(*words[1:], "--quiet")
        assert code == 0, err
        assert api.load(tmp_path / f"e{epochs}").config == run_config(settings, epochs=epochs)
    assert run_config(settings) == run_config(settings, epochs=NON_DEFAULT["epochs"])
    if "features" in page:  # the feature inputs are the data spec's, which `torchclf train` computes the same way
        assert words[2] == "moons:n_samples=80,noise=0.2,seed=7,features=x+xy+siny"
        assert api.load(tmp_path / "e2").preprocessor.feature_names == ["x0", "x0*x1", "sin(x1)"]


def test_bad_messages_get_error_replies(client):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        ws.send_text("{oops")
        assert "not valid JSON" in receive_until(ws, lambda m: m["type"] == "error")["message"]
        assert "unknown type" in error_of(ws, {"type": "explode"})
        assert "no data is loaded" in error_of(ws, {"type": "play"})
        ws.send_json({"type": "configure", "settings": {**SMALL, "lr": 0}})
        reply = receive_until(ws, lambda m: m["type"] == "error")
        assert reply["field"] == "lr" and reply["message"].startswith("setting 'lr': got 0, expected")
        assert "no longer on the server" in error_of(
            ws, {"type": "configure", "settings": {**SMALL, "dataset": "upload", "upload": "gone", "x": "a", "y": "b",
                                                   "target": "c"}})
        configure(ws)
        assert "no whole epoch trained yet" in error_of(ws, {"type": "save"})
        assert "speed: got 'fast'" in error_of(ws, {"type": "speed", "steps_per_second": "fast"})
        assert "unit 'batch' is not one of step, epoch" in error_of(ws, {"type": "step", "unit": "batch"})
        assert "does not exist" in error_of(ws, {"type": "select", "index": 10_000})
        assert "does not exist" in error_of(ws, {"type": "select", "index": "0"})


# ----- training, stepping, saving ----------------------------------------------------
def ticks_until(ws, predicate) -> dict:
    return receive_until(ws, lambda m: m["type"] == "tick" and predicate(m))


def test_replies_are_not_held_back_by_the_news_interval(client, monkeypatch):
    """While a run trains, news goes at most every SEND_INTERVAL, and a reply goes at once."""
    import torchclf.playground.server as server

    monkeypatch.setattr(server, "SEND_INTERVAL", 1.5)
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        configure(ws, epochs=10000, batch_size=8)
        ws.send_json({"type": "play"})
        receive_until(ws, lambda m: m["type"] == "tick" and m["status"] == "playing")
        started, ticks = time.monotonic(), 0
        for _ in range(4):
            ws.send_json({"type": "no such message"})
            reply = ws.receive_json()
            while reply["type"] == "tick":
                ticks += 1
                reply = ws.receive_json()
            assert reply["type"] == "error" and "no such message" in reply["message"], reply
        seconds = time.monotonic() - started
        ws.send_json({"type": "pause"})
    assert seconds < 1.5 and ticks <= 1, (seconds, ticks)  # held back, the 4 replies took at least 4.5 s


def test_step_speed_pause_play_and_inspect_a_point(client):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        data = configure(ws)
        assert data["rows"] == {"train": 150, "test": 50} and data["classes"] == ["0", "1"]
        assert len(data["test"]["x"]) == 50 and data["task"] == "binary"
        assert data["network"] == {"sizes": [2, 8, 1], "inputs": ["x0", "x1"], "shown": [2, 8, 1], "size": 24}
        first = ticks_until(ws, lambda m: "grid" in m)
        assert first["epoch"] == 0 and first["status"] == "ready"
        assert len(base64.b64decode(first["grid"]["p"])) == data["grid"] ** 2
        # Every drawn neuron's picture, and the edges' weights between drawn neurons (out x in).
        net = first["net"]
        assert len(base64.b64decode(net["pictures"])) == (2 + 8 + 1) * 24 ** 2
        assert [len(s) for s in net["scales"]] == [2, 8, 1]
        assert [(len(w), len(w[0])) for w in net["weights"]] == [(8, 2), (1, 8)]

        # A step is one optimizer step: 150 training rows in batches of 32 make 5 steps an epoch.
        for k in range(1, 6):
            ws.send_json({"type": "step", "unit": "step"})
            m = ticks_until(ws, lambda m, k=k: m["steps"] == k and (k < 5 or m["epoch"] == 1))
            assert (m["epoch"], m["step"] if k < 5 else 0) == ((0, k) if k < 5 else (1, 0)), k
        assert m["steps_per_epoch"] == 5 and m["status"] == "paused"
        assert [r[0] for r in m["rows"]] == [1] and "--epochs 1 " in m["command"]
        # A paused run stays where it is.
        time.sleep(0.3)
        ws.send_json({"type": "select", "index": 7})
        picked = ticks_until(ws, lambda m: m.get("point", {}).get("index") == 7)
        assert (picked["epoch"], picked["steps"]) == (1, 5)
        point = picked["point"]
        logit = point["logits"][0]
        assert point["proba"]["1"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-3)
        assert point["predicted"] == ("1" if point["proba"]["1"] >= 0.5 else "0")
        assert point["label"] in ("0", "1")

        # Played at 10 steps a second, it takes no more than that (and redraws after every step).
        ws.send_json({"type": "speed", "steps_per_second": 10})
        t0 = time.monotonic()
        ws.send_json({"type": "play"})
        ticks_until(ws, lambda m: m["steps"] >= 9)
        ws.send_json({"type": "pause"})
        paused = ticks_until(ws, lambda m: m["status"] == "paused")
        elapsed = time.monotonic() - t0
        taken = paused["steps"] - 5
        assert 4 <= taken <= 10 * elapsed + 2, (taken, elapsed)

        ws.send_json({"type": "speed", "steps_per_second": None})
        done = finish(ws)
        assert done["epoch"] == SMALL["epochs"] and done["steps"] == 5 * SMALL["epochs"]
        assert "raise Epochs to continue" in error_of(ws, {"type": "play"})
        assert "raise Epochs to continue" in error_of(ws, {"type": "step"})
        ws.send_json({"type": "reset"})
        again = receive_until(ws, lambda m: m["type"] == "data")
        assert again["run"] > data["run"]


def test_saved_run_loads_predicts_and_matches_the_command(client, runs_dir, tmp_path, no_pictures_here):
    """Trained to 7 epochs, continued to 12 on demand, saved: `torchclf train --epochs 12` gives the same weights."""
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        first = configure(ws, epochs=7)
        assert finish(ws)["epoch"] == 7
        ws.send_json({"type": "configure", "settings": SMALL})  # more epochs continue the finished run
        changed = receive_until(ws, lambda m: m["type"] == "changed")
        assert changed["run"] == first["run"] and changed["settings"] == ["epochs"]
        done = finish(ws)
        assert done["epoch"] == SMALL["epochs"] and done["exact"] is True
        assert done["changes"] == ["Epochs 7 \u2192 12 after step 35 (epoch 7)"]
        ws.send_json({"type": "save", "name": "saved-small"})
        saved = receive_until(ws, lambda m: m["type"] == "saved")
        # Saving again (a double click) answers with the same run instead of writing a second one.
        ws.send_json({"type": "save", "name": "saved-small"})
        again = receive_until(ws, lambda m: m["type"] == "saved")
        assert again == {**saved, "again": True}
        (runs_dir / "taken").mkdir()
        assert "already exists" in error_of(ws, {"type": "save", "name": "taken"})
        assert "letters, digits" in error_of(ws, {"type": "save", "name": "../escape"})
    folder = runs_dir / "saved-small"
    assert saved["path"] == str(folder.resolve()) and saved["epochs"] == SMALL["epochs"]
    assert saved["exact"] is True and saved["steps_left_out"] == 0
    assert sorted(p.name for p in runs_dir.iterdir() if p.name.startswith("saved-small")) == ["saved-small"]
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
    page_run, cli_run = api.load(folder), api.load(tmp_path / "from-cli")
    torch.testing.assert_close(page_run.model.state_dict(), cli_run.model.state_dict())
    assert page_run.config == cli_run.config
    # The saved run records its data as the command does, so `explain` and `report` can rebuild its rows.
    assert page_run.extra["spec"] == cli_run.extra["spec"] and page_run.extra["spec"]["data"] == {"spec": words[2]}
    assert page_run.extra["playground"] == {"command_repeats_training": True, "changes": done["changes"]}


def test_live_settings_change_the_running_model_and_the_command_says_so(client, runs_dir, no_pictures_here):
    hub = client.app.state.hub
    with client.websocket_connect("/ws") as ws:
        session = hub.sessions[hello(ws)["session"]]
        data = configure(ws, epochs=3, hidden=[6, 4])
        run = session.run
        for _ in range(3):
            ws.send_json({"type": "step", "unit": "step"})
        ticks_until(ws, lambda m: m["steps"] == 3)
        live = {**SMALL, "epochs": 3, "hidden": [6, 4], "lr": 0.1, "weight_decay": 0.0, "l1": 0.01, "dropout": 0.3}
        ws.send_json({"type": "configure", "settings": live})
        changed = receive_until(ws, lambda m: m["type"] == "changed")
        assert changed["run"] == data["run"] and changed["settings"] == ["dropout", "lr", "weight_decay", "l1"]
        assert "--lr 0.1 " in changed["command"] and "--dropout 0.3 " in changed["command"]
        ws.send_json({"type": "step", "unit": "step"})
        ticks_until(ws, lambda m: m["steps"] == 4)
        # The same model, at its 4th step, with the new values in its optimizer, penalty and dropout.
        assert session.run is run and run.state.epoch == 1
        group = run.state.optimizer.param_groups[0]
        assert (group["lr"], group["weight_decay"], run.penalty.strength, run._dropout_p) == (0.1, 0.0, 0.01, 0.3)
        assert len(run._dropout_hooks) == 2  # after each of the two hidden layers
        # The optimizer and the batch size change at the next epoch.
        ws.send_json({"type": "configure", "settings": {**live, "optimizer": "sgd", "batch_size": 16}})
        receive_until(ws, lambda m: m["type"] == "changed")
        ws.send_json({"type": "step"})  # on to the end of the epoch: its fifth step
        ticks_until(ws, lambda m: m["steps"] == 5 and m["epoch"] == 1 and m["status"] == "paused")
        assert isinstance(run.state.optimizer, torch.optim.AdamW)
        done = finish(ws)
        assert isinstance(run.state.optimizer, torch.optim.SGD) and run.state.config.batch_size == 16
        assert done["steps"] == 5 + 2 * 10  # 150 rows: 5 steps an epoch in batches of 32, then 10 in 16
        assert [r[5] for r in run.rows] == [0.1, 0.1, 0.1]  # the learning rate in force, per epoch
        expected = ["Dropout 0 \u2192 0.3 after step 3 (epoch 1)", "Learning rate 0.02 \u2192 0.1 after step 3 (epoch 1)",
                    "L2 (weight decay) 0.01 \u2192 0 after step 3 (epoch 1)", "L1 0 \u2192 0.01 after step 3 (epoch 1)",
                    "Batch size 32 \u2192 16 after step 5 (epoch 2)", "Optimizer adamw \u2192 sgd after step 5 (epoch 2)"]
        assert done["exact"] is False and done["changes"] == expected
        ws.send_json({"type": "save", "name": "changed-mid-run"})
        saved = receive_until(ws, lambda m: m["type"] == "saved")
        assert saved["exact"] is False and saved["changes"] == expected
        assert "--optimizer sgd " in saved["command"] and "--batch-size 16 " in saved["command"]
        # A change that needs a new network starts a new run.
        restarted = configure(ws, **{**live, "activation": "tanh"})
        assert restarted["run"] > data["run"] and session.run is not run
    assert api.load(runs_dir / "changed-mid-run").extra["playground"] == {
        "command_repeats_training": False, "changes": expected}


def test_feature_inputs_and_a_multiclass_map(client):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        data = configure(ws, features=["x2", "y2"], hidden=[])
        assert (data["axes"], data["features"]) == (["x0", "x1"], ["x0^2", "x1^2"])
        assert data["network"]["sizes"] == [2, 1] and "features=x2+y2" in data["command"]
        # The points are drawn at the two plotted columns of the very rows the model trains on.
        X, y, _ = load_builtin("circles:n_samples=200,noise=0.03,seed=5")
        shown = pd.DataFrame({"x0": data["test"]["x"], "x1": data["test"]["y"]})
        rows = [int(np.argmin((X["x0"] - a) ** 2 + (X["x1"] - b) ** 2)) for a, b in shown.to_numpy()]
        assert [int(y[i]) for i in rows] == data["test"]["label"]
        # Blobs: every class's probability per cell, so the page blends edges between classes.
        data = configure(ws, dataset="blobs", hidden=[5])
        grid = ticks_until(ws, lambda m: "grid" in m)["grid"]
        planes = np.frombuffer(base64.b64decode(grid["p"]), dtype=np.uint8).reshape(4, -1).astype(int)
        assert grid["planes"] == 4 and planes.shape[1] == data["grid"] ** 2
        assert np.abs(planes.sum(axis=0) - 255).max() <= 3  # rounding of four bytes


def test_the_engine_hooks_the_playground_uses():
    """A step hook after every step; L1 as gradient hooks equals |w| in the loss; dropout's places."""
    torch.manual_seed(0)
    X = torch.randn(40, 2)
    task = resolve_task("auto", 2, False, "d", 0)
    data = engine.TensorData(X, task.target_tensor((X[:, 0] > 0).long().numpy()).to(torch.float32))
    model = build_model(2, 1, ModelConfig(hidden=(4,), dropout=0.0))
    manual = build_model(2, 1, ModelConfig(hidden=(4,), dropout=0.0))
    manual.load_state_dict(model.state_dict())
    seen = []

    class Steps(Callback):
        def on_step_end(self, state):
            seen.append((state.epoch, state.step, state.steps))

    config = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, weight_decay=0.0, l1=0.05,
                         schedule="none", seed=1, label_smoothing=0.0)
    engine.fit(model, task, data, None, config, callbacks=[*engine.default_callbacks(config, False, False), Steps()])
    assert seen == [(1, 1, 3), (1, 2, 3), (1, 3, 3), (2, 1, 3), (2, 2, 3), (2, 3, 3)]
    assert all(not p._backward_hooks for p in model.parameters())  # the penalty's hooks are gone after training
    # The same two epochs by hand, with the penalty in the loss.
    optimizer = torch.optim.SGD(manual.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        for idx in torch.split(torch.randperm(40, generator=generator), 16):
            loss = task.per_sample_loss(task.loss_function(), manual(X[idx]), data.y[idx]).mean()
            loss = loss + 0.05 * sum(p.abs().sum() for p in manual.parameters() if p.dim() == 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(model.state_dict(), manual.state_dict())
    # Live dropout on a network built without it goes where MLP puts its Dropout modules.
    plain = build_model(2, 1, ModelConfig(hidden=(5, 3), activation="tanh", dropout=0.0))
    dropped = build_model(2, 1, ModelConfig(hidden=(5, 3), activation="tanh", dropout=0.5))
    dropped.load_state_dict(dict(zip(dropped.state_dict(), plain.state_dict().values(), strict=True)))
    for module in _hidden_outputs(plain):
        module.register_forward_hook(lambda m, i, out: dropout(out, 0.5, m.training))
    torch.manual_seed(3)
    hooked = plain(X)
    torch.manual_seed(3)
    torch.testing.assert_close(hooked, dropped(X), rtol=0, atol=0)


def test_uploaded_csv_trains_and_saves_with_its_data_file(client, runs_dir, no_pictures_here):
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
    spec = api.load(saved["path"]).extra["spec"]
    assert spec["data"]["path"] == str(Path(data_file).resolve()) and spec["target"] == ["kind"]
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
    """Another process: `torchclf playground` on a free loopback port."""
    proc = Forked(cli("playground", "--runs-dir", str(tmp_path)), stdout=PIPE, stderr=PIPE)
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

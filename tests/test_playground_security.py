"""The playground under attack (issue 14): other sites, floods, hostile frames and uploads.

Covers the Host and Origin checks (DNS rebinding, cross-site WebSockets and
uploads), bounded work per tab and in total (a refused run instead of a queue,
waiting messages dropped when a tab closes, no epoch for a run stopped before
it started), frames that are not the page's JSON (binary, deeply nested, NaN,
too long; also as a hypothesis property), upload column and memory limits, and
run names with a trailing newline. The cases are rows of ``docs/reliability.md``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient, WebSocketDenialResponse

from torchclf import engine
from torchclf.errors import TorchclfError
from torchclf.playground.server import MAX_DEPTH, MAX_MESSAGE_CHARS, MAX_PENDING, bind, create_app, refusal, url_of
from torchclf.playground.session import Session
from torchclf.playground.settings import DEFAULTS

SMALL = {"dataset": "circles", "points": 120, "hidden": [4], "activation": "relu", "optimizer": "adamw",
         "lr": 0.02, "batch_size": 32, "epochs": 12, "seed": 5, "test_size": 0.25}
EVIL = "http://evil.example"


@pytest.fixture
def app(tmp_path):
    return create_app(tmp_path / "runs", max_upload_bytes=64 * 1024, max_rows=500, max_sessions=2)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def hello(ws) -> int:
    m = ws.receive_json()
    assert m["type"] == "hello", m
    return m["session"]


def replies_until(ws, predicate, limit: int = 5000) -> list[dict]:
    """Messages up to and including the first that satisfies ``predicate``."""
    seen = []
    for _ in range(limit):
        seen.append(ws.receive_json())
        if predicate(seen[-1]):
            return seen
    pytest.fail("no matching message")


def errors_before_barrier(ws) -> list[str]:
    """Send a message that is answered in order, and return the other errors that came before its answer."""
    ws.send_json({"type": "explode"})
    seen = replies_until(ws, lambda m: m["type"] == "error" and "unknown type 'explode'" in m["message"])
    return [m["message"] for m in seen[:-1] if m["type"] == "error"]


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def csv_body(columns: int, rows: int = 4) -> bytes:
    header = ",".join(["a", "b", *[f"c{i}" for i in range(columns - 3)], "label"])
    lines = [",".join([str(r), str(r * 2), *["0"] * (columns - 3), "yes" if r % 2 else "no"]) for r in range(rows)]
    return ("\n".join([header, *lines]) + "\n").encode()


# ----- Host and Origin (issue 14, item 1) -----------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/playground.js", "/api/options"])
def test_a_foreign_host_name_is_refused(client, path):
    """DNS rebinding: evil.example resolving to this machine must not reach the playground."""
    assert client.get(path).status_code == 200
    reply = client.get(path, headers={"host": "evil.example"})
    assert reply.status_code == 400
    message = reply.json()["error"]
    assert message.startswith("request: Host 'evil.example' is not this playground's address (testserver:80)")
    assert "\n" not in message


@pytest.mark.parametrize("host", ["evil.example", "testserver:81", "evil@testserver", "testserver.evil.example",
                                  "testserver:99999", ""])
def test_a_foreign_host_cannot_open_a_tab_or_upload(client, app, host):
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/ws", headers={"host": host}):
            pass
    assert denied.value.status_code == 400 and "request: Host" in denied.value.json()["error"]
    reply = client.post("/api/upload?name=a.csv", content=csv_body(3), headers={"host": host})
    assert reply.status_code == 400
    assert not app.state.hub.sessions and len(app.state.hub.uploads) == 0


@pytest.mark.parametrize("origin", [EVIL, "null", "https://testserver", "http://testserver:81",
                                    "http://testserver.evil.example", "http://evil@testserver", "file://"])
def test_another_sites_page_cannot_open_a_tab(client, app, origin):
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/ws", headers={"origin": origin}):
            pass
    assert denied.value.status_code == 403
    message = denied.value.json()["error"]
    assert message.startswith(f"request: comes from a page at {origin!r}, not from this playground's own page "
                              "(testserver:80), so it was refused")
    assert not app.state.hub.sessions


def test_the_own_page_opens_a_tab(client):
    with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
        assert hello(ws) >= 1


def test_a_cross_origin_text_plain_upload_is_refused(client, app):
    """A form on any site can POST text/plain without a preflight; the upload must not be stored."""
    body = csv_body(3, rows=20)
    reply = client.post("/api/upload?name=a.csv", content=body,
                        headers={"origin": EVIL, "content-type": "text/plain"})
    assert reply.status_code == 403 and "comes from a page at 'http://evil.example'" in reply.json()["error"]
    for kind in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        # Without an Origin too: the page itself sends text/csv, only another site's form sends these.
        reply = client.post("/api/upload?name=a.csv", content=body, headers={"content-type": kind})
        assert reply.status_code == 415 and "send the file with Content-Type: text/csv" in reply.json()["error"]
    assert len(app.state.hub.uploads) == 0
    reply = client.post("/api/upload?name=a.csv", content=body,
                        headers={"origin": "http://testserver", "content-type": "text/csv"})
    assert reply.status_code == 200, reply.text
    assert len(app.state.hub.uploads) == 1


def test_a_loopback_server_answers_to_its_aliases_on_its_port_only(app):
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        for host in ("127.0.0.1:8123", "localhost:8123", "LOCALHOST:8123", "[::1]:8123"):
            assert c.get("/api/options", headers={"host": host}).status_code == 200, host
        for host in ("localhost:8124", "127.0.0.1", "evil.example:8123", "localhost.:8123", "127.0.0.2:8123"):
            assert c.get("/api/options", headers={"host": host}).status_code == 400, host
        with c.websocket_connect("ws://127.0.0.1:8123/ws", headers={"origin": "http://localhost:8123"}) as ws:
            hello(ws)
        with pytest.raises(WebSocketDenialResponse) as denied:
            with c.websocket_connect("ws://127.0.0.1:8123/ws", headers={"origin": "http://localhost:8124"}):
                pass
        assert denied.value.status_code == 403


def test_refusal_of_a_remote_bind_accepts_only_its_address_and_given_names():
    def scope(host, origin=None):
        headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
        return {"type": "http", "server": ("192.168.1.5", 8000), "headers": headers}

    names = ["mybox.lan"]
    assert refusal(scope("192.168.1.5:8000", "http://192.168.1.5:8000"), names) is None
    assert refusal(scope("MyBox.lan:8000", "http://mybox.lan:8000"), names) is None
    assert refusal(scope("localhost:8000"), names)[0] == 400  # not a loopback server: no aliases
    assert refusal(scope("mybox.lan:8000", "http://localhost:8000"), names)[0] == 403
    assert refusal(scope("mybox.lan:8000"), [])[0] == 400
    two_hosts = {"type": "http", "server": ("127.0.0.1", 80), "headers": [(b"host", b"127.0.0.1"), (b"host", b"x")]}
    assert refusal(two_hosts)[0] == 400


@pytest.fixture
def live_server(tmp_path):
    """The app on uvicorn on a free loopback port, as ``torchclf playground`` runs it."""
    import uvicorn

    app = create_app(tmp_path / "runs", max_sessions=2)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive(), 30) and server.started
    yield url_of(sock), sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def test_the_checks_hold_on_a_real_socket(live_server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, port = live_server

    def get(host):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/options", headers={"Host": host})
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        return reply.status, body

    assert get(f"localhost:{port}")[0] == 200
    status, body = get(f"evil.example:{port}")
    assert status == 400 and json.loads(body)["error"].startswith(f"request: Host 'evil.example:{port}' is not")
    ws_url = url.replace("http://", "ws://") + "ws"
    with pytest.raises(InvalidStatus) as denied:
        connect(ws_url, origin=EVIL, open_timeout=10).close()
    assert denied.value.response.status_code == 403
    with connect(ws_url, origin=url.rstrip("/"), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(b"\x00\x01binary")
        assert "binary frame" in json.loads(ws.recv(timeout=10))["message"]
        ws.send("[" * 100_000 + "]" * 100_000)
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps({"type": "explode"}))
        assert "unknown type" in json.loads(ws.recv(timeout=10))["message"]


# ----- bounded work (issue 14, item 1) ---------------------------------------------------
class HeldExecutor:
    """Takes jobs and runs none until the test calls them: a run waiting for a thread."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, owner=None):
        self.jobs.append(fn)
        return Future()


def configured_run(client, ws):
    sid = hello(ws)
    ws.send_json({"type": "configure", "settings": SMALL})
    replies_until(ws, lambda m: m["type"] == "data")
    return client.app.state.hub.sessions[sid].run


def test_a_run_stopped_while_waiting_for_a_thread_never_trains(client):
    with client.websocket_connect("/ws") as ws:
        run = configured_run(client, ws)
        held = HeldExecutor()
        run.play(held)
        run.stop()  # a reset or a closed tab, before a thread picked the run up
        held.jobs[0]()
        assert (run.state, run.rows, run.finished, run.error) == (None, [], True, None)


def test_a_run_stopped_at_its_first_gate_trains_no_epoch(client):
    with client.websocket_connect("/ws") as ws:
        run = configured_run(client, ws)
        held = HeldExecutor()
        run.play(held)
        run.pause()  # the worker will wait at its first gate
        worker = threading.Thread(target=held.jobs[0])
        worker.start()
        assert wait_for(lambda: run.state is not None)
        run.stop()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert (run.state.history, run.rows, run.finished, run.error) == ([], [], True, None)


@pytest.fixture
def held_epochs(monkeypatch):
    """Every epoch waits for ``release`` (up to 30 s); ``entered`` counts epochs begun."""
    real = engine.run_epoch
    entered = threading.Semaphore(0)
    release = threading.Event()
    calls = []

    def held(*args, **kwargs):
        calls.append(1)
        entered.release()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_epoch", held)
    yield entered, release, calls
    release.set()


def test_configure_and_play_ten_times_runs_two_epochs_not_ten(client, held_epochs):
    """A page sending configure+play ten times and closing: two runs at most, then refusals; all over at once."""
    entered, release, calls = held_epochs
    hub = client.app.state.hub
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        for k in range(10):
            ws.send_json({"type": "configure", "settings": {**SMALL, "seed": k}})
            ws.send_json({"type": "play"})
            errors = errors_before_barrier(ws)
            if k < 2:
                assert errors == []
                assert entered.acquire(timeout=20), f"run {k} did not start its epoch"
            else:
                assert errors == ["training: this tab's 2 earlier runs are still finishing their current epoch; "
                                  "press play or step again in a moment"]
    release.set()
    assert wait_for(lambda: hub.executor.live == 0 and not hub.sessions)
    assert len(calls) == 2


def test_runs_of_closed_tabs_count_against_the_total(client, held_epochs):
    entered, release, _ = held_epochs
    hub = client.app.state.hub  # max_sessions=2: 4 training threads
    for tab in range(2):
        with client.websocket_connect("/ws") as ws:
            hello(ws)
            for k in range(2):
                ws.send_json({"type": "configure", "settings": {**SMALL, "seed": 10 * tab + k}})
                ws.send_json({"type": "play"})
                assert errors_before_barrier(ws) == []
                assert entered.acquire(timeout=20)
    # Both tabs closed; their four runs are still inside an epoch.
    assert wait_for(lambda: not hub.sessions) and hub.executor.live == 4
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        ws.send_json({"type": "configure", "settings": SMALL})
        ws.send_json({"type": "play"})
        assert errors_before_barrier(ws) == [
            "training: all 4 training threads of this playground are busy (other tabs, or tabs closed during an "
            "epoch); try again in a moment, or close another tab"]
        release.set()
        assert wait_for(lambda: hub.executor.live == 0)
        ws.send_json({"type": "play"})
        assert errors_before_barrier(ws) == []
        replies_until(ws, lambda m: m["type"] == "tick" and m["epoch"] >= 1)


@pytest.fixture
def held_configure(monkeypatch):
    """A configure message waits for ``release`` (10 s at most) before it is handled; ``handled`` lists all."""
    real = Session.handle
    entered, release = threading.Event(), threading.Event()
    handled = []

    def held(self, message):
        handled.append(message.get("type") if isinstance(message, dict) else message)
        if isinstance(message, dict) and message.get("type") == "configure":
            entered.set()
            release.wait(10)
        return real(self, message)

    monkeypatch.setattr(Session, "handle", held)
    yield entered, release, handled
    release.set()


def test_a_closed_tab_drops_its_waiting_messages(client, held_configure):
    entered, release, handled = held_configure
    hub = client.app.state.hub
    with client.websocket_connect("/ws") as ws:
        session = hub.sessions[hello(ws)]
        ws.send_json({"type": "configure", "settings": SMALL})
        assert entered.wait(10)
        for _ in range(5):
            ws.send_json({"type": "step"})
        ws.close()  # as a browser does: the server learns it after the frames already sent
        threading.Timer(0.3, release.set).start()
        assert wait_for(lambda: not hub.sessions)
        # The configure finished after the tab closed: its new run is stopped and never started.
        assert wait_for(lambda: session.run is not None and session.run.stopped)
        assert handled == ["configure"] and not session.run.started


def test_a_tab_with_too_many_waiting_messages_gets_one_error_each(client, held_configure):
    entered, release, _ = held_configure
    extra = 4
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        ws.send_json({"type": "configure", "settings": SMALL})
        assert entered.wait(10)
        watchdog = threading.Timer(10, release.set)  # on a server that queues without limit, no error comes
        watchdog.start()
        for _ in range(MAX_PENDING + extra):
            ws.send_json({"type": "explode"})
        dropped = [ws.receive_json() for _ in range(extra)]
        assert not release.is_set(), "the refusals came only after the handler was released"
        release.set()
        watchdog.cancel()
        assert [m["message"] for m in dropped] == [
            f"message: {MAX_PENDING} earlier messages are still waiting; this one was dropped, send it again "
            "in a moment"] * extra
        rest = []
        while sum(m["type"] == "error" for m in rest) < MAX_PENDING:
            rest.append(ws.receive_json())
        assert [m["type"] for m in rest if m["type"] != "tick"] == ["data"] + ["error"] * MAX_PENDING
        assert all("unknown type 'explode'" in m["message"] for m in rest if m["type"] == "error")


# ----- frames that are not the page's JSON (issue 14, item 14) ---------------------------------
@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"\x81\xfe binary", "message: a binary frame; the playground's messages are JSON text, reload the page"),
        (b'{"type": "play"}', "message: a binary frame; the playground's messages are JSON text, reload the page"),
        ("[" * 100_000 + "]" * 100_000, f"message: {200_000} characters, more than the limit of {MAX_MESSAGE_CHARS}"),
        ("[" * 30_000 + "]" * 30_000, f"message: JSON nested more than {MAX_DEPTH} levels deep"),
        ('{"type": "save", "name": ' + "[" * 17 + "]" * 17 + "}", f"message: JSON nested more than {MAX_DEPTH}"),
        ('{"type": "select", "index": NaN}', "message: NaN is not a JSON number"),
        ('{"type": "configure", "settings": {"lr": Infinity}}', "message: Infinity is not a JSON number"),
        ("{oops", "message: not valid JSON; reload the page"),
        ("", "message: not valid JSON; reload the page"),
    ],
)
def test_a_hostile_frame_gets_an_error_and_the_socket_stays(client, frame, words):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        if isinstance(frame, bytes):
            ws.send_bytes(frame)
        else:
            ws.send_text(frame)
        reply = ws.receive_json()
        assert reply["type"] == "error" and reply["message"].startswith(words), reply
        ws.send_json({"type": "configure", "settings": SMALL})
        assert replies_until(ws, lambda m: m["type"] != "tick")[-1]["type"] == "data"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)
COMMANDS = st.fixed_dictionaries(
    {"type": st.sampled_from(["configure", "play", "pause", "step", "reset", "select", "save", "", "Play"])},
    optional={"settings": JSON, "index": JSON, "name": JSON},
)
FRAMES = st.one_of(
    JSON.map(lambda v: ("text", json.dumps(v))),
    COMMANDS.map(lambda v: ("text", json.dumps(v))),
    st.text(max_size=40).map(lambda t: ("text", t)),
    st.binary(max_size=64).map(lambda b: ("bytes", b)),
    st.tuples(st.integers(1, 40_000), st.sampled_from("[{")).map(
        lambda d: ("text", (d[1] if d[1] == "[" else '{"a":') * d[0] + ("]" if d[1] == "[" else "}") * d[0])),
)


def _loads_data(kind: str, payload) -> bool:
    """True for a frame the server answers with data: a configure whose settings may all be valid."""
    if kind != "text":
        return False
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, dict) or value.get("type") != "configure":
        return False
    raw = value.get("settings", {})
    return isinstance(raw, dict) and set(raw) <= set(DEFAULTS)


def test_any_frame_gets_one_line_of_error_and_the_socket_stays_usable(client):
    """Property: random JSON values, commands with random fields, text, bytes and deep nesting."""
    with client.websocket_connect("/ws") as ws:
        hello(ws)

        @settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(FRAMES)
        def check(frame):
            kind, payload = frame
            if _loads_data(kind, payload):
                return  # a valid configure; answered with data, not an error
            if kind == "bytes":
                ws.send_bytes(payload)
            else:
                ws.send_text(payload)
            reply = ws.receive_json()
            assert reply["type"] == "error", (frame, reply)
            assert isinstance(reply["message"], str) and reply["message"] and "\n" not in reply["message"]

        check()
        assert errors_before_barrier(ws) == []


# ----- uploads (issue 14, item 4) --------------------------------------------------------------
def test_an_upload_with_too_many_columns_is_refused_before_reading(client, app):
    started = time.perf_counter()
    reply = client.post("/api/upload?name=wide.csv", content=csv_body(5000, rows=2))
    seconds = time.perf_counter() - started
    assert reply.status_code == 400
    assert reply.json()["error"] == ("upload wide.csv: its header row has up to 5000 fields, more than the "
                                     "playground's limit of 1000 columns; upload only the columns to plot and the "
                                     "label column")
    assert seconds < 1.0, f"refusing took {seconds:.2f} s: the file was read"
    # A quoted line break hides the width from the quick count; the table read is checked too.
    hidden = b'"a\nb",' + csv_body(1200, rows=2)
    reply = client.post("/api/upload?name=hidden.csv", content=hidden)
    assert reply.status_code == 400 and reply.json()["error"].startswith("upload hidden.csv: 1201 columns, more than")
    assert client.post("/api/upload?name=ok.csv", content=csv_body(1000, rows=6)).status_code == 200
    assert len(app.state.hub.uploads) == 1


def kept(store, ids) -> list[str]:
    found = []
    for i in ids:
        try:
            found.append(store.get(i).id)
        except TorchclfError:
            pass
    return found


def test_kept_uploads_are_bounded_by_memory_oldest_dropped_first(client, app):
    store = app.state.hub.uploads
    ids = [client.post("/api/upload?name=u.csv", content=csv_body(40, rows=60)).json()["id"]]
    one = store.kept_bytes
    store.max_kept_bytes = int(2.5 * one)  # room for two
    ids += [client.post("/api/upload?name=u.csv", content=csv_body(40, rows=60)).json()["id"] for _ in range(3)]
    assert kept(store, ids) == ids[2:] and store.kept_bytes == 2 * one
    store.max_kept_bytes = one - 1
    reply = client.post("/api/upload?name=big.csv", content=csv_body(40, rows=60))
    assert reply.status_code == 400
    assert reply.json()["error"].startswith(f"upload big.csv: the table takes {one / 1024:.1f} KiB in memory once "
                                            "read, more than the")
    assert kept(store, ids) == ids[2:]


# ----- run names (issue 14, item 18) -------------------------------------------------------------
@pytest.mark.parametrize("name", ["nl\n", "ok\n", "a\nb", "name\r", "x" * 81])
def test_a_run_name_with_a_line_break_is_refused(client, tmp_path, name):
    with client.websocket_connect("/ws") as ws:
        hello(ws)
        ws.send_json({"type": "configure", "settings": SMALL})
        replies_until(ws, lambda m: m["type"] == "data")
        ws.send_json({"type": "step"})
        replies_until(ws, lambda m: m["type"] == "tick" and m["epoch"] == 1 and m["status"] == "paused")
        ws.send_json({"type": "save", "name": name})
        reply = replies_until(ws, lambda m: m["type"] in ("error", "saved"))[-1]
    assert reply["type"] == "error" and "may hold letters, digits" in reply["message"], reply
    runs = tmp_path / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir()] == []

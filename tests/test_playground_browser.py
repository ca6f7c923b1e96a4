"""The playground end to end in real headless Chromium (Debian's package), driven by Playwright.

A real uvicorn server runs in a thread on a free loopback port. The tests
click through the page as a person would: the tutorial's linear model stays
near chance on circles, a ReLU network passes 95%, the saved run is used by
``torchclf predict``, a CSV is uploaded (and bad ones are refused on the
page), and two tabs train at once. Screenshots are kept in each test's
temporary folder.
"""

from __future__ import annotations

import io
import re
import shlex
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from torchclf.data.builtin import load_builtin

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TRAIN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from torchclf.playground.server import bind, create_app, url_of

    runs = tmp_path_factory.mktemp("runs")
    app = create_app(runs, max_upload_bytes=64 * 1024)
    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the playground server did not start"
    yield {"url": url_of(sock), "runs": runs, "hub": app.state.hub}
    srv.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1320, "height": 860})
    yield ctx
    ctx.close()


def open_page(context, server):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server["url"])
    page.wait_for_function("document.getElementById('command').textContent.startsWith('torchclf train')")
    page.js_errors = errors
    return page


def set_value(page, selector: str, value: str) -> None:
    page.locator(selector).fill(value)
    page.locator(selector).dispatch_event("change")


def wait_configured(page, *fragments: str) -> None:
    """Wait until the shown command has every fragment: the server has the new settings."""
    checks = " && ".join(f"t.includes({f!r})" for f in fragments)
    page.wait_for_function(
        f"(() => {{ const t = document.getElementById('command').textContent; return {checks}; }})()")


def train_to_end(page) -> float:
    """Press play, wait for the last epoch, and return the shown test accuracy as a fraction."""
    page.click("#play")
    page.wait_for_function("document.getElementById('status').dataset.status === 'finished'", timeout=TRAIN_TIMEOUT_MS)
    return float(page.inner_text("#test-acc").rstrip("%")) / 100


def painted_fraction(page) -> float:
    """Share of the decision-boundary canvas that is not plain white (the heat map is drawn)."""
    return page.evaluate("""() => {
        const c = document.getElementById('boundary');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let coloured = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) coloured++;
        return coloured / (d.length / 4);
    }""")


def test_linear_stays_near_chance_relu_learns_and_the_run_predicts(context, server, tmp_path):
    page = open_page(context, server)
    page.select_option("#dataset", "circles")
    set_value(page, "#seed", "3")
    page.select_option("#preset", "circle-v0")
    wait_configured(page, "circles:", "--preset circle-v0", "--activation linear", "--seed 3")
    linear = train_to_end(page)
    page.screenshot(path=str(tmp_path / "linear.png"))
    assert 0.35 <= linear <= 0.65, f"a straight line should not separate circles, got {linear:.1%}"
    assert page.inner_text("#epoch") == "100"
    assert painted_fraction(page) > 0.5

    page.select_option("#preset", "default")
    set_value(page, "#epochs", "20")
    wait_configured(page, "--preset default", "--activation relu", "--epochs 20")
    relu = train_to_end(page)
    assert relu >= 0.95, f"ReLU should bend the boundary around the circles, got {relu:.1%}"
    # A test point's numbers are on the page: logits, probabilities, predicted and true label.
    assert re.fullmatch(r"-?\d+\.\d{4}", page.inner_text("#point-logits"))
    assert page.inner_text("#point-predicted") in ("0", "1")
    page.screenshot(path=str(tmp_path / "relu.png"))

    set_value(page, "#run-name", "e2e-relu")
    page.click("#save")
    page.wait_for_selector("#saved-path", timeout=TRAIN_TIMEOUT_MS)
    folder = Path(page.inner_text("#saved-path"))
    assert folder == (server["runs"] / "e2e-relu").resolve() and (folder / "model.safetensors").is_file()
    command = page.inner_text("#command")
    assert f"--out {shlex.quote(str(server['runs'] / 'e2e-relu'))}" in command and "--epochs 20" in command
    page.screenshot(path=str(tmp_path / "saved.png"), full_page=True)

    fresh = "circles:n_samples=200,noise=0.03,seed=11"  # rows the model has never seen
    code, out, err = run_cli("predict", str(folder), fresh)
    assert code == 0, err
    predictions = pd.read_csv(io.StringIO(out))
    truth = load_builtin(fresh)[1].to_numpy()
    assert len(predictions) == 200
    assert (predictions["prediction"].to_numpy() == truth).mean() >= 0.9
    assert not page.js_errors


def _write_csv(path: Path, rows: int = 300) -> Path:
    rng = np.random.default_rng(4)
    left, right = rng.normal(size=rows), rng.normal(size=rows)
    pd.DataFrame({"left": left.round(4), "right": right.round(4), "comment": ["ok"] * rows,
                  "side": np.where(left + right > 0, "up", "down")}).to_csv(path, index=False)
    return path


def test_upload_a_csv_and_bad_files_get_a_message(context, server, tmp_path):
    page = open_page(context, server)
    page.select_option("#dataset", "upload")

    (tmp_path / "notes.txt").write_text("left,right,side\n1,2,up\n")
    page.set_input_files("#upload", str(tmp_path / "notes.txt"))
    page.wait_for_function("document.getElementById('message').textContent.includes('not a .csv file')")
    assert page.is_visible("#message")

    (tmp_path / "words.csv").write_text("a,b,c\nx,y,z\nu,v,w\n")
    page.set_input_files("#upload", str(tmp_path / "words.csv"))
    page.wait_for_function("document.getElementById('message').textContent.includes('numeric')")
    page.screenshot(path=str(tmp_path / "bad-upload.png"))

    (tmp_path / "huge.csv").write_bytes(b"a,b,c\n" + b"1,2,3\n" * 20000)
    page.set_input_files("#upload", str(tmp_path / "huge.csv"))
    page.wait_for_function("document.getElementById('message').textContent.includes('larger than the limit')")

    page.set_input_files("#upload", str(_write_csv(tmp_path / "sides.csv")))
    page.wait_for_function("document.getElementById('upload-info').textContent.includes('300 rows')")
    assert page.input_value("#col-x") == "left" and page.input_value("#col-y") == "right"
    assert page.input_value("#col-target") == "side"
    wait_configured(page, "--target side", "sides-")
    assert page.inner_text("#legend").split() == ["down", "up"]
    assert not page.is_visible("#message")
    for epoch in ("1", "2"):
        page.click("#step")
        page.wait_for_function(f"document.getElementById('epoch').textContent === '{epoch}'")
    assert page.get_attribute("#status", "data-status") == "paused"
    assert page.inner_text("#test-acc").endswith("%")
    page.screenshot(path=str(tmp_path / "upload.png"))
    assert not page.js_errors


def test_two_tabs_train_at_once(context, server, tmp_path):
    hub = server["hub"]
    first, second = open_page(context, server), open_page(context, server)
    assert first.get_attribute("body", "data-session") != second.get_attribute("body", "data-session")
    for page, dataset, seed in ((first, "moons", "1"), (second, "spirals", "2")):
        page.select_option("#dataset", dataset)
        set_value(page, "#seed", seed)
        set_value(page, "#epochs", "3000")
        wait_configured(page, f"{dataset}:", f"--seed {seed}", "--epochs 3000")
    first.click("#play")
    second.click("#play")
    for page in (first, second):
        page.wait_for_function("Number(document.getElementById('epoch').textContent) >= 5", timeout=TRAIN_TIMEOUT_MS)
        assert page.get_attribute("#status", "data-status") == "playing"
    assert len(hub.sessions) == 2
    assert first.inner_text("#legend").split() == ["0", "1"]
    assert second.inner_text("#legend").split() == ["0", "1", "2"]
    first.screenshot(path=str(tmp_path / "tab-moons.png"))
    second.screenshot(path=str(tmp_path / "tab-spirals.png"))

    # Closing a tab stops its training; the other goes on.
    first.close()
    deadline = time.monotonic() + 15
    while len(hub.sessions) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(hub.sessions) == 1
    (remaining,) = hub.sessions.values()
    epoch = int(second.inner_text("#epoch"))
    second.wait_for_function(f"Number(document.getElementById('epoch').textContent) > {epoch}",
                             timeout=TRAIN_TIMEOUT_MS)
    second.click("#pause")
    second.wait_for_function("document.getElementById('status').dataset.status === 'paused'")
    assert remaining.run.status == "paused"
    assert not second.js_errors

"""The playground's web server: one page, a JSON options endpoint, CSV uploads, a WebSocket per tab.

Starlette serves the routes and uvicorn runs them. Each WebSocket is one
:class:`~torchclf.playground.session.Session`; when it closes (the tab is
gone) its training stops. Per socket, a reader task takes frames off the
socket at once (so a closed tab is noticed at once) into a short queue, a
handler task acts on them one at a time in a worker thread, and a sender task
pushes replies at once and, at most every ``SEND_INTERVAL`` seconds, the
training's news. Every frame gets an answer: a binary frame, text that is not JSON,
JSON nested too deeply or a message too long gets a one-line error.

Only the server's own pages may use it: a request whose ``Host`` is not the
server's own address (DNS rebinding) is refused with 400, and one whose
``Origin`` is another site with 403, before any route runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections import deque
from importlib import resources
from pathlib import Path

from torchclf import listen
from torchclf.errors import TorchclfError
from torchclf.listen import is_loopback

SEND_INTERVAL = 0.05
PAGE_FILES = {"playground.js": "text/javascript", "draw.js": "text/javascript", "playground.css": "text/css"}
MAX_MESSAGE_CHARS = 64 * 1024  # the page's largest message, a configure, is well under 1 KiB
MAX_FRAME_BYTES = 1024 * 1024  # uvicorn closes the socket (1009) on larger frames instead of buffering them
MAX_DEPTH = 16  # nesting of JSON arrays and objects; the page needs 3
MAX_PENDING = 8  # messages of one tab waiting for the handler; more are refused
MAX_OUTBOX = 64  # replies waiting to be sent; past this the tab is not reading, so stop reading from it
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Content types a page on another site may POST without asking the server first (no CORS preflight).
SIMPLE_CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_ORIGIN = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[^/?#@]+)")
log = logging.getLogger("torchclf.playground")


def _require_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TorchclfError(
            "playground: its web server is an optional extra; install it with pip install 'torchclf[playground]'"
        ) from None


def _static(name: str) -> str:
    return resources.files("torchclf.playground").joinpath("static", name).read_text(encoding="utf-8")


# ----- whose requests are served -------------------------------------------------------
def _split_host(value: str) -> tuple[str, int | None] | None:
    """The lower-case name (no brackets) and port of ``host[:port]``, or None when malformed."""
    m = _HOST.fullmatch(value)
    if m is None or (m["port"] is not None and int(m["port"]) > 65535):
        return None
    return m["name"].strip("[]").lower(), None if m["port"] is None else int(m["port"])


def own_names(server, hosts=()) -> set[str]:
    """The host names this server answers to: its address, ``hosts``, and the loopback aliases for a loopback one."""
    names = {str(h).strip("[]").lower() for h in hosts}
    if server:
        names.add(str(server[0]).strip("[]").lower())
    names.discard("")
    if any(is_loopback(n) for n in names):
        names.update(LOOPBACK_NAMES)
    return names


def refusal(scope: dict, hosts=()) -> tuple[int, str] | None:
    """Why an ASGI request or WebSocket may not use the playground: (HTTP status, one-line reason), or None.

    The ``Host`` must name this server (``scope["server"]``: address and port,
    or one of ``hosts``), so a foreign name that resolves here (DNS rebinding)
    is refused with 400. An ``Origin``, which browsers send with every
    WebSocket and every POST, must be this server's own page, or 403. Requests
    without an ``Origin`` do not come from another site's page.
    """
    server = scope.get("server")
    port = int(server[1]) if server and server[1] is not None else None
    names = own_names(server, hosts)
    address = "" if not server else f" ({_authority(str(server[0]), port)})"
    headers = scope.get("headers") or []
    hosts_sent = [v.decode("latin-1") for k, v in headers if k.lower() == b"host"]
    if len(hosts_sent) != 1:
        return 400, (f"request: expected one Host header, got {len(hosts_sent)}; open the address the "
                     "playground printed")
    host = _split_host(hosts_sent[0].strip())
    if host is None or host[0] not in names or (port is not None and (host[1] or 80) != port):
        return 400, (f"request: Host {hosts_sent[0][:100]!r} is not this playground's address{address}, so it was "
                     "refused (another site may be reaching it under its own name); open the address the "
                     "playground printed")
    origins = [v.decode("latin-1") for k, v in headers if k.lower() == b"origin"]
    if origins:
        m = _ORIGIN.fullmatch(origins[0].strip()) if len(origins) == 1 else None
        origin = None if m is None or m["scheme"].lower() != "http" else _split_host(m["host"])
        if origin is None or origin[0] not in names or (port is not None and (origin[1] or 80) != port):
            return 403, (f"request: comes from a page at {origins[0][:100]!r}, not from this playground's own "
                         f"page{address}, so it was refused; use the playground at the address it printed")
    return None


def _authority(name: str, port: int | None) -> str:
    name = f"[{name}]" if ":" in name else name
    return name if port is None else f"{name}:{port}"


class OwnPagesOnly:
    """ASGI middleware: answer requests and WebSockets that :func:`refusal` refuses with its status and reason."""

    def __init__(self, app, hosts=()):
        self.app = app
        self.hosts = tuple(hosts)

    async def __call__(self, scope, receive, send) -> None:
        refused = refusal(scope, self.hosts) if scope["type"] in ("http", "websocket") else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        status, reason = refused
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await JSONResponse({"error": reason}, status_code=status)(scope, receive, send)
        else:  # a server without WebSocket denial responses: close before accepting (policy violation)
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})


# ----- the WebSocket protocol --------------------------------------------------------------
def _no_constant(name: str):
    raise TorchclfError(f"message: {name} is not a JSON number; send finite numbers")


def _depth(value) -> int:
    """How deeply arrays and objects nest in a JSON value (0 for a scalar), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode(frame: dict):
    """The JSON value of one ASGI ``websocket.receive`` frame.

    Raises
    ------
    TorchclfError
        For a binary frame, more than ``MAX_MESSAGE_CHARS`` characters, text that
        is not JSON (NaN and Infinity included), or nesting deeper than ``MAX_DEPTH``.
    """
    text = frame.get("text")
    if text is None:
        raise TorchclfError("message: a binary frame; the playground's messages are JSON text, reload the page")
    if len(text) > MAX_MESSAGE_CHARS:
        raise TorchclfError(
            f"message: {len(text)} characters, more than the limit of {MAX_MESSAGE_CHARS}; reload the page"
        )
    too_deep = TorchclfError(f"message: JSON nested more than {MAX_DEPTH} levels deep; reload the page")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise too_deep from None
    except TorchclfError:
        raise
    except ValueError:
        raise TorchclfError("message: not valid JSON; reload the page") from None
    if _depth(value) > MAX_DEPTH:
        raise too_deep
    return value


def create_app(runs_dir: str | Path = "runs", *, max_upload_bytes: int | None = None, max_rows: int | None = None,
               max_sessions: int = 8, hosts=()):
    """The Starlette application.

    Parameters
    ----------
    runs_dir : path
        Where "Save run" writes run folders (and an upload's chosen columns).
    max_upload_bytes, max_rows : int, optional
        Limits for uploaded CSV files (defaults in :mod:`torchclf.playground.uploads`).
    max_sessions : int
        Tabs that may be open at once.
    hosts : iterable of str
        Names the server is reached by besides its address and port (``serve`` passes ``--host``).
    """
    _require_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from torchclf.playground.session import Hub
    from torchclf.playground.settings import options
    from torchclf.playground.uploads import UploadStore

    store = UploadStore()
    if max_upload_bytes is not None:
        store.max_bytes = int(max_upload_bytes)
    if max_rows is not None:
        store.max_rows = int(max_rows)
    hub = Hub(runs_dir, max_sessions=max_sessions, uploads=store)

    async def page(request: Request) -> Response:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-store"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            return JSONResponse({"error": f"{name}: no such file"}, status_code=404)
        return Response(_static(name), media_type=PAGE_FILES[name], headers={"Cache-Control": "no-store"})

    async def get_options(request: Request) -> Response:
        return JSONResponse({**options(), "max_upload_bytes": store.max_bytes, "max_rows": store.max_rows})

    async def upload(request: Request) -> Response:
        name = request.query_params.get("name", "")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in SIMPLE_CONTENT_TYPES:
            # Any site's form or fetch can send these without asking first; the page sends text/csv.
            return JSONResponse({"error": f"upload: Content-Type {kind} is refused (other sites' pages can send "
                                          "it); send the file with Content-Type: text/csv"}, status_code=415)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
            return JSONResponse({"error": str(store.too_large(int(declared)))}, status_code=413)
        body = bytearray()
        # Read at most one byte past the limit, whatever the headers said.
        async for chunk in request.stream():
            body += chunk
            if len(body) > store.max_bytes:
                return JSONResponse({"error": str(store.too_large(len(body)))}, status_code=413)
        try:
            accepted = await run_in_threadpool(store.add, name, bytes(body))
        except TorchclfError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(accepted.describe())

    async def tab(websocket: WebSocket) -> None:
        await websocket.accept()
        loop = asyncio.get_running_loop()
        wake, replied = asyncio.Event(), asyncio.Event()
        outbox: deque[tuple[str, int | None]] = deque()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(wake.set)

        try:
            session = hub.open(notify)
        except TorchclfError as exc:
            await websocket.send_text(json.dumps({"type": "error", "message": str(exc)}))
            await websocket.close(code=1013)
            return

        async def sender() -> None:
            # A run's news is sent only after its "data" message, so the page
            # never drops a heat map for a run it does not know yet. News goes
            # at most every SEND_INTERVAL (the training thread wakes this task
            # on every step); replies go at once.
            cursor: dict = {"run": None}
            news_due = 0.0  # the loop's time before which no news is sent
            while True:
                await wake.wait()
                wake.clear()
                while outbox:
                    text, run_id = outbox.popleft()
                    await websocket.send_text(text)
                    if run_id is not None:
                        cursor = {"run": run_id}
                run = session.run
                if run is not None and run.id == cursor["run"]:
                    if loop.time() < news_due:
                        wake.set()  # news is waiting: look again once it is due
                    else:
                        news = run.tick(cursor)
                        if news is not None:
                            await websocket.send_text(json.dumps(news))
                            news_due = loop.time() + SEND_INTERVAL
                # Until news is due, only a reply ends the pause.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(replied.wait(), max(0.0, news_due - loop.time()))
                replied.clear()

        def post(message: dict) -> None:
            outbox.append((json.dumps(message), message.get("run") if message.get("type") == "data" else None))
            replied.set()
            wake.set()

        # Decoded messages, or the error that answers a frame, in the order they came.
        inbox: deque[tuple[object, dict | None]] = deque()
        work = asyncio.Event()
        closing = False

        def answer(message) -> list[dict]:
            try:
                return session.handle(message)
            except Exception as exc:  # a bug costs one message its answer, not the tab its socket
                log.exception("playground: a message failed")
                first = (str(exc).splitlines() or [""])[0][:200]
                return [{"type": "error", "message": f"message: the server failed on it ({type(exc).__name__}: "
                                                     f"{first}); reload the page"}]
            finally:
                if closing:  # the tab closed while this was handled: stop the run it may have started
                    session.close()

        async def handler() -> None:
            while not closing:
                await work.wait()
                work.clear()
                while inbox and not closing:
                    message, error = inbox.popleft()
                    for reply in [error] if error is not None else await run_in_threadpool(answer, message):
                        post(reply)

        post({"type": "hello", "session": session.id})
        send_task = asyncio.create_task(sender())
        work_task = asyncio.create_task(handler())
        try:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                if frame["type"] != "websocket.receive":
                    continue
                try:
                    item = (decode(frame), None)
                except TorchclfError as exc:
                    item = (None, {"type": "error", "message": str(exc)})
                if len(inbox) >= MAX_PENDING:
                    post({"type": "error", "message": f"message: {MAX_PENDING} earlier messages are still waiting; "
                                                      "this one was dropped, send it again in a moment"})
                else:
                    inbox.append(item)
                    work.set()
                # The tab does not read its replies: stop reading its messages (unless the sender has died,
                # when only reading on will tell that the socket is gone).
                while len(outbox) > MAX_OUTBOX and not send_task.done():
                    await asyncio.sleep(SEND_INTERVAL)
        finally:
            # The tab is gone: drop its waiting messages and stop its training now (a message still
            # being handled stops what it started itself, in answer).
            closing = True
            inbox.clear()
            hub.close(session)
            for task in (work_task, send_task):
                task.cancel()
            for task in (work_task, send_task):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import threading

        from torchclf.playground.session import warm_up

        threading.Thread(target=warm_up, name="torchclf-playground-warm-up", daemon=True).start()
        yield
        await run_in_threadpool(hub.shutdown)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/static/{name}", asset),
            Route("/api/options", get_options),
            Route("/api/upload", upload, methods=["POST"]),
            WebSocketRoute("/ws", tab),
        ],
        middleware=[Middleware(OwnPagesOnly, hosts=hosts)],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app


def bind(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening socket for the playground (see :func:`torchclf.listen.bind`)."""
    return listen.bind(host, port, command="playground", exposure="train and write files here",
                       allow_remote=allow_remote)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(host: str = "127.0.0.1", port: int = 0, *, runs_dir: str | Path = "runs", allow_remote: bool = False,
          max_upload_bytes: int | None = None, open_browser: bool = False, announce=print) -> None:
    """Run the playground until interrupted, printing its address first."""
    _require_extra()
    import uvicorn

    # --host as typed (say "localhost" or a machine's name) is an accepted Host besides the bound address.
    app = create_app(runs_dir, max_upload_bytes=max_upload_bytes, hosts=[host])
    sock = bind(host, port, allow_remote=allow_remote)
    url = url_of(sock)
    announce(f"torchclf playground: {url}  (runs are saved under {Path(runs_dir).resolve()}; Ctrl+C stops)")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_ping_interval=10, ws_ping_timeout=10,
                                           ws_max_size=MAX_FRAME_BYTES))
    server.run(sockets=[sock])

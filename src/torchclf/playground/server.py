"""The playground's web server: one page, a JSON options endpoint, CSV uploads, a WebSocket per tab.

Starlette serves the routes and uvicorn runs them. Each WebSocket is one
:class:`~torchclf.playground.session.Session`; when it closes (the tab is
gone) its training stops. Messages from the page are handled in worker
threads; one sender task per socket pushes replies and, at most every
``SEND_INTERVAL`` seconds, the training's news.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections import deque
from importlib import resources
from pathlib import Path

from torchclf.errors import TorchclfError

SEND_INTERVAL = 0.05
PAGE_FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}


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


def create_app(runs_dir: str | Path = "runs", *, max_upload_bytes: int | None = None, max_rows: int | None = None,
               max_sessions: int = 8):
    """The Starlette application.

    Parameters
    ----------
    runs_dir : path
        Where "Save run" writes run folders (and an upload's chosen columns).
    max_upload_bytes, max_rows : int, optional
        Limits for uploaded CSV files (defaults in :mod:`torchclf.playground.uploads`).
    max_sessions : int
        Tabs that may be open at once.
    """
    _require_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

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
        wake = asyncio.Event()
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
            # never drops a heat map for a run it does not know yet.
            cursor: dict = {"run": None}
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
                    news = run.tick(cursor)
                    if news is not None:
                        await websocket.send_text(json.dumps(news))
                await asyncio.sleep(SEND_INTERVAL)

        def post(message: dict) -> None:
            outbox.append((json.dumps(message), message.get("run") if message.get("type") == "data" else None))
            wake.set()

        post({"type": "hello", "session": session.id})
        send_task = asyncio.create_task(sender())
        try:
            while True:
                text = await websocket.receive_text()
                try:
                    message = json.loads(text)
                except ValueError:
                    post({"type": "error", "message": "message: not valid JSON; reload the page"})
                    continue
                for reply in await run_in_threadpool(session.handle, message):
                    post(reply)
        except WebSocketDisconnect:
            pass
        finally:
            hub.close(session)
            send_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await send_task

    @contextlib.asynccontextmanager
    async def lifespan(app):
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
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening socket on ``host``; port 0 picks a free one.

    Raises
    ------
    TorchclfError
        For a non-loopback ``host`` without ``allow_remote``, or when the port is taken.
    """
    if not is_loopback(host) and not allow_remote:
        raise TorchclfError(
            f"playground --host {host}: not a loopback address, so anyone who can reach this machine could "
            "train and write files here; use --host 127.0.0.1, or add --allow-remote if that is intended"
        )
    if not 0 <= port <= 65535:
        raise TorchclfError(f"playground --port {port}: expected 0 (a free port) to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise TorchclfError(f"playground --host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                            "try another --port, or 0 for a free one") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(host: str = "127.0.0.1", port: int = 0, *, runs_dir: str | Path = "runs", allow_remote: bool = False,
          max_upload_bytes: int | None = None, open_browser: bool = False, announce=print) -> None:
    """Run the playground until interrupted, printing its address first."""
    _require_extra()
    import uvicorn

    app = create_app(runs_dir, max_upload_bytes=max_upload_bytes)
    sock = bind(host, port, allow_remote=allow_remote)
    url = url_of(sock)
    announce(f"torchclf playground: {url}  (runs are saved under {Path(runs_dir).resolve()}; Ctrl+C stops)")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_ping_interval=10, ws_ping_timeout=10))
    server.run(sockets=[sock])

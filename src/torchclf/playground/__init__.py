"""A live playground in the browser: pick data and a network, watch the real engine train it.

``torchclf playground`` starts :func:`~torchclf.playground.server.serve`. The
page talks to one :class:`~torchclf.playground.session.Session` per tab over a
WebSocket; set-up is :func:`torchclf.api.prepare` and training :func:`torchclf.api.fit` with a streaming
callback, and "Save run" writes a normal run folder with
:func:`torchclf.api.write_run`. The web server is the optional extra
``torchclf[playground]``.
"""

from __future__ import annotations

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from torchclf.playground import server

        return getattr(server, name)
    raise AttributeError(f"module 'torchclf.playground' has no attribute {name!r}")

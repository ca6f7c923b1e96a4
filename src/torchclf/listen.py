"""Listening sockets for torchclf's local web servers (the playground and ``serve``): loopback unless allowed."""

from __future__ import annotations

import ipaddress
import socket

from torchclf.errors import TorchclfError


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, *, command: str, exposure: str, allow_remote: bool = False,
         backlog: int = 128) -> socket.socket:
    """A listening socket on ``host``; port 0 picks a free one.

    ``command`` names the command in messages (``serve``); ``exposure`` says
    what a reachable server would let anyone do ("query the models").

    Raises
    ------
    TorchclfError
        For a non-loopback ``host`` without ``allow_remote``, or when the port is taken.
    """
    if not is_loopback(host) and not allow_remote:
        raise TorchclfError(f"{command} --host {host}: not a loopback address, so anyone who can reach this machine "
                            f"could {exposure}; use --host 127.0.0.1, or add --allow-remote if that is intended")
    if not 0 <= port <= 65535:
        raise TorchclfError(f"{command} --port {port}: expected 0 (a free port) to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise TorchclfError(f"{command} --host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                            "try another --port, or 0 for a free one") from None
    sock.listen(backlog)
    return sock

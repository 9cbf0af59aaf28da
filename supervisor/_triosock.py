"""Connecting a trio socket to a Unix stream listener whose queue may be full.

trio's own ``connect`` takes Linux's ``EAGAIN`` (the listener's accept queue is full)
for a connect in progress and reports success on a socket that is not connected; see
:mod:`supervisor._sockutil`. This waits for room instead.
"""

from __future__ import annotations

import socket

import trio

from supervisor._sockutil import pause, try_connect


async def open_unix(address: str) -> trio.socket.SocketType:
    """A trio socket connected to *address*, once the listener has room.

    Bound the wait with a cancel scope; nothing is left open when it is cancelled.

    Raises:
        OSError: the connect failed otherwise, as its errno's subclass
            (FileNotFoundError, ConnectionRefusedError, PermissionError...).
    """
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        attempt = 0
        while not try_connect(raw, address):
            await trio.sleep(pause(attempt))
            attempt += 1
    except BaseException:
        sock.close()
        raise
    return sock

"""Connecting to a Unix stream socket whose listener is busy.

When a listener's accept queue is full, Linux fails a non-blocking (or timed)
``connect(2)`` on an ``AF_UNIX`` stream socket with ``EAGAIN`` instead of waiting,
and the socket stays unconnected; a later connect may succeed. trio reads that
``EAGAIN`` as "in progress" and reports success, so the first ``send`` fails with
``ENOTCONN``. Both helpers here retry instead, with a short growing pause, until
their deadline. FreeBSD waits (or refuses) rather than returning ``EAGAIN``, so
there the first attempt decides.

No trio here: the simulated bhyve uses the blocking forms, and an event loop builds
its wait from :func:`try_connect` and :func:`pause` (:mod:`supervisor._triosock`).
"""

from __future__ import annotations

import errno
import os
import socket
import time

#: First and largest pause between attempts while the listener's queue is full (s).
FIRST_PAUSE = 0.001
MAX_PAUSE = 0.05


def _pauses() -> list[float]:
    out, pause = [], FIRST_PAUSE
    while pause < MAX_PAUSE:
        out.append(pause)
        pause *= 2
    return out


_GROWTH = _pauses()


def pause(attempt: int) -> float:
    """How long to wait before attempt number *attempt* + 1 (counting from 0)."""
    return _GROWTH[attempt] if attempt < len(_GROWTH) else MAX_PAUSE


def try_connect(sock: socket.socket, address: str) -> bool:
    """One connect of the non-blocking *sock*: True once connected, False when the
    listener's queue is full (try again after :func:`pause`).

    Raises:
        OSError: any other failure, as its errno's subclass (FileNotFoundError,
            ConnectionRefusedError, ...).
    """
    err = sock.connect_ex(address)
    if err == 0:
        return True
    if err == errno.EAGAIN:
        return False
    raise OSError(err, f"{os.strerror(err)}: {address}")


def connect_unix(sock: socket.socket, address: str, timeout: float | None) -> None:
    """Connect the blocking or timed *sock* to *address*, retrying a full queue.

    Raises:
        TimeoutError: the listener's queue stayed full for *timeout* seconds.
        OSError: any other connect failure, as :func:`try_connect` raises it.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 0
    while not try_connect(sock, address):
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, f"{address}: listener busy (accept queue full)")
        time.sleep(pause(attempt))
        attempt += 1


def recv_line(sock: socket.socket) -> bytes:
    """Read from the blocking *sock* up to and with a newline; what came before the
    peer closed, if it closed first (so a line not ending in ``\\n`` was cut short)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        line += chunk
    return bytes(line)

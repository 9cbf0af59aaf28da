"""Connecting to a listener whose accept queue is full: wait for room, never a
socket that only looks connected."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor._sockutil import connect_unix, try_connect
from supervisor._triosock import open_unix


def fill_queue(address: str) -> list[socket.socket]:
    """Connect until the listener's queue refuses one more; the connected sockets."""
    held = []
    for _ in range(4096):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        if not try_connect(s, address):
            s.close()
            return held
        held.append(s)
    raise AssertionError("the accept queue never filled")


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[socket.socket, str, list[socket.socket]]]:
    address = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(1)
    held = fill_queue(address)
    yield listener, address, held
    for s in held:
        s.close()
    listener.close()


def test_try_connect_reports_a_full_queue_as_not_yet(
    busy: tuple[socket.socket, str, list[socket.socket]],
) -> None:
    _, address, held = busy
    assert held, "at least one connection fits in the queue"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    with s:
        assert try_connect(s, address) is False


def test_try_connect_raises_the_errno_subclass(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    with s, pytest.raises(FileNotFoundError, match="nothing-here"):
        try_connect(s, str(tmp_path / "nothing-here"))


def test_connect_waits_for_room_and_the_socket_works(
    busy: tuple[socket.socket, str, list[socket.socket]],
) -> None:
    listener, address, held = busy
    served: list[bytes] = []

    def accept_all_later() -> None:
        time.sleep(0.1)
        for h in held:  # the queued ones hang up, so they read as empty below
            h.close()
        listener.settimeout(5)
        while True:
            conn, _ = listener.accept()
            with conn:
                data = conn.recv(16)
                if data:
                    served.append(data)
                    return

    t = threading.Thread(target=accept_all_later)
    t.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.settimeout(5)
        t0 = time.monotonic()
        connect_unix(s, address, 5)
        assert time.monotonic() - t0 >= 0.05  # it did wait for the queue
        s.sendall(b"hello")
        t.join(5)
    assert served == [b"hello"]


def test_connect_gives_up_at_its_timeout_naming_the_cause(
    busy: tuple[socket.socket, str, list[socket.socket]],
) -> None:
    _, address, _ = busy
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.2)
    with s, pytest.raises(TimeoutError, match="accept queue full"):
        connect_unix(s, address, 0.2)


async def test_on_the_event_loop_a_full_queue_is_waited_out_not_taken_for_connected(
    busy: tuple[socket.socket, str, list[socket.socket]],
) -> None:
    listener, address, held = busy
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.2):
            await open_unix(address)
    for h in held:  # room in the queue: the next attempt connects, and the socket works
        h.close()
    while True:
        try:
            listener.setblocking(False)
            listener.accept()[0].close()
        except BlockingIOError:
            break
    with trio.fail_after(5):
        sock = await open_unix(address)
    with sock:
        await sock.send(b"hello")
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(16) == b"hello"

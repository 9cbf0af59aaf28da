"""The client end of a guest console, once ``console.attach`` has made the connection raw.

After the daemon's reply to ``console.attach`` the socket carries the guest's serial line
both ways. Three ways to use it:

* :func:`run_interactive` — a person at a terminal. The terminal goes into raw mode so that
  every key (``^C`` included) reaches the guest; ``^]`` (the escape byte, as in telnet and
  ``cu``) leaves. The terminal's modes are restored however the loop ends.
* :func:`run_piped` — a script. Standard input is sent to the guest until it ends, then
  what the guest writes is still printed for a short *drain* period, because a guest
  answers a command a little after it was typed. Standard input is read in a thread so
  that any readable object works, pipes and files alike.
* :func:`follow` — ``tail -f``: print whatever arrives, send nothing.

Only the standard library is used: the CLI must start fast.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import threading
import time
import tty
from typing import BinaryIO, Final

__all__ = ["ESCAPE", "follow", "run_interactive", "run_piped", "split_at_escape"]

#: ``^]``: leaves an interactive console.
ESCAPE: Final = b"\x1d"

_CHUNK: Final = 65536


def split_at_escape(data: bytes, escape: bytes = ESCAPE) -> tuple[bytes, bool]:
    """What of *data* goes to the guest, and whether the escape byte was typed.

    Everything after the escape byte is dropped: the user asked to leave, and keys typed
    after that were not meant for the guest.
    """
    index = data.find(escape)
    if index < 0:
        return data, False
    return data[:index], True


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_CHUNK)
    except ConnectionResetError:
        return b""


def follow(sock: socket.socket, stdout: BinaryIO, *, initial: bytes = b"") -> int:
    """Copy the guest's output to *stdout* until the daemon closes the stream.

    Returns:
        0, the exit status.
    """
    if initial:
        _write(stdout, initial)
    while data := _recv(sock):
        _write(stdout, data)
    return 0


def run_piped(
    sock: socket.socket,
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    drain: float = 1.0,
    initial: bytes = b"",
) -> int:
    """Send *stdin* to the guest and print its output, until *drain* seconds after EOF.

    The loop also ends when the daemon closes the stream (the guest stopped).

    Args:
        sock: the upgraded connection.
        stdin: what to type into the console; read until it ends.
        stdout: where the guest's output goes.
        drain: how long to keep printing after *stdin* ended, in seconds.
        initial: guest output that arrived together with the attach reply.

    Returns:
        0, the exit status.
    """
    if initial:
        _write(stdout, initial)
    stdin_done = threading.Event()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            while chunk := _read_some(stdin):
                sock.sendall(chunk)
        except OSError as exc:
            # The daemon closed the stream; the main loop notices on its side.
            failure.append(exc)
        finally:
            stdin_done.set()

    # A daemon thread: if the guest goes away while stdin still blocks, we must not hang.
    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    deadline: float | None = None
    while True:
        if deadline is None and stdin_done.is_set():
            deadline = time.monotonic() + max(drain, 0.0)
        wait = 0.05 if deadline is None else deadline - time.monotonic()
        if wait < 0:
            return 0
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            data = _recv(sock)
            if not data:
                return 0
            _write(stdout, data)


def _read_some(stream: BinaryIO) -> bytes:
    # read1 returns what is there (a line typed into a pipe) instead of waiting to fill
    # a whole buffer; plain raw files lack it.
    read1 = getattr(stream, "read1", None)
    if read1 is not None:
        data: bytes = read1(_CHUNK)
        return data
    return stream.read(_CHUNK) or b""


def run_interactive(
    sock: socket.socket,
    *,
    stdin_fd: int,
    stdout_fd: int,
    name: str,
    escape: bytes = ESCAPE,
    initial: bytes = b"",
) -> int:
    """A terminal session on the guest's console; ``^]`` leaves.

    Args:
        sock: the upgraded connection.
        stdin_fd: a terminal; put into raw mode for the session and restored after.
        stdout_fd: where the guest's output goes.
        name: the guest's name, for the greeting.
        escape: the byte that ends the session.
        initial: guest output that arrived together with the attach reply.

    Returns:
        0, the exit status.
    """
    sys.stderr.write(f"Connected to {name} (escape character is ^])\n")
    sys.stderr.flush()
    saved = termios.tcgetattr(stdin_fd)
    try:
        tty.setraw(stdin_fd)
        if initial:
            _write_fd(stdout_fd, initial)
        _interactive_loop(sock, stdin_fd, stdout_fd, escape)
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    sys.stderr.write("\n")
    sys.stderr.flush()
    return 0


def _interactive_loop(sock: socket.socket, stdin_fd: int, stdout_fd: int, escape: bytes) -> None:
    sock_fd = sock.fileno()
    while True:
        ready, _, _ = select.select([sock_fd, stdin_fd], [], [])
        if sock_fd in ready:
            data = _recv(sock)
            if not data:
                return
            _write_fd(stdout_fd, data)
        if stdin_fd in ready:
            typed = os.read(stdin_fd, _CHUNK)
            if not typed:
                return
            to_guest, leave = split_at_escape(typed, escape)
            if to_guest:
                try:
                    sock.sendall(to_guest)
                except OSError:
                    return
            if leave:
                return


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

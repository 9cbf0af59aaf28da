"""The console client: the piped mode end to end, the interactive mode on a real pty."""

from __future__ import annotations

import io
import os
import pty
import socket
import termios
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.cli import console
from tests.cli.test_control import FakeDaemon, Guests, Upgrade, cli, running_daemon


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    with running_daemon() as fake:
        yield fake


@pytest.fixture
def guests(daemon: FakeDaemon) -> Guests:
    return Guests(daemon)


def test_split_at_escape() -> None:
    assert console.split_at_escape(b"ls -l\r") == (b"ls -l\r", False)
    assert console.split_at_escape(b"exit\r\x1dmore") == (b"exit\r", True)
    assert console.split_at_escape(b"\x1d") == (b"", True)
    assert console.split_at_escape(b"a~.b", b"~") == (b"a", True)


class EchoGuest:
    """A guest on the far end of a console stream: prompts, then echoes in upper case."""

    def __init__(self, prompt: bytes = b"login: ") -> None:
        self.prompt = prompt
        self.received = b""
        self.done = threading.Event()

    def __call__(self, sock: socket.socket, rest: bytes) -> None:
        self.received += rest
        sock.sendall(self.prompt)
        try:
            while data := sock.recv(4096):
                self.received += data
                sock.sendall(data.upper())
        except ConnectionResetError:
            pass  # the client left with our echo unread: its close was a reset
        finally:
            self.done.set()


def piped_stdin(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data))


def test_piped_console_sends_stdin_and_prints_the_guest_until_drained(
    daemon: FakeDaemon,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    guest = EchoGuest()
    daemon.handlers["console.attach"] = lambda p: Upgrade({"attached": True, "writer": True}, guest)
    monkeypatch.setattr("sys.stdin", piped_stdin(b"root\nuname -s\n"))
    assert cli(daemon, "console", "web1") == 0
    assert daemon.calls == [("console.attach", {"name": "web1", "mode": "rw"})]
    assert capsysbinary.readouterr().out == b"login: ROOT\nUNAME -S\n"
    # Leaving closed the stream, which the guest side saw as end of input.
    assert guest.done.wait(5)
    assert guest.received == b"root\nuname -s\n"


def test_console_says_when_it_only_got_read_access(
    daemon: FakeDaemon,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    guest = EchoGuest(prompt=b"# ")
    daemon.handlers["console.attach"] = lambda p: Upgrade(
        {"attached": True, "writer": False}, guest
    )
    monkeypatch.setattr("sys.stdin", piped_stdin(b""))
    assert cli(daemon, "console", "--drain", "0", "web1") == 0
    captured = capsysbinary.readouterr()
    assert b"attached read-only" in captured.err


def test_console_of_an_unknown_guest_exits_3(
    daemon: FakeDaemon, guests: Guests, capsys: pytest.CaptureFixture[str]
) -> None:
    def attach(params: dict[str, Any]) -> Any:
        guests.get(params)
        raise AssertionError("unreachable")

    daemon.handlers["console.attach"] = attach
    assert cli(daemon, "console", "ghost") == 3
    assert capsys.readouterr().err == "bhyvesupctl: no guest named 'ghost'\n"


def test_piped_console_ends_when_the_guest_goes_away_even_if_stdin_stays_open() -> None:
    ours, theirs = socket.socketpair()
    read_fd, write_fd = os.pipe()
    out = io.BytesIO()
    try:
        theirs.sendall(b"Uptime: 1s\r\nrebooting...")
        theirs.close()
        with os.fdopen(read_fd, "rb", buffering=0) as stdin:
            assert console.run_piped(ours, stdin, out, initial=b"[early]") == 0
    finally:
        os.close(write_fd)
        ours.close()
    assert out.getvalue() == b"[early]Uptime: 1s\r\nrebooting..."


def test_follow_copies_until_closed() -> None:
    ours, theirs = socket.socketpair()
    out = io.BytesIO()
    theirs.sendall(b"\x1b[2Jboot: ")
    theirs.close()
    with ours:
        assert console.follow(ours, out, initial=b"> ") == 0
    assert out.getvalue() == b"> \x1b[2Jboot: "


def test_interactive_console_is_raw_leaves_on_escape_and_restores_the_terminal() -> None:
    ours, theirs = socket.socketpair()
    master, slave = pty.openpty()
    out_r, out_w = os.pipe()
    before = termios.tcgetattr(slave)
    received = bytearray()

    def guest() -> None:
        theirs.sendall(b"login: ")
        while data := theirs.recv(4096):
            received.extend(data)

    def user() -> None:
        # Type only once the console has shown the prompt, i.e. the terminal is raw.
        seen = b""
        while b"login: " not in seen:
            seen += os.read(out_r, 4096)
        # ^C must reach the guest (raw mode), ^] must not.
        os.write(master, b"root\r\x03\x1dignored")

    threads = [threading.Thread(target=guest), threading.Thread(target=user)]
    for t in threads:
        t.start()
    try:
        status = console.run_interactive(ours, stdin_fd=slave, stdout_fd=out_w, name="web1")
        ours.close()
        for t in threads:
            t.join(10)
        assert status == 0
        assert bytes(received) == b"root\r\x03"
        assert termios.tcgetattr(slave) == before
    finally:
        theirs.close()
        for fd in (master, slave, out_r, out_w):
            os.close(fd)

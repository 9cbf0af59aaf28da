"""The supervisor's console end, on the simulated host: ensure, open, and talk to bhyve's end."""

from __future__ import annotations

import fcntl
import os
import signal
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.errors import HostNotReadyError, InvalidValueError, UnsupportedError
from supervisor.host import FREEBSD, Host
from supervisor.vmm.platform import _nmdm_sim, consolepair
from supervisor.vmm.platform.consolepair import NmdmPath
from supervisor.vmm.sim import nmdm


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    yield Host(root=str(tmp_path))
    nmdm.stop_relay(str(tmp_path))


def open_bhyve_end(host: Host, a_path: str) -> int:
    """Open the A end the way bhyve does: non-blocking, raw, CLOCAL."""
    fd = os.open(host.path(a_path), os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ICANON)
    attrs[2] |= termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


async def receive_exactly(stream: trio.lowlevel.FdStream, size: int) -> bytes:
    got = bytearray()
    with trio.fail_after(10):
        while len(got) < size:
            got += await stream.receive_some(size - len(got))
    return bytes(got)


@pytest.mark.parametrize(
    ("path", "pair", "end"),
    [
        ("/dev/nmdm0A", "nmdm0", "A"),
        ("/dev/nmdm0B", "nmdm0", "B"),
        ("/dev/nmdm-web1.1B", "nmdm-web1.1", "B"),
        ("/dev/nmdmxA", "nmdmx", "A"),
    ],
)
def test_nmdm_paths_split_into_pair_and_end(path: str, pair: str, end: str) -> None:
    parsed = consolepair.parse_nmdm_path(path)
    assert parsed == NmdmPath(pair, end)  # type: ignore[arg-type]
    assert parsed.path == path
    assert parsed.peer.peer == parsed
    assert {parsed.end, parsed.peer.end} == {"A", "B"}


def test_an_overlong_nmdm_name_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="at most 255 bytes"):
        consolepair.parse_nmdm_path("/dev/nmdm" + "x" * 251 + "B")


async def test_the_supervisor_talks_to_bhyve_through_its_end(host: Host) -> None:
    await consolepair.ensure_pair(host, "/dev/nmdm-web1.1B")
    a = open_bhyve_end(host, "/dev/nmdm-web1.1A")
    b = consolepair.open_console(host, "/dev/nmdm-web1.1B")
    async with trio.lowlevel.FdStream(b) as console:
        banner = b"FreeBSD/amd64 (web1) (ttyu0)\r\n\r\nlogin: "
        os.write(a, banner)
        assert await receive_exactly(console, len(banner)) == banner
        await console.send_all(b"root\r\x03\x7f")
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(a)
        assert os.read(a, 100) == b"root\r\x03\x7f"
    os.close(a)


def test_the_supervisor_end_is_raw_clocal_nonblocking_and_not_our_tty(host: Host) -> None:
    trio.run(consolepair.ensure_pair, host, "/dev/nmdm0B")
    b = consolepair.open_console(host, "/dev/nmdm0B")
    try:
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(b)
        assert cflag & termios.CLOCAL
        assert cflag & termios.CSIZE == termios.CS8
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        assert not iflag & (termios.ICRNL | termios.IXON | termios.ISTRIP)
        assert not oflag & termios.OPOST
        assert cc[termios.VMIN] == 1
        assert fcntl.fcntl(b, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(b, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with open("/proc/self/stat") as f:
            controlling_tty = int(f.read().rpartition(")")[2].split()[4])
        assert controlling_tty != os.fstat(b).st_rdev
    finally:
        os.close(b)


async def test_bhyve_going_away_does_not_hang_up_the_supervisor_end(host: Host) -> None:
    await consolepair.ensure_pair(host, "/dev/nmdm0B")
    b = consolepair.open_console(host, "/dev/nmdm0B")
    async with trio.lowlevel.FdStream(b) as console:
        a = open_bhyve_end(host, "/dev/nmdm0A")
        os.write(a, b"first boot\n")
        assert await receive_exactly(console, 11) == b"first boot\n"
        os.close(a)  # bhyve exits

        # Our end neither reads EOF nor refuses writes while no bhyve runs...
        with trio.move_on_after(0.2) as idle:
            data = await console.receive_some(100)
            pytest.fail(f"the console read {data!r} with no bhyve behind it")
        assert idle.cancelled_caught
        await console.send_all(b"typed while down\n")  # where it goes is bhyve's business

        # ...and the next bhyve is heard on the same descriptor.
        await consolepair.ensure_pair(host, "/dev/nmdm0B")
        a = open_bhyve_end(host, "/dev/nmdm0A")
        os.write(a, b"second boot\n")
        assert await receive_exactly(console, 12) == b"second boot\n"
        await console.send_all(b"root\r")
        typed = b""
        with trio.fail_after(10):
            while not typed.endswith(b"root\r"):
                await trio.lowlevel.wait_readable(a)
                typed += os.read(a, 100)
        os.close(a)


async def test_bad_names_are_refused_before_anything_starts(host: Host) -> None:
    with pytest.raises(InvalidValueError, match="'/dev/ttyu0'"):
        await consolepair.ensure_pair(host, "/dev/ttyu0")
    with pytest.raises(InvalidValueError, match="'/dev/nmdm0C'"):
        consolepair.open_console(host, "/dev/nmdm0C")
    assert nmdm.relay_pid(host.root) is None


def test_opening_an_end_that_was_never_ensured_names_it(host: Host) -> None:
    with pytest.raises(HostNotReadyError, match=r"/dev/nmdm7B: no such device"):
        consolepair.open_console(host, "/dev/nmdm7B")


def test_a_node_that_is_not_a_terminal_is_refused(host: Host) -> None:
    (Path(host.root) / "dev").mkdir()
    Path(host.path("/dev/nmdm0B")).write_text("")
    with pytest.raises(HostNotReadyError, match="/dev/nmdm0B: not a terminal"):
        consolepair.open_console(host, "/dev/nmdm0B")


async def test_a_real_freebsd_host_is_not_this_machine() -> None:
    with pytest.raises(UnsupportedError, match="/dev/nmdm0B"):
        await consolepair.ensure_pair(FREEBSD, "/dev/nmdm0B")


async def test_with_the_relay_running_a_pair_costs_no_thread(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")  # starts the relay

    async def no_threads(*args: object, **kw: object) -> None:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)
    for i in range(5):
        await consolepair.ensure_pair(host, f"/dev/nmdm-b{i}.1B")
    assert {f"/dev/nmdm-b{i}.1A" for i in range(5)} <= set(nmdm.list_pairs(host.root))
    os.close(consolepair.open_console(host, "/dev/nmdm-b3.1B"))


async def kill_relay(host: Host) -> int:
    """kill -9 the host's relay and wait until it has gone; its pid."""
    pid = nmdm.relay_pid(host.root)
    assert pid is not None
    os.kill(pid, 9)  # its socket file stays behind: connecting is refused
    with trio.fail_after(20):
        while nmdm.relay_pid(host.root) is not None:  # noqa: ASYNC110 - another process
            await trio.sleep(0.05)
    return pid


async def test_a_dead_relay_is_replaced(host: Host) -> None:
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")
    pid = await kill_relay(host)
    await consolepair.ensure_pair(host, "/dev/nmdm-c.1B")
    assert nmdm.relay_pid(host.root) not in (None, pid)
    os.close(consolepair.open_console(host, "/dev/nmdm-c.1B"))


async def test_a_session_keeps_working_when_its_relay_dies(host: Host) -> None:
    # The daemon's requests share one connection; a relay killed under it (its link
    # now dead) must cost the next guest nothing but a new relay.
    async with consolepair.session(host):
        await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")
        await consolepair.ensure_pair(host, "/dev/nmdm-b.1B")
        pid = await kill_relay(host)
        await consolepair.ensure_pair(host, "/dev/nmdm-c.1B")
        assert nmdm.relay_pid(host.root) not in (None, pid)
        os.close(consolepair.open_console(host, "/dev/nmdm-c.1B"))
        await consolepair.ensure_pair(host, "/dev/nmdm-d.1B")
    assert {"/dev/nmdm-c.1A", "/dev/nmdm-d.1A"} <= set(nmdm.list_pairs(host.root))


async def test_a_session_shares_one_connection(host: Host) -> None:
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")  # starts the relay
    pid = nmdm.relay_pid(host.root)

    def connections() -> int:
        # The relay's sockets: its listener plus one per client connection.
        return sum(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )

    async with consolepair.session(host):
        for i in range(5):
            await consolepair.ensure_pair(host, f"/dev/nmdm-s{i}.1B")
        during = connections()
    assert during == 2  # the listener and the session's connection


async def test_a_session_answers_guests_starting_together(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host's guests start at once: their requests go over the session's one
    # connection, none falling back to a connection of its own.
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")  # starts the relay

    async def no_lone_requests(*args: object) -> None:
        raise AssertionError("a request left the session's connection")

    monkeypatch.setattr(_nmdm_sim, "_ask_running_relay", no_lone_requests)
    async with consolepair.session(host), trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(consolepair.ensure_pair, host, f"/dev/nmdm-t{i}.1B")
    assert {f"/dev/nmdm-t{i}.1A" for i in range(60)} <= set(nmdm.list_pairs(host.root))


async def test_a_request_cancelled_mid_exchange_spoils_no_other(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A launch cancelled while its request is on the wire (a guest destroyed as it
    # starts): the answer still to come must not be taken for another guest's, and the
    # guests queued behind it get their pairs over the session's next connection.
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")
    relay = nmdm.relay_pid(host.root)
    assert relay is not None

    async def no_lone_requests(*args: object) -> None:
        raise AssertionError("a request left the session's connection")

    async with consolepair.session(host):
        await consolepair.ensure_pair(host, "/dev/nmdm-warm.1B")  # the link is up
        monkeypatch.setattr(_nmdm_sim, "_ask_running_relay", no_lone_requests)
        first = trio.CancelScope()

        async def cancelled() -> None:
            with first:
                await consolepair.ensure_pair(host, "/dev/nmdm-x.1B")

        os.kill(relay, signal.SIGSTOP)  # the answer stays on the way
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(10):
                    nursery.start_soon(consolepair.ensure_pair, host, f"/dev/nmdm-y{i}.1B")
                await trio.testing.wait_all_tasks_blocked()
                first.cancel()
                await trio.testing.wait_all_tasks_blocked()
                os.kill(relay, signal.SIGCONT)
        finally:
            os.kill(relay, signal.SIGCONT)
        assert first.cancelled_caught
    for i in range(10):
        os.close(consolepair.open_console(host, f"/dev/nmdm-y{i}.1B"))


async def test_pairs_prepared_together_need_no_request_each(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon's autostart prepares every guest's pair in one request; each guest's
    # own ensure then asks nothing, unless its pair has gone since.
    await consolepair.ensure_pair(host, "/dev/nmdm-a.1B")  # starts the relay
    paths = [f"/dev/nmdm-p{i}.1B" for i in range(40)]
    async with consolepair.session(host):
        await consolepair.ensure_pairs(host, [*paths, "/dev/not-a-console"])
        assert {p[:-1] + "A" for p in paths} <= set(nmdm.list_pairs(host.root))
        asked: list[dict[str, str]] = []
        real_ask = _nmdm_sim._Link.ask_all

        async def counting(self: _nmdm_sim._Link, requests: list[dict[str, str]]) -> object:
            asked.extend(requests)
            return await real_ask(self, requests)

        monkeypatch.setattr(_nmdm_sim._Link, "ask_all", counting)
        for path in paths:
            await consolepair.ensure_pair(host, path)
            os.close(consolepair.open_console(host, path))
        assert asked == []
        # A pair torn down behind the session's back is made again, not taken as made.
        nmdm.destroy_pair(host.root, paths[7])
        await consolepair.ensure_pair(host, paths[7])
        assert [r["path"] for r in asked] == [paths[7]]
        os.close(consolepair.open_console(host, paths[7]))


async def test_preparing_pairs_on_freebsd_does_nothing() -> None:
    # devfs makes a pair on its first open; a lookup now would only leave litter.
    await consolepair.ensure_pairs(FREEBSD, ["/dev/nmdm0B", "/dev/nmdm1B"])

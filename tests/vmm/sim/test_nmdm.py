"""The simulated host's nmdm pairs: real ptys, a real relay process, real opens by path."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.errors import InvalidValueError
from supervisor.vmm.platform._nmdm import make_raw
from supervisor.vmm.sim import nmdm

#: How long a test waits for bytes that must come before calling it a failure.
PATIENCE = 10.0


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    sim = tmp_path / "sim"
    sim.mkdir()
    yield str(sim)
    nmdm.stop_relay(str(sim))


def open_end(root: str, name: str, *, nonblock: bool = False) -> int:
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0)
    fd = os.open(os.path.join(root, "dev", name), flags)
    make_raw(fd)
    return fd


def read_exactly(fd: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        ready, _, _ = select.select([fd], [], [], PATIENCE)
        assert ready, f"only {len(got)} of {size} bytes arrived"
        got += os.read(fd, size - len(got))
    return bytes(got)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        select.select([], [fd], [], PATIENCE)
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            pass


def gone(pid: int) -> bool:
    # The machine's init may leave orphans unreaped: a zombie has gone too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("/dev/nmdmA", "at least one character"),
        ("/dev/nmdm01", "end in 'A' or 'B'"),
        ("/dev/nmdm0a", "end in 'A' or 'B'"),
        ("/dev/ttyu0", "'nmdm'"),
        ("/dev/pts/nmdm0A", "directly under /dev"),
        ("/tmp/nmdm0A", "directly under /dev"),
        ("nmdm0A", "directly under /dev"),
    ],
)
def test_names_outside_the_cloning_rule_are_refused(root: str, path: str, complaint: str) -> None:
    with pytest.raises(InvalidValueError, match=complaint) as info:
        nmdm.ensure_pair(root, path)
    assert repr(path) in str(info.value)
    assert nmdm.relay_pid(root) is None


def test_a_lookup_of_either_end_creates_both(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm-web1.1B")
    assert nmdm.list_pairs(root) == ["/dev/nmdm-web1.1A", "/dev/nmdm-web1.1B"]
    for end in "AB":
        node = os.path.join(root, "dev", f"nmdm-web1.1{end}")
        st = os.stat(node)
        assert stat.S_ISCHR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    # A second lookup of the other end finds the same pair.
    before = os.readlink(os.path.join(root, "dev", "nmdm-web1.1A"))
    nmdm.ensure_pair(root, "/dev/nmdm-web1.1A")
    assert os.readlink(os.path.join(root, "dev", "nmdm-web1.1A")) == before
    assert nmdm.list_pairs(root) == ["/dev/nmdm-web1.1A", "/dev/nmdm-web1.1B"]


def test_bytes_cross_both_ways_unchanged(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    a = open_end(root, "nmdm0A", nonblock=True)
    b = open_end(root, "nmdm0B")
    try:
        every_byte = bytes(range(256)) * 64
        write_all(a, every_byte)
        assert read_exactly(b, len(every_byte)) == every_byte
        write_all(b, every_byte[::-1])
        assert read_exactly(a, len(every_byte)) == every_byte[::-1]
        # Line endings, ^C, ^D and XON/XOFF are data, not control.
        write_all(a, b"\r\n\x03\x04\x11\x13\x1b]")
        assert read_exactly(b, 8) == b"\r\n\x03\x04\x11\x13\x1b]"
    finally:
        os.close(a)
        os.close(b)


def test_a_large_transfer_arrives_whole(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    a = open_end(root, "nmdm0A")
    b = open_end(root, "nmdm0B")
    payload = os.urandom(8 * 1024 * 1024)
    writer = threading.Thread(target=write_all, args=(a, payload))
    writer.start()
    try:
        assert read_exactly(b, len(payload)) == payload
    finally:
        writer.join()
        os.close(a)
        os.close(b)


def test_reader_closes_and_comes_back_while_the_writer_carries_on(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    a = open_end(root, "nmdm0A", nonblock=True)  # as bhyve opens it
    b = open_end(root, "nmdm0B")
    try:
        write_all(a, b"hello\n")
        assert read_exactly(b, 6) == b"hello\n"
        os.close(b)

        # Nobody reads B now. The writer is never blocked: once the queues are full
        # its writes fail with EAGAIN and it drops output, as bhyve does.
        accepted = bytearray()
        refused = 0
        record = 0
        while refused < 100 and len(accepted) < 64 * 1024 * 1024:
            chunk = b"%015d\n" % record
            try:
                n = os.write(a, chunk)
            except BlockingIOError:
                refused += 1
                continue
            accepted += chunk[:n]
            record += 1
        assert refused == 100, "the writer was never pushed back"
        assert 0 < len(accepted) <= nmdm.BUFFER_LIMIT + 1024 * 1024

        # The reader comes back and gets everything that was accepted, in order.
        b = open_end(root, "nmdm0B")
        assert read_exactly(b, len(accepted)) == bytes(accepted)
        write_all(a, b"still here\n")
        assert read_exactly(b, 11) == b"still here\n"
        # And the other direction still works too.
        write_all(b, b"keys")
        assert read_exactly(a, 4) == b"keys"
    finally:
        os.close(a)
        os.close(b)


def test_an_end_opens_by_path_from_another_process(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm1B")
    a = open_end(root, "nmdm1A")
    try:
        script = (
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)\n"
            "os.write(fd, b'login: ')\n"
            "os.close(fd)\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, os.path.join(root, "dev", "nmdm1B")],
            check=True,
            timeout=PATIENCE,
        )
        assert read_exactly(a, 7) == b"login: "
    finally:
        os.close(a)


def test_the_relay_outlives_the_process_that_started_it(root: str) -> None:
    script = (
        "import os, signal, sys\n"
        "from supervisor.vmm.sim import nmdm\n"
        "nmdm.ensure_pair(sys.argv[1], '/dev/nmdm2A')\n"
        "print(nmdm.relay_pid(sys.argv[1]), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, root], capture_output=True, timeout=PATIENCE, check=False
    )
    assert done.returncode == -signal.SIGKILL
    pid = int(done.stdout)
    assert not gone(pid)
    assert nmdm.relay_pid(root) == pid
    nmdm.ensure_pair(root, "/dev/nmdm2B")
    assert nmdm.relay_pid(root) == pid, "a second relay was started"
    a = open_end(root, "nmdm2A")
    b = open_end(root, "nmdm2B")
    try:
        write_all(b, b"ping")
        assert read_exactly(a, 4) == b"ping"
    finally:
        os.close(a)
        os.close(b)


def test_simultaneous_first_lookups_share_one_relay(root: str) -> None:
    script = "import sys\nfrom supervisor.vmm.sim import nmdm\nnmdm.ensure_pair(*sys.argv[1:])\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, root, f"/dev/nmdm{i}A"]) for i in range(4)
    ]
    assert [p.wait(timeout=PATIENCE) for p in procs] == [0, 0, 0, 0]
    assert nmdm.list_pairs(root) == [f"/dev/nmdm{i}{e}" for i in range(4) for e in "AB"]
    pid = nmdm.relay_pid(root)
    assert pid is not None
    others = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and int(p.name) != pid and not gone(int(p.name))
        if _cmdline(p).count(root) and "serve" in _cmdline(p)
    ]
    assert others == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_an_idle_relay_does_not_spin(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    nmdm.ensure_pair(root, "/dev/nmdm1A")
    # An end that was opened and closed again is where a pty master would report
    # hangup forever; nmdm1 has one of those on each side, nmdm0 was never opened.
    os.close(open_end(root, "nmdm1A"))
    os.close(open_end(root, "nmdm1B"))
    pid = nmdm.relay_pid(root)
    assert pid is not None
    before = cpu_ticks(pid)
    threading.Event().wait(1.0)
    used = cpu_ticks(pid) - before
    # A spinning relay burns ~100 ticks a second; an idle one none.
    assert used <= 10, f"the idle relay used {used} ticks in one second"


def test_destroying_a_pair_hangs_up_its_holders(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    nmdm.ensure_pair(root, "/dev/nmdm1A")
    b = open_end(root, "nmdm0B")
    try:
        nmdm.destroy_pair(root, "/dev/nmdm0A")
        ready, _, _ = select.select([b], [], [], PATIENCE)
        assert ready
        try:
            data = os.read(b, 100)
        except OSError as exc:
            data = exc.strerror.encode() if exc.strerror else b"error"
        assert data in (b"", b"Input/output error")
    finally:
        os.close(b)
    assert not os.path.lexists(os.path.join(root, "dev", "nmdm0A"))
    assert not os.path.lexists(os.path.join(root, "dev", "nmdm0B"))
    assert nmdm.list_pairs(root) == ["/dev/nmdm1A", "/dev/nmdm1B"]
    nmdm.destroy_pair(root, "/dev/nmdm0A")  # already gone: nothing to do


def test_stopping_the_relay_leaves_no_process_and_no_nodes(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    pid = nmdm.relay_pid(root)
    assert pid is not None
    nmdm.stop_relay(root)
    assert gone(pid)
    assert nmdm.relay_pid(root) is None
    assert nmdm.list_pairs(root) == []
    assert [p for p in os.listdir(os.path.join(root, "dev")) if p.startswith("nmdm")] == []
    nmdm.stop_relay(root)  # nothing left to stop


def test_a_killed_relay_is_replaced_and_its_nodes_cleaned(root: str) -> None:
    nmdm.ensure_pair(root, "/dev/nmdm0A")
    pid = nmdm.relay_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    nmdm.stop_relay(root)  # waits for it to be gone, removes what it left
    assert gone(pid)
    nmdm.ensure_pair(root, "/dev/nmdm1A")
    assert nmdm.relay_pid(root) not in (None, pid)
    assert nmdm.list_pairs(root) == ["/dev/nmdm1A", "/dev/nmdm1B"]
    assert not os.path.lexists(os.path.join(root, "dev", "nmdm0A"))


def test_a_relay_whose_host_was_deleted_goes_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = tmp_path / "doomed"
    sim.mkdir()
    monkeypatch.setenv("BHYVESIM_ORPHAN_CHECK", "0.05")
    nmdm.ensure_pair(str(sim), "/dev/nmdm0A")
    pid = nmdm.relay_pid(str(sim))
    assert pid is not None
    subprocess.run(["rm", "-rf", str(sim)], check=True)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], PATIENCE)
    finally:
        os.close(pidfd)
    assert ready, "the relay of a deleted host is still running"

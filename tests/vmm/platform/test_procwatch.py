"""Watching processes that are not our children, and reading how they ended."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.errors import InvalidValueError
from supervisor.host import Host
from supervisor.vmm.platform import procwatch
from supervisor.vmm.platform.procwatch import UNKNOWN, ExitInfo

# A helper that leaves a grandchild behind and exits, so the grandchild belongs to
# init, not to the test: the position of a bhyve adopted after a daemon restart. The
# grandchild waits for a byte on the inherited pipe, then ends as told, writing its
# status file first the way the simulated bhyve does.
ORPHAN = r"""
import os, signal, sys
status_file, go, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.fork():
    os._exit(0)
os.setsid()
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
# Let go of the helper's output so that whoever reads it sees its end now.
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.read(go, 1)
kind, _, number = how.partition(" ")
if kind != "silent":
    with open(status_file % os.getpid(), "w") as f:
        f.write(how + "\n")
if kind == "signal":
    signal.signal(int(number), signal.SIG_DFL)
    os.kill(os.getpid(), int(number))
os._exit(int(number) if kind == "exit" else 0)
"""


@pytest.fixture
def host(tmp_path: Path) -> Host:
    (tmp_path / "var" / "run" / "bhyvesim").mkdir(parents=True)
    return Host(root=str(tmp_path))


class Orphan:
    """A process that is nobody's child here; it ends when :meth:`release` is called."""

    def __init__(self, host: Host, how: str) -> None:
        self.host = host
        go_read, self.go = os.pipe()
        status_file = host.path(procwatch.STATUS_DIR) + "/%d.status"
        try:
            out = subprocess.run(
                [sys.executable, "-c", ORPHAN, status_file, str(go_read), how],
                pass_fds=[go_read],
                capture_output=True,
                check=True,
                timeout=30,
            )
        finally:
            os.close(go_read)
        self.pid = int(out.stdout)

    def release(self) -> None:
        os.write(self.go, b"x")

    def close(self) -> None:
        os.close(self.go)


async def watch_until_released(host: Host, orphan: Orphan) -> ExitInfo:
    outcome: list[ExitInfo] = []

    async def watch() -> None:
        outcome.append(await procwatch.wait_for_exit(host, orphan.pid))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == [], "the watcher returned while the process was running"
        orphan.release()
    return outcome[0]


def test_the_orphan_is_not_our_child(host: Host) -> None:
    orphan = Orphan(host, "exit 0")
    try:
        with pytest.raises(ChildProcessError):
            os.waitpid(orphan.pid, os.WNOHANG)
        assert procwatch.pid_alive(orphan.pid)
    finally:
        orphan.release()
        orphan.close()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("exit 1", ExitInfo.exited(1)),
        ("exit 0", ExitInfo.exited(0)),
        ("exit 4", ExitInfo.exited(4)),
        ("signal 15", ExitInfo.killed(15)),
    ],
)
async def test_a_non_child_exit_is_reported_with_its_status(
    host: Host, how: str, expected: ExitInfo
) -> None:
    orphan = Orphan(host, how)
    try:
        assert await watch_until_released(host, orphan) == expected
    finally:
        orphan.close()
    assert not procwatch.pid_alive(orphan.pid)
    # The status file is consumed: the pid's next holder must not inherit it.
    assert not os.path.exists(host.path(procwatch.status_path(orphan.pid)))


async def test_a_process_that_left_no_status_ended_for_an_unknown_reason(host: Host) -> None:
    orphan = Orphan(host, "silent 0")
    try:
        assert await watch_until_released(host, orphan) == UNKNOWN
    finally:
        orphan.close()


async def test_sigkill_leaves_the_reason_unknown(host: Host) -> None:
    orphan = Orphan(host, "exit 1")
    try:
        async with trio.open_nursery() as nursery:
            outcome: list[ExitInfo] = []

            async def watch() -> None:
                outcome.append(await procwatch.wait_for_exit(host, orphan.pid))

            nursery.start_soon(watch)
            await trio.testing.wait_all_tasks_blocked()
            os.kill(orphan.pid, signal.SIGKILL)
        assert outcome == [UNKNOWN]
        assert not outcome[0].known
        assert outcome[0].code is None
        assert outcome[0].signal is None
    finally:
        orphan.close()


async def test_watching_a_process_that_has_already_ended_returns_at_once(host: Host) -> None:
    orphan = Orphan(host, "exit 2")
    try:
        assert await watch_until_released(host, orphan) == ExitInfo.exited(2)
        # Watching it again: it has gone, and its status was taken by the first watch.
        assert await procwatch.wait_for_exit(host, orphan.pid) == UNKNOWN
    finally:
        orphan.close()


async def test_a_cancelled_watch_leaves_the_process_alone(host: Host) -> None:
    orphan = Orphan(host, "exit 1")
    try:
        with trio.move_on_after(0) as scope:
            await procwatch.wait_for_exit(host, orphan.pid)
        assert scope.cancelled_caught
        assert procwatch.pid_alive(orphan.pid)
        assert await watch_until_released(host, orphan) == ExitInfo.exited(1)
    finally:
        orphan.close()


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pidfd = os.pidfd_open(child.pid)
    try:
        select.select([pidfd], [], [], 30)  # ended, not yet reaped
        assert not procwatch.pid_alive(child.pid)
    finally:
        os.close(pidfd)
        child.wait()
    assert not procwatch.pid_alive(child.pid)
    assert procwatch.pid_alive(os.getpid())


@pytest.mark.parametrize("pid", [0, -1, -4242, True])
async def test_pids_that_name_groups_are_refused(host: Host, pid: int) -> None:
    with pytest.raises(InvalidValueError, match="pid: must be an integer > 0"):
        procwatch.pid_alive(pid)
    with pytest.raises(InvalidValueError, match="pid"):
        await procwatch.wait_for_exit(host, pid)
    with pytest.raises(InvalidValueError, match="pid"):
        await procwatch.process_title(host, pid)


async def test_process_title_is_the_argv0_the_process_runs_under(host: Host) -> None:
    child = await trio.lowlevel.open_process(
        ["bhyve: web1", "-c", "import sys; print(flush=True); sys.stdin.read()"],
        executable=sys.executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        # The exec may still be under way when the process is created; the line it
        # prints says it is done.
        assert await child.stdout.receive_some(1) == b"\n"
        assert await procwatch.process_title(host, child.pid) == "bhyve: web1"
    finally:
        await child.stdin.aclose()
        await child.wait()
        await child.stdout.aclose()
    assert await procwatch.process_title(host, child.pid) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, ExitInfo.exited(0)),
        (0x0100, ExitInfo.exited(1)),
        (0x0400, ExitInfo.exited(4)),
        (0x6400, ExitInfo.exited(100)),
        (0x000F, ExitInfo.killed(15)),
        (0x0009, ExitInfo.killed(9)),
        (0x0086, ExitInfo.killed(6)),  # SIGABRT with a core dump
    ],
)
def test_wait_statuses_decode_to_exit_or_signal(status: int, expected: ExitInfo) -> None:
    assert procwatch.decode_wait_status(status) == expected


@pytest.mark.parametrize("status", [0x137F, 0xFFFF])
def test_a_stopped_or_continued_status_is_not_an_exit(status: int) -> None:
    with pytest.raises(InvalidValueError, match=hex(status)):
        procwatch.decode_wait_status(status)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("exit 3\n", ExitInfo.exited(3)),
        ("exit 0", ExitInfo.exited(0)),
        ("signal 9\n", ExitInfo.killed(9)),
        ("", UNKNOWN),
        ("\n", UNKNOWN),
    ],
)
def test_status_files_parse(text: str, expected: ExitInfo) -> None:
    assert procwatch.parse_status_text(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("exit", "expected 'exit N' or 'signal N'"),
        ("exit -1", "expected"),
        ("exited 1", "expected"),
        ("exit 1 2", "expected"),
        ("signal SIGTERM", "expected"),
        ("exit \uff13", "expected"),  # a digit, but not an ASCII one
        ("exit 256", "code: must be 0..255, got 256"),
        ("signal 0", "signal: must be > 0, got 0"),
    ],
)
def test_malformed_status_files_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(InvalidValueError, match=complaint):
        procwatch.parse_status_text(text)


@pytest.mark.parametrize("info", [ExitInfo.exited(0), ExitInfo.exited(255), ExitInfo.killed(6)])
def test_status_files_round_trip(info: ExitInfo) -> None:
    assert procwatch.parse_status_text(procwatch.format_status_text(info)) == info


def test_an_exit_is_either_known_with_one_outcome_or_unknown_with_none() -> None:
    with pytest.raises(InvalidValueError, match="exactly one"):
        ExitInfo(code=1, signal=9, known=True)
    with pytest.raises(InvalidValueError, match="exactly one"):
        ExitInfo(known=True)
    with pytest.raises(InvalidValueError, match="neither"):
        ExitInfo(code=1)
    assert ExitInfo() == UNKNOWN
    assert not UNKNOWN.known


@pytest.mark.parametrize(
    ("output", "title"),
    [
        ("bhyve    bhyve: web1 (bhyve)\n", "bhyve: web1"),
        ("bhyve            bhyve: db-2.example (bhyve)\n", "bhyve: db-2.example"),
        # Before bhyve sets its title ps shows the command line it was started with.
        (
            "bhyve    /usr/sbin/bhyve -c 2 -m 2G -s 0,hostbridge web1\n",
            "/usr/sbin/bhyve -c 2 -m 2G -s 0,hostbridge web1",
        ),
        ("bhyve    [bhyve]\n", "[bhyve]"),
        ("", None),
        ("\n", None),
    ],
)
def test_freebsd_ps_output_gives_the_title(output: str, title: str | None) -> None:
    assert procwatch.parse_ps_title(output) == title


def test_a_lost_bhyve_is_found_in_freebsd_ps_output_titled_or_not_yet() -> None:
    # ps -ax -ww -o pid= -o comm= -o args=, as FreeBSD prints it: pids right-aligned,
    # a title set by setproctitle(3) followed by the command name in parentheses; a
    # bhyve still setting up its devices shows the command it was started with.
    output = (
        "    1 init     /sbin/init\n"
        " 1234 bhyve    bhyve: web1 (bhyve)\n"
        " 1240 bhyve    bhyve: web10 (bhyve)\n"
        "12000 bhyve    /usr/sbin/bhyve -c 2 -m 1G -s 0,hostbridge db1\n"
        "12001 vi       vi bhyve: web1\n"
        "12002 bhyveload /usr/sbin/bhyveload -m 1G -d /vm/db2/disk0.img db2\n"
        "12003 less     less -N web1\n"
    )
    assert procwatch.find_ps_bhyve(output, "web1") == [1234]
    assert procwatch.find_ps_bhyve(output, "db1") == [12000]
    assert procwatch.find_ps_bhyve(output, "db2") == []  # a loader is not bhyve
    assert procwatch.find_ps_bhyve(output, "web2") == []


@pytest.mark.parametrize(
    ("comm", "args", "name", "expected"),
    [
        ("bhyve", "bhyve: web1", "web1", True),
        ("bhyve", "bhyve: web1 (bhyve)", "web1", True),
        ("bhyve", "bhyve: web10", "web1", False),
        ("bhyve", "/usr/sbin/bhyve -c 1 -m 512M -s 0,hostbridge web1", "web1", True),
        ("bhyve", "/usr/sbin/bhyve -c 1 -m 512M -s 0,hostbridge web10", "web1", False),
        ("bhyve", "/usr/local/bin/python3 /sim/usr/sbin/bhyve -c 1 web1", "web1", True),
        ("bhyve", "bhyve", "bhyve", False),
        ("bhyvectl", "bhyvectl --vm=web1 --destroy web1", "web1", False),
        ("sh", "sh -c sleep web1", "web1", False),
    ],
)
def test_a_bhyve_is_known_by_its_title_or_its_command(
    comm: str, args: str, name: str, expected: bool
) -> None:
    assert procwatch.is_bhyve_of(comm, args, name) is expected
